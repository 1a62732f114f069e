//! What the upstream receives besides the request itself: where the minted token goes (`token_header`), what
//! becomes of the client's own `Authorization` (`client_authorization`), the second token for the transport
//! (`channel_token`) and the debug summary (`debug_header`).
//!
//! MCP forbids token passthrough: a server must not accept, and a gateway must not forward, a token that was
//! issued for someone else. So by default the client's `Authorization` is removed and the minted token takes its
//! place. The one case where forwarding is right: the upstream runs its own OAuth and the client's token was
//! issued *for that upstream*, by the upstream's own authorization server. Then `client_authorization: "forward"`
//! leaves the client's `Authorization` untouched and the minted token travels in another header
//! (`token_header`, e.g. `x-mcp-gateway-token`); forwarding with the minted token in `authorization` would
//! overwrite the client's credential (LiteLLM's BerriAI/litellm#31977) and is refused at load.

use serde::Deserialize;
use serde_json::Value;

use super::defaults;
use super::error::{shown, ConfigError};

/// What becomes of the client's own `Authorization` header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuthorization {
    /// Removed before anything else happens (the default: no token passthrough).
    #[default]
    Strip,
    /// Left as the client sent it (the token was issued for the upstream by its own authorization server).
    Forward,
}

impl ClientAuthorization {
    /// `"strip"` or `"forward"`.
    pub fn parse(text: &str) -> Option<ClientAuthorization> {
        match text {
            "strip" => Some(ClientAuthorization::Strip),
            "forward" => Some(ClientAuthorization::Forward),
            _ => None,
        }
    }
}

/// `channel_token` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChannelToken {
    audience: Option<String>,
    ttl_seconds: Option<i64>,
    header: Option<String>,
}

/// The second token (LiteLLM's two-token model): the access token's claims with its own audience, lifetime and
/// `jti`, for the transport (e.g. a gateway between this one and the MCP server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelToken {
    /// Its `aud`; never the access token's audience (it must not be usable as one).
    pub audience: String,
    /// Its lifetime (`exp - iat`).
    pub ttl_seconds: u64,
    /// The header it travels in, as `Bearer <jwt>` (lower case).
    pub header: String,
}

/// The upstream-facing fields as written.
pub(crate) struct RawUpstream {
    pub token_header: Option<String>,
    pub client_authorization: Option<String>,
    pub channel_token: Option<RawChannelToken>,
    pub debug_header: Option<Value>,
}

/// What the upstream receives besides the request (plugin-wide; `token_header` and `client_authorization` can be
/// set per route in route metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The header the minted token goes in (`Bearer <jwt>`), lower case.
    pub token_header: String,
    /// What becomes of the client's `Authorization`.
    pub client_authorization: ClientAuthorization,
    /// The channel token, when configured.
    pub channel_token: Option<ChannelToken>,
    /// The debug header's name, when the debug header is on.
    pub debug_header: Option<String>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            token_header: defaults::TOKEN_HEADER.to_string(),
            client_authorization: ClientAuthorization::Strip,
            channel_token: None,
            debug_header: None,
        }
    }
}

/// Headers no token or debug summary may be written to: the request's framing and routing (`host`,
/// `content-*`, hop-by-hop headers), MCP's own headers, credentials the gateway does not own (`cookie`,
/// `proxy-authorization`), and the route guard's header (`request::ROUTE_HEADER`).
const RESERVED_HEADERS: [&str; 20] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "accept",
    "cookie",
    "proxy-authorization",
    "mcp-method",
    "mcp-name",
    "mcp-protocol-version",
    "mcp-session-id",
    "x-mcp-jwt-signer-route",
];

/// A header name the filter may write: an RFC 9110 token of at most 128 characters, not reserved. Returns it in
/// lower case (as Envoy keeps header names).
pub fn writable_header_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if lower.is_empty() || lower.len() > defaults::MAX_HEADER_NAME_BYTES || !lower.bytes().all(token) {
        return Err(format!(
            "`{}` is not a valid HTTP header name (at most {} characters)",
            shown(name),
            defaults::MAX_HEADER_NAME_BYTES
        ));
    }
    // Envoy refuses underscores in header names (envoy.yaml's headers_with_underscores_action): a header the
    // filter sets must survive the next hop's Envoy too.
    if lower.contains('_') {
        return Err(format!(
            "`{}`: header names with underscores are refused by Envoy",
            shown(name)
        ));
    }
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "`{lower}` is reserved: it frames, routes or authenticates the request"
        ));
    }
    Ok(lower)
}

impl Upstream {
    /// Validates the fields; `access_audience` and `ttl_seconds` are the plugin's.
    pub(crate) fn from_raw(raw: RawUpstream, access_audience: &str, ttl_seconds: u64) -> Result<Upstream, ConfigError> {
        let token_header = match raw.token_header {
            None => defaults::TOKEN_HEADER.to_string(),
            Some(name) => writable_header_name(&name).map_err(|r| ConfigError::new("token_header", r))?,
        };
        let client_authorization = match raw.client_authorization.as_deref() {
            None => ClientAuthorization::Strip,
            Some(text) => ClientAuthorization::parse(text)
                .ok_or_else(|| ConfigError::new("client_authorization", "must be \"strip\" or \"forward\""))?,
        };
        if client_authorization == ClientAuthorization::Forward && token_header == "authorization" {
            return Err(ConfigError::new(
                "client_authorization",
                "\"forward\" keeps the client's Authorization, so the minted token needs another header: set \
                 `token_header` (e.g. \"x-mcp-gateway-token\")",
            ));
        }
        let channel_token = match raw.channel_token {
            None => None,
            Some(raw) => Some(channel_token(raw, access_audience, ttl_seconds, &token_header)?),
        };
        let debug_header = debug_header(raw.debug_header)?;
        if let Some(name) = &debug_header {
            let taken = name == "authorization"
                || *name == token_header
                || channel_token.as_ref().is_some_and(|c| c.header == *name);
            if taken {
                return Err(ConfigError::new(
                    "debug_header.name",
                    "must differ from `authorization`, `token_header` and `channel_token.header`",
                ));
            }
        }
        Ok(Upstream {
            token_header,
            client_authorization,
            channel_token,
            debug_header,
        })
    }

    /// The shortest lifetime of the tokens minted together (the token cache's reuse window is based on it).
    pub fn shortest_ttl(&self, ttl_seconds: u64) -> u64 {
        self.channel_token
            .as_ref()
            .map_or(ttl_seconds, |c| c.ttl_seconds.min(ttl_seconds))
    }

    /// Every header the filter writes for the upstream (the token's, the channel token's, the debug header).
    pub fn written_headers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.token_header.as_str())
            .chain(self.channel_token.as_ref().map(|c| c.header.as_str()))
            .chain(self.debug_header.as_deref())
    }
}

fn channel_token(
    raw: RawChannelToken,
    access_audience: &str,
    ttl_seconds: u64,
    token_header: &str,
) -> Result<ChannelToken, ConfigError> {
    let audience = raw
        .audience
        .ok_or_else(|| ConfigError::new("channel_token.audience", "is required"))?;
    super::check_claim_text("channel_token.audience", &audience)?;
    if audience == access_audience {
        return Err(ConfigError::new(
            "channel_token.audience",
            "must differ from `audience`: a channel token must not be usable as an access token",
        ));
    }
    let ttl_seconds = match raw.ttl_seconds {
        None => ttl_seconds,
        Some(t) if t <= 0 || t as u64 > defaults::MAX_TTL_SECONDS => {
            return Err(ConfigError::new(
                "channel_token.ttl_seconds",
                format!("must be 1-{} seconds", defaults::MAX_TTL_SECONDS),
            ))
        }
        Some(t) => t as u64,
    };
    let header = match raw.header {
        None => defaults::CHANNEL_TOKEN_HEADER.to_string(),
        Some(name) => writable_header_name(&name).map_err(|r| ConfigError::new("channel_token.header", r))?,
    };
    if header == "authorization" || header == token_header {
        return Err(ConfigError::new(
            "channel_token.header",
            "must differ from `authorization` and `token_header`",
        ));
    }
    Ok(ChannelToken {
        audience,
        ttl_seconds,
        header,
    })
}

/// `debug_header`: absent or `false` (off), `true` (on, default name), or `{"name": "..."}` (on).
fn debug_header(raw: Option<Value>) -> Result<Option<String>, ConfigError> {
    match raw {
        None | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(defaults::DEBUG_HEADER.to_string())),
        Some(Value::Object(map)) => {
            if let Some(key) = map.keys().find(|k| *k != "name") {
                return Err(ConfigError::new(
                    format!("debug_header.{}", shown(key)),
                    "unknown field (expected `name`)",
                ));
            }
            match map.get("name") {
                None => Ok(Some(defaults::DEBUG_HEADER.to_string())),
                Some(Value::String(name)) => writable_header_name(name)
                    .map(Some)
                    .map_err(|r| ConfigError::new("debug_header.name", r)),
                Some(_) => Err(ConfigError::new("debug_header.name", "must be a string")),
            }
        }
        Some(_) => Err(ConfigError::new(
            "debug_header",
            "must be true, false or {\"name\": \"<header>\"}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(s: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(s.as_bytes())
    }

    #[test]
    fn defaults_keep_todays_behaviour() {
        let c = parse("{}").unwrap();
        assert_eq!(c.upstream.token_header, "authorization");
        assert_eq!(c.upstream.client_authorization, super::ClientAuthorization::Strip);
        assert!(c.upstream.channel_token.is_none() && c.upstream.debug_header.is_none());
    }

    #[test]
    fn forward_needs_another_token_header() {
        let e = parse(r#"{"client_authorization":"forward"}"#).unwrap_err();
        assert_eq!(e.field, "client_authorization");
        assert!(e.reason.contains("token_header"), "{e}");
        let e = parse(r#"{"client_authorization":"forward","token_header":"Authorization"}"#).unwrap_err();
        assert_eq!(e.field, "client_authorization");
        let c = parse(r#"{"client_authorization":"forward","token_header":"X-MCP-Gateway-Token"}"#).unwrap();
        assert_eq!(c.upstream.token_header, "x-mcp-gateway-token");
        assert_eq!(
            parse(r#"{"client_authorization":"pass"}"#).unwrap_err().field,
            "client_authorization"
        );
    }

    #[test]
    fn header_names_are_checked() {
        for (cfg, field) in [
            (r#"{"token_header":"a b"}"#, "token_header"),
            (r#"{"token_header":"host"}"#, "token_header"),
            (r#"{"token_header":"Content-Length"}"#, "token_header"),
            (r#"{"token_header":"x_token"}"#, "token_header"),
            (r#"{"token_header":"x-mcp-jwt-signer-route"}"#, "token_header"),
            (r#"{"token_header":"mcp-name"}"#, "token_header"),
            (r#"{"token_header":""}"#, "token_header"),
            (
                r#"{"channel_token":{"audience":"c","header":"authorization"}}"#,
                "channel_token.header",
            ),
            (
                r#"{"channel_token":{"audience":"c","header":"cookie"}}"#,
                "channel_token.header",
            ),
            (
                r#"{"debug_header":{"name":"x-mcp-channel-token"},"channel_token":{"audience":"c"}}"#,
                "debug_header.name",
            ),
            (r#"{"debug_header":{"name":"authorization"}}"#, "debug_header.name"),
            (r#"{"debug_header":{"nom":"x"}}"#, "debug_header.nom"),
            (r#"{"debug_header":"yes"}"#, "debug_header"),
        ] {
            assert_eq!(parse(cfg).unwrap_err().field, field, "{cfg}");
        }
    }

    #[test]
    fn channel_token_fields() {
        let c =
            parse(r#"{"ttl_seconds":300,"channel_token":{"audience":"bedrock-gateway","ttl_seconds":60}}"#).unwrap();
        let ch = c.upstream.channel_token.as_ref().unwrap();
        assert_eq!(
            (ch.audience.as_str(), ch.ttl_seconds, ch.header.as_str()),
            ("bedrock-gateway", 60, "x-mcp-channel-token")
        );
        // The cache's reuse window follows the shorter token.
        assert_eq!(c.token_cache.min_remaining_seconds, 30);
        let c = parse(r#"{"channel_token":{"audience":"c"}}"#).unwrap();
        assert_eq!(c.upstream.channel_token.unwrap().ttl_seconds, 300);
        for (cfg, field) in [
            (r#"{"channel_token":{}}"#, "channel_token.audience"),
            (r#"{"channel_token":{"audience":"mcp"}}"#, "channel_token.audience"),
            (
                r#"{"channel_token":{"audience":"c","ttl_seconds":0}}"#,
                "channel_token.ttl_seconds",
            ),
            (
                r#"{"channel_token":{"audience":"c","ttl_seconds":86401}}"#,
                "channel_token.ttl_seconds",
            ),
            (r#"{"channel_token":{"audience":"c","ttl":5}}"#, "channel_token.ttl"),
        ] {
            assert_eq!(parse(cfg).unwrap_err().field, field, "{cfg}");
        }
    }

    #[test]
    fn debug_header_forms() {
        assert_eq!(
            parse(r#"{"debug_header":true}"#)
                .unwrap()
                .upstream
                .debug_header
                .as_deref(),
            Some("x-mcp-jwt-debug")
        );
        assert_eq!(parse(r#"{"debug_header":false}"#).unwrap().upstream.debug_header, None);
        assert_eq!(
            parse(r#"{"debug_header":{}}"#)
                .unwrap()
                .upstream
                .debug_header
                .as_deref(),
            Some("x-mcp-jwt-debug")
        );
        assert_eq!(
            parse(r#"{"debug_header":{"name":"X-LiteLLM-MCP-Debug"}}"#)
                .unwrap()
                .upstream
                .debug_header
                .as_deref(),
            Some("x-litellm-mcp-debug")
        );
    }
}
