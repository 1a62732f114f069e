//! `jwt:` identity sources in the native build: the verified payload of Envoy's jwt_authn, read securely.
//!
//! Under wasm the filter reads jwt_authn's `payload_in_metadata` Struct from dynamic metadata. The dynamic-modules
//! ABI of Envoy 1.40 cannot: its metadata getters read one top-level string, number, bool or list of a namespace;
//! `http_get_typed_metadata` reads `typed_filter_metadata` (an `Any`; jwt_authn writes none) and no getter walks
//! into a Struct. So the payload comes as jwt_authn's `forward_payload_header` ([`PAYLOAD_HEADER`]: the verified
//! payload, base64url JSON), which a client could also send. It is trusted only when all of these hold:
//!
//! 1. **The guard ran before jwt_authn.** The module's second filter, `filter_name: mcp_jwt_signer_jwt_guard`
//!    ([`GUARD_FILTER_NAME`]), placed before jwt_authn in the filter chain, removes every copy of the header the
//!    client sent and records that it did in dynamic metadata ([`GUARD_NAMESPACE`]), which no client can write.
//!    Without that record every `jwt:` source is "cannot be read" and the request is refused (fail closed). So a
//!    copy of the header that reaches the signer was written after the guard, by jwt_authn.
//! 2. **jwt_authn verified a token for this request**: its namespace holds the configured
//!    `jwt_payload_in_metadata` key (a provider with `payload_in_metadata`). Without it the header is ignored:
//!    the claims are absent, as under wasm.
//! 3. **Exactly one copy**, which decodes as base64url (padded or not) to one JSON object that has no duplicate
//!    or case-colliding keys (what two parsers could read differently, [`crate::mcp::strict_json`]). Anything
//!    else, or a verified token whose payload was not forwarded (a provider without `forward_payload_header`),
//!    is "cannot be read": refused, never guessed.
//!
//! The signer removes the header before the request goes upstream. Numbers are read as jwt_authn's Struct holds
//! them (doubles: integral values are integers, as the wasm build decodes them).
//!
//! Envoy configuration (every jwt_authn provider whose claims the filter reads):
//! ```yaml
//! - name: envoy.filters.http.dynamic_modules          # the guard, BEFORE jwt_authn
//!   typed_config:
//!     "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
//!     dynamic_module_config: {name: mcp_jwt_signer}
//!     filter_name: mcp_jwt_signer_jwt_guard
//! - name: envoy.filters.http.jwt_authn
//!   typed_config:
//!     providers:
//!       idp:
//!         payload_in_metadata: jwt_payload             # the plugin's jwt_payload_in_metadata
//!         forward_payload_header: x-mcp-jwt-signer-payload
//!         ...
//! - name: envoy.filters.http.dynamic_modules          # the signer
//!   ...
//! ```

use base64::Engine;
use serde_json::Value;

use crate::envoy_value;
use crate::mcp::strict_json;

/// The request header jwt_authn's `forward_payload_header` must name.
pub const PAYLOAD_HEADER: &str = "x-mcp-jwt-signer-payload";
/// The `filter_name` of the guard filter.
pub const GUARD_FILTER_NAME: &str = "mcp_jwt_signer_jwt_guard";
/// The dynamic metadata namespace the guard writes (key [`GUARD_KEY`], `true`).
pub const GUARD_NAMESPACE: &str = "mcp_jwt_signer.jwt_guard";
/// See [`GUARD_NAMESPACE`].
pub const GUARD_KEY: &str = "cleared";

/// The payload header as the signer found it when the request headers arrived (before it removed it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Captured {
    /// No copy.
    #[default]
    Absent,
    /// Exactly one copy.
    One(Vec<u8>),
    /// More than one copy.
    Repeated,
}

/// Why the verified payload cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// The guard did not run for this request (it is missing, or after the signer).
    NoGuard,
    /// jwt_authn verified a token but no payload header reached the signer.
    NotForwarded,
    /// More than one payload header.
    Repeated,
    /// The header is not base64url of one JSON object without duplicate keys.
    Malformed,
    /// The claim is, or holds, a JSON `null`.
    Null,
}

impl Unreadable {
    /// What an operator should know (logged once per request that needs the payload).
    pub fn explain(self) -> &'static str {
        match self {
            Unreadable::NoGuard => {
                "jwt: sources need the module's guard filter (filter_name mcp_jwt_signer_jwt_guard) before \
                 jwt_authn; it did not run for this request"
            }
            Unreadable::NotForwarded => {
                "jwt_authn verified a token but did not forward its payload: set forward_payload_header: \
                 x-mcp-jwt-signer-payload on the provider"
            }
            Unreadable::Repeated => "more than one x-mcp-jwt-signer-payload header",
            Unreadable::Malformed => "the x-mcp-jwt-signer-payload header is not a base64url JSON object",
            Unreadable::Null => "the claim is, or holds, a JSON null",
        }
    }
}

/// The verified payload, given what the guard recorded (`guard_ran`), whether jwt_authn's namespace holds the
/// payload key (`verified`), and the captured header. `Ok(None)`: no verified token.
pub fn payload(guard_ran: bool, verified: bool, captured: &Captured) -> Result<Option<Value>, Unreadable> {
    if !guard_ran {
        return Err(Unreadable::NoGuard);
    }
    if !verified {
        return Ok(None); // whatever the header says, no token was verified for this request
    }
    match captured {
        Captured::Absent => Err(Unreadable::NotForwarded),
        Captured::Repeated => Err(Unreadable::Repeated),
        Captured::One(raw) => decode(raw).map(Some).ok_or(Unreadable::Malformed),
    }
}

/// base64url (jwt_authn writes it unpadded unless `pad_forward_payload_header`) of one strict JSON object, with
/// numbers as a protobuf Struct holds them.
pub fn decode(raw: &[u8]) -> Option<Value> {
    let text = raw
        .strip_suffix(b"==")
        .or_else(|| raw.strip_suffix(b"="))
        .unwrap_or(raw);
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
    let value = strict_json::parse(&json).ok()?;
    match value {
        Value::Object(_) => as_struct(value),
        _ => None,
    }
}

/// A JSON value as jwt_authn's Struct holds it: every number a double (integral values within 2^53 read as
/// integers, as the wasm build decodes Envoy's doubles).
fn as_struct(value: Value) -> Option<Value> {
    Some(match value {
        Value::Number(n) => Value::Number(envoy_value::number(n.as_f64()?)?),
        Value::Array(items) => Value::Array(items.into_iter().map(as_struct).collect::<Option<_>>()?),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| Some((k, as_struct(v)?)))
                .collect::<Option<_>>()?,
        ),
        other => other,
    })
}

/// The value at `path` inside `value` (map keys; list indices), as an attribute read answers: empty strings are
/// absent.
pub fn at(value: &Value, path: &[&str]) -> Option<Value> {
    let mut value = value;
    for segment in path {
        value = match value {
            Value::Object(map) => map.get(*segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        other => Some(other.clone()),
    }
}

/// A claim of the verified payload, as the wasm build reads it from jwt_authn's Struct: a JSON `null` at the
/// claim or anywhere inside it cannot be read (Envoy cannot serialise it: the wasm build gets an error), so a
/// `null` never silently falls back to the next, perhaps spoofable, source.
pub fn claim(payload: &Value, path: &[&str]) -> Result<Option<Value>, Unreadable> {
    let mut value = payload;
    for segment in path {
        value = match value {
            Value::Object(map) => match map.get(*segment) {
                Some(v) => v,
                None => return Ok(None),
            },
            Value::Array(items) => match segment.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(v) => v,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
    }
    if holds_null(value) {
        return Err(Unreadable::Null);
    }
    Ok(match value {
        Value::String(s) if s.is_empty() => None,
        other => Some(other.clone()),
    })
}

fn holds_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(holds_null),
        Value::Object(map) => map.values().any(holds_null),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(text: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(text)
            .into_bytes()
    }

    #[test]
    fn only_a_guarded_verified_single_header_is_read() {
        let good = Captured::One(b64(
            r#"{"sub":"alice","org":{"team":"blue"},"n":42,"groups":["a","b"]}"#,
        ));
        // No guard: never trusted, whatever else holds.
        assert_eq!(payload(false, true, &good), Err(Unreadable::NoGuard));
        assert_eq!(payload(false, false, &Captured::Absent), Err(Unreadable::NoGuard));
        // Guarded, but no verified token: the header (a client's, or a misconfigured filter's) is ignored.
        assert_eq!(payload(true, false, &good), Ok(None));
        // A verified token whose payload did not arrive, or arrived twice: refused.
        assert_eq!(payload(true, true, &Captured::Absent), Err(Unreadable::NotForwarded));
        assert_eq!(payload(true, true, &Captured::Repeated), Err(Unreadable::Repeated));
        let value = payload(true, true, &good).unwrap().unwrap();
        assert_eq!(at(&value, &["sub"]), Some(json!("alice")));
        assert_eq!(at(&value, &["org", "team"]), Some(json!("blue")));
        assert_eq!(at(&value, &["groups", "1"]), Some(json!("b")));
        assert_eq!(at(&value, &["n"]), Some(json!(42)));
        assert_eq!(at(&value, &["missing"]), None);
        assert_eq!(at(&value, &["sub", "deeper"]), None);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        for raw in [
            b"%%%".to_vec(),
            b64("[1,2]"),
            b64("\"alice\""),
            b64(r#"{"sub":"a","sub":"b"}"#),
            b64(r#"{"sub":"a","SUB":"b"}"#),
            b64(r#"{"sub":"a"} trailing"#),
            b64(r#"{"n":1e400}"#),
        ] {
            assert_eq!(
                payload(true, true, &Captured::One(raw.clone())),
                Err(Unreadable::Malformed),
                "{}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn a_null_claim_cannot_be_read() {
        let payload = json!({"sub": "a", "email": null, "org": {"id": 1, "note": null, "team": "t"}, "g": ["x", null]});
        assert_eq!(claim(&payload, &["sub"]), Ok(Some(json!("a"))));
        assert_eq!(claim(&payload, &["email"]), Err(Unreadable::Null));
        assert_eq!(claim(&payload, &["org"]), Err(Unreadable::Null));
        assert_eq!(claim(&payload, &["org", "team"]), Ok(Some(json!("t"))));
        assert_eq!(claim(&payload, &["org", "note"]), Err(Unreadable::Null));
        assert_eq!(claim(&payload, &["g"]), Err(Unreadable::Null));
        assert_eq!(claim(&payload, &["g", "0"]), Ok(Some(json!("x"))));
        assert_eq!(claim(&payload, &["missing", "x"]), Ok(None));
        assert_eq!(claim(&payload, &["sub", "x"]), Ok(None));
    }

    #[test]
    fn padding_and_struct_numbers() {
        let padded = base64::engine::general_purpose::URL_SAFE.encode(r#"{"a":1.5,"b":3.0,"c":"","d":null}"#);
        let value = decode(padded.as_bytes()).unwrap();
        assert_eq!(value["a"], json!(1.5));
        assert_eq!(value["b"], json!(3)); // a double that is integral reads as an integer
        assert_eq!(at(&value, &["c"]), None);
        assert_eq!(at(&value, &["d"]), None);
    }
}
