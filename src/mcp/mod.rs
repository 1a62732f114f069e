//! Strict reading of an MCP (JSON-RPC 2.0) request body: which methods it calls, which tools and prompts, and,
//! for a single message, what MCP's routing headers mirror (method, tool/prompt name or resource URI, and the
//! protocol version in `_meta`).
//!
//! The result decides the token's `scope`, so anything that could make the filter and the MCP server disagree
//! about what is being called is refused, never repaired: duplicate keys, names outside MCP's character rules,
//! messages that are not JSON-RPC, batches with any bad element.

pub mod strict_json;

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

/// Longest JSON-RPC method name accepted.
pub const MAX_METHOD_LEN: usize = 128;
/// MCP tool names: 1-128 characters.
pub const MAX_TOOL_NAME_LEN: usize = 128;
/// Longest resource URI accepted (`resources/read`).
pub const MAX_URI_LEN: usize = 8 * 1024;

/// `params._meta` key of the protocol version (MCP 2026-07-28: required on every request).
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `params._meta` key of the client's name and version (client-asserted).
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";

/// The one message of a body that is not a batch: what MCP's routing headers mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The method (`None`: a response).
    pub method: Option<String>,
    /// A request (it has an id) rather than a notification or a response.
    pub is_request: bool,
    /// `Mcp-Name`'s source: `params.name` of `tools/call` and `prompts/get`, `params.uri` of `resources/read`.
    pub name: Option<String>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, when it is a string.
    pub protocol_version: Option<String>,
    /// `params._meta["io.modelcontextprotocol/clientInfo"]`, as sent (client-asserted, never an identity).
    pub client_info: Option<Value>,
}

/// What one request body calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct McpCall {
    /// JSON-RPC methods of the requests and notifications in the body.
    pub methods: BTreeSet<String>,
    /// Tools named by `tools/call` requests.
    pub tools: BTreeSet<String>,
    /// Prompts named by `prompts/get` requests.
    pub prompts: BTreeSet<String>,
    /// The body holds JSON-RPC responses (answers to server-initiated requests).
    pub has_responses: bool,
    /// The id of a single (non-batch) message, echoed in error replies.
    pub id: Option<Value>,
    /// The body is a JSON-RPC batch (an array).
    pub batch: bool,
    /// The message, when the body is a single one.
    pub single: Option<Box<Message>>,
}

/// Why a body was refused; maps onto JSON-RPC error codes.
#[derive(Clone, Debug, PartialEq)]
pub enum McpError {
    /// Not JSON (or JSON we refuse to read: duplicate keys, invalid UTF-8, ...): -32700.
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 message: -32600.
    InvalidRequest {
        /// The message's id, when it is one a reply may echo.
        id: Option<Value>,
        /// What is wrong.
        detail: String,
    },
    /// A JSON-RPC request whose params we refuse (e.g. a bad tool name): -32602.
    InvalidParams {
        /// The message's id, when it is one a reply may echo.
        id: Option<Value>,
        /// What is wrong.
        detail: String,
    },
}

impl McpError {
    /// The refused message's id (`None` for parse errors and batches).
    pub fn id(&self) -> Option<&Value> {
        match self {
            McpError::Parse(_) => None,
            McpError::InvalidRequest { id, .. } | McpError::InvalidParams { id, .. } => id.as_ref(),
        }
    }
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpError::Parse(d) => write!(f, "parse error: {d}"),
            McpError::InvalidRequest { detail, .. } => write!(f, "invalid request: {detail}"),
            McpError::InvalidParams { detail, .. } => write!(f, "invalid params: {detail}"),
        }
    }
}

/// Reads a POST body. `body` is the complete body as received.
pub fn parse_body(body: &[u8]) -> Result<McpCall, McpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(McpError::Parse("empty body".into()));
    }
    let value = strict_json::parse(body).map_err(|e| McpError::Parse(e.to_string()))?;
    let mut call = McpCall::default();
    match value {
        Value::Array(items) => {
            call.batch = true;
            if items.is_empty() {
                return Err(McpError::InvalidRequest {
                    id: None,
                    detail: "empty batch".into(),
                });
            }
            for (i, item) in items.iter().enumerate() {
                // A batch is refused whole: the id in the reply is null (JSON-RPC 2.0, section 5).
                read_message(item, &mut call).map_err(|e| match e {
                    McpError::InvalidRequest { detail, .. } => McpError::InvalidRequest {
                        id: None,
                        detail: format!("batch element {i}: {detail}"),
                    },
                    McpError::InvalidParams { detail, .. } => McpError::InvalidParams {
                        id: None,
                        detail: format!("batch element {i}: {detail}"),
                    },
                    other => other,
                })?;
            }
        }
        single => {
            call.id = usable_id(&single);
            call.single = Some(Box::new(read_message(&single, &mut call)?));
        }
    }
    Ok(call)
}

/// The message's id if it is one a reply may echo: a string or an integer that JSON numbers carry exactly.
/// Anything else is an id the filter refuses, and JSON-RPC 2.0 (section 5) answers those with a null id.
fn usable_id(message: &Value) -> Option<Value> {
    match message.get("id") {
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(id @ Value::Number(n)) if n.is_i64() || n.is_u64() => Some(id.clone()),
        _ => None,
    }
}

/// Reads one message into `call`, and returns what a routing header would mirror of it.
fn read_message(message: &Value, call: &mut McpCall) -> Result<Message, McpError> {
    let id = usable_id(message);
    let invalid = |detail: &str| McpError::InvalidRequest {
        id: id.clone(),
        detail: detail.to_string(),
    };
    let Value::Object(obj) = message else {
        return Err(invalid("a JSON-RPC message must be an object"));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    match obj.get("id") {
        None | Some(Value::String(_)) => {}
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        Some(_) => return Err(invalid("\"id\" must be a string or an integer")),
    }
    match obj.get("method") {
        Some(Value::String(method)) => {
            if !is_valid_method(method) {
                return Err(invalid("\"method\" must be 1-128 characters of A-Z a-z 0-9 _ - . /"));
            }
            if obj.contains_key("result") || obj.contains_key("error") {
                return Err(invalid("a request must not carry \"result\" or \"error\""));
            }
            match obj.get("params") {
                None | Some(Value::Object(_)) | Some(Value::Array(_)) => {}
                Some(_) => return Err(invalid("\"params\" must be an object or an array")),
            }
            let invalid_params = |detail: String| McpError::InvalidParams { id: id.clone(), detail };
            let name = match method.as_str() {
                "tools/call" => {
                    let tool = named(obj, "tools/call", "tool").map_err(invalid_params)?;
                    call.tools.insert(tool.to_string());
                    Some(tool.to_string())
                }
                "prompts/get" => {
                    let prompt = named(obj, "prompts/get", "prompt").map_err(invalid_params)?;
                    call.prompts.insert(prompt.to_string());
                    Some(prompt.to_string())
                }
                "resources/read" => Some(resource_uri(obj).map_err(invalid_params)?.to_string()),
                _ => None,
            };
            call.methods.insert(method.clone());
            let meta = obj
                .get("params")
                .and_then(|p| p.get("_meta"))
                .and_then(Value::as_object);
            Ok(Message {
                method: Some(method.clone()),
                is_request: obj.contains_key("id"),
                name,
                protocol_version: meta
                    .and_then(|m| m.get(META_PROTOCOL_VERSION))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                client_info: meta.and_then(|m| m.get(META_CLIENT_INFO)).cloned(),
            })
        }
        Some(_) => Err(invalid("\"method\" must be a string")),
        None => {
            // A response to a server-initiated request (sampling, elicitation, roots): it calls nothing.
            let has_result = obj.contains_key("result");
            let has_error = obj.contains_key("error");
            if has_result == has_error {
                return Err(invalid(
                    "a message needs \"method\", or exactly one of \"result\" and \"error\"",
                ));
            }
            if id.is_none() {
                return Err(invalid("a response must carry the \"id\" it answers"));
            }
            call.has_responses = true;
            Ok(Message::default())
        }
    }
}

/// `params.name` of a `tools/call` or `prompts/get`, under MCP's name rules (a name becomes part of the scope).
fn named<'a>(obj: &'a Map<String, Value>, method: &str, what: &str) -> Result<&'a str, String> {
    let params = obj
        .get("params")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{method} needs \"params\" as an object"))?;
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{method} needs \"params.name\" as a string"))?;
    if !is_valid_tool_name(name) {
        return Err(format!("{what} name must be 1-128 characters of A-Z a-z 0-9 _ - ."));
    }
    Ok(name)
}

/// `params.uri` of a `resources/read`. URIs are not scope tokens (they hold any character): the scope stays
/// `mcp:resources/read`, and the URI is only compared with `Mcp-Name`.
fn resource_uri(obj: &Map<String, Value>) -> Result<&str, String> {
    let uri = obj
        .get("params")
        .and_then(Value::as_object)
        .and_then(|p| p.get("uri"))
        .and_then(Value::as_str)
        .ok_or_else(|| "resources/read needs \"params.uri\" as a string".to_string())?;
    if uri.is_empty() || uri.len() > MAX_URI_LEN {
        return Err(format!("resource URI must be 1-{MAX_URI_LEN} bytes"));
    }
    Ok(uri)
}

/// MCP tool-name rules (prompts use them too): 1-128 of `A-Z a-z 0-9 _ - .`. Anything else (a space would inject
/// a scope) is refused.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=MAX_TOOL_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// JSON-RPC method names as MCP uses them (`tools/call`, `notifications/initialized`): the tool-name
/// characters plus `/`. The method becomes part of the scope, so separators are never allowed.
pub fn is_valid_method(method: &str) -> bool {
    (1..=MAX_METHOD_LEN).contains(&method.len())
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(body: &str) -> McpCall {
        parse_body(body.as_bytes()).unwrap()
    }

    fn err(body: &[u8]) -> McpError {
        parse_body(body).unwrap_err()
    }

    #[test]
    fn tools_call_names_method_and_tool() {
        let c =
            call(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{}}}"#);
        assert_eq!(c.methods, BTreeSet::from(["tools/call".to_string()]));
        assert_eq!(c.tools, BTreeSet::from(["get_weather".to_string()]));
        assert_eq!(c.id, Some(json!(1)));
    }

    #[test]
    fn notification_and_response_are_accepted() {
        let c = call(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(c.methods.contains("notifications/initialized"));
        let c = call(r#"{"jsonrpc":"2.0","id":"s-1","result":{}}"#);
        assert!(c.methods.is_empty() && c.has_responses);
    }

    #[test]
    fn batch_is_the_union() {
        let c = call(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
                {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a"}},
                {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b.c"}}]"#,
        );
        assert_eq!(c.methods.len(), 2);
        assert_eq!(c.tools, BTreeSet::from(["a".to_string(), "b.c".to_string()]));
        assert_eq!(c.id, None);
    }

    #[test]
    fn bad_json_is_a_parse_error() {
        for body in [
            &b""[..],
            b" \n\t",
            b"{",
            b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"method\":\"x\"}",
            b"{\"jsonrpc\":\"2.0\",\"method\":\"x\",\"method\":\"y\"}",
        ] {
            assert!(
                matches!(err(body), McpError::Parse(_)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn not_json_rpc_is_invalid_request() {
        for body in [
            r#"{"foo":1}"#,
            r#"[]"#,
            r#""x""#,
            r#"42"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list mcp:admin"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 5]"#,
        ] {
            assert!(
                matches!(err(body.as_bytes()), McpError::InvalidRequest { .. }),
                "{body}"
            );
        }
    }

    #[test]
    fn bad_tool_names_are_refused_never_sanitised() {
        let long = "x".repeat(129);
        for name in [
            "get weather",
            "a b",
            long.as_str(),
            "",
            "évil",
            "a\tb",
            "x:call",
            "a/b",
            "mcp:admin",
        ] {
            let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":name}}).to_string();
            match err(body.as_bytes()) {
                McpError::InvalidParams { id, .. } => assert_eq!(id, Some(json!(7))),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        // An escaped space decodes into a space: still refused.
        let e = err(br#"{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{"name":"tool\u0020x"}}"#);
        assert!(matches!(e, McpError::InvalidParams { .. }));
        assert_eq!(e.id(), Some(&json!("q")));
        assert!(is_valid_tool_name(&"x".repeat(128)));
    }

    #[test]
    fn tools_call_without_a_name_is_invalid_params() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["get_weather"]}"#,
        ] {
            assert!(matches!(err(body.as_bytes()), McpError::InvalidParams { .. }), "{body}");
        }
    }

    #[test]
    fn refused_ids_are_not_echoed() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1180591620717411303424,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1e2,"method":"ping"}"#,
        ] {
            let e = err(body.as_bytes());
            assert!(matches!(e, McpError::InvalidRequest { .. }), "{body}");
            assert_eq!(e.id(), None, "{body}");
        }
    }

    #[test]
    fn integer_ids_of_either_sign_are_accepted_and_echoed() {
        // i64-only (negative) and u64-only (above i64::MAX) integers are both exact JSON-RPC ids.
        for id in ["-5", "18446744073709551615", "0", "7"] {
            let ok = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            assert_eq!(call(&ok).id, Some(serde_json::from_str::<Value>(id).unwrap()), "{ok}");
            // A refused request still echoes the id it carried.
            let bad = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"a b"}}}}"#);
            assert_eq!(
                err(bad.as_bytes()).id(),
                Some(&serde_json::from_str::<Value>(id).unwrap()),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_request_with_either_result_or_error_is_refused() {
        for extra in [r#""result":{}"#, r#""error":{"code":1,"message":"x"}"#] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping",{extra}}}"#);
            assert!(
                matches!(err(body.as_bytes()), McpError::InvalidRequest { .. }),
                "{body}"
            );
        }
    }

    #[test]
    fn resource_uris_are_bounded_at_max_uri_len() {
        let read = |uri: &str| {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}});
            parse_body(body.to_string().as_bytes())
        };
        assert_eq!(MAX_URI_LEN, 8192);
        assert!(read(&"u".repeat(MAX_URI_LEN)).is_ok());
        assert!(read(&"u".repeat(2000)).is_ok());
        assert!(matches!(
            read(&"u".repeat(MAX_URI_LEN + 1)),
            Err(McpError::InvalidParams { .. })
        ));
        assert!(matches!(read(""), Err(McpError::InvalidParams { .. })));
        assert!(read("u").is_ok());
    }

    #[test]
    fn one_bad_batch_element_refuses_the_batch() {
        let e = err(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a b"}}]"#);
        assert!(matches!(e, McpError::InvalidParams { id: None, .. }));
    }
}
