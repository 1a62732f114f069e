//! The responses the filter sends itself: refusals (a JSON-RPC error body with its HTTP status and headers) and
//! the well-known documents.

use serde_json::Value;

use crate::config::{Issuer, ProtectedResource};
use crate::crypto::Jwk;
use crate::host::LocalResponse;
use crate::refusal::Refusal;
use crate::well_known::{self, Endpoint};

/// What a challenge names besides the refusal itself: the protected resource's metadata URL and the scope the
/// request needs (when known).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    /// `resource_metadata`: the RFC 9728 document of the resource the request belongs to.
    pub resource_metadata: Option<String>,
    /// `scope`: what this request needs (its required incoming scopes, else the resource's `scopes_supported`).
    pub scope: Option<String>,
}

/// A refusal's reply; `request_id` is the JSON-RPC id of the refused message when the body was parsed.
pub fn refusal(refusal: &Refusal, request_id: Option<&Value>, challenge: &Challenge) -> LocalResponse {
    let mut headers = vec![("content-type", "application/json".to_string())];
    headers.extend(refusal.headers());
    if let Some(value) = refusal.www_authenticate(challenge.resource_metadata.as_deref(), challenge.scope.as_deref()) {
        headers.push(("www-authenticate", value));
    }
    LocalResponse {
        status: refusal.status(),
        headers,
        body: refusal.body_for(request_id),
    }
}

/// A protected resource's RFC 9728 metadata document.
pub fn resource_metadata(resource: &ProtectedResource) -> LocalResponse {
    LocalResponse {
        status: 200,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", well_known::CACHE_CONTROL_RESOURCE_METADATA.to_string()),
            ("access-control-allow-origin", "*".to_string()),
        ],
        body: resource.document.clone().into_bytes(),
    }
}

/// The discovery document or the JWKS, for the keys published now.
pub fn well_known(endpoint: Endpoint, issuer: &Issuer, keys: &[&Jwk], ephemeral_key: bool) -> LocalResponse {
    let body = match endpoint {
        Endpoint::Discovery => well_known::discovery_document(&issuer.url, keys),
        Endpoint::Jwks | Endpoint::ProtectedResource(_) => well_known::jwks_document(keys),
    };
    let cache_control = if ephemeral_key {
        well_known::CACHE_CONTROL_EPHEMERAL
    } else {
        well_known::CACHE_CONTROL_CONFIGURED
    };
    LocalResponse {
        status: 200,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", cache_control.to_string()),
            ("access-control-allow-origin", "*".to_string()),
        ],
        body: body.into_bytes(),
    }
}
