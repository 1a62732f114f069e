//! The only module that talks to the proxy-wasm host ABI. It reads values from Envoy, hands them to the pure
//! modules, and carries out their answer. It holds no policy of its own.
//!
//! Host calls go through `proxy_wasm::hostcalls` (which return `Result`) rather than the SDK's trait methods,
//! which unwrap: a client-controlled value must never be able to panic the VM.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use serde_json::Value;

use crate::cache::TokenCache;
use crate::claims::{self, Call};
use crate::config::{Config, KeySource, SIGNING_KEY_ENV};
use crate::identity::{PropertyUnavailable, RepeatedHeader, RequestFacts};
use crate::refusal::Refusal;
use crate::request::{
    self, BodyPlan, HeadDecision, LocalResponse, RequestHead, RouteSettings, SignRequest, ROUTE_METADATA_NAMESPACE,
};
use crate::signer::{Algorithm, Signer};
use crate::well_known::Endpoint;

/// Shared-data key under which the first worker publishes an auto-generated key (PKCS#8 DER) for the others.
const SHARED_KEY_PREFIX: &str = "mcp_jwt_signer/generated_key/v1/";

fn shared_key_name(algorithm: Algorithm) -> String {
    format!("{SHARED_KEY_PREFIX}{algorithm}")
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PluginRoot { filter: None }) });
}}

/// Where the signing key lives.
enum KeyStore {
    /// Configured (plugin config or environment): fixed for the life of this configuration.
    Fixed(Rc<Signer>),
    /// Auto-generated and shared through Envoy's shared data. The cached copy is re-validated against the
    /// shared value's CAS (on each of the first uses, then every `SHARED_KEY_RECHECK`th), so a worker that lost a
    /// start-up race converges on the published key without copying the key out of shared data on every request.
    Shared {
        algorithm: Algorithm,
        name: String,
        cache: RefCell<Option<(u32, Rc<Signer>)>>,
        uses: std::cell::Cell<u32>,
    },
}

/// After this many uses, the shared generated key is re-validated only every this many uses.
const SHARED_KEY_RECHECK: u32 = 1024;

impl KeyStore {
    fn signer(&self) -> Option<Rc<Signer>> {
        match self {
            KeyStore::Fixed(signer) => Some(signer.clone()),
            KeyStore::Shared {
                algorithm,
                name,
                cache,
                uses,
            } => {
                let used = uses.get();
                uses.set(used.wrapping_add(1));
                if used >= SHARED_KEY_RECHECK && used % SHARED_KEY_RECHECK != 0 {
                    if let Some((_, signer)) = cache.borrow().as_ref() {
                        return Some(signer.clone());
                    }
                }
                let (bytes, cas) = match hostcalls::get_shared_data(name) {
                    Ok((Some(bytes), Some(cas))) => (bytes, cas),
                    _ => return cache.borrow().as_ref().map(|(_, s)| s.clone()),
                };
                if let Some((cached_cas, signer)) = cache.borrow().as_ref() {
                    if *cached_cas == cas {
                        return Some(signer.clone());
                    }
                }
                match Signer::from_pkcs8_der(*algorithm, &bytes) {
                    Ok(signer) => {
                        let signer = Rc::new(signer);
                        *cache.borrow_mut() = Some((cas, signer.clone()));
                        Some(signer)
                    }
                    Err(e) => {
                        log::error!("shared generated key is unreadable: {e}");
                        cache.borrow().as_ref().map(|(_, s)| s.clone())
                    }
                }
            }
        }
    }

    fn is_ephemeral(&self) -> bool {
        matches!(self, KeyStore::Shared { .. })
    }
}

/// Configuration, key, token cache and metrics of one plugin instance in one worker VM, shared by its HTTP
/// contexts.
struct Filter {
    config: Config,
    keys: KeyStore,
    cache: RefCell<TokenCache>,
    metrics: Metrics,
}

/// Counters and histograms visible in Envoy's `/stats` (Envoy prefixes them with `wasmcustom.`).
struct Metrics {
    tokens_minted: Option<u32>,
    cache_hits: Option<u32>,
    discovery_served: Option<u32>,
    jwks_served: Option<u32>,
    sign_duration_us: Option<u32>,
    /// One counter per refusal reason, defined on first use.
    refused: RefCell<HashMap<&'static str, Option<u32>>>,
}

impl Metrics {
    fn define() -> Metrics {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Metrics {
            tokens_minted: counter("mcp_jwt_signer.tokens_minted"),
            cache_hits: counter("mcp_jwt_signer.token_cache_hits"),
            discovery_served: counter("mcp_jwt_signer.discovery_served"),
            jwks_served: counter("mcp_jwt_signer.jwks_served"),
            sign_duration_us: hostcalls::define_metric(MetricType::Histogram, "mcp_jwt_signer.sign_duration_us").ok(),
            refused: RefCell::new(HashMap::new()),
        }
    }

    fn increment(id: Option<u32>) {
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn refused(&self, reason: &'static str) {
        let id = *self.refused.borrow_mut().entry(reason).or_insert_with(|| {
            hostcalls::define_metric(MetricType::Counter, &format!("mcp_jwt_signer.refused.{reason}")).ok()
        });
        Self::increment(id);
    }
}

struct PluginRoot {
    filter: Option<Rc<Filter>>,
}

impl Context for PluginRoot {}

impl RootContext for PluginRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log::error!("cannot read plugin configuration: {status:?}");
                return false;
            }
        };
        match load(&bytes) {
            Ok(filter) => {
                self.filter = Some(Rc::new(filter));
                true
            }
            Err(message) => {
                // Returning false makes Envoy refuse the plugin: fail closed.
                log::error!("{message}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let filter = self.filter.clone()?;
        Some(Box::new(McpRequest {
            filter,
            plan: None,
            issuer: None,
            request_id: None,
            headers: Vec::new(),
            finished: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Parses the configuration and obtains the key. Errors name the field and never contain key material.
fn load(bytes: &[u8]) -> Result<Filter, String> {
    let config = Config::parse(bytes).map_err(|e| e.to_string())?;
    let env_value = std::env::var(SIGNING_KEY_ENV).ok();
    let source = KeySource::resolve(&config, env_value.as_deref()).map_err(|e| e.to_string())?;
    let keys = match source {
        KeySource::Config(pem) => {
            let signer = Signer::from_pem(config.algorithm, &pem.0)
                .map_err(|e| format!("invalid plugin configuration: field `signing_key`: {e}"))?;
            log::info!("signing with the configured key, kid={}", signer.kid());
            KeyStore::Fixed(Rc::new(signer))
        }
        KeySource::Environment(pem) => {
            let signer = Signer::from_pem(config.algorithm, &pem.0)
                .map_err(|e| format!("invalid signing key in environment variable {SIGNING_KEY_ENV}: {e}"))?;
            log::info!("signing with the key from {SIGNING_KEY_ENV}, kid={}", signer.kid());
            KeyStore::Fixed(Rc::new(signer))
        }
        KeySource::Generated => {
            let name = shared_key_name(config.algorithm);
            publish_generated_key(config.algorithm, &name)?;
            let store = KeyStore::Shared {
                algorithm: config.algorithm,
                name,
                cache: RefCell::new(None),
                uses: std::cell::Cell::new(0),
            };
            let signer = store.signer().ok_or("the generated signing key could not be shared")?;
            log::warn!(
                "no signing key configured; using an auto-generated {} key (kid={}) that is lost when Envoy \
                 restarts. Set `signing_key` or {SIGNING_KEY_ENV} for stable keys and for replicas.",
                match config.algorithm {
                    Algorithm::Rs256 => "RSA-2048",
                    Algorithm::Es256 => "P-256",
                    Algorithm::EdDsa => "Ed25519",
                },
                signer.kid()
            );
            store
        }
    };
    let cache = RefCell::new(TokenCache::new(config.token_cache));
    Ok(Filter {
        config,
        keys,
        cache,
        metrics: Metrics::define(),
    })
}

/// Makes sure a generated key is published in shared data. Shared data has no create-if-absent, so: read,
/// generate only if absent, read again right before writing, and let every worker use whatever is stored.
fn publish_generated_key(algorithm: Algorithm, name: &str) -> Result<(), String> {
    if let Ok((Some(_), _)) = hostcalls::get_shared_data(name) {
        return Ok(());
    }
    let signer = Signer::generate(algorithm).map_err(|e| e.to_string())?;
    let der = signer.to_pkcs8_der().map_err(|e| e.to_string())?;
    if let Ok((Some(_), _)) = hostcalls::get_shared_data(name) {
        return Ok(()); // another worker finished first: use its key
    }
    hostcalls::set_shared_data(name, Some(&der), None)
        .map_err(|status| format!("cannot publish the generated key in shared data: {status:?}"))
}

/// One HTTP request.
struct McpRequest {
    filter: Rc<Filter>,
    /// Set while the body is being buffered.
    plan: Option<BodyPlan>,
    issuer: Option<crate::config::Issuer>,
    /// The JSON-RPC id of a single-message body, echoed by refusals decided after parsing.
    request_id: Option<Value>,
    /// The request headers as they arrived (minus `authorization`), read in one host call.
    headers: Vec<(String, Vec<u8>)>,
    /// A token was set or a local reply sent: nothing more to do.
    finished: bool,
}

/// Request facts: the request's headers (read once, when the headers arrive) and Envoy attributes on demand.
struct HostFacts<'a> {
    headers: &'a [(String, Vec<u8>)],
}

impl HostFacts<'_> {
    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(key, _)| key.eq_ignore_ascii_case(name))
    }
}

impl RequestFacts for HostFacts<'_> {
    fn header(&self, name: &str) -> Result<Option<Vec<u8>>, RepeatedHeader> {
        let mut values = self.headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case(name));
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some((_, value)), None) => Ok(Some(value.clone())),
            (Some(_), Some(_)) => Err(RepeatedHeader),
        }
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, PropertyUnavailable> {
        // Not the SDK's `get_property`, which unwraps: a `null` claim makes Envoy answer SerializationFailure.
        hostcalls::get_property(path.to_vec()).map_err(|_| PropertyUnavailable)
    }
}

fn route_settings() -> Result<RouteSettings, Refusal> {
    // One host call for the whole namespace (a map of `audience` and `allowed_tools`).
    let raw = hostcalls::get_property(vec![
        "xds",
        "route_metadata",
        "filter_metadata",
        ROUTE_METADATA_NAMESPACE,
    ])
    .map_err(|_| Refusal::BadRouteMetadata("route metadata could not be read"))?;
    RouteSettings::from_namespace(raw.as_deref())
}

fn now_micros() -> Option<u128> {
    hostcalls::get_current_time()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_micros())
}

impl McpRequest {
    fn respond(&mut self, response: LocalResponse) -> Action {
        self.finished = true;
        let headers: Vec<(&str, &str)> = response.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Err(status) = hostcalls::send_http_response(response.status, headers, Some(&response.body)) {
            log::error!("cannot send local response: {status:?}");
        }
        Action::Pause
    }

    fn refuse(&mut self, refusal: Refusal) -> Action {
        let id = refusal.id().or(self.request_id.as_ref()).map(Value::to_string);
        let id: String = id.unwrap_or_else(|| "null".into()).chars().take(80).collect();
        log::info!(
            "refused reason={} status={} jsonrpc_id={} detail={:?}",
            refusal.reason(),
            refusal.status(),
            id,
            refusal.message()
        );
        self.filter.metrics.refused(refusal.reason());
        let response = LocalResponse::refusal(&refusal, self.request_id.as_ref());
        self.respond(response)
    }

    /// Mints (or reuses) the token and puts it on the request, or refuses.
    fn sign(&mut self, call: &Call) -> Action {
        let Some(issuer) = self.issuer.clone() else {
            return self.refuse(Refusal::Internal("issuer not resolved"));
        };
        let Some(signer) = self.filter.keys.signer() else {
            return self.refuse(Refusal::KeyUnavailable);
        };
        let Some(started_us) = now_micros() else {
            return self.refuse(Refusal::Internal("clock unavailable"));
        };
        let route = match route_settings() {
            Ok(route) => route,
            Err(refusal) => return self.refuse(refusal),
        };
        let filter = self.filter.clone();
        let facts = HostFacts { headers: &self.headers };
        let sign_request = SignRequest {
            config: &filter.config,
            issuer: &issuer,
            call,
            route: &route,
            facts: &facts,
        };
        let now = (started_us / 1_000_000) as u64;
        let token = {
            let mut cache = filter.cache.borrow_mut();
            request::token_for(&sign_request, &mut cache, &signer, now, || claims::new_jti().ok())
        };
        let token = match token {
            Ok(token) => token,
            Err(refusal) => return self.refuse(refusal),
        };
        if token.from_cache {
            Metrics::increment(filter.metrics.cache_hits);
        } else {
            Metrics::increment(filter.metrics.tokens_minted);
            if let (Some(id), Some(done_us)) = (filter.metrics.sign_duration_us, now_micros()) {
                let _ = hostcalls::record_metric(id, done_us.saturating_sub(started_us) as u64);
            }
        }
        if filter.config.strip_identity_headers {
            // Only the identity headers present in the request cost a host call (the map was read for identity).
            for name in filter.config.identity_header_names() {
                if facts.has_header(name) && hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None).is_err()
                {
                    return self.refuse(Refusal::Internal("cannot remove an identity header"));
                }
            }
        }
        let value = format!("Bearer {}", token.jwt);
        if hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", Some(&value)).is_err() {
            return self.refuse(Refusal::Internal("cannot set the authorization header"));
        }
        self.finished = true;
        Action::Continue
    }
}

impl Context for McpRequest {}

impl HttpContext for McpRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        // No token passthrough: whatever the client sent (every copy) is dropped before anything else happens.
        if self
            .headers
            .iter()
            .any(|(key, _)| key.eq_ignore_ascii_case("authorization"))
        {
            if hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None).is_err() {
                return self.refuse(Refusal::Internal("cannot remove the client's authorization header"));
            }
            self.headers
                .retain(|(key, _)| !key.eq_ignore_ascii_case("authorization"));
        }
        let header = |name: &str| -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_slice())
        };
        let content_encoding: Vec<&[u8]> = self
            .headers
            .iter()
            .filter(|(key, _)| key == "content-encoding")
            .map(|(_, value)| value.as_slice())
            .collect();
        let config = &self.filter.config;
        let issuer = match request::issuer_for(
            config,
            header(":scheme").unwrap_or_default(),
            header(":authority").unwrap_or_default(),
        ) {
            Ok(issuer) => issuer,
            Err(refusal) => return self.refuse(refusal),
        };
        let head = RequestHead {
            method: header(":method").unwrap_or_default(),
            path: header(":path").unwrap_or_default(),
            content_length: header("content-length"),
            content_encoding: &content_encoding,
            end_of_stream,
        };
        let decision = request::on_headers(&head, &issuer.path, config.max_body_bytes);
        self.issuer = Some(issuer);
        match decision {
            HeadDecision::Serve(endpoint) => {
                let Some(signer) = self.filter.keys.signer() else {
                    return self.refuse(Refusal::KeyUnavailable);
                };
                let Some(issuer) = self.issuer.as_ref() else {
                    return self.refuse(Refusal::Internal("issuer not resolved"));
                };
                let mut keys = vec![signer.jwk()];
                keys.extend(
                    self.filter
                        .config
                        .additional_public_keys
                        .iter()
                        .filter(|k| k.kid != signer.kid()),
                );
                let response = LocalResponse::well_known(endpoint, issuer, &keys, self.filter.keys.is_ephemeral());
                Metrics::increment(match endpoint {
                    Endpoint::Discovery => self.filter.metrics.discovery_served,
                    Endpoint::Jwks => self.filter.metrics.jwks_served,
                });
                self.respond(response)
            }
            HeadDecision::Refuse(refusal) => self.refuse(refusal),
            HeadDecision::Sign(call) => self.sign(&call),
            HeadDecision::AwaitBody(plan) => {
                self.plan = Some(plan);
                // Envoy delivers the body only because the filter sets allow_on_headers_stop_iteration.
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.finished {
            return Action::Continue;
        }
        let Some(plan) = self.plan.clone() else {
            return self.refuse(Refusal::Internal("body without a plan"));
        };
        let max = self.filter.config.max_body_bytes;
        if body_size > max {
            return self.refuse(Refusal::BodyTooLarge { limit: max });
        }
        if !end_of_stream {
            return Action::Pause; // keep buffering
        }
        let body = match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
            Ok(body) => body.unwrap_or_default(),
            Err(_) => return self.refuse(Refusal::Internal("cannot read the request body")),
        };
        match request::on_body(&plan, &body, max) {
            Ok(call) => {
                if let Call::Messages(messages) = &call {
                    self.request_id = messages.id.clone();
                }
                let values = |name: &str| -> Vec<&[u8]> {
                    self.headers
                        .iter()
                        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                        .map(|(_, value)| value.as_slice())
                        .collect()
                };
                if let Err(refusal) = request::check_routing_headers(&call, &values("mcp-method"), &values("mcp-name"))
                {
                    return self.refuse(refusal);
                }
                self.sign(&call)
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.finished {
            return Action::Continue;
        }
        // Trailers end the request before the body callback saw end of stream: never let it go on unsigned.
        self.refuse(Refusal::UnexpectedTrailers)
    }
}
