//! The proxy-wasm adapter: implements [`Host`] with proxy-wasm host calls and carries out the [`Step`]s of the
//! pure request state machine. Each callback makes one call into the pure side; the adapter holds no policy.
//!
//! Host calls go through `proxy_wasm::hostcalls` (which return `Result`) rather than the SDK's trait methods,
//! which unwrap: a client-controlled value must never be able to panic the VM.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel as WasmLogLevel, MapType, MetricType, Status};
use serde_json::Value;

use crate::envoy_value;
use crate::host::{
    CalloutResponse, Effects, HeaderEdit, Headers, Host, HttpFilter, LogLevel, Metric, MetricKind, Next,
    SharedDataError, Step, Unavailable, AUDIT_NAMESPACE,
};
use crate::plugin::Plugin;
use crate::request::{Request, RouteGuard, GUARD_ROOT_ID};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(WasmLogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(PluginRoot { role: Role::Unconfigured, metrics: Rc::new(Metrics::default()) })
    });
}}

/// What a plugin instance of this module is, chosen by its root id.
enum Role {
    /// Not configured yet (or refused).
    Unconfigured,
    /// The signer (any root id but the guard's).
    Signer(Rc<Plugin>),
    /// The route guard (root id `mcp_jwt_signer_route_guard`), an upstream filter of the router.
    Guard,
}

/// The proxy-wasm host: stateless, every query is a host call.
struct WasmHost;

impl Host for WasmHost {
    fn request_headers(&self) -> Headers {
        Headers(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default())
    }

    fn request_body(&self, len: usize) -> Option<Vec<u8>> {
        match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, len) {
            Ok(body) => Some(body.unwrap_or_default()),
            Err(_) => None,
        }
    }

    fn attribute(&self, path: &[&str]) -> Result<Option<Value>, Unavailable> {
        // Not the SDK's `get_property`, which unwraps: a `null` claim makes Envoy answer SerializationFailure.
        match hostcalls::get_property(path.to_vec()) {
            Ok(Some(bytes)) if !bytes.is_empty() => envoy_value::decode(&bytes).map(Some).ok_or(Unavailable),
            Ok(_) => Ok(None),
            Err(_) => Err(Unavailable),
        }
    }

    fn now_micros(&self) -> Option<u64> {
        let now = hostcalls::get_current_time().ok()?;
        Some(now.duration_since(UNIX_EPOCH).ok()?.as_micros() as u64)
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), Some(cas))) => Some((bytes, cas)),
            // Envoy answers an empty value without data.
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn envoy_version(&self) -> Option<(u64, u64)> {
        // Envoy's node build version: each number is 8 bytes, a little-endian u64 (docs/envoy-versions.md).
        let number = |name: &str| {
            let path = vec!["xds", "node", "user_agent_build_version", "version", name];
            let bytes: [u8; 8] = hostcalls::get_property(path).ok()??.try_into().ok()?;
            Some(u64::from_le_bytes(bytes))
        };
        Some((number("major_number")?, number("minor_number")?))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            Status::CasMismatch => SharedDataError::CasMismatch,
            _ => SharedDataError::Failed,
        })
    }
}

/// Metric ids by name, defined on first use (the fixed ones at configuration, so they show at zero).
#[derive(Default)]
struct Metrics {
    ids: RefCell<HashMap<String, Option<u32>>>,
}

impl Metrics {
    fn id(&self, metric: &Metric) -> Option<u32> {
        let name = metric.name();
        if let Some(id) = self.ids.borrow().get(name.as_ref()) {
            return *id;
        }
        let kind = match metric.kind() {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Histogram => MetricType::Histogram,
            MetricKind::Gauge => MetricType::Gauge,
        };
        let id = hostcalls::define_metric(kind, &name).ok();
        self.ids.borrow_mut().insert(name.into_owned(), id);
        id
    }

    fn record(&self, metric: &Metric) {
        let Some(id) = self.id(metric) else { return };
        let _ = match metric.kind() {
            MetricKind::Counter => hostcalls::increment_metric(id, metric.value() as i64),
            MetricKind::Histogram | MetricKind::Gauge => hostcalls::record_metric(id, metric.value()),
        };
    }
}

fn log(level: LogLevel, line: &str) {
    match level {
        LogLevel::Debug => log::debug!("{line}"),
        LogLevel::Info => log::info!("{line}"),
        LogLevel::Warn => log::warn!("{line}"),
        LogLevel::Error => log::error!("{line}"),
    }
}

fn emit(metrics: &Metrics, effects: &Effects) {
    for metric in &effects.metrics {
        metrics.record(metric);
    }
    for (level, line) in &effects.logs {
        log(*level, line);
    }
    for (key, value) in &effects.audit {
        // Filter state `wasm.mcp_jwt_signer.<key>` (Envoy prefixes `wasm.`), plain text; access logs read it as
        // %FILTER_STATE(wasm.mcp_jwt_signer.<key>:PLAIN)%.
        let path = format!("{AUDIT_NAMESPACE}.{key}");
        let _ = hostcalls::set_property(vec![path.as_str()], Some(crate::host::audit_text(value).as_bytes()));
    }
}

/// An audit value as filter-state text: strings as they are, numbers and booleans in JSON, lists of strings joined
/// with `,` (names never hold one), anything else as JSON.
struct PluginRoot {
    role: Role,
    metrics: Rc<Metrics>,
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
        let root_id = hostcalls::get_property(vec!["plugin_root_id"]).ok().flatten();
        if root_id.as_deref() == Some(GUARD_ROOT_ID.as_bytes()) {
            self.role = Role::Guard;
            log::info!("route guard ready");
            return true;
        }
        // Only the variables the configuration names are read (the signing key's, the introspection credentials').
        let env = |name: &str| std::env::var(name).ok();
        match Plugin::load_with_env(&bytes, &env, &WasmHost) {
            Ok(loaded) => {
                for (level, line) in &loaded.logs {
                    log(*level, line);
                }
                for metric in [
                    Metric::TokensMinted,
                    Metric::TokenCacheHits,
                    Metric::TokenCacheSharedHits,
                    Metric::DiscoveryServed,
                    Metric::JwksServed,
                    Metric::ProtectedResourceServed,
                    Metric::Introspections,
                    Metric::IntrospectionCacheHits,
                    Metric::SignDurationUs(0),
                ] {
                    self.metrics.id(&metric);
                }
                self.metrics
                    .record(&Metric::GeneratedKeyInUse(loaded.plugin.keys.is_ephemeral()));
                self.role = Role::Signer(Rc::new(loaded.plugin));
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
        let request: Box<dyn HttpFilter> = match &self.role {
            Role::Unconfigured => return None,
            Role::Signer(plugin) => Box::new(Request::new(plugin.clone())),
            Role::Guard => Box::new(RouteGuard),
        };
        Some(Box::new(WasmRequest {
            request,
            metrics: self.metrics.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP request: the pure state machine (the signer's, or the guard's) and the metrics it updates.
struct WasmRequest {
    request: Box<dyn HttpFilter>,
    metrics: Rc<Metrics>,
}

fn apply(edit: &HeaderEdit) -> Result<(), Status> {
    match edit {
        HeaderEdit::Remove(name) => hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None),
        HeaderEdit::RemoveNamed(name) => hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None),
        HeaderEdit::Set(name, value) => hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)),
        HeaderEdit::SetNamed(name, value) => hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)),
    }
}

impl WasmRequest {
    /// Carries out a step, and the steps it chains to.
    fn carry_out(&mut self, mut step: Step) -> Action {
        loop {
            emit(&self.metrics, &step.effects);
            if step.edits.iter().map(apply).any(|result| result.is_err()) {
                step = self.request.on_host_failure("cannot edit the request headers");
                continue;
            }
            match step.next {
                Next::Continue => return Action::Continue,
                Next::Pause => return Action::Pause,
                Next::Respond(response) => {
                    let headers: Vec<(&str, &str)> = response.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    if let Err(status) = hostcalls::send_http_response(response.status, headers, Some(&response.body)) {
                        log::error!("cannot send local response: {status:?}");
                    }
                    return Action::Pause;
                }
                Next::Callout(callout) => {
                    let headers: Vec<(&str, &str)> =
                        callout.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let timeout = std::time::Duration::from_millis(callout.timeout_ms);
                    match hostcalls::dispatch_http_call(&callout.cluster, headers, Some(&callout.body), vec![], timeout)
                    {
                        Ok(_) => return Action::Pause,
                        Err(_) => step = self.request.on_callout_response(&WasmHost, None),
                    }
                }
            }
        }
    }
}

impl Context for WasmRequest {
    fn on_http_call_response(&mut self, _token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let headers = hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok());
        let response = status.map(|status| CalloutResponse {
            status,
            body: hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default(),
            headers,
        });
        let step = self.request.on_callout_response(&WasmHost, response);
        // Signed: let the paused request go on. Refused: the local response has been sent.
        if let Action::Continue = self.carry_out(step) {
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl HttpContext for WasmRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let step = self.request.on_request_headers(&WasmHost, end_of_stream);
        self.carry_out(step)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let step = self.request.on_request_body(&WasmHost, body_size, end_of_stream);
        self.carry_out(step)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let step = self.request.on_request_trailers(&WasmHost);
        self.carry_out(step)
    }
}
