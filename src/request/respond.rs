//! The responses the filter sends itself: refusals (a JSON-RPC error body with its HTTP status and headers) and
//! the well-known documents.

use serde_json::Value;

use crate::config::Issuer;
use crate::crypto::Jwk;
use crate::host::LocalResponse;
use crate::refusal::Refusal;
use crate::well_known::{self, Endpoint};

/// A refusal's reply; `request_id` is the JSON-RPC id of the refused message when the body was parsed.
pub fn refusal(refusal: &Refusal, request_id: Option<&Value>) -> LocalResponse {
    let mut headers = vec![("content-type", "application/json".to_string())];
    headers.extend(refusal.headers());
    LocalResponse {
        status: refusal.status(),
        headers,
        body: refusal.body_for(request_id),
    }
}

/// The discovery document or the JWKS, for the keys published now.
pub fn well_known(endpoint: Endpoint, issuer: &Issuer, keys: &[&Jwk], ephemeral_key: bool) -> LocalResponse {
    let body = match endpoint {
        Endpoint::Discovery => well_known::discovery_document(&issuer.url, keys),
        Endpoint::Jwks => well_known::jwks_document(keys),
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
