//! The whole request path through the fake host: every endpoint, every refusal, the token cache, the shared
//! generated key, and what reaches the upstream. Tokens are checked with `jsonwebtoken`, an independent verifier.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::host::fake::{send, send_through, Exchange, FakeHost, HeaderWrites, Request as Req, Router};
use crate::host::{Headers, Host, Metric};
use crate::plugin::Plugin;

const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_weather"}}"#;

fn plugin(config: &str, host: &FakeHost) -> Rc<Plugin> {
    Rc::new(Plugin::load(config.as_bytes(), None, host).unwrap().plugin)
}

fn exchange(plugin: &Rc<Plugin>, host: &FakeHost, request: &Req) -> Exchange {
    let mut filter = Request::new(plugin.clone());
    send(&mut filter, host, request)
}

/// The request through the signer, the router's new match, and the route guard (an upstream filter).
fn guarded(plugin: &Rc<Plugin>, host: &FakeHost, request: &Req) -> Exchange {
    let mut filter = Request::new(plugin.clone());
    let mut guard = RouteGuard;
    send_through(&mut filter, Some(&mut guard), host, request)
}

/// The forwarded token's claims, verified with jsonwebtoken against the gateway's own JWKS.
fn verified_claims(plugin: &Rc<Plugin>, host: &FakeHost, exchange: &Exchange, audience: &str) -> Value {
    let auth = exchange
        .forwarded_header("authorization")
        .expect("one authorization header forwarded");
    let token = auth.strip_prefix("Bearer ").expect("bearer token");
    let jwks = send_jwks(plugin, host);
    let header = jsonwebtoken::decode_header(token).unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
        .expect("kid in the JWKS");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.validate_exp = false; // the fake clock is in 2023
    jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation)
        .unwrap()
        .claims
}

fn send_jwks(plugin: &Rc<Plugin>, host: &FakeHost) -> Value {
    let e = exchange(plugin, host, &Req::new("GET", "/.well-known/jwks.json"));
    assert_eq!(e.status(), 200);
    e.json()
}

/// Asserts a refusal: status, JSON-RPC code and id, the reason counted, one log line, nothing forwarded.
fn assert_refused(e: &Exchange, status: u32, code: i64, reason: &str) {
    assert!(e.forwarded.is_none(), "forwarded: {:?}", e.forwarded);
    assert_eq!(e.status(), status, "{:?}", e.json());
    assert_eq!(e.json()["error"]["code"], code, "{:?}", e.json());
    assert_eq!(e.json()["jsonrpc"], "2.0");
    assert!(
        e.effects.metrics.contains(&Metric::Refused(leak(reason))),
        "{:?}",
        e.effects.metrics
    );
    let line = &e.effects.logs.last().expect("a log line").1;
    assert!(
        line.starts_with(&format!("refused reason={reason} status={status}")),
        "{line}"
    );
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

#[test]
fn a_tools_call_is_forwarded_with_a_verifiable_least_privilege_token() {
    let host = FakeHost::default();
    let p = plugin(
        r#"{"identity":{"subject":["header:x-user-id"],"email":["header:x-user-email"]}}"#,
        &host,
    );
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL)
            .header("x-user-id", "alice")
            .header("x-user-email", "a@example.com")
            .header("authorization", "Bearer client-token"),
    );
    let claims = verified_claims(&p, &host, &e, "mcp");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "a@example.com");
    assert_eq!(claims["act"]["sub"], "mcp-gateway");
    assert_eq!(claims["iss"], "http://gw.example.com");
    assert_eq!(claims["scope"], "mcp:tools/call mcp:tools/get_weather:call");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 300);
    let (headers, body) = e.forwarded.as_ref().unwrap();
    assert_eq!(body, TOOLS_CALL.as_bytes());
    // Identity headers are stripped; the client's token is gone.
    assert!(!headers.contains("x-user-id") && !headers.contains("x-user-email"));
    assert_eq!(headers.all("authorization").count(), 1);
    assert_eq!(
        e.effects.metrics,
        vec![Metric::TokensMinted, e.effects.metrics[1].clone()]
    );
    assert!(matches!(e.effects.metrics[1], Metric::SignDurationUs(_)));
}

#[test]
fn the_client_authorization_is_removed_at_the_headers_and_replaced_by_the_token() {
    let host = FakeHost::default();
    let p = plugin("{}", &host);
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL)
            .header("authorization", "Bearer one")
            .header("Authorization", "Bearer two"),
    );
    // Layer 1: removed while the body is still buffering (before anything can forward it).
    assert_eq!(e.edits[0], HeaderEdit::Remove("authorization"));
    // Layer 2: the token replaces whatever is there.
    assert!(matches!(&e.edits[1], HeaderEdit::Set("authorization", v) if v.starts_with("Bearer ey")));
    assert!(matches!(&e.edits[2], HeaderEdit::Set(ROUTE_HEADER, _)));
    let forwarded = e.forwarded_header("authorization").unwrap();
    assert!(!forwarded.contains("one") && !forwarded.contains("two"));
}

/// No token passthrough, with each layer of the defence alone: the removal at the headers (on a host whose writes
/// append instead of replacing, and where the token goes in another header, so no write touches `authorization`)
/// and the token write that replaces every copy (on a host that drops removals). Body- and header-scoped.
#[test]
fn each_layer_of_the_authorization_removal_holds_alone() {
    let client = |req: Req| {
        req.header("authorization", "Bearer client-one")
            .header("Authorization", "Bearer client-two")
    };
    for writes in [HeaderWrites::Envoy, HeaderWrites::Append, HeaderWrites::IgnoreRemovals] {
        let host = FakeHost {
            header_writes: writes,
            ..FakeHost::default()
        };
        for (config, request) in [
            ("{}", client(Req::post(TOOLS_CALL))),
            (
                r#"{"scope_source":"headers"}"#,
                client(modern_headers(Req::post(TOOLS_CALL), "tools/call", Some("get_weather"))),
            ),
        ] {
            let p = plugin(config, &host);
            let e = exchange(&p, &host, &request);
            let (headers, _) = e.forwarded.as_ref().expect("forwarded");
            let values: Vec<&[u8]> = headers.all("authorization").collect();
            assert_eq!(values.len(), 1, "{writes:?} {config}: {values:?}");
            assert!(values[0].starts_with(b"Bearer ey"), "{writes:?} {config}");
            verified_claims(&p, &host, &e, "mcp");
        }
    }
    // The token in another header: the removal at the headers is all that keeps the client's token away.
    let host = FakeHost::default();
    let p = plugin(r#"{"token_header":"x-mcp-gateway-token"}"#, &host);
    let e = exchange(&p, &host, &client(Req::post(TOOLS_CALL)));
    let (headers, _) = e.forwarded.as_ref().expect("forwarded");
    assert!(!headers.contains("authorization"), "{headers:?}");
    assert!(e
        .forwarded_header("x-mcp-gateway-token")
        .unwrap()
        .starts_with("Bearer ey"));
}

#[test]
fn get_and_delete_are_signed_without_a_body() {
    let host = FakeHost::default();
    let p = plugin("{}", &host);
    let e = exchange(&p, &host, &Req::new("GET", "/mcp"));
    assert_eq!(verified_claims(&p, &host, &e, "mcp")["scope"], "mcp:stream");
    let e = exchange(&p, &host, &Req::new("DELETE", "/mcp"));
    assert_eq!(verified_claims(&p, &host, &e, "mcp")["scope"], "mcp:session:delete");
}

#[test]
fn discovery_and_jwks_are_served_and_never_forwarded() {
    let host = FakeHost::default();
    let p = plugin(r#"{"issuer":"https://gw.example.com/t"}"#, &host);
    let e = exchange(&p, &host, &Req::new("GET", "/t/.well-known/openid-configuration"));
    assert!(e.forwarded.is_none());
    assert_eq!(e.status(), 200);
    let doc = e.json();
    assert_eq!(doc["issuer"], "https://gw.example.com/t");
    assert_eq!(doc["jwks_uri"], "https://gw.example.com/t/.well-known/jwks.json");
    assert_eq!(e.effects.metrics, vec![Metric::DiscoveryServed]);
    let e = exchange(&p, &host, &Req::new("HEAD", "/t/.well-known/jwks.json"));
    assert_eq!(e.status(), 200);
    assert_eq!(e.effects.metrics, vec![Metric::JwksServed]);
    let cache_control = &e.response.as_ref().unwrap().headers;
    assert!(cache_control.contains(&("cache-control", "public, max-age=60".to_string())));
    let e = exchange(&p, &host, &Req::new("POST", "/t/.well-known/jwks.json").body(b"{}"));
    assert_refused(&e, 405, -32600, "method_not_allowed");
}

#[test]
fn every_gate_refusal() {
    let host = FakeHost::default();
    let p = plugin(r#"{"max_body_bytes":100}"#, &host);
    let cases: Vec<(Req, u32, i64, &str)> = vec![
        (Req::new("PUT", "/mcp"), 405, -32600, "method_not_allowed"),
        (
            Req::post(TOOLS_CALL).header("content-encoding", "gzip"),
            415,
            -32600,
            "unsupported_encoding",
        ),
        (Req::post(&"x".repeat(101)), 413, -32600, "body_too_large"),
        (
            Req::post("{}").header("content-length", "1000"),
            413,
            -32600,
            "body_too_large",
        ),
        (Req::new("POST", "/mcp"), 400, -32700, "parse_error"),
        (Req::post("{"), 400, -32700, "parse_error"),
        (Req::post(r#"{"a":1}"#), 400, -32600, "invalid_request"),
        (
            Req::post(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a b"}}"#),
            400,
            -32602,
            "invalid_params",
        ),
        (Req::new("GET", "/mcp").body(b"x"), 400, -32600, "unexpected_body"),
        (
            Req {
                trailers: true,
                ..Req::post(TOOLS_CALL)
            },
            400,
            -32600,
            "unexpected_trailers",
        ),
        (
            Req::post(TOOLS_CALL).set(":authority", "evil\"host"),
            400,
            -32600,
            "invalid_authority",
        ),
        (
            Req::post(TOOLS_CALL).header("mcp-method", "tools/list"),
            400,
            -32020,
            "header_mismatch",
        ),
    ];
    for (request, status, code, reason) in cases {
        let e = exchange(&p, &host, &request);
        assert_refused(&e, status, code, reason);
    }
}

#[test]
fn refusals_after_parsing_echo_the_request_id() {
    let host = FakeHost::default();
    let p = plugin(
        r#"{"require_subject":true,"identity":{"subject":["header:x-user-id"]}}"#,
        &host,
    );
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 401, -32001, "unauthenticated");
    assert_eq!(e.json()["id"], 7);
    let headers = &e.response.as_ref().unwrap().headers;
    assert!(headers.contains(&("www-authenticate", "Bearer".to_string())));
}

#[test]
fn identity_refusals() {
    let host = FakeHost::default()
        .attribute("connection/uri_san_peer_certificate", json!("spiffe://td/ns/a/sa/b"))
        .jwt_claim("sub", json!("user-1"));
    let p = plugin(
        r#"{"identity":{"subject":["jwt:sub","header:x-user-id"],"actor":["mtls:uri_san"]},
            "required_claims":["email"]}"#,
        &host,
    );
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 403, -32003, "missing_required_claim");
    let p = plugin(r#"{"identity":{"subject":["header:x-user-id"]}}"#, &host);
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("x-user-id", "a").header("x-user-id", "b"),
    );
    assert_refused(&e, 400, -32600, "invalid_identity");
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", b"\xff"));
    assert_refused(&e, 400, -32600, "invalid_identity");
    // The refused value is not in the log line or the response.
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("x-user-id", "secret\u{1}value"),
    );
    assert!(!e.effects.logs.iter().any(|(_, l)| l.contains("secret")));
    assert!(!String::from_utf8_lossy(&e.response.unwrap().body).contains("secret"));
}

#[test]
fn verified_jwt_and_mtls_identity() {
    let host = FakeHost::default()
        .attribute("connection/uri_san_peer_certificate", json!("spiffe://td/ns/a/sa/b"))
        .jwt_claim("sub", json!("user-1"))
        .jwt_claim("groups", json!(["admins", "devs"]));
    let p = plugin(
        r#"{"identity":{"subject":["jwt:sub","header:x-user-id"],"actor":["mtls:uri_san"]},
            "copy_claims":{"groups":"jwt:groups"}}"#,
        &host,
    );
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", "admin"));
    let claims = verified_claims(&p, &host, &e, "mcp");
    assert_eq!(claims["sub"], "user-1");
    assert_eq!(claims["act"]["sub"], "spiffe://td/ns/a/sa/b");
    assert_eq!(claims["groups"], json!(["admins", "devs"]));
}

fn route_host(routes: &'static [(&'static str, Value)]) -> FakeHost {
    let router: Router = Rc::new(move |headers: &Headers| {
        let team = headers
            .first("x-team-id")
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let (name, ns) = routes
            .iter()
            .find(|(name, _)| team.as_deref() == Some(*name))
            .unwrap_or(&routes[0]);
        HashMap::from([
            ("xds/route_name".to_string(), json!(name)),
            ("xds/cluster_name".to_string(), json!(name)),
            (
                "xds/route_metadata/filter_metadata/mcp_jwt_signer".to_string(),
                ns.clone(),
            ),
        ])
    });
    FakeHost {
        router: Some(router),
        ..FakeHost::default()
    }
}

#[test]
fn route_audience_and_allow_list() {
    let host = FakeHost::default().attribute(
        "xds/route_metadata/filter_metadata/mcp_jwt_signer",
        json!({"audience": "https://weather.example.com/mcp", "allowed_tools": ["get_weather"]}),
    );
    let p = plugin("{}", &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_eq!(
        verified_claims(&p, &host, &e, "https://weather.example.com/mcp")["aud"],
        "https://weather.example.com/mcp"
    );
    let forbidden = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all"}}"#;
    assert_refused(
        &exchange(&p, &host, &Req::post(forbidden)),
        403,
        -32003,
        "tool_not_allowed",
    );
    let bad = FakeHost::default().attribute(
        "xds/route_metadata/filter_metadata/mcp_jwt_signer",
        json!({"audiance": "typo"}),
    );
    let e = exchange(&p, &bad, &Req::post(TOOLS_CALL));
    assert_refused(&e, 500, -32603, "bad_route_metadata");
}

#[test]
fn every_tool_of_a_batch_is_checked_against_the_allow_list() {
    let host = FakeHost::default().attribute(
        "xds/route_metadata/filter_metadata/mcp_jwt_signer",
        json!({"allowed_tools": ["get_weather", "m_tool"]}),
    );
    let p = plugin("{}", &host);
    let call = |name: &str, id: u32| json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name}});
    // The forbidden tool first, in the middle and last, by position and by sort order.
    for forbidden in ["a_forbidden", "k_forbidden", "z_forbidden"] {
        for position in 0..3 {
            let mut batch = vec![call("get_weather", 1), call("m_tool", 2)];
            batch.insert(position, call(forbidden, 3));
            let e = exchange(&p, &host, &Req::post(&Value::Array(batch).to_string()));
            assert_refused(&e, 403, -32003, "tool_not_allowed");
            assert!(e.json()["error"]["message"].as_str().unwrap().contains(forbidden));
        }
    }
    let ok = Value::Array(vec![call("get_weather", 1), call("m_tool", 2)]).to_string();
    assert!(exchange(&p, &host, &Req::post(&ok)).forwarded.is_some());
}

#[test]
fn the_token_cache_reuses_identical_claim_sets_only() {
    let host = FakeHost::default();
    let p = plugin(r#"{"identity":{"subject":["header:x-user-id"]}}"#, &host);
    let alice = || Req::post(TOOLS_CALL).header("x-user-id", "alice");
    let first = exchange(&p, &host, &alice());
    let again = exchange(&p, &host, &alice());
    assert_eq!(
        first.forwarded_header("authorization"),
        again.forwarded_header("authorization")
    );
    assert_eq!(again.effects.metrics, vec![Metric::TokenCacheHits]);
    let bob = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", "bob"));
    assert_ne!(
        first.forwarded_header("authorization"),
        bob.forwarded_header("authorization")
    );
    assert_eq!(bob.effects.metrics[0], Metric::TokensMinted);
    // Past the reuse window (ttl/2), a fresh token.
    host.now_micros.set(host.now_micros.get() + 151_000_000);
    let later = exchange(&p, &host, &alice());
    assert_eq!(later.effects.metrics[0], Metric::TokensMinted);
}

#[test]
fn a_cached_token_of_another_signing_key_is_never_served() {
    let host = FakeHost::default();
    let p = plugin(r#"{"algorithm":"ES256"}"#, &host);
    let first = exchange(&p, &host, &Req::post(TOOLS_CALL));
    // Another worker replaces the generated key in shared data (the start-up race): the next request must not get
    // the cached token of the old key.
    let other = crate::crypto::Signer::generate(crate::crypto::Algorithm::Es256).unwrap();
    let name = crate::plugin::shared_key_name(crate::crypto::Algorithm::Es256);
    host.set_shared_data(&name, &other.to_pkcs8_der().unwrap(), None)
        .unwrap();
    let second = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_ne!(
        first.forwarded_header("authorization"),
        second.forwarded_header("authorization")
    );
    assert_eq!(second.effects.metrics[0], Metric::TokensMinted);
    let claims = verified_claims(&p, &host, &second, "mcp");
    assert_eq!(claims["scope"], "mcp:tools/call mcp:tools/get_weather:call");
}

#[test]
fn every_worker_signs_with_the_one_shared_generated_key() {
    let a = FakeHost::default();
    let b = FakeHost::with_shared(a.shared.clone());
    let pa = plugin("{}", &a);
    let pb = plugin("{}", &b);
    let ea = exchange(&pa, &a, &Req::post(TOOLS_CALL));
    let eb = exchange(&pb, &b, &Req::post(TOOLS_CALL));
    // A token from worker B verifies against the JWKS worker A serves.
    verified_claims(&pa, &a, &eb, "mcp");
    verified_claims(&pb, &b, &ea, "mcp");
}

#[test]
fn a_missing_key_is_refused_503() {
    let host = FakeHost::default();
    let p = plugin("{}", &host);
    host.shared.borrow_mut().clear();
    let fresh = Rc::new(Plugin {
        config: p.config.clone(),
        keys: crate::plugin::KeyStore::Shared {
            algorithm: crate::crypto::Algorithm::Rs256,
            name: "nothing-here".into(),
            cache: Default::default(),
            uses: Default::default(),
        },
        cache: std::cell::RefCell::new(crate::cache::TokenCache::new(p.config.token_cache)),
        introspection: None,
    });
    let e = exchange(&fresh, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 503, -32603, "key_unavailable");
    let e = exchange(&fresh, &host, &Req::new("GET", "/.well-known/jwks.json"));
    assert_refused(&e, 503, -32603, "key_unavailable");
}

#[test]
fn a_body_in_one_byte_chunks_is_signed_and_forwarded_whole() {
    let host = FakeHost::default();
    let p = plugin("{}", &host);
    let mut request = Req::new("POST", "/mcp");
    for byte in TOOLS_CALL.bytes() {
        request = request.body(&[byte]);
    }
    let e = exchange(&p, &host, &request);
    assert_eq!(e.forwarded.as_ref().unwrap().1, TOOLS_CALL.as_bytes());
    verified_claims(&p, &host, &e, "mcp");
}

#[test]
fn a_failed_header_edit_is_refused_not_forwarded() {
    let host = FakeHost::default();
    let p = plugin("{}", &host);
    let mut filter = Request::new(p);
    *host.headers.borrow_mut() = Headers(Req::post(TOOLS_CALL).headers);
    let step = filter.on_request_headers(&host, false);
    assert_eq!(step.next, Next::Pause);
    let step = filter.on_host_failure("cannot edit the request headers");
    assert!(matches!(step.next, Next::Respond(ref r) if r.status == 500));
}

#[test]
fn identity_headers_are_stripped_only_when_asked() {
    let host = FakeHost::default();
    let p = plugin(
        r#"{"identity":{"subject":["header:x-user-id"]},"copy_claims":{"dept":"header:x-dept"}}"#,
        &host,
    );
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL)
            .header("x-user-id", "u")
            .header("x-dept", "d")
            .header("x-other", "o"),
    );
    let (headers, _) = e.forwarded.as_ref().unwrap();
    assert!(!headers.contains("x-user-id") && !headers.contains("x-dept") && headers.contains("x-other"));
    let p = plugin(
        r#"{"identity":{"subject":["header:x-user-id"]},"strip_identity_headers":false}"#,
        &host,
    );
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", "u"));
    assert_eq!(e.forwarded_header("x-user-id").as_deref(), Some("u"));
}

#[test]
fn a_router_fake_reroutes_after_edits() {
    // The fake itself: route attributes follow the current headers (as Envoy re-matches after a header write).
    static ROUTES: std::sync::OnceLock<Vec<(&'static str, Value)>> = std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(|| vec![("default", json!({})), ("red", json!({"audience": "red"}))]);
    let host = route_host(routes.as_slice());
    *host.headers.borrow_mut() = Headers(vec![("x-team-id".into(), b"red".to_vec())]);
    assert_eq!(
        Host::attribute(&host, &["xds", "route_name"]).unwrap(),
        Some(json!("red"))
    );
    host.apply(&HeaderEdit::RemoveNamed("x-team-id".into()));
    assert_eq!(
        Host::attribute(&host, &["xds", "route_name"]).unwrap(),
        Some(json!("default"))
    );
}

#[test]
fn a_token_over_max_token_bytes_is_refused_before_signing() {
    let host = FakeHost::default();
    let p = plugin(r#"{"max_token_bytes":2048}"#, &host);
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":format!("tool_{i:03}")}}))
        .collect();
    let e = exchange(&p, &host, &Req::post(&Value::Array(batch).to_string()));
    assert_refused(&e, 400, -32600, "token_too_large");
    assert!(!e.effects.metrics.contains(&Metric::TokensMinted));
    let message = e.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("max_token_bytes") && message.contains("2048"),
        "{message}"
    );
    // The same batch under the default (8 KiB) fits.
    let p = plugin("{}", &host);
    let small: Vec<Value> = (0..20)
        .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":format!("tool_{i:03}")}}))
        .collect();
    let e = exchange(&p, &host, &Req::post(&Value::Array(small).to_string()));
    assert!(e.forwarded.is_some());
    assert!(e.forwarded_header("authorization").unwrap().len() <= 8192 + 7);
}

/// Two routes chosen by `x-team-id` (red, else default), each with its own audience, as Envoy would match them.
fn team_routes() -> FakeHost {
    static ROUTES: std::sync::OnceLock<Vec<(&'static str, Value)>> = std::sync::OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        vec![
            ("default", json!({"audience": "https://default.example.com/mcp"})),
            (
                "red",
                json!({"audience": "https://red.example.com/mcp", "allowed_tools": ["get_weather"]}),
            ),
        ]
    });
    route_host(routes.as_slice())
}

#[test]
fn a_token_never_reaches_a_route_it_was_not_minted_for() {
    // Routing on an identity header that the filter strips: the router would send the red token to the default
    // server. Refused, with a log line that says why.
    let host = team_routes();
    let p = plugin(r#"{"identity":{"actor":["header:x-team-id"]}}"#, &host);
    // Without the guard, this is what the router would do: the red token at the default server.
    let unguarded = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-team-id", "red"));
    assert!(unguarded.forwarded.is_some());
    let e = guarded(&p, &host, &Req::post(TOOLS_CALL).header("x-team-id", "red"));
    assert_refused(&e, 500, -32603, "route_changed");
    assert!(e.effects.logs.last().unwrap().1.contains("route changed"));
    // Without stripping, the route stays red and the token is red's.
    let p = plugin(
        r#"{"identity":{"actor":["header:x-team-id"]},"strip_identity_headers":false}"#,
        &host,
    );
    let e = guarded(&p, &host, &Req::post(TOOLS_CALL).header("x-team-id", "red"));
    let claims = verified_claims(&p, &host, &e, "https://red.example.com/mcp");
    assert_eq!(claims["act"]["sub"], "red");
    // The guard removes its header before the request goes upstream.
    assert!(!e.forwarded.as_ref().unwrap().0.contains(ROUTE_HEADER));
    // A request that does not name the team takes the default route with the default audience.
    let e = guarded(&p, &host, &Req::post(TOOLS_CALL));
    verified_claims(&p, &host, &e, "https://default.example.com/mcp");
}

#[test]
fn a_route_matching_on_the_token_header_is_refused() {
    // A route chosen by the presence of `authorization`: the filter's own token would flip the route.
    let router: Router = Rc::new(|headers: &Headers| {
        let (name, aud) = if headers.contains("authorization") {
            ("authenticated", "https://a.example.com")
        } else {
            ("anonymous", "https://b.example.com")
        };
        HashMap::from([
            ("xds/route_name".to_string(), json!(name)),
            ("xds/cluster_name".to_string(), json!(name)),
            (
                "xds/route_metadata/filter_metadata/mcp_jwt_signer".to_string(),
                json!({"audience": aud}),
            ),
        ])
    });
    let host = FakeHost {
        router: Some(router),
        ..FakeHost::default()
    };
    let p = plugin("{}", &host);
    assert_refused(
        &guarded(&p, &host, &Req::post(TOOLS_CALL)),
        500,
        -32603,
        "route_changed",
    );
    // A client that sent its own authorization was matched to the authenticated route before the filter edited
    // anything, and stays there with our token in place of its own: consistent, so it is signed.
    let e = guarded(&p, &host, &Req::post(TOOLS_CALL).header("authorization", "Bearer x"));
    verified_claims(&p, &host, &e, "https://a.example.com");
}

#[test]
fn the_guard_refuses_a_request_that_did_not_pass_the_signer() {
    let host = team_routes();
    let mut guard = RouteGuard;
    let mut passthrough = Passthrough;
    // No signer: no route header.
    let e = send_through(&mut passthrough, Some(&mut guard), &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 500, -32603, "internal_error");
    // A client-made header is no way past it either ...
    let forged = Req::post(TOOLS_CALL).header(ROUTE_HEADER, "forged");
    let e = send_through(&mut passthrough, Some(&mut guard), &host, &forged);
    assert_refused(&e, 500, -32603, "route_changed");
    // ... and through the signer, which replaces it with its own, the request goes on.
    let p = plugin("{}", &host);
    let e = guarded(&p, &host, &forged);
    assert!(e.forwarded.is_some());
}

/// A filter that lets everything through, in the signer's place.
struct Passthrough;

impl HttpFilter for Passthrough {
    fn on_request_headers(&mut self, _: &dyn Host, _: bool) -> Step {
        Step::just(Next::Continue)
    }
    fn on_request_body(&mut self, _: &dyn Host, _: usize, _: bool) -> Step {
        Step::just(Next::Continue)
    }
    fn on_request_trailers(&mut self, _: &dyn Host) -> Step {
        Step::just(Next::Continue)
    }
    fn on_host_failure(&mut self, _: &'static str) -> Step {
        Step::just(Next::Continue)
    }
    fn on_callout_response(&mut self, _: &dyn Host, _: Option<CalloutResponse>) -> Step {
        Step::just(Next::Continue)
    }
}

const AUTHZ: &str = r#"{
    "identity": {"subject": ["jwt:sub"]},
    "protected_resources": [{
        "resource": "https://mcp-gw.example.com/mcp",
        "authorization_servers": ["https://auth.example.com"],
        "scopes_supported": ["mcp:read", "weather:read"],
        "resource_name": "Weather tools"
    }],
    "jwt_failure_in_metadata": "jwt_failure",
    "required_incoming_scopes": {
        "tools/call": ["mcp:read"],
        "tools/call:get_weather": ["weather:read"],
        "tools/call:admin_*": ["admin"]
    },
    "scope_hierarchy": {"admin": ["mcp:read", "weather:read"]}
}"#;

fn www_authenticate(e: &Exchange) -> String {
    let response = e.response.as_ref().expect("a local response");
    response
        .headers
        .iter()
        .find(|(k, _)| *k == "www-authenticate")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[test]
fn protected_resource_metadata_is_served_at_the_rfc9728_paths() {
    let host = FakeHost::default();
    let p = plugin(AUTHZ, &host);
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let e = exchange(&p, &host, &Req::new("GET", path));
        assert_eq!(e.status(), 200, "{path}");
        assert!(e.forwarded.is_none());
        let doc = e.json();
        assert_eq!(doc["resource"], "https://mcp-gw.example.com/mcp");
        assert_eq!(doc["authorization_servers"], json!(["https://auth.example.com"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert_eq!(doc["scopes_supported"], json!(["mcp:read", "weather:read"]));
        assert_eq!(doc["resource_name"], "Weather tools");
        assert_eq!(e.effects.metrics, vec![Metric::ProtectedResourceServed]);
    }
    let e = exchange(
        &p,
        &host,
        &Req::new("POST", "/.well-known/oauth-protected-resource/mcp").body(b"{}"),
    );
    assert_refused(&e, 405, -32600, "method_not_allowed");
    // Another path is an ordinary MCP request, not metadata.
    let e = exchange(
        &p,
        &host,
        &Req::new("GET", "/.well-known/oauth-protected-resource/other"),
    );
    assert_ne!(e.json()["resource"], "https://mcp-gw.example.com/mcp");
}

#[test]
fn no_token_gets_the_401_challenge_with_resource_metadata_and_scope() {
    let host = FakeHost::default();
    let p = plugin(AUTHZ, &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 401, -32001, "unauthenticated");
    assert_eq!(
        www_authenticate(&e),
        r#"Bearer scope="mcp:read weather:read", resource_metadata="https://mcp-gw.example.com/.well-known/oauth-protected-resource/mcp""#
    );
    assert!(
        !www_authenticate(&e).contains("error="),
        "RFC 6750 3.1: no error without credentials"
    );
    assert_eq!(e.json()["id"], 7);
}

#[test]
fn a_failed_token_gets_invalid_token_and_nothing_is_buffered() {
    let host = FakeHost::default().attribute(
        "metadata/filter_metadata/envoy.filters.http.jwt_authn/jwt_failure",
        json!({"code": 16, "message": "Jwt is expired"}),
    );
    let p = plugin(AUTHZ, &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 401, -32001, "invalid_token");
    let challenge = www_authenticate(&e);
    assert!(challenge.starts_with(r#"Bearer error="invalid_token""#), "{challenge}");
    assert!(challenge.contains(r#"error_description="the access token has expired""#));
    assert!(challenge
        .contains(r#"resource_metadata="https://mcp-gw.example.com/.well-known/oauth-protected-resource/mcp""#));
    // Refused at the headers: the body was never asked for.
    assert!(
        e.edits.is_empty()
            || !e
                .edits
                .iter()
                .any(|ed| matches!(ed, HeaderEdit::Set("authorization", _)))
    );
    // jwt_authn's "missing" status is no failure: the request goes on to the no-token challenge.
    let missing = FakeHost::default().attribute(
        "metadata/filter_metadata/envoy.filters.http.jwt_authn/jwt_failure",
        json!({"code": 16, "message": "Jwt is missing"}),
    );
    let e = exchange(&p, &missing, &Req::post(TOOLS_CALL));
    assert_refused(&e, 401, -32001, "unauthenticated");
}

#[test]
fn step_up_names_every_missing_scope_in_one_challenge() {
    let host = FakeHost::default()
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("scope", json!("openid"));
    let p = plugin(AUTHZ, &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 403, -32003, "insufficient_scope");
    let challenge = www_authenticate(&e);
    assert!(
        challenge.starts_with(r#"Bearer error="insufficient_scope", scope="mcp:read weather:read""#),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata="));
    // With enough scope (a string, or an `scp` list), signed.
    let host = FakeHost::default()
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("scope", json!("openid mcp:read weather:read"));
    assert!(exchange(&p, &host, &Req::post(TOOLS_CALL)).forwarded.is_some());
    let host = FakeHost::default()
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("scp", json!(["mcp:read", "weather:read"]));
    assert!(exchange(&p, &host, &Req::post(TOOLS_CALL)).forwarded.is_some());
    // A broader scope implies the narrower ones.
    let host = FakeHost::default()
        .jwt_claim("sub", json!("root"))
        .jwt_claim("scope", json!("admin"));
    assert!(exchange(&p, &host, &Req::post(TOOLS_CALL)).forwarded.is_some());
    // Wildcard keys: admin_* tools need `admin`.
    let admin_call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"admin_reset"}}"#;
    let host = FakeHost::default()
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("scope", json!("mcp:read"));
    let e = exchange(&p, &host, &Req::post(admin_call));
    assert!(
        www_authenticate(&e).contains(r#"scope="admin mcp:read""#),
        "{}",
        www_authenticate(&e)
    );
    // Methods without requirements need nothing.
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    assert!(exchange(&p, &host, &Req::post(list)).forwarded.is_some());
    // A verified user whose token carries no scope claim at all: 403 for the scope, not 401 for a token.
    let host = FakeHost::default().jwt_claim("sub", json!("alice"));
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 403, -32003, "insufficient_scope");
}

#[test]
fn client_info_is_copied_as_a_claim_never_an_identity() {
    let host = FakeHost::default();
    let p = plugin(
        r#"{"copy_claims":{"client_name":"client_info:name","client_version":"client_info:version"}}"#,
        &host,
    );
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28",
        "io.modelcontextprotocol/clientInfo":{"name":"ExampleClient","version":"1.0.0"}}}});
    let e = exchange(&p, &host, &Req::post(&body.to_string()));
    let claims = verified_claims(&p, &host, &e, "mcp");
    assert_eq!(
        (claims["client_name"].as_str(), claims["client_version"].as_str()),
        (Some("ExampleClient"), Some("1.0.0"))
    );
    let e = Plugin::load(br#"{"identity":{"subject":["client_info:name"]}}"#, None, &host)
        .err()
        .unwrap();
    assert!(
        e.contains("identity.subject[0]") && e.contains("never an identity"),
        "{e}"
    );
}

#[test]
fn authorization_config_is_validated_with_the_field_named() {
    let host = FakeHost::default();
    for (config, field) in [
        (
            r#"{"protected_resources":[{"resource":"mcp-gw/mcp","authorization_servers":["https://a"]}]}"#,
            "protected_resources[0].resource",
        ),
        (
            r#"{"protected_resources":[{"resource":"https://gw/mcp#x","authorization_servers":["https://a"]}]}"#,
            "protected_resources[0].resource",
        ),
        (
            r#"{"protected_resources":[{"resource":"https://gw/mcp","authorization_servers":[]}]}"#,
            "protected_resources[0].authorization_servers",
        ),
        (
            r#"{"protected_resources":[{"resource":"https://gw/mcp","authorization_servers":["a"]}]}"#,
            "protected_resources[0].authorization_servers[0]",
        ),
        (
            r#"{"protected_resources":[{"resource":"https://gw/mcp","authorization_servers":["https://a"]},{"resource":"https://gw/mcp/","authorization_servers":["https://a"]}]}"#,
            "protected_resources[1].resource",
        ),
        (
            r#"{"protected_resources":[{"resource":"https://gw/mcp","authorization_servers":["https://a"],"extra":1}]}"#,
            "protected_resources[0]",
        ),
        (
            r#"{"required_incoming_scopes":{"tools/call:a b":["x"]}}"#,
            "required_incoming_scopes.<14 bytes, not shown>",
        ),
        (
            r#"{"required_incoming_scopes":{"tools/call":["a b"]}}"#,
            "required_incoming_scopes.tools/call[0]",
        ),
        (
            r#"{"required_incoming_scopes":{"tools/call":[]}}"#,
            "required_incoming_scopes.tools/call",
        ),
        (r#"{"scope_hierarchy":{"a":["b"],"b":["a"]}}"#, "scope_hierarchy.a"),
    ] {
        let e = Plugin::load(config.as_bytes(), None, &host).err().unwrap();
        assert!(e.contains(&format!("field `{field}")), "{config}: {e}");
    }
}

fn modern_headers(req: Req, method: &str, name: Option<&str>) -> Req {
    let req = req
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    match name {
        Some(name) => req.header("mcp-name", name),
        None => req,
    }
}

#[test]
fn header_mode_signs_at_the_headers_without_reading_the_body() {
    let host = FakeHost::default();
    let p = plugin(r#"{"scope_source":"headers","max_body_bytes":64}"#, &host);
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_weather","arguments":{{"x":"{}"}}}}}}"#,
        "y".repeat(1000)
    );
    let mut filter = Request::new(p.clone());
    *host.headers.borrow_mut() = Headers(modern_headers(Req::post(&big), "tools/call", Some("get_weather")).headers);
    let step = filter.on_request_headers(&host, false);
    // Continued at once: no pause, so no allow_on_headers_stop_iteration needed.
    assert_eq!(step.next, Next::Continue);
    let e = exchange(
        &p,
        &host,
        &modern_headers(Req::post(&big), "tools/call", Some("get_weather")),
    );
    // The body (over max_body_bytes) streamed through untouched.
    assert_eq!(e.forwarded.as_ref().unwrap().1, big.as_bytes());
    assert_eq!(
        verified_claims(&p, &host, &e, "mcp")["scope"],
        "mcp:tools/call mcp:tools/get_weather:call"
    );
    // Body mode refuses the same body.
    let body_mode = plugin(r#"{"max_body_bytes":64}"#, &host);
    let e = exchange(
        &body_mode,
        &host,
        &modern_headers(Req::post(&big), "tools/call", Some("get_weather")),
    );
    assert_refused(&e, 413, -32600, "body_too_large");
}

#[test]
fn header_mode_trusts_the_server_to_bind_headers_to_the_body() {
    // The documented trust model: the filter does not read the body; a 2026-07-28 server MUST refuse this.
    let host = FakeHost::default();
    let p = plugin(r#"{"scope_source":"headers"}"#, &host);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all"}}"#;
    let e = exchange(
        &p,
        &host,
        &modern_headers(Req::post(body), "tools/call", Some("get_weather")),
    );
    assert_eq!(
        verified_claims(&p, &host, &e, "mcp")["scope"],
        "mcp:tools/call mcp:tools/get_weather:call"
    );
    // The headers still follow MCP's rules: a name that could not be a tool, or a name on a method without one.
    for (method, name) in [
        ("tools/call", Some("a b")),
        ("tools/list", Some("x")),
        ("tools call", None),
    ] {
        let e = exchange(&p, &host, &modern_headers(Req::post(body), method, name));
        assert_refused(&e, 400, -32020, "header_mismatch");
    }
    // The sentinel is decoded.
    let e = exchange(
        &p,
        &host,
        &modern_headers(Req::post(body), "prompts/get", Some("=?base64?Y29kZV9yZXZpZXc=?=")),
    );
    assert_eq!(
        verified_claims(&p, &host, &e, "mcp")["scope"],
        "mcp:prompts/code_review:get mcp:prompts/get"
    );
}

#[test]
fn header_mode_falls_back_to_the_body_or_refuses_without_buffering() {
    let host = FakeHost::default();
    let legacy = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#;
    // Older protocol: the body is read (buffering allowed, the default).
    let p = plugin(r#"{"scope_source":"headers"}"#, &host);
    let e = exchange(
        &p,
        &host,
        &Req::post(legacy).header("mcp-protocol-version", "2025-11-25"),
    );
    assert_eq!(
        verified_claims(&p, &host, &e, "mcp")["scope"],
        "mcp:tools/call mcp:tools/get_weather:call"
    );
    // ... with the body-mode checks (a lying header is still caught).
    let e = exchange(&p, &host, &Req::post(legacy).header("mcp-name", "delete_all"));
    assert_refused(&e, 400, -32020, "header_mismatch");
    // Without buffering (a plain Istio WasmPlugin): what the headers cannot scope is refused, saying what is needed.
    let p = plugin(r#"{"scope_source":"headers","allow_body_buffering":false}"#, &host);
    for request in [
        Req::post(legacy),
        Req::post(legacy).header("mcp-protocol-version", "2025-11-25"),
        modern_headers(Req::post(legacy), "tools/call", None),
    ] {
        let e = exchange(&p, &host, &request);
        assert_refused(&e, 400, -32020, "header_mismatch");
        assert!(e.json()["error"]["message"].as_str().unwrap().contains("Mcp-Method"));
    }
    // GET and DELETE carry no body: signed at the headers in either mode.
    assert!(exchange(&p, &host, &Req::new("GET", "/mcp")).forwarded.is_some());
    let e = Plugin::load(br#"{"allow_body_buffering":false}"#, None, &host)
        .err()
        .unwrap();
    assert!(e.contains("field `allow_body_buffering`"), "{e}");
}

#[test]
fn header_mode_applies_the_allow_list_and_step_up_to_the_header_names() {
    let host = FakeHost::default()
        .attribute(
            "xds/route_metadata/filter_metadata/mcp_jwt_signer",
            json!({"allowed_tools": ["get_weather"], "scope_source": "headers"}),
        )
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("scope", json!("mcp:tools"));
    let p = plugin(
        r#"{"identity":{"subject":["jwt:sub"]},"required_incoming_scopes":{"tools/call:get_weather":["weather:read"]}}"#,
        &host,
    );
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#;
    let e = exchange(
        &p,
        &host,
        &modern_headers(Req::post(body), "tools/call", Some("delete_all")),
    );
    assert_refused(&e, 403, -32003, "tool_not_allowed");
    let e = exchange(
        &p,
        &host,
        &modern_headers(Req::post(body), "tools/call", Some("get_weather")),
    );
    assert_refused(&e, 403, -32003, "insufficient_scope");
    let bad = FakeHost::default().attribute(
        "xds/route_metadata/filter_metadata/mcp_jwt_signer",
        json!({"scope_source": "header"}),
    );
    let e = exchange(&p, &bad, &Req::post(body));
    assert_refused(&e, 500, -32603, "bad_route_metadata");
}

fn audit_of(e: &Exchange) -> HashMap<&'static str, Value> {
    e.effects.audit.iter().cloned().collect()
}

#[test]
fn the_audit_fields_name_who_called_which_tool_with_which_token() {
    let host = FakeHost::default();
    let p = plugin(r#"{"identity":{"subject":["header:x-user-id"]}}"#, &host);
    let alice = || Req::post(TOOLS_CALL).header("x-user-id", "alice");
    let first = exchange(&p, &host, &alice());
    let claims = verified_claims(&p, &host, &first, "mcp");
    let a = audit_of(&first);
    assert_eq!(a["decision"], "signed");
    assert_eq!(a["sub"], "alice");
    assert_eq!(a["act_sub"], "mcp-gateway");
    assert_eq!(a["methods"], json!(["tools/call"]));
    assert_eq!(a["tool"], "get_weather");
    assert_eq!(a["jti"], claims["jti"]);
    assert_eq!(a["aud"], claims["aud"]);
    assert_eq!(a["exp"], claims["exp"]);
    assert_eq!(a["cache"], false);
    assert!(!a.contains_key("reason"));
    let token = first.forwarded_header("authorization").unwrap().to_string();
    let token = token.strip_prefix("Bearer ").unwrap();
    assert!(
        first
            .effects
            .audit
            .iter()
            .all(|(_, v)| !v.to_string().contains(token.split('.').nth(2).unwrap())),
        "the token never reaches the audit fields"
    );
    // A reused token is the same token: same jti and exp, cache true.
    let again = audit_of(&exchange(&p, &host, &alice()));
    assert_eq!(
        (&again["jti"], &again["exp"], &again["cache"]),
        (&a["jti"], &a["exp"], &json!(true))
    );
    // A refusal names its reason and nobody's identity.
    let refused = audit_of(&exchange(&p, &host, &Req::post("{").header("x-user-id", "alice")));
    assert_eq!(
        refused,
        HashMap::from([("decision", json!("refused")), ("reason", json!("parse_error"))])
    );
    // A document served.
    let served = audit_of(&exchange(
        &p,
        &host,
        &Req::new("GET", "/.well-known/openid-configuration"),
    ));
    assert_eq!(
        served,
        HashMap::from([("decision", json!("served")), ("endpoint", json!("discovery"))])
    );
}

#[test]
fn audit_omit_and_audit_fields_false_keep_fields_out() {
    let host = FakeHost::default();
    let p = plugin(
        r#"{"identity":{"subject":["header:x-user-id"]},"audit_omit":["sub","act_sub"]}"#,
        &host,
    );
    let a = audit_of(&exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("x-user-id", "alice"),
    ));
    assert!(!a.contains_key("sub") && !a.contains_key("act_sub"), "{a:?}");
    assert_eq!(a["tool"], "get_weather");
    assert!(!a.contains_key("prompt"));
    let prompt = r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"summarise"}}"#;
    let a = audit_of(&exchange(&p, &host, &Req::post(prompt)));
    assert_eq!((&a["prompt"], a.get("tool")), (&json!("summarise"), None));
    let off = plugin(r#"{"audit_fields":false}"#, &host);
    assert!(exchange(&off, &host, &Req::post(TOOLS_CALL)).effects.audit.is_empty());
    assert!(exchange(&off, &host, &Req::post("{")).effects.audit.is_empty());
    let err = Plugin::load(br#"{"audit_omit":["token"]}"#, None, &host)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("audit_omit[0]") && err.contains("not an audit field"),
        "{err}"
    );
}

#[test]
fn a_claim_set_is_minted_once_per_envoy_not_once_per_worker() {
    let config = r#"{"identity":{"subject":["header:x-user-id"]}}"#;
    let a = FakeHost::default();
    let b = FakeHost::with_shared(a.shared.clone());
    let (pa, pb) = (plugin(config, &a), plugin(config, &b));
    let alice = || Req::post(TOOLS_CALL).header("x-user-id", "alice");
    let minted = exchange(&pa, &a, &alice());
    assert_eq!(minted.effects.metrics[0], Metric::TokensMinted);
    // Worker B has never seen alice: it takes worker A's token from the shared cache, and keeps it.
    let reused = exchange(&pb, &b, &alice());
    assert_eq!(
        reused.effects.metrics,
        vec![Metric::TokenCacheHits, Metric::TokenCacheSharedHits]
    );
    assert_eq!(
        reused.forwarded_header("authorization"),
        minted.forwarded_header("authorization")
    );
    assert_eq!(audit_of(&reused)["jti"], audit_of(&minted)["jti"]);
    let again = exchange(&pb, &b, &alice());
    assert_eq!(again.effects.metrics, vec![Metric::TokenCacheHits]);
    // Another user, another tool, another configuration: each its own token.
    let bob = exchange(&pb, &b, &Req::post(TOOLS_CALL).header("x-user-id", "bob"));
    assert_eq!(bob.effects.metrics[0], Metric::TokensMinted);
    assert_eq!(verified_claims(&pb, &b, &bob, "mcp")["sub"], "bob");
    let other_tool = TOOLS_CALL.replace("get_weather", "get_time");
    let other = exchange(&pb, &b, &Req::post(&other_tool).header("x-user-id", "alice"));
    assert_eq!(other.effects.metrics[0], Metric::TokensMinted);
    let c = FakeHost::with_shared(a.shared.clone());
    let pc = plugin(r#"{"identity":{"subject":["header:x-user-id"]},"ttl_seconds":600}"#, &c);
    let longer = exchange(&pc, &c, &alice());
    assert_eq!(
        longer.effects.metrics[0],
        Metric::TokensMinted,
        "another configuration never reuses it"
    );
    // The shared cache can be switched off: each worker mints for itself.
    let off = r#"{"identity":{"subject":["header:x-user-id"]},"token_cache":{"shared_max_entries":0}}"#;
    let d = FakeHost::with_shared(a.shared.clone());
    let e = FakeHost::with_shared(a.shared.clone());
    let (pd, pe) = (plugin(off, &d), plugin(off, &e));
    assert_eq!(exchange(&pd, &d, &alice()).effects.metrics[0], Metric::TokensMinted);
    assert_eq!(exchange(&pe, &e, &alice()).effects.metrics[0], Metric::TokensMinted);
}

#[test]
fn shared_cache_bounds_are_validated_naming_the_field() {
    let host = FakeHost::default();
    for (config, field) in [
        (
            r#"{"token_cache":{"shared_max_entries":2000000}}"#,
            "token_cache.shared_max_entries",
        ),
        (
            r#"{"token_cache":{"shared_max_bytes":2000000000}}"#,
            "token_cache.shared_max_bytes",
        ),
        (
            r#"{"token_cache":{"shared_max_entries":4096,"shared_max_bytes":4096}}"#,
            "token_cache.shared_max_bytes",
        ),
    ] {
        let err = Plugin::load(config.as_bytes(), None, &host).err().unwrap();
        assert!(err.contains(field), "{config}: {err}");
    }
}

// Cases that mutation testing (docs/mutants.md) found no test for.

#[test]
fn a_resource_without_scopes_supported_challenges_without_a_scope() {
    let host = FakeHost::default();
    let resource = r#""protected_resources": [{"resource": "https://mcp-gw.example.com/mcp",
        "authorization_servers": ["https://auth.example.com"]SCOPES}]"#;
    let config = |scopes: &str| {
        format!(
            r#"{{"identity": {{"subject": ["jwt:sub"]}}, "require_subject": true, {}}}"#,
            resource.replace("SCOPES", scopes)
        )
    };
    // No step-up rules: the challenge's scope can only come from the resource's scopes_supported.
    let with = plugin(&config(r#", "scopes_supported": ["mcp:read"]"#), &host);
    let e = exchange(&with, &host, &Req::post(TOOLS_CALL));
    assert!(
        www_authenticate(&e).starts_with(r#"Bearer scope="mcp:read", "#),
        "{}",
        www_authenticate(&e)
    );
    let p = plugin(&config(""), &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 401, -32001, "unauthenticated");
    assert_eq!(
        www_authenticate(&e),
        r#"Bearer resource_metadata="https://mcp-gw.example.com/.well-known/oauth-protected-resource/mcp""#
    );
}

#[test]
fn serving_protected_resource_metadata_is_audited() {
    let host = FakeHost::default();
    let p = plugin(AUTHZ, &host);
    let e = exchange(&p, &host, &Req::new("GET", "/.well-known/oauth-protected-resource/mcp"));
    assert_eq!(e.status(), 200);
    assert_eq!(
        e.effects.audit,
        vec![("decision", json!("served")), ("endpoint", json!("protected_resource"))]
    );
}

#[test]
fn a_body_scoped_route_is_refused_when_the_filter_may_not_buffer() {
    let host = FakeHost::default().attribute(
        "xds/route_metadata/filter_metadata/mcp_jwt_signer",
        json!({"scope_source": "body"}),
    );
    let p = plugin(r#"{"scope_source":"headers","allow_body_buffering":false}"#, &host);
    let e = exchange(
        &p,
        &host,
        &modern_headers(Req::post(TOOLS_CALL), "tools/call", Some("get_weather")),
    );
    assert_refused(&e, 500, -32603, "bad_route_metadata");
}

#[test]
fn a_body_of_exactly_max_body_bytes_is_read_one_more_byte_is_refused() {
    let host = FakeHost::default();
    let limit = 1024;
    let p = plugin(&format!(r#"{{"max_body_bytes":{limit}}}"#), &host);
    let padded = |len: usize| {
        let body = format!("{TOOLS_CALL}{}", " ".repeat(len - TOOLS_CALL.len()));
        assert_eq!(body.len(), len);
        body
    };
    // In one chunk, with no content-length: the body callback's own bound.
    let e = exchange(&p, &host, &Req::post(&padded(limit)));
    assert!(e.forwarded.is_some(), "{:?}", e.response);
    let e = exchange(&p, &host, &Req::post(&padded(limit + 1)));
    assert_refused(&e, 413, -32600, "body_too_large");
}

#[test]
fn trailers_after_a_request_signed_at_the_headers_go_on() {
    let host = FakeHost::default();
    let p = plugin(r#"{"scope_source":"headers"}"#, &host);
    let mut request = modern_headers(Req::post(TOOLS_CALL), "tools/call", Some("get_weather"));
    request.trailers = true;
    let e = exchange(&p, &host, &request);
    assert!(e.forwarded.is_some(), "{:?}", e.response);
    assert_eq!(
        verified_claims(&p, &host, &e, "mcp")["scope"],
        "mcp:tools/call mcp:tools/get_weather:call"
    );
}

#[test]
fn the_token_is_stamped_with_the_clock_in_seconds() {
    let host = FakeHost::default();
    host.now_micros.set(1_700_000_123_456_789);
    let p = plugin(r#"{"ttl_seconds":60}"#, &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    let claims = verified_claims(&p, &host, &e, "mcp");
    assert_eq!(claims["iat"], 1_700_000_123);
    assert_eq!(claims["exp"], 1_700_000_183);
}
