//! JWS compact serialisation (RFC 7515) of a JWT signed with the configured algorithm (RS256, ES256 or EdDSA).

use serde::Serialize;

use super::{b64, KeyError, Signer};

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// Why a token could not be produced.
#[derive(Debug, PartialEq, Eq)]
pub enum JwtError {
    /// The claims could not be serialised.
    Encode,
    /// The signature failed.
    Sign(KeyError),
    /// The token would be longer than the limit (its length in bytes); nothing was signed.
    TooLarge(usize),
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtError::Encode => f.write_str("claims could not be encoded as JSON"),
            JwtError::Sign(e) => e.fmt(f),
            JwtError::TooLarge(len) => write!(f, "the token would be {len} bytes"),
        }
    }
}

/// Length of unpadded base64url of `n` bytes.
fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// `base64url(header) . base64url(claims) . base64url(signature)`, signed with the signer's algorithm.
pub fn encode(claims: &impl Serialize, signer: &Signer) -> Result<String, JwtError> {
    encode_within(claims, signer, usize::MAX)
}

/// [`encode`], refusing before signing when the token would exceed `max_len` bytes (its exact length is known
/// from the header, the claims and the algorithm's signature size, so no signature is wasted on it).
pub fn encode_within(claims: &impl Serialize, signer: &Signer, max_len: usize) -> Result<String, JwtError> {
    let header = Header {
        alg: signer.algorithm().name(),
        typ: "JWT",
        kid: signer.kid(),
    };
    let header = serde_json::to_vec(&header).map_err(|_| JwtError::Encode)?;
    let claims = serde_json::to_vec(claims).map_err(|_| JwtError::Encode)?;
    let len = b64_len(header.len()) + 1 + b64_len(claims.len()) + 1 + b64_len(signer.signature_len());
    if len > max_len {
        return Err(JwtError::TooLarge(len));
    }
    let mut token = String::with_capacity(len);
    token.push_str(&b64::encode(header));
    token.push('.');
    token.push_str(&b64::encode(claims));
    let signature = signer.sign(token.as_bytes()).map_err(JwtError::Sign)?;
    token.push('.');
    token.push_str(&b64::encode(signature));
    debug_assert_eq!(token.len(), len);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rsa::pkcs8::EncodePrivateKey;
    use serde_json::{json, Value};

    #[test]
    fn token_verifies_with_jsonwebtoken() {
        let key = ::rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let pem = key.to_pkcs8_pem(Default::default()).unwrap();
        let signer = Signer::Rs256(Box::new(crate::crypto::rsa::RsaSigner::from_pem(&pem).unwrap()));
        let claims =
            json!({"iss":"https://gw","aud":"mcp","sub":"alice","exp": 4_000_000_000u64, "scope":"mcp:tools/list"});
        let token = encode(&claims, &signer).unwrap();

        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));

        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::to_value(signer.jwk()).unwrap()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&["mcp"]);
        validation.set_issuer(&["https://gw"]);
        let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims, claims);
    }

    #[test]
    fn the_length_is_known_before_signing() {
        for alg in [
            crate::crypto::Algorithm::Rs256,
            crate::crypto::Algorithm::Es256,
            crate::crypto::Algorithm::EdDsa,
        ] {
            let signer = Signer::generate(alg).unwrap();
            for n in [0, 1, 2, 3, 100, 1000] {
                let claims = json!({"sub": "x".repeat(n)});
                let token = encode(&claims, &signer).unwrap();
                assert_eq!(encode_within(&claims, &signer, token.len()).unwrap().len(), token.len());
                assert_eq!(
                    encode_within(&claims, &signer, token.len() - 1),
                    Err(JwtError::TooLarge(token.len()))
                );
            }
        }
    }
}
