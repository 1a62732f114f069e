//! The request gate: what the request line and headers alone decide. Well-known paths are served, methods MCP's
//! Streamable HTTP transport does not use are refused, and a body the filter could not read (compressed, too
//! large) is refused before it is buffered.

use crate::claims::Call;
use crate::config::{Config, Issuer, ProtectedResource};
use crate::mcp;
use crate::refusal::Refusal;
use crate::well_known::{self, Endpoint};

/// The request line and the headers the decision depends on, as raw bytes (clients control them).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHead<'a> {
    /// `:method`.
    pub method: &'a [u8],
    /// `:path`.
    pub path: &'a [u8],
    /// `content-length`, if sent.
    pub content_length: Option<&'a [u8]>,
    /// Every `content-encoding` value (a repeated header must not hide a second encoding behind `identity`).
    pub content_encoding: &'a [&'a [u8]],
    /// The headers were the whole request (no body follows).
    pub end_of_stream: bool,
}

/// What to do once the request headers are in.
#[derive(Debug, PartialEq)]
pub enum HeadDecision {
    /// Answer from the filter: discovery or JWKS.
    Serve(Endpoint),
    /// Refuse.
    Refuse(Refusal),
    /// No body: sign now.
    Sign(Call),
    /// Buffer the body, then call [`on_body`].
    AwaitBody(BodyPlan),
}

/// What the body must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyPlan {
    /// A POST: the body is JSON-RPC.
    JsonRpc,
    /// A GET or DELETE: the body must be empty, then sign this call.
    MustBeEmpty(Call),
}

/// The `allow` header of a 405 on the MCP endpoint.
pub const ALLOWED_METHODS: &str = "GET, POST, DELETE";
/// The `allow` header of a 405 on a well-known path.
pub const WELL_KNOWN_METHODS: &str = "GET, HEAD";

/// Decides from the request line and headers.
pub fn on_headers(
    head: &RequestHead<'_>,
    issuer_path: &str,
    resources: &[ProtectedResource],
    max_body_bytes: usize,
) -> HeadDecision {
    if let Some(endpoint) = well_known::endpoint(head.path, issuer_path, resources) {
        return match head.method {
            b"GET" | b"HEAD" => HeadDecision::Serve(endpoint),
            _ => HeadDecision::Refuse(Refusal::MethodNotAllowed {
                allow: WELL_KNOWN_METHODS,
            }),
        };
    }
    let plan = match head.method {
        b"POST" => BodyPlan::JsonRpc,
        b"GET" => BodyPlan::MustBeEmpty(Call::Stream),
        b"DELETE" => BodyPlan::MustBeEmpty(Call::SessionDelete),
        _ => return HeadDecision::Refuse(Refusal::MethodNotAllowed { allow: ALLOWED_METHODS }),
    };
    if head
        .content_encoding
        .iter()
        .any(|encoding| !is_identity_encoding(encoding))
    {
        return HeadDecision::Refuse(Refusal::UnsupportedEncoding);
    }
    if let Some(length) = head.content_length {
        match parse_content_length(length) {
            Some(n) if n > max_body_bytes as u64 => {
                return HeadDecision::Refuse(Refusal::BodyTooLarge { limit: max_body_bytes })
            }
            Some(_) => {}
            None => return HeadDecision::Refuse(Refusal::Body(mcp::McpError::Parse("invalid content-length".into()))),
        }
    }
    match (plan, head.end_of_stream) {
        (BodyPlan::JsonRpc, true) => HeadDecision::Refuse(Refusal::Body(mcp::McpError::Parse("empty body".into()))),
        (BodyPlan::MustBeEmpty(call), true) => HeadDecision::Sign(call),
        (plan, false) => HeadDecision::AwaitBody(plan),
    }
}

fn is_identity_encoding(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"identity") || value.trim_ascii().is_empty()
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The whole body has arrived (`body` is all of it).
pub fn on_body(plan: &BodyPlan, body: &[u8], max_body_bytes: usize) -> Result<Call, Refusal> {
    if body.len() > max_body_bytes {
        return Err(Refusal::BodyTooLarge { limit: max_body_bytes });
    }
    match plan {
        BodyPlan::JsonRpc => mcp::parse_body(body).map(Call::Messages).map_err(Refusal::Body),
        BodyPlan::MustBeEmpty(call) if body.is_empty() => Ok(call.clone()),
        BodyPlan::MustBeEmpty(_) => Err(Refusal::UnexpectedBody),
    }
}

/// Whether the downstream connection is TLS: the one attribute a client cannot forge (`x-forwarded-proto` and an
/// h2c `:scheme` are whatever the client sent).
pub const TLS_VERSION_PATH: [&str; 2] = ["connection", "tls_version"];

/// The issuer for this request: the configured one, else `scheme://authority` with the scheme of the connection
/// (`https` over TLS, else `http`) and the request's `:authority`.
pub fn issuer_for(config: &Config, tls: impl FnOnce() -> bool, authority: &[u8]) -> Result<Issuer, Refusal> {
    if let Some(issuer) = &config.issuer {
        return Ok(issuer.clone());
    }
    let authority = std::str::from_utf8(authority).map_err(|_| Refusal::BadAuthority)?;
    let scheme = if tls() { "https" } else { "http" };
    Issuer::from_request(scheme, authority).ok_or(Refusal::BadAuthority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        for good in [&b"0"[..], b"42", b" 7 "] {
            assert!(parse_content_length(good).is_some(), "{good:?}");
        }
        // What Rust's integer parser would take but HTTP does not: a sign; and anything else that is not digits.
        for bad in [&b""[..], b" ", b"+5", b"-5", b"5 5", b"0x10", b"\xff"] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    fn head<'a>(method: &'a [u8], path: &'a [u8], eos: bool) -> RequestHead<'a> {
        RequestHead {
            method,
            path,
            end_of_stream: eos,
            ..Default::default()
        }
    }

    #[test]
    fn well_known_is_served_for_get_and_head_only() {
        assert_eq!(
            on_headers(&head(b"GET", b"/.well-known/jwks.json", true), "", &[], 10),
            HeadDecision::Serve(Endpoint::Jwks)
        );
        assert_eq!(
            on_headers(
                &head(b"HEAD", b"/.well-known/openid-configuration?a", true),
                "",
                &[],
                10
            ),
            HeadDecision::Serve(Endpoint::Discovery)
        );
        assert!(matches!(
            on_headers(&head(b"POST", b"/.well-known/jwks.json", false), "", &[], 10),
            HeadDecision::Refuse(Refusal::MethodNotAllowed { .. })
        ));
    }

    #[test]
    fn methods() {
        assert_eq!(
            on_headers(&head(b"GET", b"/mcp", true), "", &[], 10),
            HeadDecision::Sign(Call::Stream)
        );
        assert_eq!(
            on_headers(&head(b"DELETE", b"/mcp", true), "", &[], 10),
            HeadDecision::Sign(Call::SessionDelete)
        );
        assert_eq!(
            on_headers(&head(b"POST", b"/mcp", false), "", &[], 10),
            HeadDecision::AwaitBody(BodyPlan::JsonRpc)
        );
        for m in [&b"PUT"[..], b"PATCH", b"OPTIONS", b"HEAD", b"CONNECT", b"get"] {
            assert!(matches!(
                on_headers(&head(m, b"/mcp", true), "", &[], 10),
                HeadDecision::Refuse(Refusal::MethodNotAllowed { .. })
            ));
        }
        assert!(matches!(
            on_headers(&head(b"POST", b"/mcp", true), "", &[], 10),
            HeadDecision::Refuse(Refusal::Body(mcp::McpError::Parse(_)))
        ));
    }

    #[test]
    fn size_and_encoding_are_checked_at_headers() {
        let mut h = head(b"POST", b"/mcp", false);
        h.content_length = Some(b"11");
        assert_eq!(
            on_headers(&h, "", &[], 10),
            HeadDecision::Refuse(Refusal::BodyTooLarge { limit: 10 })
        );
        h.content_length = Some(b"10");
        assert_eq!(on_headers(&h, "", &[], 10), HeadDecision::AwaitBody(BodyPlan::JsonRpc));
        h.content_encoding = &[b"gzip"];
        assert_eq!(
            on_headers(&h, "", &[], 10),
            HeadDecision::Refuse(Refusal::UnsupportedEncoding)
        );
        h.content_encoding = &[b"Identity"];
        assert_eq!(on_headers(&h, "", &[], 10), HeadDecision::AwaitBody(BodyPlan::JsonRpc));
        // A repeated header cannot hide an encoding behind `identity`.
        h.content_encoding = &[b"identity", b"gzip"];
        assert_eq!(
            on_headers(&h, "", &[], 10),
            HeadDecision::Refuse(Refusal::UnsupportedEncoding)
        );
        h.content_encoding = &[];
        for bad in [&b"1x"[..], b"", b"-1", b"\xff"] {
            h.content_length = Some(bad);
            assert!(matches!(
                on_headers(&h, "", &[], 10),
                HeadDecision::Refuse(Refusal::Body(mcp::McpError::Parse(_)))
            ));
        }
    }

    #[test]
    fn bodies() {
        assert_eq!(
            on_body(&BodyPlan::JsonRpc, b"{}", 1),
            Err(Refusal::BodyTooLarge { limit: 1 })
        );
        assert_eq!(on_body(&BodyPlan::MustBeEmpty(Call::Stream), b"", 1), Ok(Call::Stream));
        assert_eq!(
            on_body(&BodyPlan::MustBeEmpty(Call::Stream), b"x", 1),
            Err(Refusal::UnexpectedBody)
        );
        assert!(on_body(&BodyPlan::JsonRpc, br#"{"jsonrpc":"2.0","method":"ping","id":1}"#, 100).is_ok());
    }

    #[test]
    fn issuer_from_request_when_unset() {
        let cfg = Config::parse(b"{}").unwrap();
        assert_eq!(
            issuer_for(&cfg, || false, b"localhost:10000").unwrap().url,
            "http://localhost:10000"
        );
        assert_eq!(
            issuer_for(&cfg, || true, b"gw.example.com").unwrap().url,
            "https://gw.example.com"
        );
        for bad in [
            &b"evil\"host"[..],
            b"a:b:c",
            b"",
            b"h:",
            b"h:99999",
            b"h:0",
            b"[::1",
            b"\xff",
            b"a b",
        ] {
            assert_eq!(issuer_for(&cfg, || false, bad), Err(Refusal::BadAuthority), "{bad:?}");
        }
        let cfg = Config::parse(br#"{"issuer":"https://gw/x"}"#).unwrap();
        assert_eq!(issuer_for(&cfg, || false, b"other").unwrap().url, "https://gw/x");
    }
}
