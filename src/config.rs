//! Plugin configuration: the JSON in the filter's `configuration` StringValue.
//!
//! Parsing is strict (`deny_unknown_fields`, typed values) and every error names the field it is about, so an
//! operator reading Envoy's log knows what to fix. Defaults live in [`defaults`], in one place.

use std::fmt;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::identity::{IdentityConfig, IdentitySources, Source};
use crate::keys::{public_jwk_from_pem, Jwk};
use crate::signer::Algorithm;

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
    /// jwt_authn `payload_in_metadata` name read by `jwt:` sources.
    pub const JWT_PAYLOAD_IN_METADATA: &str = "jwt_payload";
    pub const REQUIRE_SUBJECT: bool = false;
    pub const STRIP_IDENTITY_HEADERS: bool = true;
    /// Token cache: entries per worker VM (0 switches the cache off).
    pub const CACHE_MAX_ENTRIES: usize = 1024;
    /// Token cache: bytes of tokens per worker VM.
    pub const CACHE_MAX_BYTES: usize = 4 * 1024 * 1024;
    /// Token cache: a cached token is reused while at least this fraction of `ttl_seconds` remains.
    pub const CACHE_MIN_REMAINING_FRACTION: f64 = 0.5;
}

/// Claims the filter computes itself; `copy_claims` and `add_claims` may not write them.
pub const FILTER_CLAIMS: [&str; 10] = ["iss", "aud", "sub", "act", "email", "scope", "iat", "nbf", "exp", "jti"];
/// Claims a verifier needs; `remove_claims` may not remove them.
pub const ESSENTIAL_CLAIMS: [&str; 6] = ["iss", "aud", "exp", "iat", "jti", "scope"];

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
    jwt_payload_in_metadata: Option<String>,
    require_subject: Option<bool>,
    required_claims: Option<Vec<String>>,
    copy_claims: Option<BTreeMap<String, String>>,
    add_claims: Option<Map<String, Value>>,
    override_claims: Option<Map<String, Value>>,
    remove_claims: Option<Vec<String>>,
    strip_identity_headers: Option<bool>,
    token_cache: Option<RawTokenCache>,
    algorithm: Option<String>,
    additional_public_keys: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenCache {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    min_remaining_seconds: Option<u64>,
}

/// How claims beyond the standard set are shaped (applied in this order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimShaping {
    /// Output claim ← source value (e.g. `groups` ← `jwt:groups`); skipped when the source is empty.
    pub copy: Vec<(String, Source)>,
    /// Fixed claims added; they cannot replace a claim the filter computes.
    pub add: Map<String, Value>,
    /// Fixed claims that replace anything but `scope`, registered claims included: the explicit override.
    pub override_: Map<String, Value>,
    /// Claims removed last.
    pub remove: Vec<String>,
}

/// Per-worker token cache settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCacheConfig {
    /// 0: no cache (a fresh token and `jti` per request).
    pub max_entries: usize,
    pub max_bytes: usize,
    /// A cached token is used only while at least this many seconds of its lifetime remain.
    pub min_remaining_seconds: u64,
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
    pub jwt_payload_in_metadata: String,
    /// Refuse (401) requests without a resolvable user.
    pub require_subject: bool,
    /// Claim paths that must be present in jwt_authn's verified payload (else 403).
    pub required_claims: Vec<Source>,
    pub claims: ClaimShaping,
    /// Remove the headers named by `header:` sources (in `identity` and `copy_claims`) before the request goes
    /// upstream.
    pub strip_identity_headers: bool,
    pub token_cache: TokenCacheConfig,
    /// The JWS algorithm tokens are signed with (the key must be of its type).
    pub algorithm: Algorithm,
    /// Public keys published in the JWKS beside the signing key (key rotation: the previous or next key).
    pub additional_public_keys: Vec<Jwk>,
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
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
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
    /// Every header a `header:` source reads, in `identity` and in `copy_claims`: the headers
    /// `strip_identity_headers` removes.
    pub fn identity_header_names(&self) -> impl Iterator<Item = &str> {
        self.identity
            .header_names()
            .chain(crate::identity::header_names(self.claims.copy.iter().map(|(_, s)| s)))
    }

    /// Parses and validates the plugin configuration. An empty configuration means "all defaults".
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw: RawConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            RawConfig::default()
        } else {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let field = field_path(e.path());
                ConfigError::new(field, redact_serde_error(&e.into_inner()))
            })?;
            de.end()
                .map_err(|e| ConfigError::new("(root)", redact_serde_error(&e)))?;
            raw
        };
        Self::validate(raw)
    }

    fn validate(mut raw: RawConfig) -> Result<Config, ConfigError> {
        let claims = Self::claim_shaping(&raw)?;
        let issuer = match raw.issuer {
            None => None,
            Some(s) => Some(Issuer::parse(&s).map_err(|r| ConfigError::new("issuer", r))?),
        };
        let audience = raw.audience.unwrap_or_else(|| defaults::AUDIENCE.to_string());
        check_claim_text("audience", &audience)?;
        let ttl_seconds = match raw.ttl_seconds {
            None => defaults::TTL_SECONDS,
            Some(t) if t <= 0 => return Err(ConfigError::new("ttl_seconds", "must be a positive number of seconds")),
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
            Some(n) if n <= 0 => return Err(ConfigError::new("max_body_bytes", "must be a positive number of bytes")),
            Some(n) if n as u64 > defaults::MAX_BODY_BYTES_LIMIT as u64 => {
                return Err(ConfigError::new(
                    "max_body_bytes",
                    format!("{n} exceeds the limit of {} bytes", defaults::MAX_BODY_BYTES_LIMIT),
                ))
            }
            Some(n) => n as usize,
        };
        let identity = IdentitySources::from_config(raw.identity.take().unwrap_or_default())?;
        let signing_key = match raw.signing_key.take() {
            None => None,
            Some(pem) if pem.trim().is_empty() => {
                return Err(ConfigError::new(
                    "signing_key",
                    "is empty; remove the field to use another key source",
                ))
            }
            Some(pem) => Some(SecretPem(pem)),
        };
        let jwt_payload_in_metadata = raw
            .jwt_payload_in_metadata
            .take()
            .unwrap_or_else(|| defaults::JWT_PAYLOAD_IN_METADATA.to_string());
        check_claim_text("jwt_payload_in_metadata", &jwt_payload_in_metadata)?;
        let required_claims = raw
            .required_claims
            .take()
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, claim)| {
                Source::parse(&format!("jwt:{claim}")).map_err(|r| ConfigError::new(format!("required_claims[{i}]"), r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token_cache = Self::token_cache(raw.token_cache.take().unwrap_or_default(), ttl_seconds)?;
        let algorithm = match raw.algorithm.take() {
            None => Algorithm::default(),
            Some(name) => Algorithm::parse(&name)
                .ok_or_else(|| ConfigError::new("algorithm", "must be \"RS256\", \"ES256\" or \"EdDSA\""))?,
        };
        let mut additional_public_keys = Vec::new();
        for (i, pem) in raw.additional_public_keys.take().unwrap_or_default().iter().enumerate() {
            let jwk = public_jwk_from_pem(pem)
                .map_err(|e| ConfigError::new(format!("additional_public_keys[{i}]"), e.to_string()))?;
            if !additional_public_keys.iter().any(|k: &Jwk| k.kid == jwk.kid) {
                additional_public_keys.push(jwk);
            }
        }
        Ok(Config {
            issuer,
            audience,
            ttl_seconds,
            signing_key,
            actor,
            identity,
            max_body_bytes,
            jwt_payload_in_metadata,
            require_subject: raw.require_subject.unwrap_or(defaults::REQUIRE_SUBJECT),
            required_claims,
            claims,
            strip_identity_headers: raw.strip_identity_headers.unwrap_or(defaults::STRIP_IDENTITY_HEADERS),
            token_cache,
            algorithm,
            additional_public_keys,
        })
    }

    fn claim_shaping(raw: &RawConfig) -> Result<ClaimShaping, ConfigError> {
        let check_name = |field: &str, name: &str| -> Result<(), ConfigError> {
            if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    field,
                    "claim names must be 1-256 characters without control characters",
                ));
            }
            Ok(())
        };
        let mut copy = Vec::new();
        for (name, source) in raw.copy_claims.iter().flatten() {
            let field = format!("copy_claims.{}", shown(name));
            check_name(&field, name)?;
            if FILTER_CLAIMS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    field,
                    "is computed by the filter; set it with `identity` or replace it with `override_claims`",
                ));
            }
            copy.push((
                name.clone(),
                Source::parse(source).map_err(|r| ConfigError::new(&field, r))?,
            ));
        }
        let add = raw.add_claims.clone().unwrap_or_default();
        for name in add.keys() {
            let field = format!("add_claims.{}", shown(name));
            check_name(&field, name)?;
            if FILTER_CLAIMS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    field,
                    "is computed by the filter; use `override_claims` to replace it explicitly",
                ));
            }
        }
        let override_ = raw.override_claims.clone().unwrap_or_default();
        for (name, value) in &override_ {
            let field = format!("override_claims.{}", shown(name));
            check_name(&field, name)?;
            if name == "scope" {
                return Err(ConfigError::new(
                    field,
                    "scope is always derived from the request (least privilege)",
                ));
            }
            let ok = match name.as_str() {
                "iss" | "sub" | "jti" => value.is_string(),
                "aud" => value.is_string() || value.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
                "iat" | "nbf" | "exp" => value.is_u64(),
                _ => true,
            };
            if !ok {
                return Err(ConfigError::new(field, "has the wrong type for this registered claim"));
            }
        }
        let remove = raw.remove_claims.clone().unwrap_or_default();
        for (i, name) in remove.iter().enumerate() {
            let field = format!("remove_claims[{i}]");
            check_name(&field, name)?;
            if ESSENTIAL_CLAIMS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    field,
                    format!("`{}` is needed by every verifier", shown(name)),
                ));
            }
        }
        Ok(ClaimShaping {
            copy,
            add,
            override_,
            remove,
        })
    }

    fn token_cache(raw: RawTokenCache, ttl_seconds: u64) -> Result<TokenCacheConfig, ConfigError> {
        let max_entries = raw.max_entries.unwrap_or(defaults::CACHE_MAX_ENTRIES as u64);
        if max_entries > 1_000_000 {
            return Err(ConfigError::new("token_cache.max_entries", "at most 1000000"));
        }
        let max_bytes = raw.max_bytes.unwrap_or(defaults::CACHE_MAX_BYTES as u64);
        if max_bytes > 1 << 30 {
            return Err(ConfigError::new("token_cache.max_bytes", "at most 1 GiB"));
        }
        let default_remaining = (ttl_seconds as f64 * defaults::CACHE_MIN_REMAINING_FRACTION).ceil() as u64;
        let min_remaining_seconds = raw.min_remaining_seconds.unwrap_or(default_remaining);
        if min_remaining_seconds >= ttl_seconds && max_entries > 0 {
            return Err(ConfigError::new(
                "token_cache.min_remaining_seconds",
                "must be less than ttl_seconds (or switch the cache off with max_entries: 0)",
            ));
        }
        Ok(TokenCacheConfig {
            max_entries: max_entries as usize,
            max_bytes: max_bytes as usize,
            min_remaining_seconds,
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
    if let Some(rest) = text.strip_prefix("unknown field `") {
        // "unknown field `NAME`, expected one of `a`, `b`": NAME is operator text and may hold anything, backticks
        // included, so split at serde's own suffix (the last one: it follows the name), never at the first '`'.
        let (name, expected) = match ["`, expected ", "`, there are no fields"]
            .iter()
            .filter_map(|suffix| rest.rfind(suffix))
            .max()
        {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest.trim_end_matches('`'), ""),
        };
        return format!("unknown field `{}`{}", shown(name), expected);
    }
    match text.find(['"', '`']) {
        Some(i) => format!(
            "{} (value not shown) at line {} column {}",
            text[..i].trim_end(),
            e.line(),
            e.column()
        ),
        None => text,
    }
}

/// The path of a config error, with map keys shown only when they look like names.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&shown(key));
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&shown(variant));
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    if out.is_empty() {
        "(root)".to_string()
    } else {
        out
    }
}

/// Operator-written text for an error message: configuration must never echo key material into Envoy's log,
/// and a PEM can land in any field by mistake. Text is shown only when it looks like a name or a source (at most
/// 64 characters, no upper-case letters, no `+`, `=` or whitespace: never base64 key material).
pub fn shown(text: &str) -> String {
    let looks_like_a_name = (1..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.:/~@".contains(c));
    if looks_like_a_name {
        text.to_string()
    } else {
        format!("<{} bytes, not shown>", text.len())
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
        assert_eq!(parse(r#"{"ttl_seconds":86400}"#).unwrap().ttl_seconds, 86400);
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
        assert_eq!(parse(r#"{"max_body_bytes":0}"#).unwrap_err().field, "max_body_bytes");
        assert_eq!(parse(r#"{"max_body_bytes":-1}"#).unwrap_err().field, "max_body_bytes");
        assert_eq!(
            parse(r#"{"max_body_bytes":1000000000000}"#).unwrap_err().field,
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
        assert!(!format!("{:?}", parse(&format!(r#"{{"signing_key":"{pem}"}}"#)).unwrap()).contains("MIIE"));
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
        assert_eq!(KeySource::resolve(&with, None).unwrap_err().field, "signing_key");
    }

    #[test]
    fn algorithm_and_additional_keys() {
        assert_eq!(parse("{}").unwrap().algorithm, Algorithm::Rs256);
        assert_eq!(parse(r#"{"algorithm":"ES256"}"#).unwrap().algorithm, Algorithm::Es256);
        assert_eq!(parse(r#"{"algorithm":"EdDSA"}"#).unwrap().algorithm, Algorithm::EdDsa);
        assert_eq!(parse(r#"{"algorithm":"HS256"}"#).unwrap_err().field, "algorithm");
        assert_eq!(parse(r#"{"algorithm":"none"}"#).unwrap_err().field, "algorithm");
        let e = parse(r#"{"additional_public_keys":["x","y"]}"#).unwrap_err();
        assert_eq!(e.field, "additional_public_keys[0]");
    }

    #[test]
    fn stripped_headers_cover_identity_and_copied_claims() {
        let c = parse(
            r#"{"identity":{"subject":["header:x-user-id","jwt:sub"]},"copy_claims":{"dept":"header:X-Department"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.identity_header_names().collect::<Vec<_>>(),
            ["x-user-id", "x-department"]
        );
    }

    #[test]
    fn key_material_never_reaches_an_error() {
        let pem = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7fuzzSecretBodyQ9xZp4Lk2Wv\\n-----END PRIVATE KEY-----\\n";
        for template in [
            r#"{"$PEM": 1}"#,
            r#"{"identity": {"$PEM": []}}"#,
            r#"{"add_claims": {"$PEM": 1}}"#,
            r#"{"copy_claims": {"$PEM": "jwt:sub"}}"#,
            r#"{"identity": {"subject": ["$PEM"]}}"#,
            r#"{"copy_claims": {"x": "$PEM"}}"#,
            r#"{"identity": {"subject": ["header:$PEM"]}}"#,
            r#"{"identity": {"subject": ["jwt:$PEM~"]}}"#,
            r#"{"remove_claims": ["$PEM"], "override_claims": {"$PEM": 1}}"#,
            r#"{"audience": "$PEM\u0001"}"#,
            r#"{"additional_public_keys": ["$PEM"]}"#,
            r#"{"tokeA8888r`$PEMm{"": "#,
            r#"{"a`, expected one of `x`$PEM": 1}"#,
        ] {
            let input = template.replace("$PEM", pem);
            if let Err(e) = parse(&input) {
                let text = e.to_string();
                assert!(
                    !text.contains("MIIEvQ") && !text.contains("Secret"),
                    "{template}: {text}"
                );
            }
        }
        // Names still help the operator.
        assert!(parse(r#"{"audiance":"x"}"#)
            .unwrap_err()
            .to_string()
            .contains("audiance"));
        assert_eq!(
            parse(r#"{"add_claims":{"exp":1}}"#).unwrap_err().field,
            "add_claims.exp"
        );
    }
}
