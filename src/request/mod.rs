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
pub use routing_headers::check_routing_headers;
pub use sign::{authorize, token_for, SignRequest, Token};

use std::rc::Rc;

use serde_json::Value;

use crate::claims::{self, Call};
use crate::config::Issuer;
use crate::host::{CalloutResponse, Effects, HeaderEdit, Headers, Host, HttpFilter, LogLevel, Metric, Next, Step};
use crate::plugin::Plugin;
use crate::refusal::Refusal;
use crate::well_known::Endpoint;

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
}

impl Request {
    /// A request of `plugin`.
    pub fn new(plugin: Rc<Plugin>) -> Request {
        Request {
            plugin,
            phase: Phase::Start,
            request_id: None,
        }
    }

    fn refuse(&mut self, refusal: Refusal, mut effects: Effects) -> Step {
        self.phase = Phase::Done;
        effects
            .logs
            .push((LogLevel::Info, refusal.log_line(self.request_id.as_ref())));
        effects.metrics.push(Metric::Refused(refusal.reason()));
        Step {
            edits: Vec::new(),
            effects,
            next: Next::Respond(respond::refusal(&refusal, self.request_id.as_ref())),
        }
    }

    fn serve(&mut self, endpoint: Endpoint, issuer: &Issuer, host: &dyn Host) -> Step {
        let plugin = self.plugin.clone();
        let Some(signer) = plugin.keys.signer(host) else {
            return self.refuse(Refusal::KeyUnavailable, Effects::default());
        };
        self.phase = Phase::Done;
        let keys = plugin.published_keys(&signer);
        let response = respond::well_known(endpoint, issuer, &keys, plugin.keys.is_ephemeral());
        let metric = match endpoint {
            Endpoint::Discovery => Metric::DiscoveryServed,
            Endpoint::Jwks => Metric::JwksServed,
        };
        Step {
            edits: Vec::new(),
            effects: Effects {
                metrics: vec![metric],
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
        let decision = on_headers(&head, &issuer.path, config.max_body_bytes);
        drop(content_encoding);
        let plan = match decision {
            HeadDecision::Serve(endpoint) => return self.serve(endpoint, &issuer, host),
            HeadDecision::Refuse(refusal) => return self.refuse(refusal, Effects::default()),
            HeadDecision::Sign(call) => BodyPlan::MustBeEmpty(call),
            HeadDecision::AwaitBody(plan) => plan,
        };
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
        let head = Box::new(Head {
            headers,
            bearer,
            issuer,
            route,
            route_key,
        });
        if end_of_stream {
            let mut step = self.sign(&head, &plan, &[], host);
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
    fn sign(&mut self, head: &Head, plan: &BodyPlan, body: &[u8], host: &dyn Host) -> Step {
        let plugin = self.plugin.clone();
        let config = &plugin.config;
        let call = match on_body(plan, body, config.max_body_bytes) {
            Ok(call) => call,
            Err(refusal) => return self.refuse(refusal, Effects::default()),
        };
        if let Call::Messages(messages) = &call {
            self.request_id = messages.id.clone();
        }
        if let Err(refusal) = check_routing_headers(&call, &head.headers) {
            return self.refuse(refusal, Effects::default());
        }
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
        if token.from_cache {
            effects.metrics.push(Metric::TokenCacheHits);
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
                self.sign(&head, &plan, &body, host)
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
