//! RFC 7662 token introspection of the client's bearer token (`introspection`), as part of the request's state
//! machine: once the body is read, the token's result comes from this worker's cache or from the authorization
//! server (a callout through an Envoy cluster: the request waits, nothing is forwarded meanwhile), and its members
//! become the `introspection:` sources.
//!
//! What is introspected, with and without Envoy's `jwt_authn`:
//! - no bearer token: nothing (the `introspection:` sources are empty; `require_subject` or `required_claims`
//!   decide whether that is allowed);
//! - a token jwt_authn verified (its payload is in the metadata): not introspected, its payload is the verified
//!   identity (`jwt:` sources), unless `introspect_verified_jwts` asks for it (to notice revocation);
//! - any other token (opaque, or a JWT no jwt_authn verified): introspected. In front of the filter, jwt_authn then
//!   needs `allow_missing_or_failed` so that opaque tokens reach it.
//!
//! `active: false`, an expired or not-yet-valid result, or one for another audience (`audiences`) is 401
//! `invalid_token`. No answer (timeout, reset, unknown cluster), an error status, or an answer that is not an RFC
//! 7662 JSON object fails closed: 503, and a log line naming the cause (never the token). Results are cached per
//! worker by SHA-256 of the token, each until the token's `exp` and at most `cache.max_seconds`; inactive results
//! are not cached.
//!
//! The token is held in memory only for the callout ([`BearerToken`]'s `Debug` hides it); the request the
//! upstream receives never carries it, unless the route forwards the client's `Authorization`.

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cache::Lookup;
use crate::claims::Call;
use crate::config::defaults::{MAX_INTROSPECTED_TOKEN_BYTES, MAX_INTROSPECTION_RESPONSE_BYTES};
use crate::config::introspection::form_urlencode;
use crate::config::{Config, Introspection, Secret, JWT_AUTHN_NAMESPACE};
use crate::host::{Callout, CalloutResponse, Effects, Headers, Host, LogLevel, Metric, Next, Step};
use crate::mcp::strict_json;
use crate::plugin::IntrospectionState;
use crate::refusal::Refusal;

use super::{Head, Phase, Request};

/// The client's bearer token; its `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken(<{} bytes>)", self.0.len())
    }
}

/// What the client's `Authorization` holds, as far as introspection cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bearer {
    /// No bearer token (no `Authorization`, another scheme, or introspection is not configured).
    Absent,
    /// One bearer token.
    Token(BearerToken),
    /// Something that cannot be a bearer token (refused with 401 when it would be introspected).
    Malformed(&'static str),
}

/// The client's bearer token, kept only when introspection is configured.
pub fn bearer(config: &Config, headers: &Headers) -> Bearer {
    if config.introspection.is_none() {
        return Bearer::Absent;
    }
    let value = match headers.single("authorization") {
        Ok(Some(value)) => value,
        Ok(None) => return Bearer::Absent,
        Err(_) => return Bearer::Malformed("the request has more than one Authorization header"),
    };
    let Some(scheme) = value.get(..7) else {
        return Bearer::Absent;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Bearer::Absent;
    }
    let token = value[7..].trim_ascii();
    if token.is_empty() {
        return Bearer::Malformed("the bearer token is empty");
    }
    if token.len() > MAX_INTROSPECTED_TOKEN_BYTES {
        return Bearer::Malformed("the bearer token is too long");
    }
    // RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body_len = token.len() - token.iter().rev().take_while(|b| **b == b'=').count();
    let body_ok = body_len > 0
        && token[..body_len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b));
    match (body_ok, std::str::from_utf8(token)) {
        (true, Ok(text)) => Bearer::Token(BearerToken(text.to_string())),
        _ => Bearer::Malformed("the bearer token is malformed"),
    }
}

/// The cache key of a token: hex SHA-256 (the token itself is never stored).
pub fn cache_key(token: &BearerToken) -> String {
    Sha256::digest(token.0.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether jwt_authn verified a token for this request (its payload is in the metadata; a payload Envoy cannot
/// read still counts).
fn jwt_verified(host: &dyn Host, payload_name: &str) -> bool {
    let path = ["metadata", "filter_metadata", JWT_AUTHN_NAMESPACE, payload_name];
    !matches!(host.attribute(&path), Ok(None))
}

/// The introspection request (RFC 7662 section 2.1): a form POST with the token, authenticated with the gateway's
/// client credentials (client_secret_basic).
pub fn callout(settings: &Introspection, authorization: &Secret, token: &BearerToken) -> Callout {
    Callout {
        cluster: settings.cluster.clone(),
        headers: vec![
            (":method".into(), "POST".into()),
            (":path".into(), settings.path.clone()),
            (":authority".into(), settings.authority.clone()),
            ("content-type".into(), "application/x-www-form-urlencoded".into()),
            ("accept".into(), "application/json".into()),
            ("authorization".into(), authorization.0.clone()),
        ],
        body: format!("token={}&token_type_hint=access_token", form_urlencode(&token.0)).into_bytes(),
        timeout_ms: settings.timeout_ms,
    }
}

/// What an introspection answer says.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The token is active: its introspection result.
    Active(Value),
    /// The token is not usable here (401); a fixed description.
    Inactive(&'static str),
    /// No usable answer (503); the cause, for the log.
    Failed(String),
}

fn number(doc: &Value, name: &str) -> Result<Option<u64>, String> {
    match doc.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| format!("the answer's `{name}` is not a number")),
    }
}

/// Reads the endpoint's answer at time `now` (seconds).
pub fn judge(settings: &Introspection, response: Option<&CalloutResponse>, now: u64) -> Outcome {
    let Some(response) = response else {
        return Outcome::Failed(format!(
            "no answer from cluster {} (an unknown cluster, or the callout was reset)",
            settings.cluster
        ));
    };
    if response.status != 200 {
        let hint = match response.status {
            401 | 403 => " (check the gateway's client credentials)",
            400 | 404 | 405 => " (check introspection.path and introspection.authority)",
            // Envoy answers a callout itself when the cluster has no healthy host or refuses the connection (503),
            // and when timeout_ms passes first (504).
            503 => " (the endpoint, or Envoy for a cluster it cannot connect to)",
            504 => " (no answer within introspection.timeout_ms)",
            _ => "",
        };
        return Outcome::Failed(format!("the endpoint answered HTTP {}{hint}", response.status));
    }
    if response.body.len() > MAX_INTROSPECTION_RESPONSE_BYTES {
        return Outcome::Failed(format!(
            "the answer is larger than {MAX_INTROSPECTION_RESPONSE_BYTES} bytes"
        ));
    }
    let doc = match strict_json::parse(&response.body) {
        Ok(doc @ Value::Object(_)) => doc,
        Ok(_) => return Outcome::Failed("the answer is not a JSON object".into()),
        Err(_) => return Outcome::Failed("the answer is not JSON (or repeats a member)".into()),
    };
    match doc.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Outcome::Inactive("the access token is not active"),
        _ => return Outcome::Failed("the answer has no boolean `active` (not an RFC 7662 response)".into()),
    }
    let (exp, nbf) = match (number(&doc, "exp"), number(&doc, "nbf")) {
        (Ok(exp), Ok(nbf)) => (exp, nbf),
        (Err(cause), _) | (_, Err(cause)) => return Outcome::Failed(cause),
    };
    if exp.is_some_and(|exp| exp <= now) {
        return Outcome::Inactive("the access token has expired");
    }
    if nbf.is_some_and(|nbf| nbf > now) {
        return Outcome::Inactive("the access token is not valid yet");
    }
    if !settings.audiences.is_empty() {
        let names = |aud: &str| settings.audiences.iter().any(|a| a == aud);
        let ok = match doc.get("aud") {
            Some(Value::String(aud)) => names(aud),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(names),
            _ => false,
        };
        if !ok {
            return Outcome::Inactive("the access token was issued for another audience");
        }
    }
    Outcome::Active(doc)
}

/// Caches an active result until the token's `exp`, at most `cache.max_seconds`.
fn remember(state: &IntrospectionState, settings: &Introspection, key: String, doc: &Value, now: u64) {
    let limit = now.saturating_add(settings.cache.max_seconds);
    let until = number(doc, "exp").ok().flatten().map_or(limit, |exp| exp.min(limit));
    state
        .cache
        .borrow_mut()
        .insert(key, doc.to_string(), String::new(), until);
}

/// A request waiting for its introspection answer.
pub(super) struct Pending {
    /// What the request carries forward from its headers.
    pub head: Head,
    /// What the body calls.
    pub call: Call,
    /// The token's cache key.
    pub key: String,
}

/// What happens before signing.
pub(super) enum Before {
    /// Sign now, with this introspection result (if any) and these effects (a cache hit).
    Sign(Option<Value>, Effects),
    /// Return this step (a callout, or a refusal).
    Step(Step),
}

impl Request {
    /// The introspection result for this request's token: none needed, from the cache, or a callout to wait for.
    pub(super) fn before_signing(&mut self, head: &Head, call: &Call, host: &dyn Host) -> Before {
        let plugin = self.plugin.clone();
        let (Some(settings), Some(state)) = (&plugin.config.introspection, &plugin.introspection) else {
            return Before::Sign(None, Effects::default());
        };
        let token = match &head.bearer {
            Bearer::Absent => return Before::Sign(None, Effects::default()),
            Bearer::Malformed(description) => {
                return Before::Step(self.refuse(Refusal::InvalidToken { description }, Effects::default()))
            }
            Bearer::Token(token) => token,
        };
        if !settings.introspect_verified_jwts && jwt_verified(host, &plugin.config.jwt_payload_in_metadata) {
            return Before::Sign(None, Effects::default());
        }
        let Some(now) = host.now_micros().map(|us| us / 1_000_000) else {
            return Before::Step(self.refuse(Refusal::Internal("clock unavailable"), Effects::default()));
        };
        let key = cache_key(token);
        if let Lookup::Hit(hit) = state.cache.borrow_mut().get(&key, now) {
            if let Ok(doc) = serde_json::from_str::<Value>(&hit.jwt) {
                let effects = Effects {
                    metrics: vec![Metric::IntrospectionCacheHits],
                    ..Effects::default()
                };
                return Before::Sign(Some(doc), effects);
            }
        }
        let callout = callout(settings, &state.authorization, token);
        self.phase = Phase::Introspecting(Box::new(Pending {
            head: head.clone(),
            call: call.clone(),
            key,
        }));
        Before::Step(Step {
            edits: Vec::new(),
            effects: Effects {
                metrics: vec![Metric::Introspections],
                ..Effects::default()
            },
            next: Next::Callout(callout),
        })
    }

    /// The introspection answer has arrived (`None`: the callout failed).
    pub(super) fn introspected(
        &mut self,
        pending: Pending,
        response: Option<CalloutResponse>,
        host: &dyn Host,
    ) -> Step {
        let plugin = self.plugin.clone();
        let (Some(settings), Some(state)) = (&plugin.config.introspection, &plugin.introspection) else {
            return self.refuse(
                Refusal::Internal("introspection answer without introspection"),
                Effects::default(),
            );
        };
        let Some(now) = host.now_micros().map(|us| us / 1_000_000) else {
            return self.refuse(Refusal::Internal("clock unavailable"), Effects::default());
        };
        match judge(settings, response.as_ref(), now) {
            Outcome::Active(doc) => {
                remember(state, settings, pending.key, &doc, now);
                self.mint(&pending.head, &pending.call, Some(&doc), Effects::default(), host)
            }
            Outcome::Inactive(description) => self.refuse(Refusal::InvalidToken { description }, Effects::default()),
            Outcome::Failed(cause) => {
                let effects = Effects {
                    logs: vec![(
                        LogLevel::Warn,
                        format!("token introspection failed, request refused (fail closed): {cause}"),
                    )],
                    ..Effects::default()
                };
                self.refuse(Refusal::IntrospectionUnavailable, effects)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            br#"{"introspection":{"cluster":"as","path":"/introspect","authority":"as.example.com",
                 "audiences":["https://gw.example.com/mcp"]}}"#,
        )
        .unwrap()
    }

    fn headers(values: &[&[u8]]) -> Headers {
        Headers(
            values
                .iter()
                .map(|v| ("authorization".to_string(), v.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let c = config();
        assert!(
            matches!(bearer(&c, &headers(&[b"Bearer abc.DEF-_~+/=="])), Bearer::Token(t) if t.0 == "abc.DEF-_~+/==")
        );
        assert!(matches!(bearer(&c, &headers(&[b"bearer   tok  "])), Bearer::Token(t) if t.0 == "tok"));
        assert_eq!(bearer(&c, &headers(&[])), Bearer::Absent);
        assert_eq!(bearer(&c, &headers(&[b"Basic dXNlcjpwYXNz"])), Bearer::Absent);
        for bad in [
            &b"Bearer "[..],
            b"Bearer a b",
            b"Bearer =abc",
            b"Bearer a=b",
            b"Bearer \xff",
            b"Bearer a\"b",
        ] {
            assert!(matches!(bearer(&c, &headers(&[bad])), Bearer::Malformed(_)), "{bad:?}");
        }
        assert!(matches!(
            bearer(&c, &headers(&[b"Bearer a", b"Bearer b"])),
            Bearer::Malformed(_)
        ));
        let long = format!("Bearer {}", "a".repeat(MAX_INTROSPECTED_TOKEN_BYTES + 1));
        assert!(matches!(bearer(&c, &headers(&[long.as_bytes()])), Bearer::Malformed(_)));
        // Without introspection nothing is kept.
        assert_eq!(
            bearer(&Config::parse(b"{}").unwrap(), &headers(&[b"Bearer abc"])),
            Bearer::Absent
        );
        // The token never shows in Debug output.
        let Bearer::Token(t) = bearer(&c, &headers(&[b"Bearer secret-token"])) else {
            panic!()
        };
        assert!(!format!("{t:?} {:?}", Bearer::Token(t.clone())).contains("secret"));
    }

    #[test]
    fn the_callout_is_an_authenticated_form_post() {
        let c = config();
        let token = BearerToken("a+b/c=".into());
        let out = callout(
            c.introspection.as_ref().unwrap(),
            &Secret("Basic Z3c6cw==".into()),
            &token,
        );
        assert_eq!(out.cluster, "as");
        assert_eq!(
            String::from_utf8(out.body.clone()).unwrap(),
            "token=a%2Bb%2Fc%3D&token_type_hint=access_token"
        );
        let header = |name: &str| out.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(header(":method"), Some("POST"));
        assert_eq!(header(":path"), Some("/introspect"));
        assert_eq!(header(":authority"), Some("as.example.com"));
        assert_eq!(header("authorization"), Some("Basic Z3c6cw=="));
        assert_eq!(out.timeout_ms, 2000);
        let debug = format!("{out:?}");
        assert!(!debug.contains("a%2Bb") && !debug.contains("Z3c6cw"), "{debug}");
        assert_eq!(cache_key(&token).len(), 64);
        assert_ne!(cache_key(&token), cache_key(&BearerToken("a+b/c".into())));
    }

    #[test]
    fn bounds_the_debug_form_and_the_failure_hints() {
        let c = config();
        // Debug says what it is and how long, never the token.
        assert_eq!(
            format!("{:?}", BearerToken("secret-token".into())),
            "BearerToken(<12 bytes>)"
        );
        // Exactly the longest token introspected is read; a padding-only token is not one.
        let max = format!("Bearer {}", "a".repeat(MAX_INTROSPECTED_TOKEN_BYTES));
        assert!(matches!(bearer(&c, &headers(&[max.as_bytes()])), Bearer::Token(_)));
        assert!(matches!(bearer(&c, &headers(&[b"Bearer =="])), Bearer::Malformed(_)));
        // Numbers: integers, non-negative finite floats (truncated); anything else is refused.
        let doc = serde_json::json!({"a": 5, "b": 1.5, "c": -1.5, "d": -1, "e": "5"});
        assert_eq!(number(&doc, "a"), Ok(Some(5)));
        assert_eq!(number(&doc, "b"), Ok(Some(1)));
        assert_eq!(number(&doc, "missing"), Ok(None));
        for name in ["c", "d", "e"] {
            assert!(number(&doc, name).is_err(), "{name}");
        }
        // An answer of exactly the largest size is read; one byte more is not.
        let sized = |len: usize| {
            let body = format!(r#"{{"active":false}}{}"#, " ".repeat(len - 16));
            assert_eq!(body.len(), len);
            CalloutResponse {
                status: 200,
                headers: Vec::new(),
                body: body.into_bytes(),
            }
        };
        let s = c.introspection.as_ref().unwrap();
        let at_max = sized(MAX_INTROSPECTION_RESPONSE_BYTES);
        assert!(matches!(judge(s, Some(&at_max), 1000), Outcome::Inactive(_)));
        let over = sized(MAX_INTROSPECTION_RESPONSE_BYTES + 1);
        assert!(matches!(judge(s, Some(&over), 1000), Outcome::Failed(d) if d.contains("larger")));
        // `aud` as a single string; `nbf` of this very second is valid.
        let ok = |body: &str| CalloutResponse {
            status: 200,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        };
        let string_aud = ok(r#"{"active":true,"aud":"https://gw.example.com/mcp","nbf":1000}"#);
        assert!(matches!(judge(s, Some(&string_aud), 1000), Outcome::Active(_)));
        // A failed answer's log line points at the likely cause.
        for (status, hint) in [
            (401, "client credentials"),
            (404, "introspection.path"),
            (405, "introspection.path"),
            (503, "Envoy for a cluster it cannot connect to"),
            (504, "introspection.timeout_ms"),
        ] {
            let r = CalloutResponse {
                status,
                headers: Vec::new(),
                body: Vec::new(),
            };
            assert!(
                matches!(judge(s, Some(&r), 1000), Outcome::Failed(d) if d.contains(hint)),
                "{status}"
            );
        }
    }

    fn answer(status: u32, body: &str) -> CalloutResponse {
        CalloutResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_judged() {
        let c = config();
        let s = c.introspection.as_ref().unwrap();
        let judge_at = |r: Option<CalloutResponse>| judge(s, r.as_ref(), 1000);
        let active = r#"{"active":true,"sub":"u","exp":2000,"aud":["x","https://gw.example.com/mcp"]}"#;
        assert!(matches!(judge_at(Some(answer(200, active))), Outcome::Active(doc) if doc["sub"] == "u"));
        for (body, expected) in [
            (r#"{"active":false}"#, "not active"),
            (
                r#"{"active":true,"exp":1000,"aud":"https://gw.example.com/mcp"}"#,
                "expired",
            ),
            (
                r#"{"active":true,"nbf":1001,"aud":"https://gw.example.com/mcp"}"#,
                "not valid yet",
            ),
            (
                r#"{"active":true,"aud":"https://other.example.com"}"#,
                "another audience",
            ),
            (r#"{"active":true}"#, "another audience"),
        ] {
            assert!(
                matches!(judge_at(Some(answer(200, body))), Outcome::Inactive(d) if d.contains(expected)),
                "{body}"
            );
        }
        for (response, cause) in [
            (None, "no answer"),
            (Some(answer(500, "oops")), "HTTP 500"),
            (Some(answer(503, "")), "HTTP 503"),
            (Some(answer(401, r#"{"error":"invalid_client"}"#)), "client credentials"),
            (Some(answer(200, "<html>")), "not JSON"),
            (Some(answer(200, r#"{"active":true,"active":false}"#)), "not JSON"),
            (Some(answer(200, "[true]")), "not a JSON object"),
            (Some(answer(200, r#"{"active":"true"}"#)), "boolean `active`"),
            (Some(answer(200, r#"{"sub":"u"}"#)), "boolean `active`"),
            (Some(answer(200, r#"{"active":true,"exp":"soon"}"#)), "`exp`"),
            (
                Some(answer(
                    200,
                    &format!(r#"{{"active":true,"x":"{}"}}"#, "a".repeat(70_000)),
                )),
                "larger",
            ),
        ] {
            assert!(
                matches!(judge_at(response.clone()), Outcome::Failed(ref c) if c.contains(cause)),
                "{response:?}"
            );
        }
    }
}
