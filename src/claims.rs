//! The claim set of a minted token, and the least-privilege `scope` derived from what the request calls.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::identity::Identity;
use crate::mcp::McpCall;

/// What kind of MCP transport request is being signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A POST with JSON-RPC messages.
    Messages(McpCall),
    /// A GET opening the server-to-client SSE stream.
    Stream,
    /// A DELETE ending the session.
    SessionDelete,
}

/// Scope of a GET (the SSE stream that carries server-initiated messages).
pub const STREAM_SCOPE: &str = "mcp:stream";
/// Scope of a DELETE (session termination).
pub const SESSION_DELETE_SCOPE: &str = "mcp:session:delete";
/// Scope of a POST that carries only JSON-RPC responses (answers to sampling, elicitation, roots requests).
pub const RESPONSES_SCOPE: &str = "mcp:responses";

/// Least-privilege scope: `mcp:<method>` for every method called, plus `mcp:tools/<name>:call` for every tool,
/// sorted and space-separated. Method and tool names were validated to contain no separators.
pub fn scope(call: &Call) -> String {
    match call {
        Call::Stream => STREAM_SCOPE.to_string(),
        Call::SessionDelete => SESSION_DELETE_SCOPE.to_string(),
        Call::Messages(m) => {
            let mut scopes: BTreeSet<String> = m
                .methods
                .iter()
                .map(|method| format!("mcp:{method}"))
                .collect();
            scopes.extend(m.tools.iter().map(|tool| format!("mcp:tools/{tool}:call")));
            if m.has_responses {
                scopes.insert(RESPONSES_SCOPE.to_string());
            }
            scopes.into_iter().collect::<Vec<_>>().join(" ")
        }
    }
}

/// RFC 8693 `act` (actor) claim: who acts on behalf of `sub`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub sub: String,
}

/// The JWT claim set, serialised in this field order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub act: Actor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub scope: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

/// Everything a claim set is made of.
pub struct ClaimInputs<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    /// `actor` from the configuration: `act.sub` without a team/org, and `sub` without a user.
    pub default_actor: &'a str,
    pub identity: &'a Identity,
    pub scope: String,
    pub now: u64,
    pub ttl_seconds: u64,
    pub jti: String,
}

pub fn build(inputs: ClaimInputs<'_>) -> Claims {
    let id = inputs.identity;
    Claims {
        iss: inputs.issuer.to_string(),
        aud: inputs.audience.to_string(),
        sub: id
            .subject
            .clone()
            .unwrap_or_else(|| inputs.default_actor.to_string()),
        act: Actor {
            sub: id
                .actor
                .clone()
                .unwrap_or_else(|| inputs.default_actor.to_string()),
        },
        email: id.email.clone(),
        scope: inputs.scope,
        iat: inputs.now,
        nbf: inputs.now,
        exp: inputs.now.saturating_add(inputs.ttl_seconds),
        jti: inputs.jti,
    }
}

/// A fresh `jti`: 128 random bits, base64url.
pub fn new_jti() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(crate::b64::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::parse_body;

    fn scope_of(body: &str) -> String {
        scope(&Call::Messages(parse_body(body.as_bytes()).unwrap()))
    }

    #[test]
    fn tools_call_scope_is_least_privilege() {
        assert_eq!(
            scope_of(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#
            ),
            "mcp:tools/call mcp:tools/get_weather:call"
        );
        assert_eq!(
            scope_of(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            "mcp:tools/list"
        );
    }

    #[test]
    fn batch_scope_is_the_union() {
        assert_eq!(
            scope_of(
                r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"b"}},
                    {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"a"}},
                    {"jsonrpc":"2.0","method":"notifications/initialized"},
                    {"jsonrpc":"2.0","id":"x","result":{}}]"#
            ),
            "mcp:notifications/initialized mcp:responses mcp:tools/a:call mcp:tools/b:call mcp:tools/call"
        );
    }

    #[test]
    fn transport_requests_have_fixed_scopes() {
        assert_eq!(scope(&Call::Stream), "mcp:stream");
        assert_eq!(scope(&Call::SessionDelete), "mcp:session:delete");
    }

    #[test]
    fn defaults_fill_missing_identity() {
        let anonymous = Identity::default();
        let c = build(ClaimInputs {
            issuer: "https://gw",
            audience: "mcp",
            default_actor: "mcp-gateway",
            identity: &anonymous,
            scope: "mcp:ping".into(),
            now: 1000,
            ttl_seconds: 300,
            jti: "j".into(),
        });
        assert_eq!(c.sub, "mcp-gateway");
        assert_eq!(c.act.sub, "mcp-gateway");
        assert_eq!((c.iat, c.nbf, c.exp), (1000, 1000, 1300));
        let json = serde_json::to_value(&c).unwrap();
        assert!(json.get("email").is_none());

        let known = Identity {
            subject: Some("alice".into()),
            email: Some("a@x".into()),
            actor: Some("team-1".into()),
        };
        let c = build(ClaimInputs {
            issuer: "https://gw",
            audience: "mcp",
            default_actor: "mcp-gateway",
            identity: &known,
            scope: String::new(),
            now: 0,
            ttl_seconds: 1,
            jti: "j".into(),
        });
        assert_eq!(
            (c.sub.as_str(), c.act.sub.as_str(), c.email.as_deref()),
            ("alice", "team-1", Some("a@x"))
        );
    }

    #[test]
    fn jti_is_unique() {
        let a = new_jti().unwrap();
        assert_eq!(a.len(), 22);
        assert_ne!(a, new_jti().unwrap());
    }
}
