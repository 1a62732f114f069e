//! The JSON-RPC body parser decides the token's scope: fuzz it with invariants, not just "does not panic".
//!
//! When `parse_body` accepts a body:
//! - every tool name matches `^[A-Za-z0-9_.-]{1,128}$` and every method `^[A-Za-z0-9_./-]{1,128}$`;
//! - the scope string is non-empty `mcp:`-prefixed tokens separated by single spaces, no other whitespace;
//! - an independent reading of the same bytes with plain serde_json finds the same methods, tools and responses
//!   (so no parser disagreement can widen or narrow a token), and the same id.
//! Whatever `strict_json` accepts, serde_json reads to the identical value, and no object in it has two keys that
//! are equal under case folding (what Go's encoding/json would read as one field). Every refusal renders a valid
//! JSON-RPC error body and a one-line log entry.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use mcp_jwt_signer::claims::{self, Call};
use mcp_jwt_signer::mcp::{self, McpError};
use mcp_jwt_signer::refusal::Refusal;
use mcp_jwt_signer::mcp::strict_json;
use serde_json::Value;

/// `^[A-Za-z0-9_.-]{1,128}$`, written independently of the filter's own check.
fn tool_name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `^[A-Za-z0-9_./-]{1,128}$`.
fn method_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
}

/// Case folding written independently of the filter's: full lower case, with the folds Go's encoding/json adds.
fn folded(key: &str) -> String {
    key.to_lowercase().replace('ſ', "s").replace('ς', "σ")
}

/// No object anywhere in `value` holds two keys a case-insensitive parser (Go's encoding/json) reads as one.
fn check_no_case_collisions(value: &Value) {
    match value {
        Value::Object(map) => {
            let mut seen = BTreeSet::new();
            for (key, inner) in map {
                assert!(seen.insert(folded(key)), "accepted keys colliding under case folding: {key:?}");
                check_no_case_collisions(inner);
            }
        }
        Value::Array(items) => items.iter().for_each(check_no_case_collisions),
        _ => {}
    }
}

fn check_scope(scope: &str) {
    assert!(!scope.is_empty(), "empty scope");
    assert!(
        !scope.starts_with(' ') && !scope.ends_with(' '),
        "scope {scope:?} has outer spaces"
    );
    assert!(!scope.contains("  "), "scope {scope:?} has a double space");
    for c in scope.chars() {
        assert!(c == ' ' || (c.is_ascii_graphic()), "scope {scope:?} holds {c:?}");
    }
    for token in scope.split(' ') {
        assert!(token.starts_with("mcp:"), "scope token {token:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let strict = strict_json::parse(data);
    if let Ok(value) = &strict {
        check_no_case_collisions(value);
        let loose: Value = serde_json::from_slice(data).expect("strict_json accepted a text serde_json refuses");
        assert_eq!(&loose, value, "strict_json and serde_json read different values");
    }

    match mcp::parse_body(data) {
        Ok(call) => {
            let value = strict.expect("parse_body accepted a body strict_json refuses");
            for tool in &call.tools {
                assert!(tool_name_ok(tool), "accepted tool name {tool:?}");
            }
            for method in &call.methods {
                assert!(method_ok(method), "accepted method {method:?}");
            }

            // Independent reading of the accepted body.
            let messages = match &value {
                Value::Array(items) => items.clone(),
                single => vec![single.clone()],
            };
            assert!(!messages.is_empty(), "accepted an empty batch");
            let (mut methods, mut tools, mut prompts, mut responses) =
                (BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), false);
            for message in &messages {
                let obj = message.as_object().expect("accepted a message that is not an object");
                assert_eq!(obj.get("jsonrpc"), Some(&Value::String("2.0".into())));
                match obj.get("method") {
                    Some(Value::String(m)) => {
                        methods.insert(m.clone());
                        if m == "tools/call" || m == "prompts/get" {
                            let name = obj
                                .get("params")
                                .and_then(|p| p.get("name"))
                                .and_then(Value::as_str)
                                .expect("accepted tools/call or prompts/get without params.name");
                            assert!(tool_name_ok(name), "accepted name {name:?}");
                            if m == "tools/call" {
                                tools.insert(name.to_string());
                            } else {
                                prompts.insert(name.to_string());
                            }
                        }
                        if m == "resources/read" {
                            let uri = obj.get("params").and_then(|p| p.get("uri")).and_then(Value::as_str);
                            assert!(uri.is_some_and(|u| !u.is_empty()), "accepted resources/read without params.uri");
                        }
                    }
                    None => {
                        assert!(obj.contains_key("result") != obj.contains_key("error"));
                        responses = true;
                    }
                    Some(other) => panic!("accepted a non-string method {other}"),
                }
            }
            assert_eq!(methods, call.methods, "methods differ from an independent reading");
            assert_eq!(tools, call.tools, "tools differ from an independent reading");
            assert_eq!(prompts, call.prompts, "prompts differ from an independent reading");
            assert_eq!(responses, call.has_responses);
            match &value {
                Value::Array(_) => assert_eq!(call.id, None, "a batch has no single id"),
                Value::Object(obj) => match obj.get("id") {
                    Some(id @ (Value::String(_) | Value::Number(_))) => {
                        assert_eq!(call.id.as_ref(), Some(id))
                    }
                    _ => assert_eq!(call.id, None),
                },
                _ => unreachable!("checked above"),
            }

            let scope = claims::scope(&Call::Messages(call.clone()));
            check_scope(&scope);
            let mut expected: BTreeSet<String> = methods.iter().map(|m| format!("mcp:{m}")).collect();
            expected.extend(tools.iter().map(|t| format!("mcp:tools/{t}:call")));
            expected.extend(prompts.iter().map(|p| format!("mcp:prompts/{p}:get")));
            if responses {
                expected.insert("mcp:responses".into());
            }
            let got: BTreeSet<String> = scope.split(' ').map(str::to_string).collect();
            assert_eq!(got, expected, "scope {scope:?}");
        }
        Err(err) => {
            let whitespace_only = data.iter().all(u8::is_ascii_whitespace);
            match &err {
                McpError::Parse(_) => assert!(
                    strict.is_err() || whitespace_only,
                    "parse error for JSON strict_json accepts: {err}"
                ),
                _ => assert!(strict.is_ok(), "non-parse refusal of a text strict_json refuses: {err}"),
            }
            if let Ok(Value::Array(_)) = &strict {
                assert_eq!(err.id(), None, "a refused batch must answer with id null");
            }
            let refusal = Refusal::Body(err);
            let body: Value = serde_json::from_slice(&refusal.body()).expect("refusal body is not JSON");
            assert_eq!(body["jsonrpc"], "2.0");
            assert!(body["error"]["code"].is_i64());
            // The exact line the request path logs (the same function, with the request's id).
            let line = refusal.log_line(Some(&Value::String("id\nwith\rbreaks".into())));
            assert!(!line.contains(['\n', '\r']), "log line spans several lines: {line:?}");
        }
    }
});
