//! Where the caller's identity comes from: ordered lists of sources for `sub`, `email` and the actor
//! (team/org, or a service's SPIFFE ID) that becomes `act.sub`. The first source with a non-empty value wins.
//!
//! Source syntax, `<kind>:<argument>`:
//! - `header:<name>`: a request header (only as trustworthy as whatever sets it);
//! - `jwt:<claim path>`: a claim of the token Envoy's `jwt_authn` verified (its `payload_in_metadata`); the path is
//!   a JSON Pointer with the leading `/` optional: `jwt:sub`, `jwt:org/team`, `jwt:groups/0`, `~1` for a `/` and
//!   `~0` for a `~` inside a claim name;
//! - `mtls:uri_san` | `mtls:dns_san` | `mtls:subject`: the downstream TLS peer certificate (e.g. a SPIFFE ID);
//! - `literal:<text>`: a fixed value;
//! - `property:<segment>/<segment>/...`: any Envoy attribute, e.g. `property:xds/node/metadata/SERVICE_ACCOUNT`.
//!
//! Unknown kinds and malformed arguments are refused at load, so a typo never silently drops an identity.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::config::ConfigError;
use crate::property;

/// The metadata namespace Envoy's jwt_authn filter writes its verified payloads under.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// The `identity` object as written in the plugin configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default)]
    subject: Vec<String>,
    #[serde(default)]
    email: Vec<String>,
    #[serde(default)]
    actor: Vec<String>,
}

/// One place an identity value can be read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A request header, by lower-case name.
    Header(String),
    /// A claim path in jwt_authn's verified payload.
    Jwt(Vec<String>),
    /// An attribute of the downstream TLS peer certificate.
    Mtls(MtlsField),
    Literal(String),
    /// An Envoy attribute path.
    Property(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsField {
    UriSan,
    DnsSan,
    Subject,
}

impl Source {
    pub fn parse(text: &str) -> Result<Source, String> {
        let (kind, arg) = text.split_once(':').ok_or_else(|| {
            format!(
                "source `{}` must look like `<kind>:<argument>` (kinds: header, jwt, mtls, literal, property)",
                shown(text)
            )
        })?;
        match kind {
            "header" => {
                let name = arg.to_ascii_lowercase();
                if name.is_empty() || !name.bytes().all(is_header_name_byte) {
                    return Err(format!("`{}` is not a valid HTTP header name", shown(arg)));
                }
                if matches!(name.as_str(), "authorization" | "proxy-authorization" | "cookie") {
                    return Err(format!(
                        "`{name}` carries credentials, not an identity; it is never forwarded"
                    ));
                }
                Ok(Source::Header(name))
            }
            "jwt" => parse_pointer(arg).map(Source::Jwt),
            "mtls" => match arg {
                "uri_san" => Ok(Source::Mtls(MtlsField::UriSan)),
                "dns_san" => Ok(Source::Mtls(MtlsField::DnsSan)),
                "subject" => Ok(Source::Mtls(MtlsField::Subject)),
                _ => Err(format!(
                    "unknown mTLS field `{}` (known: uri_san, dns_san, subject)",
                    shown(arg)
                )),
            },
            "literal" => {
                if arg.is_empty() || arg.len() > MAX_IDENTITY_VALUE_BYTES || arg.chars().any(char::is_control) {
                    return Err("a literal must be 1-1024 characters without control characters".into());
                }
                Ok(Source::Literal(arg.to_string()))
            }
            "property" => {
                let segments: Vec<String> = arg.split('/').map(str::to_string).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(format!("property path `{}` has an empty segment", shown(arg)));
                }
                Ok(Source::Property(segments))
            }
            _ => Err(format!(
                "unknown source kind `{}` (known: header, jwt, mtls, literal, property)",
                shown(kind)
            )),
        }
    }

    /// The Envoy attribute path this source reads, if it reads one.
    pub fn property_path<'a>(&'a self, jwt_payload: &'a str) -> Option<Vec<&'a str>> {
        match self {
            Source::Header(_) | Source::Literal(_) => None,
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

    fn describe(&self) -> String {
        match self {
            Source::Header(name) => format!("header:{name}"),
            Source::Jwt(path) => format!("jwt:{}", path.join("/")),
            Source::Mtls(MtlsField::UriSan) => "mtls:uri_san".into(),
            Source::Mtls(MtlsField::DnsSan) => "mtls:dns_san".into(),
            Source::Mtls(MtlsField::Subject) => "mtls:subject".into(),
            Source::Literal(_) => "literal".into(),
            Source::Property(path) => format!("property:{}", path.join("/")),
        }
    }
}

/// JSON Pointer (RFC 6901) segments; the leading `/` is optional.
fn parse_pointer(arg: &str) -> Result<Vec<String>, String> {
    let path = arg.strip_prefix('/').unwrap_or(arg);
    let mut segments = Vec::new();
    for raw in path.split('/') {
        if raw.is_empty() {
            return Err(format!("claim path `{}` has an empty segment", shown(arg)));
        }
        let mut segment = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => segment.push('~'),
                    Some('1') => segment.push('/'),
                    _ => return Err(format!("claim path `{}`: `~` must be followed by 0 or 1", shown(arg))),
                }
            } else {
                segment.push(c);
            }
        }
        segments.push(segment);
    }
    Ok(segments)
}

use crate::config::shown;

/// RFC 9110 token characters.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Validated identity sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentitySources {
    pub subject: Vec<Source>,
    pub email: Vec<Source>,
    pub actor: Vec<Source>,
}

impl IdentitySources {
    pub fn from_config(cfg: IdentityConfig) -> Result<Self, ConfigError> {
        let parse_list = |field: &str, list: Vec<String>| -> Result<Vec<Source>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, s)| Source::parse(s).map_err(|r| ConfigError::new(format!("identity.{field}[{i}]"), r)))
                .collect()
        };
        Ok(IdentitySources {
            subject: parse_list("subject", cfg.subject)?,
            email: parse_list("email", cfg.email)?,
            actor: parse_list("actor", cfg.actor)?,
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Source> {
        self.subject.iter().chain(&self.email).chain(&self.actor)
    }

    /// Names of the headers these sources read.
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        header_names(self.all())
    }
}

/// Names of the headers among `sources`.
pub fn header_names<'a>(sources: impl Iterator<Item = &'a Source>) -> impl Iterator<Item = &'a str> {
    sources.filter_map(|source| match source {
        Source::Header(name) => Some(name.as_str()),
        _ => None,
    })
}

/// Envoy could not serialise an attribute (e.g. a jwt_authn payload holding a JSON `null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyUnavailable;

/// What the filter can read about a request; the host implements it, tests use maps.
/// A header that appears more than once. As an identity it is refused: which copy is "the" value depends on who
/// appended what (Envoy's `request_headers_to_add` appends by default, after whatever the client sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepeatedHeader;

pub trait RequestFacts {
    /// A request header's raw bytes (client-controlled: may be anything).
    fn header(&self, name: &str) -> Result<Option<Vec<u8>>, RepeatedHeader>;
    /// An Envoy attribute's raw bytes. `Err`: Envoy could not serialise it.
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, PropertyUnavailable>;
}

/// The resolved identity of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    pub subject: Option<String>,
    pub email: Option<String>,
    pub actor: Option<String>,
}

/// An identity source held a value the filter will not put into a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityError {
    pub source: String,
    pub reason: &'static str,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "identity source `{}` {}", self.source, self.reason)
    }
}

/// Longest identity value accepted into a claim.
pub const MAX_IDENTITY_VALUE_BYTES: usize = 1024;

/// Reads sources against one request.
pub struct Resolver<'a> {
    pub facts: &'a dyn RequestFacts,
    /// jwt_authn's `payload_in_metadata` name.
    pub jwt_payload: &'a str,
}

impl Resolver<'_> {
    /// A source's value as JSON; `None` when absent or empty.
    pub fn value(&self, source: &Source) -> Result<Option<Value>, IdentityError> {
        let err = |reason| IdentityError {
            source: source.describe(),
            reason,
        };
        let raw = match source {
            Source::Literal(text) => return Ok(Some(Value::String(text.clone()))),
            Source::Header(name) => match self.facts.header(name).map_err(|RepeatedHeader| err("is repeated"))? {
                Some(raw) => {
                    // Header values are text: refuse rather than repair.
                    let text = String::from_utf8(raw).map_err(|_| err("is not valid UTF-8"))?;
                    let text = text.trim_matches([' ', '\t']);
                    return Ok((!text.is_empty()).then(|| Value::String(text.to_string())));
                }
                None => return Ok(None),
            },
            other => {
                let path = other.property_path(self.jwt_payload).unwrap_or_default();
                match self.facts.property(&path) {
                    Ok(Some(raw)) if !raw.is_empty() => raw,
                    Ok(_) => return Ok(None),
                    Err(PropertyUnavailable) => return Err(err("could not be read from Envoy")),
                }
            }
        };
        property::decode(&raw)
            .map(Some)
            .ok_or_else(|| err("has a value of unknown shape"))
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
        let text = property::as_identity_text(&value).ok_or_else(|| err("is not a string"))?;
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() > MAX_IDENTITY_VALUE_BYTES {
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

    pub fn identity(&self, sources: &IdentitySources) -> Result<Identity, IdentityError> {
        Ok(Identity {
            subject: self.first_text(&sources.subject)?,
            email: self.first_text(&sources.email)?,
            actor: self.first_text(&sources.actor)?,
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Request facts for tests: headers and property paths (joined with `|`).
    #[derive(Default)]
    pub struct Facts {
        pub headers: HashMap<String, Vec<u8>>,
        pub properties: HashMap<String, Vec<u8>>,
    }

    impl Facts {
        pub fn header(mut self, name: &str, value: &[u8]) -> Self {
            self.headers.insert(name.into(), value.to_vec());
            self
        }
        pub fn jwt_claim(mut self, claim: &str, value: &[u8]) -> Self {
            let path = format!("metadata|filter_metadata|{JWT_AUTHN_NAMESPACE}|jwt_payload|{claim}");
            self.properties.insert(path, value.to_vec());
            self
        }
        pub fn property(mut self, path: &str, value: &[u8]) -> Self {
            self.properties.insert(path.into(), value.to_vec());
            self
        }
    }

    impl RequestFacts for Facts {
        fn header(&self, name: &str) -> Result<Option<Vec<u8>>, RepeatedHeader> {
            match self.headers.get(name) {
                Some(value) if value == b"<repeated>" => Err(RepeatedHeader),
                value => Ok(value.cloned()),
            }
        }
        fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, PropertyUnavailable> {
            Ok(self.properties.get(&path.join("|")).cloned())
        }
    }

    fn sources(json: &str) -> Result<IdentitySources, ConfigError> {
        IdentitySources::from_config(serde_json::from_str(json).unwrap())
    }

    fn resolve(sources: &IdentitySources, facts: &Facts) -> Result<Identity, IdentityError> {
        Resolver {
            facts,
            jwt_payload: "jwt_payload",
        }
        .identity(sources)
    }

    #[test]
    fn first_non_empty_source_wins() {
        let s = sources(
            r#"{"subject":["header:x-user-id"],"email":["header:x-user-email"],
                "actor":["header:X-Team-Id","header:x-org-id","literal:fallback"]}"#,
        )
        .unwrap();
        let facts = Facts::default()
            .header("x-user-id", b"alice")
            .header("x-team-id", b"  ")
            .header("x-org-id", b"acme");
        let id = resolve(&s, &facts).unwrap();
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert_eq!(id.email, None);
        assert_eq!(id.actor.as_deref(), Some("acme"));
        let id = resolve(&s, &Facts::default()).unwrap();
        assert_eq!(id.actor.as_deref(), Some("fallback"));
    }

    #[test]
    fn jwt_mtls_and_property_sources() {
        let s = sources(
            r#"{"subject":["jwt:sub","header:x-user-id"],"email":["jwt:/email"],
                "actor":["jwt:org/team","mtls:uri_san"]}"#,
        )
        .unwrap();
        let facts = Facts::default()
            .jwt_claim("sub", b"user-1")
            .jwt_claim("email", b"u@x.example")
            .header("x-user-id", b"admin")
            .property("connection|uri_san_peer_certificate", b"spiffe://td/ns/a/sa/b");
        let id = resolve(&s, &facts).unwrap();
        assert_eq!(id.subject.as_deref(), Some("user-1"));
        assert_eq!(id.email.as_deref(), Some("u@x.example"));
        assert_eq!(id.actor.as_deref(), Some("spiffe://td/ns/a/sa/b"));

        let facts = Facts::default().jwt_claim("org|team", b"blue");
        assert_eq!(resolve(&s, &facts).unwrap().actor.as_deref(), Some("blue"));
        // A numeric claim becomes decimal text.
        let facts = Facts::default().jwt_claim("sub", &42f64.to_le_bytes());
        assert_eq!(resolve(&s, &facts).unwrap().subject.as_deref(), Some("42"));
    }

    #[test]
    fn pointer_escapes() {
        assert_eq!(
            Source::parse("jwt:https:~1~1example.com~1roles").unwrap(),
            Source::Jwt(vec!["https://example.com/roles".into()])
        );
        assert_eq!(
            Source::parse("jwt:a~0b/c").unwrap(),
            Source::Jwt(vec!["a~b".into(), "c".into()])
        );
        assert_eq!(
            Source::parse("property:node/metadata/SERVICE_ACCOUNT").unwrap(),
            Source::Property(vec!["node".into(), "metadata".into(), "SERVICE_ACCOUNT".into()])
        );
    }

    #[test]
    fn bad_values_are_refused_not_repaired() {
        let s = sources(r#"{"subject":["header:x-user-id"]}"#).unwrap();
        for bad in [vec![0xff, 0xfe], b"a\x01b".to_vec(), vec![b'a'; 1025]] {
            let facts = Facts::default().header("x-user-id", &bad);
            assert_eq!(resolve(&s, &facts).unwrap_err().source, "header:x-user-id");
        }
        let s = sources(r#"{"subject":["jwt:groups"]}"#).unwrap();
        let list = [1u32.to_le_bytes(), 1u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        let facts = Facts::default().jwt_claim("groups", &[list, b"a\0\0".to_vec()].concat());
        assert_eq!(resolve(&s, &facts).unwrap_err().reason, "is not a string");
    }

    #[test]
    fn a_repeated_identity_header_is_refused() {
        let s = sources(r#"{"subject":["header:x-user-id"]}"#).unwrap();
        let facts = Facts::default().header("x-user-id", b"<repeated>");
        assert_eq!(resolve(&s, &facts).unwrap_err().reason, "is repeated");
    }

    #[test]
    fn bad_sources_are_refused_at_load() {
        for (json, field) in [
            (r#"{"subject":["x-user-id"]}"#, "identity.subject[0]"),
            (r#"{"email":["header:"]}"#, "identity.email[0]"),
            (r#"{"actor":["header:x","header:a b"]}"#, "identity.actor[1]"),
            (r#"{"subject":["ldap:uid"]}"#, "identity.subject[0]"),
            (r#"{"subject":["header:authorization"]}"#, "identity.subject[0]"),
            (r#"{"subject":["jwt:"]}"#, "identity.subject[0]"),
            (r#"{"subject":["jwt:a//b"]}"#, "identity.subject[0]"),
            (r#"{"subject":["jwt:a~2"]}"#, "identity.subject[0]"),
            (r#"{"actor":["mtls:spiffe"]}"#, "identity.actor[0]"),
            (r#"{"actor":["literal:"]}"#, "identity.actor[0]"),
            (r#"{"actor":["property:node//x"]}"#, "identity.actor[0]"),
        ] {
            assert_eq!(sources(json).unwrap_err().field, field, "{json}");
        }
    }
}
