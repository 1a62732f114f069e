//! The route guard: the same module run as an upstream HTTP filter of Envoy's router (`upstream_http_filters`,
//! root id [`GUARD_ROOT_ID`]), where the route is final.
//!
//! Why it exists: the signer scopes the token from the route's metadata (audience, allow-list), read before it
//! edits any header. Envoy's wasm host clears the route cache on every header write (the client's
//! `authorization` removed, identity headers stripped, the token set), so the router matches again on the edited
//! headers, and a route chosen by a stripped identity header or by `authorization` can send the token to another
//! route's server. No wasm call lets the signer see that new match before the router runs. The guard runs after
//! it: it compares the route the request really takes with the one the signer recorded in [`ROUTE_HEADER`], and
//! refuses (500, `route_changed`, nothing sent upstream) when they differ, or when the header is missing or
//! repeated (the request did not pass the signer). It removes the header before the request goes upstream.

use crate::host::{CalloutResponse, Effects, HeaderEdit, Host, HttpFilter, LogLevel, Metric, Next, Step};
use crate::refusal::Refusal;

use super::respond;
use super::route::{RouteKey, ROUTE_HEADER};

/// The plugin root id that selects the guard instead of the signer.
pub const GUARD_ROOT_ID: &str = "mcp_jwt_signer_route_guard";

/// The guard for one upstream request (it holds no state).
#[derive(Default)]
pub struct RouteGuard;

impl RouteGuard {
    fn refuse(&mut self, refusal: Refusal) -> Step {
        Step {
            edits: Vec::new(),
            effects: Effects {
                metrics: vec![Metric::Refused(refusal.reason())],
                logs: vec![(LogLevel::Warn, refusal.log_line(None))],
                ..Effects::default()
            },
            next: Next::Respond(respond::refusal(&refusal, None)),
        }
    }
}

impl HttpFilter for RouteGuard {
    fn on_request_headers(&mut self, host: &dyn Host, _end_of_stream: bool) -> Step {
        let headers = host.request_headers();
        let recorded = match headers.single(ROUTE_HEADER) {
            Ok(Some(value)) => value.to_vec(),
            Ok(None) | Err(_) => return self.refuse(Refusal::Internal("the request did not pass the signer")),
        };
        if RouteKey::read(host).fingerprint().as_bytes() != recorded.as_slice() {
            return self.refuse(Refusal::RouteChanged);
        }
        Step {
            edits: vec![HeaderEdit::Remove(ROUTE_HEADER)],
            effects: Effects::default(),
            next: Next::Continue,
        }
    }

    fn on_request_body(&mut self, _host: &dyn Host, _body_size: usize, _end_of_stream: bool) -> Step {
        Step::just(Next::Continue)
    }

    fn on_request_trailers(&mut self, _host: &dyn Host) -> Step {
        Step::just(Next::Continue)
    }

    fn on_host_failure(&mut self, what: &'static str) -> Step {
        self.refuse(Refusal::Internal(what))
    }

    fn on_callout_response(&mut self, _host: &dyn Host, _response: Option<CalloutResponse>) -> Step {
        self.refuse(Refusal::Internal("a callout the guard did not make"))
    }
}
