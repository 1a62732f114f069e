//! Where the signing key comes from (`signing_key`, `MCP_JWT_SIGNING_KEY`, or generated), and the public keys
//! published beside it (`additional_public_keys`).

use std::fmt;

use crate::crypto::{public_jwk_from_pem, Jwk};

use super::error::ConfigError;

/// The environment variable a signing key may come from (forwarded with `vm_config.environment_variables`).
pub const SIGNING_KEY_ENV: &str = "MCP_JWT_SIGNING_KEY";

/// A PEM private key held as text; its `Debug` does not print it.
#[derive(Clone)]
pub struct SecretPem(pub String);

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// Where the signing key comes from, in precedence order.
#[derive(Debug)]
pub enum KeySource {
    /// `signing_key` in the plugin configuration.
    Config(SecretPem),
    /// The `MCP_JWT_SIGNING_KEY` environment variable.
    Environment(SecretPem),
    /// Neither: a key of the configured `algorithm`, generated once per Envoy process and shared by every worker.
    Generated,
}

impl KeySource {
    /// Applies the precedence `signing_key` > `MCP_JWT_SIGNING_KEY` > generated.
    /// The environment value may carry literal `\n` escapes (a PEM squeezed into one line, as the seed documents).
    pub fn resolve(signing_key: Option<&SecretPem>, env_value: Option<&str>) -> Result<KeySource, ConfigError> {
        if let Some(pem) = signing_key {
            check_not_file_url("signing_key", &pem.0)?;
            return Ok(KeySource::Config(SecretPem(unescape_newlines(&pem.0))));
        }
        match env_value {
            Some(v) if !v.trim().is_empty() => {
                check_not_file_url(SIGNING_KEY_ENV, v)?;
                Ok(KeySource::Environment(SecretPem(unescape_newlines(v))))
            }
            _ => Ok(KeySource::Generated),
        }
    }
}

fn check_not_file_url(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim_start().starts_with("file://") {
        return Err(ConfigError::new(
            field,
            "a wasm VM cannot read files: pass the PEM text itself (e.g. an environment variable set from a \
             Kubernetes Secret and forwarded with vm_config.environment_variables.host_env_keys, or `signing_key`)",
        ));
    }
    Ok(())
}

fn unescape_newlines(pem: &str) -> String {
    pem.replace("\\r\\n", "\n").replace("\\n", "\n")
}

/// `signing_key` as written: present, and not blank.
pub(crate) fn signing_key(raw: Option<String>) -> Result<Option<SecretPem>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(pem) if pem.trim().is_empty() => Err(ConfigError::new(
            "signing_key",
            "is empty; remove the field to use another key source",
        )),
        Some(pem) => Ok(Some(SecretPem(pem))),
    }
}

/// `additional_public_keys`: each a public PEM, deduplicated by `kid`.
pub(crate) fn additional_public_keys(raw: Option<Vec<String>>) -> Result<Vec<Jwk>, ConfigError> {
    let mut keys: Vec<Jwk> = Vec::new();
    for (i, pem) in raw.unwrap_or_default().iter().enumerate() {
        let jwk = public_jwk_from_pem(pem)
            .map_err(|e| ConfigError::new(format!("additional_public_keys[{i}]"), e.to_string()))?;
        if !keys.iter().any(|k| k.kid == jwk.kid) {
            keys.push(jwk);
        }
    }
    Ok(keys)
}
