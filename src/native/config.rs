//! Filter configurations (one per Envoy filter config, shared by every worker) and each worker's plugins.
//!
//! Envoy creates a filter config on its main thread and shares it with every worker thread, so it must be `Sync`:
//! it keeps the plugin JSON, the signing key's environment value and the metric ids, not a [`Plugin`]. A
//! [`Plugin`] is not `Sync` (its token cache is a `RefCell`): each worker thread loads its own, lazily, on its
//! first stream (a `thread_local` map keyed by the config's id), as each wasm worker VM has its own. The
//! generated key is shared by all of them through the process-wide shared data (`super::shared`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::host::{Metric, MetricKind};
use crate::plugin::{Loaded, Plugin};
use crate::refusal::REASONS;

use super::abi::{self, Buffer, ConfigEnvoyPtr, FilterEnvoyPtr};
use super::host::ProcessHost;

/// Metric ids, defined while the config is created (the ABI refuses definitions later).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Counters, histograms and gauges without a parameter in their name, by name.
    by_name: HashMap<&'static str, usize>,
    /// `refused.<reason>`, by reason.
    refused: HashMap<&'static str, usize>,
}

/// Every metric the filter emits, `refused.<reason>` aside (one per [`REASONS`]). The match in [`static_name`] has
/// no wildcard arm: a new [`Metric`] variant does not compile until it is named there, and then it must be listed
/// here too (a unit test checks that each name is).
const METRICS: [Metric; 10] = [
    Metric::TokensMinted,
    Metric::TokenCacheHits,
    Metric::TokenCacheSharedHits,
    Metric::Introspections,
    Metric::IntrospectionCacheHits,
    Metric::DiscoveryServed,
    Metric::JwksServed,
    Metric::ProtectedResourceServed,
    Metric::SignDurationUs(0),
    Metric::GeneratedKeyInUse(false),
];

fn define(c: ConfigEnvoyPtr, kind: MetricKind, name: &str) -> Result<usize, String> {
    let mut id = 0usize;
    let name_buf = Buffer::of(name.as_bytes());
    // SAFETY: `c` is the config pointer of the running `config_new`; the name is read during the call.
    let rc = unsafe {
        match kind {
            MetricKind::Counter => abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                c,
                name_buf,
                std::ptr::null(),
                0,
                &mut id,
            ),
            MetricKind::Histogram => abi::envoy_dynamic_module_callback_http_filter_config_define_histogram(
                c,
                name_buf,
                std::ptr::null(),
                0,
                &mut id,
            ),
            MetricKind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                c,
                name_buf,
                std::ptr::null(),
                0,
                &mut id,
            ),
        }
    };
    if rc == abi::METRICS_SUCCESS {
        Ok(id)
    } else {
        Err(format!("cannot define the metric {name} (result {rc})"))
    }
}

impl Metrics {
    /// Defines every metric the filter can emit (so each shows, at zero, from the start).
    pub fn define_all(c: ConfigEnvoyPtr) -> Result<Metrics, String> {
        let mut metrics = Metrics::default();
        for metric in METRICS {
            let id = define(c, metric.kind(), &metric.name())?;
            metrics.by_name.insert(static_name(&metric), id);
        }
        for reason in REASONS {
            let id = define(c, MetricKind::Counter, &Metric::Refused(reason).name())?;
            metrics.refused.insert(reason, id);
        }
        Ok(metrics)
    }

    fn id(&self, metric: &Metric) -> Option<usize> {
        match metric {
            Metric::Refused(reason) => self.refused.get(reason).copied(),
            other => self.by_name.get(static_name(other)).copied(),
        }
    }

    /// Sets a gauge from the config itself (no stream), while `config_new` runs.
    pub fn set_on_config(&self, c: ConfigEnvoyPtr, metric: &Metric) {
        let Some(id) = self.id(metric) else { return };
        if metric.kind() == MetricKind::Gauge {
            // SAFETY: `c` is the config pointer of the running `config_new`; no labels.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    c,
                    id,
                    std::ptr::null(),
                    0,
                    metric.value(),
                )
            };
        }
    }

    /// Records one update on the stream `f`.
    pub fn record(&self, f: FilterEnvoyPtr, metric: &Metric) {
        let Some(id) = self.id(metric) else { return };
        let value = metric.value();
        // SAFETY: the stream is live; no labels.
        unsafe {
            match metric.kind() {
                MetricKind::Counter => {
                    abi::envoy_dynamic_module_callback_http_filter_increment_counter(f, id, std::ptr::null(), 0, value)
                }
                MetricKind::Histogram => abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                    f,
                    id,
                    std::ptr::null(),
                    0,
                    value,
                ),
                MetricKind::Gauge => {
                    abi::envoy_dynamic_module_callback_http_filter_set_gauge(f, id, std::ptr::null(), 0, value)
                }
            };
        }
    }
}

/// The name of a metric without a parameter in its name (no allocation per update).
fn static_name(metric: &Metric) -> &'static str {
    match metric {
        Metric::TokensMinted => "mcp_jwt_signer.tokens_minted",
        Metric::TokenCacheHits => "mcp_jwt_signer.token_cache_hits",
        Metric::TokenCacheSharedHits => "mcp_jwt_signer.token_cache_shared_hits",
        Metric::Introspections => "mcp_jwt_signer.introspections",
        Metric::IntrospectionCacheHits => "mcp_jwt_signer.introspection_cache_hits",
        Metric::DiscoveryServed => "mcp_jwt_signer.discovery_served",
        Metric::JwksServed => "mcp_jwt_signer.jwks_served",
        Metric::ProtectedResourceServed => "mcp_jwt_signer.protected_resource_served",
        Metric::SignDurationUs(_) => "mcp_jwt_signer.sign_duration_us",
        Metric::GeneratedKeyInUse(_) => "mcp_jwt_signer.generated_key_in_use",
        Metric::Refused(_) => "mcp_jwt_signer.refused",
    }
}

/// Environment variables by name; their values are secrets, so `Debug` shows only the names.
pub struct EnvSnapshot(std::collections::BTreeMap<String, Option<String>>);

impl std::fmt::Debug for EnvSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// The signer's filter config.
#[derive(Debug)]
pub struct SignerConfig {
    /// Unique for the life of the process (a per-worker plugin is keyed by it; addresses can be reused).
    pub id: u64,
    /// The plugin configuration JSON (`filter_config`).
    pub json: Vec<u8>,
    /// The environment variables the configuration read (the signing key's, the introspection credentials'), as
    /// the process environment held them when the config was created: every worker's plugin loads with these.
    pub env: EnvSnapshot,
    /// The metric ids.
    pub metrics: Metrics,
}

/// A filter config of this module (the module's `config_module_ptr` points at one).
#[derive(Debug)]
pub enum FilterConfig {
    /// `filter_name: mcp_jwt_signer`: the signer.
    Signer(SignerConfig),
    /// `filter_name: mcp_jwt_signer_route_guard`: the route guard, an upstream filter of the router
    /// (`crate::request::RouteGuard`); it counts its refusals in the same metrics.
    RouteGuard(Metrics),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn live() -> std::sync::MutexGuard<'static, HashSet<u64>> {
    static LIVE: OnceLock<Mutex<HashSet<u64>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SignerConfig {
    /// Validates the plugin JSON by loading it once (which also publishes a generated key for every worker),
    /// then defines the metrics. `Err`: the message to log; Envoy refuses the config.
    pub fn create(c: ConfigEnvoyPtr, json: &[u8]) -> Result<(SignerConfig, Loaded), String> {
        let read = RefCell::new(std::collections::BTreeMap::new());
        let env = |name: &str| {
            let value = std::env::var(name).ok();
            read.borrow_mut().insert(name.to_string(), value.clone());
            value
        };
        let loaded = Plugin::load_with_env(json, &env, &ProcessHost)?;
        let env = EnvSnapshot(read.into_inner());
        let unsupported = super::attributes::unsupported_sources(&loaded.plugin.config);
        if let Some((field, source)) = unsupported.first() {
            return Err(format!(
                "invalid plugin configuration: field `{field}`: source `{source}` cannot be read by the native \
                 build (Envoy's dynamic-module ABI has no getter for it); use the wasm build or another source"
            ));
        }
        let metrics = Metrics::define_all(c)?;
        metrics.set_on_config(c, &Metric::GeneratedKeyInUse(loaded.plugin.keys.is_ephemeral()));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        live().insert(id);
        let config = SignerConfig {
            id,
            json: json.to_vec(),
            env,
            metrics,
        };
        Ok((config, loaded))
    }

    /// This worker's plugin for this config, loaded on first use.
    pub fn plugin(&self) -> Result<Rc<Plugin>, String> {
        thread_local! {
            static PLUGINS: RefCell<HashMap<u64, Rc<Plugin>>> = RefCell::new(HashMap::new());
        }
        PLUGINS.with(|plugins| {
            if let Some(plugin) = plugins.borrow().get(&self.id) {
                return Ok(plugin.clone());
            }
            let env = |name: &str| self.env.0.get(name).cloned().flatten();
            let loaded = Plugin::load_with_env(&self.json, &env, &ProcessHost)?;
            let plugin = Rc::new(loaded.plugin);
            let mut plugins = plugins.borrow_mut();
            // Drop the plugins of configs Envoy has destroyed since (their streams hold their own `Rc`).
            let live = live();
            plugins.retain(|id, _| live.contains(id));
            plugins.insert(self.id, plugin.clone());
            Ok(plugin)
        })
    }
}

impl Drop for SignerConfig {
    fn drop(&mut self) {
        live().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_defined_under_its_own_name() {
        for metric in METRICS {
            assert_eq!(static_name(&metric), metric.name(), "{metric:?}");
        }
        let names: HashSet<_> = METRICS.iter().map(static_name).collect();
        assert_eq!(names.len(), METRICS.len());
    }
}
