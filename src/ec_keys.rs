//! ES256 (ECDSA P-256 with SHA-256) and EdDSA (Ed25519) signing keys: the faster alternatives to RS256 for
//! operators whose verifiers accept them. Keys come as PKCS#8 (`BEGIN PRIVATE KEY`) or, for P-256, SEC1
//! (`BEGIN EC PRIVATE KEY`) PEM.

use std::fmt;

use p256::ecdsa::signature::{RandomizedSigner, Signer};
use p256::pkcs8::DecodePrivateKey;
use sha2::{Digest, Sha256};

use crate::b64;
use crate::keys::{pkcs8_der, Jwk, KeyError};

/// ECDSA over P-256; signatures are hedged (RFC 6979 nonce mixed with fresh randomness) and constant time.
pub struct Es256Signer {
    key: p256::ecdsa::SigningKey,
    jwk: Jwk,
}

/// Ed25519 (deterministic by design, RFC 8032).
pub struct Ed25519Signer {
    key: ed25519_dalek::SigningKey,
    jwk: Jwk,
}

impl fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Es256Signer")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

/// The ES256 JWK of a P-256 public key; `kid` is its RFC 7638 thumbprint (members `crv`, `kty`, `x`, `y`).
pub fn es256_jwk(key: &p256::ecdsa::VerifyingKey) -> Jwk {
    let point = key.to_sec1_point(false);
    let x = b64::encode(point.x().map(|x| x.to_vec()).unwrap_or_default());
    let y = b64::encode(point.y().map(|y| y.to_vec()).unwrap_or_default());
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    Jwk {
        kty: "EC",
        use_: "sig",
        alg: "ES256",
        kid: b64::encode(Sha256::digest(canonical.as_bytes())),
        crv: Some("P-256"),
        x: Some(x),
        y: Some(y),
        ..Jwk::default()
    }
}

/// The EdDSA JWK of an Ed25519 public key (RFC 8037); `kid` is its RFC 7638 thumbprint (`crv`, `kty`, `x`).
pub fn ed25519_jwk(key: &ed25519_dalek::VerifyingKey) -> Jwk {
    let x = b64::encode(key.to_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    Jwk {
        kty: "OKP",
        use_: "sig",
        alg: "EdDSA",
        kid: b64::encode(Sha256::digest(canonical.as_bytes())),
        crv: Some("Ed25519"),
        x: Some(x),
        ..Jwk::default()
    }
}

impl Es256Signer {
    pub fn from_pem(pem: &str) -> Result<Es256Signer, KeyError> {
        let pem = pem.trim();
        let key = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            let secret = p256::SecretKey::from_sec1_pem(pem).map_err(|_| KeyError::Malformed("SEC1 P-256"))?;
            p256::ecdsa::SigningKey::from(secret)
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(|_| KeyError::Malformed("PKCS#8 P-256"))?
        } else {
            return Err(KeyError::NotPem(
                "expected BEGIN EC PRIVATE KEY or BEGIN PRIVATE KEY (P-256)",
            ));
        };
        Ok(Self::from_key(key))
    }

    pub fn from_pkcs8_der(der: &[u8]) -> Result<Es256Signer, KeyError> {
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|_| KeyError::Malformed("PKCS#8 DER"))?;
        Ok(Self::from_key(key))
    }

    pub fn generate() -> Result<Es256Signer, KeyError> {
        use p256::elliptic_curve::Generate;
        let key =
            p256::ecdsa::SigningKey::try_generate_from_rng(&mut getrandom::SysRng).map_err(|_| KeyError::Generate)?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: p256::ecdsa::SigningKey) -> Es256Signer {
        let jwk = es256_jwk(key.verifying_key());
        Es256Signer { key, jwk }
    }

    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        pkcs8_der(&self.key)
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// JWS ES256 signature: the 64-byte `r || s` (RFC 7518 section 3.4), not DER.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let signature: p256::ecdsa::Signature = self
            .key
            .try_sign_with_rng(&mut getrandom::SysRng, message)
            .map_err(|_| KeyError::Sign)?;
        Ok(signature.to_bytes().to_vec())
    }
}

impl Ed25519Signer {
    pub fn from_pem(pem: &str) -> Result<Ed25519Signer, KeyError> {
        if !pem.contains("-----BEGIN PRIVATE KEY-----") {
            return Err(KeyError::NotPem("expected BEGIN PRIVATE KEY (PKCS#8 Ed25519)"));
        }
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim()).map_err(|_| KeyError::Malformed("PKCS#8 Ed25519"))?;
        Ok(Self::from_key(key))
    }

    pub fn from_pkcs8_der(der: &[u8]) -> Result<Ed25519Signer, KeyError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|_| KeyError::Malformed("PKCS#8 DER"))?;
        Ok(Self::from_key(key))
    }

    pub fn generate() -> Result<Ed25519Signer, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|_| KeyError::Generate)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&secret);
        secret.fill(0);
        Ok(Self::from_key(key))
    }

    fn from_key(key: ed25519_dalek::SigningKey) -> Ed25519Signer {
        let jwk = ed25519_jwk(&key.verifying_key());
        Ed25519Signer { key, jwk }
    }

    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        pkcs8_der(&self.key)
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let signature = self.key.try_sign(message).map_err(|_| KeyError::Sign)?;
        Ok(signature.to_bytes().to_vec())
    }
}
