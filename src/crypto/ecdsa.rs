//! ES256 (ECDSA over P-256 with SHA-256) signing keys, a faster alternative to RS256 for operators whose
//! verifiers accept it. Keys come as PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`) PEM.

use std::fmt;

use p256::ecdsa::signature::RandomizedSigner;
use p256::pkcs8::DecodePrivateKey;

use super::{b64, pkcs8_der, thumbprint, Jwk, KeyError, KeyType};

/// ECDSA over P-256; signatures are hedged (RFC 6979 nonce mixed with fresh randomness) and constant time.
pub struct Es256Signer {
    key: p256::ecdsa::SigningKey,
    /// The native build's signer (AWS-LC, fixed-size `r || s`), loaded from the same key's PKCS#8 DER.
    #[cfg(feature = "native")]
    native: Option<native::NativeEs256>,
    jwk: Jwk,
}

impl fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Es256Signer")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

/// The ES256 JWK of a P-256 public key; `kid` is its RFC 7638 thumbprint (members `crv`, `kty`, `x`, `y`).
pub fn es256_jwk(key: &p256::ecdsa::VerifyingKey) -> Jwk {
    let point = key.to_sec1_point(false);
    let x = b64::encode(point.x().map(|x| x.to_vec()).unwrap_or_default());
    let y = b64::encode(point.y().map(|y| y.to_vec()).unwrap_or_default());
    Jwk {
        kty: "EC",
        use_: "sig",
        alg: "ES256",
        kid: thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)]),
        crv: Some("P-256"),
        x: Some(x),
        y: Some(y),
        ..Jwk::default()
    }
}

fn malformed(format: &'static str) -> KeyError {
    KeyError::Malformed {
        key_type: KeyType::P256,
        format,
    }
}

impl Es256Signer {
    /// Parses a SEC1 (`BEGIN EC PRIVATE KEY`) or PKCS#8 (`BEGIN PRIVATE KEY`) P-256 PEM.
    pub fn from_pem(pem: &str) -> Result<Es256Signer, KeyError> {
        let pem = pem.trim();
        let key = if pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            let secret = p256::SecretKey::from_sec1_pem(pem).map_err(|_| malformed("SEC1"))?;
            p256::ecdsa::SigningKey::from(secret)
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(|_| malformed("PKCS#8"))?
        } else if pem.contains("ENCRYPTED PRIVATE KEY") {
            return Err(KeyError::Encrypted);
        } else {
            return Err(KeyError::NotPem {
                key_type: KeyType::P256,
                expected: "BEGIN EC PRIVATE KEY or BEGIN PRIVATE KEY",
            });
        };
        Ok(Self::from_key(key))
    }

    /// Parses the PKCS#8 DER form used to share a generated key between workers.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Es256Signer, KeyError> {
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|_| malformed("PKCS#8 DER"))?;
        Ok(Self::from_key(key))
    }

    /// Generates a fresh P-256 key from the OS random source.
    pub fn generate() -> Result<Es256Signer, KeyError> {
        use p256::elliptic_curve::Generate;
        let key = p256::ecdsa::SigningKey::try_generate_from_rng(&mut getrandom::SysRng)
            .map_err(|_| KeyError::Generate(KeyType::P256))?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: p256::ecdsa::SigningKey) -> Es256Signer {
        let jwk = es256_jwk(key.verifying_key());
        Es256Signer {
            #[cfg(feature = "native")]
            native: pkcs8_der(&key, KeyType::P256)
                .ok()
                .and_then(|der| native::NativeEs256::from_pkcs8_der(&der)),
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
        pkcs8_der(&self.key, KeyType::P256)
    }

    /// The public JWK (`kid` = RFC 7638 thumbprint).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// JWS ES256 signature: the 64-byte `r || s` (RFC 7518 section 3.4), not DER.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        #[cfg(feature = "native")]
        if let Some(native) = &self.native {
            return native.sign(message);
        }
        let signature: p256::ecdsa::Signature = self
            .key
            .try_sign_with_rng(&mut getrandom::SysRng, message)
            .map_err(|_| KeyError::Sign(KeyType::P256))?;
        Ok(signature.to_bytes().to_vec())
    }
}

/// ES256 through AWS-LC (`aws-lc-rs`), for the native build: the key is parsed and validated above first.
#[cfg(feature = "native")]
mod native {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    use super::{KeyError, KeyType};

    pub struct NativeEs256 {
        key: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl NativeEs256 {
        pub fn from_pkcs8_der(der: &[u8]) -> Option<NativeEs256> {
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).ok()?;
            Some(NativeEs256 {
                key,
                rng: SystemRandom::new(),
            })
        }

        /// The 64-byte `r || s` (AWS-LC's FIXED format), fresh randomness per signature.
        pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
            let signature = self
                .key
                .sign(&self.rng, message)
                .map_err(|_| KeyError::Sign(KeyType::P256))?;
            Ok(signature.as_ref().to_vec())
        }
    }
}
