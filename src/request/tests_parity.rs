//! The LiteLLM-parity options through the whole request path on the fake host: RFC 7662 introspection (the fake
//! host's responder plays the authorization server), the channel token, the debug header, fixed scopes, the token
//! header and the client's own `Authorization`, and delegation chains. Tokens are checked with `jsonwebtoken`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::host::fake::{send, Exchange, FakeHost, Request as Req, Router};
use crate::host::{Callout, Headers, LogLevel, Metric};
use crate::plugin::Plugin;

const TOOLS_CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_weather"}}"#;
const NOW: u64 = 1_700_000_000;
const SECRET: &str = "s3cret-client-pass";
const OPAQUE: &str = "opaque-token-Zm9vYmFy";

fn env(name: &str) -> Option<String> {
    match name {
        "MCP_JWT_INTROSPECTION_CLIENT_ID" => Some("gateway".into()),
        "MCP_JWT_INTROSPECTION_CLIENT_SECRET" => Some(SECRET.into()),
        _ => None,
    }
}

fn plugin(config: &str, host: &FakeHost) -> Rc<Plugin> {
    match Plugin::load_with_env(config.as_bytes(), &env, host) {
        Ok(loaded) => Rc::new(loaded.plugin),
        Err(e) => panic!("{e}"),
    }
}

fn exchange(plugin: &Rc<Plugin>, host: &FakeHost, request: &Req) -> Exchange {
    let mut filter = Request::new(plugin.clone());
    send(&mut filter, host, request)
}

fn jwks(plugin: &Rc<Plugin>, host: &FakeHost) -> Value {
    exchange(plugin, host, &Req::new("GET", "/.well-known/jwks.json")).json()
}

/// Verifies `token` against the gateway's JWKS for `audience`; `Err` when a verifier would refuse it.
fn verify(plugin: &Rc<Plugin>, host: &FakeHost, token: &str, audience: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let jwks = jwks(plugin, host);
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
        .expect("kid in the JWKS")
        .clone();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.validate_exp = false; // the fake clock is in 2023
    jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation)
        .map(|t| t.claims)
        .map_err(|e| e.to_string())
}

fn bearer_in(e: &Exchange, header: &str) -> String {
    let value = e
        .forwarded_header(header)
        .unwrap_or_else(|| panic!("no {header} forwarded: {:?}", e.json()));
    value.strip_prefix("Bearer ").expect("Bearer <jwt>").to_string()
}

fn assert_refused(e: &Exchange, status: u32, code: i64, reason: &'static str) {
    assert!(e.forwarded.is_none(), "forwarded: {:?}", e.forwarded);
    assert_eq!(e.status(), status, "{:?}", e.json());
    assert_eq!(e.json()["error"]["code"], code, "{:?}", e.json());
    assert!(
        e.effects.metrics.contains(&Metric::Refused(reason)),
        "{:?}",
        e.effects.metrics
    );
    let line = &e.effects.logs.last().expect("a log line").1;
    assert!(
        line.starts_with(&format!("refused reason={reason} status={status}")),
        "{line}"
    );
}

fn header_of(e: &Exchange, name: &str) -> Option<String> {
    e.response
        .as_ref()?
        .headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
}

// ------------------------------------------------------------------------------------------------------------
// introspection
// ------------------------------------------------------------------------------------------------------------

/// A fake authorization server: answers introspection from a table of tokens, counts the calls, and checks the
/// request is what RFC 7662 asks for.
#[derive(Default)]
struct Server {
    active: RefCell<HashMap<String, Value>>,
    calls: RefCell<Vec<Callout>>,
    /// Replaces the answer when set: (status, body), or `None` for no answer.
    broken: RefCell<Option<Option<(u32, String)>>>,
}

impl Server {
    fn host(self: &Rc<Self>) -> FakeHost {
        let server = self.clone();
        FakeHost {
            responder: Some(Rc::new(move |callout: &Callout| server.answer(callout))),
            ..FakeHost::default()
        }
        .at(NOW)
    }

    fn answer(&self, callout: &Callout) -> Option<CalloutResponse> {
        self.calls.borrow_mut().push(callout.clone());
        if let Some(broken) = self.broken.borrow().clone() {
            return broken.map(|(status, body)| CalloutResponse {
                status,
                headers: Vec::new(),
                body: body.into_bytes(),
            });
        }
        let basic = callout
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone());
        use base64::Engine;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("gateway:{SECRET}"))
        );
        if basic.as_deref() != Some(expected.as_str()) {
            return Some(CalloutResponse {
                status: 401,
                headers: Vec::new(),
                body: br#"{"error":"invalid_client"}"#.to_vec(),
            });
        }
        let body = String::from_utf8(callout.body.clone()).unwrap();
        let token = body
            .strip_prefix("token=")
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string();
        let doc = self
            .active
            .borrow()
            .get(&token)
            .cloned()
            .unwrap_or(json!({"active": false}));
        Some(CalloutResponse {
            status: 200,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: doc.to_string().into_bytes(),
        })
    }
}

const INTROSPECTION: &str = r#""introspection":{"cluster":"oauth_as","path":"/token/introspection",
    "authority":"as.example.com","cache":{"max_seconds":30}}"#;

fn introspecting(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(
        r#"{{{INTROSPECTION},"identity":{{"subject":["introspection:sub","introspection:client_id"]}},
            "copy_claims":{{"client":"introspection:client_id"}}{sep}{extra}}}"#
    )
}

#[test]
fn an_opaque_token_is_introspected_its_claims_become_identity_and_it_is_never_forwarded() {
    let server = Rc::new(Server::default());
    server.active.borrow_mut().insert(
        OPAQUE.into(),
        json!({"active": true, "client_id": "svc", "exp": NOW + 300, "scope": "mcp:tools/call"}),
    );
    let host = server.host();
    let p = plugin(&introspecting(""), &host);
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}")),
    );
    let claims = verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap();
    assert_eq!(
        (claims["sub"].as_str(), claims["client"].as_str()),
        (Some("svc"), Some("svc"))
    );
    // The client's token reached the authorization server, and nothing else did.
    let (call,) = (e.callouts[0].clone(),);
    assert_eq!(e.callouts.len(), 1);
    assert_eq!(call.cluster, "oauth_as");
    assert_eq!(
        String::from_utf8(call.body).unwrap(),
        format!("token={OPAQUE}&token_type_hint=access_token")
    );
    let (headers, _) = e.forwarded.as_ref().unwrap();
    assert!(headers
        .all("authorization")
        .all(|v| !String::from_utf8_lossy(v).contains(OPAQUE)));
    assert!(e.effects.metrics.contains(&Metric::Introspections));
    // Neither the token nor the secret is in a log line or in the Debug output of what the filter did.
    let debug = format!("{:?} {:?}", e.effects, e.callouts);
    assert!(
        !debug.contains(OPAQUE) && !debug.contains(SECRET) && !debug.contains("Basic Z2F0"),
        "{debug}"
    );

    // The second request is answered from the cache ...
    let again = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}")),
    );
    assert!(again.callouts.is_empty());
    assert!(again.effects.metrics.contains(&Metric::IntrospectionCacheHits));
    assert!(again.forwarded.is_some());
    // ... until max_seconds (30) have passed: then a revoked token is refused.
    server.active.borrow_mut().clear();
    host.now_micros.set((NOW + 29) * 1_000_000);
    assert!(exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}"))
    )
    .forwarded
    .is_some());
    host.now_micros.set((NOW + 31) * 1_000_000);
    let revoked = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}")),
    );
    assert_refused(&revoked, 401, -32001, "invalid_token");
    assert_eq!(revoked.callouts.len(), 1);
}

#[test]
fn an_inactive_token_is_401_invalid_token_and_is_not_cached() {
    let server = Rc::new(Server::default());
    let host = server.host();
    let p = plugin(&introspecting(""), &host);
    let request = Req::post(TOOLS_CALL).header("authorization", "Bearer not-a-real-token");
    for _ in 0..2 {
        let e = exchange(&p, &host, &request);
        assert_refused(&e, 401, -32001, "invalid_token");
        assert_eq!(e.json()["id"], 7);
        assert_eq!(
            header_of(&e, "www-authenticate").as_deref(),
            Some(r#"Bearer error="invalid_token", error_description="the access token is not active""#)
        );
        assert_eq!(e.callouts.len(), 1, "inactive results are not cached");
    }
}

#[test]
fn a_result_lives_no_longer_than_the_token() {
    let server = Rc::new(Server::default());
    server
        .active
        .borrow_mut()
        .insert(OPAQUE.into(), json!({"active": true, "sub": "u", "exp": NOW + 5}));
    let host = server.host();
    let p = plugin(&introspecting(""), &host);
    let request = Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}"));
    assert_eq!(exchange(&p, &host, &request).callouts.len(), 1);
    host.now_micros.set((NOW + 4) * 1_000_000);
    assert_eq!(exchange(&p, &host, &request).callouts.len(), 0);
    host.now_micros.set((NOW + 5) * 1_000_000);
    // Past exp the cache holds nothing, and the server's (stale) answer is refused for its exp.
    let e = exchange(&p, &host, &request);
    assert_eq!(e.callouts.len(), 1);
    assert_refused(&e, 401, -32001, "invalid_token");
    assert!(e.json()["error"]["message"].as_str().unwrap().contains("expired"));
}

#[test]
fn the_cache_is_bounded_in_entries() {
    let server = Rc::new(Server::default());
    for t in ["tok-a", "tok-b"] {
        server
            .active
            .borrow_mut()
            .insert(t.into(), json!({"active": true, "sub": t}));
    }
    let host = server.host();
    let config = r#"{"introspection":{"cluster":"as","path":"/i","authority":"as","cache":{"max_entries":1}},
            "identity":{"subject":["introspection:sub"]}}"#;
    let p = plugin(config, &host);
    let send_with = |t: &str| {
        exchange(
            &p,
            &host,
            &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {t}")),
        )
    };
    assert_eq!(send_with("tok-a").callouts.len(), 1);
    assert_eq!(send_with("tok-a").callouts.len(), 0);
    assert_eq!(send_with("tok-b").callouts.len(), 1); // evicts tok-a
    assert_eq!(send_with("tok-a").callouts.len(), 1);
    let off = plugin(
        r#"{"introspection":{"cluster":"as","path":"/i","authority":"as","cache":{"max_entries":0}}}"#,
        &host,
    );
    for _ in 0..2 {
        let e = exchange(
            &off,
            &host,
            &Req::post(TOOLS_CALL).header("authorization", "Bearer tok-a"),
        );
        assert_eq!(e.callouts.len(), 1);
    }
}

#[test]
fn no_answer_an_error_status_or_garbage_fails_closed_with_the_cause_in_the_log() {
    let server = Rc::new(Server::default());
    let host = server.host();
    let p = plugin(&introspecting(""), &host);
    for (broken, cause) in [
        (None, "no answer from cluster oauth_as (an unknown cluster"),
        (Some((504, String::new())), "within introspection.timeout_ms"),
        (Some((500, "boom".to_string())), "HTTP 500"),
        (Some((502, String::new())), "HTTP 502"),
        (
            Some((401, r#"{"error":"invalid_client"}"#.to_string())),
            "client credentials",
        ),
        (Some((200, "not json".to_string())), "not JSON"),
        (Some((200, r#"{"sub":"x"}"#.to_string())), "boolean `active`"),
    ] {
        *server.broken.borrow_mut() = Some(broken);
        let e = exchange(
            &p,
            &host,
            &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}")),
        );
        assert_refused(&e, 503, -32603, "introspection_unavailable");
        let (level, line) = &e.effects.logs[0];
        assert_eq!(*level, LogLevel::Warn);
        assert!(line.contains(cause), "{line}");
        for (_, line) in &e.effects.logs {
            assert!(!line.contains(OPAQUE) && !line.contains(SECRET), "{line}");
        }
        assert!(!String::from_utf8_lossy(&e.response.as_ref().unwrap().body).contains(OPAQUE));
    }
}

#[test]
fn what_is_introspected_with_and_without_jwt_authn() {
    let server = Rc::new(Server::default());
    server
        .active
        .borrow_mut()
        .insert("jwt.looking.token".into(), json!({"active": true, "sub": "from-as"}));
    // jwt_authn verified the token: its payload is the identity, no introspection.
    // (The whole payload, as Envoy answers the namespace path; jwt_claim() sets only one claim's path.)
    let host = server.host().attribute(
        "metadata/filter_metadata/envoy.filters.http.jwt_authn/jwt_payload",
        json!({"sub": "from-jwt"}),
    );
    let config = format!(r#"{{{INTROSPECTION},"identity":{{"subject":["introspection:sub","jwt:sub"]}}}}"#);
    let p = plugin(&config, &host);
    let request = Req::post(TOOLS_CALL).header("authorization", "Bearer jwt.looking.token");
    let e = exchange(&p, &host, &request);
    assert!(e.callouts.is_empty());
    assert_eq!(
        verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["sub"],
        "from-jwt"
    );
    // introspect_verified_jwts: it is introspected too (revocation), and the introspection result is preferred.
    let config = r#"{"introspection":{"cluster":"as","path":"/i","authority":"as","introspect_verified_jwts":true},
            "identity":{"subject":["introspection:sub","jwt:sub"]}}"#;
    let p = plugin(config, &host);
    let e = exchange(&p, &host, &request);
    assert_eq!(e.callouts.len(), 1);
    assert_eq!(
        verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["sub"],
        "from-as"
    );
    // No bearer token at all: nothing to introspect; require_subject decides.
    let host = server.host();
    let p = plugin(&introspecting(r#""require_subject":true"#), &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert!(e.callouts.is_empty());
    assert_refused(&e, 401, -32001, "unauthenticated");
    // Another scheme is not a bearer token either.
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", "Basic Z3c6cw=="),
    );
    assert!(e.callouts.is_empty());
    // A malformed bearer token is refused without asking anyone.
    for bad in ["Bearer a b", "Bearer "] {
        let e = exchange(&p, &host, &Req::post(TOOLS_CALL).header("authorization", bad));
        assert!(e.callouts.is_empty());
        assert_refused(&e, 401, -32001, "invalid_token");
    }
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL)
            .header("authorization", "Bearer a")
            .header("authorization", "Bearer b"),
    );
    assert_refused(&e, 401, -32001, "invalid_token");
}

#[test]
fn introspection_claims_serve_required_claims_and_a_get_without_body() {
    let server = Rc::new(Server::default());
    server
        .active
        .borrow_mut()
        .insert(OPAQUE.into(), json!({"active": true, "sub": "u", "scope": "a b"}));
    let host = server.host();
    let p = plugin(&introspecting(r#""required_claims":["introspection:email"]"#), &host);
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}")),
    );
    assert_refused(&e, 403, -32003, "missing_required_claim");
    assert!(e.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("introspection:email"));
    let p = plugin(&introspecting(r#""required_claims":["introspection:scope"]"#), &host);
    // A GET has no body: the callout leaves from the headers phase.
    let e = exchange(
        &p,
        &host,
        &Req::new("GET", "/mcp").header("authorization", format!("Bearer {OPAQUE}")),
    );
    assert_eq!(e.callouts.len(), 1);
    assert_eq!(
        verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["scope"],
        "mcp:stream"
    );
    assert_eq!(e.edits[0], HeaderEdit::Remove("authorization"));
}

#[test]
fn introspection_needs_the_credentials_in_the_environment() {
    let host = FakeHost::default();
    let config = introspecting("");
    let none = |_: &str| None;
    let e = Plugin::load_with_env(config.as_bytes(), &none, &host).err().unwrap();
    assert!(
        e.contains("introspection.client_id_env") && e.contains("MCP_JWT_INTROSPECTION_CLIENT_ID"),
        "{e}"
    );
    assert!(Plugin::load(config.as_bytes(), None, &host).is_err());
}

// ------------------------------------------------------------------------------------------------------------
// channel token, debug header
// ------------------------------------------------------------------------------------------------------------

#[test]
fn the_channel_token_has_the_same_claims_its_own_audience_lifetime_and_jti() {
    let host = FakeHost::default().at(NOW);
    let p = plugin(
        r#"{"identity":{"subject":["header:x-user-id"]},"channel_token":{"audience":"bedrock-gateway","ttl_seconds":60}}"#,
        &host,
    );
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", "alice"));
    let access = bearer_in(&e, "authorization");
    let channel = bearer_in(&e, "x-mcp-channel-token");
    let a = verify(&p, &host, &access, "mcp").unwrap();
    let c = verify(&p, &host, &channel, "bedrock-gateway").unwrap();
    for claim in ["iss", "sub", "act", "scope", "iat", "nbf"] {
        assert_eq!(a[claim], c[claim], "{claim}");
    }
    assert_eq!(a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(), 300);
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
    assert_ne!(a["jti"], c["jti"]);
    // A verifier of access tokens refuses the channel token, and the other way round.
    assert!(verify(&p, &host, &channel, "mcp")
        .unwrap_err()
        .contains("InvalidAudience"));
    assert!(verify(&p, &host, &access, "bedrock-gateway").is_err());
    // Cached together: the next identical request reuses both (reuse window: half the shorter lifetime).
    let again = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", "alice"));
    assert_eq!(again.effects.metrics, vec![Metric::TokenCacheHits]);
    assert_eq!(
        (
            bearer_in(&again, "authorization"),
            bearer_in(&again, "x-mcp-channel-token")
        ),
        (access, channel)
    );
    host.now_micros.set((NOW + 31) * 1_000_000);
    let later = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", "alice"));
    assert_eq!(later.effects.metrics[0], Metric::TokensMinted);
    // A client cannot send its own channel token.
    let forged = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("x-mcp-channel-token", "Bearer forged"),
    );
    assert_ne!(
        forged.forwarded_header("x-mcp-channel-token").as_deref(),
        Some("Bearer forged")
    );
}

#[test]
fn a_route_whose_audience_is_the_channel_audience_is_refused() {
    let host = FakeHost::default().attribute(
        "xds/route_metadata/filter_metadata/mcp_jwt_signer",
        json!({"audience": "bedrock-gateway"}),
    );
    let p = plugin(r#"{"channel_token":{"audience":"bedrock-gateway"}}"#, &host);
    assert_refused(
        &exchange(&p, &host, &Req::post(TOOLS_CALL)),
        500,
        -32603,
        "bad_route_metadata",
    );
}

#[test]
fn the_debug_header_has_litellms_exact_format_and_never_the_token() {
    let host = FakeHost::default().at(NOW);
    let p = plugin(
        r#"{"issuer":"https://gw.example.com","identity":{"subject":["header:x-user-id"]},"debug_header":true}"#,
        &host,
    );
    let kid = jwks(&p, &host)["keys"][0]["kid"].as_str().unwrap().to_string();
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", "alice"));
    let token = bearer_in(&e, "authorization");
    let debug = e.forwarded_header("x-mcp-jwt-debug").unwrap();
    assert_eq!(
        debug,
        format!(
            "v=1; kid={kid}; sub=alice; iss=https://gw.example.com; exp={}; scope=mcp:tools/call mcp:tools/get_weather:call",
            NOW + 300
        )
    );
    assert!(!debug.contains(&token) && !debug.contains(token.split('.').nth(1).unwrap()));
    // From the cache: the same summary.
    let again = exchange(&p, &host, &Req::post(TOOLS_CALL).header("x-user-id", "alice"));
    assert_eq!(again.forwarded_header("x-mcp-jwt-debug").unwrap(), debug);
    // A long scope is cut at 80 characters.
    let batch: Vec<Value> = (0..6)
        .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":format!("tool_{i}")}}))
        .collect();
    let e = exchange(&p, &host, &Req::post(&Value::Array(batch).to_string()));
    let scope = verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["scope"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = e.forwarded_header("x-mcp-jwt-debug").unwrap();
    assert_eq!(shown.split_once("; scope=").unwrap().1, format!("{}...", &scope[..77]));
    // A value that would break the header is escaped (override_claims can put anything in sub).
    let p = plugin(
        r#"{"override_claims":{"sub":"a\r\nx-evil: 1"},"debug_header":{"name":"x-litellm-mcp-debug"}}"#,
        &host,
    );
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    let shown = e.forwarded_header("x-litellm-mcp-debug").unwrap();
    assert!(shown.contains("sub=a%0D%0Ax-evil: 1;"), "{shown}");
    // Off by default.
    let p = plugin("{}", &host);
    assert!(exchange(&p, &host, &Req::post(TOOLS_CALL))
        .forwarded_header("x-mcp-jwt-debug")
        .is_none());
}

// ------------------------------------------------------------------------------------------------------------
// fixed scopes, token header, client authorization: per route
// ------------------------------------------------------------------------------------------------------------

/// Routes chosen by path prefix (as Envoy matches them), each with its own metadata.
fn routed(routes: Vec<(&'static str, Value)>) -> FakeHost {
    let router: Router = Rc::new(move |headers: &Headers| {
        let path = String::from_utf8_lossy(headers.first(":path").unwrap_or_default()).into_owned();
        let (prefix, metadata) = routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .unwrap_or(&routes[routes.len() - 1]);
        HashMap::from([
            ("xds/route_name".to_string(), json!(prefix)),
            ("xds/cluster_name".to_string(), json!(prefix)),
            (
                "xds/route_metadata/filter_metadata/mcp_jwt_signer".to_string(),
                metadata.clone(),
            ),
        ])
    });
    FakeHost {
        router: Some(router),
        ..FakeHost::default()
    }
}

fn post_to(path: &str) -> Req {
    Req::post(TOOLS_CALL).set(":path", path)
}

#[test]
fn fixed_scopes_plugin_wide_and_per_route() {
    let host = routed(vec![
        ("/fixed/", json!({"fixed_scopes": ["weather:read", "weather:write"]})),
        ("/", json!({})),
    ]);
    let p = plugin("{}", &host);
    let fixed = exchange(&p, &host, &post_to("/fixed/mcp"));
    assert_eq!(
        verify(&p, &host, &bearer_in(&fixed, "authorization"), "mcp").unwrap()["scope"],
        "weather:read weather:write"
    );
    let computed = exchange(&p, &host, &post_to("/mcp"));
    assert_eq!(
        verify(&p, &host, &bearer_in(&computed, "authorization"), "mcp").unwrap()["scope"],
        "mcp:tools/call mcp:tools/get_weather:call"
    );
    // Plugin-wide, with the route's list winning.
    let p = plugin(r#"{"fixed_scopes":["mcp:tools/call","mcp:tools/list"]}"#, &host);
    let e = exchange(&p, &host, &post_to("/mcp"));
    assert_eq!(
        verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["scope"],
        "mcp:tools/call mcp:tools/list"
    );
    let e = exchange(&p, &host, &post_to("/fixed/mcp"));
    assert_eq!(
        verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["scope"],
        "weather:read weather:write"
    );
    // A bad list in route metadata is the operator's error.
    let bad = routed(vec![("/", json!({"fixed_scopes": ["two words"]}))]);
    assert_refused(&exchange(&p, &bad, &post_to("/mcp")), 500, -32603, "bad_route_metadata");
}

#[test]
fn a_forwarding_route_delivers_both_tokens_and_the_default_route_still_strips() {
    let host = routed(vec![
        (
            "/upstream-oauth/",
            json!({"token_header": "x-mcp-gateway-token", "client_authorization": "forward"}),
        ),
        ("/", json!({})),
    ]);
    let p = plugin("{}", &host);
    let client = "Bearer the-upstreams-own-token";
    let e = exchange(
        &p,
        &host,
        &post_to("/upstream-oauth/mcp")
            .header("authorization", client)
            .header("x-mcp-gateway-token", "Bearer forged-by-the-client"),
    );
    // The client's own token reaches its upstream untouched; the minted one travels beside it.
    assert_eq!(e.forwarded_header("authorization").as_deref(), Some(client));
    let minted = bearer_in(&e, "x-mcp-gateway-token");
    assert_eq!(
        verify(&p, &host, &minted, "mcp").unwrap()["scope"],
        "mcp:tools/call mcp:tools/get_weather:call"
    );
    assert!(!e.edits.contains(&HeaderEdit::Remove("authorization")));
    assert!(e.edits.contains(&HeaderEdit::RemoveNamed("x-mcp-gateway-token".into())));
    // The default route strips the client's token and puts the minted one in authorization.
    let e = exchange(&p, &host, &post_to("/mcp").header("authorization", client));
    assert_eq!(e.edits[0], HeaderEdit::Remove("authorization"));
    let forwarded = bearer_in(&e, "authorization");
    assert_ne!(forwarded, "the-upstreams-own-token");
    verify(&p, &host, &forwarded, "mcp").unwrap();
    assert!(e.forwarded_header("x-mcp-gateway-token").is_none());
    // Forwarding with the token in authorization would overwrite the client's credential: refused.
    let clash = routed(vec![("/", json!({"client_authorization": "forward"}))]);
    let e = exchange(&p, &clash, &post_to("/mcp").header("authorization", client));
    assert_refused(&e, 500, -32603, "bad_route_metadata");
}

#[test]
fn plugin_wide_forward_with_another_token_header() {
    let host = FakeHost::default();
    let p = plugin(
        r#"{"token_header":"x-mcp-gateway-token","client_authorization":"forward"}"#,
        &host,
    );
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL).header("authorization", "Bearer own"));
    assert_eq!(e.forwarded_header("authorization").as_deref(), Some("Bearer own"));
    verify(&p, &host, &bearer_in(&e, "x-mcp-gateway-token"), "mcp").unwrap();
    // token_header alone (strip): the client's token is removed, the minted one is in the other header only.
    let p = plugin(r#"{"token_header":"x-mcp-gateway-token"}"#, &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL).header("authorization", "Bearer own"));
    assert!(e.forwarded_header("authorization").is_none());
    verify(&p, &host, &bearer_in(&e, "x-mcp-gateway-token"), "mcp").unwrap();
}

// ------------------------------------------------------------------------------------------------------------
// delegation
// ------------------------------------------------------------------------------------------------------------

#[test]
fn an_incoming_act_is_nested_and_a_foreign_may_act_is_refused() {
    let host = FakeHost::default()
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("act", json!({"sub": "agent-7", "act": {"sub": "orchestrator"}}));
    let p = plugin(r#"{"identity":{"subject":["jwt:sub"]},"actor":"mcp-gateway"}"#, &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    let claims = verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap();
    assert_eq!(
        claims["act"],
        json!({"sub": "mcp-gateway", "act": {"sub": "agent-7", "act": {"sub": "orchestrator"}}})
    );
    // may_act naming another actor: the user did not delegate to this gateway.
    let host = FakeHost::default()
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("may_act", json!({"sub": "some-other-service"}));
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 403, -32003, "delegation_refused");
    assert!(e.json()["error"]["message"].as_str().unwrap().contains("may_act"));
    // may_act naming this gateway's actor (its team from identity.actor) is allowed.
    let host = FakeHost::default()
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("may_act", json!({"sub": "team-blue"}));
    let p2 = plugin(
        r#"{"identity":{"subject":["jwt:sub"],"actor":["literal:team-blue"]}}"#,
        &host,
    );
    let e = exchange(&p2, &host, &Req::post(TOOLS_CALL));
    assert_eq!(
        verify(&p2, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["act"],
        json!({"sub": "team-blue"})
    );
    // Switched off: neither.
    let off = plugin(r#"{"delegation":{"nest_act":false,"enforce_may_act":false}}"#, &host);
    let e = exchange(&off, &host, &Req::post(TOOLS_CALL));
    assert_eq!(
        verify(&off, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["act"],
        json!({"sub": "mcp-gateway"})
    );
}

#[test]
fn each_delegation_switch_works_without_the_other() {
    let host = FakeHost::default()
        .jwt_claim("sub", json!("alice"))
        .jwt_claim("act", json!({"sub": "agent-7"}))
        .jwt_claim("may_act", json!({"sub": "some-other-service"}));
    // Nesting off, may_act still enforced.
    let enforce_only = plugin(
        r#"{"identity":{"subject":["jwt:sub"]},"actor":"mcp-gateway","delegation":{"nest_act":false}}"#,
        &host,
    );
    let e = exchange(&enforce_only, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 403, -32003, "delegation_refused");
    // may_act not enforced, the chain still nested.
    let nest_only = plugin(
        r#"{"identity":{"subject":["jwt:sub"]},"actor":"mcp-gateway","delegation":{"enforce_may_act":false}}"#,
        &host,
    );
    let e = exchange(&nest_only, &host, &Req::post(TOOLS_CALL));
    assert_eq!(
        verify(&nest_only, &host, &bearer_in(&e, "authorization"), "mcp").unwrap()["act"],
        json!({"sub": "mcp-gateway", "act": {"sub": "agent-7"}})
    );
}

#[test]
fn a_delegation_chain_deeper_than_the_limit_is_refused() {
    let mut chain = json!({"sub": "a0"});
    for i in 1..crate::config::defaults::MAX_DELEGATION_DEPTH {
        chain = json!({"sub": format!("a{i}"), "act": chain});
    }
    let host = FakeHost::default().jwt_claim("act", chain);
    let p = plugin("{}", &host);
    let e = exchange(&p, &host, &Req::post(TOOLS_CALL));
    assert_refused(&e, 403, -32003, "delegation_refused");
}

#[test]
fn the_introspected_token_is_the_incoming_token_for_delegation() {
    let server = Rc::new(Server::default());
    server.active.borrow_mut().insert(
        OPAQUE.into(),
        json!({"active": true, "sub": "alice", "act": {"sub": "agent-1"}}),
    );
    server.active.borrow_mut().insert(
        "restricted".into(),
        json!({"active": true, "sub": "bob", "may_act": {"sub": "elsewhere"}}),
    );
    let host = server.host();
    let p = plugin(&introspecting(""), &host);
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}")),
    );
    let claims = verify(&p, &host, &bearer_in(&e, "authorization"), "mcp").unwrap();
    assert_eq!(claims["act"], json!({"sub": "mcp-gateway", "act": {"sub": "agent-1"}}));
    let e = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", "Bearer restricted"),
    );
    assert_refused(&e, 403, -32003, "delegation_refused");
}

#[test]
fn with_introspection_a_token_jwt_authn_failed_is_left_to_the_authorization_server() {
    // jwt_authn (allow_missing_or_failed, failed_status_in_metadata) could not verify the opaque token; the
    // authorization server knows it: it is signed. An unknown one is refused by introspection, not passed.
    let server = Rc::new(Server::default());
    server.active.borrow_mut().insert(
        OPAQUE.into(),
        json!({"active": true, "client_id": "svc", "exp": NOW + 300}),
    );
    let failed = json!({"code": 16, "message": "Jwt is not in the form of Header.Payload.Signature"});
    let host = server.host().attribute(
        "metadata/filter_metadata/envoy.filters.http.jwt_authn/jwt_failure",
        failed,
    );
    let p = plugin(&introspecting(r#""jwt_failure_in_metadata":"jwt_failure""#), &host);
    let ok = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", format!("Bearer {OPAQUE}")),
    );
    let claims = verify(&p, &host, &bearer_in(&ok, "authorization"), "mcp").unwrap();
    assert_eq!(claims["sub"], "svc");
    let unknown = exchange(
        &p,
        &host,
        &Req::post(TOOLS_CALL).header("authorization", "Bearer not-known-here"),
    );
    assert_refused(&unknown, 401, -32001, "invalid_token");
    assert_eq!(unknown.callouts.len(), 1, "asked the authorization server");
}
