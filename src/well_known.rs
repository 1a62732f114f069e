//! The documents the filter serves itself: its OIDC discovery document and JWKS (under the issuer's path), and
//! the RFC 9728 protected resource metadata of each configured MCP resource.

use serde::Serialize;
use serde_json::json;

use crate::config::authorization::PROTECTED_RESOURCE_PREFIX;
use crate::config::{ProtectedResource, FILTER_CLAIMS};
use crate::crypto::Jwk;

/// The OIDC discovery document, under the issuer's path.
pub const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";
/// The JWKS, under the issuer's path.
pub const JWKS_SUFFIX: &str = "/.well-known/jwks.json";

/// `Cache-Control` for a configured key: verifiers may cache for five minutes (and must re-fetch on an unknown
/// `kid`).
pub const CACHE_CONTROL_CONFIGURED: &str = "public, max-age=300";
/// `Cache-Control` for an auto-generated key, which changes on every Envoy restart: keep verifier caches short.
pub const CACHE_CONTROL_EPHEMERAL: &str = "public, max-age=60";

/// The documents the filter serves itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/.well-known/openid-configuration`.
    Discovery,
    /// `/.well-known/jwks.json`.
    Jwks,
    /// `/.well-known/oauth-protected-resource<path>`: the metadata of `protected_resources[i]`.
    ProtectedResource(usize),
}

/// `Cache-Control` for protected resource metadata (configuration: changes only with a new configuration).
pub const CACHE_CONTROL_RESOURCE_METADATA: &str = "public, max-age=300";

/// Which endpoint, if any, `path` names. The query string is ignored (never forwarded either); the path must
/// match exactly, case-sensitively, under the issuer's path. Envoy normalises the path before the filter.
pub fn endpoint(path: &[u8], issuer_path: &str, resources: &[ProtectedResource]) -> Option<Endpoint> {
    let path = match path.iter().position(|&b| b == b'?') {
        Some(i) => &path[..i],
        None => path,
    };
    if path.starts_with(PROTECTED_RESOURCE_PREFIX.as_bytes()) {
        if let Some(i) = resources.iter().position(|r| r.metadata_path().as_bytes() == path) {
            return Some(Endpoint::ProtectedResource(i));
        }
        // With one resource, its metadata is also at the bare well-known URI (RFC 9728 section 3.1).
        if resources.len() == 1 && path == PROTECTED_RESOURCE_PREFIX.as_bytes() {
            return Some(Endpoint::ProtectedResource(0));
        }
    }
    let rest = path.strip_prefix(issuer_path.as_bytes())?;
    if rest == DISCOVERY_SUFFIX.as_bytes() {
        Some(Endpoint::Discovery)
    } else if rest == JWKS_SUFFIX.as_bytes() {
        Some(Endpoint::Jwks)
    } else {
        None
    }
}

/// The JWKS URL of an issuer.
pub fn jwks_uri(issuer_url: &str) -> String {
    format!("{issuer_url}{JWKS_SUFFIX}")
}

/// OpenID Connect Discovery 1.0 metadata. The filter is not an OpenID provider (it has no authorization
/// endpoint); it publishes the members verifiers read, plus the ones the spec marks REQUIRED so that strict
/// OIDC clients accept the document.
pub fn discovery_document(issuer_url: &str, keys: &[&Jwk]) -> String {
    // The signing key's algorithm first, then those of keys published for rotation.
    let mut algorithms: Vec<&str> = Vec::new();
    for key in keys {
        if !algorithms.contains(&key.alg) {
            algorithms.push(key.alg);
        }
    }
    json!({
        "issuer": issuer_url,
        "jwks_uri": jwks_uri(issuer_url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": FILTER_CLAIMS,
        "scopes_supported": ["mcp:tools/call", "mcp:tools/list"],
    })
    .to_string()
}

#[derive(Serialize)]
struct JwkSet<'a> {
    keys: &'a [&'a Jwk],
}

/// The JWKS document.
pub fn jwks_document(keys: &[&Jwk]) -> String {
    serde_json::to_string(&JwkSet { keys }).unwrap_or_else(|_| r#"{"keys":[]}"#.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_at_root_and_under_a_path() {
        assert_eq!(
            endpoint(b"/.well-known/openid-configuration", "", &[]),
            Some(Endpoint::Discovery)
        );
        assert_eq!(endpoint(b"/.well-known/jwks.json?x=1", "", &[]), Some(Endpoint::Jwks));
        assert_eq!(endpoint(b"/t/.well-known/jwks.json", "/t", &[]), Some(Endpoint::Jwks));
        for other in [
            &b"/.well-known/jwks.json"[..],
            b"/t/.well-known/jwks.json/",
            b"/t/.well-known/JWKS.json",
            b"/tt/.well-known/jwks.json",
            b"/t/mcp",
        ] {
            assert_eq!(endpoint(other, "/t", &[]), None, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn discovery_names_the_jwks_under_the_issuer() {
        let rsa = crate::crypto::rsa::rsa_jwk(&[1, 2, 3], &[1, 0, 1]);
        let ed = crate::crypto::ed25519::ed25519_jwk(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key());
        let doc: serde_json::Value =
            serde_json::from_str(&discovery_document("https://gw/t", &[&rsa, &ed, &rsa])).unwrap();
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            serde_json::json!(["RS256", "EdDSA"])
        );
        assert_eq!(doc["issuer"], "https://gw/t");
        assert_eq!(doc["jwks_uri"], "https://gw/t/.well-known/jwks.json");
        assert_eq!(doc["id_token_signing_alg_values_supported"][0], "RS256");
    }
}
