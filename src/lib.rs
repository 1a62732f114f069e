//! mcp-jwt-signer: an Envoy proxy-wasm filter that mints a short-lived RS256 JWT for every MCP request
//! and serves its own OIDC discovery document and JWKS.
//!
//! Every module but `host` is pure Rust and is tested natively with `cargo test`; `host` is the thin
//! layer that talks to the proxy-wasm ABI and only links inside a wasm VM.

// A panic inside a wasm VM kills the filter for that worker: filter code may not unwrap, expect or panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod b64;
pub mod cache;
pub mod claims;
pub mod config;
pub mod ec_keys;
pub mod identity;
pub mod jwt;
pub mod keys;
pub mod mcp;
pub mod montgomery;
pub mod property;
pub mod refusal;
pub mod request;
pub mod rsa_crt;
pub mod signer;
pub mod strict_json;
pub mod well_known;

#[cfg(target_arch = "wasm32")]
mod host;
