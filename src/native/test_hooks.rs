//! Test-only entry points (cargo feature `native-test-hooks`, never in a shipped build: `make build-native` builds
//! it into `target/native-test-hooks/` for the e2e test that proves the panic barrier in a real Envoy).
//!
//! - request header `x-mcp-jwt-signer-test-panic: <hook>` (`request_headers`, `request_body`, `request_trailers`):
//!   a deliberate panic in that hook of that stream;
//! - environment `MCP_JWT_SIGNER_TEST_PANIC=config_new` or `=filter_new`: a panic in every such call;
//! - request header `x-mcp-jwt-signer-test-audit: 1`: the adapter writes sample audit fields (a string, a number,
//!   a bool, a list of strings), as it writes `Effects::audit`, so an access log can show them.
#![allow(clippy::panic)]

use super::abi::FilterEnvoyPtr;
use super::host::headers;
use super::stream::Stream;

/// The request header naming the hook to panic in.
pub const PANIC_HEADER: &str = "x-mcp-jwt-signer-test-panic";
/// The request header asking for sample audit fields.
pub const AUDIT_HEADER: &str = "x-mcp-jwt-signer-test-audit";

fn env_says(hook: &str) -> bool {
    std::env::var("MCP_JWT_SIGNER_TEST_PANIC").is_ok_and(|v| v == hook)
}

/// A panic in `config_new` when the environment asks for one.
pub fn config_new() {
    if env_says("config_new") {
        panic!("test hook: deliberate panic in config_new");
    }
}

/// A panic in `filter_new` when the environment asks for one.
pub fn filter_new() {
    if env_says("filter_new") {
        panic!("test hook: deliberate panic in filter_new");
    }
}

/// A panic in `hook` when the request asked for one (the header is read when the headers arrive).
pub fn stream_hook(stream: &mut Stream, f: FilterEnvoyPtr, hook: &str) {
    if hook == "request_headers" {
        let request = headers(f, super::abi::HEADER_REQUEST);
        stream.test_panic = request
            .iter()
            .find(|(k, _)| k == PANIC_HEADER)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        if request.iter().any(|(k, _)| k == AUDIT_HEADER) {
            use serde_json::json;
            for (key, value) in [
                ("test_sub", json!("alice")),
                ("test_exp", json!(1_767_225_600u64)),
                ("test_cached", json!(true)),
                ("test_tools", json!(["get_weather", "search"])),
            ] {
                super::stream::set_audit(f, key, &value);
            }
        }
    }
    if stream.test_panic.as_deref() == Some(hook) {
        panic!("test hook: deliberate panic in {hook}");
    }
}
