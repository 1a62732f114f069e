//! Which ABI getter answers an attribute path of [`crate::host::Host::attribute`].
//!
//! proxy-wasm reads any attribute by a path of segments (`["connection", "uri_san_peer_certificate"]`); the
//! dynamic-modules ABI has an enum of attribute ids with typed getters, and metadata getters that read one
//! top-level key of one namespace. This module maps a path onto those, purely (unit-tested); `host` performs the
//! calls. A path the ABI cannot answer is [`Resolved::Unsupported`]: the native build refuses a configuration
//! that names one at load (see [`unsupported_sources`]), and reads it as "cannot be read" at run time.

use crate::config::{Config, Source, JWT_AUTHN_NAMESPACE};
use crate::identity::attribute_path;

use super::abi::{attr, METADATA_CLUSTER, METADATA_DYNAMIC, METADATA_ROUTE};

/// How an attribute path is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved<'p> {
    /// A string attribute (`get_attribute_string`).
    Str(u32),
    /// An integer attribute (`get_attribute_int`).
    Int(u32),
    /// A boolean attribute (`get_attribute_bool`).
    Bool(u32),
    /// Metadata of `source` (`METADATA_*`): the namespace `ns` as a map (`key: None`), one key, or deeper (`rest`:
    /// list indices only; the ABI has no getter for a nested map).
    Metadata {
        /// `METADATA_DYNAMIC`, `METADATA_ROUTE` or `METADATA_CLUSTER`.
        source: u32,
        /// The namespace (filter name).
        ns: &'p str,
        /// A top-level key of the namespace.
        key: Option<&'p str>,
        /// Segments below the key.
        rest: &'p [&'p str],
    },
    /// jwt_authn's record `name` (its verified payload, its failure status), at `rest` inside it (see `super::jwt`).
    JwtAuthn {
        /// The metadata name (`payload_in_metadata`, `failed_status_in_metadata`).
        name: &'p str,
        /// The path inside the record (empty: the whole record).
        rest: &'p [&'p str],
    },
    /// Nothing in the ABI answers this path.
    Unsupported,
}

/// Resolves an attribute path.
pub fn resolve<'p>(path: &'p [&'p str]) -> Resolved<'p> {
    use Resolved::*;
    let metadata = |source, rest: &'p [&'p str]| match rest {
        [ns, tail @ ..] => Metadata {
            source,
            ns,
            key: tail.first().copied(),
            rest: tail.get(1..).unwrap_or_default(),
        },
        [] => Unsupported,
    };
    match path {
        ["metadata", "filter_metadata", ns, name, rest @ ..] if *ns == JWT_AUTHN_NAMESPACE => JwtAuthn { name, rest },
        ["metadata", "filter_metadata", rest @ ..] => metadata(METADATA_DYNAMIC, rest),
        ["xds", "route_metadata", "filter_metadata", rest @ ..] => metadata(METADATA_ROUTE, rest),
        ["xds", "cluster_metadata", "filter_metadata", rest @ ..] => metadata(METADATA_CLUSTER, rest),
        ["request", name] => match *name {
            "path" => Str(attr::REQUEST_PATH),
            "url_path" => Str(attr::REQUEST_URL_PATH),
            "host" => Str(attr::REQUEST_HOST),
            "scheme" => Str(attr::REQUEST_SCHEME),
            "method" => Str(attr::REQUEST_METHOD),
            "referer" => Str(attr::REQUEST_REFERER),
            "useragent" => Str(attr::REQUEST_USER_AGENT),
            "id" => Str(attr::REQUEST_ID),
            "protocol" => Str(attr::REQUEST_PROTOCOL),
            "query" => Str(attr::REQUEST_QUERY),
            _ => Unsupported,
        },
        ["source", "address"] => Str(attr::SOURCE_ADDRESS),
        ["source", "port"] => Int(attr::SOURCE_PORT),
        ["destination", "address"] => Str(attr::DESTINATION_ADDRESS),
        ["destination", "port"] => Int(attr::DESTINATION_PORT),
        ["connection", name] => match *name {
            "id" => Int(attr::CONNECTION_ID),
            "mtls" => Bool(attr::CONNECTION_MTLS),
            "requested_server_name" => Str(attr::CONNECTION_REQUESTED_SERVER_NAME),
            "tls_version" => Str(attr::CONNECTION_TLS_VERSION),
            "subject_local_certificate" => Str(attr::CONNECTION_SUBJECT_LOCAL_CERTIFICATE),
            "subject_peer_certificate" => Str(attr::CONNECTION_SUBJECT_PEER_CERTIFICATE),
            "dns_san_local_certificate" => Str(attr::CONNECTION_DNS_SAN_LOCAL_CERTIFICATE),
            "dns_san_peer_certificate" => Str(attr::CONNECTION_DNS_SAN_PEER_CERTIFICATE),
            "uri_san_local_certificate" => Str(attr::CONNECTION_URI_SAN_LOCAL_CERTIFICATE),
            "uri_san_peer_certificate" => Str(attr::CONNECTION_URI_SAN_PEER_CERTIFICATE),
            "sha256_peer_certificate_digest" => Str(attr::CONNECTION_SHA256_PEER_CERTIFICATE_DIGEST),
            _ => Unsupported,
        },
        ["xds", "route_name"] => Str(attr::XDS_ROUTE_NAME),
        ["xds", "virtual_host_name"] => Str(attr::XDS_VIRTUAL_HOST_NAME),
        // Envoy 1.40 answers neither `xds.cluster_name` nor `xds.filter_chain_name` (nor `xds.node`) through the
        // attribute getters: unsupported, so a source naming one is refused at load. The route check reads the
        // cluster as absent natively; it does not need it (a header edit does not re-route natively).
        _ => Unsupported,
    }
}

/// The configured sources the native build cannot read (e.g. `property:xds/node/metadata/...`: the ABI has no
/// getter for node metadata), as the operator wrote them, with the field that names them.
pub fn unsupported_sources(config: &Config) -> Vec<(String, String)> {
    let identity = config.identity.all().map(|s| ("identity", s));
    let copies = config.claims.copy.iter().map(|(_, s)| ("copy_claims", s));
    let required = config.required_claims.iter().map(|s| ("required_claims", s));
    let mut out = Vec::new();
    for (field, source) in identity.chain(copies).chain(required) {
        if let Source::Property(_) = source {
            let Some(path) = attribute_path(source, &config.jwt_payload_in_metadata) else {
                continue;
            };
            if resolve(&path) == Resolved::Unsupported {
                out.push((field.to_string(), source.describe()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_onto_the_abi() {
        assert_eq!(resolve(&["connection", "tls_version"]), Resolved::Str(31));
        assert_eq!(resolve(&["connection", "mtls"]), Resolved::Bool(29));
        assert_eq!(resolve(&["connection", "uri_san_peer_certificate"]), Resolved::Str(37));
        assert_eq!(resolve(&["connection", "dns_san_peer_certificate"]), Resolved::Str(35));
        assert_eq!(resolve(&["connection", "subject_peer_certificate"]), Resolved::Str(33));
        assert_eq!(resolve(&["xds", "route_name"]), Resolved::Str(61));
        assert_eq!(resolve(&["xds", "cluster_name"]), Resolved::Unsupported);
        assert_eq!(resolve(&["source", "port"]), Resolved::Int(25));
        assert_eq!(
            resolve(&["xds", "route_metadata", "filter_metadata", "mcp_jwt_signer"]),
            Resolved::Metadata {
                source: METADATA_ROUTE,
                ns: "mcp_jwt_signer",
                key: None,
                rest: &[]
            }
        );
        assert_eq!(
            resolve(&["metadata", "filter_metadata", "ns", "k", "0"]),
            Resolved::Metadata {
                source: METADATA_DYNAMIC,
                ns: "ns",
                key: Some("k"),
                rest: &["0"]
            }
        );
        let claim = ["metadata", "filter_metadata", JWT_AUTHN_NAMESPACE, "p", "org", "team"];
        assert_eq!(
            resolve(&claim),
            Resolved::JwtAuthn {
                name: "p",
                rest: &["org", "team"]
            }
        );
        // The whole namespace is plain metadata (its records are Structs: unreadable).
        assert!(matches!(
            resolve(&["metadata", "filter_metadata", JWT_AUTHN_NAMESPACE]),
            Resolved::Metadata { key: None, .. }
        ));
        for unsupported in [
            &["xds", "node", "metadata", "WORKLOAD"][..],
            &["request", "headers"],
            &["connection"],
            &["metadata", "filter_metadata"],
            &[],
        ] {
            assert_eq!(resolve(unsupported), Resolved::Unsupported, "{unsupported:?}");
        }
    }

    #[test]
    fn unsupported_property_sources_are_named_with_their_field() {
        let config = Config::parse(
            br#"{"identity":{"actor":["property:xds/node/metadata/WORKLOAD","property:xds/route_name"]},
                 "copy_claims":{"route":"property:request/bogus","g":"jwt:groups"}}"#,
        )
        .unwrap();
        assert_eq!(
            unsupported_sources(&config),
            vec![
                (
                    "identity".to_string(),
                    "property:xds/node/metadata/WORKLOAD".to_string()
                ),
                ("copy_claims".to_string(), "property:request/bogus".to_string()),
            ]
        );
    }
}
