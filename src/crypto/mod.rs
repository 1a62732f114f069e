//! Signing keys and JWS: everything cryptographic, as a leaf of the crate (nothing here imports another module
//! of the filter).
//!
//! Layout, dependencies pointing one way (down this list):
//! - [`signer`]: the algorithm the operator chose ([`Algorithm`]) and its key ([`Signer`]), public keys for the
//!   JWKS ([`public_jwk_from_pem`]); the only module that knows every algorithm;
//! - [`rsa`] (RS256, with its constant-time CRT signer on hand-written Montgomery arithmetic), [`ecdsa`] (ES256),
//!   [`ed25519`] (EdDSA): one file per algorithm, none importing another;
//! - [`jws`]: the compact serialisation of a signed JWT;
//! - this file's algorithm-neutral pieces: [`Jwk`], [`KeyError`], the RFC 7638 thumbprint, PKCS#8 DER, base64url.

pub mod b64;
pub mod ecdsa;
pub mod ed25519;
mod error;
mod jwk;
pub mod jws;
pub mod rsa;
pub mod signer;

pub use error::{KeyError, KeyType};
pub use jwk::{thumbprint, Jwk};
pub use signer::{public_jwk_from_pem, Algorithm, Signer};

/// Any private key as PKCS#8 DER bytes (RSA, P-256 and Ed25519 keys all implement the one `pkcs8` trait): the
/// form in which a generated key is shared with the other workers.
pub(crate) fn pkcs8_der(key: &impl ::rsa::pkcs8::EncodePrivateKey, key_type: KeyType) -> Result<Vec<u8>, KeyError> {
    let doc = key.to_pkcs8_der().map_err(|_| KeyError::Malformed {
        key_type,
        format: "PKCS#8 encoding",
    })?;
    Ok(doc.as_bytes().to_vec())
}
