//! MCP's request metadata headers (Streamable HTTP, revision 2026-07-28): `Mcp-Method` mirrors the body's
//! `method`, `Mcp-Name` its `params.name` (`tools/call`, `prompts/get`) or `params.uri` (`resources/read`), and
//! `MCP-Protocol-Version` the `_meta` protocol version. Proxies and servers may route on them without reading the
//! body; the token is scoped from the body, so every header must say what the body says:
//!
//! - a header that is present must match the body, whatever the protocol version (a mismatch is `-32020`,
//!   HeaderMismatch, HTTP 400, as MCP servers answer);
//! - from `2026-07-28` on, the headers are REQUIRED on requests: a missing `Mcp-Method`, or a missing `Mcp-Name` on
//!   the three named methods, is a mismatch too; a request without the `_meta` protocol version is malformed
//!   (`-32602`);
//! - `Mcp-Name` on a body that names nothing (another method, a notification, a batch, a GET) is refused;
//! - a value that is not plain header-safe ASCII is carried as `=?base64?<standard base64 of UTF-8>?=` (markers
//!   case-sensitive); it is decoded before comparing. A sentinel that is not canonical padded base64, or that
//!   decodes to text that is not UTF-8, is a mismatch; one that decodes to a value that did not need encoding is
//!   accepted (the decoded value is what every reader compares);
//! - JSON-RPC batches are not part of MCP since `2025-06-18`: a batch that claims a later version is refused;
//! - `Mcp-Param-{Name}` headers are not read and are forwarded untouched (the filter does not know the tools'
//!   schemas; the server that does validates them).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::claims::Call;
use crate::host::Headers;
use crate::mcp::{McpCall, McpError};
use crate::refusal::Refusal;

/// The first revision in which the request metadata headers are required.
pub const REQUIRED_FROM: &str = "2026-07-28";
/// The first revision without JSON-RPC batches.
pub const NO_BATCHES_FROM: &str = "2025-06-18";

const SENTINEL_PREFIX: &str = "=?base64?";
const SENTINEL_SUFFIX: &str = "?=";

/// A header that must appear at most once.
fn single<'a>(headers: &'a Headers, name: &'static str) -> Result<Option<&'a [u8]>, Refusal> {
    headers
        .single(name)
        .map_err(|_| Refusal::HeaderMismatch(repeated(name)))
}

fn repeated(name: &'static str) -> &'static str {
    match name {
        "mcp-method" => "Mcp-Method is repeated",
        "mcp-name" => "Mcp-Name is repeated",
        _ => "MCP-Protocol-Version is repeated",
    }
}

/// `YYYY-MM-DD`, the form of every MCP revision.
fn version(raw: &[u8]) -> Result<&str, Refusal> {
    let text = std::str::from_utf8(raw).map_err(|_| Refusal::HeaderMismatch("MCP-Protocol-Version is malformed"))?;
    let b = text.as_bytes();
    let date = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !date {
        return Err(Refusal::HeaderMismatch(
            "MCP-Protocol-Version is malformed (expected YYYY-MM-DD)",
        ));
    }
    Ok(text)
}

/// The value an `Mcp-Name` header stands for: the sentinel decoded, or the plain header-safe ASCII value.
pub fn decode_name(raw: &[u8]) -> Result<String, Refusal> {
    let text = std::str::from_utf8(raw).map_err(|_| Refusal::HeaderMismatch("Mcp-Name holds invalid characters"))?;
    if let Some(encoded) = text
        .strip_prefix(SENTINEL_PREFIX)
        .and_then(|rest| rest.strip_suffix(SENTINEL_SUFFIX))
    {
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| Refusal::HeaderMismatch("Mcp-Name holds an invalid base64 sentinel"))?;
        return String::from_utf8(bytes).map_err(|_| Refusal::HeaderMismatch("Mcp-Name's base64 value is not UTF-8"));
    }
    // Plain values: visible ASCII, space and tab (RFC 9110 field values), no leading or trailing whitespace.
    let safe = text.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) && text.trim() == text && !text.is_empty();
    if !safe {
        return Err(Refusal::HeaderMismatch("Mcp-Name holds invalid characters"));
    }
    Ok(text.to_string())
}

/// What a request calls, from its headers alone (`scope_source: "headers"`): `Mcp-Method`, and `Mcp-Name` for
/// `tools/call`, `prompts/get` and `resources/read`, on a request that declares `MCP-Protocol-Version` 2026-07-28 or
/// later (the revision in which servers MUST refuse a body that disagrees with these headers). `Ok(None)`: the
/// headers do not say enough (an earlier or no version, a missing header): the caller reads the body, or refuses
/// when it may not buffer. Headers that are present but wrong are refused.
pub fn call_from_headers(headers: &Headers) -> Result<Option<McpCall>, Refusal> {
    let Some(version) = single(headers, "mcp-protocol-version")?.map(version).transpose()? else {
        return Ok(None);
    };
    if version < REQUIRED_FROM {
        return Ok(None);
    }
    let Some(method) = single(headers, "mcp-method")? else {
        return Ok(None);
    };
    let method = std::str::from_utf8(method)
        .ok()
        .filter(|m| crate::mcp::is_valid_method(m))
        .ok_or(Refusal::HeaderMismatch(
            "Mcp-Method must be 1-128 characters of A-Z a-z 0-9 _ - . /",
        ))?;
    let name = single(headers, "mcp-name")?.map(decode_name).transpose()?;
    let named = matches!(method, "tools/call" | "prompts/get" | "resources/read");
    let name = match (named, name) {
        (true, None) => return Ok(None),
        (false, Some(_)) => {
            return Err(Refusal::HeaderMismatch(
                "Mcp-Name is sent only with tools/call, prompts/get and resources/read",
            ))
        }
        (_, name) => name,
    };
    let mut call = McpCall::default();
    match (method, &name) {
        ("tools/call" | "prompts/get", Some(n)) if !crate::mcp::is_valid_tool_name(n) => {
            return Err(Refusal::HeaderMismatch(
                "Mcp-Name must follow MCP's name rules (1-128 of A-Z a-z 0-9 _ - .)",
            ))
        }
        ("tools/call", Some(n)) => {
            call.tools.insert(n.clone());
        }
        ("prompts/get", Some(n)) => {
            call.prompts.insert(n.clone());
        }
        ("resources/read", Some(n)) if n.is_empty() || n.len() > crate::mcp::MAX_URI_LEN => {
            return Err(Refusal::HeaderMismatch("Mcp-Name holds no valid resource URI"))
        }
        _ => {}
    }
    call.methods.insert(method.to_string());
    call.single = Some(Box::new(crate::mcp::Message {
        method: Some(method.to_string()),
        is_request: true,
        name,
        protocol_version: Some(version.to_string()),
        client_info: None,
    }));
    Ok(Some(call))
}

/// Checks MCP's request metadata headers against the body.
pub fn check_routing_headers(call: &Call, headers: &Headers) -> Result<(), Refusal> {
    let method_header = single(headers, "mcp-method")?;
    let name_header = single(headers, "mcp-name")?;
    let version_header = single(headers, "mcp-protocol-version")?.map(version).transpose()?;
    let required = version_header.is_some_and(|v| v >= REQUIRED_FROM);
    let Call::Messages(messages) = call else {
        // GET and DELETE carry no JSON-RPC body: nothing a name could match.
        return match name_header {
            Some(_) => Err(Refusal::HeaderMismatch(
                "Mcp-Name on a request that names no tool, prompt or resource",
            )),
            None => Ok(()),
        };
    };
    if messages.batch {
        if version_header.is_some_and(|v| v >= NO_BATCHES_FROM) {
            return Err(Refusal::Body(McpError::InvalidRequest {
                id: None,
                detail: "JSON-RPC batches are not part of MCP since 2025-06-18".into(),
            }));
        }
        if method_header.is_some() || name_header.is_some() {
            return Err(Refusal::HeaderMismatch(
                "Mcp-Method and Mcp-Name cannot describe a batch",
            ));
        }
        return Ok(());
    }
    check_single(messages, method_header, name_header, version_header, required)
}

fn check_single(
    messages: &McpCall,
    method_header: Option<&[u8]>,
    name_header: Option<&[u8]>,
    version_header: Option<&str>,
    required: bool,
) -> Result<(), Refusal> {
    let Some(message) = &messages.single else {
        return Err(Refusal::Internal("a single message without its details"));
    };
    if required && message.method.is_none() {
        return Err(Refusal::Body(McpError::InvalidRequest {
            id: messages.id.clone(),
            detail: "clients send no JSON-RPC responses in MCP 2026-07-28 (input arrives with the retried request)"
                .into(),
        }));
    }
    match (method_header, &message.method) {
        (Some(header), Some(method)) if header == method.as_bytes() => {}
        (Some(_), _) => return Err(Refusal::HeaderMismatch("Mcp-Method does not match the body's method")),
        (None, Some(_)) if required && message.is_request => {
            return Err(Refusal::HeaderMismatch("Mcp-Method is required (MCP 2026-07-28)"))
        }
        (None, _) => {}
    }
    match (name_header, &message.name) {
        (Some(header), Some(name)) => {
            if decode_name(header)? != *name {
                return Err(Refusal::HeaderMismatch(
                    "Mcp-Name does not match the body's params.name or params.uri",
                ));
            }
        }
        (Some(_), None) => {
            return Err(Refusal::HeaderMismatch(
                "Mcp-Name is sent only with tools/call, prompts/get and resources/read",
            ))
        }
        (None, Some(_)) if required && message.is_request => {
            return Err(Refusal::HeaderMismatch(
                "Mcp-Name is required for tools/call, prompts/get and resources/read (MCP 2026-07-28)",
            ))
        }
        (None, _) => {}
    }
    if let Some(header) = version_header {
        match &message.protocol_version {
            Some(body) if body != header => {
                return Err(Refusal::HeaderMismatch(
                    "MCP-Protocol-Version does not match the body's _meta protocol version",
                ))
            }
            None if required && message.is_request => {
                return Err(Refusal::Body(McpError::InvalidParams {
                    id: messages.id.clone(),
                    detail: "params._meta must carry io.modelcontextprotocol/protocolVersion (MCP 2026-07-28)".into(),
                }))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp;
    use serde_json::json;

    fn call(body: serde_json::Value) -> Call {
        Call::Messages(mcp::parse_body(body.to_string().as_bytes()).unwrap())
    }

    fn headers(list: &[(&str, &str)]) -> Headers {
        Headers(
            list.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn meta(version: &str) -> serde_json::Value {
        json!({"io.modelcontextprotocol/protocolVersion": version, "io.modelcontextprotocol/clientCapabilities": {}})
    }

    fn modern(method: &str, params: serde_json::Value) -> Call {
        let mut params = params;
        params["_meta"] = meta("2026-07-28");
        call(json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}))
    }

    fn mismatch(result: Result<(), Refusal>) -> bool {
        matches!(result, Err(Refusal::HeaderMismatch(_)))
    }

    const V: (&str, &str) = ("mcp-protocol-version", "2026-07-28");

    #[test]
    fn a_repeated_header_is_named_in_the_refusal() {
        let tools = modern("tools/call", json!({"name":"get_weather"}));
        let good = [V, ("mcp-method", "tools/call"), ("mcp-name", "get_weather")];
        for (name, value, message) in [
            ("mcp-method", "tools/call", "Mcp-Method is repeated"),
            ("mcp-name", "get_weather", "Mcp-Name is repeated"),
            ("mcp-protocol-version", "2026-07-28", "MCP-Protocol-Version is repeated"),
        ] {
            let mut list = good.to_vec();
            list.push((name, value));
            assert_eq!(
                check_routing_headers(&tools, &headers(&list)),
                Err(Refusal::HeaderMismatch(message))
            );
        }
    }

    #[test]
    fn header_mode_reads_versions_from_2026_07_28_and_bounds_resource_uris() {
        let at = |version: &str, method: &str, name: &str| {
            call_from_headers(&headers(&[
                ("mcp-protocol-version", version),
                ("mcp-method", method),
                ("mcp-name", name),
            ]))
        };
        // Earlier revisions: the headers do not bind the body, the caller reads it.
        assert_eq!(at("2025-11-25", "tools/call", "get_weather"), Ok(None));
        assert!(matches!(at("2026-07-28", "tools/call", "get_weather"), Ok(Some(_))));
        assert!(matches!(at("2027-01-01", "tools/call", "get_weather"), Ok(Some(_))));
        let max = "u".repeat(crate::mcp::MAX_URI_LEN);
        assert!(matches!(at("2026-07-28", "resources/read", &max), Ok(Some(_))));
        assert!(matches!(at("2026-07-28", "resources/read", "file:///a"), Ok(Some(_))));
        let over = "u".repeat(crate::mcp::MAX_URI_LEN + 1);
        assert!(matches!(
            at("2026-07-28", "resources/read", &over),
            Err(Refusal::HeaderMismatch(_))
        ));
    }

    #[test]
    fn protocol_versions_must_be_dates() {
        assert_eq!(version(b"2026-07-28"), Ok("2026-07-28"));
        for bad in [
            &b"2026/07/28"[..],
            b"2026-07-2x",
            b"20260728",
            b"2026-07-281",
            b"x026-07-28",
            b"",
            b"\xff",
        ] {
            assert!(matches!(version(bad), Err(Refusal::HeaderMismatch(_))), "{bad:?}");
        }
    }

    #[test]
    fn every_row_of_the_header_table() {
        let tools = modern("tools/call", json!({"name":"get_weather"}));
        let read = modern("resources/read", json!({"uri":"file:///projects/myapp/config.json"}));
        let prompt = modern("prompts/get", json!({"name":"code_review"}));
        let list = modern("tools/list", json!({}));
        let ok = |c: &Call, h: &[(&str, &str)]| check_routing_headers(c, &headers(h));
        assert_eq!(
            ok(&tools, &[V, ("mcp-method", "tools/call"), ("mcp-name", "get_weather")]),
            Ok(())
        );
        assert_eq!(
            ok(
                &read,
                &[
                    V,
                    ("mcp-method", "resources/read"),
                    ("mcp-name", "file:///projects/myapp/config.json")
                ]
            ),
            Ok(())
        );
        assert_eq!(
            ok(
                &prompt,
                &[V, ("mcp-method", "prompts/get"), ("mcp-name", "code_review")]
            ),
            Ok(())
        );
        assert_eq!(ok(&list, &[V, ("mcp-method", "tools/list")]), Ok(()));
        // Required from 2026-07-28: missing headers are mismatches.
        assert!(mismatch(ok(&tools, &[V, ("mcp-method", "tools/call")])));
        assert!(mismatch(ok(&tools, &[V, ("mcp-name", "get_weather")])));
        assert!(mismatch(ok(&list, &[V])));
        assert!(mismatch(ok(&read, &[V, ("mcp-method", "resources/read")])));
        // Present headers must match, whatever the version.
        assert!(mismatch(ok(
            &tools,
            &[V, ("mcp-method", "tools/call"), ("mcp-name", "delete_all")]
        )));
        assert!(mismatch(ok(
            &tools,
            &[V, ("mcp-method", "tools/list"), ("mcp-name", "get_weather")]
        )));
        assert!(mismatch(ok(
            &list,
            &[V, ("mcp-method", "tools/list"), ("mcp-name", "get_weather")]
        )));
        assert!(mismatch(ok(
            &tools,
            &[V, ("mcp-method", "Tools/Call"), ("mcp-name", "get_weather")]
        )));
        // Repeated headers.
        assert!(mismatch(ok(
            &tools,
            &[
                V,
                ("mcp-method", "tools/call"),
                ("mcp-name", "get_weather"),
                ("mcp-name", "get_weather")
            ]
        )));
    }

    #[test]
    fn earlier_versions_check_what_is_present() {
        let legacy = call(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}));
        let h = |list: &[(&str, &str)]| check_routing_headers(&legacy, &headers(list));
        assert_eq!(h(&[]), Ok(()));
        assert_eq!(h(&[("mcp-protocol-version", "2025-11-25")]), Ok(()));
        assert_eq!(h(&[("mcp-method", "tools/call"), ("mcp-name", "get_weather")]), Ok(()));
        assert!(mismatch(h(&[("mcp-name", "delete_all")])));
        assert!(mismatch(h(&[("mcp-method", "tools/list")])));
        let list = call(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
        // An Mcp-Name on a body that names nothing is refused (it used to be forwarded).
        assert!(mismatch(check_routing_headers(
            &list,
            &headers(&[("mcp-name", "delete_all")])
        )));
        assert!(mismatch(check_routing_headers(
            &Call::Stream,
            &headers(&[("mcp-name", "x")])
        )));
        assert_eq!(
            check_routing_headers(&Call::Stream, &headers(&[("mcp-method", "x")])),
            Ok(())
        );
    }

    #[test]
    fn the_sentinel_with_the_spec_s_own_examples() {
        assert_eq!(decode_name(b"=?base64?SGVsbG8sIOS4lueVjA==?=").unwrap(), "Hello, 世界");
        assert_eq!(decode_name(b"=?base64?IHBhZGRlZCA=?=").unwrap(), " padded ");
        assert_eq!(decode_name(b"=?base64?bGluZTEKbGluZTI=?=").unwrap(), "line1\nline2");
        assert_eq!(
            decode_name(b"=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=").unwrap(),
            "=?base64?literal?="
        );
        // A value that did not need encoding, encoded anyway: accepted as what it decodes to.
        assert_eq!(decode_name(b"=?base64?Z2V0X3dlYXRoZXI=?=").unwrap(), "get_weather");
        // Markers are case-sensitive: not a sentinel, so compared as plain text.
        assert_eq!(
            decode_name(b"=?BASE64?Z2V0X3dlYXRoZXI=?=").unwrap(),
            "=?BASE64?Z2V0X3dlYXRoZXI=?="
        );
        for bad in [
            &b"=?base64?not base64?="[..],
            b"=?base64?Z2V0X3dlYXRoZXI?=",
            b"=?base64?/w==?=",
            b"caf\xc3\xa9",
            b" x",
            b"a\x01",
        ] {
            assert!(matches!(decode_name(bad), Err(Refusal::HeaderMismatch(_))), "{bad:?}");
        }
        let uri = "file:///projects/my app/配置.json";
        let read = modern("resources/read", json!({"uri": uri}));
        let encoded = format!("=?base64?{}?=", STANDARD.encode(uri));
        assert_eq!(
            check_routing_headers(
                &read,
                &headers(&[V, ("mcp-method", "resources/read"), ("mcp-name", &encoded)])
            ),
            Ok(())
        );
    }

    #[test]
    fn version_gating() {
        let tools = modern("tools/call", json!({"name":"get_weather"}));
        let h = |v: &str| {
            check_routing_headers(
                &tools,
                &headers(&[
                    ("mcp-protocol-version", v),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "get_weather"),
                ]),
            )
        };
        assert_eq!(h("2026-07-28"), Ok(()));
        // The header and the body's _meta must agree.
        assert!(mismatch(h("2025-11-25")));
        assert!(mismatch(h("2026-7-28")));
        assert!(mismatch(h("latest")));
        // A 2026-07-28 request without the _meta version is malformed.
        let bare = call(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
        assert!(matches!(
            check_routing_headers(&bare, &headers(&[V, ("mcp-method", "tools/list")])),
            Err(Refusal::Body(McpError::InvalidParams { .. }))
        ));
        // Batches claim a version that has none.
        let batch = call(json!([{"jsonrpc":"2.0","id":1,"method":"tools/list"}]));
        assert!(matches!(
            check_routing_headers(&batch, &headers(&[("mcp-protocol-version", "2025-06-18")])),
            Err(Refusal::Body(McpError::InvalidRequest { .. }))
        ));
        assert_eq!(
            check_routing_headers(&batch, &headers(&[("mcp-protocol-version", "2025-03-26")])),
            Ok(())
        );
        assert!(mismatch(check_routing_headers(
            &batch,
            &headers(&[("mcp-method", "tools/list")])
        )));
        // A notification needs no headers; a response has no place in 2026-07-28.
        let note =
            call(json!({"jsonrpc":"2.0","method":"notifications/initialized","params":{"_meta": meta("2026-07-28")}}));
        assert_eq!(check_routing_headers(&note, &headers(&[V])), Ok(()));
        let response = call(json!({"jsonrpc":"2.0","id":"s1","result":{}}));
        assert!(matches!(
            check_routing_headers(&response, &headers(&[V])),
            Err(Refusal::Body(McpError::InvalidRequest { .. }))
        ));
        assert_eq!(
            check_routing_headers(&response, &headers(&[("mcp-protocol-version", "2025-11-25")])),
            Ok(())
        );
    }

    #[test]
    fn mcp_param_headers_are_not_read() {
        let tools = modern(
            "tools/call",
            json!({"name":"execute_sql","arguments":{"region":"us-west1"}}),
        );
        let h = headers(&[
            V,
            ("mcp-method", "tools/call"),
            ("mcp-name", "execute_sql"),
            ("mcp-param-region", "eu-west1"),
            ("mcp-param-other", "=?base64?!!?="),
        ]);
        assert_eq!(check_routing_headers(&tools, &h), Ok(()));
    }
}
