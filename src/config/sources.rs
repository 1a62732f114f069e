//! Where values come from: the `<kind>:<argument>` sources of `identity`, `copy_claims` and `required_claims`.
//!
//! Source syntax:
//! - `header:<name>`: a request header (only as trustworthy as whatever sets it);
//! - `jwt:<claim path>`: a claim of the token Envoy's `jwt_authn` verified (its `payload_in_metadata`); the path is
//!   a JSON Pointer with the leading `/` optional: `jwt:sub`, `jwt:org/team`, `jwt:groups/0`, `~1` for a `/` and
//!   `~0` for a `~` inside a claim name;
//! - `mtls:uri_san` | `mtls:dns_san` | `mtls:subject`: the downstream TLS peer certificate (e.g. a SPIFFE ID);
//! - `literal:<text>`: a fixed value;
//! - `property:<segment>/<segment>/...`: any Envoy attribute, e.g. `property:xds/node/metadata/SERVICE_ACCOUNT`;
//! - `client_info:<member>` (`name`, `version`, ...): the client's self-description in the body's `_meta`
//!   (client-asserted: `copy_claims` only).
//! - `introspection:<claim path>`: a member of the RFC 7662 introspection result of the client's token (needs
//!   `introspection`), a JSON Pointer like `jwt:`.
//!
//! Unknown kinds and malformed arguments are refused at load, so a typo never silently drops an identity.
//! Resolving a source against a request is `crate::identity`'s job.

use serde::Deserialize;

use super::defaults::MAX_CLAIM_TEXT_BYTES;
use super::error::{shown, ConfigError};

/// Connection-specific headers (RFC 9110 section 7.6.1) that Envoy's HTTP connection manager strips.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// The metadata namespace Envoy's jwt_authn filter writes its verified payloads under.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// The `identity` object as written in the plugin configuration (lists of source texts).
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
    /// A fixed value.
    Literal(String),
    /// An Envoy attribute path.
    Property(Vec<String>),
    /// A member of the request body's `params._meta["io.modelcontextprotocol/clientInfo"]` (MCP 2026-07-28): what
    /// the client says it is. Client-asserted: usable in `copy_claims`, never as an identity.
    ClientInfo(String),
    /// A member path in the introspection result of the client's token.
    Introspection(Vec<String>),
}

/// A field of the downstream TLS peer certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsField {
    /// The first URI SAN (e.g. a SPIFFE ID).
    UriSan,
    /// The first DNS SAN.
    DnsSan,
    /// The subject DN.
    Subject,
}

impl Source {
    /// Parses `<kind>:<argument>`; the error says what is wrong, showing operator text only when it is safe.
    pub fn parse(text: &str) -> Result<Source, String> {
        let (kind, arg) = text.split_once(':').ok_or_else(|| {
            format!(
                "source `{}` must look like `<kind>:<argument>` (kinds: header, jwt, introspection, mtls, literal, property, client_info)",
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
                // Headers a filter never sees under that name: a source on them would silently be empty, making
                // every user the gateway's actor.
                if name == "host" {
                    return Err(
                        "Envoy keeps `Host` as `:authority`, which a header source cannot read; use \
                                `property:request/host`"
                            .into(),
                    );
                }
                if HOP_BY_HOP.contains(&name.as_str()) {
                    return Err(format!(
                        "`{name}` is a hop-by-hop header that Envoy removes before any filter sees it"
                    ));
                }
                Ok(Source::Header(name))
            }
            "jwt" => parse_pointer(arg).map(Source::Jwt),
            "introspection" => parse_pointer(arg).map(Source::Introspection),
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
                if arg.is_empty() || arg.len() > MAX_CLAIM_TEXT_BYTES || arg.chars().any(char::is_control) {
                    return Err("a literal must be 1-1024 characters without control characters".into());
                }
                Ok(Source::Literal(arg.to_string()))
            }
            "client_info" => {
                if arg.is_empty() || arg.len() > 64 || !arg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!(
                        "client_info member `{}` must be a name such as `name` or `version`",
                        shown(arg)
                    ));
                }
                Ok(Source::ClientInfo(arg.to_string()))
            }
            "property" => {
                let segments: Vec<String> = arg.split('/').map(str::to_string).collect();
                if segments.iter().any(String::is_empty) {
                    return Err(format!("property path `{}` has an empty segment", shown(arg)));
                }
                Ok(Source::Property(segments))
            }
            _ => Err(format!(
                "unknown source kind `{}` (known: header, jwt, introspection, mtls, literal, property, client_info)",
                shown(kind)
            )),
        }
    }

    /// The source as the operator wrote it (a literal's text is not repeated), for error messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Header(name) => format!("header:{name}"),
            Source::Jwt(path) => format!("jwt:{}", path.join("/")),
            Source::Mtls(MtlsField::UriSan) => "mtls:uri_san".into(),
            Source::Mtls(MtlsField::DnsSan) => "mtls:dns_san".into(),
            Source::Mtls(MtlsField::Subject) => "mtls:subject".into(),
            Source::Literal(_) => "literal".into(),
            Source::Property(path) => format!("property:{}", path.join("/")),
            Source::ClientInfo(member) => format!("client_info:{member}"),
            Source::Introspection(path) => format!("introspection:{}", path.join("/")),
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

/// RFC 9110 token characters.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Validated identity sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentitySources {
    /// Sources of `sub`.
    pub subject: Vec<Source>,
    /// Sources of `email`.
    pub email: Vec<Source>,
    /// Sources of `act.sub`.
    pub actor: Vec<Source>,
}

impl IdentitySources {
    /// Parses every list, naming the entry that is wrong (`identity.subject[1]`).
    pub fn from_config(cfg: IdentityConfig) -> Result<Self, ConfigError> {
        let parse_list = |field: &str, list: Vec<String>| -> Result<Vec<Source>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    let name = format!("identity.{field}[{i}]");
                    match Source::parse(s).map_err(|r| ConfigError::new(&name, r))? {
                        Source::ClientInfo(_) => Err(ConfigError::new(
                            name,
                            "client_info is what the client asserts about itself, never an identity (use it in \
                             copy_claims)",
                        )),
                        source => Ok(source),
                    }
                })
                .collect()
        };
        Ok(IdentitySources {
            subject: parse_list("subject", cfg.subject)?,
            email: parse_list("email", cfg.email)?,
            actor: parse_list("actor", cfg.actor)?,
        })
    }

    /// Every source, subject first.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(json: &str) -> Result<IdentitySources, ConfigError> {
        IdentitySources::from_config(serde_json::from_str(json).unwrap())
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
    fn host_is_refused_with_the_property_that_reads_it() {
        let e = Source::parse("header:host").unwrap_err();
        assert!(e.contains("property:request/host"), "{e}");
        assert_eq!(
            Source::parse("property:request/host").unwrap(),
            Source::Property(vec!["request".into(), "host".into()])
        );
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
            (r#"{"subject":["header:host"]}"#, "identity.subject[0]"),
            (r#"{"subject":["header:Host"]}"#, "identity.subject[0]"),
            (r#"{"email":["header:x","header:connection"]}"#, "identity.email[1]"),
            (r#"{"actor":["header:transfer-encoding"]}"#, "identity.actor[0]"),
        ] {
            assert_eq!(sources(json).unwrap_err().field, field, "{json}");
        }
    }
}
