//! One request's path through the filter, as a pure state machine driven by the host adapter (see
//! [`crate::host::HttpFilter`]):
//!
//! ```text
//! headers ──► gate: well-known path? method? encoding? size? ──► serve / refuse
//!    │  (the route read before any edit; client's Authorization removed unless the route forwards it, identity
//!    │   headers removed; the bearer token kept in memory only when introspection is configured)
//!    ▼
//! body, buffered to end of stream ──► strict MCP parse ──► routing headers match the body?
//!    ▼
//! introspection of the bearer token (cache, or a callout the request waits for) ──► 401 / 503 / result
//!    ▼
//! authorise (allow-list, required identity, delegation) ──► claims ──► token (cache or sign)
//!    ──► set the token header (and the channel token, the debug header)
//!    ▼
//! (router: matches the route again on the edited headers)
//!    ▼
//! route guard (upstream filter): the route taken is the one the token was scoped for? ──► upstream
//! ```
//!
//! Any refusal ends the request with a JSON-RPC error; nothing is forwarded.

mod debug;
mod gate;
mod guard;
mod introspect;
mod respond;
mod route;
mod routing_headers;
mod sign;
mod upstream;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_parity;

pub use gate::{issuer_for, on_body, on_headers, BodyPlan, HeadDecision, RequestHead};
pub use guard::{RouteGuard, GUARD_ROOT_ID};
pub use introspect::{judge, Bearer, BearerToken, Outcome};
pub use route::{RouteKey, RouteSettings, ROUTE_HEADER, ROUTE_METADATA_NAMESPACE, ROUTE_METADATA_PATH};
pub use routing_headers::{call_from_headers, check_routing_headers};
pub use sign::{authorize, token_for, SignRequest, Token};

use std::rc::Rc;

use serde_json::{json, Value};

use crate::claims::{self, Call};
use crate::config::{Issuer, ScopeSource};
use crate::host::{CalloutResponse, Effects, HeaderEdit, Headers, Host, HttpFilter, LogLevel, Metric, Next, Step};
use crate::plugin::Plugin;
use crate::refusal::Refusal;
use crate::well_known::Endpoint;

use self::respond::Challenge;

/// Why a header-scoped request that the headers cannot scope is refused when the filter may not buffer.
const HEADERS_REQUIRED: &str = "this gateway scopes tokens from MCP's request headers: send MCP-Protocol-Version \
    2026-07-28 or later with Mcp-Method (and Mcp-Name for tools/call, prompts/get and resources/read)";

/// The configured subset of `fields` (`audit_fields`, `audit_omit`), for the access log.
fn audit(config: &crate::config::Config, fields: Vec<(&'static str, Value)>) -> Vec<(&'static str, Value)> {
    if config.audit_fields.is_empty() {
        return Vec::new();
    }
    fields
        .into_iter()
        .filter(|(name, _)| config.audit_fields.contains(name))
        .collect()
}

/// The audit fields of a signed request: who, what, and which token (never the token itself).
fn signed_fields(call: &Call, token: &Token, kid: &str) -> Vec<(&'static str, Value)> {
    let claims = &token.claims.0;
    let mut fields = vec![("decision", json!("signed"))];
    if let Some(sub) = claims.get("sub") {
        fields.push(("sub", sub.clone()));
    }
    if let Some(actor) = claims.get("act").and_then(|a| a.get("sub")) {
        fields.push(("act_sub", actor.clone()));
    }
    let none = std::collections::BTreeSet::new();
    let (methods, tools, prompts): (Vec<&str>, _, _) = match call {
        Call::Messages(m) => (m.methods.iter().map(String::as_str).collect(), &m.tools, &m.prompts),
        Call::Stream => (vec!["GET"], &none, &none),
        Call::SessionDelete => (vec!["DELETE"], &none, &none),
    };
    fields.push(("methods", json!(methods)));
    for (field, names) in [("tool", tools), ("prompt", prompts)] {
        match names.len() {
            0 => {}
            1 => fields.push((field, json!(names.iter().next()))),
            _ => fields.push((field, json!(names))),
        }
    }
    fields.push(("jti", json!(token.jti)));
    fields.push(("kid", json!(kid)));
    if let Some(aud) = claims.get("aud") {
        fields.push(("aud", aud.clone()));
    }
    fields.push(("exp", json!(token.exp)));
    fields.push(("cache", json!(token.from_cache)));
    fields
}

/// The challenge context of a request to `path`: its protected resource's metadata URL, and its
/// `scopes_supported` as the scope until the request's own needs are known.
fn challenge_for(config: &crate::config::Config, path: &str) -> Challenge {
    let path = path.split('?').next().unwrap_or_default();
    match config.authorization.resource_for(path) {
        Some(resource) => Challenge {
            resource_metadata: Some(resource.metadata_url()),
            scope: (!resource.scopes_supported.is_empty()).then(|| resource.scopes_supported.join(" ")),
        },
        None => Challenge::default(),
    }
}

/// jwt_authn let a failed token through (`allow_missing_or_failed`) and recorded why under
/// `jwt_failure_in_metadata`: the client presented a token, and it is not good. A missing token is not a failure
/// here (the request goes on, and `require_subject` or step-up challenge it if they need a token). With
/// `introspection` configured, a token jwt_authn could not verify (an opaque token, or a JWT of an issuer it does
/// not know) is left to introspection: the authorization server decides, and an inactive token is refused there.
fn incoming_token_failure(config: &crate::config::Config, host: &dyn Host) -> Option<Refusal> {
    let name = config.authorization.jwt_failure_in_metadata.as_deref()?;
    if config.introspection.is_some() {
        return None;
    }
    let status = match host.attribute(&["metadata", "filter_metadata", crate::config::JWT_AUTHN_NAMESPACE, name]) {
        Ok(Some(status)) => status,
        Ok(None) => return None,
        // A status we cannot read is still a failure: fail closed.
        Err(_) => {
            return Some(Refusal::InvalidToken {
                description: "the access token could not be verified",
            })
        }
    };
    let message = status.get("message").and_then(Value::as_str).unwrap_or_default();
    if message.eq_ignore_ascii_case("jwt is missing") {
        return None;
    }
    Some(Refusal::InvalidToken {
        description: if message.to_ascii_lowercase().contains("expired") {
            "the access token has expired"
        } else {
            "the access token is invalid"
        },
    })
}

/// What the request carries forward from its headers.
#[derive(Clone)]
struct Head {
    /// The request headers as they arrived, minus the client's `authorization`.
    headers: Headers,
    /// The client's bearer token, kept only when introspection is configured (its `Debug` hides it).
    bearer: introspect::Bearer,
    /// The issuer for this request.
    issuer: Issuer,
    /// The route's settings, read before any header edit (a refusal is reported when the request is signed).
    route: Result<RouteSettings, Refusal>,
    /// The route's identity at that moment.
    route_key: RouteKey,
}

/// Where the request stands.
enum Phase {
    /// Nothing seen yet.
    Start,
    /// Buffering the body.
    Body(Box<Head>, BodyPlan),
    /// Waiting for the introspection endpoint's answer.
    Introspecting(Box<introspect::Pending>),
    /// Forwarded or answered: nothing more to do.
    Done,
}

/// One HTTP request.
pub struct Request {
    plugin: Rc<Plugin>,
    phase: Phase,
    /// The JSON-RPC id of a single-message body, echoed by refusals decided after parsing.
    request_id: Option<Value>,
    /// What a `WWW-Authenticate` challenge of this request names.
    challenge: Challenge,
}

impl Request {
    /// A request of `plugin`.
    pub fn new(plugin: Rc<Plugin>) -> Request {
        Request {
            plugin,
            phase: Phase::Start,
            request_id: None,
            challenge: Challenge::default(),
        }
    }

    fn refuse(&mut self, refusal: Refusal, mut effects: Effects) -> Step {
        self.phase = Phase::Done;
        effects
            .logs
            .push((LogLevel::Info, refusal.log_line(self.request_id.as_ref())));
        effects.metrics.push(Metric::Refused(refusal.reason()));
        effects.audit = audit(
            &self.plugin.config,
            vec![("decision", json!("refused")), ("reason", json!(refusal.reason()))],
        );
        Step {
            edits: Vec::new(),
            effects,
            next: Next::Respond(respond::refusal(&refusal, self.request_id.as_ref(), &self.challenge)),
        }
    }

    fn serve(&mut self, endpoint: Endpoint, issuer: &Issuer, host: &dyn Host) -> Step {
        let plugin = self.plugin.clone();
        if let Endpoint::ProtectedResource(i) = endpoint {
            let Some(resource) = plugin.config.authorization.protected_resources.get(i) else {
                return self.refuse(Refusal::Internal("no such protected resource"), Effects::default());
            };
            self.phase = Phase::Done;
            return Step {
                edits: Vec::new(),
                effects: Effects {
                    metrics: vec![Metric::ProtectedResourceServed],
                    audit: audit(
                        &plugin.config,
                        vec![("decision", json!("served")), ("endpoint", json!("protected_resource"))],
                    ),
                    ..Effects::default()
                },
                next: Next::Respond(respond::resource_metadata(resource)),
            };
        }
        let Some(signer) = plugin.keys.signer(host) else {
            return self.refuse(Refusal::KeyUnavailable, Effects::default());
        };
        self.phase = Phase::Done;
        let keys = plugin.published_keys(&signer);
        let response = respond::well_known(endpoint, issuer, &keys, plugin.keys.is_ephemeral());
        let (metric, name) = match endpoint {
            Endpoint::Discovery => (Metric::DiscoveryServed, "discovery"),
            Endpoint::Jwks | Endpoint::ProtectedResource(_) => (Metric::JwksServed, "jwks"),
        };
        Step {
            edits: Vec::new(),
            effects: Effects {
                metrics: vec![metric],
                audit: audit(
                    &plugin.config,
                    vec![("decision", json!("served")), ("endpoint", json!(name))],
                ),
                ..Effects::default()
            },
            next: Next::Respond(response),
        }
    }

    /// The headers phase.
    fn headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Step {
        let mut headers = host.request_headers();
        let plugin = self.plugin.clone();
        let config = &plugin.config;
        let mut edits = Vec::new();
        // The client's bearer token is kept in memory for introspection only; the request's own copy of the headers
        // never holds it. Whether the request upstream keeps it is decided below, once the route is known.
        let bearer = introspect::bearer(config, &headers);
        let had_authorization = headers.contains("authorization");
        headers.remove("authorization");
        let tls = || matches!(host.attribute(&gate::TLS_VERSION_PATH), Ok(Some(_)));
        let issuer = match issuer_for(config, tls, headers.first(":authority").unwrap_or_default()) {
            Ok(issuer) => issuer,
            Err(refusal) => return self.refuse(refusal, Effects::default()),
        };
        let content_encoding: Vec<&[u8]> = headers.all("content-encoding").collect();
        let head = RequestHead {
            method: headers.first(":method").unwrap_or_default(),
            path: headers.first(":path").unwrap_or_default(),
            content_length: headers.first("content-length"),
            content_encoding: &content_encoding,
            end_of_stream,
        };
        let path = String::from_utf8_lossy(head.path).into_owned();
        let decision = on_headers(
            &head,
            &issuer.path,
            &config.authorization.protected_resources,
            config.max_body_bytes,
        );
        drop(content_encoding);
        if let HeadDecision::Serve(endpoint) = decision {
            return self.serve(endpoint, &issuer, host);
        }
        self.challenge = challenge_for(config, &path);
        let plan = match decision {
            HeadDecision::Serve(_) => return self.refuse(Refusal::Internal("served twice"), Effects::default()),
            HeadDecision::Refuse(refusal) => return self.refuse(refusal, Effects::default()),
            HeadDecision::Sign(call) => BodyPlan::MustBeEmpty(call),
            HeadDecision::AwaitBody(plan) => plan,
        };
        if let Some(refusal) = incoming_token_failure(config, host) {
            return self.refuse(refusal, Effects::default());
        }
        // The route as it is before the filter edits anything (one read per part).
        let route_key = RouteKey::read(host);
        let route = route_key.settings();
        // No token passthrough: the client's authorization (every copy) is dropped unless the route forwards it,
        // and the client's copies of the headers the filter writes are dropped.
        let delivery = upstream::headers_phase_delivery(config, route.as_ref().ok());
        edits.extend(upstream::client_edits(&delivery, &headers, had_authorization));
        // Only the identity headers present in the request are removed (each removal is a host call).
        for name in &config.stripped_headers {
            if headers.contains(name) {
                edits.push(HeaderEdit::RemoveNamed(name.clone()));
            }
        }
        // Header-scoped signing: no body is read, and the request goes on at once.
        let source = match &route {
            Ok(settings) => settings.scope_source.unwrap_or(config.scope_source),
            Err(_) => config.scope_source,
        };
        let header_call = match (&plan, source) {
            (BodyPlan::JsonRpc, ScopeSource::Headers) => match call_from_headers(&headers) {
                Ok(Some(call)) => Some(Call::Messages(call)),
                Ok(None) if config.allow_body_buffering => None,
                Ok(None) => return self.refuse(Refusal::HeaderMismatch(HEADERS_REQUIRED), Effects::default()),
                Err(refusal) => return self.refuse(refusal, Effects::default()),
            },
            (BodyPlan::JsonRpc, ScopeSource::Body) if !config.allow_body_buffering => {
                return self.refuse(
                    Refusal::BadRouteMetadata("this route scopes from the body, but the filter may not buffer one"),
                    Effects::default(),
                )
            }
            _ => None,
        };
        let head = Box::new(Head {
            headers,
            bearer,
            issuer,
            route,
            route_key,
        });
        let now = match (header_call, end_of_stream) {
            (Some(call), _) => Some(Ok(call)),
            (None, true) => Some(on_body(&plan, &[], config.max_body_bytes)),
            (None, false) => None,
        };
        if let Some(call) = now {
            let mut step = match call {
                Ok(call) => self.sign(&head, call, host),
                Err(refusal) => self.refuse(refusal, Effects::default()),
            };
            edits.append(&mut step.edits);
            step.edits = edits;
            return step;
        }
        // Envoy delivers the body only because the filter sets allow_on_headers_stop_iteration.
        self.phase = Phase::Body(head, plan);
        Step {
            edits,
            effects: Effects::default(),
            next: Next::Pause,
        }
    }

    /// The body (all of it) has arrived, or there is none: decide, sign, set the token.
    /// The body has been read: check the routing headers against it, then sign.
    fn sign_body(&mut self, head: &Head, plan: &BodyPlan, body: &[u8], host: &dyn Host) -> Step {
        let call = match on_body(plan, body, self.plugin.config.max_body_bytes) {
            Ok(call) => call,
            Err(refusal) => return self.refuse(refusal, Effects::default()),
        };
        if let Call::Messages(messages) = &call {
            self.request_id = messages.id.clone();
        }
        if let Err(refusal) = check_routing_headers(&call, &head.headers) {
            return self.refuse(refusal, Effects::default());
        }
        self.sign(head, call, host)
    }

    /// Authorise `call` and set its token.
    fn sign(&mut self, head: &Head, call: Call, host: &dyn Host) -> Step {
        let plugin = self.plugin.clone();
        let config = &plugin.config;
        let route = match &head.route {
            Ok(route) => route,
            Err(refusal) => return self.refuse(refusal.clone(), Effects::default()),
        };
        if let Err(refusal) = upstream::delivery(config, Some(route)) {
            return self.refuse(refusal, Effects::default());
        }
        match self.before_signing(head, &call, host) {
            introspect::Before::Sign(introspection, effects) => {
                self.mint(head, &call, introspection.as_ref(), effects, host)
            }
            introspect::Before::Step(step) => step,
        }
    }

    /// Authorise and sign, once the incoming token (if any) is known: the token and the headers that carry it.
    fn mint(
        &mut self,
        head: &Head,
        call: &Call,
        introspection: Option<&Value>,
        mut effects: Effects,
        host: &dyn Host,
    ) -> Step {
        let plugin = self.plugin.clone();
        let config = &plugin.config;
        let (route, delivery) = match &head.route {
            Ok(route) => match upstream::delivery(config, Some(route)) {
                Ok(delivery) => (route, delivery),
                Err(refusal) => return self.refuse(refusal, effects),
            },
            Err(refusal) => return self.refuse(refusal.clone(), effects),
        };
        let Some(signer) = plugin.keys.signer(host) else {
            return self.refuse(Refusal::KeyUnavailable, effects);
        };
        let Some(started_us) = host.now_micros() else {
            return self.refuse(Refusal::Internal("clock unavailable"), effects);
        };
        let request = SignRequest {
            config,
            issuer: &head.issuer,
            call,
            route,
            headers: &head.headers,
            host,
            introspection,
        };
        let token = {
            let mut cache = plugin.cache.borrow_mut();
            token_for(&request, &mut cache, &signer, started_us / 1_000_000, || {
                claims::new_jti().ok()
            })
        };
        let token = match token {
            Ok(token) => token,
            Err(refusal) => return self.refuse(refusal, effects),
        };
        effects.audit = audit(config, signed_fields(call, &token, signer.kid()));
        if token.from_cache {
            effects.metrics.push(Metric::TokenCacheHits);
            if token.shared {
                effects.metrics.push(Metric::TokenCacheSharedHits);
            }
        } else {
            effects.metrics.push(Metric::TokensMinted);
            if let Some(done_us) = host.now_micros() {
                effects
                    .metrics
                    .push(Metric::SignDurationUs(done_us.saturating_sub(started_us)));
            }
        }
        self.phase = Phase::Done;
        let debug = delivery
            .debug_header
            .and_then(|_| debug::payload_of(&token.jwt))
            .map(|claims| debug::summary(signer.kid(), &claims));
        let mut edits = upstream::token_edits(&delivery, &token.jwt, token.channel.as_deref(), debug);
        // The route guard compares it with the route the request really takes.
        edits.push(HeaderEdit::Set(ROUTE_HEADER, head.route_key.fingerprint()));
        Step {
            edits,
            effects,
            next: Next::Continue,
        }
    }
}

impl HttpFilter for Request {
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Step {
        match self.phase {
            Phase::Start => self.headers(host, end_of_stream),
            _ => self.refuse(Refusal::Internal("headers seen twice"), Effects::default()),
        }
    }

    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Step {
        let max = self.plugin.config.max_body_bytes;
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Body(head, plan) => {
                if body_size > max {
                    return self.refuse(Refusal::BodyTooLarge { limit: max }, Effects::default());
                }
                if !end_of_stream {
                    self.phase = Phase::Body(head, plan);
                    return Step::just(Next::Pause); // keep buffering
                }
                let Some(body) = host.request_body(body_size) else {
                    return self.refuse(Refusal::Internal("cannot read the request body"), Effects::default());
                };
                self.sign_body(&head, &plan, &body, host)
            }
            Phase::Done => Step::just(Next::Continue),
            Phase::Start | Phase::Introspecting(_) => {
                self.refuse(Refusal::Internal("body outside the body phase"), Effects::default())
            }
        }
    }

    fn on_request_trailers(&mut self, _host: &dyn Host) -> Step {
        match self.phase {
            Phase::Done => Step::just(Next::Continue),
            // Trailers end the request before the body callback saw end of stream: never let it go on unsigned.
            _ => self.refuse(Refusal::UnexpectedTrailers, Effects::default()),
        }
    }

    fn on_host_failure(&mut self, what: &'static str) -> Step {
        self.refuse(Refusal::Internal(what), Effects::default())
    }

    fn on_callout_response(&mut self, host: &dyn Host, response: Option<CalloutResponse>) -> Step {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Introspecting(pending) => self.introspected(*pending, response, host),
            _ => self.refuse(
                Refusal::Internal("a callout the filter did not make"),
                Effects::default(),
            ),
        }
    }
}
