//! The filter's decisions for one request, as pure functions of what the host read. `host` only reads values,
//! calls these, and carries out the answer.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::cache::{Lookup, TokenCache};
use crate::claims::{self, Call, ClaimInputs, TimelessClaims};
use crate::config::{Config, Issuer};
use crate::identity::{RequestFacts, Resolver, Source};
use crate::jwt;
use crate::keys::Jwk;
use crate::mcp;
use crate::property;
use crate::refusal::Refusal;
use crate::signer::Signer;
use crate::well_known::{self, Endpoint};

/// The request line and the headers the decision depends on, as raw bytes (clients control them).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub content_length: Option<&'a [u8]>,
    /// Every `content-encoding` value (a repeated header must not hide a second encoding behind `identity`).
    pub content_encoding: &'a [&'a [u8]],
    /// The headers were the whole request (no body follows).
    pub end_of_stream: bool,
}

/// What to do once the request headers are in.
#[derive(Debug, PartialEq)]
pub enum HeadDecision {
    /// Answer from the filter: discovery or JWKS.
    Serve(Endpoint),
    Refuse(Refusal),
    /// No body: sign now.
    Sign(Call),
    /// Buffer the body, then call [`on_body`].
    AwaitBody(BodyPlan),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyPlan {
    /// A POST: the body is JSON-RPC.
    JsonRpc,
    /// A GET or DELETE: the body must be empty, then sign this call.
    MustBeEmpty(Call),
}

const ALLOWED_METHODS: &str = "GET, POST, DELETE";
const WELL_KNOWN_METHODS: &str = "GET, HEAD";

pub fn on_headers(head: &RequestHead<'_>, issuer_path: &str, max_body_bytes: usize) -> HeadDecision {
    if let Some(endpoint) = well_known::endpoint(head.path, issuer_path) {
        return match head.method {
            b"GET" | b"HEAD" => HeadDecision::Serve(endpoint),
            _ => HeadDecision::Refuse(Refusal::MethodNotAllowed {
                allow: WELL_KNOWN_METHODS,
            }),
        };
    }
    let plan = match head.method {
        b"POST" => BodyPlan::JsonRpc,
        b"GET" => BodyPlan::MustBeEmpty(Call::Stream),
        b"DELETE" => BodyPlan::MustBeEmpty(Call::SessionDelete),
        _ => return HeadDecision::Refuse(Refusal::MethodNotAllowed { allow: ALLOWED_METHODS }),
    };
    if head
        .content_encoding
        .iter()
        .any(|encoding| !is_identity_encoding(encoding))
    {
        return HeadDecision::Refuse(Refusal::UnsupportedEncoding);
    }
    if let Some(length) = head.content_length {
        match parse_content_length(length) {
            Some(n) if n > max_body_bytes as u64 => {
                return HeadDecision::Refuse(Refusal::BodyTooLarge { limit: max_body_bytes })
            }
            Some(_) => {}
            None => return HeadDecision::Refuse(Refusal::Body(mcp::McpError::Parse("invalid content-length".into()))),
        }
    }
    match (plan, head.end_of_stream) {
        (BodyPlan::JsonRpc, true) => HeadDecision::Refuse(Refusal::Body(mcp::McpError::Parse("empty body".into()))),
        (BodyPlan::MustBeEmpty(call), true) => HeadDecision::Sign(call),
        (plan, false) => HeadDecision::AwaitBody(plan),
    }
}

fn is_identity_encoding(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"identity") || value.trim_ascii().is_empty()
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The whole body has arrived (`body` is all of it).
pub fn on_body(plan: &BodyPlan, body: &[u8], max_body_bytes: usize) -> Result<Call, Refusal> {
    if body.len() > max_body_bytes {
        return Err(Refusal::BodyTooLarge { limit: max_body_bytes });
    }
    match plan {
        BodyPlan::JsonRpc => mcp::parse_body(body).map(Call::Messages).map_err(Refusal::Body),
        BodyPlan::MustBeEmpty(call) if body.is_empty() => Ok(call.clone()),
        BodyPlan::MustBeEmpty(_) => Err(Refusal::UnexpectedBody),
    }
}

/// MCP's routing headers (`mcp-method`, and `mcp-name` for `tools/call`) let proxies and servers route without
/// reading the body. The token is scoped from the body, so a request whose headers name another method or tool
/// is refused: nothing downstream may act on a name the token was not minted for. Headers absent: nothing to check.
pub fn check_routing_headers(call: &Call, mcp_method: &[&[u8]], mcp_name: &[&[u8]]) -> Result<(), Refusal> {
    if mcp_method.is_empty() && mcp_name.is_empty() {
        return Ok(());
    }
    if mcp_method.len() > 1 || mcp_name.len() > 1 {
        return Err(Refusal::HeaderMismatch("mcp-method or mcp-name is repeated"));
    }
    let Call::Messages(messages) = call else {
        return Ok(()); // GET and DELETE carry no JSON-RPC body to compare with
    };
    if let Some(header) = mcp_method.first() {
        let single = (!messages.batch && messages.methods.len() == 1)
            .then(|| messages.methods.first())
            .flatten();
        if single.map(String::as_bytes) != Some(*header) {
            return Err(Refusal::HeaderMismatch("mcp-method does not match the body's method"));
        }
    }
    if let Some(header) = mcp_name.first() {
        // Only tool names are read from the body; they are plain ASCII, so their header form is the name itself.
        if messages.methods.contains("tools/call")
            && (messages.batch
                || messages.tools.len() != 1
                || messages.tools.first().map(String::as_bytes) != Some(*header))
        {
            return Err(Refusal::HeaderMismatch("mcp-name does not match the body's tool name"));
        }
    }
    Ok(())
}

/// The issuer for this request: the configured one, else the request's own `scheme://authority`.
pub fn issuer_for(config: &Config, scheme: &[u8], authority: &[u8]) -> Result<Issuer, Refusal> {
    if let Some(issuer) = &config.issuer {
        return Ok(issuer.clone());
    }
    let scheme = std::str::from_utf8(scheme).map_err(|_| Refusal::BadAuthority)?;
    let authority = std::str::from_utf8(authority).map_err(|_| Refusal::BadAuthority)?;
    Issuer::from_request(scheme, authority).ok_or(Refusal::BadAuthority)
}

/// A response the filter sends itself.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// A refusal's reply; `request_id` is the JSON-RPC id of the refused message when the body was parsed.
    pub fn refusal(refusal: &Refusal, request_id: Option<&serde_json::Value>) -> LocalResponse {
        let mut headers = vec![("content-type", "application/json".to_string())];
        headers.extend(refusal.headers());
        LocalResponse {
            status: refusal.status(),
            headers,
            body: refusal.body_for(request_id),
        }
    }

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
}

/// Per-route settings from the matched route's metadata, namespace [`ROUTE_METADATA_NAMESPACE`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSettings {
    /// `aud` for this route's MCP server (its canonical URI, RFC 8707), instead of the plugin's `audience`.
    pub audience: Option<String>,
    /// Tools this route may call; `None`: no restriction.
    pub allowed_tools: Option<BTreeSet<String>>,
}

/// Route metadata namespace: `metadata: {filter_metadata: {mcp_jwt_signer: {audience: ..., allowed_tools: [...]}}}`.
pub const ROUTE_METADATA_NAMESPACE: &str = "mcp_jwt_signer";

impl RouteSettings {
    /// Decodes the route's whole metadata namespace for this filter (`None`: the route sets none). Unknown keys
    /// are refused: a typo such as `audiance` must not silently mint tokens for the plugin's audience.
    pub fn from_namespace(raw: Option<&[u8]>) -> Result<RouteSettings, Refusal> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(RouteSettings::default());
        };
        let Some(Value::Object(map)) = property::decode(raw) else {
            return Err(Refusal::BadRouteMetadata(
                "route metadata `mcp_jwt_signer` must be a map",
            ));
        };
        if map.keys().any(|k| k != "audience" && k != "allowed_tools") {
            return Err(Refusal::BadRouteMetadata(
                "route metadata `mcp_jwt_signer` has a key other than `audience` and `allowed_tools`",
            ));
        }
        Self::from_values(map.get("audience"), map.get("allowed_tools"))
    }

    /// Decodes the two attribute values as Envoy returns them one by one (`None`: not set on the route).
    pub fn from_properties(audience: Option<&[u8]>, allowed_tools: Option<&[u8]>) -> Result<RouteSettings, Refusal> {
        let decode = |raw: Option<&[u8]>, what: &'static str| -> Result<Option<Value>, Refusal> {
            match raw {
                None | Some([]) => Ok(None),
                Some(raw) => property::decode(raw).map(Some).ok_or(Refusal::BadRouteMetadata(what)),
            }
        };
        let audience = decode(audience, "route metadata `audience` must be a string")?;
        let allowed_tools = decode(allowed_tools, "route metadata `allowed_tools` must be a list")?;
        Self::from_values(audience.as_ref(), allowed_tools.as_ref())
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
        })
    }
}

/// Everything that decides one request's token.
pub struct SignRequest<'a> {
    pub config: &'a Config,
    pub issuer: &'a Issuer,
    pub call: &'a Call,
    pub route: &'a RouteSettings,
    pub facts: &'a dyn RequestFacts,
}

/// Authorisation (route allow-list, `require_subject`, `required_claims`) and the claims, without crypto.
pub fn authorize(req: &SignRequest<'_>) -> Result<TimelessClaims, Refusal> {
    let config = req.config;
    if let Some(allowed) = &req.route.allowed_tools {
        if let Some(tool) = req.call.tools().find(|t| !allowed.contains(*t)) {
            return Err(Refusal::ToolNotAllowed(tool.clone()));
        }
    }
    let resolver = Resolver {
        facts: req.facts,
        jwt_payload: &config.jwt_payload_in_metadata,
    };
    let identity = resolver.identity(&config.identity).map_err(Refusal::Identity)?;
    if config.require_subject && identity.subject.is_none() {
        return Err(Refusal::Unauthenticated);
    }
    for claim in &config.required_claims {
        if resolver.value(claim).map_err(Refusal::Identity)?.is_none() {
            let Source::Jwt(path) = claim else { continue };
            return Err(Refusal::MissingClaim(path.join("/")));
        }
    }
    let mut copied = Vec::with_capacity(config.claims.copy.len());
    for (name, source) in &config.claims.copy {
        if let Some(value) = resolver.value(source).map_err(Refusal::Identity)? {
            copied.push((name.clone(), value));
        }
    }
    Ok(TimelessClaims::build(
        ClaimInputs {
            issuer: &req.issuer.url,
            audience: req.route.audience.as_deref().unwrap_or(&config.audience),
            default_actor: &config.actor,
            identity: &identity,
            scope: claims::scope(req.call),
            copied,
        },
        &config.claims,
    ))
}

/// A token for the request: from the cache when one with the same claims has enough life left, else signed now.
pub struct Token {
    pub jwt: String,
    pub from_cache: bool,
}

pub fn token_for(
    req: &SignRequest<'_>,
    cache: &mut TokenCache,
    signer: &Signer,
    now: u64,
    new_jti: impl FnOnce() -> Option<String>,
) -> Result<Token, Refusal> {
    let timeless = authorize(req)?;
    // The key includes the signing key's id: after a key change no token of the old key is served.
    let key = if cache.enabled() {
        timeless.cache_key().map(|claims| format!("{}|{claims}", signer.kid()))
    } else {
        None
    };
    if let Some(key) = &key {
        if let Lookup::Hit(jwt) = cache.get(key, now) {
            return Ok(Token { jwt, from_cache: true });
        }
    }
    let jti = new_jti().ok_or(Refusal::Internal("random source unavailable"))?;
    let claims = timeless.stamp(now, req.config.ttl_seconds, jti, &req.config.claims);
    let exp = claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(now);
    let jwt = jwt::encode(&claims, signer).map_err(|_| Refusal::Internal("signing failed"))?;
    if let Some(key) = key {
        cache.insert(key, jwt.clone(), exp);
    }
    Ok(Token { jwt, from_cache: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a [u8], path: &'a [u8], eos: bool) -> RequestHead<'a> {
        RequestHead {
            method,
            path,
            end_of_stream: eos,
            ..Default::default()
        }
    }

    #[test]
    fn well_known_is_served_for_get_and_head_only() {
        assert_eq!(
            on_headers(&head(b"GET", b"/.well-known/jwks.json", true), "", 10),
            HeadDecision::Serve(Endpoint::Jwks)
        );
        assert_eq!(
            on_headers(&head(b"HEAD", b"/.well-known/openid-configuration?a", true), "", 10),
            HeadDecision::Serve(Endpoint::Discovery)
        );
        assert!(matches!(
            on_headers(&head(b"POST", b"/.well-known/jwks.json", false), "", 10),
            HeadDecision::Refuse(Refusal::MethodNotAllowed { .. })
        ));
    }

    #[test]
    fn methods() {
        assert_eq!(
            on_headers(&head(b"GET", b"/mcp", true), "", 10),
            HeadDecision::Sign(Call::Stream)
        );
        assert_eq!(
            on_headers(&head(b"DELETE", b"/mcp", true), "", 10),
            HeadDecision::Sign(Call::SessionDelete)
        );
        assert_eq!(
            on_headers(&head(b"POST", b"/mcp", false), "", 10),
            HeadDecision::AwaitBody(BodyPlan::JsonRpc)
        );
        for m in [&b"PUT"[..], b"PATCH", b"OPTIONS", b"HEAD", b"CONNECT", b"get"] {
            assert!(matches!(
                on_headers(&head(m, b"/mcp", true), "", 10),
                HeadDecision::Refuse(Refusal::MethodNotAllowed { .. })
            ));
        }
        assert!(matches!(
            on_headers(&head(b"POST", b"/mcp", true), "", 10),
            HeadDecision::Refuse(Refusal::Body(mcp::McpError::Parse(_)))
        ));
    }

    #[test]
    fn size_and_encoding_are_checked_at_headers() {
        let mut h = head(b"POST", b"/mcp", false);
        h.content_length = Some(b"11");
        assert_eq!(
            on_headers(&h, "", 10),
            HeadDecision::Refuse(Refusal::BodyTooLarge { limit: 10 })
        );
        h.content_length = Some(b"10");
        assert_eq!(on_headers(&h, "", 10), HeadDecision::AwaitBody(BodyPlan::JsonRpc));
        h.content_encoding = &[b"gzip"];
        assert_eq!(
            on_headers(&h, "", 10),
            HeadDecision::Refuse(Refusal::UnsupportedEncoding)
        );
        h.content_encoding = &[b"Identity"];
        assert_eq!(on_headers(&h, "", 10), HeadDecision::AwaitBody(BodyPlan::JsonRpc));
        // A repeated header cannot hide an encoding behind `identity`.
        h.content_encoding = &[b"identity", b"gzip"];
        assert_eq!(
            on_headers(&h, "", 10),
            HeadDecision::Refuse(Refusal::UnsupportedEncoding)
        );
    }

    #[test]
    fn bodies() {
        assert_eq!(
            on_body(&BodyPlan::JsonRpc, b"{}", 1),
            Err(Refusal::BodyTooLarge { limit: 1 })
        );
        assert_eq!(on_body(&BodyPlan::MustBeEmpty(Call::Stream), b"", 1), Ok(Call::Stream));
        assert_eq!(
            on_body(&BodyPlan::MustBeEmpty(Call::Stream), b"x", 1),
            Err(Refusal::UnexpectedBody)
        );
        assert!(on_body(&BodyPlan::JsonRpc, br#"{"jsonrpc":"2.0","method":"ping","id":1}"#, 100).is_ok());
    }

    #[test]
    fn routing_headers_must_match_the_body() {
        let tools_call = Call::Messages(
            mcp::parse_body(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#)
                .unwrap(),
        );
        assert_eq!(check_routing_headers(&tools_call, &[], &[]), Ok(()));
        assert_eq!(
            check_routing_headers(&tools_call, &[b"tools/call"], &[b"get_weather"]),
            Ok(())
        );
        for (method, name) in [
            (&[&b"tools/list"[..]][..], &[][..]),
            (&[&b"tools/call"[..]][..], &[&b"delete_all"[..]][..]),
            (&[&b"tools/call"[..], &b"tools/call"[..]][..], &[][..]),
            (&[][..], &[&b"other"[..]][..]),
        ] {
            assert!(
                matches!(
                    check_routing_headers(&tools_call, method, name),
                    Err(Refusal::HeaderMismatch(_))
                ),
                "{method:?} {name:?}"
            );
        }
        let list = Call::Messages(mcp::parse_body(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap());
        assert_eq!(check_routing_headers(&list, &[b"tools/list"], &[]), Ok(()));
        let batch = Call::Messages(mcp::parse_body(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#).unwrap());
        assert!(check_routing_headers(&batch, &[b"tools/list"], &[]).is_err());
        assert_eq!(check_routing_headers(&Call::Stream, &[b"x"], &[]), Ok(()));
    }

    #[test]
    fn issuer_from_request_when_unset() {
        let cfg = Config::parse(b"{}").unwrap();
        assert_eq!(
            issuer_for(&cfg, b"http", b"localhost:10000").unwrap().url,
            "http://localhost:10000"
        );
        assert_eq!(issuer_for(&cfg, b"http", b"evil\"host"), Err(Refusal::BadAuthority));
        let cfg = Config::parse(br#"{"issuer":"https://gw/x"}"#).unwrap();
        assert_eq!(issuer_for(&cfg, b"http", b"other").unwrap().url, "https://gw/x");
    }

    mod signing {
        use super::super::*;
        use crate::config::TokenCacheConfig;
        use crate::identity::tests::Facts;
        use serde_json::{json, Value};
        use std::sync::OnceLock;

        fn signer() -> &'static Signer {
            static SIGNER: OnceLock<Signer> = OnceLock::new();
            SIGNER.get_or_init(|| Signer::generate(crate::signer::Algorithm::Rs256).unwrap())
        }

        fn call(body: &str) -> Call {
            Call::Messages(mcp::parse_body(body.as_bytes()).unwrap())
        }

        fn tools_call(tool: &str) -> Call {
            call(&json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":tool}}).to_string())
        }

        fn claims_of(jwt: &str) -> Value {
            let payload = jwt.split('.').nth(1).unwrap();
            use base64::Engine;
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(payload)
                    .unwrap(),
            )
            .unwrap()
        }

        struct Setup {
            config: Config,
            issuer: Issuer,
            route: RouteSettings,
        }

        impl Setup {
            fn new(config: &str) -> Setup {
                Setup {
                    config: Config::parse(config.as_bytes()).unwrap(),
                    issuer: Issuer::parse("https://gw.example.com").unwrap(),
                    route: RouteSettings::default(),
                }
            }

            fn authorize(&self, call: &Call, facts: &Facts) -> Result<TimelessClaims, Refusal> {
                authorize(&SignRequest {
                    config: &self.config,
                    issuer: &self.issuer,
                    call,
                    route: &self.route,
                    facts,
                })
            }

            fn token(&self, cache: &mut TokenCache, call: &Call, facts: &Facts, now: u64) -> Token {
                let req = SignRequest {
                    config: &self.config,
                    issuer: &self.issuer,
                    call,
                    route: &self.route,
                    facts,
                };
                token_for(&req, cache, signer(), now, || claims::new_jti().ok()).unwrap()
            }
        }

        #[test]
        fn verified_jwt_identity_wins_over_spoofed_headers() {
            let s = Setup::new(
                r#"{"identity":{"subject":["jwt:sub","header:x-user-id"],"actor":["jwt:team"]},
                    "copy_claims":{"groups":"jwt:groups"}}"#,
            );
            let groups = crate::property::tests::pairs(&[(b"a", b""), (b"b", b"")]);
            let facts = Facts::default()
                .jwt_claim("sub", b"user-7")
                .jwt_claim("team", b"blue")
                .jwt_claim("groups", &groups)
                .header("x-user-id", b"admin");
            let c = s.authorize(&tools_call("t"), &facts).unwrap().0;
            assert_eq!(c["sub"], "user-7");
            assert_eq!(c["act"]["sub"], "blue");
            assert_eq!(c["groups"], json!(["a", "b"]));
        }

        #[test]
        fn require_subject_and_required_claims() {
            let s = Setup::new(
                r#"{"identity":{"subject":["jwt:sub"]},"require_subject":true,"required_claims":["email"]}"#,
            );
            assert_eq!(
                s.authorize(&tools_call("t"), &Facts::default()).unwrap_err(),
                Refusal::Unauthenticated
            );
            let facts = Facts::default().jwt_claim("sub", b"u");
            assert_eq!(
                s.authorize(&tools_call("t"), &facts).unwrap_err(),
                Refusal::MissingClaim("email".into())
            );
            let facts = facts.jwt_claim("email", b"u@x");
            assert!(s.authorize(&tools_call("t"), &facts).is_ok());
        }

        #[test]
        fn route_audience_and_allow_list() {
            let mut s = Setup::new("{}");
            s.route =
                RouteSettings::from_properties(Some(b"https://weather.example.com/mcp"), Some(b"get_weather")).unwrap();
            let c = s.authorize(&tools_call("get_weather"), &Facts::default()).unwrap().0;
            assert_eq!(c["aud"], "https://weather.example.com/mcp");
            assert_eq!(
                s.authorize(&tools_call("delete_all"), &Facts::default()).unwrap_err(),
                Refusal::ToolNotAllowed("delete_all".into())
            );
            // Methods other than tools/call are not restricted by the tool allow-list.
            assert!(s
                .authorize(
                    &call(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
                    &Facts::default()
                )
                .is_ok());
        }

        #[test]
        fn route_namespace_decoding() {
            // {"audience": "https://a", "allowed_tools": ["x", "y"]} as Envoy encodes it.
            use crate::property::tests::pairs;
            let tools = pairs(&[(b"x", b""), (b"y", b"")]);
            let ns = pairs(&[(b"audience", b"https://a"), (b"allowed_tools", &tools)]);
            let r = RouteSettings::from_namespace(Some(&ns)).unwrap();
            assert_eq!(r.audience.as_deref(), Some("https://a"));
            assert_eq!(r.allowed_tools.unwrap().len(), 2);
            assert_eq!(RouteSettings::from_namespace(None).unwrap(), RouteSettings::default());
            let typo = pairs(&[(b"audiance", b"https://a")]);
            assert!(RouteSettings::from_namespace(Some(&typo)).is_err());
        }

        #[test]
        fn route_settings_decoding() {
            let list = crate::property::tests::pairs(&[(b"a", b""), (b"b", b"")]);
            let r = RouteSettings::from_properties(None, Some(&list)).unwrap();
            assert_eq!(r.allowed_tools.unwrap().len(), 2);
            assert_eq!(
                RouteSettings::from_properties(None, Some(&[0, 0, 0, 0]))
                    .unwrap()
                    .allowed_tools,
                Some(BTreeSet::new())
            );
            assert_eq!(
                RouteSettings::from_properties(None, None).unwrap(),
                RouteSettings::default()
            );
            assert!(RouteSettings::from_properties(None, Some(b"a b")).is_err());
            assert!(RouteSettings::from_properties(Some(&1.0f64.to_le_bytes()), None).is_err());
        }

        #[test]
        fn cache_reuses_identical_claims_only() {
            let s = Setup::new(r#"{"identity":{"subject":["header:x-user-id"]}}"#);
            let mut cache = TokenCache::new(s.config.token_cache);
            let alice = Facts::default().header("x-user-id", b"alice");
            let bob = Facts::default().header("x-user-id", b"bob");
            let first = s.token(&mut cache, &tools_call("a"), &alice, 1000);
            assert!(!first.from_cache);
            let again = s.token(&mut cache, &tools_call("a"), &alice, 1100);
            assert!(again.from_cache);
            assert_eq!(again.jwt, first.jwt);
            assert!(!s.token(&mut cache, &tools_call("b"), &alice, 1100).from_cache);
            assert!(!s.token(&mut cache, &tools_call("a"), &bob, 1100).from_cache);
            // Default reuse window: half of ttl_seconds (300): past iat + 150 a fresh token is minted.
            let later = s.token(&mut cache, &tools_call("a"), &alice, 1151);
            assert!(!later.from_cache);
            assert_eq!(claims_of(&later.jwt)["iat"], 1151);
        }

        #[test]
        fn cache_off_gives_a_fresh_jti_per_request() {
            let s = Setup::new(r#"{"token_cache":{"max_entries":0}}"#);
            let mut cache = TokenCache::new(s.config.token_cache);
            let a = s.token(&mut cache, &tools_call("a"), &Facts::default(), 1000);
            let b = s.token(&mut cache, &tools_call("a"), &Facts::default(), 1000);
            assert!(!a.from_cache && !b.from_cache);
            assert_ne!(claims_of(&a.jwt)["jti"], claims_of(&b.jwt)["jti"]);
            assert_eq!(
                s.config.token_cache,
                TokenCacheConfig {
                    max_entries: 0,
                    max_bytes: 4 << 20,
                    min_remaining_seconds: 150
                }
            );
        }
    }
}
