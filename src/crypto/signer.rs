//! The token signing key, whichever algorithm the operator chose: RS256 (default), ES256 or EdDSA, and the
//! public keys published beside it. The only module of `crypto` that knows every algorithm.

use std::fmt;

use super::ecdsa::{es256_jwk, Es256Signer};
use super::ed25519::{ed25519_jwk, Ed25519Signer};
use super::rsa::{self, RsaSigner};
use super::{Jwk, KeyError, KeyType};

/// JWS `alg` values the filter signs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (the default, and what LiteLLM signs with).
    #[default]
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    /// The algorithm named by a JWS `alg` value the filter signs with.
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            "EdDSA" => Some(Algorithm::EdDsa),
            _ => None,
        }
    }

    /// The JWS `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated private key of the configured algorithm, with its public JWK computed once.
pub enum Signer {
    /// Boxed: the RSA key with its precomputed CRT constants is much larger than the EC keys.
    Rs256(Box<RsaSigner>),
    /// ES256.
    Es256(Es256Signer),
    /// EdDSA (Ed25519).
    EdDsa(Ed25519Signer),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, kid={})", self.algorithm(), self.kid())
    }
}

impl Signer {
    /// Parses the configured key. A valid key of another type than `algorithm` needs is named as such, so the
    /// operator is told "RSA key, ES256 configured" rather than "malformed P-256 key".
    pub fn from_pem(algorithm: Algorithm, pem: &str) -> Result<Signer, KeyError> {
        let parsed = match algorithm {
            Algorithm::Rs256 => RsaSigner::from_pem(pem).map(|k| Signer::Rs256(Box::new(k))),
            Algorithm::Es256 => Es256Signer::from_pem(pem).map(Signer::Es256),
            Algorithm::EdDsa => Ed25519Signer::from_pem(pem).map(Signer::EdDsa),
        };
        match parsed {
            Err(KeyError::NotPem { .. } | KeyError::Malformed { .. }) => {
                if let Some(found) = private_key_type(pem).filter(|found| *found != algorithm.key_type()) {
                    return Err(KeyError::WrongType {
                        expected: algorithm.key_type(),
                        found,
                    });
                }
                parsed
            }
            other => other,
        }
    }

    /// Parses the PKCS#8 DER form in which a generated key is shared between workers.
    pub fn from_pkcs8_der(algorithm: Algorithm, der: &[u8]) -> Result<Signer, KeyError> {
        Ok(match algorithm {
            Algorithm::Rs256 => Signer::Rs256(Box::new(RsaSigner::from_pkcs8_der(der)?)),
            Algorithm::Es256 => Signer::Es256(Es256Signer::from_pkcs8_der(der)?),
            Algorithm::EdDsa => Signer::EdDsa(Ed25519Signer::from_pkcs8_der(der)?),
        })
    }

    /// Generates a fresh key for `algorithm` (RSA-2048, P-256 or Ed25519).
    pub fn generate(algorithm: Algorithm) -> Result<Signer, KeyError> {
        Ok(match algorithm {
            Algorithm::Rs256 => Signer::Rs256(Box::new(RsaSigner::generate()?)),
            Algorithm::Es256 => Signer::Es256(Es256Signer::generate()?),
            Algorithm::EdDsa => Signer::EdDsa(Ed25519Signer::generate()?),
        })
    }

    /// The key as PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        match self {
            Signer::Rs256(k) => k.to_pkcs8_der(),
            Signer::Es256(k) => k.to_pkcs8_der(),
            Signer::EdDsa(k) => k.to_pkcs8_der(),
        }
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Signer::Rs256(_) => Algorithm::Rs256,
            Signer::Es256(_) => Algorithm::Es256,
            Signer::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> &Jwk {
        match self {
            Signer::Rs256(k) => k.jwk(),
            Signer::Es256(k) => k.jwk(),
            Signer::EdDsa(k) => k.jwk(),
        }
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.jwk().kid
    }

    /// Bytes of a signature: the RSA modulus size, 64 for ES256 (`r || s`) and EdDSA.
    pub fn signature_len(&self) -> usize {
        match self {
            Signer::Rs256(k) => k.modulus_len(),
            Signer::Es256(_) | Signer::EdDsa(_) => 64,
        }
    }

    /// Whether this key signs through AWS-LC (the native build, `--features native`).
    pub fn signs_natively(&self) -> bool {
        match self {
            Signer::Rs256(k) => k.signs_natively(),
            Signer::Es256(k) => k.signs_natively(),
            Signer::EdDsa(k) => k.signs_natively(),
        }
    }

    /// The JWS signature over `message` (the signing input `header.payload`).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Signer::Rs256(k) => k.sign(message),
            Signer::Es256(k) => k.sign(message),
            Signer::EdDsa(k) => k.sign(message),
        }
    }
}

impl Algorithm {
    /// The key type this algorithm signs with.
    pub fn key_type(self) -> KeyType {
        match self {
            Algorithm::Rs256 => KeyType::Rsa,
            Algorithm::Es256 => KeyType::P256,
            Algorithm::EdDsa => KeyType::Ed25519,
        }
    }
}

/// Which supported private key type a PEM holds, if any (for error messages only).
fn private_key_type(pem: &str) -> Option<KeyType> {
    if RsaSigner::from_pem(pem).is_ok() {
        Some(KeyType::Rsa)
    } else if Es256Signer::from_pem(pem).is_ok() {
        Some(KeyType::P256)
    } else if Ed25519Signer::from_pem(pem).is_ok() {
        Some(KeyType::Ed25519)
    } else {
        None
    }
}

/// The JWK of a public key PEM (SPKI `BEGIN PUBLIC KEY` holding RSA, P-256 or Ed25519, or PKCS#1
/// `BEGIN RSA PUBLIC KEY`): what the JWKS publishes for a previous (or next) signing key during rotation.
pub fn public_jwk_from_pem(pem: &str) -> Result<Jwk, KeyError> {
    use ::rsa::pkcs1::DecodeRsaPublicKey;
    use ::rsa::pkcs8::DecodePublicKey;
    let pem = pem.trim();
    if pem.contains("PRIVATE KEY") {
        return Err(KeyError::PrivateWherePublic);
    }
    let malformed = |format| KeyError::Malformed {
        key_type: KeyType::Public,
        format,
    };
    if pem.contains("-----BEGIN RSA PUBLIC KEY-----") {
        let key = ::rsa::PublicKey::from_pkcs1_pem(pem).map_err(|_| malformed("PKCS#1 RSA"))?;
        return rsa::checked_public_jwk(&key);
    }
    if !pem.contains("-----BEGIN PUBLIC KEY-----") {
        return Err(KeyError::NotPem {
            key_type: KeyType::Public,
            expected: "BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY",
        });
    }
    if let Ok(key) = ::rsa::PublicKey::from_public_key_pem(pem) {
        return rsa::checked_public_jwk(&key);
    }
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Ok(es256_jwk(&key));
    }
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
        return Ok(ed25519_jwk(&key));
    }
    Err(malformed("SPKI (RSA, P-256 or Ed25519)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::jws::encode;
    use serde_json::{json, Value};

    fn roundtrip(signer: &Signer, alg: jsonwebtoken::Algorithm) {
        let claims = json!({"iss":"https://gw","aud":"mcp","sub":"alice","exp": 4_000_000_000u64});
        let token = encode(&claims, signer).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, alg);
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::to_value(signer.jwk()).unwrap()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.set_audience(&["mcp"]);
        let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims, claims);
    }

    #[test]
    fn every_algorithm_verifies_with_jsonwebtoken() {
        roundtrip(
            &Signer::generate(Algorithm::Es256).unwrap(),
            jsonwebtoken::Algorithm::ES256,
        );
        roundtrip(
            &Signer::generate(Algorithm::EdDsa).unwrap(),
            jsonwebtoken::Algorithm::EdDSA,
        );
        roundtrip(
            &Signer::generate(Algorithm::Rs256).unwrap(),
            jsonwebtoken::Algorithm::RS256,
        );
    }

    /// With `--features native`, every algorithm signs through AWS-LC, and what it signs verifies with
    /// jsonwebtoken (ES256 as the fixed 64-byte `r || s`); Ed25519 is deterministic, so AWS-LC's signature is the
    /// pure-Rust one byte for byte.
    #[cfg(feature = "native")]
    #[test]
    fn the_native_backend_signs_every_algorithm() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        use ed25519_dalek::Signer as _;
        for (alg, jwt_alg) in [
            (Algorithm::Rs256, jsonwebtoken::Algorithm::RS256),
            (Algorithm::Es256, jsonwebtoken::Algorithm::ES256),
            (Algorithm::EdDsa, jsonwebtoken::Algorithm::EdDSA),
        ] {
            let signer = Signer::generate(alg).unwrap();
            assert!(signer.signs_natively(), "{alg}");
            let again = Signer::from_pkcs8_der(alg, &signer.to_pkcs8_der().unwrap()).unwrap();
            assert!(again.signs_natively(), "{alg}");
            assert_eq!(signer.sign(b"m").unwrap().len(), signer.signature_len());
            roundtrip(&signer, jwt_alg);
        }
        let signer = Signer::generate(Algorithm::EdDsa).unwrap();
        let der = signer.to_pkcs8_der().unwrap();
        let dalek = ed25519_dalek::SigningKey::from_pkcs8_der(&der).unwrap();
        for message in [&b""[..], b"header.payload"] {
            assert_eq!(signer.sign(message).unwrap(), dalek.sign(message).to_bytes().to_vec());
        }
        // ES256: fresh randomness, so two signatures differ, and both verify with the p256 crate.
        use p256::ecdsa::signature::Verifier;
        let signer = Signer::generate(Algorithm::Es256).unwrap();
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(&signer.to_pkcs8_der().unwrap()).unwrap();
        let (a, b) = (signer.sign(b"m").unwrap(), signer.sign(b"m").unwrap());
        assert_ne!(a, b);
        for sig in [a, b] {
            let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
            key.verifying_key().verify(b"m", &sig).unwrap();
        }
    }

    #[test]
    fn keys_survive_the_shared_data_round_trip() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa] {
            let a = Signer::generate(alg).unwrap();
            let b = Signer::from_pkcs8_der(alg, &a.to_pkcs8_der().unwrap()).unwrap();
            assert_eq!(a.jwk(), b.jwk());
        }
    }

    #[test]
    fn pem_forms() {
        use p256::pkcs8::EncodePrivateKey;
        let ec = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let sec1 = ec.to_sec1_pem(Default::default()).unwrap();
        let pkcs8 = ec.to_pkcs8_pem(Default::default()).unwrap();
        let a = Signer::from_pem(Algorithm::Es256, &sec1).unwrap();
        let b = Signer::from_pem(Algorithm::Es256, &pkcs8).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.jwk().crv, Some("P-256"));
        let ed = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let ed_pem = ed.to_pkcs8_pem(Default::default()).unwrap();
        assert_eq!(Signer::from_pem(Algorithm::EdDsa, &ed_pem).unwrap().jwk().kty, "OKP");
        // A key of the wrong type for the configured algorithm is refused, and named.
        let wrong = |alg, pem: &str| Signer::from_pem(alg, pem).unwrap_err();
        assert_eq!(
            wrong(Algorithm::Rs256, &sec1),
            KeyError::WrongType {
                expected: KeyType::Rsa,
                found: KeyType::P256
            }
        );
        assert_eq!(
            wrong(Algorithm::EdDsa, &pkcs8),
            KeyError::WrongType {
                expected: KeyType::Ed25519,
                found: KeyType::P256
            }
        );
        assert_eq!(
            wrong(Algorithm::Es256, &ed_pem),
            KeyError::WrongType {
                expected: KeyType::P256,
                found: KeyType::Ed25519
            }
        );
        assert!(!wrong(Algorithm::Es256, &ed_pem).to_string().contains("RSA"));
        // Garbage under a right label is still "malformed", naming the configured key type.
        let garbage = "-----BEGIN PRIVATE KEY-----\nTUlJRXZRSUJBREFOQmdr\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            wrong(Algorithm::Es256, garbage).to_string(),
            "malformed PKCS#8 P-256 private key"
        );
    }

    #[test]
    fn an_rsa_pem_given_for_es256_is_named() {
        use ::rsa::pkcs1::EncodeRsaPrivateKey;
        use ::rsa::pkcs8::EncodePrivateKey;
        let key = ::rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        for pem in [
            key.to_pkcs1_pem(Default::default()).unwrap().to_string(),
            key.to_pkcs8_pem(Default::default()).unwrap().to_string(),
        ] {
            let e = Signer::from_pem(Algorithm::Es256, &pem).unwrap_err();
            assert_eq!(
                e.to_string(),
                "the PEM holds an RSA private key, but the configured algorithm needs a P-256 private key"
            );
        }
    }

    #[test]
    fn public_pems_give_the_signers_jwk() {
        use ::rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        use ::rsa::pkcs8::EncodePublicKey;
        let key = ::rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let pkcs1 = key.to_pkcs1_pem(Default::default()).unwrap().to_string();
        let signer = Signer::from_pem(Algorithm::Rs256, &pkcs1).unwrap();
        let public = key.to_public_key();
        let spki = public.to_public_key_pem(Default::default()).unwrap();
        let pkcs1_pub = public.to_pkcs1_pem(Default::default()).unwrap();
        assert_eq!(&public_jwk_from_pem(&spki).unwrap(), signer.jwk());
        assert_eq!(&public_jwk_from_pem(&pkcs1_pub).unwrap(), signer.jwk());
        let ec = p256::SecretKey::from_slice(&[3u8; 32]).unwrap();
        let ec_pub = ec.public_key().to_public_key_pem(Default::default()).unwrap();
        assert_eq!(public_jwk_from_pem(&ec_pub).unwrap().alg, "ES256");
        let e = public_jwk_from_pem(&pkcs1).unwrap_err();
        assert_eq!(e, KeyError::PrivateWherePublic);
        assert!(!e.to_string().contains("RSA"), "{e}");
        assert!(public_jwk_from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
    }

    #[test]
    fn rfc8037_ed25519_thumbprint() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        // RFC 8037 appendix A.3: the thumbprint of the example key.
        let secret: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49,
            0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
        ];
        let der = ed25519_dalek::SigningKey::from_bytes(&secret).to_pkcs8_der().unwrap();
        let signer = Signer::from_pkcs8_der(Algorithm::EdDsa, der.as_bytes()).unwrap();
        assert_eq!(
            signer.jwk().x.as_deref(),
            Some("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
        );
        assert_eq!(signer.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
