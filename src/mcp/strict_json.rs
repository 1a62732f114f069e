//! JSON parsing that refuses what two parsers could read differently.
//!
//! serde_json keeps the *last* of two duplicate keys; other JSON parsers keep the first. If the filter scoped a
//! token from one `"name"` and the MCP server executed the other, an attacker could call a tool the token does
//! not name. No maintained crate offers "serde_json::Value, but duplicate keys are an error", so this module is
//! a small serde `Visitor` that builds a `Value` and refuses a repeated key at any depth. Everything else
//! (UTF-8 validation, lone surrogates, numbers out of range, a leading BOM, trailing bytes, nesting deeper than
//! 128) is refused by serde_json itself.

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
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown: String = key.chars().take(32).flat_map(char::escape_default).collect();
                return Err(de::Error::custom(format_args!("duplicate key \"{shown}\"")));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_json() {
        let v = parse(br#" {"a":[1,-2,3.5,"x",true,null,{"b":{}}]} "#).unwrap();
        assert_eq!(v["a"][3], "x");
        assert_eq!(v["a"][1], -2);
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
