//! JSON parsing that refuses what two parsers could read differently.
//!
//! serde_json keeps the *last* of two duplicate keys; other JSON parsers keep the first. Go's `encoding/json`
//! (behind mcp-go and the Go MCP SDK before CVE-2026-27896) goes further: it matches object keys to struct
//! fields case-insensitively, the last match winning, and folds `ſ` (U+017F) to `s` and `K` (U+212A) to `k`. If
//! the filter scoped a token from one `"name"` and the MCP server executed another (`"Name"`, `"NAME"`,
//! `"nAmE"`), a caller could run a tool the token does not name. So this module refuses, at any depth:
//! - a repeated key (after escapes are decoded: `"name"` is `"name"`);
//! - two keys of one object that are equal under Unicode case folding ([`fold_key`]).
//!
//! No maintained crate offers "serde_json::Value, but duplicate or case-colliding keys are an error", so this is
//! a small serde `Visitor` that builds a `Value`. Everything else that parsers read differently (invalid UTF-8,
//! lone surrogates, numbers out of range such as `1e400`, a leading BOM, comments, trailing commas, `NaN`,
//! trailing bytes, nesting deeper than 128) is refused by serde_json itself; `docs/security.md` lists each
//! behaviour and the parsers it defends against.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses a complete JSON text, refusing duplicate object keys.
pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<StrictValue>(bytes).map(|v| v.0)
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        // The folded form of every key so far, with the key it came from.
        let mut folded: Vec<(String, String)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key \"{}\"", shown(&key))));
            }
            let fold = fold_key(&key);
            if let Some((_, earlier)) = folded.iter().find(|(f, _)| *f == fold) {
                return Err(de::Error::custom(format_args!(
                    "keys \"{}\" and \"{}\" differ only in letter case (a case-insensitive parser reads them as one)",
                    shown(earlier),
                    shown(&key)
                )));
            }
            folded.push((fold, key.clone()));
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A key as error messages show it: at most 32 characters, escaped.
fn shown(key: &str) -> String {
    key.chars().take(32).flat_map(char::escape_default).collect()
}

/// A key folded so that two keys a case-insensitive matcher could confuse fold alike: each character is mapped
/// to the lower case of its (single-character) upper case, which joins every Unicode simple case folding orbit
/// that the standard library's mappings connect: `K`/`k`/`K` (Kelvin, U+212A), `S`/`s`/`ſ` (long s, U+017F),
/// `Σ`/`σ`/`ς`, `ẞ`/`ß`. It joins a few characters simple folding keeps apart (dotless `ı` with `i`), which
/// only makes the check refuse slightly more; it never joins less than Go's `encoding/json` does for the ASCII
/// field names MCP servers decode into.
pub fn fold_key(key: &str) -> String {
    if key.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return key.to_string();
    }
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        let mut upper = c.to_uppercase();
        let single_upper = match (upper.next(), upper.next()) {
            (Some(u), None) => u,
            _ => c,
        };
        let mut lower = single_upper.to_lowercase();
        match (lower.next(), lower.next()) {
            (Some(l), None) => out.push(l),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_json() {
        let text = br#" {"a":[1,-2,3.5,"x",true,false,null,{"b":{}},[],18446744073709551615,"\u00e9\n"],"c":0.25} "#;
        let v = parse(text).unwrap();
        assert_eq!(v["a"][3], "x");
        assert_eq!(v["a"][1], -2);
        // Every value as serde_json itself reads it: numbers of each kind, booleans, null, strings with escapes,
        // empty containers.
        assert_eq!(v, serde_json::from_slice::<Value>(text).unwrap());
        assert_eq!(v["a"][2].as_f64(), Some(3.5));
        assert_eq!(v["a"][9].as_u64(), Some(u64::MAX));
        assert_eq!(v["a"][10], "\u{e9}\n");
    }

    #[test]
    fn refusals_name_the_key_escaped_and_cut_at_32_characters() {
        let e = parse(br#"{"method":"a","method":"b"}"#).unwrap_err().to_string();
        assert!(e.contains(r#"duplicate key "method""#), "{e}");
        // A control character is escaped (a log line stays one line); a long key is cut.
        let long = "k".repeat(40);
        let e = parse(format!(r#"{{"a\nb":1,"a\nb":2,"{long}":1}}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(r#"duplicate key "a\nb""#), "{e}");
        let e = parse(format!(r#"{{"{long}":1,"{long}":2}}"#).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!(r#"duplicate key "{}""#, "k".repeat(32))), "{e}");
        let e = parse(br#"{"Name":1,"name":2}"#).unwrap_err().to_string();
        assert!(
            e.contains(r#"keys "Name" and "name" differ only in letter case"#),
            "{e}"
        );
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        assert!(parse(br#"{"method":"a","method":"b"}"#).is_err());
        assert!(parse(br#"{"p":{"name":"a","name":"b"}}"#).is_err());
        assert!(parse(br#"[{"x":1},{"y":{"z":1,"z":2}}]"#).is_err());
        // An escape that decodes to the same key is the same key.
        assert!(parse(br#"{"name":"a","na\u006de":"b"}"#).is_err());
    }

    #[test]
    fn refuses_keys_that_differ_only_in_case_at_any_depth() {
        for body in [
            r#"{"params":{"name":"get_weather","Name":"delete_all"}}"#,
            r#"{"params":{"name":"a","NAME":"b"}}"#,
            r#"{"method":"tools/list","Method":"tools/call"}"#,
            r#"{"params":{},"param\u017f":{}}"#,
            "{\"params\":{},\"paramſ\":{}}",
            r#"{"k":1,"\u212a":2}"#,
            "{\"k\":1,\"\u{212a}\":2}",
            "{\"x\":[{\"a\":{\"keY\":1,\"KEY\":2}}]}",
            r#"{"\u004eame":1,"name":2}"#,
            "{\"σ\":1,\"ς\":2}",
            "{\"ß\":1,\"ẞ\":2}",
        ] {
            let e = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("differ only in letter case"), "{body}: {e}");
        }
        // Different keys that merely look alike are fine, and so are equal keys in different objects.
        for body in [
            r#"{"name":1,"names":2,"_meta":{},"meta":{}}"#,
            r#"{"a":{"name":1},"b":{"Name":2}}"#,
            r#"[{"Name":1},{"name":2}]"#,
        ] {
            assert!(parse(body.as_bytes()).is_ok(), "{body}");
        }
    }

    #[test]
    fn folding_joins_go_s_special_folds() {
        assert_eq!(fold_key("paramſ"), fold_key("params"));
        assert_eq!(fold_key("\u{212a}ey"), fold_key("key"));
        assert_eq!(fold_key("NAME"), "name");
        assert_eq!(fold_key("name"), "name");
        assert_ne!(fold_key("name"), fold_key("nam"));
    }

    #[test]
    fn refuses_what_json_does_not_allow() {
        for bad in [
            &b"\xef\xbb\xbf{}"[..],
            b"{\"a\":\"\xff\"}",
            br#"{"a":"\ud800"}"#,
            br#"{"a":1e400}"#,
            b"{} x",
            b"{'a':1}",
            b"",
            b"   ",
            b"NaN",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn refuses_deep_nesting() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(deep.as_bytes()).is_err());
    }
}
