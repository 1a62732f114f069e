//! The token signing key, whichever algorithm the operator chose: RS256 (default), ES256 or EdDSA.

use std::fmt;

use crate::ec_keys::{Ed25519Signer, Es256Signer};
use crate::keys::{Jwk, KeyError, RsaSigner};

/// JWS `alg` values the filter signs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    #[default]
    Rs256,
    Es256,
    EdDsa,
}

impl Algorithm {
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

pub enum Signer {
    /// Boxed: the RSA key with its precomputed CRT constants is much larger than the EC keys.
    Rs256(Box<RsaSigner>),
    Es256(Es256Signer),
    EdDsa(Ed25519Signer),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({}, kid={})", self.algorithm(), self.kid())
    }
}

impl Signer {
    pub fn from_pem(algorithm: Algorithm, pem: &str) -> Result<Signer, KeyError> {
        Ok(match algorithm {
            Algorithm::Rs256 => Signer::Rs256(Box::new(RsaSigner::from_pem(pem)?)),
            Algorithm::Es256 => Signer::Es256(Es256Signer::from_pem(pem)?),
            Algorithm::EdDsa => Signer::EdDsa(Ed25519Signer::from_pem(pem)?),
        })
    }

    pub fn from_pkcs8_der(algorithm: Algorithm, der: &[u8]) -> Result<Signer, KeyError> {
        Ok(match algorithm {
            Algorithm::Rs256 => Signer::Rs256(Box::new(RsaSigner::from_pkcs8_der(der)?)),
            Algorithm::Es256 => Signer::Es256(Es256Signer::from_pkcs8_der(der)?),
            Algorithm::EdDsa => Signer::EdDsa(Ed25519Signer::from_pkcs8_der(der)?),
        })
    }

    pub fn generate(algorithm: Algorithm) -> Result<Signer, KeyError> {
        Ok(match algorithm {
            Algorithm::Rs256 => Signer::Rs256(Box::new(RsaSigner::generate()?)),
            Algorithm::Es256 => Signer::Es256(Es256Signer::generate()?),
            Algorithm::EdDsa => Signer::EdDsa(Ed25519Signer::generate()?),
        })
    }

    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, KeyError> {
        match self {
            Signer::Rs256(k) => k.to_pkcs8_der(),
            Signer::Es256(k) => k.to_pkcs8_der(),
            Signer::EdDsa(k) => k.to_pkcs8_der(),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Signer::Rs256(_) => Algorithm::Rs256,
            Signer::Es256(_) => Algorithm::Es256,
            Signer::EdDsa(_) => Algorithm::EdDsa,
        }
    }

    pub fn jwk(&self) -> &Jwk {
        match self {
            Signer::Rs256(k) => k.jwk(),
            Signer::Es256(k) => k.jwk(),
            Signer::EdDsa(k) => k.jwk(),
        }
    }

    pub fn kid(&self) -> &str {
        &self.jwk().kid
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Signer::Rs256(k) => k.sign(message),
            Signer::Es256(k) => k.sign(message),
            Signer::EdDsa(k) => k.sign(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::encode;
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
        // A key of the wrong type for the configured algorithm is refused.
        assert!(Signer::from_pem(Algorithm::Rs256, &sec1).is_err());
        assert!(Signer::from_pem(Algorithm::EdDsa, &pkcs8).is_err());
        assert!(Signer::from_pem(Algorithm::Es256, &ed_pem).is_err());
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
