//! One HTTP stream of the signer or of the route guard: the pure state machine ([`Request`], [`RouteGuard`]) and the carrying out of its
//! [`Step`]s with ABI calls. One call into the pure side per hook; no policy here.

use serde_json::Value;

use crate::host::{
    Callout, CalloutResponse, Effects, HeaderEdit, HttpFilter, LocalResponse, LogLevel, Next, Step, AUDIT_NAMESPACE,
};
use crate::request::{Request, RouteGuard};

use super::abi::{self, Buffer, FilterEnvoyPtr, HttpHeader};
use super::config::{Metrics, SignerConfig};
use super::host::{set_header, StreamHost, StreamState};
use super::log;

/// The most steps one hook carries out (a step chains to the next through `AfterEdits` or a failed callout).
const MAX_CHAINED_STEPS: usize = 16;

/// What a hook's steps ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request goes on.
    Continue,
    /// The request waits (for more body, or for a callout).
    Pause,
    /// The filter answered; the request never goes on.
    Replied,
}

/// The state of one stream of the signer or of the route guard.
pub struct Stream {
    /// The config's metrics (Envoy keeps a config alive while any of its streams exists).
    metrics: *const Metrics,
    /// The pure state machine; `None`: this worker could not load the plugin (the stream is answered 500).
    request: Option<Box<dyn HttpFilter>>,
    /// What the host remembers between hooks.
    state: StreamState,
    /// A local reply was sent (or a panic was caught): every later hook stops.
    pub finished: bool,
    /// The callout in flight.
    callout: Option<u64>,
    /// Test builds only: the hook this stream panics in (`super::test_hooks`).
    #[cfg(feature = "native-test-hooks")]
    pub test_panic: Option<String>,
}

/// Which hook is running (what the body getters may read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Request headers.
    Headers,
    /// Request body.
    Body,
    /// Request trailers.
    Trailers,
    /// A callout's answer.
    Callout,
}

/// Writes the effects: metrics, log lines, audit fields (dynamic metadata, namespace `mcp_jwt_signer`).
fn emit(metrics: &Metrics, f: FilterEnvoyPtr, effects: &Effects) {
    for metric in &effects.metrics {
        metrics.record(f, metric);
    }
    for (level, line) in &effects.logs {
        let level = match level {
            LogLevel::Debug => abi::LOG_DEBUG,
            LogLevel::Info => abi::LOG_INFO,
            LogLevel::Warn => abi::LOG_WARN,
            LogLevel::Error => abi::LOG_ERROR,
        };
        log(level, &format!("mcp_jwt_signer: {line}"));
    }
    for (key, value) in &effects.audit {
        set_audit(f, key, value);
    }
}

/// One audit field as dynamic metadata: `%DYNAMIC_METADATA(mcp_jwt_signer:<key>)%` in an access log.
pub(crate) fn set_audit(f: FilterEnvoyPtr, key: &str, value: &Value) {
    // The same text as the wasm build's filter state, so an access log reads alike with either build.
    let text = crate::host::audit_text(value);
    let (ns, k) = (Buffer::of(AUDIT_NAMESPACE.as_bytes()), Buffer::of(key.as_bytes()));
    // SAFETY: the stream is live; buffers are read during the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_string(f, ns, k, Buffer::of(text.as_bytes()))
    }
}

fn apply(f: FilterEnvoyPtr, edit: &HeaderEdit) -> bool {
    match edit {
        HeaderEdit::Remove(name) => set_header(f, name, None),
        HeaderEdit::RemoveNamed(name) => set_header(f, name, None),
        HeaderEdit::Set(name, value) => set_header(f, name, Some(value.as_bytes())),
        HeaderEdit::SetNamed(name, value) => set_header(f, name, Some(value.as_bytes())),
    }
}

/// Sends a local reply (`details` shows as `%RESPONSE_CODE_DETAILS%`).
pub fn send_response(f: FilterEnvoyPtr, response: &LocalResponse, details: &str) {
    let headers: Vec<HttpHeader> = response
        .headers
        .iter()
        .map(|(k, v)| HttpHeader::of(k.as_bytes(), v.as_bytes()))
        .collect();
    // SAFETY: the stream is live; headers, body and details are read during the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_send_response(
            f,
            response.status,
            headers.as_ptr(),
            headers.len(),
            Buffer::of(&response.body),
            Buffer::of(details.as_bytes()),
        )
    }
}

/// The reply when the filter itself fails (no plugin, a caught panic): a JSON-RPC internal error, 500.
pub fn internal_error(what: &str) -> LocalResponse {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": -32603, "message": format!("internal error: {what}")},
    });
    LocalResponse {
        status: 500,
        headers: vec![("content-type", "application/json".to_string())],
        body: body.to_string().into_bytes(),
    }
}

/// Starts a callout: the ABI needs `host` (the callout's `:authority`).
fn start_callout(f: FilterEnvoyPtr, callout: &Callout) -> Result<u64, u32> {
    let mut names_values: Vec<(&str, &str)> = callout.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if !names_values.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        if let Some((_, authority)) = names_values.iter().find(|(k, _)| *k == ":authority") {
            names_values.push(("host", authority));
        }
    }
    let headers: Vec<HttpHeader> = names_values
        .iter()
        .map(|(k, v)| HttpHeader::of(k.as_bytes(), v.as_bytes()))
        .collect();
    let mut id = 0u64;
    // SAFETY: the stream is live; everything is read during the call.
    let rc = unsafe {
        abi::envoy_dynamic_module_callback_http_filter_http_callout(
            f,
            &mut id,
            Buffer::of(callout.cluster.as_bytes()),
            headers.as_ptr(),
            headers.len(),
            Buffer::of(&callout.body),
            callout.timeout_ms,
        )
    };
    if rc == abi::CALLOUT_INIT_SUCCESS {
        Ok(id)
    } else {
        Err(rc)
    }
}

/// A callout's answer as the pure side sees it: any response with a `:status` is a response (Envoy answers a
/// timeout with its own 504 and a dead cluster with 503: the pure side decides what they mean); a reset, a
/// response over the buffer limit, or one without a readable status is a failed callout (`None`).
pub fn callout_response(result: u32, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>) -> Option<CalloutResponse> {
    if result != abi::CALLOUT_SUCCESS {
        return None;
    }
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| (100..=599).contains(s))?;
    Some(CalloutResponse { status, headers, body })
}

impl Stream {
    /// A signer stream of `config` on this worker (its plugin is loaded on the worker's first stream).
    pub fn signer(config: &SignerConfig) -> Stream {
        let request: Option<Box<dyn HttpFilter>> = match config.plugin() {
            Ok(plugin) => Some(Box::new(Request::new(plugin))),
            Err(message) => {
                log(
                    abi::LOG_ERROR,
                    &format!("mcp_jwt_signer: cannot load the plugin on this worker: {message}"),
                );
                None
            }
        };
        Stream::new(&config.metrics, request)
    }

    /// A route guard stream (an upstream filter of the router: the route is final there).
    pub fn route_guard(metrics: &Metrics) -> Stream {
        Stream::new(metrics, Some(Box::new(RouteGuard)))
    }

    fn new(metrics: &Metrics, request: Option<Box<dyn HttpFilter>>) -> Stream {
        Stream {
            metrics,
            request,
            state: StreamState::default(),
            finished: false,
            callout: None,
            #[cfg(feature = "native-test-hooks")]
            test_panic: None,
        }
    }

    /// Answers 500 (once) and stops the stream.
    pub fn fail(&mut self, f: FilterEnvoyPtr, what: &str) {
        if !self.finished {
            self.finished = true;
            send_response(f, &internal_error(what), "mcp_jwt_signer_internal_error");
        }
    }

    /// Runs one hook: one call into the pure side, then its steps.
    pub fn run(
        &mut self,
        f: FilterEnvoyPtr,
        hook: Hook,
        call: impl FnOnce(&mut dyn HttpFilter, &StreamHost<'_>) -> Step,
    ) -> Outcome {
        if self.finished {
            return Outcome::Replied;
        }
        // SAFETY: Envoy's filter holds a reference to its config, so the config (and the metrics and name inside
        // it) outlives every stream of it. The references are not tied to `self`, so that `self.request` can be
        // borrowed mutably.
        let metrics: &Metrics = unsafe { &*self.metrics };
        let Some(request) = self.request.as_deref_mut() else {
            self.fail(f, "the filter could not load its configuration on this worker");
            return Outcome::Replied;
        };
        let host = StreamHost {
            f,
            in_body_hook: hook == Hook::Body,
            state: &self.state,
        };
        let mut step = call(request, &host);
        for _ in 0..MAX_CHAINED_STEPS {
            emit(metrics, f, &step.effects);
            if !step.edits.iter().all(|edit| apply(f, edit)) {
                step = request.on_host_failure("cannot edit the request headers");
                continue;
            }
            match step.next {
                Next::Continue => return Outcome::Continue,
                Next::Pause => return Outcome::Pause,
                Next::Respond(response) => {
                    self.finished = true;
                    send_response(f, &response, "mcp_jwt_signer");
                    return Outcome::Replied;
                }
                Next::Callout(callout) => match start_callout(f, &callout) {
                    Ok(id) => {
                        self.callout = Some(id);
                        return Outcome::Pause;
                    }
                    Err(rc) => {
                        log(
                            abi::LOG_WARN,
                            &format!(
                                "mcp_jwt_signer: callout to cluster {:?} not started (result {rc})",
                                callout.cluster
                            ),
                        );
                        step = request.on_callout_response(&host, None);
                    }
                },
            }
        }
        self.fail(f, "too many chained steps");
        Outcome::Replied
    }

    /// The callout `id` answered.
    pub fn callout_done(&mut self, f: FilterEnvoyPtr, id: u64, response: Option<CalloutResponse>) -> Outcome {
        if self.callout != Some(id) {
            return if self.finished {
                Outcome::Replied
            } else {
                Outcome::Pause
            };
        }
        self.callout = None;
        self.run(f, Hook::Callout, |request, host| {
            request.on_callout_response(host, response)
        })
    }
}
