//! RSA signing keys: PEM parsing, generation, the public JWK and its RFC 7638 thumbprint (the `kid`).

use std::fmt;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::signature::RandomizedSigner;
use rsa::traits::PublicKeyParts;
use rsa::PrivateKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::b64;
use crate::rsa_crt::RsaCrt2048;

/// Smallest modulus accepted (NIST SP 800-131A; RFC 7518 requires at least 2048 for RS256).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest modulus accepted: beyond it a signature costs too much time on an Envoy worker.
pub const MAX_RSA_BITS: usize = 8192;
/// Size of auto-generated keys.
pub const GENERATED_RSA_BITS: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No PEM block we understand. Never carries any of the PEM text.
    NotPem(&'static str),
    Encrypted,
    Malformed(&'static str),
    TooSmall(usize),
    TooLarge(usize),
    Generate,
    Sign,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotPem(why) => write!(f, "not an RSA private key PEM ({why})"),
            KeyError::Encrypted => {
                f.write_str("encrypted private keys are not supported; pass the key unencrypted from a secret store")
            }
            KeyError::Malformed(kind) => write!(f, "malformed {kind} RSA private key"),
            KeyError::TooSmall(bits) => write!(f, "RSA key is {bits} bits; at least {MIN_RSA_BITS} are required"),
            KeyError::TooLarge(bits) => write!(f, "RSA key is {bits} bits; at most {MAX_RSA_BITS} are supported"),
            KeyError::Generate => f.write_str("RSA key generation failed"),
            KeyError::Sign => f.write_str("RSA signing failed"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The public half of a signing key as a JWK (RFC 7517/7518; OKP: RFC 8037). Members not used by the key
/// type are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Jwk {
    pub kty: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub alg: &'static str,
    pub kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// A parsed, validated RSA key ready to sign RS256, with its JWK computed once.
pub struct RsaSigner {
    key: SigningKey<Sha256>,
    /// The faster constant-time signer, for 2048-bit keys (see `rsa_crt`).
    fast: Option<RsaCrt2048>,
    jwk: Jwk,
}

impl fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaSigner")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl RsaSigner {
    /// Parses a PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8 (`BEGIN PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<RsaSigner, KeyError> {
        let pem = pem.trim();
        let key = if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            PrivateKey::from_pkcs1_pem(pem).map_err(|_| KeyError::Malformed("PKCS#1"))?
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            PrivateKey::from_pkcs8_pem(pem).map_err(|_| KeyError::Malformed("PKCS#8"))?
        } else if pem.contains("ENCRYPTED PRIVATE KEY") || pem.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(KeyError::Encrypted);
        } else if pem.contains("-----BEGIN") {
            return Err(KeyError::NotPem("expected BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY"));
        } else {
            return Err(KeyError::NotPem("no PEM header"));
        };
        Self::from_key(key)
    }

    /// Parses the PKCS#8 DER form used to share a generated key between workers.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<RsaSigner, KeyError> {
        let key = PrivateKey::from_pkcs8_der(der).map_err(|_| KeyError::Malformed("PKCS#8 DER"))?;
        Self::from_key(key)
    }

    /// Generates a fresh RSA-2048 key from the OS random source.
    pub fn generate() -> Result<RsaSigner, KeyError> {
        let key = PrivateKey::new(&mut getrandom::SysRng, GENERATED_RSA_BITS).map_err(|_| KeyError::Generate)?;
        Self::from_key(key)
    }

    fn from_key(key: PrivateKey) -> Result<RsaSigner, KeyError> {
        let bits = key.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(KeyError::TooSmall(bits));
        }
        if bits > MAX_RSA_BITS {
            return Err(KeyError::TooLarge(bits));
        }
        key.validate().map_err(|_| KeyError::Malformed("inconsistent"))?;
        let jwk = rsa_jwk(&key.n_bytes(), &key.e_bytes());
        Ok(RsaSigner {
            fast: RsaCrt2048::new(&key),
            key: SigningKey::new(key),
            jwk,
        })
    }

    /// The key as PKCS#8 DER (to share a generated key with other workers through Envoy's shared data).
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        pkcs8_der(&self.key)
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`, blinded; 2048-bit keys take the faster path.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        if let Some(fast) = &self.fast {
            return fast.sign(message);
        }
        self.sign_with_rsa_crate(message)
    }

    /// The `rsa` crate's blinded signer (every key size).
    pub fn sign_with_rsa_crate(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let signature = self
            .key
            .try_sign_with_rng(&mut getrandom::SysRng, message)
            .map_err(|_| KeyError::Sign)?;
        Ok(Box::<[u8]>::from(signature).into_vec())
    }
}

/// Any private key as PKCS#8 DER bytes (RSA, P-256 and Ed25519 keys all implement the one `pkcs8` trait).
pub fn pkcs8_der(key: &impl EncodePrivateKey) -> Result<Vec<u8>, KeyError> {
    let doc = key.to_pkcs8_der().map_err(|_| KeyError::Malformed("PKCS#8 encoding"))?;
    Ok(doc.as_bytes().to_vec())
}

/// The RS256 JWK of an RSA public key given as big-endian modulus and exponent.
pub fn rsa_jwk(n: &[u8], e: &[u8]) -> Jwk {
    let n = b64::encode(n);
    let e = b64::encode(e);
    Jwk {
        kty: "RSA",
        use_: "sig",
        alg: "RS256",
        kid: rsa_thumbprint(&n, &e),
        n: Some(n),
        e: Some(e),
        ..Jwk::default()
    }
}

/// The JWK of a public key PEM (SPKI `BEGIN PUBLIC KEY` holding RSA, P-256 or Ed25519, or PKCS#1
/// `BEGIN RSA PUBLIC KEY`): what the JWKS publishes for a previous (or next) signing key during rotation.
pub fn public_jwk_from_pem(pem: &str) -> Result<Jwk, KeyError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    let pem = pem.trim();
    if pem.contains("PRIVATE KEY") {
        return Err(KeyError::NotPem(
            "a private key where a public key is expected; publish only the public half (openssl pkey -pubout)",
        ));
    }
    if pem.contains("-----BEGIN RSA PUBLIC KEY-----") {
        let key = rsa::PublicKey::from_pkcs1_pem(pem).map_err(|_| KeyError::Malformed("PKCS#1 public"))?;
        return checked_rsa_public_jwk(&key);
    }
    if !pem.contains("-----BEGIN PUBLIC KEY-----") {
        return Err(KeyError::NotPem("expected BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY"));
    }
    if let Ok(key) = rsa::PublicKey::from_public_key_pem(pem) {
        return checked_rsa_public_jwk(&key);
    }
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Ok(crate::ec_keys::es256_jwk(&key));
    }
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
        return Ok(crate::ec_keys::ed25519_jwk(&key));
    }
    Err(KeyError::Malformed("SPKI public key (RSA, P-256 or Ed25519)"))
}

fn checked_rsa_public_jwk(key: &rsa::PublicKey) -> Result<Jwk, KeyError> {
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::TooSmall(bits));
    }
    if bits > MAX_RSA_BITS {
        return Err(KeyError::TooLarge(bits));
    }
    Ok(rsa_jwk(&key.n_bytes(), &key.e_bytes()))
}

/// RFC 7638 JWK thumbprint of an RSA key: SHA-256 over the required members in lexicographic order, no
/// whitespace. `n` and `e` are base64url strings, which need no JSON escaping.
pub fn rsa_thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    b64::encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test keys are generated by the test; none is checked in.
    fn pkcs1_and_pkcs8_of_one_key() -> (String, String) {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let key = PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let pkcs1 = key.to_pkcs1_pem(Default::default()).unwrap().to_string();
        let pkcs8 = key.to_pkcs8_pem(Default::default()).unwrap().to_string();
        (pkcs1, pkcs8)
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(rsa_thumbprint(n, "AQAB"), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn pkcs1_and_pkcs8_give_the_same_stable_kid() {
        let (pkcs1, pkcs8) = pkcs1_and_pkcs8_of_one_key();
        let a = RsaSigner::from_pem(&pkcs1).unwrap();
        let b = RsaSigner::from_pem(&pkcs8).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.jwk(), RsaSigner::from_pem(&pkcs1).unwrap().jwk());
        let der = a.to_pkcs8_der().unwrap();
        assert_eq!(RsaSigner::from_pkcs8_der(&der).unwrap().kid(), a.kid());
        assert_eq!(a.jwk().e.as_deref(), Some("AQAB"));
    }

    #[test]
    fn small_and_malformed_keys_are_refused_without_echo() {
        let small = PrivateKey::new(&mut getrandom::SysRng, 1024).unwrap();
        let pem = small.to_pkcs8_pem(Default::default()).unwrap().to_string();
        assert_eq!(RsaSigner::from_pem(&pem).unwrap_err(), KeyError::TooSmall(1024));
        let garbage = "-----BEGIN PRIVATE KEY-----\nTUlJRXZRSUJBREFOQmdr\n-----END PRIVATE KEY-----\n";
        let e = RsaSigner::from_pem(garbage).unwrap_err();
        assert_eq!(e, KeyError::Malformed("PKCS#8"));
        assert!(!e.to_string().contains("TUlJ"));
        assert!(matches!(RsaSigner::from_pem("hello").unwrap_err(), KeyError::NotPem(_)));
        assert!(matches!(
            RsaSigner::from_pem("-----BEGIN EC PRIVATE KEY-----\nAA\n-----END EC PRIVATE KEY-----").unwrap_err(),
            KeyError::NotPem(_)
        ));
        assert_eq!(
            RsaSigner::from_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA\n-----END ENCRYPTED PRIVATE KEY-----")
                .unwrap_err(),
            KeyError::Encrypted
        );
    }

    #[test]
    fn signatures_verify_with_an_independent_library() {
        let (_, pkcs8) = pkcs1_and_pkcs8_of_one_key();
        let signer = RsaSigner::from_pem(&pkcs8).unwrap();
        let message = b"header.payload";
        let sig = signer.sign(message).unwrap();
        let jwk = signer.jwk();
        let (n, e) = (jwk.n.as_deref().unwrap(), jwk.e.as_deref().unwrap());
        let key = jsonwebtoken::DecodingKey::from_rsa_components(n, e).unwrap();
        let ok =
            jsonwebtoken::crypto::verify(&b64::encode(&sig), message, &key, jsonwebtoken::Algorithm::RS256).unwrap();
        assert!(ok);
        let bad = jsonwebtoken::crypto::verify(
            &b64::encode(&sig),
            b"header.other",
            &key,
            jsonwebtoken::Algorithm::RS256,
        )
        .unwrap();
        assert!(!bad);
    }

    #[test]
    fn public_pems_give_the_signers_jwk() {
        use rsa::pkcs1::EncodeRsaPublicKey;
        use rsa::pkcs8::EncodePublicKey;
        let (pkcs1, _) = pkcs1_and_pkcs8_of_one_key();
        let signer = RsaSigner::from_pem(&pkcs1).unwrap();
        let public = PrivateKey::from_pkcs1_pem(&pkcs1).unwrap().to_public_key();
        let spki = public.to_public_key_pem(Default::default()).unwrap();
        let pkcs1_pub = public.to_pkcs1_pem(Default::default()).unwrap();
        assert_eq!(&public_jwk_from_pem(&spki).unwrap(), signer.jwk());
        assert_eq!(&public_jwk_from_pem(&pkcs1_pub).unwrap(), signer.jwk());
        let ec = p256::SecretKey::from_slice(&[3u8; 32]).unwrap();
        let ec_pub = ec.public_key().to_public_key_pem(Default::default()).unwrap();
        assert_eq!(public_jwk_from_pem(&ec_pub).unwrap().alg, "ES256");
        assert!(matches!(public_jwk_from_pem(&pkcs1).unwrap_err(), KeyError::NotPem(_)));
        assert!(public_jwk_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
    }
}
