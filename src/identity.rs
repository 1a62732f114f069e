//! Where the caller's identity comes from: ordered lists of sources for `sub`, `email` and the actor
//! (team/org) that becomes `act.sub`. The first source with a non-empty value wins.
//!
//! Source syntax is `<kind>:<argument>`; this module knows `header:<name>`. Unknown kinds are refused at load
//! so that a typo never silently drops an identity.

use std::fmt;

use serde::Deserialize;

use crate::config::ConfigError;

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
}

impl Source {
    fn parse(text: &str) -> Result<Source, String> {
        let (kind, arg) = text
            .split_once(':')
            .ok_or_else(|| format!("source `{}` must look like `header:<name>`", shown(text)))?;
        match kind {
            "header" => {
                let name = arg.to_ascii_lowercase();
                if name.is_empty() || !name.bytes().all(is_header_name_byte) {
                    return Err(format!("`{}` is not a valid HTTP header name", shown(arg)));
                }
                if matches!(
                    name.as_str(),
                    "authorization" | "proxy-authorization" | "cookie"
                ) {
                    return Err(format!(
                        "`{name}` carries credentials, not an identity; it is never forwarded"
                    ));
                }
                Ok(Source::Header(name))
            }
            _ => Err(format!(
                "unknown source kind `{}` (known: header)",
                shown(kind)
            )),
        }
    }
}

/// Operator-written text, shortened for an error message.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

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
                .map(|(i, s)| {
                    Source::parse(s)
                        .map_err(|r| ConfigError::new(format!("identity.{field}[{i}]"), r))
                })
                .collect()
        };
        Ok(IdentitySources {
            subject: parse_list("subject", cfg.subject)?,
            email: parse_list("email", cfg.email)?,
            actor: parse_list("actor", cfg.actor)?,
        })
    }

    /// Every header named by any source (lower case).
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.subject
            .iter()
            .chain(&self.email)
            .chain(&self.actor)
            .map(|Source::Header(name)| name.as_str())
    }
}

/// What the filter can read about a request; the host implements it, tests use a map.
pub trait RequestFacts {
    /// A request header's raw bytes (client-controlled: may be anything).
    fn header(&self, name: &str) -> Option<Vec<u8>>;
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

impl IdentitySources {
    pub fn resolve(&self, facts: &dyn RequestFacts) -> Result<Identity, IdentityError> {
        Ok(Identity {
            subject: first_value(&self.subject, facts)?,
            email: first_value(&self.email, facts)?,
            actor: first_value(&self.actor, facts)?,
        })
    }
}

fn first_value(
    sources: &[Source],
    facts: &dyn RequestFacts,
) -> Result<Option<String>, IdentityError> {
    for source in sources {
        let Source::Header(name) = source;
        let Some(raw) = facts.header(name) else {
            continue;
        };
        let err = |reason| IdentityError {
            source: format!("header:{name}"),
            reason,
        };
        // Refuse rather than repair: a value we would have to alter is not the identity the sender meant.
        let text = String::from_utf8(raw).map_err(|_| err("is not valid UTF-8"))?;
        let text = text.trim_matches([' ', '\t']);
        if text.is_empty() {
            continue;
        }
        if text.len() > MAX_IDENTITY_VALUE_BYTES {
            return Err(err("is longer than 1024 bytes"));
        }
        if text.chars().any(char::is_control) {
            return Err(err("contains control characters"));
        }
        return Ok(Some(text.to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Headers(HashMap<&'static str, Vec<u8>>);
    impl RequestFacts for Headers {
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.0.get(name).cloned()
        }
    }

    fn sources(json: &str) -> Result<IdentitySources, ConfigError> {
        IdentitySources::from_config(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn first_non_empty_source_wins() {
        let s = sources(
            r#"{"subject":["header:x-user-id"],"email":["header:x-user-email"],
                "actor":["header:X-Team-Id","header:x-org-id"]}"#,
        )
        .unwrap();
        let h = Headers(HashMap::from([
            ("x-user-id", b"alice".to_vec()),
            ("x-team-id", b"  ".to_vec()),
            ("x-org-id", b"acme".to_vec()),
        ]));
        let id = s.resolve(&h).unwrap();
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert_eq!(id.email, None);
        assert_eq!(id.actor.as_deref(), Some("acme"));
    }

    #[test]
    fn bad_values_are_refused_not_repaired() {
        let s = sources(r#"{"subject":["header:x-user-id"]}"#).unwrap();
        for bad in [vec![0xff, 0xfe], b"a\x01b".to_vec(), vec![b'a'; 1025]] {
            let h = Headers(HashMap::from([("x-user-id", bad)]));
            assert_eq!(s.resolve(&h).unwrap_err().source, "header:x-user-id");
        }
    }

    #[test]
    fn bad_sources_are_refused_at_load() {
        for (json, field) in [
            (r#"{"subject":["x-user-id"]}"#, "identity.subject[0]"),
            (r#"{"email":["header:"]}"#, "identity.email[0]"),
            (
                r#"{"actor":["header:x","header:a b"]}"#,
                "identity.actor[1]",
            ),
            (r#"{"subject":["jwt:sub"]}"#, "identity.subject[0]"),
            (
                r#"{"subject":["header:authorization"]}"#,
                "identity.subject[0]",
            ),
        ] {
            assert_eq!(sources(json).unwrap_err().field, field, "{json}");
        }
    }
}
