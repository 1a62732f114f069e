//! The claim set of a minted token, and the least-privilege `scope` derived from what the request calls.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::config::ClaimShaping;
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

impl Call {
    /// Tools this request calls.
    pub fn tools(&self) -> impl Iterator<Item = &String> {
        match self {
            Call::Messages(m) => Some(m.tools.iter()),
            _ => None,
        }
        .into_iter()
        .flatten()
    }
}

/// Scope of a GET (the SSE stream that carries server-initiated messages).
pub const STREAM_SCOPE: &str = "mcp:stream";
/// Scope of a DELETE (session termination).
pub const SESSION_DELETE_SCOPE: &str = "mcp:session:delete";
/// Scope of a POST that carries only JSON-RPC responses (answers to sampling, elicitation, roots requests).
pub const RESPONSES_SCOPE: &str = "mcp:responses";

/// Least-privilege scope: `mcp:<method>` for every method called, plus `mcp:tools/<name>:call` for every tool and
/// `mcp:prompts/<name>:get` for every prompt, sorted and space-separated. Method, tool and prompt names were
/// validated to contain no separators. Resource URIs are not scope tokens (they may hold any character):
/// `resources/read` is scoped `mcp:resources/read`.
pub fn scope(call: &Call) -> String {
    match call {
        Call::Stream => STREAM_SCOPE.to_string(),
        Call::SessionDelete => SESSION_DELETE_SCOPE.to_string(),
        Call::Messages(m) => {
            let mut scopes: BTreeSet<String> = m.methods.iter().map(|method| format!("mcp:{method}")).collect();
            scopes.extend(m.tools.iter().map(|tool| format!("mcp:tools/{tool}:call")));
            scopes.extend(m.prompts.iter().map(|prompt| format!("mcp:prompts/{prompt}:get")));
            if m.has_responses {
                scopes.insert(RESPONSES_SCOPE.to_string());
            }
            scopes.into_iter().collect::<Vec<_>>().join(" ")
        }
    }
}

/// Everything a claim set is made of except time and `jti`.
pub struct ClaimInputs<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// `actor` from the configuration: `act.sub` without a team/org, and `sub` without a user.
    pub default_actor: &'a str,
    /// Who is calling.
    pub identity: &'a Identity,
    /// The least-privilege scope.
    pub scope: String,
    /// Values for `copy_claims`, in order (already resolved).
    pub copied: Vec<(String, Value)>,
}

/// The claims that do not depend on the time: the token cache's key. `serde_json::Map` is ordered by key, so
/// its JSON text is canonical.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelessClaims(pub Map<String, Value>);

impl TimelessClaims {
    /// The claim set for `inputs`, with `add_claims` applied.
    pub fn build(inputs: ClaimInputs<'_>, shaping: &ClaimShaping) -> TimelessClaims {
        let id = inputs.identity;
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(inputs.issuer));
        claims.insert("aud".into(), json!(inputs.audience));
        claims.insert(
            "sub".into(),
            json!(id.subject.as_deref().unwrap_or(inputs.default_actor)),
        );
        claims.insert(
            "act".into(),
            json!({"sub": id.actor.as_deref().unwrap_or(inputs.default_actor)}),
        );
        if let Some(email) = &id.email {
            claims.insert("email".into(), json!(email));
        }
        claims.insert("scope".into(), json!(inputs.scope));
        for (name, value) in inputs.copied {
            claims.insert(name, value);
        }
        for (name, value) in &shaping.add {
            claims.insert(name.clone(), value.clone());
        }
        TimelessClaims(claims)
    }

    /// Canonical text for cache lookups (`None` if it cannot be serialised: then the token is not cached).
    pub fn cache_key(&self) -> Option<String> {
        serde_json::to_string(&self.0).ok()
    }

    /// The final claim set: time and `jti` stamped, then the operator's overrides and removals.
    pub fn stamp(&self, now: u64, ttl_seconds: u64, jti: String, shaping: &ClaimShaping) -> Map<String, Value> {
        let mut claims = self.0.clone();
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now.saturating_add(ttl_seconds)));
        claims.insert("jti".into(), json!(jti));
        for (name, value) in &shaping.override_ {
            claims.insert(name.clone(), value.clone());
        }
        for name in &shaping.remove {
            claims.remove(name);
        }
        claims
    }
}

/// A fresh `jti`: 128 random bits, base64url.
pub fn new_jti() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(crate::crypto::b64::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::mcp::parse_body;

    fn scope_of(body: &str) -> String {
        scope(&Call::Messages(parse_body(body.as_bytes()).unwrap()))
    }

    #[test]
    fn tools_call_scope_is_least_privilege() {
        assert_eq!(
            scope_of(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#),
            "mcp:tools/call mcp:tools/get_weather:call"
        );
        assert_eq!(
            scope_of(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            "mcp:tools/list"
        );
    }

    #[test]
    fn prompts_and_resources() {
        assert_eq!(
            scope_of(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"code_review"}}"#),
            "mcp:prompts/code_review:get mcp:prompts/get"
        );
        assert_eq!(
            scope_of(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a b"}}"#),
            "mcp:resources/read"
        );
        assert_eq!(
            scope_of(r#"{"jsonrpc":"2.0","id":1,"method":"server/discover"}"#),
            "mcp:server/discover"
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

    fn inputs<'a>(identity: &'a Identity, copied: Vec<(String, Value)>) -> ClaimInputs<'a> {
        ClaimInputs {
            issuer: "https://gw",
            audience: "mcp",
            default_actor: "mcp-gateway",
            identity,
            scope: "mcp:ping".into(),
            copied,
        }
    }

    #[test]
    fn defaults_fill_missing_identity() {
        let anonymous = Identity::default();
        let c = TimelessClaims::build(inputs(&anonymous, vec![]), &ClaimShaping::default()).stamp(
            1000,
            300,
            "j".into(),
            &ClaimShaping::default(),
        );
        assert_eq!(c["sub"], "mcp-gateway");
        assert_eq!(c["act"]["sub"], "mcp-gateway");
        assert_eq!(
            (c["iat"].as_u64(), c["nbf"].as_u64(), c["exp"].as_u64()),
            (Some(1000), Some(1000), Some(1300))
        );
        assert!(c.get("email").is_none());

        let known = Identity {
            subject: Some("alice".into()),
            email: Some("a@x".into()),
            actor: Some("team-1".into()),
        };
        let c = TimelessClaims::build(inputs(&known, vec![]), &ClaimShaping::default());
        assert_eq!(
            (&c.0["sub"], &c.0["act"]["sub"], &c.0["email"]),
            (&json!("alice"), &json!("team-1"), &json!("a@x"))
        );
    }

    #[test]
    fn shaping_copies_adds_overrides_and_removes() {
        let cfg = Config::parse(
            br#"{"copy_claims":{"groups":"jwt:groups"},"add_claims":{"tenant":"acme"},
                 "override_claims":{"iss":"https://other","tier":"gold"},"remove_claims":["email","nbf"]}"#,
        )
        .unwrap();
        let who = Identity {
            subject: Some("alice".into()),
            email: Some("a@x".into()),
            actor: None,
        };
        let timeless = TimelessClaims::build(inputs(&who, vec![("groups".into(), json!(["admins"]))]), &cfg.claims);
        let c = timeless.stamp(5, 10, "j".into(), &cfg.claims);
        assert_eq!(c["groups"], json!(["admins"]));
        assert_eq!(c["tenant"], "acme");
        assert_eq!(c["iss"], "https://other");
        assert_eq!(c["tier"], "gold");
        assert!(c.get("email").is_none() && c.get("nbf").is_none());
        assert_eq!(c["exp"], 15);
    }

    #[test]
    fn cache_key_ignores_time_and_jti_but_not_claims() {
        let alice = Identity {
            subject: Some("alice".into()),
            ..Default::default()
        };
        let shaping = ClaimShaping::default();
        let timeless = TimelessClaims::build(inputs(&alice, vec![]), &shaping);
        let key = timeless.cache_key().unwrap();
        // Two tokens of these claims, minted at other times with other jtis, differ in exactly the time claims and
        // jti, and the key is the JSON of what they have in common: none of those four claims is part of it.
        let early = timeless.stamp(1000, 300, "jti-1".into(), &shaping);
        let late = timeless.stamp(2000, 300, "jti-2".into(), &shaping);
        let differing: Vec<&str> = early
            .keys()
            .filter(|k| early[k.as_str()] != late[k.as_str()])
            .map(String::as_str)
            .collect();
        assert_eq!(differing, ["exp", "iat", "jti", "nbf"]);
        let mut common = early.clone();
        for claim in differing {
            common.remove(claim);
        }
        assert_eq!(key, serde_json::to_string(&common).unwrap());
        // Every claim that is not time or jti changes the key.
        let bob = Identity {
            subject: Some("bob".into()),
            ..Default::default()
        };
        let mailed = Identity {
            email: Some("a@x".into()),
            ..alice.clone()
        };
        let acting = Identity {
            actor: Some("team-1".into()),
            ..alice.clone()
        };
        let added = Config::parse(br#"{"add_claims":{"tenant":"acme"}}"#).unwrap().claims;
        let variants = [
            TimelessClaims::build(inputs(&bob, vec![]), &shaping),
            TimelessClaims::build(inputs(&mailed, vec![]), &shaping),
            TimelessClaims::build(inputs(&acting, vec![]), &shaping),
            TimelessClaims::build(inputs(&alice, vec![("g".into(), json!(1))]), &shaping),
            TimelessClaims::build(inputs(&alice, vec![]), &added),
            TimelessClaims::build(
                ClaimInputs {
                    audience: "https://weather.example.com/mcp",
                    ..inputs(&alice, vec![])
                },
                &shaping,
            ),
            TimelessClaims::build(
                ClaimInputs {
                    issuer: "https://other-gw",
                    ..inputs(&alice, vec![])
                },
                &shaping,
            ),
            TimelessClaims::build(
                ClaimInputs {
                    scope: "mcp:tools/list".into(),
                    ..inputs(&alice, vec![])
                },
                &shaping,
            ),
        ];
        let mut keys: Vec<String> = variants.iter().map(|v| v.cache_key().unwrap()).collect();
        keys.push(key);
        let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:#?}");
    }

    #[test]
    fn shaping_rules_are_enforced_at_load() {
        for (cfg, field) in [
            (r#"{"copy_claims":{"sub":"jwt:sub"}}"#, "copy_claims.sub"),
            (r#"{"copy_claims":{"g":"nope"}}"#, "copy_claims.g"),
            (r#"{"add_claims":{"exp":1}}"#, "add_claims.exp"),
            (r#"{"override_claims":{"scope":"mcp:*"}}"#, "override_claims.scope"),
            (r#"{"override_claims":{"exp":"soon"}}"#, "override_claims.exp"),
            (r#"{"remove_claims":["iss"]}"#, "remove_claims[0]"),
            (r#"{"remove_claims":["scope"]}"#, "remove_claims[0]"),
        ] {
            assert_eq!(Config::parse(cfg.as_bytes()).unwrap_err().field, field, "{cfg}");
        }
    }

    #[test]
    fn jti_is_unique() {
        let a = new_jti().unwrap();
        assert_eq!(a.len(), 22);
        assert_ne!(a, new_jti().unwrap());
    }
}
