//! The whole request path through the fake host: every endpoint, every refusal, the token cache, the shared
//! generated key, and what reaches the upstream. Tokens are checked with `jsonwebtoken`, an independent verifier.

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::host::fake::{send, send_through, Exchange, FakeHost, Request as Req, Router};
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
