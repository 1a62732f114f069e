//! Why a request is refused, and what the client, the log and the metrics see.
//!
//! Every refusal is a JSON-RPC error object with an HTTP status; the request never reaches the MCP server.

use std::fmt;

use serde_json::{json, Value};

use crate::identity::IdentityError;
use crate::mcp::McpError;

/// Why a request is refused. Each maps to an HTTP status, a JSON-RPC error code and a stable reason.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The body is not an MCP request we will sign.
    Body(McpError),
    /// The body is larger than `max_body_bytes`.
    BodyTooLarge {
        /// `max_body_bytes`.
        limit: usize,
    },
    /// A `content-encoding` the filter cannot read (it must see the JSON it scopes).
    UnsupportedEncoding,
    /// An HTTP method MCP's Streamable HTTP transport does not use.
    MethodNotAllowed {
        /// The `allow` header.
        allow: &'static str,
    },
    /// A GET or DELETE with a body: MCP sends none, and the server must not see bytes we did not read.
    UnexpectedBody,
    /// Request trailers: MCP sends none, and they would arrive after the token was decided.
    UnexpectedTrailers,
    /// An identity source held a value we will not put into a token.
    Identity(IdentityError),
    /// No issuer is configured and the request's `:authority` cannot be one.
    BadAuthority,
    /// An MCP routing header (`mcp-method`, `mcp-name`) disagrees with the body it travels with.
    HeaderMismatch(&'static str),
    /// `require_subject` is on and no identity source named a user.
    Unauthenticated,
    /// The request needs incoming scopes (`required_incoming_scopes`) and carries no verified token.
    TokenRequired {
        /// The scopes this request needs, space-separated (the challenge's `scope`).
        scope: String,
    },
    /// The incoming token failed verification (jwt_authn's failure status, or introspection's `active: false`).
    InvalidToken {
        /// A fixed, safe description (never the token, never the verifier's raw message).
        description: &'static str,
    },
    /// The verified incoming token lacks scopes this request needs (`required_incoming_scopes`): step up.
    InsufficientScope {
        /// Every scope the request needs, space-separated, in one challenge.
        scope: String,
    },
    /// The token introspection endpoint gave no usable answer (timeout, reset, an error status, an unreadable
    /// body): fail closed. The log line before the refusal names the cause.
    IntrospectionUnavailable,
    /// The incoming token's delegation chain refuses this gateway (`may_act`), or is too deep or malformed.
    Delegation(&'static str),
    /// A claim listed in `required_claims` is missing from the verified identity.
    MissingClaim(String),
    /// The matched route's `allowed_tools` does not list this tool.
    ToolNotAllowed(String),
    /// The matched route's metadata for this filter is malformed (an operator error).
    BadRouteMetadata(&'static str),
    /// The route changed when the filter edited the request headers (Envoy matched the route again): the token was
    /// scoped for the route read before the edits and must not reach another.
    RouteChanged,
    /// The token would exceed `max_token_bytes`.
    TokenTooLarge {
        /// The token's size.
        bytes: usize,
        /// `max_token_bytes`.
        limit: usize,
    },
    /// The signing key is not available (generation failed or still running).
    KeyUnavailable,
    /// Signing failed.
    Internal(&'static str),
}

/// Every [`Refusal::reason`], once: hosts that must declare their metrics up front (Envoy's dynamic modules define
/// counters only while a filter config is created) define `refused.<reason>` for each. A unit test proves that
/// every variant's reason is listed.
pub const REASONS: &[&str] = &[
    "parse_error",
    "invalid_request",
    "invalid_params",
    "body_too_large",
    "unsupported_encoding",
    "method_not_allowed",
    "unexpected_body",
    "unexpected_trailers",
    "invalid_identity",
    "invalid_authority",
    "header_mismatch",
    "unauthenticated",
    "invalid_token",
    "insufficient_scope",
    "missing_required_claim",
    "tool_not_allowed",
    "bad_route_metadata",
    "route_changed",
    "token_too_large",
    "key_unavailable",
    "internal_error",
    "introspection_unavailable",
    "delegation_refused",
];

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> u32 {
        match self {
            Refusal::Body(_) | Refusal::UnexpectedBody | Refusal::UnexpectedTrailers => 400,
            Refusal::Identity(_) | Refusal::BadAuthority | Refusal::HeaderMismatch(_) => 400,
            Refusal::Unauthenticated | Refusal::TokenRequired { .. } | Refusal::InvalidToken { .. } => 401,
            Refusal::InsufficientScope { .. } | Refusal::Delegation(_) => 403,
            Refusal::IntrospectionUnavailable => 503,
            Refusal::MissingClaim(_) | Refusal::ToolNotAllowed(_) => 403,
            Refusal::BadRouteMetadata(_) | Refusal::RouteChanged => 500,
            Refusal::TokenTooLarge { .. } => 400,
            Refusal::BodyTooLarge { .. } => 413,
            Refusal::UnsupportedEncoding => 415,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::KeyUnavailable => 503,
            Refusal::Internal(_) => 500,
        }
    }

    /// JSON-RPC 2.0 error code.
    pub fn code(&self) -> i64 {
        match self {
            Refusal::Body(McpError::Parse(_)) => -32700,
            Refusal::Body(McpError::InvalidParams { .. }) => -32602,
            Refusal::Unauthenticated | Refusal::TokenRequired { .. } | Refusal::InvalidToken { .. } => -32001,
            Refusal::InsufficientScope { .. } | Refusal::Delegation(_) => -32003,
            Refusal::IntrospectionUnavailable => -32603,
            // MCP's own code for a routing header that does not match the body.
            Refusal::HeaderMismatch(_) => -32020,
            Refusal::MissingClaim(_) | Refusal::ToolNotAllowed(_) => -32003,
            Refusal::KeyUnavailable | Refusal::Internal(_) | Refusal::BadRouteMetadata(_) | Refusal::RouteChanged => {
                -32603
            }
            _ => -32600,
        }
    }

    /// A short stable name, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Body(McpError::Parse(_)) => "parse_error",
            Refusal::Body(McpError::InvalidRequest { .. }) => "invalid_request",
            Refusal::Body(McpError::InvalidParams { .. }) => "invalid_params",
            Refusal::BodyTooLarge { .. } => "body_too_large",
            Refusal::UnsupportedEncoding => "unsupported_encoding",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::UnexpectedBody => "unexpected_body",
            Refusal::UnexpectedTrailers => "unexpected_trailers",
            Refusal::Identity(_) => "invalid_identity",
            Refusal::BadAuthority => "invalid_authority",
            Refusal::HeaderMismatch(_) => "header_mismatch",
            Refusal::Unauthenticated | Refusal::TokenRequired { .. } => "unauthenticated",
            Refusal::InvalidToken { .. } => "invalid_token",
            Refusal::InsufficientScope { .. } => "insufficient_scope",
            Refusal::IntrospectionUnavailable => "introspection_unavailable",
            Refusal::Delegation(_) => "delegation_refused",
            Refusal::MissingClaim(_) => "missing_required_claim",
            Refusal::ToolNotAllowed(_) => "tool_not_allowed",
            Refusal::BadRouteMetadata(_) => "bad_route_metadata",
            Refusal::RouteChanged => "route_changed",
            Refusal::TokenTooLarge { .. } => "token_too_large",
            Refusal::KeyUnavailable => "key_unavailable",
            Refusal::Internal(_) => "internal_error",
        }
    }

    /// The JSON-RPC id the refusal itself carries (from a parsed but refused message).
    pub fn id(&self) -> Option<&Value> {
        match self {
            Refusal::Body(e) => e.id(),
            _ => None,
        }
    }

    /// The JSON-RPC error `message` the client sees.
    pub fn message(&self) -> String {
        match self {
            Refusal::Body(e) => e.to_string(),
            Refusal::BodyTooLarge { limit } => {
                format!("request body exceeds the limit of {limit} bytes")
            }
            Refusal::UnsupportedEncoding => {
                "content-encoding is not supported; send the JSON-RPC body uncompressed".into()
            }
            Refusal::MethodNotAllowed { allow } => {
                format!("HTTP method not allowed; allowed: {allow}")
            }
            Refusal::UnexpectedBody => "GET and DELETE requests must not carry a body".into(),
            Refusal::UnexpectedTrailers => "request trailers are not supported".into(),
            Refusal::Identity(e) => format!("invalid identity: {e}"),
            Refusal::BadAuthority => "the request's :authority is not a valid host".into(),
            Refusal::HeaderMismatch(what) => format!("header mismatch: {what}"),
            Refusal::Unauthenticated => "authentication required: no user identity for this request".into(),
            Refusal::TokenRequired { scope } => format!("authentication required: this request needs scope `{scope}`"),
            Refusal::InvalidToken { description } => format!("invalid token: {description}"),
            Refusal::InsufficientScope { scope } => {
                format!("insufficient scope: this request needs `{scope}`; obtain a token with it and retry")
            }
            Refusal::IntrospectionUnavailable => {
                "the access token could not be validated right now (authorization server unavailable); retry".into()
            }
            Refusal::Delegation(what) => format!("forbidden: {what}"),
            Refusal::MissingClaim(claim) => {
                format!("forbidden: required claim `{claim}` is missing")
            }
            Refusal::ToolNotAllowed(tool) => {
                format!("forbidden: tool `{tool}` is not allowed on this route")
            }
            Refusal::BadRouteMetadata(what) => format!("gateway misconfiguration: {what}"),
            Refusal::RouteChanged => "gateway misconfiguration: the route changed when the filter edited the request \
                headers (routes must not match on headers the filter removes or sets: the client's authorization, \
                identity headers, the token header)"
                .into(),
            Refusal::TokenTooLarge { bytes, limit } => format!(
                "the token for this request would be {bytes} bytes, over the limit of {limit} (max_token_bytes): \
                 call fewer tools per request"
            ),
            Refusal::KeyUnavailable => "the signing key is not available yet; retry".into(),
            Refusal::Internal(what) => format!("internal error: {what}"),
        }
    }

    /// The response body: a JSON-RPC error object.
    pub fn body(&self) -> Vec<u8> {
        self.body_for(None)
    }

    /// The response body answering the request with `request_id` (for refusals decided after parsing: the
    /// body's own id when the refusal has none).
    pub fn body_for(&self, request_id: Option<&Value>) -> Vec<u8> {
        json!({
            "jsonrpc": "2.0",
            "id": self.id().or(request_id).cloned().unwrap_or(Value::Null),
            "error": {"code": self.code(), "message": self.message()},
        })
        .to_string()
        .into_bytes()
    }

    /// Extra response headers besides `content-type`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Refusal::MethodNotAllowed { allow } => vec![("allow", allow.to_string())],
            Refusal::KeyUnavailable => vec![("retry-after", "1".to_string())],
            _ => Vec::new(),
        }
    }

    /// The `WWW-Authenticate` challenge of a refusal that asks for (other) credentials (RFC 6750 section 3, MCP
    /// 2026-07-28 authorization), with the protected resource's metadata URL and, where the refusal does not
    /// carry its own, the scope the request needs. `None` for refusals more credentials would not change. Every
    /// value was validated at load or is fixed text: none needs escaping.
    pub fn www_authenticate(&self, resource_metadata: Option<&str>, scope: Option<&str>) -> Option<String> {
        let (error, description, own_scope) = match self {
            Refusal::Unauthenticated => (None, None, None),
            Refusal::TokenRequired { scope } => (None, None, Some(scope.as_str())),
            Refusal::InvalidToken { description } => (Some("invalid_token"), Some(*description), None),
            Refusal::InsufficientScope { scope } => (
                Some("insufficient_scope"),
                Some("the access token lacks a scope this request needs"),
                Some(scope.as_str()),
            ),
            _ => return None,
        };
        let mut params: Vec<String> = Vec::new();
        if let Some(error) = error {
            params.push(format!("error=\"{error}\""));
        }
        if let Some(scope) = own_scope.or(scope).filter(|s| !s.is_empty()) {
            params.push(format!("scope=\"{scope}\""));
        }
        if let Some(url) = resource_metadata {
            params.push(format!("resource_metadata=\"{url}\""));
        }
        if let Some(description) = description {
            params.push(format!("error_description=\"{description}\""));
        }
        Some(if params.is_empty() {
            "Bearer".to_string()
        } else {
            format!("Bearer {}", params.join(", "))
        })
    }
}

impl Refusal {
    /// The one log line of a refusal: reason, status, JSON-RPC id (the refusal's own, else `request_id`, cut at
    /// 80 characters), detail. No header values, no tokens, no keys.
    pub fn log_line(&self, request_id: Option<&Value>) -> String {
        let id = self.id().or(request_id).map(Value::to_string);
        let id: String = id.as_deref().unwrap_or("null").chars().take(80).collect();
        format!(
            "refused reason={} status={} jsonrpc_id={} detail={:?}",
            self.reason(),
            self.status(),
            id,
            self.message()
        )
    }
}

/// The refusal's log line (see [`Refusal::log_line`]).
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.log_line(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_json_rpc() {
        let r = Refusal::Body(McpError::InvalidParams {
            id: Some(json!(7)),
            detail: "bad tool".into(),
        });
        let body: Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["code"], -32602);
        assert_eq!(r.status(), 400);
        assert!(r.to_string().contains("reason=invalid_params"));
    }

    /// One refusal of every variant. The match has no wildcard arm, so a new variant does not compile until it is
    /// added here (and then its reason must be in `REASONS`).
    fn one_of_each() -> Vec<Refusal> {
        use crate::identity::IdentityError;
        let samples = vec![
            Refusal::Body(McpError::Parse("x".into())),
            Refusal::Body(McpError::InvalidRequest {
                id: None,
                detail: "x".into(),
            }),
            Refusal::Body(McpError::InvalidParams {
                id: None,
                detail: "x".into(),
            }),
            Refusal::BodyTooLarge { limit: 1 },
            Refusal::UnsupportedEncoding,
            Refusal::MethodNotAllowed { allow: "GET" },
            Refusal::UnexpectedBody,
            Refusal::UnexpectedTrailers,
            Refusal::Identity(IdentityError {
                source: "header:x".into(),
                reason: "is repeated",
            }),
            Refusal::BadAuthority,
            Refusal::HeaderMismatch("x"),
            Refusal::Unauthenticated,
            Refusal::TokenRequired { scope: "x".into() },
            Refusal::InvalidToken { description: "x" },
            Refusal::InsufficientScope { scope: "x".into() },
            Refusal::MissingClaim("x".into()),
            Refusal::ToolNotAllowed("x".into()),
            Refusal::BadRouteMetadata("x"),
            Refusal::RouteChanged,
            Refusal::TokenTooLarge { bytes: 2, limit: 1 },
            Refusal::KeyUnavailable,
            Refusal::Internal("x"),
            Refusal::IntrospectionUnavailable,
            Refusal::Delegation("x"),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for r in &samples {
            let variant = match r {
                Refusal::Body(McpError::Parse(_)) => 0,
                Refusal::Body(McpError::InvalidRequest { .. }) => 1,
                Refusal::Body(McpError::InvalidParams { .. }) => 2,
                Refusal::BodyTooLarge { .. } => 3,
                Refusal::UnsupportedEncoding => 4,
                Refusal::MethodNotAllowed { .. } => 5,
                Refusal::UnexpectedBody => 6,
                Refusal::UnexpectedTrailers => 7,
                Refusal::Identity(_) => 8,
                Refusal::BadAuthority => 9,
                Refusal::HeaderMismatch(_) => 10,
                Refusal::Unauthenticated => 11,
                Refusal::MissingClaim(_) => 12,
                Refusal::ToolNotAllowed(_) => 13,
                Refusal::BadRouteMetadata(_) => 14,
                Refusal::RouteChanged => 15,
                Refusal::TokenTooLarge { .. } => 16,
                Refusal::KeyUnavailable => 17,
                Refusal::Internal(_) => 18,
                Refusal::TokenRequired { .. } => 19,
                Refusal::InvalidToken { .. } => 20,
                Refusal::InsufficientScope { .. } => 21,
                Refusal::IntrospectionUnavailable => 22,
                Refusal::Delegation(_) => 23,
            };
            seen.insert(variant);
        }
        assert_eq!(seen.len(), 24, "a match arm without a sample");
        samples
    }

    #[test]
    fn every_reason_is_listed_once() {
        let samples = one_of_each();
        for r in &samples {
            assert!(REASONS.contains(&r.reason()), "{} is missing from REASONS", r.reason());
        }
        let distinct: std::collections::BTreeSet<_> = REASONS.iter().collect();
        assert_eq!(distinct.len(), REASONS.len(), "REASONS repeats a reason");
        let produced: std::collections::BTreeSet<_> = samples.iter().map(Refusal::reason).collect();
        assert_eq!(produced.len(), REASONS.len(), "REASONS lists a reason no variant has");
    }

    #[test]
    fn statuses() {
        assert_eq!(Refusal::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(Refusal::UnsupportedEncoding.status(), 415);
        assert_eq!(Refusal::MethodNotAllowed { allow: "GET" }.status(), 405);
        assert_eq!(Refusal::Body(McpError::Parse("x".into())).code(), -32700);
        let body: Value = serde_json::from_slice(&Refusal::UnsupportedEncoding.body()).unwrap();
        assert_eq!(body["id"], Value::Null);
    }
}
