//! The debug header (`debug_header`, off by default): a one-line summary of the minted token for the upstream, in
//! LiteLLM's format, `v=1; kid=<kid>; sub=<sub>; iss=<iss>; exp=<exp>; scope=<scope>`, with `scope` cut to
//! [`DEBUG_SCOPE_CHARS`] characters (the last three `...`). Never the token itself, and sent upstream only.
//!
//! Values that could break the header or its `k=v; ` format are escaped, not refused (a refused request would hide
//! the very token the header is there to explain): every byte outside printable ASCII (controls, DEL, non-ASCII
//! UTF-8), `%` and `;` become `%XX`. Spaces stay (scopes are space-separated). For the values the filter itself
//! computes (ASCII identities, URLs, scope tokens) the output is exactly LiteLLM's.

use serde_json::{Map, Value};

use crate::config::defaults::DEBUG_SCOPE_CHARS;

/// The debug header's value for a token signed with key `kid` whose payload is `claims`.
pub fn summary(kid: &str, claims: &Map<String, Value>) -> String {
    let text = |name: &str| match claims.get(name) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let mut scope = text("scope");
    if scope.chars().count() > DEBUG_SCOPE_CHARS {
        scope = scope.chars().take(DEBUG_SCOPE_CHARS - 3).collect::<String>() + "...";
    }
    format!(
        "v=1; kid={}; sub={}; iss={}; exp={}; scope={}",
        escape(kid),
        escape(&text("sub")),
        escape(&text("iss")),
        escape(&text("exp")),
        escape(&scope)
    )
}

/// The payload of a compact JWS the filter signed (for the debug summary of a cached token).
pub fn payload_of(jwt: &str) -> Option<Map<String, Value>> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'%' | b';' => out.push_str(&format!("%{b:02X}")),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn litellm_format() {
        let c = claims(
            json!({"sub": "alice", "iss": "https://gw.example.com", "exp": 1700000300,
                              "scope": "mcp:tools/call mcp:tools/get_weather:call"}),
        );
        assert_eq!(
            summary("kid-1", &c),
            "v=1; kid=kid-1; sub=alice; iss=https://gw.example.com; exp=1700000300; \
             scope=mcp:tools/call mcp:tools/get_weather:call"
        );
    }

    #[test]
    fn scope_is_cut_at_80_characters() {
        let long = (0..10)
            .map(|i| format!("mcp:tools/tool_{i}:call"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(long.len() > 80);
        let s = summary("k", &claims(json!({"scope": long})));
        let scope = s.split("scope=").nth(1).unwrap();
        assert_eq!(scope.chars().count(), 80);
        assert_eq!(scope, format!("{}...", &long[..77]));
        let exactly = "a".repeat(80);
        assert!(summary("k", &claims(json!({"scope": exactly}))).ends_with(&format!("scope={exactly}")));
    }

    #[test]
    fn header_breaking_values_are_escaped() {
        let c = claims(json!({"sub": "a\r\nx-injected: 1", "iss": "i;j%", "exp": 5, "scope": "s"}));
        let s = summary("k", &c);
        assert_eq!(s, "v=1; kid=k; sub=a%0D%0Ax-injected: 1; iss=i%3Bj%25; exp=5; scope=s");
        assert!(s.bytes().all(|b| (0x20..0x7f).contains(&b)));
        assert_eq!(
            summary("k", &claims(json!({"sub": "müller"}))),
            "v=1; kid=k; sub=m%C3%BCller; iss=; exp=; scope="
        );
    }

    #[test]
    fn payload_round_trip() {
        let payload = crate::crypto::b64::encode(br#"{"sub":"a"}"#);
        assert_eq!(payload_of(&format!("h.{payload}.s")).unwrap()["sub"], "a");
        assert!(payload_of("nope").is_none());
    }
}
