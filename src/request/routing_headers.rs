//! MCP's routing headers (`mcp-method`, and `mcp-name` for `tools/call`) let proxies and servers route without
//! reading the body. The token is scoped from the body, so a request whose headers name another method or tool
//! is refused: nothing downstream may act on a name the token was not minted for.

use crate::claims::Call;
use crate::refusal::Refusal;

/// Checks the routing headers against the body. Headers absent: nothing to check.
pub fn check_routing_headers(call: &Call, mcp_method: &[&[u8]], mcp_name: &[&[u8]]) -> Result<(), Refusal> {
    if mcp_method.is_empty() && mcp_name.is_empty() {
        return Ok(());
    }
    if mcp_method.len() > 1 || mcp_name.len() > 1 {
        return Err(Refusal::HeaderMismatch("mcp-method or mcp-name is repeated"));
    }
    let Call::Messages(messages) = call else {
        return Ok(()); // GET and DELETE carry no JSON-RPC body to compare with
    };
    if let Some(header) = mcp_method.first() {
        let single = (!messages.batch && messages.methods.len() == 1)
            .then(|| messages.methods.first())
            .flatten();
        if single.map(String::as_bytes) != Some(*header) {
            return Err(Refusal::HeaderMismatch("mcp-method does not match the body's method"));
        }
    }
    if let Some(header) = mcp_name.first() {
        // Only tool names are read from the body; they are plain ASCII, so their header form is the name itself.
        if messages.methods.contains("tools/call")
            && (messages.batch
                || messages.tools.len() != 1
                || messages.tools.first().map(String::as_bytes) != Some(*header))
        {
            return Err(Refusal::HeaderMismatch("mcp-name does not match the body's tool name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp;

    #[test]
    fn routing_headers_must_match_the_body() {
        let tools_call = Call::Messages(
            mcp::parse_body(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#)
                .unwrap(),
        );
        assert_eq!(check_routing_headers(&tools_call, &[], &[]), Ok(()));
        assert_eq!(
            check_routing_headers(&tools_call, &[b"tools/call"], &[b"get_weather"]),
            Ok(())
        );
        for (method, name) in [
            (&[&b"tools/list"[..]][..], &[][..]),
            (&[&b"tools/call"[..]][..], &[&b"delete_all"[..]][..]),
            (&[&b"tools/call"[..], &b"tools/call"[..]][..], &[][..]),
            (&[][..], &[&b"other"[..]][..]),
        ] {
            assert!(
                matches!(
                    check_routing_headers(&tools_call, method, name),
                    Err(Refusal::HeaderMismatch(_))
                ),
                "{method:?} {name:?}"
            );
        }
        let list = Call::Messages(mcp::parse_body(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap());
        assert_eq!(check_routing_headers(&list, &[b"tools/list"], &[]), Ok(()));
        let batch = Call::Messages(mcp::parse_body(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#).unwrap());
        assert!(check_routing_headers(&batch, &[b"tools/list"], &[]).is_err());
        assert_eq!(check_routing_headers(&Call::Stream, &[b"x"], &[]), Ok(()));
    }
}
