//! Decoding of Envoy attribute values as proxy-wasm's `proxy_get_property` returns them (used by the proxy-wasm
//! adapter; other hosts hand over typed values).
//!
//! Envoy serialises a string as its raw UTF-8, a number as an 8-byte little-endian f64 (jwt_authn payloads are
//! protobuf `Struct`s, so every number is a double), a bool as one byte, and a list or map in the "pairs"
//! encoding: u32 count N, N pairs of (u32 key length, u32 value length), then each `key\0value\0`; a list puts
//! each element in the key slot with an empty value. The bytes carry no type tag and the proxy-wasm SDK has no
//! decoder, so this module recovers the JSON value by shape, most specific first:
//! pairs encoding that consumes every byte exactly → list/map; 1 byte 0x00/0x01 → bool; 8 bytes that are not
//! printable UTF-8 → number; printable UTF-8 → string. Anything else is refused.

use serde_json::{Map, Number, Value};

/// Deepest nesting decoded (a map inside a list inside ...).
const MAX_DEPTH: usize = 8;

/// Decodes one attribute value. `None`: the bytes fit no known shape.
pub fn decode(bytes: &[u8]) -> Option<Value> {
    decode_at(bytes, 0)
}

fn decode_at(bytes: &[u8], depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    if let Some(pairs) = decode_pairs(bytes) {
        if !pairs.is_empty() && pairs.iter().all(|(_, v)| v.is_empty()) {
            let items: Option<Vec<Value>> = pairs.iter().map(|(k, _)| decode_at(k, depth + 1)).collect();
            return items.map(Value::Array);
        }
        let mut map = Map::new();
        for (k, v) in pairs {
            let key = std::str::from_utf8(k).ok()?.to_string();
            map.insert(key, decode_at(v, depth + 1)?);
        }
        return Some(Value::Object(map));
    }
    match bytes {
        // An empty list or map: the pairs encoding with a zero count (the two cannot be told apart).
        [0, 0, 0, 0] => return Some(Value::Array(Vec::new())),
        [0] => return Some(Value::Bool(false)),
        [1] => return Some(Value::Bool(true)),
        _ => {}
    }
    if let Some(text) = printable_utf8(bytes) {
        return Some(Value::String(text.to_string()));
    }
    if let Ok(raw) = <[u8; 8]>::try_from(bytes) {
        let n = f64::from_le_bytes(raw);
        return number(n).map(Value::Number);
    }
    None
}

/// A JSON number for a double: integral values within ±2^53 become integers (claims like `exp` or a numeric
/// user id), others stay floating point; NaN and infinities are refused.
pub fn number(n: f64) -> Option<Number> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= EXACT {
        Some(Number::from(n as i64))
    } else {
        Number::from_f64(n)
    }
}

fn printable_utf8(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// The pairs encoding, only if it accounts for every byte (lengths, NUL terminators, nothing left over).
fn decode_pairs(bytes: &[u8]) -> Option<Pairs<'_>> {
    let count = read_u32(bytes, 0)? as usize;
    // Each pair needs 8 bytes of lengths plus 2 terminators: refuse counts the input cannot hold.
    if count == 0 || count > bytes.len() / 10 {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        sizes.push((read_u32(bytes, at)? as usize, read_u32(bytes, at + 4)? as usize));
    }
    let mut pos = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for (klen, vlen) in sizes {
        let key = bytes.get(pos..pos.checked_add(klen)?)?;
        pos += klen;
        if bytes.get(pos) != Some(&0) {
            return None;
        }
        pos += 1;
        let value = bytes.get(pos..pos.checked_add(vlen)?)?;
        pos += vlen;
        if bytes.get(pos) != Some(&0) {
            return None;
        }
        pos += 1;
        pairs.push((key, value));
    }
    (pos == bytes.len()).then_some(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Encodes like Envoy does, for tests.
    fn pairs(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (entries.len() as u32).to_le_bytes().to_vec();
        for (k, v) in entries {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in entries {
            out.extend(*k);
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn scalars() {
        assert_eq!(decode(b"alice"), Some(json!("alice")));
        assert_eq!(decode(b"engineer"), Some(json!("engineer"))); // 8 printable bytes stay a string
        assert_eq!(decode(&1_700_000_000f64.to_le_bytes()), Some(json!(1_700_000_000)));
        assert_eq!(decode(&1.5f64.to_le_bytes()), Some(json!(1.5)));
        assert_eq!(decode(&[1]), Some(json!(true)));
        assert_eq!(decode(&[0]), Some(json!(false)));
        assert_eq!(decode(&[0, 0, 0, 0]), Some(json!([])));
        assert_eq!(decode(&f64::NAN.to_le_bytes()), None);
        assert_eq!(decode(b"\xff\xfe"), None);
    }

    #[test]
    fn lists_and_maps() {
        assert_eq!(
            decode(&pairs(&[(b"admins", b""), (b"devs", b"")])),
            Some(json!(["admins", "devs"]))
        );
        assert_eq!(decode(&pairs(&[(b"team", b"blue")])), Some(json!({"team": "blue"})));
        let nested = pairs(&[(b"org", &pairs(&[(b"team", b"blue")]))]);
        assert_eq!(decode(&nested), Some(json!({"org": {"team": "blue"}})));
    }

    #[test]
    fn truncated_or_lying_pairs_are_not_pairs() {
        let good = pairs(&[(b"team", b"blue")]);
        assert!(decode_pairs(&good[..good.len() - 1]).is_none());
        let mut extra = good.clone();
        extra.push(b'x');
        assert!(decode_pairs(&extra).is_none());
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_pairs(&huge).is_none());
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_pairs(&huge).is_none());
    }
}
