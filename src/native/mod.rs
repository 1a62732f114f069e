//! The native build: the same filter as an Envoy dynamic module (`envoy.filters.http.dynamic_modules`, Envoy 1.40,
//! ABI `v0.2.0`), compiled only with the `native` cargo feature (`make build-native` ->
//! `target/release/libmcp_jwt_signer.so`).
//!
//! This is the second adapter beside `wasm`: it implements [`crate::host::Host`] with the dynamic-modules ABI
//! ([`abi`], hand-written bindings for exactly what the filter uses) and carries out the [`crate::host::Step`]s of
//! the pure request state machine, one call into the pure side per hook, no policy here. Differences from the
//! proxy-wasm adapter, all of them mechanics:
//! - **Configuration**: the same plugin JSON, as the filter's `filter_config` (a `StringValue`), `filter_name:
//!   mcp_jwt_signer`. A bad configuration is refused at load: `config_new` returns NULL after logging
//!   `mcp_jwt_signer: rejecting the filter configuration: invalid plugin configuration: field ...`, and Envoy
//!   refuses the filter config (a static bootstrap exits; an xDS update is NACKed).
//! - **Plugins per worker**: a filter config is shared by every worker thread; each worker loads its own
//!   [`crate::plugin::Plugin`] (its own token cache), as each wasm worker VM does. Shared data (the generated key)
//!   is one process-wide map with the same CAS semantics ([`shared`]). `MCP_JWT_SIGNING_KEY` is read from the
//!   process environment.
//! - **Metrics** can only be defined while a config is created, so every counter (`refused.<reason>` for each
//!   [`crate::refusal::REASONS`]) and the histogram are defined there. Envoy shows them under the module's
//!   `metrics_namespace` (default `dynamicmodulescustom`): `dynamicmodulescustom.mcp_jwt_signer.tokens_minted`.
//! - **Audit fields** are dynamic metadata, namespace `mcp_jwt_signer`: `%DYNAMIC_METADATA(mcp_jwt_signer:<key>)%`.
//! - **Body**: `StopIteration` at the headers (no `allow_on_headers_stop_iteration` flag exists or is needed),
//!   `StopIterationAndBuffer` until the end of the stream; the body read is Envoy's buffer plus the current chunk.
//! - **Routes**: a header write does not clear Envoy's route cache natively (it does under wasm), so the route read
//!   before the edits is the one the router uses; the pure side's route check holds either way.
//! - **Callouts** (`Next::Callout`): `http_filter_http_callout`; a response with a `:status` is a response (Envoy's
//!   own 503 for a dead cluster and 504 for a timeout included); a reset or a callout that cannot start is
//!   `on_callout_response(None)`.
//! - **`jwt:` sources and `jwt_failure_in_metadata`**: the ABI cannot read jwt_authn's Structs; Envoy's
//!   `set_filter_state` filter copies them as JSON into filter state, which no client can write (see [`jwt`]).
//! - **The route guard** (`filter_name: mcp_jwt_signer_route_guard`, an upstream filter of the router) runs
//!   `crate::request::RouteGuard` through the same adapter.
//! - **Panics**: a panic unwinding into Envoy aborts the whole process. Every entry point runs under
//!   `catch_unwind` ([`barrier`]) and fails closed (a JSON-RPC 500 for a stream, NULL for a config); the module
//!   must be built with `panic = "unwind"` (`--profile release-native`), which is checked at compile time.

mod abi;
mod attributes;
mod config;
mod host;
mod jwt;
mod shared;
mod stream;
#[cfg(feature = "native-test-hooks")]
mod test_hooks;

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use abi::{Buffer, ConfigEnvoyPtr, ConfigModulePtr, FilterEnvoyPtr, FilterModulePtr, HttpHeader};
use config::{FilterConfig, SignerConfig};
use stream::{callout_response, Hook, Outcome, Stream};

#[cfg(all(panic = "abort", not(test)))]
compile_error!(
    "the native module must unwind panics to catch them at its entry points: build it with `cargo build \
     --profile release-native --features native` (`make build-native`), never with panic = \"abort\""
);

/// The signer's `filter_name`.
const SIGNER_FILTER_NAME: &str = "mcp_jwt_signer";
/// The route guard's `filter_name` (the same name as its wasm root id, `crate::request::GUARD_ROOT_ID`).
const ROUTE_GUARD_FILTER_NAME: &str = crate::request::GUARD_ROOT_ID;

fn no_configuration(json: &[u8], filter_name: &str) -> Result<(), String> {
    if json.iter().all(u8::is_ascii_whitespace) || json.trim_ascii() == b"{}" {
        Ok(())
    } else {
        Err(format!("the {filter_name} filter takes no configuration"))
    }
}

/// Logs through Envoy (component `dynamic_modules`).
#[cfg(not(test))]
pub(crate) fn log(level: u32, message: &str) {
    // SAFETY: plain calls; the message is read during the call.
    unsafe {
        if abi::envoy_dynamic_module_callback_log_enabled(level) {
            abi::envoy_dynamic_module_callback_log(level, Buffer::of(message.as_bytes()));
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Unit tests run outside Envoy: log lines are kept here.
    static TEST_LOG: std::cell::RefCell<Vec<(u32, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Unit tests: keeps the line (see `TEST_LOG`).
#[cfg(test)]
pub(crate) fn log(level: u32, message: &str) {
    TEST_LOG.with(|lines| lines.borrow_mut().push((level, message.to_string())));
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs `body`; a panic inside it never unwinds into Envoy: it is logged and `on_panic` decides the answer.
pub(crate) fn barrier<R>(hook: &str, body: impl FnOnce() -> R, on_panic: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(&*payload);
            let _ = catch_unwind(AssertUnwindSafe(|| {
                log(
                    abi::LOG_CRITICAL,
                    &format!("mcp_jwt_signer: panic caught in {hook} (failing closed): {message}"),
                )
            }));
            match catch_unwind(AssertUnwindSafe(on_panic)) {
                Ok(result) => result,
                // `on_panic` itself must not unwind either; it only builds a value, so this is not expected.
                Err(_) => std::process::abort(),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// Program and filter configs (main thread)
// ------------------------------------------------------------------------------------------------------------

/// Called once when Envoy loads the module: the ABI version it was built against.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    barrier(
        "program_init",
        || {
            // Panic messages go to Envoy's log (the barrier also logs them), not to stderr.
            std::panic::set_hook(Box::new(|info| {
                log(abi::LOG_ERROR, &format!("mcp_jwt_signer: {info}"));
            }));
            abi::ABI_VERSION.as_ptr()
        },
        std::ptr::null,
    )
}

fn new_config(c: ConfigEnvoyPtr, name: &[u8], json: &[u8]) -> Result<FilterConfig, String> {
    #[cfg(feature = "native-test-hooks")]
    test_hooks::config_new();
    match name {
        b"mcp_jwt_signer" => {
            let (config, loaded) = SignerConfig::create(c, json)?;
            for (level, line) in &loaded.logs {
                let level = match level {
                    crate::host::LogLevel::Debug => abi::LOG_DEBUG,
                    crate::host::LogLevel::Info => abi::LOG_INFO,
                    crate::host::LogLevel::Warn => abi::LOG_WARN,
                    crate::host::LogLevel::Error => abi::LOG_ERROR,
                };
                log(level, &format!("mcp_jwt_signer: {line}"));
            }
            Ok(FilterConfig::Signer(config))
        }
        b"mcp_jwt_signer_route_guard" => {
            no_configuration(json, ROUTE_GUARD_FILTER_NAME)?;
            log(abi::LOG_INFO, "mcp_jwt_signer: route guard ready");
            Ok(FilterConfig::RouteGuard(config::Metrics::define_all(c)?))
        }
        other => Err(format!(
            "unknown filter_name {:?} (this module has {SIGNER_FILTER_NAME} and {ROUTE_GUARD_FILTER_NAME})",
            String::from_utf8_lossy(other),
        )),
    }
}

/// A filter config: `filter_name` and `filter_config` (the plugin JSON). NULL refuses it.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: Buffer,
    config: Buffer,
) -> ConfigModulePtr {
    barrier(
        "http_filter_config_new",
        || {
            // SAFETY: Envoy's buffers are valid while this hook runs.
            let (name, json) = unsafe { (name.bytes(), config.bytes()) };
            match new_config(config_envoy, name, json) {
                Ok(config) => Box::into_raw(Box::new(config)) as ConfigModulePtr,
                Err(message) => {
                    // The message names the field and never carries key material (the pure side's errors).
                    log(
                        abi::LOG_ERROR,
                        &format!("mcp_jwt_signer: rejecting the filter configuration: {message}"),
                    );
                    std::ptr::null()
                }
            }
        },
        std::ptr::null,
    )
}

/// The filter config is gone (its streams are all destroyed).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ConfigModulePtr) {
    barrier(
        "http_filter_config_destroy",
        || {
            if !config.is_null() {
                // SAFETY: `config` came from `Box::into_raw` in config_new and is destroyed once.
                drop(unsafe { Box::from_raw(config as *mut FilterConfig) });
            }
        },
        || (),
    )
}

// ------------------------------------------------------------------------------------------------------------
// Streams (worker threads)
// ------------------------------------------------------------------------------------------------------------

/// The module's object for one stream.
enum Filter {
    /// The signer or the route guard.
    Stream(Box<Stream>),
    /// The stream could not be set up (answered 500 at its first hook).
    Failed {
        /// The 500 was sent.
        replied: bool,
    },
}

/// The stream's filter object, or None for a NULL pointer (Envoy calls the hooks even when `filter_new` failed).
///
/// # Safety
/// `module` must be NULL or a pointer from `envoy_dynamic_module_on_http_filter_new` not yet destroyed, used by
/// the stream's own worker thread only (Envoy calls every hook of a stream on its worker).
unsafe fn filter<'a>(module: FilterModulePtr) -> Option<&'a mut Filter> {
    (module as *mut Filter).as_mut()
}

/// A stream whose filter object is missing or failed: answer 500 once.
fn fail_stream(f: FilterEnvoyPtr, filter: Option<&mut Filter>) {
    match filter {
        Some(Filter::Stream(stream)) => stream.fail(f, "the filter failed"),
        Some(Filter::Failed { replied }) => {
            if !*replied {
                *replied = true;
                stream::send_response(
                    f,
                    &stream::internal_error("the filter failed"),
                    "mcp_jwt_signer_internal_error",
                );
            }
        }
        None => stream::send_response(
            f,
            &stream::internal_error("the filter failed"),
            "mcp_jwt_signer_internal_error",
        ),
    }
}

/// A new stream of `config`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    _f: FilterEnvoyPtr,
) -> FilterModulePtr {
    barrier(
        "http_filter_new",
        || {
            #[cfg(feature = "native-test-hooks")]
            test_hooks::filter_new();
            // SAFETY: Envoy keeps the config alive for the life of its streams.
            let filter = match unsafe { (config as *const FilterConfig).as_ref() } {
                Some(FilterConfig::Signer(config)) => Filter::Stream(Box::new(Stream::signer(config))),
                Some(FilterConfig::RouteGuard(metrics)) => Filter::Stream(Box::new(Stream::route_guard(metrics))),
                None => Filter::Failed { replied: false },
            };
            Box::into_raw(Box::new(filter)) as FilterModulePtr
        },
        || Box::into_raw(Box::new(Filter::Failed { replied: false })) as FilterModulePtr,
    )
}

/// The stream is gone.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: FilterModulePtr) {
    barrier(
        "http_filter_destroy",
        || {
            if !module.is_null() {
                // SAFETY: from `Box::into_raw` in filter_new; destroyed once, on the stream's worker.
                drop(unsafe { Box::from_raw(module as *mut Filter) });
            }
        },
        || (),
    )
}

/// Runs a stream hook (of the signer or the route guard) under the barrier; on a panic the stream answers 500
/// and stops for good.
fn stream_hook<R: Copy>(
    hook: &'static str,
    f: FilterEnvoyPtr,
    module: FilterModulePtr,
    stop: R,
    run: impl FnOnce(&mut Stream) -> R,
) -> R {
    barrier(
        hook,
        || {
            // SAFETY: see `filter`.
            match unsafe { filter(module) } {
                Some(Filter::Stream(stream)) => {
                    #[cfg(feature = "native-test-hooks")]
                    test_hooks::stream_hook(stream, f, hook);
                    run(stream)
                }
                failed => {
                    fail_stream(f, failed);
                    stop
                }
            }
        },
        || {
            // SAFETY: see `filter`; the object is still alive (the panic unwound out of a hook, not a destroy).
            fail_stream(f, unsafe { filter(module) });
            stop
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    f: FilterEnvoyPtr,
    module: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    stream_hook(
        "request_headers",
        f,
        module,
        abi::HEADERS_STOP_ITERATION,
        |stream| match stream.run(f, Hook::Headers, |r, host| r.on_request_headers(host, end_of_stream)) {
            Outcome::Continue => abi::HEADERS_CONTINUE,
            Outcome::Pause | Outcome::Replied => abi::HEADERS_STOP_ITERATION,
        },
    )
}

/// The size of the body so far: Envoy's buffer plus this call's chunk (unless it is the buffer).
fn body_size(f: FilterEnvoyPtr) -> usize {
    host::request_body_size(f)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    f: FilterEnvoyPtr,
    module: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    stream_hook(
        "request_body",
        f,
        module,
        abi::BODY_STOP_ITERATION_NO_BUFFER,
        |stream| {
            if stream.finished {
                return abi::BODY_STOP_ITERATION_NO_BUFFER;
            }
            let size = body_size(f);
            match stream.run(f, Hook::Body, |r, host| r.on_request_body(host, size, end_of_stream)) {
                Outcome::Continue => abi::BODY_CONTINUE,
                Outcome::Pause => abi::BODY_STOP_ITERATION_AND_BUFFER,
                Outcome::Replied => abi::BODY_STOP_ITERATION_NO_BUFFER,
            }
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    f: FilterEnvoyPtr,
    module: FilterModulePtr,
) -> u32 {
    stream_hook(
        "request_trailers",
        f,
        module,
        abi::TRAILERS_STOP_ITERATION,
        |stream| match stream.run(f, Hook::Trailers, |r, host| r.on_request_trailers(host)) {
            Outcome::Continue => abi::TRAILERS_CONTINUE,
            Outcome::Pause | Outcome::Replied => abi::TRAILERS_STOP_ITERATION,
        },
    )
}

/// The answer to a callout (on the stream's worker thread).
///
/// # Safety
/// Envoy's header and body arrays are valid (or NULL) for this call.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    f: FilterEnvoyPtr,
    module: FilterModulePtr,
    callout_id: u64,
    result: u32,
    headers: *const HttpHeader,
    headers_len: usize,
    body_chunks: *const Buffer,
    body_chunks_len: usize,
) {
    stream_hook("http_callout_done", f, module, (), |stream| {
        let headers: Vec<(String, Vec<u8>)> = if headers.is_null() {
            Vec::new()
        } else {
            // SAFETY: Envoy passes `headers_len` entries valid for this call; they are copied.
            unsafe { std::slice::from_raw_parts(headers, headers_len) }
                .iter()
                .map(|h| unsafe { (String::from_utf8_lossy(h.key()).into_owned(), h.value().to_vec()) })
                .collect()
        };
        let mut body = Vec::new();
        if !body_chunks.is_null() {
            // SAFETY: as for the headers.
            for chunk in unsafe { std::slice::from_raw_parts(body_chunks, body_chunks_len) } {
                body.extend_from_slice(unsafe { chunk.bytes() });
            }
        }
        let response = callout_response(result, headers, body);
        if stream.callout_done(f, callout_id, response) == Outcome::Continue {
            // Outside any decoder hook: resume the request Envoy holds for us.
            // SAFETY: the stream is live.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(f) };
        }
    })
}

// ------------------------------------------------------------------------------------------------------------
// Hooks Envoy requires to exist; the filter does nothing in them (still behind the barrier).
// ------------------------------------------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    barrier("response_headers", || abi::RESPONSE_CONTINUE, || abi::RESPONSE_CONTINUE)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _end_of_stream: bool,
) -> u32 {
    barrier("response_body", || abi::RESPONSE_CONTINUE, || abi::RESPONSE_CONTINUE)
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
) -> u32 {
    barrier(
        "response_trailers",
        || abi::RESPONSE_CONTINUE,
        || abi::RESPONSE_CONTINUE,
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_f: FilterEnvoyPtr, _m: FilterModulePtr) {
    barrier("stream_complete", || (), || ())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_f: FilterEnvoyPtr, _m: FilterModulePtr, _event: u64) {
    barrier("scheduled", || (), || ())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream_id: u64,
    _headers: *const HttpHeader,
    _headers_len: usize,
    _end_of_stream: bool,
) {
    barrier("http_stream_headers", || (), || ())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream_id: u64,
    _data: *const Buffer,
    _data_len: usize,
    _end_of_stream: bool,
) {
    barrier("http_stream_data", || (), || ())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream_id: u64,
    _trailers: *const HttpHeader,
    _trailers_len: usize,
) {
    barrier("http_stream_trailers", || (), || ())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream_id: u64,
) {
    barrier("http_stream_complete", || (), || ())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
    barrier("http_stream_reset", || (), || ())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
) {
    barrier("downstream_above_write_buffer_high_watermark", || (), || ())
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _f: FilterEnvoyPtr,
    _m: FilterModulePtr,
) {
    barrier("downstream_below_write_buffer_low_watermark", || (), || ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::panic)]
    fn the_barrier_turns_a_panic_into_the_fail_closed_answer() {
        // The body's panic never escapes the barrier; the answer is `on_panic`'s, and the panic is logged.
        let answer = barrier(
            "request_headers",
            || -> u32 { panic!("deliberate {}", 42) },
            || abi::HEADERS_STOP_ITERATION,
        );
        assert_eq!(answer, abi::HEADERS_STOP_ITERATION);
        let logged = TEST_LOG.with(|lines| lines.borrow().clone());
        assert!(
            logged.iter().any(|(level, line)| *level == abi::LOG_CRITICAL
                && line.contains("panic caught in request_headers")
                && line.contains("deliberate 42")),
            "{logged:?}"
        );
        // Without a panic the body's answer comes through, and a `&str` payload is read too.
        assert_eq!(barrier("x", || 7, || 0), 7);
        let answer = barrier(
            "config_new",
            || -> *const u8 { panic!("static message") },
            std::ptr::null,
        );
        assert!(answer.is_null());
    }

    #[test]
    fn callout_answers_map_faithfully() {
        let status = |s: &str| vec![(":status".to_string(), s.as_bytes().to_vec())];
        // Envoy's own 503 (no healthy upstream) and 504 (timeout) are responses.
        assert_eq!(
            callout_response(
                abi::CALLOUT_SUCCESS,
                status("504"),
                b"upstream request timeout".to_vec()
            )
            .unwrap()
            .status,
            504
        );
        assert_eq!(
            callout_response(abi::CALLOUT_SUCCESS, status("503"), Vec::new())
                .unwrap()
                .status,
            503
        );
        let ok = callout_response(abi::CALLOUT_SUCCESS, status("200"), b"{}".to_vec()).unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"{}"[..]));
        // A reset, a response over the buffer limit, or no readable status: the callout failed.
        assert_eq!(callout_response(1, status("200"), Vec::new()), None);
        assert_eq!(callout_response(2, status("200"), Vec::new()), None);
        assert_eq!(callout_response(abi::CALLOUT_SUCCESS, Vec::new(), Vec::new()), None);
        assert_eq!(callout_response(abi::CALLOUT_SUCCESS, status("abc"), Vec::new()), None);
        assert_eq!(callout_response(abi::CALLOUT_SUCCESS, status("7"), Vec::new()), None);
    }
}
