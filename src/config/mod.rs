//! Plugin configuration: the JSON in the filter's `configuration` StringValue.
//!
//! Parsing is strict (`deny_unknown_fields`, typed values) and every error names the field it is about, so an
//! operator reading Envoy's log knows what to fix; no error repeats key material. Layout:
//! - `schema`: the fields as written; [`defaults`]: every default and limit;
//! - one file per field group: [`issuer`], [`sources`] (identity sources), [`claims`] (claim shaping),
//!   [`cache`] (token cache), [`keys`] (signing key and published keys), [`upstream`] (token header, client
//!   authorization, channel token, debug header), [`scopes`] (`fixed_scopes`), [`introspection`] (RFC 7662),
//!   [`delegation`] (RFC 8693 `act` / `may_act`);
//! - [`error`]: the error and its redaction, a leaf.

pub mod authorization;
pub mod cache;
pub mod claims;
pub mod defaults;
pub mod delegation;
pub mod error;
pub mod introspection;
pub mod issuer;
pub mod keys;
mod schema;
pub mod scopes;
pub mod sources;
pub mod upstream;

pub use authorization::{Authorization, ProtectedResource};
pub use cache::TokenCacheConfig;
pub use claims::{ClaimShaping, ESSENTIAL_CLAIMS, FILTER_CLAIMS};
pub use delegation::Delegation;
pub use error::{shown, ConfigError};
pub use introspection::{Introspection, IntrospectionCache, Secret};
pub use issuer::Issuer;
pub use keys::{KeySource, SecretPem, SIGNING_KEY_ENV};
pub use sources::{IdentitySources, MtlsField, Source, JWT_AUTHN_NAMESPACE};
pub use upstream::{ChannelToken, ClientAuthorization, Upstream};

use crate::crypto::{Algorithm, Jwk};
use sha2::Digest as _;

use self::authorization::RawAuthorization;
use self::claims::RawShaping;
use self::error::{field_path, redact_serde_error};
use self::schema::RawConfig;
use self::upstream::RawUpstream;

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `None`: derive the issuer from each request's `scheme://authority`.
    pub issuer: Option<Issuer>,
    /// `aud` unless the route sets one.
    pub audience: String,
    /// Token lifetime.
    pub ttl_seconds: u64,
    /// PEM text of the configured key. Never printed: `SecretPem`'s Debug hides it.
    pub signing_key: Option<SecretPem>,
    /// `act.sub` without a team/org, and `sub` without a user.
    pub actor: String,
    /// Where `sub`, `email` and `act.sub` come from.
    pub identity: IdentitySources,
    /// The largest body buffered and read.
    pub max_body_bytes: usize,
    /// The largest token signed (bytes of the compact JWS).
    pub max_token_bytes: usize,
    /// jwt_authn's `payload_in_metadata` name read by `jwt:` sources.
    pub jwt_payload_in_metadata: String,
    /// Refuse (401) requests without a resolvable user.
    pub require_subject: bool,
    /// Claim paths that must be present in jwt_authn's verified payload (else 403).
    pub required_claims: Vec<Source>,
    /// Claims beyond the standard set.
    pub claims: ClaimShaping,
    /// Remove the headers named by `header:` sources (in `identity` and `copy_claims`) before the request goes
    /// upstream.
    pub strip_identity_headers: bool,
    /// The headers `strip_identity_headers` removes (lower case; empty when it is off).
    pub stripped_headers: Vec<String>,
    /// Per-worker token cache bounds.
    pub token_cache: TokenCacheConfig,
    /// The JWS algorithm tokens are signed with (the key must be of its type).
    pub algorithm: Algorithm,
    /// Public keys published in the JWKS beside the signing key (key rotation: the previous or next key).
    pub additional_public_keys: Vec<Jwk>,
    /// The MCP authorization point: protected resource metadata, challenges, step-up.
    pub authorization: Authorization,
    /// Where the token's scope comes from, unless the route says otherwise.
    pub scope_source: ScopeSource,
    /// Whether the filter may hold a request to read its body (the wasm filter's `allow_on_headers_stop_iteration`
    /// is set). Without it, only header-scoped requests can be signed.
    pub allow_body_buffering: bool,
    /// The audit fields written for the access log (empty: none).
    pub audit_fields: Vec<&'static str>,
    /// SHA-256 of the configuration as written: the shared token cache keeps the tokens of different
    /// configurations apart.
    pub fingerprint: [u8; 32],
    /// Where the token goes, what becomes of the client's `Authorization`, the channel token, the debug header.
    pub upstream: Upstream,
    /// A fixed `scope` instead of the computed least-privilege one (route metadata can set its own).
    pub fixed_scopes: Option<Vec<String>>,
    /// RFC 7662 introspection of the client's bearer token.
    pub introspection: Option<Introspection>,
    /// RFC 8693 delegation chains (`act` nesting, `may_act`).
    pub delegation: Delegation,
}

/// Every audit field, in the order the filter writes them (`Effects::audit`).
pub const AUDIT_FIELDS: [&str; 13] = [
    "decision", "reason", "endpoint", "sub", "act_sub", "methods", "tool", "prompt", "jti", "kid", "aud", "exp",
    "cache",
];

/// Where a token's scope comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScopeSource {
    /// The JSON-RPC body, buffered and read strictly (default).
    #[default]
    Body,
    /// MCP 2026-07-28's `Mcp-Method` / `Mcp-Name` headers, without reading the body: the MCP server's own
    /// header-body check (SEP-2243, a MUST of that revision) binds the token to the body.
    Headers,
}

impl ScopeSource {
    /// `"body"` or `"headers"`.
    pub fn parse(text: &str) -> Option<ScopeSource> {
        match text {
            "body" => Some(ScopeSource::Body),
            "headers" => Some(ScopeSource::Headers),
            _ => None,
        }
    }
}

impl Config {
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
        let mut config = Self::validate(raw)?;
        config.fingerprint = sha2::Sha256::digest(bytes).into();
        Ok(config)
    }

    /// Where the signing key comes from, given the value of [`SIGNING_KEY_ENV`].
    pub fn key_source(&self, env_value: Option<&str>) -> Result<KeySource, ConfigError> {
        KeySource::resolve(self.signing_key.as_ref(), env_value)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let authorization = Authorization::from_raw(RawAuthorization {
            protected_resources: raw.protected_resources,
            jwt_failure_in_metadata: raw.jwt_failure_in_metadata,
            required_incoming_scopes: raw.required_incoming_scopes,
            incoming_scopes: raw.incoming_scopes,
            scope_hierarchy: raw.scope_hierarchy,
        })?;
        let claims = ClaimShaping::from_raw(RawShaping {
            copy_claims: raw.copy_claims,
            add_claims: raw.add_claims,
            override_claims: raw.override_claims,
            remove_claims: raw.remove_claims,
        })?;
        let issuer = match raw.issuer {
            None => None,
            Some(s) => Some(Issuer::parse(&s).map_err(|r| ConfigError::new("issuer", r))?),
        };
        let audience = raw.audience.unwrap_or_else(|| defaults::AUDIENCE.to_string());
        check_claim_text("audience", &audience)?;
        let ttl_seconds = ttl_seconds(raw.ttl_seconds)?;
        let actor = raw.actor.unwrap_or_else(|| defaults::ACTOR.to_string());
        check_claim_text("actor", &actor)?;
        let max_body_bytes = max_body_bytes(raw.max_body_bytes)?;
        let max_token_bytes = max_token_bytes(raw.max_token_bytes)?;
        let identity = IdentitySources::from_config(raw.identity.unwrap_or_default())?;
        let jwt_payload_in_metadata = raw
            .jwt_payload_in_metadata
            .unwrap_or_else(|| defaults::JWT_PAYLOAD_IN_METADATA.to_string());
        check_claim_text("jwt_payload_in_metadata", &jwt_payload_in_metadata)?;
        let required_claims = raw
            .required_claims
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, claim)| {
                // A jwt_authn claim path, or `introspection:<path>`.
                let text = match claim.starts_with("introspection:") {
                    true => claim.clone(),
                    false => format!("jwt:{claim}"),
                };
                Source::parse(&text).map_err(|r| ConfigError::new(format!("required_claims[{i}]"), r))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let upstream = Upstream::from_raw(
            RawUpstream {
                token_header: raw.token_header,
                client_authorization: raw.client_authorization,
                channel_token: raw.channel_token,
                debug_header: raw.debug_header,
            },
            &audience,
            ttl_seconds,
        )?;
        let introspection = raw.introspection.map(Introspection::from_raw).transpose()?;
        check_parity_sources(&identity, &claims, &required_claims, &upstream, introspection.is_some())?;
        let token_cache =
            TokenCacheConfig::from_raw(raw.token_cache.unwrap_or_default(), upstream.shortest_ttl(ttl_seconds))?;
        let algorithm = match raw.algorithm {
            None => Algorithm::default(),
            Some(name) => Algorithm::parse(&name)
                .ok_or_else(|| ConfigError::new("algorithm", "must be \"RS256\", \"ES256\" or \"EdDSA\""))?,
        };
        let strip_identity_headers = raw.strip_identity_headers.unwrap_or(defaults::STRIP_IDENTITY_HEADERS);
        let stripped_headers = if strip_identity_headers {
            let mut names: Vec<String> = Vec::new();
            let copied = claims.copy.iter().map(|(_, source)| source);
            for name in sources::header_names(identity.all().chain(copied)) {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
            names
        } else {
            Vec::new()
        };
        let scope_source = match raw.scope_source.as_deref() {
            None => ScopeSource::Body,
            Some(text) => ScopeSource::parse(text)
                .ok_or_else(|| ConfigError::new("scope_source", "must be \"body\" or \"headers\""))?,
        };
        let allow_body_buffering = raw.allow_body_buffering.unwrap_or(defaults::ALLOW_BODY_BUFFERING);
        if !allow_body_buffering && scope_source == ScopeSource::Body {
            return Err(ConfigError::new(
                "allow_body_buffering",
                "scope_source \"body\" reads the body, which needs buffering (allow_on_headers_stop_iteration); \
                 set scope_source to \"headers\"",
            ));
        }
        let mut audit_fields: Vec<&'static str> = if raw.audit_fields.unwrap_or(defaults::AUDIT_FIELDS) {
            AUDIT_FIELDS.to_vec()
        } else {
            Vec::new()
        };
        for (i, name) in raw.audit_omit.unwrap_or_default().iter().enumerate() {
            if !AUDIT_FIELDS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    format!("audit_omit[{i}]"),
                    format!("`{}` is not an audit field ({})", shown(name), AUDIT_FIELDS.join(", ")),
                ));
            }
            audit_fields.retain(|f| f != name);
        }
        Ok(Config {
            issuer,
            audience,
            ttl_seconds,
            signing_key: keys::signing_key(raw.signing_key)?,
            actor,
            identity,
            max_body_bytes,
            max_token_bytes,
            jwt_payload_in_metadata,
            require_subject: raw.require_subject.unwrap_or(defaults::REQUIRE_SUBJECT),
            required_claims,
            claims,
            strip_identity_headers,
            stripped_headers,
            token_cache,
            algorithm,
            additional_public_keys: keys::additional_public_keys(raw.additional_public_keys)?,
            authorization,
            scope_source,
            allow_body_buffering,
            audit_fields,
            fingerprint: [0; 32],
            upstream,
            fixed_scopes: scopes::fixed_scopes(raw.fixed_scopes)?,
            introspection,
            delegation: Delegation::from_raw(raw.delegation),
        })
    }
}

/// `introspection:` sources need `introspection`; the headers the filter writes (token, channel token, debug)
/// cannot be identity sources.
fn check_parity_sources(
    identity: &IdentitySources,
    claims: &ClaimShaping,
    required: &[Source],
    upstream: &Upstream,
    introspection: bool,
) -> Result<(), ConfigError> {
    let named = identity
        .all()
        .map(|s| ("identity", s))
        .chain(claims.copy.iter().map(|(_, s)| ("copy_claims", s)))
        .chain(required.iter().map(|s| ("required_claims", s)));
    for (field, source) in named {
        if let (Source::Introspection(_), false) = (source, introspection) {
            return Err(introspection::unconfigured(field, &source.describe()));
        }
        if let Source::Header(name) = source {
            if upstream.written_headers().any(|written| written == name) {
                return Err(ConfigError::new(
                    field,
                    "a `header:` source names a header the filter writes (token_header, channel_token.header, \
                     debug_header)",
                ));
            }
        }
    }
    Ok(())
}

fn ttl_seconds(raw: Option<i64>) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(defaults::TTL_SECONDS),
        Some(t) if t <= 0 => Err(ConfigError::new("ttl_seconds", "must be a positive number of seconds")),
        Some(t) if t as u64 > defaults::MAX_TTL_SECONDS => Err(ConfigError::new(
            "ttl_seconds",
            format!(
                "{t} is too long for a short-lived token (at most {})",
                defaults::MAX_TTL_SECONDS
            ),
        )),
        Some(t) => Ok(t as u64),
    }
}

fn max_body_bytes(raw: Option<i64>) -> Result<usize, ConfigError> {
    match raw {
        None => Ok(defaults::MAX_BODY_BYTES),
        Some(n) if n <= 0 => Err(ConfigError::new("max_body_bytes", "must be a positive number of bytes")),
        Some(n) if n as u64 > defaults::MAX_BODY_BYTES_LIMIT as u64 => Err(ConfigError::new(
            "max_body_bytes",
            format!("{n} exceeds the limit of {} bytes", defaults::MAX_BODY_BYTES_LIMIT),
        )),
        Some(n) => Ok(n as usize),
    }
}

fn max_token_bytes(raw: Option<i64>) -> Result<usize, ConfigError> {
    let (min, max) = (defaults::MAX_TOKEN_BYTES_MIN, defaults::MAX_TOKEN_BYTES_LIMIT);
    match raw {
        None => Ok(defaults::MAX_TOKEN_BYTES),
        Some(n) if n < min as i64 || n > max as i64 => Err(ConfigError::new(
            "max_token_bytes",
            format!("must be between {min} and {max} bytes"),
        )),
        Some(n) => Ok(n as usize),
    }
}

/// Claim values written as configuration must be non-empty printable text of sane length.
pub(crate) fn check_claim_text(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > defaults::MAX_CLAIM_TEXT_BYTES || value.chars().any(char::is_control) {
        return Err(ConfigError::new(
            field,
            format!(
                "must be 1-{} characters without control characters",
                defaults::MAX_CLAIM_TEXT_BYTES
            ),
        ));
    }
    Ok(())
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

    /// The field names of README.md's configuration table (`token_cache.max_entries` for a nested one).
    fn readme_fields() -> std::collections::BTreeSet<String> {
        let readme = include_str!("../../README.md");
        let mut lines = readme
            .lines()
            .skip_while(|line| !line.starts_with("| field | type | default | meaning |"))
            .skip(2);
        let mut fields = std::collections::BTreeSet::new();
        for line in lines.by_ref().take_while(|line| line.starts_with('|')) {
            let cell = line.split('|').nth(1).unwrap().trim();
            fields.insert(cell.trim_matches('`').to_string());
        }
        assert!(
            fields.len() > 20,
            "README.md's configuration table not found: {fields:?}"
        );
        fields
    }

    /// Each field of README.md's configuration table, set to a value other than its default, and read: the check
    /// holds for that configuration and not for the defaults, so a field that is parsed but then ignored (or
    /// replaced by its default) fails here. A field added to the README without a case here fails too.
    /// The smallest introspection object (its three required fields).
    const INTROSPECTION_MIN: &str =
        r#""introspection":{"cluster":"idp","path":"/introspect","authority":"idp.example.com"}"#;

    #[test]
    fn every_documented_field_is_read() {
        use p256::pkcs8::EncodePublicKey;
        let ec_public = p256::SecretKey::from_slice(&[3u8; 32])
            .unwrap()
            .public_key()
            .to_public_key_pem(Default::default())
            .unwrap()
            .replace('\n', "\\n");
        let public_keys = format!(r#""additional_public_keys":["{ec_public}"]"#);
        type Check = fn(&Config) -> bool;
        let cases: Vec<(&str, &str, Check)> = vec![
            ("issuer", r#""issuer":"https://gw.example.com/t/""#, |c| {
                c.issuer
                    .as_ref()
                    .is_some_and(|i| i.url == "https://gw.example.com/t" && i.path == "/t")
            }),
            ("audience", r#""audience":"a""#, |c| c.audience == "a"),
            ("ttl_seconds", r#""ttl_seconds":60"#, |c| c.ttl_seconds == 60),
            ("signing_key", r#""signing_key":"PEM-A""#, |c| {
                c.signing_key.as_ref().is_some_and(|k| k.0 == "PEM-A")
            }),
            ("algorithm", r#""algorithm":"ES256""#, |c| {
                c.algorithm == Algorithm::Es256
            }),
            ("additional_public_keys", &public_keys, |c| {
                c.additional_public_keys.len() == 1 && c.additional_public_keys[0].alg == "ES256"
            }),
            ("actor", r#""actor":"gw""#, |c| c.actor == "gw"),
            ("identity", r#""identity":{}"#, |c| {
                c.identity == IdentitySources::default()
            }),
            (
                "identity.subject",
                r#""identity":{"subject":["header:x-user-id"]}"#,
                |c| c.identity.subject == [Source::Header("x-user-id".into())],
            ),
            ("identity.email", r#""identity":{"email":["jwt:mail"]}"#, |c| {
                c.identity.email == [Source::Jwt(vec!["mail".into()])]
            }),
            ("identity.actor", r#""identity":{"actor":["mtls:uri_san"]}"#, |c| {
                c.identity.actor == [Source::Mtls(MtlsField::UriSan)]
            }),
            ("jwt_payload_in_metadata", r#""jwt_payload_in_metadata":"idp""#, |c| {
                c.jwt_payload_in_metadata == "idp"
            }),
            ("require_subject", r#""require_subject":true"#, |c| c.require_subject),
            ("required_claims", r#""required_claims":["org/team"]"#, |c| {
                c.required_claims == [Source::Jwt(vec!["org".into(), "team".into()])]
            }),
            ("copy_claims", r#""copy_claims":{"dept":"jwt:dept"}"#, |c| {
                c.claims.copy == [("dept".to_string(), Source::Jwt(vec!["dept".into()]))]
            }),
            ("add_claims", r#""add_claims":{"tenant":"acme"}"#, |c| {
                c.claims.add.get("tenant") == Some(&serde_json::json!("acme"))
            }),
            ("override_claims", r#""override_claims":{"iss":"https://other"}"#, |c| {
                c.claims.override_.get("iss") == Some(&serde_json::json!("https://other"))
            }),
            ("remove_claims", r#""remove_claims":["nbf"]"#, |c| {
                c.claims.remove == ["nbf"]
            }),
            (
                "strip_identity_headers",
                r#""strip_identity_headers":false,"identity":{"subject":["header:x-user-id"]}"#,
                |c| !c.strip_identity_headers && c.stripped_headers.is_empty(),
            ),
            ("max_body_bytes", r#""max_body_bytes":10"#, |c| c.max_body_bytes == 10),
            ("max_token_bytes", r#""max_token_bytes":2048"#, |c| {
                c.max_token_bytes == 2048
            }),
            ("token_cache", r#""token_cache":{}"#, |c| {
                c.token_cache.max_entries == 1024
            }),
            ("token_cache.max_entries", r#""token_cache":{"max_entries":7}"#, |c| {
                c.token_cache.max_entries == 7
            }),
            ("token_cache.max_bytes", r#""token_cache":{"max_bytes":65536}"#, |c| {
                c.token_cache.max_bytes == 65536
            }),
            (
                "token_cache.min_remaining_seconds",
                r#""token_cache":{"min_remaining_seconds":10}"#,
                |c| c.token_cache.min_remaining_seconds == 10,
            ),
            (
                "protected_resources",
                r#""protected_resources":[{"resource":"https://gw.example.com/mcp",
                    "authorization_servers":["https://idp.example.com"]}]"#,
                |c| {
                    c.authorization.protected_resources.len() == 1
                        && c.authorization.protected_resources[0].path == "/mcp"
                },
            ),
            (
                "jwt_failure_in_metadata",
                r#""jwt_failure_in_metadata":"jwt_failure""#,
                |c| c.authorization.jwt_failure_in_metadata.as_deref() == Some("jwt_failure"),
            ),
            (
                "required_incoming_scopes",
                r#""required_incoming_scopes":{"*":["mcp:use"]}"#,
                |c| c.authorization.required_incoming_scopes.len() == 1,
            ),
            ("incoming_scopes", r#""incoming_scopes":["jwt:scp"]"#, |c| {
                c.authorization.incoming_scopes == [Source::Jwt(vec!["scp".into()])]
            }),
            (
                "scope_hierarchy",
                r#""scope_hierarchy":{"mcp:admin":["mcp:use"]}"#,
                |c| {
                    c.authorization
                        .scope_hierarchy
                        .get("mcp:admin")
                        .is_some_and(|s| s.contains("mcp:use"))
                },
            ),
            ("scope_source", r#""scope_source":"headers""#, |c| {
                c.scope_source == ScopeSource::Headers
            }),
            (
                "allow_body_buffering",
                r#""allow_body_buffering":false,"scope_source":"headers""#,
                |c| !c.allow_body_buffering,
            ),
            ("audit_fields", r#""audit_fields":false"#, |c| c.audit_fields.is_empty()),
            ("audit_omit", r#""audit_omit":["sub"]"#, |c| {
                c.audit_fields.len() == AUDIT_FIELDS.len() - 1 && !c.audit_fields.contains(&"sub")
            }),
            (
                "token_cache.shared_max_entries",
                r#""token_cache":{"shared_max_entries":0}"#,
                |c| c.token_cache.shared_max_entries == 0,
            ),
            (
                "token_cache.shared_max_bytes",
                r#""token_cache":{"shared_max_bytes":8388608}"#,
                |c| c.token_cache.shared_entry_bytes * c.token_cache.shared_max_entries == 8_388_608,
            ),
            ("token_header", r#""token_header":"x-mcp-gateway-token""#, |c| {
                c.upstream.token_header == "x-mcp-gateway-token"
            }),
            (
                "client_authorization",
                r#""client_authorization":"forward","token_header":"x-mcp-gateway-token""#,
                |c| c.upstream.client_authorization == ClientAuthorization::Forward,
            ),
            ("channel_token", r#""channel_token":{"audience":"channel"}"#, |c| {
                c.upstream
                    .channel_token
                    .as_ref()
                    .is_some_and(|t| t.audience == "channel")
            }),
            ("debug_header", r#""debug_header":true"#, |c| {
                c.upstream.debug_header.is_some()
            }),
            ("fixed_scopes", r#""fixed_scopes":["mcp:all"]"#, |c| {
                c.fixed_scopes.as_deref() == Some(&["mcp:all".to_string()][..])
            }),
            (
                "introspection",
                r#""introspection":{"cluster":"idp","path":"/introspect","authority":"idp.example.com"}"#,
                |c| {
                    c.introspection
                        .as_ref()
                        .is_some_and(|i| i.cluster == "idp" && i.path == "/introspect")
                },
            ),
            ("delegation", r#""delegation":{"nest_act":false}"#, |c| {
                !c.delegation.nest_act
            }),
            ("delegation.nest_act", r#""delegation":{"nest_act":false}"#, |c| {
                !c.delegation.nest_act && c.delegation.enforce_may_act
            }),
            (
                "delegation.enforce_may_act",
                r#""delegation":{"enforce_may_act":false}"#,
                |c| c.delegation.nest_act && !c.delegation.enforce_may_act,
            ),
            (
                "channel_token.audience",
                r#""channel_token":{"audience":"chan"}"#,
                |c| c.upstream.channel_token.as_ref().is_some_and(|t| t.audience == "chan"),
            ),
            (
                "channel_token.ttl_seconds",
                r#""channel_token":{"audience":"chan","ttl_seconds":77}"#,
                |c| c.upstream.channel_token.as_ref().is_some_and(|t| t.ttl_seconds == 77),
            ),
            (
                "channel_token.header",
                r#""channel_token":{"audience":"chan","header":"x-chan"}"#,
                |c| c.upstream.channel_token.as_ref().is_some_and(|t| t.header == "x-chan"),
            ),
            ("introspection.cluster", INTROSPECTION_MIN, |c| {
                c.introspection.as_ref().is_some_and(|i| i.cluster == "idp")
            }),
            ("introspection.path", INTROSPECTION_MIN, |c| {
                c.introspection.as_ref().is_some_and(|i| i.path == "/introspect")
            }),
            ("introspection.authority", INTROSPECTION_MIN, |c| {
                c.introspection
                    .as_ref()
                    .is_some_and(|i| i.authority == "idp.example.com")
            }),
            (
                "introspection.timeout_ms",
                r#""introspection":{"cluster":"idp","path":"/i","authority":"a","timeout_ms":1234}"#,
                |c| c.introspection.as_ref().is_some_and(|i| i.timeout_ms == 1234),
            ),
            (
                "introspection.client_id_env",
                r#""introspection":{"cluster":"idp","path":"/i","authority":"a","client_id_env":"IDP_ID"}"#,
                |c| c.introspection.as_ref().is_some_and(|i| i.client_id_env == "IDP_ID"),
            ),
            (
                "introspection.client_secret_env",
                r#""introspection":{"cluster":"idp","path":"/i","authority":"a","client_secret_env":"IDP_S"}"#,
                |c| c.introspection.as_ref().is_some_and(|i| i.client_secret_env == "IDP_S"),
            ),
            (
                "introspection.cache",
                r#""introspection":{"cluster":"idp","path":"/i","authority":"a","cache":{"max_entries":7,"max_bytes":70000,"max_seconds":9}}"#,
                |c| {
                    c.introspection.as_ref().is_some_and(|i| {
                        i.cache.max_entries == 7 && i.cache.max_bytes == 70000 && i.cache.max_seconds == 9
                    })
                },
            ),
            (
                "introspection.introspect_verified_jwts",
                r#""introspection":{"cluster":"idp","path":"/i","authority":"a","introspect_verified_jwts":true}"#,
                |c| c.introspection.as_ref().is_some_and(|i| i.introspect_verified_jwts),
            ),
            (
                "introspection.audiences",
                r#""introspection":{"cluster":"idp","path":"/i","authority":"a","audiences":["rs"]}"#,
                |c| c.introspection.as_ref().is_some_and(|i| i.audiences == ["rs"]),
            ),
        ];
        let defaults = parse("{}").unwrap();
        for (field, json, check) in &cases {
            let config = parse(&format!("{{{json}}}")).unwrap_or_else(|e| panic!("{field}: {e}"));
            assert!(check(&config), "{field}: {json} was not read");
            // The objects themselves (`identity`, `token_cache`) are checked for their defaults when empty.
            if !matches!(*field, "identity" | "token_cache") {
                assert!(!check(&defaults), "{field}: the default already passes the check");
            }
        }
        let covered: std::collections::BTreeSet<String> = cases.iter().map(|(f, _, _)| f.to_string()).collect();
        assert_eq!(
            covered,
            readme_fields(),
            "every field of README.md's configuration table has a case here"
        );
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
    fn an_unknown_field_is_named_once_then_the_fields_serde_expected() {
        let e = parse(r#"{"audiance":"x"}"#).unwrap_err();
        assert!(
            e.reason
                .starts_with("unknown field `audiance`, expected one of `issuer`, `audience`"),
            "{}",
            e.reason
        );
        let e = parse(r#"{"identity":{"subjekt":[]}}"#).unwrap_err();
        assert!(
            e.reason.starts_with("unknown field `subjekt`, expected one of `"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn not_json_is_refused() {
        assert!(parse("{").is_err());
        assert!(parse("[]").is_err());
        assert!(parse(r#"{} {}"#).is_err());
    }

    #[test]
    fn max_token_bytes_bounds() {
        assert_eq!(parse("{}").unwrap().max_token_bytes, 8192);
        assert_eq!(parse(r#"{"max_token_bytes":2048}"#).unwrap().max_token_bytes, 2048);
        for bad in ["0", "1023", "1048577", "-1", "\"8k\""] {
            let e = parse(&format!(r#"{{"max_token_bytes":{bad}}}"#)).unwrap_err();
            assert_eq!(e.field, "max_token_bytes", "{bad}");
        }
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
        match with_key.key_source(Some("PEM-B")).unwrap() {
            KeySource::Config(p) => assert_eq!(p.0, "PEM-A"),
            other => panic!("{other:?}"),
        }
        let without = parse("{}").unwrap();
        match without.key_source(Some("line1\\nline2")).unwrap() {
            KeySource::Environment(p) => assert_eq!(p.0, "line1\nline2"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(without.key_source(None).unwrap(), KeySource::Generated));
        assert!(matches!(without.key_source(Some("  ")).unwrap(), KeySource::Generated));
    }

    #[test]
    fn file_urls_are_refused_with_advice() {
        let without = parse("{}").unwrap();
        let e = without.key_source(Some("file:///secrets/k.pem")).unwrap_err();
        assert_eq!(e.field, SIGNING_KEY_ENV);
        assert!(e.reason.contains("cannot read files"));
        let with = parse(r#"{"signing_key":"file:///k.pem"}"#).unwrap();
        assert_eq!(with.key_source(None).unwrap_err().field, "signing_key");
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
        assert_eq!(c.stripped_headers, ["x-user-id", "x-department"]);
    }

    #[test]
    fn the_headers_the_filter_writes_are_no_identity_sources() {
        for json in [
            r#"{"token_header":"x-gw","identity":{"subject":["header:x-gw"]}}"#,
            r#"{"channel_token":{"audience":"c"},"copy_claims":{"c":"header:x-mcp-channel-token"}}"#,
            r#"{"debug_header":true,"identity":{"actor":["header:x-mcp-jwt-debug"]}}"#,
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.reason.contains("the filter writes"), "{json}: {e}");
        }
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
            r#"{"token_header": "$PEM"}"#,
            r#"{"client_authorization": "$PEM"}"#,
            r#"{"channel_token": {"audience": "$PEM\u0001"}}"#,
            r#"{"channel_token": {"audience": "c", "header": "$PEM"}}"#,
            r#"{"debug_header": {"name": "$PEM"}}"#,
            r#"{"debug_header": {"$PEM": 1}}"#,
            r#"{"fixed_scopes": ["$PEM"]}"#,
            r#"{"introspection": {"cluster": "$PEM", "path": "/p", "authority": "h"}}"#,
            r#"{"introspection": {"cluster": "c", "path": "$PEM", "authority": "h"}}"#,
            r#"{"introspection": {"cluster": "c", "path": "/p", "authority": "$PEM"}}"#,
            r#"{"introspection": {"cluster": "c", "path": "/p", "authority": "h", "client_secret_env": "$PEM"}}"#,
            r#"{"identity": {"subject": ["introspection:$PEM"]}}"#,
            r#"{"delegation": {"$PEM": true}}"#,
            r#"{"tokeA8888r`$PEMm{"": "#,
            r#"{"a`, expected one of `x`$PEM": 1}"#,
        ] {
            let input = template.replace("$PEM", pem);
            // Each input is refused (an input that parses would test nothing here), and the error shows none of it.
            let e = parse(&input).expect_err(template);
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains("MIIEvQ") && !text.contains("Secret") && !text.contains("BEGIN PRIVATE"),
                "{template}: {text}"
            );
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
