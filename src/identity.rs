//! Who is calling: resolves the configured sources (`crate::config::sources`) against one request, for `sub`,
//! `email` and the actor (team/org, or a service's SPIFFE ID) that becomes `act.sub`. The first source with a
//! non-empty value wins. Values are refused, never repaired, when they could not be a claim.

use std::fmt;

use serde_json::Value;

use crate::config::defaults::MAX_CLAIM_TEXT_BYTES;
use crate::config::{IdentitySources, MtlsField, Source, JWT_AUTHN_NAMESPACE};
use crate::host::{Headers, Host, RepeatedHeader, Unavailable};

/// The resolved identity of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The user (`sub`), if any source named one.
    pub subject: Option<String>,
    /// The user's email.
    pub email: Option<String>,
    /// The team, org or calling service (`act.sub`).
    pub actor: Option<String>,
}

/// An identity source held a value the filter will not put into a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityError {
    /// The source, as configured (`header:x-user-id`).
    pub source: String,
    /// What is wrong with its value.
    pub reason: &'static str,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "identity source `{}` {}", self.source, self.reason)
    }
}

/// The Envoy attribute path a source reads, if it reads one (`jwt_payload`: jwt_authn's `payload_in_metadata`).
pub fn attribute_path<'a>(source: &'a Source, jwt_payload: &'a str) -> Option<Vec<&'a str>> {
    match source {
        Source::Header(_) | Source::Literal(_) | Source::ClientInfo(_) | Source::Introspection(_) => None,
        Source::Jwt(claim) => {
            let mut path = vec!["metadata", "filter_metadata", JWT_AUTHN_NAMESPACE, jwt_payload];
            path.extend(claim.iter().map(String::as_str));
            Some(path)
        }
        Source::Mtls(field) => Some(vec![
            "connection",
            match field {
                MtlsField::UriSan => "uri_san_peer_certificate",
                MtlsField::DnsSan => "dns_san_peer_certificate",
                MtlsField::Subject => "subject_peer_certificate",
            },
        ]),
        Source::Property(segments) => Some(segments.iter().map(String::as_str).collect()),
    }
}

/// A value as identity text (`sub`, `email`, `act.sub`): strings as they are, integers in decimal.
pub fn as_identity_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Reads sources against one request.
pub struct Resolver<'a> {
    /// The request headers as they arrived.
    pub headers: &'a Headers,
    /// Envoy attributes.
    pub host: &'a dyn Host,
    /// jwt_authn's `payload_in_metadata` name.
    pub jwt_payload: &'a str,
    /// The body's `params._meta["io.modelcontextprotocol/clientInfo"]`, if any.
    pub client_info: Option<&'a Value>,
    /// The introspection result of the client's token (`introspection:` sources), when it was introspected.
    pub introspection: Option<&'a Value>,
}

/// The value at a claim path inside a JSON document (objects by key, lists by index); `None` when absent, `null`
/// or an empty string (as Envoy reports an empty metadata value).
pub fn claim_at<'v>(document: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut value = document;
    for segment in path {
        value = match value {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        other => Some(other),
    }
}

impl Resolver<'_> {
    /// A source's value as JSON; `None` when absent or empty.
    pub fn value(&self, source: &Source) -> Result<Option<Value>, IdentityError> {
        let err = |reason| IdentityError {
            source: source.describe(),
            reason,
        };
        match source {
            Source::Literal(text) => Ok(Some(Value::String(text.clone()))),
            Source::ClientInfo(member) => Ok(self
                .client_info
                .and_then(|info| info.get(member))
                .filter(|v| !v.is_null())
                .cloned()),
            Source::Introspection(path) => Ok(self.introspection.and_then(|doc| claim_at(doc, path)).cloned()),
            Source::Header(name) => match self.headers.single(name).map_err(|RepeatedHeader| err("is repeated"))? {
                Some(raw) => {
                    // Header values are text: refuse rather than repair.
                    let text = std::str::from_utf8(raw).map_err(|_| err("is not valid UTF-8"))?;
                    let text = text.trim_matches([' ', '\t']);
                    Ok((!text.is_empty()).then(|| Value::String(text.to_string())))
                }
                None => Ok(None),
            },
            other => {
                let path = attribute_path(other, self.jwt_payload).unwrap_or_default();
                self.host
                    .attribute(&path)
                    .map_err(|Unavailable| err("could not be read from Envoy"))
            }
        }
    }

    /// A source's value as identity text.
    pub fn text(&self, source: &Source) -> Result<Option<String>, IdentityError> {
        let err = |reason| IdentityError {
            source: source.describe(),
            reason,
        };
        let Some(value) = self.value(source)? else {
            return Ok(None);
        };
        let text = as_identity_text(&value).ok_or_else(|| err("is not a string or an integer"))?;
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() > MAX_CLAIM_TEXT_BYTES {
            return Err(err("is longer than 1024 bytes"));
        }
        if text.chars().any(char::is_control) {
            return Err(err("contains control characters"));
        }
        Ok(Some(text))
    }

    fn first_text(&self, sources: &[Source]) -> Result<Option<String>, IdentityError> {
        for source in sources {
            if let Some(text) = self.text(source)? {
                return Ok(Some(text));
            }
        }
        Ok(None)
    }

    /// The identity the sources give for this request.
    pub fn identity(&self, sources: &IdentitySources) -> Result<Identity, IdentityError> {
        Ok(Identity {
            subject: self.first_text(&sources.subject)?,
            email: self.first_text(&sources.email)?,
            actor: self.first_text(&sources.actor)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use serde_json::json;

    fn sources(json: &str) -> IdentitySources {
        IdentitySources::from_config(serde_json::from_str(json).unwrap()).unwrap()
    }

    fn headers(list: &[(&str, &[u8])]) -> Headers {
        Headers(list.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect())
    }

    fn resolve(sources: &IdentitySources, headers: &Headers, host: &FakeHost) -> Result<Identity, IdentityError> {
        Resolver {
            headers,
            host,
            jwt_payload: "jwt_payload",
            client_info: None,
            introspection: None,
        }
        .identity(sources)
    }

    #[test]
    fn first_non_empty_source_wins() {
        let s = sources(
            r#"{"subject":["header:x-user-id"],"email":["header:x-user-email"],
                "actor":["header:X-Team-Id","header:x-org-id","literal:fallback"]}"#,
        );
        let h = headers(&[("x-user-id", b"alice"), ("x-team-id", b"  "), ("x-org-id", b"acme")]);
        let id = resolve(&s, &h, &FakeHost::default()).unwrap();
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert_eq!(id.email, None);
        assert_eq!(id.actor.as_deref(), Some("acme"));
        let id = resolve(&s, &Headers::default(), &FakeHost::default()).unwrap();
        assert_eq!(id.actor.as_deref(), Some("fallback"));
    }

    #[test]
    fn jwt_mtls_and_property_sources() {
        let s = sources(
            r#"{"subject":["jwt:sub","header:x-user-id"],"email":["jwt:/email"],
                "actor":["jwt:org/team","mtls:uri_san"]}"#,
        );
        let host = FakeHost::default()
            .jwt_claim("sub", json!("user-1"))
            .jwt_claim("email", json!("u@x.example"))
            .attribute("connection/uri_san_peer_certificate", json!("spiffe://td/ns/a/sa/b"));
        let h = headers(&[("x-user-id", b"admin")]);
        let id = resolve(&s, &h, &host).unwrap();
        assert_eq!(id.subject.as_deref(), Some("user-1"));
        assert_eq!(id.email.as_deref(), Some("u@x.example"));
        assert_eq!(id.actor.as_deref(), Some("spiffe://td/ns/a/sa/b"));

        let host = FakeHost::default().jwt_claim("org", json!({"team": "blue"}));
        assert_eq!(
            resolve(&s, &Headers::default(), &host).unwrap().actor.as_deref(),
            Some("blue")
        );
        // A numeric claim becomes decimal text.
        let host = FakeHost::default().jwt_claim("sub", json!(42));
        assert_eq!(
            resolve(&s, &Headers::default(), &host).unwrap().subject.as_deref(),
            Some("42")
        );
    }

    #[test]
    fn bad_values_are_refused_not_repaired() {
        let s = sources(r#"{"subject":["header:x-user-id"]}"#);
        for bad in [vec![0xff, 0xfe], b"a\x01b".to_vec(), vec![b'a'; 1025]] {
            let h = headers(&[("x-user-id", &bad)]);
            assert_eq!(
                resolve(&s, &h, &FakeHost::default()).unwrap_err().source,
                "header:x-user-id"
            );
        }
        let s = sources(r#"{"subject":["jwt:groups"]}"#);
        let host = FakeHost::default().jwt_claim("groups", json!(["a"]));
        assert_eq!(
            resolve(&s, &Headers::default(), &host).unwrap_err().reason,
            "is not a string or an integer"
        );
        let mut host = FakeHost::default();
        host.unavailable
            .insert("metadata/filter_metadata/envoy.filters.http.jwt_authn/jwt_payload/groups".into());
        assert_eq!(
            resolve(&s, &Headers::default(), &host).unwrap_err().reason,
            "could not be read from Envoy"
        );
    }

    #[test]
    fn a_repeated_identity_header_is_refused() {
        let s = sources(r#"{"subject":["header:x-user-id"]}"#);
        let h = headers(&[("x-user-id", b"alice"), ("X-User-Id", b"admin")]);
        assert_eq!(resolve(&s, &h, &FakeHost::default()).unwrap_err().reason, "is repeated");
    }

    #[test]
    fn introspection_sources_read_the_result() {
        let s = IdentitySources::from_config(
            serde_json::from_str(
                r#"{"subject":["introspection:sub","introspection:client_id"],"actor":["introspection:org/0"]}"#,
            )
            .unwrap(),
        )
        .unwrap();
        let result = json!({"active": true, "client_id": "svc", "sub": "", "org": ["blue"]});
        let resolver = Resolver {
            headers: &Headers::default(),
            host: &FakeHost::default(),
            jwt_payload: "jwt_payload",
            client_info: None,
            introspection: Some(&result),
        };
        let id = resolver.identity(&s).unwrap();
        assert_eq!(
            (id.subject.as_deref(), id.actor.as_deref()),
            (Some("svc"), Some("blue"))
        );
        let none = Resolver {
            introspection: None,
            ..resolver
        };
        assert_eq!(none.identity(&s).unwrap(), Identity::default());
    }

    #[test]
    fn identity_text_boundaries() {
        // The longest value accepted (1025 bytes are refused above).
        let s = sources(r#"{"subject":["header:x-user-id"]}"#);
        let longest = "a".repeat(1024);
        let h = headers(&[("x-user-id", longest.as_bytes())]);
        assert_eq!(
            resolve(&s, &h, &FakeHost::default()).unwrap().subject.as_deref(),
            Some(longest.as_str())
        );
        // Integers of either sign and any size: a negative one is only an i64, u64::MAX only a u64.
        assert_eq!(as_identity_text(&json!(-7)), Some("-7".into()));
        assert_eq!(as_identity_text(&json!(u64::MAX)), Some(u64::MAX.to_string()));
    }

    #[test]
    fn claim_paths_reach_into_objects_and_lists() {
        let doc = json!({"org": {"team": "blue", "empty": "", "none": null}, "groups": ["a", "b"]});
        let at = |path: &[&str]| claim_at(&doc, &path.iter().map(|s| s.to_string()).collect::<Vec<_>>()).cloned();
        assert_eq!(at(&["org", "team"]), Some(json!("blue")));
        assert_eq!(at(&["groups", "1"]), Some(json!("b")));
        assert_eq!(at(&["groups", "2"]), None);
        assert_eq!(at(&["groups", "x"]), None);
        assert_eq!(at(&["org", "team", "deeper"]), None);
        // Empty and null are absent, as Envoy reports an empty metadata value.
        assert_eq!(at(&["org", "empty"]), None);
        assert_eq!(at(&["org", "none"]), None);
        assert_eq!(at(&["org"]).map(|v| v.is_object()), Some(true));
    }

    #[test]
    fn identity_text() {
        assert_eq!(as_identity_text(&json!("a")), Some("a".into()));
        assert_eq!(as_identity_text(&json!(42)), Some("42".into()));
        assert_eq!(as_identity_text(&json!([1])), None);
        assert_eq!(as_identity_text(&json!(1.5)), None);
    }
}
