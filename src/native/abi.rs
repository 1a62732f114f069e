//! Hand-written `extern "C"` bindings for exactly the part of Envoy's dynamic-module ABI the filter uses.
//!
//! The interface is `source/extensions/dynamic_modules/abi/abi.h` in envoyproxy/envoy, ABI `v0.2.0` (Envoy 1.40).
//! These declarations were written from that interface and checked against the Envoy 1.40.0 binary: every
//! callback below is in its dynamic symbol table (`nm -D --defined-only envoy`), and each was exercised in a real
//! Envoy 1.40 (the native e2e suite). Released ABI functions are frozen upstream (new behaviour comes as `_v2`
//! functions), so a declaration verified on 1.40 stays valid; never add one without checking its signature
//! against a 1.40 header: a wrong signature is silent memory corruption.
//!
//! Conventions:
//! - C enums are passed as `int`; they are `u32` constants here, so an unknown value is never undefined behaviour;
//! - `bool` is C `_Bool` (one byte), Rust's `bool`;
//! - buffers are `{const char* ptr; size_t length;}` passed by value. "Envoy" buffers are owned by Envoy and valid
//!   until the current hook returns (or until a setter is called); "module" buffers are only read during the call.

use std::ffi::c_void;

/// `envoy_dynamic_module_type_envoy_buffer` / `envoy_dynamic_module_type_module_buffer` (one layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    /// First byte (may be NULL when `len` is 0).
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl Buffer {
    /// An empty buffer; as a header value to `set_header`, it removes the header.
    pub const NULL: Buffer = Buffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// A module buffer over `bytes` (valid while `bytes` is).
    pub fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes of an Envoy buffer.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive the returned slice (Envoy buffers: until the hook
    /// returns or a setter is called).
    pub unsafe fn bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header` / `envoy_dynamic_module_type_module_http_header` (one layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpHeader {
    /// Name.
    pub key_ptr: *const u8,
    /// Name length.
    pub key_len: usize,
    /// Value.
    pub value_ptr: *const u8,
    /// Value length.
    pub value_len: usize,
}

impl HttpHeader {
    /// An empty entry (an output slot).
    pub const EMPTY: HttpHeader = HttpHeader {
        key_ptr: std::ptr::null(),
        key_len: 0,
        value_ptr: std::ptr::null(),
        value_len: 0,
    };

    /// A module header over `key` and `value` (valid while they are).
    pub fn of(key: &[u8], value: &[u8]) -> HttpHeader {
        HttpHeader {
            key_ptr: key.as_ptr(),
            key_len: key.len(),
            value_ptr: value.as_ptr(),
            value_len: value.len(),
        }
    }

    /// # Safety
    /// Only inside the hook that produced it.
    pub unsafe fn key<'a>(&self) -> &'a [u8] {
        Buffer {
            ptr: self.key_ptr,
            len: self.key_len,
        }
        .bytes()
    }

    /// # Safety
    /// Only inside the hook that produced it.
    pub unsafe fn value<'a>(&self) -> &'a [u8] {
        Buffer {
            ptr: self.value_ptr,
            len: self.value_len,
        }
        .bytes()
    }
}

/// `envoy_dynamic_module_type_http_filter_config_envoy_ptr`: valid only while `config_new` runs.
pub type ConfigEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_config_module_ptr`: the module's config object.
pub type ConfigModulePtr = *const c_void;
/// `envoy_dynamic_module_type_http_filter_envoy_ptr`: one stream, valid until `on_http_filter_destroy`.
pub type FilterEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_module_ptr`: the module's per-stream object.
pub type FilterModulePtr = *const c_void;

/// The ABI version this module is built against (`ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40).
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

// envoy_dynamic_module_type_http_header_type
/// Request headers.
pub const HEADER_REQUEST: u32 = 0;

// envoy_dynamic_module_type_http_body_type
/// The request body chunk of the current `request_body` call.
pub const BODY_RECEIVED_REQUEST: u32 = 0;
/// The request body Envoy buffered for this filter (earlier `StopIterationAndBuffer`).
pub const BODY_BUFFERED_REQUEST: u32 = 1;

// envoy_dynamic_module_type_on_http_filter_request_headers_status (Envoy's FilterHeadersStatus)
/// Continue.
pub const HEADERS_CONTINUE: u32 = 0;
/// StopIteration: later filters wait, the body still reaches this filter.
pub const HEADERS_STOP_ITERATION: u32 = 1;

// envoy_dynamic_module_type_on_http_filter_request_body_status (Envoy's FilterDataStatus)
/// Continue.
pub const BODY_CONTINUE: u32 = 0;
/// StopIterationAndBuffer: keep the data, call again with more.
pub const BODY_STOP_ITERATION_AND_BUFFER: u32 = 1;
/// StopIterationNoBuffer: stop, keep nothing (after a local reply).
pub const BODY_STOP_ITERATION_NO_BUFFER: u32 = 3;

// envoy_dynamic_module_type_on_http_filter_request_trailers_status
/// Continue.
pub const TRAILERS_CONTINUE: u32 = 0;
/// StopIteration.
pub const TRAILERS_STOP_ITERATION: u32 = 1;

// envoy_dynamic_module_type_on_http_filter_response_*_status: Continue.
/// Continue (response headers, body and trailers).
pub const RESPONSE_CONTINUE: u32 = 0;

// envoy_dynamic_module_type_log_level
/// debug.
pub const LOG_DEBUG: u32 = 1;
/// info.
pub const LOG_INFO: u32 = 2;
/// warning.
pub const LOG_WARN: u32 = 3;
/// error.
pub const LOG_ERROR: u32 = 4;
/// critical.
pub const LOG_CRITICAL: u32 = 5;

// envoy_dynamic_module_type_http_callout_init_result
/// The callout was started.
pub const CALLOUT_INIT_SUCCESS: u32 = 0;
// envoy_dynamic_module_type_http_callout_result
/// A response arrived (its `:status` may still be Envoy's own 503 or 504).
pub const CALLOUT_SUCCESS: u32 = 0;

// envoy_dynamic_module_type_metrics_result
/// Success.
pub const METRICS_SUCCESS: u32 = 0;

// envoy_dynamic_module_type_metadata_source
/// The stream's dynamic metadata.
pub const METADATA_DYNAMIC: u32 = 0;
/// The matched route's metadata.
pub const METADATA_ROUTE: u32 = 1;
/// The target cluster's metadata.
pub const METADATA_CLUSTER: u32 = 2;

/// `envoy_dynamic_module_type_attribute_id` values the filter reads (the enum's order in the 1.40 header).
pub mod attr {
    pub const REQUEST_PATH: u32 = 0;
    pub const REQUEST_URL_PATH: u32 = 1;
    pub const REQUEST_HOST: u32 = 2;
    pub const REQUEST_SCHEME: u32 = 3;
    pub const REQUEST_METHOD: u32 = 4;
    pub const REQUEST_REFERER: u32 = 6;
    pub const REQUEST_USER_AGENT: u32 = 7;
    pub const REQUEST_ID: u32 = 9;
    pub const REQUEST_PROTOCOL: u32 = 10;
    pub const REQUEST_QUERY: u32 = 11;
    pub const SOURCE_ADDRESS: u32 = 24;
    pub const SOURCE_PORT: u32 = 25;
    pub const DESTINATION_ADDRESS: u32 = 26;
    pub const DESTINATION_PORT: u32 = 27;
    pub const CONNECTION_ID: u32 = 28;
    pub const CONNECTION_MTLS: u32 = 29;
    pub const CONNECTION_REQUESTED_SERVER_NAME: u32 = 30;
    pub const CONNECTION_TLS_VERSION: u32 = 31;
    pub const CONNECTION_SUBJECT_LOCAL_CERTIFICATE: u32 = 32;
    pub const CONNECTION_SUBJECT_PEER_CERTIFICATE: u32 = 33;
    pub const CONNECTION_DNS_SAN_LOCAL_CERTIFICATE: u32 = 34;
    pub const CONNECTION_DNS_SAN_PEER_CERTIFICATE: u32 = 35;
    pub const CONNECTION_URI_SAN_LOCAL_CERTIFICATE: u32 = 36;
    pub const CONNECTION_URI_SAN_PEER_CERTIFICATE: u32 = 37;
    pub const CONNECTION_SHA256_PEER_CERTIFICATE_DIGEST: u32 = 38;
    pub const XDS_ROUTE_NAME: u32 = 61;
    pub const XDS_VIRTUAL_HOST_NAME: u32 = 63;
}

extern "C" {
    // -- logging (unit tests log in memory instead) --
    #[cfg_attr(test, allow(dead_code))]
    pub fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
    #[cfg_attr(test, allow(dead_code))]
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    // -- request headers (header_type = HEADER_*) --
    pub fn envoy_dynamic_module_callback_http_get_headers_size(f: FilterEnvoyPtr, header_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        f: FilterEnvoyPtr,
        header_type: u32,
        out: *mut HttpHeader,
    ) -> bool;
    /// Replaces every copy of `key` with `value`; a NULL `value.ptr` removes every copy.
    pub fn envoy_dynamic_module_callback_http_set_header(
        f: FilterEnvoyPtr,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;

    // -- request body (body_type = BODY_*) --
    pub fn envoy_dynamic_module_callback_http_get_body_size(f: FilterEnvoyPtr, body_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(f: FilterEnvoyPtr, body_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        f: FilterEnvoyPtr,
        body_type: u32,
        out: *mut Buffer,
    ) -> bool;
    /// Whether the "received" chunk of this `request_body` call is the buffered body itself.
    pub fn envoy_dynamic_module_callback_http_received_buffered_request_body(f: FilterEnvoyPtr) -> bool;

    // -- flow control, local replies --
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(f: FilterEnvoyPtr);
    pub fn envoy_dynamic_module_callback_http_send_response(
        f: FilterEnvoyPtr,
        status: u32,
        headers: *const HttpHeader,
        headers_len: usize,
        body: Buffer,
        details: Buffer,
    );

    // -- metadata (source = METADATA_*) --
    pub fn envoy_dynamic_module_callback_http_get_metadata_string(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
        key: Buffer,
        out: *mut Buffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_number(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
        key: Buffer,
        out: *mut f64,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_bool(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
        key: Buffer,
        out: *mut bool,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_keys_count(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_metadata_keys(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
        out: *mut Buffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_list_size(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
        key: Buffer,
        out: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_list_string(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
        key: Buffer,
        index: usize,
        out: *mut Buffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_list_number(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
        key: Buffer,
        index: usize,
        out: *mut f64,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_metadata_list_bool(
        f: FilterEnvoyPtr,
        source: u32,
        ns: Buffer,
        key: Buffer,
        index: usize,
        out: *mut bool,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        f: FilterEnvoyPtr,
        ns: Buffer,
        key: Buffer,
        value: Buffer,
    );
    // -- filter state (string accessors) --
    pub fn envoy_dynamic_module_callback_http_get_filter_state_bytes(
        f: FilterEnvoyPtr,
        key: Buffer,
        out: *mut Buffer,
    ) -> bool;

    // -- attributes (id = envoy_dynamic_module_type_attribute_id) --
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        f: FilterEnvoyPtr,
        id: u32,
        out: *mut Buffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        f: FilterEnvoyPtr,
        id: u32,
        out: *mut u64,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_bool(
        f: FilterEnvoyPtr,
        id: u32,
        out: *mut bool,
    ) -> bool;

    // -- metrics: defined only while on_http_filter_config_new runs --
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        c: ConfigEnvoyPtr,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        c: ConfigEnvoyPtr,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        c: ConfigEnvoyPtr,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> u32;
    /// Sets a gauge through the config (outside any stream).
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        c: ConfigEnvoyPtr,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        f: FilterEnvoyPtr,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        f: FilterEnvoyPtr,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        f: FilterEnvoyPtr,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;

    // -- HTTP callout; the answer arrives in envoy_dynamic_module_on_http_filter_http_callout_done --
    pub fn envoy_dynamic_module_callback_http_filter_http_callout(
        f: FilterEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: Buffer,
        headers: *const HttpHeader,
        headers_len: usize,
        body: Buffer,
        timeout_ms: u64,
    ) -> u32;
}
