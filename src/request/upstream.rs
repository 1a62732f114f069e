//! How one request's tokens reach the upstream: the plugin's `token_header` and `client_authorization` with the
//! route's overrides, what the headers phase removes from the client's request, and the header edits that carry
//! the minted token, the channel token and the debug summary.
//!
//! No token passthrough (MCP authorization): the client's `Authorization` is removed, every copy, before anything
//! else happens, unless the route forwards it (`client_authorization: "forward"`, only with a `token_header`
//! other than `authorization`: the client's token was issued for that upstream by the upstream's own
//! authorization server). A client can never supply the headers the filter writes: its copies are removed too.

use crate::config::upstream::ChannelToken;
use crate::config::{sources, ClientAuthorization, Config};
use crate::host::{HeaderEdit, Headers};
use crate::refusal::Refusal;

use super::route::RouteSettings;

/// The delivery of one request's tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The header the minted token goes in.
    pub token_header: &'a str,
    /// What becomes of the client's `Authorization`.
    pub client_authorization: ClientAuthorization,
    /// The channel token's settings, if one is minted.
    pub channel_token: Option<&'a ChannelToken>,
    /// The debug header's name, if it is on.
    pub debug_header: Option<&'a str>,
}

/// The plugin's delivery with the route's overrides. A route whose overrides contradict each other or the plugin
/// (forwarding the client's `Authorization` while the token goes there too; a token header the filter writes
/// for something else, or that an identity source reads) is an operator error: 500, nothing forwarded.
pub fn delivery<'a>(config: &'a Config, route: Option<&'a RouteSettings>) -> Result<Delivery<'a>, Refusal> {
    let upstream = &config.upstream;
    let token_header = route
        .and_then(|r| r.token_header.as_deref())
        .unwrap_or(&upstream.token_header);
    let client_authorization = route
        .and_then(|r| r.client_authorization)
        .unwrap_or(upstream.client_authorization);
    if client_authorization == ClientAuthorization::Forward && token_header == "authorization" {
        return Err(Refusal::BadRouteMetadata(
            "`client_authorization: forward` needs a `token_header` other than authorization",
        ));
    }
    let channel_token = upstream.channel_token.as_ref();
    let debug_header = upstream.debug_header.as_deref();
    if channel_token.is_some_and(|c| c.header == token_header) || debug_header == Some(token_header) {
        return Err(Refusal::BadRouteMetadata(
            "route metadata `token_header` is the channel token's or the debug header",
        ));
    }
    let copied = config.claims.copy.iter().map(|(_, source)| source);
    if sources::header_names(config.identity.all().chain(copied)).any(|name| name == token_header) {
        return Err(Refusal::BadRouteMetadata(
            "route metadata `token_header` is a header an identity source reads",
        ));
    }
    Ok(Delivery {
        token_header,
        client_authorization,
        channel_token,
        debug_header,
    })
}

/// The delivery the headers phase acts on: the route's, or, when the route's settings are unusable (the request
/// is refused later), the plugin's with the client's `Authorization` stripped.
pub fn headers_phase_delivery<'a>(config: &'a Config, route: Option<&'a RouteSettings>) -> Delivery<'a> {
    delivery(config, route).unwrap_or(Delivery {
        token_header: &config.upstream.token_header,
        client_authorization: ClientAuthorization::Strip,
        channel_token: config.upstream.channel_token.as_ref(),
        debug_header: config.upstream.debug_header.as_deref(),
    })
}

/// Headers-phase edits: the client's `Authorization` removed (unless forwarded), and the client's copies of every
/// header the filter writes. `headers` are the request headers as they arrived; `had_authorization`: whether
/// they held an `authorization`.
pub fn client_edits(delivery: &Delivery<'_>, headers: &Headers, had_authorization: bool) -> Vec<HeaderEdit> {
    let mut edits = Vec::new();
    if had_authorization && delivery.client_authorization == ClientAuthorization::Strip {
        edits.push(HeaderEdit::Remove("authorization"));
    }
    let written = std::iter::once(delivery.token_header)
        .chain(delivery.channel_token.map(|c| c.header.as_str()))
        .chain(delivery.debug_header);
    for name in written {
        if name != "authorization" && headers.contains(name) {
            edits.push(HeaderEdit::RemoveNamed(name.to_string()));
        }
    }
    edits
}

/// The edits that deliver the tokens: `Bearer <jwt>` in the token header, the channel token in its header, the
/// debug summary.
pub fn token_edits(
    delivery: &Delivery<'_>,
    jwt: &str,
    channel: Option<&str>,
    debug: Option<String>,
) -> Vec<HeaderEdit> {
    let mut edits = vec![match delivery.token_header {
        "authorization" => HeaderEdit::Set("authorization", format!("Bearer {jwt}")),
        other => HeaderEdit::SetNamed(other.to_string(), format!("Bearer {jwt}")),
    }];
    if let (Some(settings), Some(channel)) = (delivery.channel_token, channel) {
        edits.push(HeaderEdit::SetNamed(
            settings.header.clone(),
            format!("Bearer {channel}"),
        ));
    }
    if let (Some(name), Some(value)) = (delivery.debug_header, debug) {
        edits.push(HeaderEdit::SetNamed(name.to_string(), value));
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes()).unwrap()
    }

    fn headers(names: &[&str]) -> Headers {
        Headers(names.iter().map(|n| (n.to_string(), b"x".to_vec())).collect())
    }

    #[test]
    fn the_route_overrides_the_plugin() {
        let c = config("{}");
        let d = delivery(&c, None).unwrap();
        assert_eq!(
            (d.token_header, d.client_authorization),
            ("authorization", ClientAuthorization::Strip)
        );
        let route = RouteSettings {
            token_header: Some("x-mcp-gateway-token".into()),
            client_authorization: Some(ClientAuthorization::Forward),
            ..RouteSettings::default()
        };
        let d = delivery(&c, Some(&route)).unwrap();
        assert_eq!(
            (d.token_header, d.client_authorization),
            ("x-mcp-gateway-token", ClientAuthorization::Forward)
        );
        let forward_only = RouteSettings {
            client_authorization: Some(ClientAuthorization::Forward),
            ..RouteSettings::default()
        };
        assert!(delivery(&c, Some(&forward_only)).is_err());
        // The headers phase then strips.
        assert_eq!(
            headers_phase_delivery(&c, Some(&forward_only)).client_authorization,
            ClientAuthorization::Strip
        );
        let c = config(r#"{"channel_token":{"audience":"ch"},"identity":{"subject":["header:x-user-id"]}}"#);
        for header in ["x-mcp-channel-token", "x-user-id"] {
            let clash = RouteSettings {
                token_header: Some(header.into()),
                ..RouteSettings::default()
            };
            assert!(delivery(&c, Some(&clash)).is_err(), "{header}");
        }
    }

    #[test]
    fn the_client_cannot_supply_what_the_filter_writes() {
        let c = config(r#"{"token_header":"x-gw","channel_token":{"audience":"ch"},"debug_header":true}"#);
        let d = delivery(&c, None).unwrap();
        let sent = headers(&[
            "authorization",
            "x-gw",
            "x-mcp-channel-token",
            "x-mcp-jwt-debug",
            "x-other",
        ]);
        assert_eq!(
            client_edits(&d, &sent, true),
            vec![
                HeaderEdit::Remove("authorization"),
                HeaderEdit::RemoveNamed("x-gw".into()),
                HeaderEdit::RemoveNamed("x-mcp-channel-token".into()),
                HeaderEdit::RemoveNamed("x-mcp-jwt-debug".into()),
            ]
        );
        let c = config(r#"{"token_header":"x-gw","client_authorization":"forward"}"#);
        let d = delivery(&c, None).unwrap();
        assert_eq!(
            client_edits(&d, &sent, true),
            vec![HeaderEdit::RemoveNamed("x-gw".into())]
        );
        assert!(client_edits(&d, &headers(&[]), false).is_empty());
    }

    #[test]
    fn token_edits_name_each_header() {
        let c = config(r#"{"channel_token":{"audience":"ch"},"debug_header":{"name":"x-dbg"}}"#);
        let d = delivery(&c, None).unwrap();
        assert_eq!(
            token_edits(&d, "A", Some("C"), Some("v=1".into())),
            vec![
                HeaderEdit::Set("authorization", "Bearer A".into()),
                HeaderEdit::SetNamed("x-mcp-channel-token".into(), "Bearer C".into()),
                HeaderEdit::SetNamed("x-dbg".into(), "v=1".into()),
            ]
        );
    }
}
