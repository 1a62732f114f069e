//! [`Host`] for the dynamic-modules ABI: every query is one or a few ABI calls on the current stream.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::config::JWT_AUTHN_NAMESPACE;
use crate::envoy_value;
use crate::host::{Headers, Host, SharedDataError, Unavailable};

use super::abi::{self, Buffer, FilterEnvoyPtr, HttpHeader};
use super::attributes::{resolve, Resolved};
use super::jwt::{self, Unreadable};
use super::shared;

fn now_micros() -> Option<u64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(now.as_micros()).ok()
}

/// The host outside any stream (loading a plugin): shared data and time only.
pub struct ProcessHost;

impl Host for ProcessHost {
    fn request_headers(&self) -> Headers {
        Headers::default()
    }
    fn request_body(&self, _len: usize) -> Option<Vec<u8>> {
        None
    }
    fn attribute(&self, _path: &[&str]) -> Result<Option<Value>, Unavailable> {
        Ok(None)
    }
    fn now_micros(&self) -> Option<u64> {
        now_micros()
    }
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        shared::get(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        shared::set(key, value, cas)
    }
}

/// A jwt_authn record as read (see `super::jwt`).
type Record = Result<Option<Value>, Unreadable>;

/// What a stream's host remembers between hooks.
#[derive(Default)]
pub struct StreamState {
    /// jwt_authn's records (by metadata name), decoded once a source asked for them.
    pub jwt_authn: RefCell<Vec<(String, Record)>>,
}

/// The host of one stream, during one hook.
pub struct StreamHost<'a> {
    /// The stream.
    pub f: FilterEnvoyPtr,
    /// Inside `request_body`: the chunk of this call is not yet part of the buffered body.
    pub in_body_hook: bool,
    /// The stream's remembered state.
    pub state: &'a StreamState,
}

/// Every header of `header_type`, in order, byte-exact.
pub fn headers(f: FilterEnvoyPtr, header_type: u32) -> Vec<(String, Vec<u8>)> {
    // SAFETY: `f` is the live stream of the current hook; Envoy fills `n` entries whose buffers stay valid until
    // the hook returns, and they are copied out before it does.
    unsafe {
        let n = abi::envoy_dynamic_module_callback_http_get_headers_size(f, header_type);
        if n == 0 {
            return Vec::new();
        }
        let mut raw = vec![HttpHeader::EMPTY; n];
        if !abi::envoy_dynamic_module_callback_http_get_headers(f, header_type, raw.as_mut_ptr()) {
            return Vec::new();
        }
        raw.iter()
            .map(|h| (String::from_utf8_lossy(h.key()).into_owned(), h.value().to_vec()))
            .collect()
    }
}

/// Replaces every copy of a request header (`None`: removes every copy).
pub fn set_header(f: FilterEnvoyPtr, name: &str, value: Option<&[u8]>) -> bool {
    let value = value.map_or(Buffer::NULL, Buffer::of);
    // SAFETY: the stream is live; the buffers are read during the call only.
    unsafe {
        abi::envoy_dynamic_module_callback_http_set_header(f, abi::HEADER_REQUEST, Buffer::of(name.as_bytes()), value)
    }
}

fn body_chunks(f: FilterEnvoyPtr, body_type: u32, out: &mut Vec<u8>) {
    // SAFETY: the stream is live; the slices are copied before the hook returns.
    unsafe {
        let n = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(f, body_type);
        if n == 0 {
            return;
        }
        let mut raw = vec![Buffer::NULL; n];
        if abi::envoy_dynamic_module_callback_http_get_body_chunks(f, body_type, raw.as_mut_ptr()) {
            for chunk in &raw {
                out.extend_from_slice(chunk.bytes());
            }
        }
    }
}

/// The request body so far: what Envoy buffered for this filter, then (inside `request_body`) the chunk of this
/// call, unless that chunk is the buffer itself (an earlier filter buffered the body).
pub fn request_body(f: FilterEnvoyPtr, in_body_hook: bool) -> Vec<u8> {
    let mut body = Vec::new();
    // SAFETY: the stream is live.
    let received_is_buffered =
        in_body_hook && unsafe { abi::envoy_dynamic_module_callback_http_received_buffered_request_body(f) };
    if !received_is_buffered {
        body_chunks(f, abi::BODY_BUFFERED_REQUEST, &mut body);
    }
    if in_body_hook {
        body_chunks(f, abi::BODY_RECEIVED_REQUEST, &mut body);
    }
    body
}

/// The size of [`request_body`] inside `request_body`, without copying it.
pub fn request_body_size(f: FilterEnvoyPtr) -> usize {
    // SAFETY: the stream is live.
    unsafe {
        let received = abi::envoy_dynamic_module_callback_http_get_body_size(f, abi::BODY_RECEIVED_REQUEST);
        if abi::envoy_dynamic_module_callback_http_received_buffered_request_body(f) {
            received
        } else {
            received + abi::envoy_dynamic_module_callback_http_get_body_size(f, abi::BODY_BUFFERED_REQUEST)
        }
    }
}

fn text(bytes: &[u8]) -> Result<Option<Value>, Unavailable> {
    match std::str::from_utf8(bytes) {
        Ok("") => Ok(None),
        Ok(s) => Ok(Some(Value::String(s.to_string()))),
        // Envoy's bytes are not guaranteed UTF-8: unreadable rather than repaired.
        Err(_) => Err(Unavailable),
    }
}

fn number(n: f64) -> Result<Option<Value>, Unavailable> {
    envoy_value::number(n)
        .map(|n| Some(Value::Number(n)))
        .ok_or(Unavailable)
}

impl StreamHost<'_> {
    fn attr_string(&self, id: u32) -> Result<Option<Value>, Unavailable> {
        let mut out = Buffer::NULL;
        // SAFETY: the stream is live; the bytes are copied before the hook returns.
        unsafe {
            if abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(self.f, id, &mut out) {
                text(out.bytes())
            } else {
                Ok(None)
            }
        }
    }

    fn attr_int(&self, id: u32) -> Result<Option<Value>, Unavailable> {
        let mut out = 0u64;
        // SAFETY: the stream is live.
        let found = unsafe { abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(self.f, id, &mut out) };
        Ok(found.then(|| Value::from(out)))
    }

    fn attr_bool(&self, id: u32) -> Result<Option<Value>, Unavailable> {
        let mut out = false;
        // SAFETY: the stream is live. On a connection without TLS the mTLS getter answers "absent".
        let found = unsafe { abi::envoy_dynamic_module_callback_http_filter_get_attribute_bool(self.f, id, &mut out) };
        Ok(found.then_some(Value::Bool(out)))
    }

    /// The top-level keys of a metadata namespace.
    pub fn metadata_keys(&self, source: u32, ns: &str) -> Vec<String> {
        let nsb = Buffer::of(ns.as_bytes());
        // SAFETY: the stream is live; keys are copied out.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_metadata_keys_count(self.f, source, nsb);
            if n == 0 {
                return Vec::new();
            }
            let mut raw = vec![Buffer::NULL; n];
            if !abi::envoy_dynamic_module_callback_http_get_metadata_keys(self.f, source, nsb, raw.as_mut_ptr()) {
                return Vec::new();
            }
            raw.iter()
                .map(|b| String::from_utf8_lossy(b.bytes()).into_owned())
                .collect()
        }
    }

    /// One top-level metadata value: a string, number, bool, or a list of those. A key that exists but that no
    /// getter reads (a map or a `null`) is unavailable: the ABI cannot read it, and guessing would be wrong.
    fn metadata_value(&self, source: u32, ns: &str, key: &str) -> Result<Option<Value>, Unavailable> {
        let (nsb, kb) = (Buffer::of(ns.as_bytes()), Buffer::of(key.as_bytes()));
        // SAFETY: the stream is live; every Envoy buffer is copied before the next call.
        unsafe {
            let mut s = Buffer::NULL;
            if abi::envoy_dynamic_module_callback_http_get_metadata_string(self.f, source, nsb, kb, &mut s) {
                return text(s.bytes());
            }
            let mut n = 0f64;
            if abi::envoy_dynamic_module_callback_http_get_metadata_number(self.f, source, nsb, kb, &mut n) {
                return number(n);
            }
            let mut b = false;
            if abi::envoy_dynamic_module_callback_http_get_metadata_bool(self.f, source, nsb, kb, &mut b) {
                return Ok(Some(Value::Bool(b)));
            }
            let mut len = 0usize;
            if abi::envoy_dynamic_module_callback_http_get_metadata_list_size(self.f, source, nsb, kb, &mut len) {
                let mut items = Vec::with_capacity(len);
                for i in 0..len {
                    let (mut s, mut n, mut b) = (Buffer::NULL, 0f64, false);
                    if abi::envoy_dynamic_module_callback_http_get_metadata_list_string(
                        self.f, source, nsb, kb, i, &mut s,
                    ) {
                        items.push(Value::String(
                            std::str::from_utf8(s.bytes()).map_err(|_| Unavailable)?.to_string(),
                        ));
                    } else if abi::envoy_dynamic_module_callback_http_get_metadata_list_number(
                        self.f, source, nsb, kb, i, &mut n,
                    ) {
                        items.push(number(n)?.unwrap_or(Value::Null));
                    } else if abi::envoy_dynamic_module_callback_http_get_metadata_list_bool(
                        self.f, source, nsb, kb, i, &mut b,
                    ) {
                        items.push(Value::Bool(b));
                    } else {
                        return Err(Unavailable); // a map or list inside the list
                    }
                }
                return Ok(Some(Value::Array(items)));
            }
        }
        if self.metadata_keys(source, ns).iter().any(|k| k == key) {
            Err(Unavailable)
        } else {
            Ok(None)
        }
    }

    fn metadata(&self, source: u32, ns: &str, key: Option<&str>, rest: &[&str]) -> Result<Option<Value>, Unavailable> {
        let Some(key) = key else {
            // The whole namespace, as a map.
            let keys = self.metadata_keys(source, ns);
            if keys.is_empty() {
                return Ok(None);
            }
            let mut map = Map::new();
            for key in keys {
                if let Some(value) = self.metadata_value(source, ns, &key)? {
                    map.insert(key, value);
                }
            }
            return Ok(Some(Value::Object(map)));
        };
        let Some(value) = self.metadata_value(source, ns, key)? else {
            return Ok(None);
        };
        if rest.is_empty() {
            return Ok(Some(value));
        }
        Ok(jwt::at(&value, rest))
    }

    /// A request filter state value (a string accessor), byte-exact.
    fn filter_state(&self, key: &str) -> Option<Vec<u8>> {
        let mut out = Buffer::NULL;
        // SAFETY: the stream is live; the bytes are copied before the next call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_get_filter_state_bytes(self.f, Buffer::of(key.as_bytes()), &mut out)
                .then(|| out.bytes().to_vec())
        }
    }

    /// jwt_authn's record `name`, from its JSON copy in the filter state (decoded once per stream).
    fn jwt_authn_record(&self, name: &str) -> Record {
        if let Some((_, done)) = self.state.jwt_authn.borrow().iter().find(|(n, _)| n == name) {
            return done.clone();
        }
        let recorded = self
            .metadata_keys(abi::METADATA_DYNAMIC, JWT_AUTHN_NAMESPACE)
            .iter()
            .any(|k| k == name);
        let copy = self.filter_state(&jwt::filter_state_key(name));
        let result = jwt::record(recorded, copy.as_deref());
        if let Err(why) = result {
            super::log(
                abi::LOG_WARN,
                &format!("mcp_jwt_signer: jwt_authn's `{name}` cannot be read: {}", why.explain()),
            );
        }
        self.state
            .jwt_authn
            .borrow_mut()
            .push((name.to_string(), result.clone()));
        result
    }
}

impl Host for StreamHost<'_> {
    fn request_headers(&self) -> Headers {
        Headers(headers(self.f, abi::HEADER_REQUEST))
    }

    fn request_body(&self, len: usize) -> Option<Vec<u8>> {
        let mut body = request_body(self.f, self.in_body_hook);
        body.truncate(len);
        Some(body)
    }

    fn attribute(&self, path: &[&str]) -> Result<Option<Value>, Unavailable> {
        match resolve(path) {
            Resolved::Str(id) => self.attr_string(id),
            Resolved::Int(id) => self.attr_int(id),
            Resolved::Bool(id) => self.attr_bool(id),
            Resolved::Metadata { source, ns, key, rest } => self.metadata(source, ns, key, rest),
            Resolved::JwtAuthn { name, rest } => match self.jwt_authn_record(name) {
                Ok(Some(record)) => jwt::claim(&record, rest).map_err(|_| Unavailable),
                Ok(None) => Ok(None),
                Err(_) => Err(Unavailable),
            },
            Resolved::Unsupported => Err(Unavailable),
        }
    }

    fn now_micros(&self) -> Option<u64> {
        now_micros()
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        shared::get(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
        shared::set(key, value, cas)
    }
}
