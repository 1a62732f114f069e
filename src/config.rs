//! Plugin configuration: the JSON in the filter's `configuration` StringValue.
//!
//! Parsing is strict (`deny_unknown_fields`, typed values) and every error names the field it is about, so an
//! operator reading Envoy's log knows what to fix. Defaults live in [`defaults`], in one place.

use std::fmt;

use serde::Deserialize;

use crate::identity::{IdentityConfig, IdentitySources};

/// Every default of the plugin configuration.
pub mod defaults {
    pub const AUDIENCE: &str = "mcp";
    pub const TTL_SECONDS: u64 = 300;
    pub const ACTOR: &str = "mcp-gateway";
    pub const MAX_BODY_BYTES: usize = 1024 * 1024;
    /// Longest lifetime we accept: a "short-lived" token that lives more than a day is a misconfiguration.
    pub const MAX_TTL_SECONDS: u64 = 24 * 60 * 60;
    /// Upper bound for `max_body_bytes`; MCP messages are small and the filter buffers the whole body.
    pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;
}

/// The configuration as written by the operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    issuer: Option<String>,
    audience: Option<String>,
    ttl_seconds: Option<i64>,
    signing_key: Option<String>,
    actor: Option<String>,
    identity: Option<IdentityConfig>,
    max_body_bytes: Option<i64>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `None`: derive the issuer from each request's `scheme://authority`.
    pub issuer: Option<Issuer>,
    pub audience: String,
    pub ttl_seconds: u64,
    /// PEM text of the configured key. Never printed: `Config`'s Debug hides it.
    pub signing_key: Option<SecretPem>,
    pub actor: String,
    pub identity: IdentitySources,
    pub max_body_bytes: usize,
}

/// A PEM private key held as text; its `Debug` does not print it.
#[derive(Clone)]
pub struct SecretPem(pub String);

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// The issuer URL, split so that the well-known paths can be served under its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer {
    /// `scheme://authority[/path]`, without a trailing slash.
    pub url: String,
    /// The path part, `""` or `/tenant` (no trailing slash).
    pub path: String,
}

impl Issuer {
    /// Validates an issuer URL: `http(s)://authority[/path]`, no query, fragment, userinfo or whitespace.
    pub fn parse(value: &str) -> Result<Issuer, String> {
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))
            .ok_or("must start with https:// (or http:// for local testing)")?;
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain whitespace or control characters".into());
        }
        if value.contains(['?', '#']) {
            return Err("must not contain a query or fragment (OIDC issuer rules)".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || !is_valid_authority(authority) {
            return Err("must have a host (and optional port) after the scheme".into());
        }
        let path = path.trim_end_matches('/');
        if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
            return Err("path must not contain empty, `.` or `..` segments".into());
        }
        let scheme_len = value.len() - rest.len();
        Ok(Issuer {
            url: format!("{}{}{}", &value[..scheme_len], authority, path),
            path: path.to_string(),
        })
    }

    /// The issuer for a request when none is configured: the request's own `scheme://authority`.
    pub fn from_request(scheme: &str, authority: &str) -> Option<Issuer> {
        let scheme = match scheme {
            "http" | "https" => scheme,
            _ => return None,
        };
        if !is_valid_authority(authority) {
            return None;
        }
        Some(Issuer {
            url: format!("{scheme}://{authority}"),
            path: String::new(),
        })
    }
}

/// host[:port] with the characters of a registered name, IPv4 or bracketed IPv6 (RFC 3986, no userinfo).
fn is_valid_authority(authority: &str) -> bool {
    !authority.is_empty()
        && authority.len() <= 255
        && authority.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// Why a configuration was refused. The message names the field; it never includes key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: field `{}`: {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates the plugin configuration. An empty configuration means "all defaults".
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    "(root)".to_string()
                } else {
                    path
                };
                ConfigError::new(field, redact_serde_error(&e.into_inner()))
            })?;
            de.end()
                .map_err(|e| ConfigError::new("(root)", redact_serde_error(&e)))?;
            raw
        };
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let issuer = match raw.issuer {
            None => None,
            Some(s) => Some(Issuer::parse(&s).map_err(|r| ConfigError::new("issuer", r))?),
        };
        let audience = raw
            .audience
            .unwrap_or_else(|| defaults::AUDIENCE.to_string());
        check_claim_text("audience", &audience)?;
        let ttl_seconds = match raw.ttl_seconds {
            None => defaults::TTL_SECONDS,
            Some(t) if t <= 0 => {
                return Err(ConfigError::new(
                    "ttl_seconds",
                    "must be a positive number of seconds",
                ))
            }
            Some(t) if t as u64 > defaults::MAX_TTL_SECONDS => {
                return Err(ConfigError::new(
                    "ttl_seconds",
                    format!(
                        "{t} is too long for a short-lived token (at most {})",
                        defaults::MAX_TTL_SECONDS
                    ),
                ))
            }
            Some(t) => t as u64,
        };
        let actor = raw.actor.unwrap_or_else(|| defaults::ACTOR.to_string());
        check_claim_text("actor", &actor)?;
        let max_body_bytes = match raw.max_body_bytes {
            None => defaults::MAX_BODY_BYTES,
            Some(n) if n <= 0 => {
                return Err(ConfigError::new(
                    "max_body_bytes",
                    "must be a positive number of bytes",
                ))
            }
            Some(n) if n as u64 > defaults::MAX_BODY_BYTES_LIMIT as u64 => {
                return Err(ConfigError::new(
                    "max_body_bytes",
                    format!(
                        "{n} exceeds the limit of {} bytes",
                        defaults::MAX_BODY_BYTES_LIMIT
                    ),
                ))
            }
            Some(n) => n as usize,
        };
        let identity = IdentitySources::from_config(raw.identity.unwrap_or_default())?;
        let signing_key = match raw.signing_key {
            None => None,
            Some(pem) if pem.trim().is_empty() => {
                return Err(ConfigError::new(
                    "signing_key",
                    "is empty; remove the field to use another key source",
                ))
            }
            Some(pem) => Some(SecretPem(pem)),
        };
        Ok(Config {
            issuer,
            audience,
            ttl_seconds,
            signing_key,
            actor,
            identity,
            max_body_bytes,
        })
    }
}

/// Claim values written as configuration must be non-empty printable text of sane length.
fn check_claim_text(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 1024 || value.chars().any(char::is_control) {
        return Err(ConfigError::new(
            field,
            "must be 1-1024 characters without control characters",
        ));
    }
    Ok(())
}

/// serde_json errors quote the offending string value (`invalid type: string "-----BEGIN..."`). A PEM in the
/// wrong field would then land in Envoy's log: keep only the error's category and position.
fn redact_serde_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find('"') {
        Some(i) if !text.starts_with("unknown field") => {
            format!(
                "{} (value not shown) at line {} column {}",
                text[..i].trim_end(),
                e.line(),
                e.column()
            )
        }
        _ => text,
    }
}

/// Where the signing key comes from, in precedence order.
#[derive(Debug)]
pub enum KeySource {
    /// `signing_key` in the plugin configuration.
    Config(SecretPem),
    /// The `MCP_JWT_SIGNING_KEY` environment variable.
    Environment(SecretPem),
    /// Neither: an RSA-2048 key generated once per Envoy process and shared by every worker.
    Generated,
}

pub const SIGNING_KEY_ENV: &str = "MCP_JWT_SIGNING_KEY";

impl KeySource {
    /// Applies the precedence `signing_key` > `MCP_JWT_SIGNING_KEY` > generated.
    /// The environment value may carry literal `\n` escapes (a PEM squeezed into one line, as the seed documents).
    pub fn resolve(config: &Config, env_value: Option<&str>) -> Result<KeySource, ConfigError> {
        if let Some(pem) = &config.signing_key {
            check_not_file_url("signing_key", &pem.0)?;
            return Ok(KeySource::Config(SecretPem(unescape_newlines(&pem.0))));
        }
        match env_value {
            Some(v) if !v.trim().is_empty() => {
                check_not_file_url(SIGNING_KEY_ENV, v)?;
                Ok(KeySource::Environment(SecretPem(unescape_newlines(v))))
            }
            _ => Ok(KeySource::Generated),
        }
    }
}

fn check_not_file_url(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim_start().starts_with("file://") {
        return Err(ConfigError::new(
            field,
            "a wasm VM cannot read files: pass the PEM text itself (e.g. an environment variable set from a \
             Kubernetes Secret and forwarded with vm_config.environment_variables.host_env_keys, or `signing_key`)",
        ));
    }
    Ok(())
}

fn unescape_newlines(pem: &str) -> String {
    pem.replace("\\r\\n", "\n").replace("\\n", "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s.as_bytes())
    }

    #[test]
    fn empty_config_gives_defaults() {
        for text in ["", "  ", "{}"] {
            let c = parse(text).unwrap();
            assert_eq!(c.issuer, None);
            assert_eq!(c.audience, "mcp");
            assert_eq!(c.ttl_seconds, 300);
            assert_eq!(c.actor, "mcp-gateway");
            assert_eq!(c.max_body_bytes, 1_048_576);
            assert!(c.signing_key.is_none());
        }
    }

    #[test]
    fn every_documented_field_is_read() {
        let c = parse(
            r#"{"issuer":"https://gw.example.com/","audience":"a","ttl_seconds":60,"actor":"gw",
                "max_body_bytes":10,"identity":{"subject":["header:x-user-id"]}}"#,
        )
        .unwrap();
        assert_eq!(c.issuer.unwrap().url, "https://gw.example.com");
        assert_eq!(c.audience, "a");
        assert_eq!(c.ttl_seconds, 60);
        assert_eq!(c.actor, "gw");
        assert_eq!(c.max_body_bytes, 10);
    }

    #[test]
    fn issuer_with_path_keeps_the_path() {
        let i = Issuer::parse("https://gw.example.com/tenant-a/").unwrap();
        assert_eq!(i.url, "https://gw.example.com/tenant-a");
        assert_eq!(i.path, "/tenant-a");
    }

    #[test]
    fn bad_issuers_are_refused() {
        for bad in [
            "gw.example.com",
            "ftp://x",
            "https://",
            "https://a b",
            "https://x/?q=1",
            "https://x/#f",
            "https://user@x",
            "https://x/a/../b",
            "https://x//a",
        ] {
            let e = parse(&format!(r#"{{"issuer":"{bad}"}}"#)).unwrap_err();
            assert_eq!(e.field, "issuer", "{bad}");
        }
    }

    #[test]
    fn ttl_bounds_name_the_field() {
        for bad in ["0", "-5", "86401", "999999999999"] {
            let e = parse(&format!(r#"{{"ttl_seconds":{bad}}}"#)).unwrap_err();
            assert_eq!(e.field, "ttl_seconds", "{bad}");
            assert!(e.to_string().contains("ttl_seconds"));
        }
        let e = parse(r#"{"ttl_seconds":"300"}"#).unwrap_err();
        assert_eq!(e.field, "ttl_seconds");
        let e = parse(r#"{"ttl_seconds":1.5}"#).unwrap_err();
        assert_eq!(e.field, "ttl_seconds");
        assert_eq!(
            parse(r#"{"ttl_seconds":86400}"#).unwrap().ttl_seconds,
            86400
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = parse(r#"{"audiance":"x"}"#).unwrap_err();
        assert!(e.reason.contains("audiance"), "{e}");
        let e = parse(r#"{"identity":{"subjekt":[]}}"#).unwrap_err();
        assert!(e.field.starts_with("identity"), "{e}");
    }

    #[test]
    fn not_json_is_refused() {
        assert!(parse("{").is_err());
        assert!(parse("[]").is_err());
        assert!(parse(r#"{} {}"#).is_err());
    }

    #[test]
    fn max_body_bytes_bounds() {
        assert_eq!(
            parse(r#"{"max_body_bytes":0}"#).unwrap_err().field,
            "max_body_bytes"
        );
        assert_eq!(
            parse(r#"{"max_body_bytes":-1}"#).unwrap_err().field,
            "max_body_bytes"
        );
        assert_eq!(
            parse(r#"{"max_body_bytes":1000000000000}"#)
                .unwrap_err()
                .field,
            "max_body_bytes"
        );
    }

    #[test]
    fn errors_never_echo_a_pem() {
        let pem = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----";
        let e = parse(&format!(r#"{{"audience":{{"x":"{pem}"}}}}"#)).unwrap_err();
        assert!(!e.to_string().contains("MIIE"), "{e}");
        let e = parse(&format!(r#"{{"ttl_seconds":"{pem}"}}"#)).unwrap_err();
        assert!(!e.to_string().contains("MIIE"), "{e}");
        assert!(!format!(
            "{:?}",
            parse(&format!(r#"{{"signing_key":"{pem}"}}"#)).unwrap()
        )
        .contains("MIIE"));
    }

    #[test]
    fn key_precedence() {
        let with_key = parse(r#"{"signing_key":"PEM-A"}"#).unwrap();
        match KeySource::resolve(&with_key, Some("PEM-B")).unwrap() {
            KeySource::Config(p) => assert_eq!(p.0, "PEM-A"),
            other => panic!("{other:?}"),
        }
        let without = parse("{}").unwrap();
        match KeySource::resolve(&without, Some("line1\\nline2")).unwrap() {
            KeySource::Environment(p) => assert_eq!(p.0, "line1\nline2"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            KeySource::resolve(&without, None).unwrap(),
            KeySource::Generated
        ));
        assert!(matches!(
            KeySource::resolve(&without, Some("  ")).unwrap(),
            KeySource::Generated
        ));
    }

    #[test]
    fn file_urls_are_refused_with_advice() {
        let without = parse("{}").unwrap();
        let e = KeySource::resolve(&without, Some("file:///secrets/k.pem")).unwrap_err();
        assert_eq!(e.field, SIGNING_KEY_ENV);
        assert!(e.reason.contains("cannot read files"));
        let with = parse(r#"{"signing_key":"file:///k.pem"}"#).unwrap();
        assert_eq!(
            KeySource::resolve(&with, None).unwrap_err().field,
            "signing_key"
        );
    }
}
