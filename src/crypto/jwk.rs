//! The public half of a signing key as a JWK (RFC 7517/7518; OKP keys: RFC 8037), and its RFC 7638 thumbprint,
//! which is the `kid` of every key the filter publishes.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::b64;

/// A public JWK. Members not used by the key type are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Jwk {
    /// Key type: `RSA`, `EC` or `OKP`.
    pub kty: &'static str,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: &'static str,
    /// The JWS algorithm the key signs with.
    pub alg: &'static str,
    /// The RFC 7638 thumbprint.
    pub kid: String,
    /// Curve (`EC`, `OKP`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    /// RSA modulus, base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Curve point x (`EC`) or the public key (`OKP`), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Curve point y (`EC`), base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// RFC 7638 JWK thumbprint: SHA-256 over a JSON object of the key type's required members, in lexicographic
/// order, without whitespace, base64url. `members` must be given in that order; every value is a base64url
/// string or a fixed name, so none needs JSON escaping.
pub fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut canonical = String::with_capacity(64 + members.iter().map(|(_, v)| v.len() + 8).sum::<usize>());
    canonical.push('{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":\"");
        canonical.push_str(value);
        canonical.push('"');
    }
    canonical.push('}');
    b64::encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(&[("e", "AQAB"), ("kty", "RSA"), ("n", n)]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
