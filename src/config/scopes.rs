//! `fixed_scopes`: a scope list that replaces the computed least-privilege `scope` (LiteLLM's `allowed_scopes`),
//! plugin-wide here and per route in route metadata.
//!
//! The default stays least privilege: a token that names only what this request calls is useless for anything
//! else if it leaks or is replayed, and the MCP server can check each tool against `scope`. A fixed list grants
//! the same scope to every request, so use it only for a server that checks a fixed scope and cannot be taught the
//! per-tool ones. Each entry must be an RFC 6749 scope token (printable ASCII, no space, `"` or `\`), which also
//! keeps it safe in the debug header and in `WWW-Authenticate` challenges.

use super::defaults::{MAX_FIXED_SCOPES, MAX_FIXED_SCOPE_BYTES};
use super::error::ConfigError;

/// Why a scope list is refused (fixed text: route metadata errors must not echo the operator's values).
pub fn check_scope_list<'a>(entries: impl ExactSizeIterator<Item = &'a str>) -> Result<(), &'static str> {
    if entries.len() == 0 {
        return Err("`fixed_scopes` must not be empty (remove it for least-privilege scopes)");
    }
    if entries.len() > MAX_FIXED_SCOPES {
        return Err("`fixed_scopes` has too many entries (at most 64)");
    }
    let mut seen: Vec<&str> = Vec::new();
    for entry in entries {
        if !is_scope_token(entry) {
            return Err("`fixed_scopes` entries must be 1-256 printable ASCII characters without spaces, `\"` or `\\`");
        }
        if seen.contains(&entry) {
            return Err("`fixed_scopes` lists an entry twice");
        }
        seen.push(entry);
    }
    Ok(())
}

/// RFC 6749 section 3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_token(text: &str) -> bool {
    (1..=MAX_FIXED_SCOPE_BYTES).contains(&text.len())
        && text
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// `fixed_scopes` from the plugin configuration.
pub(crate) fn fixed_scopes(raw: Option<Vec<String>>) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(list) = raw else { return Ok(None) };
    check_scope_list(list.iter().map(String::as_str)).map_err(|reason| ConfigError::new("fixed_scopes", reason))?;
    Ok(Some(list))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn entries_are_checked_at_load() {
        let c = Config::parse(br#"{"fixed_scopes":["mcp:tools/call","mcp:tools/list"]}"#).unwrap();
        assert_eq!(c.fixed_scopes.unwrap(), ["mcp:tools/call", "mcp:tools/list"]);
        assert!(Config::parse(b"{}").unwrap().fixed_scopes.is_none());
        for bad in [
            r#"[]"#,
            r#"["a b"]"#,
            r#"["a\tb"]"#,
            r#"["a\u0000"]"#,
            r#"[""]"#,
            r#"["caf\u00e9"]"#,
            r#"["say\"hi"]"#,
            r#"["back\\slash"]"#,
            r#"["x","x"]"#,
            r#"[1]"#,
        ] {
            let e = Config::parse(format!(r#"{{"fixed_scopes":{bad}}}"#).as_bytes()).unwrap_err();
            assert!(e.field.starts_with("fixed_scopes"), "{bad}: {e}");
        }
        let long = format!(r#"{{"fixed_scopes":["{}"]}}"#, "a".repeat(257));
        assert_eq!(Config::parse(long.as_bytes()).unwrap_err().field, "fixed_scopes");
    }
}
