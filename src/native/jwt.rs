//! `jwt:` sources (and `jwt_failure_in_metadata`) in the native build: what Envoy's jwt_authn recorded, read
//! securely.
//!
//! Under wasm the filter reads jwt_authn's dynamic metadata (`payload_in_metadata`, `failed_status_in_metadata`:
//! protobuf Structs) at any depth. The dynamic-modules ABI of Envoy 1.40 cannot: its metadata getters read one
//! top-level string, number, bool or list of a namespace; `http_get_typed_metadata` reads `typed_filter_metadata`
//! (an `Any`; jwt_authn writes none), and no getter walks into a Struct. Envoy itself can: the substitution
//! formatter `%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:<name>)%` prints a Struct as JSON, and Envoy's
//! `envoy.filters.http.set_filter_state` filter stores a formatter's output in the request's filter state. So,
//! after jwt_authn:
//!
//! ```yaml
//! - name: envoy.filters.http.set_filter_state
//!   typed_config:
//!     "@type": type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config
//!     on_request_headers:
//!     - object_key: mcp_jwt_signer.jwt_authn.jwt_payload        # FILTER_STATE_PREFIX + the metadata name
//!       factory_key: envoy.string
//!       format_string:
//!         text_format_source: {inline_string: "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:jwt_payload)%"}
//!         omit_empty_values: true
//!       skip_if_empty: true                                      # no token verified: no filter state
//!       read_only: true
//! ```
//!
//! (one entry per name the plugin reads: `jwt_payload_in_metadata`, and `jwt_failure_in_metadata` if set). The
//! signer reads the filter state (`get_filter_state_bytes`) and parses the JSON. This is as trustworthy as the
//! metadata itself: filter state is written by Envoy's filters only, never by a client (no header is involved),
//! and `read_only` keeps a later filter from replacing it. The two must agree, or the value cannot be read (the
//! request is refused, never signed with a guess):
//! - jwt_authn's namespace has the key and the filter state is missing (no `set_filter_state`, or one before
//!   jwt_authn): cannot be read;
//! - the filter state is there and jwt_authn's namespace does not have the key: cannot be read;
//! - neither: absent (no token was verified), as under wasm;
//! - both: the JSON, which must be one strict JSON value ([`crate::mcp::strict_json`]: no duplicate or
//!   case-colliding keys). Numbers are read as the Struct holds them (doubles: integral values are integers, as
//!   the wasm build decodes them); a JSON `null` at or inside a claim cannot be read, as under wasm (Envoy cannot
//!   serialise it for proxy-wasm), so a `null` never falls back to the next, perhaps spoofable, source.

use serde_json::Value;

use crate::envoy_value;
use crate::mcp::strict_json;

/// The filter state key that holds jwt_authn's `<name>` metadata as JSON is this prefix + `<name>`.
pub const FILTER_STATE_PREFIX: &str = "mcp_jwt_signer.jwt_authn.";

/// The filter state key for jwt_authn's metadata `name`.
pub fn filter_state_key(name: &str) -> String {
    format!("{FILTER_STATE_PREFIX}{name}")
}

/// Why jwt_authn's record cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// jwt_authn recorded the key, but no `set_filter_state` copied it (or one runs before jwt_authn).
    NotCopied,
    /// The filter state holds a copy, but jwt_authn recorded nothing under the key.
    Inconsistent,
    /// The copy is not one strict JSON value.
    Malformed,
    /// The claim is, or holds, a JSON `null`.
    Null,
}

impl Unreadable {
    /// What an operator should know (logged when a request needs the value).
    pub fn explain(self) -> &'static str {
        match self {
            Unreadable::NotCopied => {
                "jwt_authn recorded it, but no envoy.filters.http.set_filter_state after jwt_authn copied it into \
                 the filter state mcp_jwt_signer.jwt_authn.<name> (see docs/builds.md)"
            }
            Unreadable::Inconsistent => "the filter state holds a copy, but jwt_authn recorded nothing under that name",
            Unreadable::Malformed => "the filter state copy is not strict JSON",
            Unreadable::Null => "the claim is, or holds, a JSON null",
        }
    }
}

/// jwt_authn's `<name>` record: `recorded` (its namespace holds the key) and the filter state copy, if any.
/// `Ok(None)`: nothing recorded (no token, or no failure).
pub fn record(recorded: bool, copy: Option<&[u8]>) -> Result<Option<Value>, Unreadable> {
    match (recorded, copy) {
        (false, None) => Ok(None),
        (true, None) => Err(Unreadable::NotCopied),
        (false, Some(_)) => Err(Unreadable::Inconsistent),
        (true, Some(json)) => decode(json).map(Some).ok_or(Unreadable::Malformed),
    }
}

/// One strict JSON value, with numbers as a protobuf Struct holds them.
pub fn decode(json: &[u8]) -> Option<Value> {
    as_struct(strict_json::parse(json).ok()?)
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

/// The value at `path` inside `value` (map keys; list indices), as an attribute read answers: empty strings and
/// `null` are absent.
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

/// A claim of a jwt_authn record, as the wasm build reads it from the Struct: a JSON `null` at the claim or
/// anywhere inside it cannot be read.
pub fn claim(record: &Value, path: &[&str]) -> Result<Option<Value>, Unreadable> {
    let mut value = record;
    for segment in path {
        let next = match value {
            Value::Object(map) => map.get(*segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(v) => value = v,
            None => return Ok(None),
        }
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

    #[test]
    fn metadata_and_filter_state_must_agree() {
        let copy = br#"{"sub":"alice","org":{"team":"blue"},"level":3,"f":1.5,"groups":["a","b"]}"#;
        assert_eq!(record(false, None), Ok(None));
        assert_eq!(record(true, None), Err(Unreadable::NotCopied));
        assert_eq!(record(false, Some(copy)), Err(Unreadable::Inconsistent));
        let value = record(true, Some(copy)).unwrap().unwrap();
        assert_eq!(claim(&value, &["sub"]), Ok(Some(json!("alice"))));
        assert_eq!(claim(&value, &["org", "team"]), Ok(Some(json!("blue"))));
        assert_eq!(claim(&value, &["groups", "1"]), Ok(Some(json!("b"))));
        assert_eq!(claim(&value, &["level"]), Ok(Some(json!(3))));
        assert_eq!(claim(&value, &["f"]), Ok(Some(json!(1.5))));
        assert_eq!(claim(&value, &["missing"]), Ok(None));
        assert_eq!(claim(&value, &["sub", "deeper"]), Ok(None));
        // Envoy's JSON for a double that is integral: an integer either way.
        assert_eq!(decode(b"{\"n\":3.0}").unwrap()["n"], json!(3));
    }

    #[test]
    fn copies_that_two_parsers_could_read_differently_are_refused() {
        for bad in [
            &br#"{"sub":"a","sub":"b"}"#[..],
            br#"{"sub":"a","SUB":"b"}"#,
            br#"{"sub":"a"} trailing"#,
            br#"{"n":1e400}"#,
            b"-",
            b"",
        ] {
            assert_eq!(
                record(true, Some(bad)),
                Err(Unreadable::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
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
        assert_eq!(claim(&payload, &[]), Err(Unreadable::Null));
    }

    #[test]
    fn filter_state_keys() {
        assert_eq!(filter_state_key("jwt_payload"), "mcp_jwt_signer.jwt_authn.jwt_payload");
        assert_eq!(at(&json!({"a": ""}), &["a"]), None);
    }
}
