//! What the filter needs from the proxy it runs in, and what it asks the proxy to do.
//!
//! The filter's logic is pure: it reads the request through [`Host`] (headers, body, Envoy attributes, shared
//! data, time) and answers each proxy callback with a [`Step`]: header edits to apply, metrics and log lines to
//! emit, and what happens next (continue, pause, reply locally). An adapter for a proxy ABI (proxy-wasm today,
//! Envoy's dynamic modules next) implements [`Host`] and carries out the [`Step`]s of an [`HttpFilter`]; it holds
//! no policy. [`fake`] is a host in memory that plays Envoy for native tests.
//!
//! This module imports nothing from the rest of the filter.

pub mod fake;

use std::borrow::Cow;

use serde_json::Value;

/// The request headers as they arrived, every copy, in order. Names are compared case-insensitively (Envoy
/// lower-cases them; a fake or another host might not). Values are raw bytes: clients control them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<u8>)>);

/// A header that appears more than once where one value is expected. As an identity it is refused: which copy
/// is "the" value depends on who appended what (Envoy's `request_headers_to_add` appends after the client's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepeatedHeader;

impl Headers {
    /// Every value of `name`, in order.
    pub fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.0
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }

    /// The value of a header that must appear at most once.
    pub fn single(&self, name: &str) -> Result<Option<&[u8]>, RepeatedHeader> {
        let mut values = self.all(name);
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => Ok(Some(value)),
            (Some(_), Some(_)) => Err(RepeatedHeader),
        }
    }

    /// The first value of `name` (for pseudo-headers, which Envoy never repeats).
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        self.all(name).next()
    }

    /// Whether `name` is present at all.
    pub fn contains(&self, name: &str) -> bool {
        self.all(name).next().is_some()
    }

    /// Removes every copy of `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    }
}

/// Envoy could not serialise an attribute (e.g. a jwt_authn payload holding a JSON `null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable;

/// Shared data could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedDataError {
    /// The stored value's CAS no longer matches: someone else wrote first.
    CasMismatch,
    /// Any other failure.
    Failed,
}

/// What the filter reads from the proxy. Every method is a query (shared data aside, which is storage the
/// proxy keeps for all workers); everything the filter *does* to the request comes back in a [`Step`].
pub trait Host {
    /// The request headers, every copy, in order.
    fn request_headers(&self) -> Headers;
    /// The first `len` bytes of the buffered request body.
    fn request_body(&self, len: usize) -> Option<Vec<u8>>;
    /// An Envoy attribute or metadata value at `path` (segments, e.g. `["connection", "mtls"]`), decoded to JSON:
    /// strings, numbers, booleans, lists and maps. `Ok(None)`: absent or empty. `Err`: Envoy could not read it.
    fn attribute(&self, path: &[&str]) -> Result<Option<Value>, Unavailable>;
    /// Wall-clock time, microseconds since the Unix epoch.
    fn now_micros(&self) -> Option<u64>;
    /// A value of the data every worker of this proxy shares, with its CAS token.
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Stores a shared value; with `cas`, only if the stored value still carries that CAS token. Shared data has
    /// no atomic create-if-absent: a `None` CAS overwrites.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError>;
    /// The proxy's Envoy version as (major, minor), when the host can tell (`None`: unknown, nothing is checked).
    fn envoy_version(&self) -> Option<(u64, u64)> {
        None
    }
}

/// A change to the request headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Remove every copy of the header.
    Remove(&'static str),
    /// Remove every copy of a header named by the configuration.
    RemoveNamed(String),
    /// Replace every copy of the header with this one value.
    Set(&'static str, String),
    /// Replace every copy of a header named by the configuration with this one value.
    SetNamed(String, String),
}

/// A response the filter sends itself; the request is not forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u32,
    /// Response headers (lower-case names).
    pub headers: Vec<(&'static str, String)>,
    /// Response body.
    pub body: Vec<u8>,
}

/// Log levels the filter uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Start-up facts for troubleshooting (the Envoy version read).
    Debug,
    /// Operational events (refusals, key source).
    Info,
    /// Something an operator should fix.
    Warn,
    /// The filter cannot do its job.
    Error,
}

/// Prefix of every metric name (Envoy shows wasm metrics as `wasmcustom.<name>`).
pub const METRIC_PREFIX: &str = "mcp_jwt_signer";

/// A metric update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Counter `tokens_minted`: a token was signed.
    TokensMinted,
    /// Counter `token_cache_hits`: a cached token was reused (from the worker's cache or the shared one).
    TokenCacheHits,
    /// Counter `token_cache_shared_hits`: of those, reused from the cache the workers share.
    TokenCacheSharedHits,
    /// Counter `discovery_served`.
    DiscoveryServed,
    /// Counter `jwks_served`.
    JwksServed,
    /// Counter `protected_resource_served`: RFC 9728 metadata answered.
    ProtectedResourceServed,
    /// Counter `introspections`: an introspection request was sent to the authorization server.
    Introspections,
    /// Counter `introspection_cache_hits`: a cached introspection result was used instead.
    IntrospectionCacheHits,
    /// Counter `refused.<reason>`: a request was refused (reasons: `Refusal::reason`).
    Refused(&'static str),
    /// Histogram `sign_duration_us`: microseconds from the start of signing to the token (cache misses only).
    SignDurationUs(u64),
    /// Gauge `generated_key_in_use`: 1 while signing with an auto-generated key, 0 with a configured one.
    GeneratedKeyInUse(bool),
}

/// The kind of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Incremented by one per event.
    Counter,
    /// A value recorded per event.
    Histogram,
    /// A value set.
    Gauge,
}

impl Metric {
    /// The metric's full name, e.g. `mcp_jwt_signer.tokens_minted`.
    pub fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Metric::TokensMinted => "mcp_jwt_signer.tokens_minted",
            Metric::TokenCacheHits => "mcp_jwt_signer.token_cache_hits",
            Metric::TokenCacheSharedHits => "mcp_jwt_signer.token_cache_shared_hits",
            Metric::DiscoveryServed => "mcp_jwt_signer.discovery_served",
            Metric::JwksServed => "mcp_jwt_signer.jwks_served",
            Metric::ProtectedResourceServed => "mcp_jwt_signer.protected_resource_served",
            Metric::Introspections => "mcp_jwt_signer.introspections",
            Metric::IntrospectionCacheHits => "mcp_jwt_signer.introspection_cache_hits",
            Metric::SignDurationUs(_) => "mcp_jwt_signer.sign_duration_us",
            Metric::GeneratedKeyInUse(_) => "mcp_jwt_signer.generated_key_in_use",
            Metric::Refused(reason) => return Cow::Owned(format!("{METRIC_PREFIX}.refused.{reason}")),
        })
    }

    /// Counter or histogram.
    pub fn kind(&self) -> MetricKind {
        match self {
            Metric::SignDurationUs(_) => MetricKind::Histogram,
            Metric::GeneratedKeyInUse(_) => MetricKind::Gauge,
            _ => MetricKind::Counter,
        }
    }

    /// The increment (counters) or the recorded value (histograms).
    pub fn value(&self) -> u64 {
        match self {
            Metric::SignDurationUs(us) => *us,
            Metric::GeneratedKeyInUse(generated) => u64::from(*generated),
            _ => 1,
        }
    }
}

/// The dynamic metadata namespace the filter writes its audit fields under (access logs read them with
/// `%DYNAMIC_METADATA(mcp_jwt_signer:<key>)%`).
pub const AUDIT_NAMESPACE: &str = "mcp_jwt_signer";

/// Side effects that change nothing about the request: metrics, log lines and audit fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Metric updates, in order.
    pub metrics: Vec<Metric>,
    /// Log lines, in order.
    pub logs: Vec<(LogLevel, String)>,
    /// Audit fields for the access log (namespace [`AUDIT_NAMESPACE`]): strings, numbers, booleans or lists of
    /// strings. Never a token, never a private claim.
    pub audit: Vec<(&'static str, Value)>,
}

/// An HTTP request the filter makes itself (e.g. RFC 7662 token introspection), through an Envoy cluster. Its
/// `Debug` shows neither the body nor the `authorization` header: they carry the client's token and the gateway's
/// credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Callout {
    /// The Envoy cluster to send it to.
    pub cluster: String,
    /// Request headers, pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Give up after this long.
    pub timeout_ms: u64,
}

impl std::fmt::Debug for Callout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| match k.eq_ignore_ascii_case("authorization") {
                true => (k.as_str(), "<redacted>"),
                false => (k.as_str(), v.as_str()),
            })
            .collect();
        f.debug_struct("Callout")
            .field("cluster", &self.cluster)
            .field("headers", &headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// The answer to a [`Callout`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CalloutResponse {
    /// HTTP status (`:status`).
    pub status: u32,
    /// Response headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Response body.
    pub body: Vec<u8>,
}

/// What happens after a step's edits are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Let the request go on.
    Continue,
    /// Hold the request: wait for (more of) the body.
    Pause,
    /// Send this response; the request is not forwarded.
    Respond(LocalResponse),
    /// Hold the request and send this callout; carry out [`HttpFilter::on_callout_response`] when it returns.
    Callout(Callout),
}

/// The filter's answer to one proxy callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Header edits, applied in order before `next`.
    pub edits: Vec<HeaderEdit>,
    /// Metrics and log lines.
    pub effects: Effects,
    /// What happens next.
    pub next: Next,
}

impl Step {
    /// A step with nothing but `next`.
    pub fn just(next: Next) -> Step {
        Step {
            edits: Vec::new(),
            effects: Effects::default(),
            next,
        }
    }
}

/// One HTTP request's filter, driven by an adapter: each proxy callback makes one call and carries out the
/// returned [`Step`].
pub trait HttpFilter {
    /// The request headers have arrived (`end_of_stream`: no body follows).
    fn on_request_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Step;
    /// More of the body has arrived; `body_size` is the size buffered so far.
    fn on_request_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Step;
    /// Request trailers have arrived.
    fn on_request_trailers(&mut self, host: &dyn Host) -> Step;
    /// The adapter could not carry out part of a step (e.g. a header edit failed); `what` says which.
    fn on_host_failure(&mut self, what: &'static str) -> Step;
    /// A callout returned: `None` when it failed (no cluster, reset, timeout).
    fn on_callout_response(&mut self, host: &dyn Host, response: Option<CalloutResponse>) -> Step;
}

/// An audit field's value as the text both builds write for the access log: a string as itself, a list of strings
/// joined with commas, anything else as JSON (`1767225600`, `true`).
pub fn audit_text(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}
