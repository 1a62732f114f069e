//! Authorise and sign: the route allow-list, `require_subject` and `required_claims`, the claim set (with the
//! route's or the plugin's `fixed_scopes`, and the incoming token's delegation chain), and the token (from the
//! worker's cache when an identical claim set was signed recently, else minted now), with its channel token when
//! `channel_token` is configured.

use crate::cache::{Lookup, TokenCache};
use crate::claims::{self, Call, ClaimInputs, TimelessClaims};
use crate::config::{Config, Issuer, Source};
use crate::crypto::{jws, Signer};
use crate::delegation;
use crate::host::{Headers, Host};
use crate::identity::{claim_at, Resolver};
use crate::refusal::Refusal;

use serde_json::{json, Value};

use super::route::RouteSettings;

/// Everything that decides one request's token.
pub struct SignRequest<'a> {
    /// The plugin configuration.
    pub config: &'a Config,
    /// The issuer for this request.
    pub issuer: &'a Issuer,
    /// What the request calls.
    pub call: &'a Call,
    /// The route's settings.
    pub route: &'a RouteSettings,
    /// The request headers as they arrived.
    pub headers: &'a Headers,
    /// Envoy attributes (jwt_authn payload, mTLS peer, properties).
    pub host: &'a dyn Host,
    /// The introspection result of the client's token, when it was introspected.
    pub introspection: Option<&'a Value>,
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
        headers: req.headers,
        host: req.host,
        jwt_payload: &config.jwt_payload_in_metadata,
        introspection: req.introspection,
    };
    let identity = resolver.identity(&config.identity).map_err(Refusal::Identity)?;
    if config.require_subject && identity.subject.is_none() {
        return Err(Refusal::Unauthenticated);
    }
    for claim in &config.required_claims {
        if resolver.value(claim).map_err(Refusal::Identity)?.is_none() {
            return Err(Refusal::MissingClaim(match claim {
                Source::Jwt(path) => path.join("/"),
                other => other.describe(),
            }));
        }
    }
    let mut copied = Vec::with_capacity(config.claims.copy.len());
    for (name, source) in &config.claims.copy {
        if let Some(value) = resolver.value(source).map_err(Refusal::Identity)? {
            copied.push((name.clone(), value));
        }
    }
    let audience = req.route.audience.as_deref().unwrap_or(&config.audience);
    if config
        .upstream
        .channel_token
        .as_ref()
        .is_some_and(|c| c.audience == audience)
    {
        return Err(Refusal::BadRouteMetadata(
            "the route's audience is channel_token.audience: a channel token must not be usable as an access token",
        ));
    }
    let scope = match req.route.fixed_scopes.as_ref().or(config.fixed_scopes.as_ref()) {
        Some(fixed) => fixed.join(" "),
        None => claims::scope(req.call),
    };
    let mut timeless = TimelessClaims::build(
        ClaimInputs {
            issuer: &req.issuer.url,
            audience,
            default_actor: &config.actor,
            identity: &identity,
            scope,
            copied,
        },
        &config.claims,
    );
    delegate(req, &resolver, &mut timeless)?;
    Ok(timeless)
}

/// RFC 8693 delegation: the incoming token's `may_act` must allow this gateway's actor, and its `act` is nested in
/// the minted one. The incoming token is the introspected one, else jwt_authn's verified payload.
fn delegate(req: &SignRequest<'_>, resolver: &Resolver<'_>, timeless: &mut TimelessClaims) -> Result<(), Refusal> {
    let settings = req.config.delegation;
    if !settings.nest_act && !settings.enforce_may_act {
        return Ok(());
    }
    let incoming = |name: &str| -> Result<Option<Value>, Refusal> {
        match req.introspection {
            Some(doc) => Ok(claim_at(doc, &[name.to_string()]).cloned()),
            None => resolver
                .value(&Source::Jwt(vec![name.to_string()]))
                .map_err(Refusal::Identity),
        }
    };
    let actor = timeless
        .0
        .get("act")
        .and_then(|act| act.get("sub"))
        .and_then(Value::as_str)
        .unwrap_or(&req.config.actor)
        .to_string();
    if settings.enforce_may_act {
        delegation::check_may_act(incoming("may_act")?.as_ref(), &actor).map_err(Refusal::Delegation)?;
    }
    if settings.nest_act {
        let act = delegation::minted_act(&actor, incoming("act")?.as_ref()).map_err(Refusal::Delegation)?;
        timeless.0.insert("act".into(), act);
    }
    Ok(())
}

/// A token for the request.
pub struct Token {
    /// The compact JWS.
    pub jwt: String,
    /// The channel token (the same claims, its own `aud`, lifetime and `jti`), when configured.
    pub channel: Option<String>,
    /// Reused from the cache rather than signed now.
    pub from_cache: bool,
}

/// A token for the request: from the cache when one with the same claims has enough life left, else signed now.
pub fn token_for(
    req: &SignRequest<'_>,
    cache: &mut TokenCache,
    signer: &Signer,
    now: u64,
    mut new_jti: impl FnMut() -> Option<String>,
) -> Result<Token, Refusal> {
    let timeless = authorize(req)?;
    // The key includes the signing key's id: after a key change no token of the old key is served.
    let key = if cache.enabled() {
        timeless.cache_key().map(|claims| format!("{}|{claims}", signer.kid()))
    } else {
        None
    };
    if let Some(key) = &key {
        if let Lookup::Hit(cached) = cache.get(key, now) {
            // With a channel token, one entry holds both, separated by a space (never part of a JWS).
            let (jwt, channel) = match cached.split_once(' ') {
                Some((jwt, channel)) => (jwt.to_string(), Some(channel.to_string())),
                None => (cached, None),
            };
            return Ok(Token {
                jwt,
                channel,
                from_cache: true,
            });
        }
    }
    let jti = new_jti().ok_or(Refusal::Internal("random source unavailable"))?;
    let claims = timeless.stamp(now, req.config.ttl_seconds, jti, &req.config.claims);
    let mut exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
    let jwt = sign_within(&claims, signer, req.config.max_token_bytes)?;
    let channel = match &req.config.upstream.channel_token {
        None => None,
        Some(settings) => {
            // The access token's claims (shaping applied), with the channel's own audience, lifetime and jti.
            let mut channel = claims.clone();
            let channel_exp = now.saturating_add(settings.ttl_seconds);
            channel.insert("aud".into(), json!(settings.audience));
            channel.insert("exp".into(), json!(channel_exp));
            channel.insert(
                "jti".into(),
                json!(new_jti().ok_or(Refusal::Internal("random source unavailable"))?),
            );
            exp = exp.min(channel_exp);
            Some(sign_within(&channel, signer, req.config.max_token_bytes)?)
        }
    };
    if let Some(key) = key {
        let value = match &channel {
            Some(channel) => format!("{jwt} {channel}"),
            None => jwt.clone(),
        };
        cache.insert(key, value, exp);
    }
    Ok(Token {
        jwt,
        channel,
        from_cache: false,
    })
}

fn sign_within(claims: &serde_json::Map<String, Value>, signer: &Signer, max: usize) -> Result<String, Refusal> {
    match jws::encode_within(claims, signer, max) {
        Ok(jwt) => Ok(jwt),
        Err(jws::JwtError::TooLarge(bytes)) => Err(Refusal::TokenTooLarge { bytes, limit: max }),
        Err(_) => Err(Refusal::Internal("signing failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenCacheConfig;
    use crate::crypto::Algorithm;
    use crate::host::fake::FakeHost;
    use crate::mcp;
    use std::collections::BTreeSet;
    use std::sync::OnceLock;

    fn signer() -> &'static Signer {
        static SIGNER: OnceLock<Signer> = OnceLock::new();
        SIGNER.get_or_init(|| Signer::generate(Algorithm::Rs256).unwrap())
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

    fn headers(list: &[(&str, &str)]) -> Headers {
        Headers(
            list.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
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

        fn authorize(&self, call: &Call, headers: &Headers, host: &FakeHost) -> Result<TimelessClaims, Refusal> {
            authorize(&SignRequest {
                config: &self.config,
                issuer: &self.issuer,
                call,
                route: &self.route,
                headers,
                host,
                introspection: None,
            })
        }

        fn token(&self, cache: &mut TokenCache, call: &Call, headers: &Headers, now: u64) -> Token {
            let host = FakeHost::default();
            let req = SignRequest {
                config: &self.config,
                issuer: &self.issuer,
                call,
                route: &self.route,
                headers,
                host: &host,
                introspection: None,
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
        let host = FakeHost::default()
            .jwt_claim("sub", json!("user-7"))
            .jwt_claim("team", json!("blue"))
            .jwt_claim("groups", json!(["a", "b"]));
        let h = headers(&[("x-user-id", "admin")]);
        let c = s.authorize(&tools_call("t"), &h, &host).unwrap().0;
        assert_eq!(c["sub"], "user-7");
        assert_eq!(c["act"]["sub"], "blue");
        assert_eq!(c["groups"], json!(["a", "b"]));
    }

    #[test]
    fn require_subject_and_required_claims() {
        let s =
            Setup::new(r#"{"identity":{"subject":["jwt:sub"]},"require_subject":true,"required_claims":["email"]}"#);
        let none = Headers::default();
        assert_eq!(
            s.authorize(&tools_call("t"), &none, &FakeHost::default()).unwrap_err(),
            Refusal::Unauthenticated
        );
        let host = FakeHost::default().jwt_claim("sub", json!("u"));
        assert_eq!(
            s.authorize(&tools_call("t"), &none, &host).unwrap_err(),
            Refusal::MissingClaim("email".into())
        );
        let host = host.jwt_claim("email", json!("u@x"));
        assert!(s.authorize(&tools_call("t"), &none, &host).is_ok());
    }

    #[test]
    fn route_audience_and_allow_list() {
        let mut s = Setup::new("{}");
        s.route = RouteSettings {
            audience: Some("https://weather.example.com/mcp".into()),
            allowed_tools: Some(BTreeSet::from(["get_weather".to_string()])),
            ..RouteSettings::default()
        };
        let (none, host) = (Headers::default(), FakeHost::default());
        let c = s.authorize(&tools_call("get_weather"), &none, &host).unwrap().0;
        assert_eq!(c["aud"], "https://weather.example.com/mcp");
        assert_eq!(
            s.authorize(&tools_call("delete_all"), &none, &host).unwrap_err(),
            Refusal::ToolNotAllowed("delete_all".into())
        );
        // Methods other than tools/call are not restricted by the tool allow-list.
        assert!(s
            .authorize(&call(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#), &none, &host)
            .is_ok());
    }

    #[test]
    fn cache_reuses_identical_claims_only() {
        let s = Setup::new(r#"{"identity":{"subject":["header:x-user-id"]}}"#);
        let mut cache = TokenCache::new(s.config.token_cache);
        let alice = headers(&[("x-user-id", "alice")]);
        let bob = headers(&[("x-user-id", "bob")]);
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
        let none = Headers::default();
        let a = s.token(&mut cache, &tools_call("a"), &none, 1000);
        let b = s.token(&mut cache, &tools_call("a"), &none, 1000);
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
