//! Authorise and sign: the route allow-list, `require_subject` and `required_claims`, the claim set (with the
//! route's or the plugin's `fixed_scopes`, and the incoming token's delegation chain), and the token (from the
//! worker's cache when an identical claim set was signed recently, else minted now), with its channel token when
//! `channel_token` is configured.

use std::collections::BTreeSet;

use crate::cache::{Cached, Lookup, TokenCache};
use crate::claims::{self, Call, ClaimInputs, TimelessClaims};
use crate::config::{Config, Issuer, Source};
use crate::crypto::{jws, Signer};
use crate::delegation;
use crate::host::{Headers, Host};
use crate::identity::{claim_at, Resolver};
use crate::refusal::Refusal;
use crate::shared_cache::{self, Found, SharedKey};

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
    let client_info = match req.call {
        Call::Messages(m) => m.single.as_ref().and_then(|s| s.client_info.as_ref()),
        _ => None,
    };
    let resolver = Resolver {
        headers: req.headers,
        host: req.host,
        jwt_payload: &config.jwt_payload_in_metadata,
        client_info,
        introspection: req.introspection,
    };
    let identity = resolver.identity(&config.identity).map_err(Refusal::Identity)?;
    step_up(config, req.call, &resolver, identity.subject.is_some())?;
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

/// The incoming scopes a call needs: the union of `required_incoming_scopes` over its methods, tools and prompts.
pub fn required_scopes(config: &Config, call: &Call) -> BTreeSet<String> {
    let auth = &config.authorization;
    if auth.required_incoming_scopes.is_empty() {
        return BTreeSet::new();
    }
    let mut required = auth.required_scopes("", None);
    if let Call::Messages(m) = call {
        for method in &m.methods {
            required.extend(auth.required_scopes(method, None));
        }
        for tool in &m.tools {
            required.extend(auth.required_scopes("tools/call", Some(tool)));
        }
        for prompt in &m.prompts {
            required.extend(auth.required_scopes("prompts/get", Some(prompt)));
        }
    }
    required
}

/// A scope value as a set: a space-separated string (`scope`) or a list of strings (`scp`).
fn scope_set(value: &serde_json::Value) -> BTreeSet<String> {
    match value {
        serde_json::Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).map(str::to_string).collect(),
        _ => BTreeSet::new(),
    }
}

/// Step-up: when the call needs incoming scopes, the verified incoming token must carry every one of them
/// (directly or through `scope_hierarchy`). No token at all: 401 with the scope to ask for; too little scope:
/// 403 `insufficient_scope` naming all of it, in one challenge.
fn step_up(config: &Config, call: &Call, resolver: &Resolver<'_>, has_subject: bool) -> Result<(), Refusal> {
    let required = required_scopes(config, call);
    if required.is_empty() {
        return Ok(());
    }
    let mut granted = None;
    for source in &config.authorization.incoming_scopes {
        if let Some(value) = resolver.value(source).map_err(Refusal::Identity)? {
            granted = Some(scope_set(&value));
            break;
        }
    }
    let scope = required.iter().cloned().collect::<Vec<_>>().join(" ");
    let granted = match granted {
        Some(granted) => granted,
        None if !has_subject => return Err(Refusal::TokenRequired { scope }),
        None => BTreeSet::new(),
    };
    if required
        .iter()
        .all(|needed| config.authorization.satisfies(&granted, needed))
    {
        Ok(())
    } else {
        Err(Refusal::InsufficientScope { scope })
    }
}

/// A token for the request.
pub struct Token {
    /// The compact JWS.
    pub jwt: String,
    /// The channel token (the same claims, its own `aud`, lifetime and `jti`), when configured.
    pub channel: Option<String>,
    /// Reused from a cache (the worker's or the shared one) rather than signed now.
    pub from_cache: bool,
    /// Reused from the cache the workers share (minted by another worker, or before this worker's cache had it).
    pub shared: bool,
    /// Its `jti`.
    pub jti: String,
    /// Its `exp` (with a channel token, the earlier of the two tokens' `exp`: the pair is reused until then).
    pub exp: u64,
    /// The claims that do not depend on time (`sub`, `act`, `aud`, ...), for the audit fields.
    pub claims: TimelessClaims,
}

impl Token {
    fn cached(hit: Cached, shared: bool, claims: TimelessClaims) -> Token {
        // With a channel token, one entry holds both, separated by a space (never part of a JWS).
        let (jwt, channel) = match hit.jwt.split_once(' ') {
            Some((jwt, channel)) => (jwt.to_string(), Some(channel.to_string())),
            None => (hit.jwt, None),
        };
        Token {
            jwt,
            channel,
            from_cache: true,
            shared,
            jti: hit.jti,
            exp: hit.exp,
            claims,
        }
    }
}

/// A token for the request: from the worker's cache, else from the cache the workers share, when one with the
/// same claims has enough life left; else signed now (and published to both caches).
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
        if let Lookup::Hit(hit) = cache.get(key, now) {
            return Ok(Token::cached(hit, false, timeless));
        }
    }
    // Then the cache every worker shares: a claim set is minted once per Envoy.
    let shared = key.as_ref().map(|key| SharedKey::new(&req.config.fingerprint, key));
    let found = match &shared {
        Some(shared) => shared_cache::lookup(req.host, &req.config.token_cache, shared, now),
        None => Found::Off,
    };
    if let (Found::Hit(hit), Some(key)) = (&found, &key) {
        cache.insert(key.clone(), hit.jwt.clone(), hit.jti.clone(), hit.exp);
        return Ok(Token::cached(hit.clone(), true, timeless));
    }
    let jti = new_jti().ok_or(Refusal::Internal("random source unavailable"))?;
    let claims = timeless.stamp(now, req.config.ttl_seconds, jti.clone(), &req.config.claims);
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
    if key.is_some() {
        let minted = Cached {
            jwt: match &channel {
                Some(channel) => format!("{jwt} {channel}"),
                None => jwt.clone(),
            },
            jti: jti.clone(),
            exp,
        };
        if let Some(shared) = &shared {
            shared_cache::publish(req.host, &req.config.token_cache, shared, &found, &minted);
        }
        if let Some(key) = key {
            cache.insert(key, minted.jwt, minted.jti, minted.exp);
        }
    }
    Ok(Token {
        jwt,
        channel,
        from_cache: false,
        shared: false,
        jti,
        exp,
        claims: timeless,
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

    /// The `kid` of a compact JWS's header.
    fn kid_of(jwt: &str) -> String {
        use base64::Engine;
        let header = jwt.split('.').next().unwrap();
        let header: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        header["kid"].as_str().unwrap().to_string()
    }

    #[test]
    fn the_cache_key_names_the_signing_key() {
        // One worker cache and one shared cache (one host) live across a change of signing key: the same claims
        // under the other key are signed anew, never served the old key's token, and each key keeps its own.
        let s = Setup::new("{}");
        let host = FakeHost::default();
        let other = Signer::generate(Algorithm::Es256).unwrap();
        assert_ne!(other.kid(), signer().kid());
        let token = |cache: &mut TokenCache, signer: &Signer, now: u64| {
            let req = SignRequest {
                config: &s.config,
                issuer: &s.issuer,
                call: &tools_call("a"),
                route: &s.route,
                headers: &Headers::default(),
                host: &host,
                introspection: None,
            };
            token_for(&req, cache, signer, now, || claims::new_jti().ok()).unwrap()
        };
        let mut cache = TokenCache::new(s.config.token_cache);
        let first = token(&mut cache, signer(), 1000);
        assert_eq!(kid_of(&first.jwt), signer().kid());
        let rotated = token(&mut cache, &other, 1001);
        assert!(
            !rotated.from_cache,
            "a token of the previous key was served after the key changed"
        );
        assert_eq!(kid_of(&rotated.jwt), other.kid());
        let back = token(&mut cache, signer(), 1002);
        assert!(back.from_cache && back.jwt == first.jwt);
        // Another worker (its own cache, the same shared one) gets each key's own token.
        let mut worker = TokenCache::new(s.config.token_cache);
        let shared = token(&mut worker, &other, 1003);
        assert!(shared.shared && shared.jwt == rotated.jwt, "{}", shared.jwt);
        let mut worker = TokenCache::new(s.config.token_cache);
        let shared = token(&mut worker, signer(), 1003);
        assert!(shared.shared && shared.jwt == first.jwt);
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
                min_remaining_seconds: 150,
                shared_max_entries: 0,
                shared_entry_bytes: 0,
            }
        );
    }
}
