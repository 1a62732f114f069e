//! Per-route settings from the matched route's metadata (namespace [`ROUTE_METADATA_NAMESPACE`]):
//! `metadata: {filter_metadata: {mcp_jwt_signer: {audience: ..., allowed_tools: [...], fixed_scopes: [...],
//! token_header: ..., client_authorization: ...}}}`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::scopes::check_scope_list;
use crate::config::upstream::writable_header_name;
use crate::config::ClientAuthorization;
use crate::config::ScopeSource;
use crate::host::{Host, Unavailable};
use crate::mcp;
use crate::refusal::Refusal;

/// The keys route metadata may hold.
pub const ROUTE_KEYS: [&str; 6] = [
    "audience",
    "allowed_tools",
    "scope_source",
    "fixed_scopes",
    "token_header",
    "client_authorization",
];

/// Route metadata namespace read by the filter.
pub const ROUTE_METADATA_NAMESPACE: &str = "mcp_jwt_signer";

/// The attribute path of this filter's route metadata.
pub const ROUTE_METADATA_PATH: [&str; 4] = ["xds", "route_metadata", "filter_metadata", ROUTE_METADATA_NAMESPACE];

/// What identifies the route a request takes. The signer reads it before its first header edit, and scopes the
/// token from that route's metadata. Envoy's wasm host clears the route cache on every header write, so the
/// router matches again on the edited headers, and a filter cannot see the new match (its attributes keep
/// showing the old route until the router runs). The route guard, the same module run as an upstream HTTP filter
/// of the router, reads the route the request really takes and refuses the request when its key differs from
/// the signer's (see `request::guard`).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteKey {
    /// `xds/route_name` (`None` for an unnamed route).
    pub name: Option<Value>,
    /// `xds/cluster_name`: where the request goes.
    pub cluster: Option<Value>,
    /// This filter's route metadata (audience, allow-list), or the failure to read it.
    pub metadata: Result<Option<Value>, Unavailable>,
}

/// The request header in which the signer tells the route guard which route the token was scoped for. The signer
/// always sets it (replacing whatever the client sent); the guard removes it before the request goes upstream.
pub const ROUTE_HEADER: &str = "x-mcp-jwt-signer-route";

/// The attribute paths of a [`RouteKey`].
pub const ROUTE_NAME_PATH: [&str; 2] = ["xds", "route_name"];
/// See [`ROUTE_NAME_PATH`].
pub const CLUSTER_NAME_PATH: [&str; 2] = ["xds", "cluster_name"];

impl RouteKey {
    /// Reads the current route's key (three attribute reads). A name that cannot be read reads as absent: the
    /// comparison still catches a change of the other parts.
    pub fn read(host: &dyn Host) -> RouteKey {
        RouteKey {
            name: host.attribute(&ROUTE_NAME_PATH).ok().flatten(),
            cluster: host.attribute(&CLUSTER_NAME_PATH).ok().flatten(),
            metadata: host.attribute(&ROUTE_METADATA_PATH),
        }
    }

    /// A short digest of the key (base64url of the first 16 bytes of SHA-256 over its JSON), carried from the
    /// signer to the route guard in [`ROUTE_HEADER`].
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let metadata = match &self.metadata {
            Ok(value) => value.clone().unwrap_or(Value::Null),
            Err(Unavailable) => Value::String("<unavailable>".into()),
        };
        let canonical = serde_json::json!([self.name, self.cluster, metadata]).to_string();
        crate::crypto::b64::encode(&Sha256::digest(canonical.as_bytes())[..16])
    }

    /// The route's settings for this filter.
    pub fn settings(&self) -> Result<RouteSettings, Refusal> {
        match &self.metadata {
            Ok(value) => RouteSettings::from_namespace(value.as_ref()),
            Err(Unavailable) => Err(Refusal::BadRouteMetadata("route metadata could not be read")),
        }
    }
}

/// The settings of the route a request takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSettings {
    /// `aud` for this route's MCP server (its canonical URI, RFC 8707), instead of the plugin's `audience`.
    pub audience: Option<String>,
    /// Tools this route may call; `None`: no restriction.
    pub allowed_tools: Option<BTreeSet<String>>,
    /// Where this route's tokens are scoped from; `None`: the plugin's `scope_source`.
    pub scope_source: Option<ScopeSource>,
    /// `scope` for this route's tokens instead of the computed one (and of the plugin's `fixed_scopes`).
    pub fixed_scopes: Option<Vec<String>>,
    /// The header this route's token goes in, instead of the plugin's `token_header` (lower case).
    pub token_header: Option<String>,
    /// What becomes of the client's `Authorization` on this route, instead of the plugin's setting.
    pub client_authorization: Option<ClientAuthorization>,
}

impl RouteSettings {
    /// Decodes the route's whole metadata namespace for this filter (`None`: the route sets none). Unknown keys
    /// are refused: a typo such as `audiance` must not silently mint tokens for the plugin's audience.
    pub fn from_namespace(value: Option<&Value>) -> Result<RouteSettings, Refusal> {
        let Some(value) = value else {
            return Ok(RouteSettings::default());
        };
        let map = match value {
            Value::Object(map) => map,
            // An empty map and an empty list look the same in Envoy's encoding.
            Value::Array(items) if items.is_empty() => return Ok(RouteSettings::default()),
            _ => {
                return Err(Refusal::BadRouteMetadata(
                    "route metadata `mcp_jwt_signer` must be a map",
                ))
            }
        };
        if map.keys().any(|k| !ROUTE_KEYS.contains(&k.as_str())) {
            return Err(Refusal::BadRouteMetadata(
                "route metadata `mcp_jwt_signer` has a key other than `audience`, `allowed_tools`, `scope_source`, \
                 `fixed_scopes`, `token_header` and `client_authorization`",
            ));
        }
        let mut settings = Self::from_values(map.get("audience"), map.get("allowed_tools"))?;
        settings.fixed_scopes = match map.get("fixed_scopes") {
            None => None,
            Some(value) => {
                let items = match value {
                    Value::Array(items) => items.as_slice(),
                    Value::String(_) => std::slice::from_ref(value),
                    _ => {
                        return Err(Refusal::BadRouteMetadata(
                            "route metadata `fixed_scopes` must be a list",
                        ))
                    }
                };
                let scopes: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_string)).collect();
                let scopes = scopes.ok_or(Refusal::BadRouteMetadata(
                    "route metadata `fixed_scopes` must list strings",
                ))?;
                check_scope_list(scopes.iter().map(String::as_str)).map_err(Refusal::BadRouteMetadata)?;
                Some(scopes)
            }
        };
        settings.token_header = match map.get("token_header") {
            None => None,
            Some(Value::String(name)) => Some(writable_header_name(name).map_err(|_| {
                Refusal::BadRouteMetadata("route metadata `token_header` is not a header the filter may write")
            })?),
            Some(_) => {
                return Err(Refusal::BadRouteMetadata(
                    "route metadata `token_header` must be a string",
                ))
            }
        };
        settings.client_authorization = match map.get("client_authorization") {
            None => None,
            Some(value) => Some(value.as_str().and_then(ClientAuthorization::parse).ok_or(
                Refusal::BadRouteMetadata("route metadata `client_authorization` must be \"strip\" or \"forward\""),
            )?),
        };
        settings.scope_source = match map.get("scope_source") {
            None => None,
            Some(Value::String(text)) => Some(ScopeSource::parse(text).ok_or(Refusal::BadRouteMetadata(
                "route metadata `scope_source` must be \"body\" or \"headers\"",
            ))?),
            Some(_) => {
                return Err(Refusal::BadRouteMetadata(
                    "route metadata `scope_source` must be \"body\" or \"headers\"",
                ))
            }
        };
        Ok(settings)
    }

    fn from_values(audience: Option<&Value>, allowed_tools: Option<&Value>) -> Result<RouteSettings, Refusal> {
        let audience = match audience {
            None => None,
            Some(Value::String(aud)) if !aud.is_empty() && !aud.chars().any(char::is_control) => Some(aud.clone()),
            Some(_) => return Err(Refusal::BadRouteMetadata("route metadata `audience` must be a string")),
        };
        let allowed_tools = match allowed_tools {
            None => None,
            Some(value) => {
                let tools = match value {
                    Value::Array(items) => items.as_slice(),
                    // A one-element list and a string are told apart by shape only; accept a single name too.
                    Value::String(_) => std::slice::from_ref(value),
                    _ => {
                        return Err(Refusal::BadRouteMetadata(
                            "route metadata `allowed_tools` must be a list",
                        ))
                    }
                };
                let names: Option<BTreeSet<String>> = tools
                    .iter()
                    .map(|t| t.as_str().filter(|n| mcp::is_valid_tool_name(n)).map(str::to_string))
                    .collect();
                Some(names.ok_or(Refusal::BadRouteMetadata(
                    "route metadata `allowed_tools` must list valid tool names",
                ))?)
            }
        };
        Ok(RouteSettings {
            audience,
            allowed_tools,
            ..RouteSettings::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_empty_list_is_no_settings_any_other_list_is_refused() {
        // Envoy encodes an empty map and an empty list alike.
        assert_eq!(
            RouteSettings::from_namespace(Some(&json!([]))).unwrap(),
            RouteSettings::default()
        );
        for bad in [json!(["audience"]), json!("x"), json!(1)] {
            assert!(RouteSettings::from_namespace(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn delivery_and_fixed_scopes_in_route_metadata() {
        let ns = json!({"fixed_scopes": ["mcp:tools/call", "weather:read"], "token_header": "X-MCP-Gateway-Token",
                        "client_authorization": "forward"});
        let r = RouteSettings::from_namespace(Some(&ns)).unwrap();
        assert_eq!(r.fixed_scopes.unwrap(), ["mcp:tools/call", "weather:read"]);
        assert_eq!(r.token_header.as_deref(), Some("x-mcp-gateway-token"));
        assert_eq!(r.client_authorization, Some(ClientAuthorization::Forward));
        // Envoy cannot tell a one-element list from a string: both are read as one scope.
        let one = json!({"fixed_scopes": "mcp:tools/call"});
        assert_eq!(
            RouteSettings::from_namespace(Some(&one)).unwrap().fixed_scopes.unwrap(),
            ["mcp:tools/call"]
        );
    }

    #[test]
    fn route_namespace_decoding() {
        let ns = json!({"audience": "https://a", "allowed_tools": ["x", "y"]});
        let r = RouteSettings::from_namespace(Some(&ns)).unwrap();
        assert_eq!(r.audience.as_deref(), Some("https://a"));
        assert_eq!(r.allowed_tools.unwrap().len(), 2);
        assert_eq!(RouteSettings::from_namespace(None).unwrap(), RouteSettings::default());
        let typo = json!({"audiance": "https://a"});
        assert!(RouteSettings::from_namespace(Some(&typo)).is_err());
        let single = json!({"allowed_tools": "x"});
        assert_eq!(
            RouteSettings::from_namespace(Some(&single)).unwrap().allowed_tools,
            Some(BTreeSet::from(["x".to_string()]))
        );
        let empty = json!({"allowed_tools": []});
        assert_eq!(
            RouteSettings::from_namespace(Some(&empty)).unwrap().allowed_tools,
            Some(BTreeSet::new())
        );
        for bad in [
            json!({"allowed_tools": ["a b"]}),
            json!({"allowed_tools": 5}),
            json!({"audience": 1.0}),
            json!({"audience": ""}),
            json!("x"),
            json!({"fixed_scopes": []}),
            json!({"fixed_scopes": ["a b"]}),
            json!({"fixed_scopes": ["a", "a"]}),
            json!({"fixed_scopes": [1]}),
            json!({"fixed_scopes": {"a": 1}}),
            json!({"token_header": "content-length"}),
            json!({"token_header": "a b"}),
            json!({"token_header": 1}),
            json!({"client_authorization": "pass"}),
            json!({"client_authorization": true}),
        ] {
            assert!(RouteSettings::from_namespace(Some(&bad)).is_err(), "{bad}");
        }
    }
}
