//! A host in memory that plays Envoy, so the whole request path (every refusal, every endpoint, the token
//! cache, the shared generated key) runs natively under `cargo test`, without a proxy.
//!
//! [`FakeHost`] answers the [`Host`] queries from maps; [`send`] drives an [`HttpFilter`] through one request the
//! way Envoy does (headers, body in chunks, trailers), applies its header edits, re-evaluates route attributes
//! after an edit (Envoy's wasm host clears the route cache on every header write), and reports what the
//! upstream would have received.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use serde_json::Value;

use super::{
    Callout, CalloutResponse, Effects, HeaderEdit, Headers, Host, HttpFilter, LocalResponse, Next, SharedDataError,
    Step, Unavailable,
};

/// Route attributes (`xds/...` paths) as a function of the current request headers: a router.
pub type Router = Rc<dyn Fn(&Headers) -> HashMap<String, Value>>;

/// Shared data of one fake proxy: what all its fake workers see.
pub type SharedData = Rc<RefCell<HashMap<String, (Vec<u8>, u32)>>>;

/// Answers the filter's callouts (`None`: the callout fails, as on a reset or a timeout).
pub type Responder = Rc<dyn Fn(&Callout) -> Option<CalloutResponse>>;

/// How the fake proxy carries out header edits. Tests that take one layer of a defence away use the other two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeaderWrites {
    /// As Envoy 1.40's wasm host: a removal removes every copy, a write replaces every copy.
    #[default]
    Envoy,
    /// A write adds one more copy and leaves the others (a host whose "set" appends): what the removals achieve
    /// alone.
    Append,
    /// A removal does nothing (a host that drops it silently): what the replacing writes achieve alone.
    IgnoreRemovals,
}

/// The request and the proxy around it, in memory.
pub struct FakeHost {
    /// The request headers as the filter would read them now (edits applied).
    pub headers: RefCell<Headers>,
    /// The body buffered so far.
    pub body: RefCell<Vec<u8>>,
    /// Attributes by path, segments joined with `/` (e.g. `connection/uri_san_peer_certificate`).
    pub attributes: HashMap<String, Value>,
    /// Paths whose read fails (as Envoy fails on a metadata struct holding a JSON `null`).
    pub unavailable: HashSet<String>,
    /// Computes the `xds/...` attributes from the current headers; without it, `attributes` answers them too.
    pub router: Option<Router>,
    /// Wall-clock microseconds.
    pub now_micros: Cell<u64>,
    /// The proxy's shared data.
    pub shared: SharedData,
    /// Number of attribute reads (to check what the warm path costs).
    pub attribute_reads: Cell<usize>,
    /// The other end of the filter's callouts; without one, every callout fails.
    pub responder: Option<Responder>,
    /// The Envoy version the host reports (1.40 by default).
    pub envoy_version: Option<(u64, u64)>,
    /// How header edits are carried out (as Envoy does, by default).
    pub header_writes: HeaderWrites,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            headers: RefCell::new(Headers::default()),
            body: RefCell::new(Vec::new()),
            attributes: HashMap::new(),
            unavailable: HashSet::new(),
            router: None,
            now_micros: Cell::new(1_700_000_000_000_000),
            shared: SharedData::default(),
            attribute_reads: Cell::new(0),
            responder: None,
            envoy_version: Some((1, 40)),
            header_writes: HeaderWrites::Envoy,
        }
    }
}

impl FakeHost {
    /// A host whose shared data is `shared` (another worker of the same proxy).
    pub fn with_shared(shared: SharedData) -> FakeHost {
        FakeHost {
            shared,
            ..FakeHost::default()
        }
    }

    /// Sets an attribute (`path` with `/` between segments).
    pub fn attribute(mut self, path: &str, value: Value) -> Self {
        self.attributes.insert(path.to_string(), value);
        self
    }

    /// Sets a claim of jwt_authn's verified payload (payload name `jwt_payload`).
    pub fn jwt_claim(self, claim: &str, value: Value) -> Self {
        let path = format!("metadata/filter_metadata/envoy.filters.http.jwt_authn/jwt_payload/{claim}");
        self.attribute(&path, value)
    }

    /// Sets the current time, in seconds.
    pub fn at(self, seconds: u64) -> Self {
        self.now_micros.set(seconds * 1_000_000);
        self
    }

    /// Applies one edit as Envoy's header map does.
    pub fn apply(&self, edit: &HeaderEdit) {
        let mut headers = self.headers.borrow_mut();
        let (removes, replaces) = match self.header_writes {
            HeaderWrites::Envoy => (true, true),
            HeaderWrites::Append => (true, false),
            HeaderWrites::IgnoreRemovals => (false, true),
        };
        let (name, value) = match edit {
            HeaderEdit::Remove(name) => (*name, None),
            HeaderEdit::RemoveNamed(name) => (name.as_str(), None),
            HeaderEdit::Set(name, value) => (*name, Some(value)),
            HeaderEdit::SetNamed(name, value) => (name.as_str(), Some(value)),
        };
        match value {
            None if removes => headers.remove(name),
            None => {}
            Some(value) => {
                if replaces {
                    headers.remove(name);
                }
                headers.0.push((name.to_string(), value.as_bytes().to_vec()));
            }
        }
    }
}

impl Host for FakeHost {
    fn request_headers(&self) -> Headers {
        self.headers.borrow().clone()
    }

    fn request_body(&self, len: usize) -> Option<Vec<u8>> {
        let body = self.body.borrow();
        Some(body[..len.min(body.len())].to_vec())
    }

    fn attribute(&self, path: &[&str]) -> Result<Option<Value>, Unavailable> {
        self.attribute_reads.set(self.attribute_reads.get() + 1);
        let key = path.join("/");
        if self.unavailable.contains(&key) {
            return Err(Unavailable);
        }
        if let (Some(router), Some("xds")) = (&self.router, path.first().copied()) {
            let routed = router(&self.headers.borrow());
            return Ok(lookup(&routed, path));
        }
        Ok(lookup(&self.attributes, path))
    }

    fn now_micros(&self) -> Option<u64> {
        Some(self.now_micros.get())
    }

    fn envoy_version(&self) -> Option<(u64, u64)> {
        self.envoy_version
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.borrow().get(key).cloned()
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        let mut shared = self.shared.borrow_mut();
        let next_cas = match (shared.get(key), cas) {
            (Some((_, stored)), Some(expected)) if *stored != expected => return Err(SharedDataError::CasMismatch),
            (Some((_, stored)), _) => stored + 1,
            (None, _) => 1,
        };
        shared.insert(key.to_string(), (value.to_vec(), next_cas));
        Ok(())
    }
}

/// A value at `path`, or inside a map or list stored at a prefix of it (as Envoy answers deeper paths).
fn lookup(map: &HashMap<String, Value>, path: &[&str]) -> Option<Value> {
    for split in (1..=path.len()).rev() {
        if let Some(value) = map.get(&path[..split].join("/")) {
            let mut value = value;
            for segment in &path[split..] {
                value = match value {
                    Value::Object(m) => m.get(*segment)?,
                    Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            return match value {
                Value::String(s) if s.is_empty() => None,
                other => Some(other.clone()),
            };
        }
    }
    None
}

/// One request as a client sends it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Headers, pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) included.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body chunks (none: the headers end the request).
    pub chunks: Vec<Vec<u8>>,
    /// Send trailers after the body.
    pub trailers: bool,
}

impl Request {
    /// A request with these pseudo-headers (`:scheme` http, `:authority` gw.example.com).
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            headers: vec![
                (":method".into(), method.as_bytes().to_vec()),
                (":path".into(), path.as_bytes().to_vec()),
                (":authority".into(), b"gw.example.com".to_vec()),
                (":scheme".into(), b"http".to_vec()),
            ],
            ..Request::default()
        }
    }

    /// A JSON-RPC POST to `/mcp`.
    pub fn post(body: &str) -> Request {
        Request::new("POST", "/mcp")
            .header("content-type", "application/json")
            .body(body.as_bytes())
    }

    /// Adds a header (another copy if it is already there).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    /// Replaces a (pseudo-)header.
    pub fn set(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers.retain(|(k, _)| k != name);
        self.header(name, value)
    }

    /// Adds one body chunk.
    pub fn body(mut self, chunk: &[u8]) -> Request {
        self.chunks.push(chunk.to_vec());
        self
    }
}

/// What became of one request.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// What the upstream received: the headers (after the filter's edits) and the body. `None`: nothing reached it.
    pub forwarded: Option<(Headers, Vec<u8>)>,
    /// The filter's own response.
    pub response: Option<LocalResponse>,
    /// Every metric and log line, in order.
    pub effects: Effects,
    /// Every header edit, in order.
    pub edits: Vec<HeaderEdit>,
    /// Every callout the filter made, in order.
    pub callouts: Vec<Callout>,
}

impl Exchange {
    /// The local response's body as JSON (`null` without a local response or when it is not JSON).
    pub fn json(&self) -> Value {
        self.response
            .as_ref()
            .and_then(|r| serde_json::from_slice(&r.body).ok())
            .unwrap_or(Value::Null)
    }

    /// The local response's status, 0 without one.
    pub fn status(&self) -> u32 {
        self.response.as_ref().map_or(0, |r| r.status)
    }

    /// The forwarded request's single value of `name`.
    pub fn forwarded_header(&self, name: &str) -> Option<String> {
        let (headers, _) = self.forwarded.as_ref()?;
        let value = headers.single(name).ok()??;
        Some(String::from_utf8_lossy(value).into_owned())
    }
}

/// Where a request stands between callbacks.
enum Flow {
    /// The filter holds the request.
    Held,
    /// The filter let it go on.
    Continued,
    /// The filter answered.
    Answered,
}

/// Carries out a step (and the steps it chains to), as an adapter does.
fn carry_out(filter: &mut dyn HttpFilter, host: &FakeHost, step: Step, exchange: &mut Exchange) -> Flow {
    let mut step = step;
    loop {
        exchange.effects.metrics.extend(step.effects.metrics);
        exchange.effects.logs.extend(step.effects.logs);
        exchange.effects.audit.extend(step.effects.audit);
        for edit in &step.edits {
            host.apply(edit);
            exchange.edits.push(edit.clone());
        }
        match step.next {
            Next::Continue => return Flow::Continued,
            Next::Pause => return Flow::Held,
            Next::Respond(response) => {
                exchange.response = Some(response);
                return Flow::Answered;
            }
            Next::Callout(callout) => {
                let response = host.responder.as_ref().and_then(|answer| answer(&callout));
                exchange.callouts.push(callout);
                step = filter.on_callout_response(host, response);
            }
        }
    }
}

/// Sends `request` through `filter` on `host` and reports what happened. The host's headers and body are
/// replaced by the request's.
pub fn send(filter: &mut dyn HttpFilter, host: &FakeHost, request: &Request) -> Exchange {
    send_through(filter, None, host, request)
}

/// [`send`], with `upstream` (e.g. the route guard) run as an upstream HTTP filter: after the router has matched
/// the route again on the edited headers, before anything reaches the upstream.
pub fn send_through(
    filter: &mut dyn HttpFilter,
    upstream: Option<&mut dyn HttpFilter>,
    host: &FakeHost,
    request: &Request,
) -> Exchange {
    *host.headers.borrow_mut() = Headers(request.headers.clone());
    host.body.borrow_mut().clear();
    let mut exchange = Exchange::default();
    let no_body = request.chunks.is_empty() && !request.trailers;
    let step = filter.on_request_headers(host, no_body);
    let mut flow = carry_out(filter, host, step, &mut exchange);
    let count = request.chunks.len();
    for (i, chunk) in request.chunks.iter().enumerate() {
        if let Flow::Answered = flow {
            break;
        }
        host.body.borrow_mut().extend_from_slice(chunk);
        let last = i + 1 == count && !request.trailers;
        let size = host.body.borrow().len();
        let step = filter.on_request_body(host, size, last);
        let next = carry_out(filter, host, step, &mut exchange);
        flow = match (flow, next) {
            (_, Flow::Answered) => Flow::Answered,
            (Flow::Continued, _) => Flow::Continued,
            (_, next) => next,
        };
    }
    if request.trailers && !matches!(flow, Flow::Answered) {
        let step = filter.on_request_trailers(host);
        let next = carry_out(filter, host, step, &mut exchange);
        flow = match (flow, next) {
            (_, Flow::Answered) => Flow::Answered,
            (_, next) => next,
        };
    }
    if let (Flow::Continued, Some(upstream)) = (&flow, upstream) {
        let step = upstream.on_request_headers(host, false);
        flow = carry_out(upstream, host, step, &mut exchange);
    }
    if let Flow::Continued = flow {
        exchange.forwarded = Some((host.headers.borrow().clone(), host.body.borrow().clone()));
    }
    exchange
}
