//! The plugin configuration as the operator writes it: every field, typed, unknown fields refused. Validation
//! and defaults are applied in `config/mod.rs` and the field groups' files.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::authorization::RawProtectedResource;
use super::cache::RawTokenCache;
use super::delegation::RawDelegation;
use super::introspection::RawIntrospection;
use super::sources::IdentityConfig;
use super::upstream::RawChannelToken;

/// The configuration as written by the operator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub ttl_seconds: Option<i64>,
    pub signing_key: Option<String>,
    pub actor: Option<String>,
    pub identity: Option<IdentityConfig>,
    pub max_body_bytes: Option<i64>,
    pub max_token_bytes: Option<i64>,
    pub jwt_payload_in_metadata: Option<String>,
    pub require_subject: Option<bool>,
    pub required_claims: Option<Vec<String>>,
    pub copy_claims: Option<BTreeMap<String, String>>,
    pub add_claims: Option<Map<String, Value>>,
    pub override_claims: Option<Map<String, Value>>,
    pub remove_claims: Option<Vec<String>>,
    pub strip_identity_headers: Option<bool>,
    pub token_cache: Option<RawTokenCache>,
    pub algorithm: Option<String>,
    pub additional_public_keys: Option<Vec<String>>,
    pub protected_resources: Option<Vec<RawProtectedResource>>,
    pub jwt_failure_in_metadata: Option<String>,
    pub required_incoming_scopes: Option<BTreeMap<String, Vec<String>>>,
    pub incoming_scopes: Option<Vec<String>>,
    pub scope_hierarchy: Option<BTreeMap<String, Vec<String>>>,
    pub scope_source: Option<String>,
    pub allow_body_buffering: Option<bool>,
    pub audit_fields: Option<bool>,
    pub audit_omit: Option<Vec<String>>,
    pub token_header: Option<String>,
    pub client_authorization: Option<String>,
    pub channel_token: Option<RawChannelToken>,
    pub debug_header: Option<Value>,
    pub fixed_scopes: Option<Vec<String>>,
    pub introspection: Option<RawIntrospection>,
    pub delegation: Option<RawDelegation>,
}
