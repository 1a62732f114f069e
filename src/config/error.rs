//! Why a configuration was refused, and the redaction that keeps key material out of the message. A leaf: it
//! imports nothing from the rest of the filter, so every module can report configuration errors.

use std::fmt;

/// A refused configuration. The message names the field; it never includes key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field's path (`identity.subject[1]`, `token_cache.max_bytes`, `(root)`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid plugin configuration: field `{}`: {}",
            self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// Longest operator-written text an error message repeats.
const MAX_SHOWN: usize = 64;

/// Operator-written text for an error message: configuration must never echo key material into Envoy's log,
/// and a PEM can land in any field by mistake. Text is shown only when it looks like a name or a source (at most
/// 64 characters, no upper-case letters, no `+`, `=` or whitespace: never base64 key material).
pub fn shown(text: &str) -> String {
    let looks_like_a_name = (1..=MAX_SHOWN).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.:/~@".contains(c));
    if looks_like_a_name {
        text.to_string()
    } else {
        format!("<{} bytes, not shown>", text.len())
    }
}

/// serde_json errors quote the offending string value (`invalid type: string "-----BEGIN..."`). A PEM in the
/// wrong field would then land in Envoy's log: keep only the error's category and position.
pub(crate) fn redact_serde_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if let Some(rest) = text.strip_prefix("unknown field `") {
        // "unknown field `NAME`, expected one of `a`, `b`": NAME is operator text and may hold anything, backticks
        // included, so split at serde's own suffix (the last one: it follows the name), never at the first '`'.
        let (name, expected) = match ["`, expected ", "`, there are no fields"]
            .iter()
            .filter_map(|suffix| rest.rfind(suffix))
            .max()
        {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest.trim_end_matches('`'), ""),
        };
        return format!("unknown field `{}`{}", shown(name), expected);
    }
    match text.find(['"', '`']) {
        Some(i) => format!(
            "{} (value not shown) at line {} column {}",
            text[..i].trim_end(),
            e.line(),
            e.column()
        ),
        None => text,
    }
}

/// The path of a serde error, with map keys shown only when they look like names.
pub(crate) fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&shown(key));
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&shown(variant));
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    if out.is_empty() {
        "(root)".to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shown_and_key_material_is_not() {
        assert_eq!(shown("identity.subject"), "identity.subject");
        assert_eq!(shown("MIIEvQIBADANBgkq"), "<16 bytes, not shown>");
        assert_eq!(shown(&"a".repeat(65)), "<65 bytes, not shown>");
        assert_eq!(shown(""), "<0 bytes, not shown>");
    }
}
