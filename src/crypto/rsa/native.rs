//! RS256 through AWS-LC (`aws-lc-rs`), for the native build (`--features native`): OpenSSL-class speed, constant
//! time and blinded. The key is parsed and validated by [`super::RsaSigner`] first (errors unchanged); this only
//! loads the same key, from its PKCS#8 DER, into AWS-LC. PKCS#1 v1.5 is deterministic, so the signature is
//! byte-identical to the wasm build's CRT signer for the same key and message (a unit test proves it).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

use super::super::{KeyError, KeyType};

/// An RSA key loaded into AWS-LC.
pub struct NativeRsa {
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl NativeRsa {
    /// Loads a key AWS-LC accepts (2048 to 8192 bits); `None` otherwise (the pure-Rust signer is used).
    pub fn from_pkcs8_der(der: &[u8]) -> Option<NativeRsa> {
        let key = RsaKeyPair::from_pkcs8(der).ok()?;
        Some(NativeRsa {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
            .map_err(|_| KeyError::Sign(KeyType::Rsa))?;
        Ok(signature)
    }
}
