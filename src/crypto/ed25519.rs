//! EdDSA (Ed25519, RFC 8037) signing keys: the fastest of the three algorithms. Keys come as PKCS#8
//! (`BEGIN PRIVATE KEY`) PEM.

use std::fmt;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::Signer as _;

use super::{b64, pkcs8_der, thumbprint, Jwk, KeyError, KeyType};

/// Ed25519 (deterministic by design, RFC 8032).
pub struct Ed25519Signer {
    key: ed25519_dalek::SigningKey,
    /// The native build's signer (AWS-LC), loaded from the same key's PKCS#8 DER.
    #[cfg(feature = "native")]
    native: Option<native::NativeEd25519>,
    jwk: Jwk,
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

/// The EdDSA JWK of an Ed25519 public key (RFC 8037); `kid` is its RFC 7638 thumbprint (`crv`, `kty`, `x`).
pub fn ed25519_jwk(key: &ed25519_dalek::VerifyingKey) -> Jwk {
    let x = b64::encode(key.to_bytes());
    Jwk {
        kty: "OKP",
        use_: "sig",
        alg: "EdDSA",
        kid: thumbprint(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", &x)]),
        crv: Some("Ed25519"),
        x: Some(x),
        ..Jwk::default()
    }
}

fn malformed(format: &'static str) -> KeyError {
    KeyError::Malformed {
        key_type: KeyType::Ed25519,
        format,
    }
}

impl Ed25519Signer {
    /// Parses a PKCS#8 (`BEGIN PRIVATE KEY`) Ed25519 PEM.
    pub fn from_pem(pem: &str) -> Result<Ed25519Signer, KeyError> {
        let pem = pem.trim();
        if pem.contains("ENCRYPTED PRIVATE KEY") {
            return Err(KeyError::Encrypted);
        }
        if !pem.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(KeyError::NotPem {
                key_type: KeyType::Ed25519,
                expected: "BEGIN PRIVATE KEY",
            });
        }
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|_| malformed("PKCS#8"))?;
        Ok(Self::from_key(key))
    }

    /// Parses the PKCS#8 DER form used to share a generated key between workers.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Ed25519Signer, KeyError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|_| malformed("PKCS#8 DER"))?;
        Ok(Self::from_key(key))
    }

    /// Generates a fresh Ed25519 key from the OS random source.
    pub fn generate() -> Result<Ed25519Signer, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|_| KeyError::Generate(KeyType::Ed25519))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        secret.fill(0);
        Ok(Self::from_key(key))
    }

    fn from_key(key: ed25519_dalek::SigningKey) -> Ed25519Signer {
        let jwk = ed25519_jwk(&key.verifying_key());
        Ed25519Signer {
            #[cfg(feature = "native")]
            native: pkcs8_der(&key, KeyType::Ed25519)
                .ok()
                .and_then(|der| native::NativeEd25519::from_pkcs8_der(&der)),
            key,
            jwk,
        }
    }

    /// Whether signatures go through AWS-LC (the native build).
    pub fn signs_natively(&self) -> bool {
        #[cfg(feature = "native")]
        return self.native.is_some();
        #[cfg(not(feature = "native"))]
        false
    }

    /// The key as PKCS#8 DER (to share a generated key with other workers).
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        pkcs8_der(&self.key, KeyType::Ed25519)
    }

    /// The public JWK (`kid` = RFC 7638 thumbprint).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The 64-byte Ed25519 signature.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        #[cfg(feature = "native")]
        if let Some(native) = &self.native {
            return Ok(native.sign(message));
        }
        let signature = self
            .key
            .try_sign(message)
            .map_err(|_| KeyError::Sign(KeyType::Ed25519))?;
        Ok(signature.to_bytes().to_vec())
    }
}

/// EdDSA through AWS-LC (`aws-lc-rs`), for the native build: the key is parsed and validated above first.
#[cfg(feature = "native")]
mod native {
    use aws_lc_rs::signature::Ed25519KeyPair;

    pub struct NativeEd25519 {
        key: Ed25519KeyPair,
    }

    impl NativeEd25519 {
        /// PKCS#8 v1 (as ed25519-dalek writes it) or v2.
        pub fn from_pkcs8_der(der: &[u8]) -> Option<NativeEd25519> {
            let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).ok()?;
            Some(NativeEd25519 { key })
        }

        /// The 64-byte signature (deterministic, RFC 8032).
        pub fn sign(&self, message: &[u8]) -> Vec<u8> {
            self.key.sign(message).as_ref().to_vec()
        }
    }
}
