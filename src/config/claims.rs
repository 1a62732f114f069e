//! Claim shaping as configured: `copy_claims`, `add_claims`, `override_claims`, `remove_claims`, and the rules
//! that keep them from touching what the filter computes.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::defaults::MAX_CLAIM_NAME_BYTES;
use super::error::{shown, ConfigError};
use super::sources::Source;

/// Claims the filter computes itself; `copy_claims` and `add_claims` may not write them. The discovery document's
/// `claims_supported` lists them too.
pub const FILTER_CLAIMS: [&str; 10] = ["iss", "aud", "sub", "act", "email", "scope", "iat", "nbf", "exp", "jti"];
/// Claims a verifier needs; `remove_claims` may not remove them.
pub const ESSENTIAL_CLAIMS: [&str; 6] = ["iss", "aud", "exp", "iat", "jti", "scope"];

/// How claims beyond the standard set are shaped (applied in this order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimShaping {
    /// Output claim ← source value (e.g. `groups` ← `jwt:groups`); skipped when the source is empty.
    pub copy: Vec<(String, Source)>,
    /// Fixed claims added; they cannot replace a claim the filter computes.
    pub add: Map<String, Value>,
    /// Fixed claims that replace anything but `scope`, registered claims included: the explicit override.
    pub override_: Map<String, Value>,
    /// Claims removed last.
    pub remove: Vec<String>,
}

/// The four shaping fields as written.
pub(crate) struct RawShaping {
    pub copy_claims: Option<BTreeMap<String, String>>,
    pub add_claims: Option<Map<String, Value>>,
    pub override_claims: Option<Map<String, Value>>,
    pub remove_claims: Option<Vec<String>>,
}

fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_CLAIM_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            field,
            format!("claim names must be 1-{MAX_CLAIM_NAME_BYTES} characters without control characters"),
        ));
    }
    Ok(())
}

impl ClaimShaping {
    /// Validates the shaping fields.
    pub(crate) fn from_raw(raw: RawShaping) -> Result<ClaimShaping, ConfigError> {
        let mut copy = Vec::new();
        for (name, source) in raw.copy_claims.iter().flatten() {
            let field = format!("copy_claims.{}", shown(name));
            check_name(&field, name)?;
            if FILTER_CLAIMS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    field,
                    "is computed by the filter; set it with `identity` or replace it with `override_claims`",
                ));
            }
            copy.push((
                name.clone(),
                Source::parse(source).map_err(|r| ConfigError::new(&field, r))?,
            ));
        }
        let add = raw.add_claims.unwrap_or_default();
        for name in add.keys() {
            let field = format!("add_claims.{}", shown(name));
            check_name(&field, name)?;
            if FILTER_CLAIMS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    field,
                    "is computed by the filter; use `override_claims` to replace it explicitly",
                ));
            }
        }
        let override_ = raw.override_claims.unwrap_or_default();
        for (name, value) in &override_ {
            let field = format!("override_claims.{}", shown(name));
            check_name(&field, name)?;
            if name == "scope" {
                return Err(ConfigError::new(
                    field,
                    "scope is always derived from the request (least privilege)",
                ));
            }
            let ok = match name.as_str() {
                "iss" | "sub" | "jti" => value.is_string(),
                "aud" => value.is_string() || value.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
                "iat" | "nbf" | "exp" => value.is_u64(),
                _ => true,
            };
            if !ok {
                return Err(ConfigError::new(field, "has the wrong type for this registered claim"));
            }
        }
        let remove = raw.remove_claims.unwrap_or_default();
        for (i, name) in remove.iter().enumerate() {
            let field = format!("remove_claims[{i}]");
            check_name(&field, name)?;
            if ESSENTIAL_CLAIMS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    field,
                    format!("`{}` is needed by every verifier", shown(name)),
                ));
            }
        }
        Ok(ClaimShaping {
            copy,
            add,
            override_,
            remove,
        })
    }
}
