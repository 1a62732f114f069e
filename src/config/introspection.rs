//! `introspection`: RFC 7662 token introspection of the client's bearer token, through an Envoy cluster, for
//! opaque tokens (and, when asked, for JWTs that jwt_authn verified). The result's members become the
//! `introspection:<claim path>` sources.
//!
//! The gateway's client credentials at the endpoint come from the environment (the configuration names the
//! variables, forwarded with `vm_config.environment_variables.host_env_keys`), never from the plugin
//! configuration, and never reach a log or an error.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

use super::defaults;
use super::error::{shown, ConfigError};
use super::issuer::is_valid_authority;

/// `introspection` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntrospection {
    cluster: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    timeout_ms: Option<u64>,
    client_id_env: Option<String>,
    client_secret_env: Option<String>,
    cache: Option<RawIntrospectionCache>,
    introspect_verified_jwts: Option<bool>,
    audiences: Option<Vec<String>>,
}

/// `introspection.cache` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntrospectionCache {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    max_seconds: Option<u64>,
}

/// Where and how the client's token is introspected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Introspection {
    /// The Envoy cluster of the authorization server.
    pub cluster: String,
    /// The introspection endpoint's path (`/token/introspection`).
    pub path: String,
    /// The `:authority` sent to it (`as.example.com`).
    pub authority: String,
    /// How long the request waits for the answer before it is refused (503).
    pub timeout_ms: u64,
    /// The environment variable holding the gateway's client id.
    pub client_id_env: String,
    /// The environment variable holding the gateway's client secret.
    pub client_secret_env: String,
    /// Per-worker cache of results.
    pub cache: IntrospectionCache,
    /// Also introspect a token jwt_authn verified (to notice revocation); by default its payload is trusted.
    pub introspect_verified_jwts: bool,
    /// When set, the result's `aud` must name one of these (else 401): tokens for other resources are refused.
    pub audiences: Vec<String>,
}

/// Bounds of the introspection cache (one per worker VM), keyed by a SHA-256 of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntrospectionCache {
    /// 0: no cache (every request is introspected).
    pub max_entries: usize,
    /// Bytes of keys and results held.
    pub max_bytes: usize,
    /// A result is reused for at most this long, and never past the token's `exp`.
    pub max_seconds: u64,
}

/// A secret held as text; its `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn env_name(field: &str, raw: Option<String>, default: &str) -> Result<String, ConfigError> {
    let name = raw.unwrap_or_else(|| default.to_string());
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || name.len() > 128 || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ConfigError::new(
            field,
            "must name an environment variable (letters, digits and `_`, not starting with a digit)",
        ));
    }
    if name == super::SIGNING_KEY_ENV {
        return Err(ConfigError::new(field, "must not be the signing key's variable"));
    }
    Ok(name)
}

impl Introspection {
    pub(crate) fn from_raw(raw: RawIntrospection) -> Result<Introspection, ConfigError> {
        let required = |field: &str, value: Option<String>| {
            value.ok_or_else(|| ConfigError::new(format!("introspection.{field}"), "is required"))
        };
        let cluster = required("cluster", raw.cluster)?;
        if cluster.is_empty() || cluster.len() > 255 || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                "introspection.cluster",
                "must be an Envoy cluster name (printable ASCII, no spaces)",
            ));
        }
        let path = required("path", raw.path)?;
        if !path.starts_with('/')
            || path.len() > 1024
            || !path.bytes().all(|b| b.is_ascii_graphic())
            || path.contains('#')
        {
            return Err(ConfigError::new(
                "introspection.path",
                "must be a path starting with `/` (printable ASCII, no spaces or fragment)",
            ));
        }
        let authority = required("authority", raw.authority)?;
        if !is_valid_authority(&authority) {
            return Err(ConfigError::new("introspection.authority", "must be host[:port]"));
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(defaults::INTROSPECTION_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > defaults::INTROSPECTION_TIMEOUT_MS_LIMIT {
            return Err(ConfigError::new(
                "introspection.timeout_ms",
                format!("must be 1-{} milliseconds", defaults::INTROSPECTION_TIMEOUT_MS_LIMIT),
            ));
        }
        let client_id_env = env_name(
            "introspection.client_id_env",
            raw.client_id_env,
            defaults::INTROSPECTION_CLIENT_ID_ENV,
        )?;
        let client_secret_env = env_name(
            "introspection.client_secret_env",
            raw.client_secret_env,
            defaults::INTROSPECTION_CLIENT_SECRET_ENV,
        )?;
        if client_id_env == client_secret_env {
            return Err(ConfigError::new(
                "introspection.client_secret_env",
                "must differ from introspection.client_id_env",
            ));
        }
        let cache = cache(raw.cache.unwrap_or_default())?;
        let audiences = raw.audiences.unwrap_or_default();
        for (i, audience) in audiences.iter().enumerate() {
            super::check_claim_text(&format!("introspection.audiences[{i}]"), audience)?;
        }
        Ok(Introspection {
            cluster,
            path,
            authority,
            timeout_ms,
            client_id_env,
            client_secret_env,
            cache,
            introspect_verified_jwts: raw.introspect_verified_jwts.unwrap_or(false),
            audiences,
        })
    }

    /// The `Authorization` value for the endpoint (RFC 6749 section 2.3.1 client_secret_basic), from the
    /// environment (`env` looks a variable up). Errors name the variable, never its value.
    pub fn client_authorization(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, ConfigError> {
        let read = |field: &str, name: &str| {
            env(name).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                ConfigError::new(
                    field,
                    format!(
                        "environment variable {name} is not set or empty (set it from a secret and forward it with \
                         vm_config.environment_variables.host_env_keys)"
                    ),
                )
            })
        };
        let id = read("introspection.client_id_env", &self.client_id_env)?;
        let secret = read("introspection.client_secret_env", &self.client_secret_env)?;
        let pair = format!("{}:{}", form_urlencode(id.trim()), form_urlencode(secret.trim()));
        Ok(Secret(format!("Basic {}", STANDARD.encode(pair))))
    }
}

fn cache(raw: RawIntrospectionCache) -> Result<IntrospectionCache, ConfigError> {
    let max_entries = super::cache::entries(
        "introspection.cache.max_entries",
        raw.max_entries,
        defaults::INTROSPECTION_CACHE_MAX_ENTRIES,
    )?;
    let max_bytes = super::cache::bytes(
        "introspection.cache.max_bytes",
        raw.max_bytes,
        defaults::INTROSPECTION_CACHE_MAX_BYTES,
    )?;
    let max_seconds = raw.max_seconds.unwrap_or(defaults::INTROSPECTION_CACHE_MAX_SECONDS);
    if max_seconds == 0 || max_seconds > defaults::INTROSPECTION_CACHE_MAX_SECONDS_LIMIT {
        return Err(ConfigError::new(
            "introspection.cache.max_seconds",
            format!(
                "must be 1-{} seconds (switch the cache off with max_entries: 0)",
                defaults::INTROSPECTION_CACHE_MAX_SECONDS_LIMIT
            ),
        ));
    }
    Ok(IntrospectionCache {
        max_entries: max_entries as usize,
        max_bytes: max_bytes as usize,
        max_seconds,
    })
}

/// `application/x-www-form-urlencoded` (the WHATWG serializer RFC 6749 Appendix B asks for): ASCII letters,
/// digits and `*-._` stay, a space becomes `+`, every other byte is `%XX`.
pub fn form_urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The error message for an `introspection:` source when no `introspection` is configured.
pub(crate) fn unconfigured(field: &str, source: &str) -> ConfigError {
    ConfigError::new(
        field,
        format!(
            "`{}` reads the introspection result, but `introspection` is not configured",
            shown(source)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#""cluster":"oauth","path":"/token/introspection","authority":"as.example.com""#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        let sep = if extra.is_empty() { "" } else { "," };
        Config::parse(format!(r#"{{"introspection":{{{BASE}{sep}{extra}}}}}"#).as_bytes())
    }

    #[test]
    fn defaults() {
        let i = parse("").unwrap().introspection.unwrap();
        assert_eq!((i.timeout_ms, i.introspect_verified_jwts), (2000, false));
        assert_eq!(i.client_id_env, "MCP_JWT_INTROSPECTION_CLIENT_ID");
        assert_eq!(i.client_secret_env, "MCP_JWT_INTROSPECTION_CLIENT_SECRET");
        assert_eq!(
            i.cache,
            IntrospectionCache {
                max_entries: 1024,
                max_bytes: 1 << 20,
                max_seconds: 60
            }
        );
    }

    #[test]
    fn fields_are_checked_and_named() {
        for (json, field) in [
            (r#"{"introspection":{}}"#, "introspection.cluster"),
            (
                r#"{"introspection":{"cluster":"a","authority":"h"}}"#,
                "introspection.path",
            ),
            (
                r#"{"introspection":{"cluster":"a","path":"/x"}}"#,
                "introspection.authority",
            ),
            (
                r#"{"introspection":{"cluster":"a b","path":"/x","authority":"h"}}"#,
                "introspection.cluster",
            ),
            (
                r#"{"introspection":{"cluster":"a","path":"x","authority":"h"}}"#,
                "introspection.path",
            ),
            (
                r#"{"introspection":{"cluster":"a","path":"/x","authority":"h:0"}}"#,
                "introspection.authority",
            ),
            (
                r#"{"introspection":{"cluster":"a","path":"/x","authority":"h","endpoint":"u"}}"#,
                "introspection.endpoint",
            ),
        ] {
            assert_eq!(Config::parse(json.as_bytes()).unwrap_err().field, field, "{json}");
        }
        for (extra, field) in [
            (r#""timeout_ms":0"#, "introspection.timeout_ms"),
            (r#""timeout_ms":30001"#, "introspection.timeout_ms"),
            (r#""client_id_env":"1X""#, "introspection.client_id_env"),
            (r#""client_secret_env":"A-B""#, "introspection.client_secret_env"),
            (
                r#""client_secret_env":"MCP_JWT_SIGNING_KEY""#,
                "introspection.client_secret_env",
            ),
            (
                r#""client_id_env":"X","client_secret_env":"X""#,
                "introspection.client_secret_env",
            ),
            (r#""cache":{"max_seconds":0}"#, "introspection.cache.max_seconds"),
            (r#""cache":{"max_seconds":3601}"#, "introspection.cache.max_seconds"),
            (r#""cache":{"max_entries":1000001}"#, "introspection.cache.max_entries"),
            (r#""cache":{"ttl":1}"#, "introspection.cache.ttl"),
            (r#""audiences":[""]"#, "introspection.audiences[0]"),
        ] {
            assert_eq!(parse(extra).unwrap_err().field, field, "{extra}");
        }
    }

    #[test]
    fn credentials_come_from_the_environment_and_are_never_shown() {
        let i = parse("").unwrap().introspection.unwrap();
        let env = |name: &str| match name {
            "MCP_JWT_INTROSPECTION_CLIENT_ID" => Some("gate way".to_string()),
            "MCP_JWT_INTROSPECTION_CLIENT_SECRET" => Some("s3cr:t/+".to_string()),
            _ => None,
        };
        let basic = i.client_authorization(&env).unwrap();
        // RFC 6749 2.3.1: each part form-urlencoded, then base64 of `id:secret`.
        assert_eq!(basic.0, format!("Basic {}", STANDARD.encode("gate+way:s3cr%3At%2F%2B")));
        assert!(!format!("{basic:?}").contains("Basic"));
        let missing = |name: &str| (name == "MCP_JWT_INTROSPECTION_CLIENT_ID").then(|| "gw".to_string());
        let e = i.client_authorization(&missing).unwrap_err();
        assert_eq!(e.field, "introspection.client_secret_env");
        assert!(e.reason.contains("MCP_JWT_INTROSPECTION_CLIENT_SECRET") && e.reason.contains("host_env_keys"));
    }

    #[test]
    fn introspection_sources_need_introspection() {
        for json in [
            r#"{"identity":{"subject":["introspection:sub"]}}"#,
            r#"{"copy_claims":{"client":"introspection:client_id"}}"#,
            r#"{"required_claims":["introspection:sub"]}"#,
        ] {
            let e = Config::parse(json.as_bytes()).unwrap_err();
            assert!(e.reason.contains("not configured"), "{json}: {e}");
        }
        let c = Config::parse(
            format!(
                r#"{{"introspection":{{{BASE}}},"identity":{{"subject":["introspection:sub","introspection:client_id"]}},
                    "required_claims":["introspection:scope","email"]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.identity.subject.len(), 2);
        assert_eq!(c.required_claims.len(), 2);
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_urlencode("a b+c/d=e&f~é"), "a+b%2Bc%2Fd%3De%26f%7E%C3%A9");
        assert_eq!(form_urlencode("Az09*-._"), "Az09*-._");
    }
}
