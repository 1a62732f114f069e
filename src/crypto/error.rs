//! Why a key was refused. Messages name the key type they are about and never carry any of the key's text.

use std::fmt;

use super::rsa::{MAX_RSA_BITS, MIN_RSA_BITS};

/// The kind of key an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// An RSA private key (RS256).
    Rsa,
    /// A P-256 private key (ES256).
    P256,
    /// An Ed25519 private key (EdDSA).
    Ed25519,
    /// A public key published in the JWKS (any supported type).
    Public,
}

impl KeyType {
    /// How messages name the key.
    pub fn describe(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA private key",
            KeyType::P256 => "P-256 private key",
            KeyType::Ed25519 => "Ed25519 private key",
            KeyType::Public => "public key",
        }
    }

    /// The description with its indefinite article.
    pub fn with_article(self) -> &'static str {
        match self {
            KeyType::Rsa => "an RSA private key",
            KeyType::P256 => "a P-256 private key",
            KeyType::Ed25519 => "an Ed25519 private key",
            KeyType::Public => "a public key",
        }
    }
}

/// A key that cannot be used, or an operation on one that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No PEM block of the expected kind.
    NotPem {
        /// The key that was expected.
        key_type: KeyType,
        /// The PEM labels that would have been accepted.
        expected: &'static str,
    },
    /// A private key where only a public key belongs (`additional_public_keys`).
    PrivateWherePublic,
    /// A valid private key of another type than the configured algorithm needs.
    WrongType {
        /// What the algorithm needs.
        expected: KeyType,
        /// What the PEM holds.
        found: KeyType,
    },
    /// An encrypted private key: the filter has no passphrase to open it.
    Encrypted,
    /// The PEM label was right but the contents are not a valid key of that type.
    Malformed {
        /// The key that was expected.
        key_type: KeyType,
        /// The encoding that failed to parse (`PKCS#8`, `SEC1`, ...).
        format: &'static str,
    },
    /// An RSA modulus below [`MIN_RSA_BITS`].
    TooSmall(usize),
    /// An RSA modulus above [`MAX_RSA_BITS`].
    TooLarge(usize),
    /// Generating a key failed (no randomness).
    Generate(KeyType),
    /// Signing failed.
    Sign(KeyType),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotPem { key_type, expected } => {
                write!(f, "no {} PEM found (expected {expected})", key_type.describe())
            }
            KeyError::PrivateWherePublic => f.write_str(
                "a private key where a public key is expected; publish only the public half (openssl pkey -pubout)",
            ),
            KeyError::WrongType { expected, found } => write!(
                f,
                "the PEM holds {}, but the configured algorithm needs {}",
                found.with_article(),
                expected.with_article()
            ),
            KeyError::Encrypted => {
                f.write_str("encrypted private keys are not supported; pass the key unencrypted from a secret store")
            }
            KeyError::Malformed { key_type, format } => write!(f, "malformed {format} {}", key_type.describe()),
            KeyError::TooSmall(bits) => write!(f, "RSA key is {bits} bits; at least {MIN_RSA_BITS} are required"),
            KeyError::TooLarge(bits) => write!(f, "RSA key is {bits} bits; at most {MAX_RSA_BITS} are supported"),
            KeyError::Generate(key_type) => write!(f, "generating {} failed", key_type.with_article()),
            KeyError::Sign(key_type) => write!(f, "signing with the {} failed", key_type.describe()),
        }
    }
}

impl std::error::Error for KeyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_right_key() {
        let e = KeyError::NotPem {
            key_type: KeyType::P256,
            expected: "BEGIN EC PRIVATE KEY or BEGIN PRIVATE KEY",
        };
        assert_eq!(
            e.to_string(),
            "no P-256 private key PEM found (expected BEGIN EC PRIVATE KEY or BEGIN PRIVATE KEY)"
        );
        let e = KeyError::Malformed {
            key_type: KeyType::P256,
            format: "PKCS#8",
        };
        assert_eq!(e.to_string(), "malformed PKCS#8 P-256 private key");
        assert!(!KeyError::PrivateWherePublic.to_string().contains("RSA"));
        let e = KeyError::WrongType {
            expected: KeyType::P256,
            found: KeyType::Rsa,
        };
        assert_eq!(
            e.to_string(),
            "the PEM holds an RSA private key, but the configured algorithm needs a P-256 private key"
        );
    }
}
