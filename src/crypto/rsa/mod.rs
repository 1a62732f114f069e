//! RS256 signing keys: PEM parsing, generation, the public JWK, and signing (2048-bit keys on the faster
//! constant-time CRT signer in [`crt`], other sizes on the `rsa` crate's).

pub mod crt;
mod lanes;
pub mod montgomery;
#[cfg(feature = "native")]
pub mod native;
pub mod paired;

use std::fmt;

use ::rsa::pkcs1::DecodeRsaPrivateKey;
use ::rsa::pkcs1v15::SigningKey;
use ::rsa::pkcs8::DecodePrivateKey;
use ::rsa::signature::RandomizedSigner;
use ::rsa::traits::PublicKeyParts;
use ::rsa::PrivateKey;
use sha2::Sha256;

use self::crt::RsaCrt2048;
use super::{b64, pkcs8_der, thumbprint, Jwk, KeyError, KeyType};

/// Smallest modulus accepted (NIST SP 800-131A; RFC 7518 requires at least 2048 for RS256).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest modulus accepted: beyond it a signature costs too much time on an Envoy worker.
pub const MAX_RSA_BITS: usize = 8192;
/// Size of auto-generated keys.
pub const GENERATED_RSA_BITS: usize = 2048;

/// A parsed, validated RSA key ready to sign RS256, with its JWK computed once.
pub struct RsaSigner {
    key: SigningKey<Sha256>,
    /// The faster constant-time signer, for 2048-bit keys (see `rsa_crt`).
    fast: Option<RsaCrt2048>,
    /// The native build's signer (AWS-LC), when it accepts the key.
    #[cfg(feature = "native")]
    native: Option<native::NativeRsa>,
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
            PrivateKey::from_pkcs1_pem(pem).map_err(|_| malformed("PKCS#1"))?
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            PrivateKey::from_pkcs8_pem(pem).map_err(|_| malformed("PKCS#8"))?
        } else if pem.contains("ENCRYPTED PRIVATE KEY") || pem.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(KeyError::Encrypted);
        } else {
            return Err(KeyError::NotPem {
                key_type: KeyType::Rsa,
                expected: "BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY",
            });
        };
        Self::from_key(key)
    }

    /// Parses the PKCS#8 DER form used to share a generated key between workers.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<RsaSigner, KeyError> {
        let key = PrivateKey::from_pkcs8_der(der).map_err(|_| malformed("PKCS#8 DER"))?;
        Self::from_key(key)
    }

    /// Generates a fresh RSA-2048 key from the OS random source.
    pub fn generate() -> Result<RsaSigner, KeyError> {
        let key = PrivateKey::new(&mut getrandom::SysRng, GENERATED_RSA_BITS)
            .map_err(|_| KeyError::Generate(KeyType::Rsa))?;
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
        key.validate().map_err(|_| malformed("inconsistent"))?;
        let jwk = rsa_jwk(&key.n_bytes(), &key.e_bytes());
        let key = SigningKey::new(key);
        #[cfg(feature = "native")]
        let native = pkcs8_der(&key, KeyType::Rsa)
            .ok()
            .and_then(|der| native::NativeRsa::from_pkcs8_der(&der));
        Ok(RsaSigner {
            fast: RsaCrt2048::new(key.as_ref()),
            key,
            #[cfg(feature = "native")]
            native,
            jwk,
        })
    }

    /// The key as PKCS#8 DER (to share a generated key with other workers through Envoy's shared data).
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        pkcs8_der(&self.key, KeyType::Rsa)
    }

    /// The public JWK (`kid` = RFC 7638 thumbprint).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Bytes of the modulus (and of every signature).
    pub fn modulus_len(&self) -> usize {
        use ::rsa::traits::PublicKeyParts;
        self.key.as_ref().size()
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`, blinded; 2048-bit keys take the faster path, and the
    /// native build signs with AWS-LC (the same bytes: PKCS#1 v1.5 is deterministic).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        #[cfg(feature = "native")]
        if let Some(native) = &self.native {
            return native.sign(message);
        }
        if let Some(fast) = &self.fast {
            return fast.sign(message);
        }
        self.sign_with_rsa_crate(message)
    }

    /// Whether signatures go through AWS-LC (the native build, a key AWS-LC accepts).
    pub fn signs_natively(&self) -> bool {
        #[cfg(feature = "native")]
        return self.native.is_some();
        #[cfg(not(feature = "native"))]
        false
    }

    /// The wasm build's own signer: the CRT signer for 2048-bit keys, the `rsa` crate's otherwise (also in the
    /// native build, to cross-check AWS-LC).
    pub fn sign_portable(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.fast {
            Some(fast) => fast.sign(message),
            None => self.sign_with_rsa_crate(message),
        }
    }

    /// The `rsa` crate's blinded signer (every key size).
    pub fn sign_with_rsa_crate(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let signature = self
            .key
            .try_sign_with_rng(&mut getrandom::SysRng, message)
            .map_err(|_| KeyError::Sign(KeyType::Rsa))?;
        Ok(Box::<[u8]>::from(signature).into_vec())
    }
}

/// The RS256 JWK of an RSA public key given as big-endian modulus and exponent.
pub fn rsa_jwk(n: &[u8], e: &[u8]) -> Jwk {
    let n = b64::encode(n);
    let e = b64::encode(e);
    Jwk {
        kty: "RSA",
        use_: "sig",
        alg: "RS256",
        kid: thumbprint(&[("e", &e), ("kty", "RSA"), ("n", &n)]),
        n: Some(n),
        e: Some(e),
        ..Jwk::default()
    }
}

/// The JWK of an RSA public key, refusing sizes the filter would not sign with.
pub(crate) fn checked_public_jwk(key: &::rsa::PublicKey) -> Result<Jwk, KeyError> {
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::TooSmall(bits));
    }
    if bits > MAX_RSA_BITS {
        return Err(KeyError::TooLarge(bits));
    }
    Ok(rsa_jwk(&key.n_bytes(), &key.e_bytes()))
}

fn malformed(format: &'static str) -> KeyError {
    KeyError::Malformed {
        key_type: KeyType::Rsa,
        format,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rsa::pkcs8::EncodePrivateKey;

    /// Test keys are generated by the test; none is checked in.
    fn pkcs1_and_pkcs8_of_one_key() -> (String, String) {
        use ::rsa::pkcs1::EncodeRsaPrivateKey;
        let key = PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let pkcs1 = key.to_pkcs1_pem(Default::default()).unwrap().to_string();
        let pkcs8 = key.to_pkcs8_pem(Default::default()).unwrap().to_string();
        (pkcs1, pkcs8)
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
        assert_eq!(e, malformed("PKCS#8"));
        assert!(!e.to_string().contains("TUlJ"));
        assert!(matches!(
            RsaSigner::from_pem("hello").unwrap_err(),
            KeyError::NotPem { .. }
        ));
        assert!(matches!(
            RsaSigner::from_pem("-----BEGIN EC PRIVATE KEY-----\nAA\n-----END EC PRIVATE KEY-----").unwrap_err(),
            KeyError::NotPem { .. }
        ));
        assert_eq!(
            RsaSigner::from_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA\n-----END ENCRYPTED PRIVATE KEY-----")
                .unwrap_err(),
            KeyError::Encrypted
        );
    }

    /// The native build's AWS-LC signature is byte-for-byte the wasm build's CRT signature (and the `rsa`
    /// crate's): RSASSA-PKCS1-v1_5 is deterministic, so any difference is a bug in one of them.
    #[cfg(feature = "native")]
    #[test]
    fn native_rs256_is_byte_identical_to_the_wasm_builds_signer() {
        for bits in [2048, 3072] {
            let key = PrivateKey::new(&mut getrandom::SysRng, bits).unwrap();
            let pem = key.to_pkcs8_pem(Default::default()).unwrap().to_string();
            let signer = RsaSigner::from_pem(&pem).unwrap();
            assert!(signer.signs_natively(), "AWS-LC refused a {bits}-bit key");
            assert_eq!(signer.fast.is_some(), bits == 2048);
            for message in [&b""[..], b"header.payload", &[0xa5u8; 5000][..]] {
                let native = signer.sign(message).unwrap();
                assert_eq!(native.len(), bits / 8);
                assert_eq!(native, signer.sign_portable(message).unwrap(), "{bits} bits");
                assert_eq!(native, signer.sign_with_rsa_crate(message).unwrap(), "{bits} bits");
            }
        }
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
}
