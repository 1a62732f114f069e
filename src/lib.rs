//! mcp-jwt-signer: an Envoy filter that mints a short-lived JWT for every MCP request and serves its own OIDC
//! discovery document and JWKS, so MCP servers verify one issuer instead of every upstream identity provider.
//!
//! Everything but the adapters is pure Rust, tested natively with `cargo test`. The data flow, top to bottom:
//! - [`request`]: one request's state machine (gate, routing headers, route settings, authorise and sign,
//!   responses), answering each proxy callback with a [`host::Step`];
//! - [`mcp`]: strict JSON-RPC / MCP parsing; [`identity`]: who is calling; [`delegation`]: RFC 8693 `act` chains
//!   and `may_act`; [`claims`]: the claim set and its least-privilege scope; [`cache`]: the bounded token cache of
//!   a worker, [`shared_cache`]: the one its workers share; [`refusal`]: why a request is refused;
//!   [`well_known`]: discovery and JWKS documents;
//! - [`plugin`]: configuration, key and cache of one plugin instance; [`config`]: the plugin JSON;
//!   [`crypto`]: keys, signatures and JWS (a leaf);
//! - [`host`]: what the filter needs from a proxy (a trait) and a fake proxy for tests; [`envoy_value`]:
//!   Envoy's attribute encoding;
//! - `wasm`: the proxy-wasm adapter (only in the wasm32 build); `native`: the Envoy dynamic-module adapter (only
//!   with the `native` feature, `make build-native`).
//!
//! Dependencies point one way, down this list; `tests/module_graph.rs` fails on an import circle.

#![warn(missing_docs)]
// A panic inside a wasm VM kills the filter for that worker: filter code may not unwrap, expect or panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cache;
pub mod claims;
pub mod config;
pub mod crypto;
pub mod delegation;
pub mod envoy_value;
pub mod host;
pub mod identity;
pub mod mcp;
pub mod plugin;
pub mod refusal;
pub mod request;
pub mod shared_cache;
pub mod well_known;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod native;
