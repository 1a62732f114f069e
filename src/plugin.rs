//! One plugin instance in one worker: its configuration, its signing key and its token cache, shared by the
//! worker's requests. Loading is pure too: the key comes from the configuration, the environment, or a key
//! generated once and shared with every worker through the host's shared data.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::cache::TokenCache;
use crate::config::{Config, KeySource, Secret, TokenCacheConfig, SIGNING_KEY_ENV};
use crate::crypto::{Algorithm, Jwk, Signer};
use crate::host::{Host, LogLevel};

/// Shared-data key under which the first worker publishes an auto-generated key (PKCS#8 DER) for the others.
pub const SHARED_KEY_PREFIX: &str = "mcp_jwt_signer/generated_key/v1/";

/// After this many uses, the shared generated key is re-validated only every this many uses.
pub const SHARED_KEY_RECHECK: u32 = 1024;

/// The shared-data key of the generated key for `algorithm`.
pub fn shared_key_name(algorithm: Algorithm) -> String {
    format!("{SHARED_KEY_PREFIX}{algorithm}")
}

/// Where the signing key lives.
pub enum KeyStore {
    /// Configured (plugin config or environment): fixed for the life of this configuration.
    Fixed(Rc<Signer>),
    /// Auto-generated and shared through the host's shared data. The cached copy is re-validated against the
    /// shared value's CAS (on each of the first [`SHARED_KEY_RECHECK`] uses, then every `SHARED_KEY_RECHECK`th),
    /// so a worker that lost a start-up race converges on the published key without copying the key out of
    /// shared data on every request.
    Shared {
        /// The key's algorithm.
        algorithm: Algorithm,
        /// Its shared-data key.
        name: String,
        /// The key as last read, with the CAS it was read at.
        cache: RefCell<Option<(u32, Rc<Signer>)>>,
        /// Uses so far.
        uses: Cell<u32>,
    },
}

impl KeyStore {
    /// The signing key to use now; `None` if no key is available (the request is refused, 503).
    pub fn signer(&self, host: &dyn Host) -> Option<Rc<Signer>> {
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
                let Some((bytes, cas)) = host.shared_data(name) else {
                    return cache.borrow().as_ref().map(|(_, s)| s.clone());
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
                    // A copy that cannot be read keeps the last good key (at load there is none: load fails).
                    Err(_) => cache.borrow().as_ref().map(|(_, s)| s.clone()),
                }
            }
        }
    }

    /// Whether the key is generated (lost when Envoy restarts): verifiers should cache the JWKS briefly.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self, KeyStore::Shared { .. })
    }
}

/// A loaded plugin.
pub struct Plugin {
    /// The validated configuration.
    pub config: Config,
    /// The signing key.
    pub keys: KeyStore,
    /// This worker's token cache.
    pub cache: RefCell<TokenCache>,
    /// The introspection endpoint's credentials and this worker's cache of results (with `introspection`).
    pub introspection: Option<IntrospectionState>,
}

/// What introspection needs at run time besides its configuration.
pub struct IntrospectionState {
    /// The `Authorization` value for the endpoint (from the environment; `Debug` hides it).
    pub authorization: Secret,
    /// Results by SHA-256 of the token, each until the token's `exp` or `introspection.cache.max_seconds`.
    pub cache: RefCell<TokenCache>,
}

/// A loaded plugin and what loading it has to say.
pub struct Loaded {
    /// The plugin.
    pub plugin: Plugin,
    /// Log lines for the operator (which key is in use).
    pub logs: Vec<(LogLevel, String)>,
}

/// Refuses to start where body buffering cannot work: on Envoy 1.34 or older the wasm filter has no
/// `allow_on_headers_stop_iteration`, an xDS update carrying it loses the field with only a warning, and every
/// buffered request would then hang until `stream_idle_timeout`. Whether the flag is *set* cannot be read by a
/// wasm filter on any Envoy (docs/envoy-versions.md); an unknown version is not refused.
fn check_envoy_version(config: &Config, host: &dyn Host) -> Result<(), String> {
    let minimum = crate::config::defaults::MIN_ENVOY_MINOR_FOR_BUFFERING;
    match host.envoy_version() {
        Some((1, minor)) if minor < minimum && config.allow_body_buffering => Err(format!(
            "invalid plugin configuration: Envoy 1.{minor} has no wasm `allow_on_headers_stop_iteration` (added \
             in Envoy 1.{minimum}), so the request bodies this filter reads would never reach it and every such \
             request would hang; run Envoy 1.{minimum} or later (1.36 to 1.40 are tested), or set \
             `scope_source` to \"headers\" and `allow_body_buffering` to false"
        )),
        _ => Ok(()),
    }
}

impl Plugin {
    /// Parses the configuration and obtains the key. `env_key` is the value of [`SIGNING_KEY_ENV`]. Errors name
    /// the field and never contain key material; an error means the plugin must not start (fail closed).
    pub fn load(bytes: &[u8], env_key: Option<&str>, host: &dyn Host) -> Result<Loaded, String> {
        let env = |name: &str| (name == SIGNING_KEY_ENV).then(|| env_key.map(str::to_string)).flatten();
        Self::load_with_env(bytes, &env, host)
    }

    /// [`Plugin::load`], reading the environment variables the configuration names through `env` (the signing
    /// key's, and the introspection endpoint's client credentials).
    pub fn load_with_env(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
        host: &dyn Host,
    ) -> Result<Loaded, String> {
        let config = Config::parse(bytes).map_err(|e| e.to_string())?;
        check_envoy_version(&config, host)?;
        let env_key = env(SIGNING_KEY_ENV);
        let source = config.key_source(env_key.as_deref()).map_err(|e| e.to_string())?;
        let mut logs = Vec::new();
        let keys = match source {
            KeySource::Config(pem) => {
                let signer = Signer::from_pem(config.algorithm, &pem.0)
                    .map_err(|e| format!("invalid plugin configuration: field `signing_key`: {e}"))?;
                logs.push((
                    LogLevel::Info,
                    format!("signing with the configured key, kid={}", signer.kid()),
                ));
                KeyStore::Fixed(Rc::new(signer))
            }
            KeySource::Environment(pem) => {
                let signer = Signer::from_pem(config.algorithm, &pem.0)
                    .map_err(|e| format!("invalid signing key in environment variable {SIGNING_KEY_ENV}: {e}"))?;
                logs.push((
                    LogLevel::Info,
                    format!("signing with the key from {SIGNING_KEY_ENV}, kid={}", signer.kid()),
                ));
                KeyStore::Fixed(Rc::new(signer))
            }
            KeySource::Generated => {
                let name = shared_key_name(config.algorithm);
                publish_generated_key(config.algorithm, &name, host)?;
                let store = KeyStore::Shared {
                    algorithm: config.algorithm,
                    name,
                    cache: RefCell::new(None),
                    uses: Cell::new(0),
                };
                let signer = store
                    .signer(host)
                    .ok_or("the generated signing key could not be read back from shared data")?;
                logs.push((
                    LogLevel::Warn,
                    format!(
                        "no signing key configured; using an auto-generated {} key (kid={}) that is lost when Envoy \
                         restarts. Set `signing_key` or {SIGNING_KEY_ENV} for stable keys and for replicas.",
                        match config.algorithm {
                            Algorithm::Rs256 => "RSA-2048",
                            Algorithm::Es256 => "P-256",
                            Algorithm::EdDsa => "Ed25519",
                        },
                        signer.kid()
                    ),
                ));
                store
            }
        };
        if let Some((major, minor)) = host.envoy_version() {
            logs.push((LogLevel::Debug, format!("running on Envoy {major}.{minor}")));
        }
        let cache = RefCell::new(TokenCache::new(config.token_cache));
        let introspection = match &config.introspection {
            None => None,
            Some(settings) => {
                let authorization = settings.client_authorization(env).map_err(|e| e.to_string())?;
                logs.push((
                    LogLevel::Info,
                    format!(
                        "introspecting bearer tokens at cluster {} {} (client credentials from {} and {})",
                        settings.cluster, settings.path, settings.client_id_env, settings.client_secret_env
                    ),
                ));
                Some(IntrospectionState {
                    authorization,
                    cache: RefCell::new(TokenCache::new(TokenCacheConfig {
                        max_entries: settings.cache.max_entries,
                        max_bytes: settings.cache.max_bytes,
                        // Each entry already ends at min(exp, now + max_seconds): any life left is enough.
                        min_remaining_seconds: 0,
                        // Introspection results stay with their worker.
                        shared_max_entries: 0,
                        shared_entry_bytes: 0,
                    })),
                })
            }
        };
        Ok(Loaded {
            plugin: Plugin {
                config,
                keys,
                cache,
                introspection,
            },
            logs,
        })
    }

    /// The keys the JWKS publishes: the signing key first, then `additional_public_keys` (minus a duplicate of it).
    pub fn published_keys<'a>(&'a self, signer: &'a Signer) -> Vec<&'a Jwk> {
        let mut keys = vec![signer.jwk()];
        keys.extend(
            self.config
                .additional_public_keys
                .iter()
                .filter(|k| k.kid != signer.kid()),
        );
        keys
    }
}

/// Makes sure a generated key is published in shared data. Shared data has no create-if-absent, so: read,
/// generate only if absent, read again right before writing, and let every worker use whatever is stored.
fn publish_generated_key(algorithm: Algorithm, name: &str, host: &dyn Host) -> Result<(), String> {
    if host.shared_data(name).is_some() {
        return Ok(());
    }
    let signer = Signer::generate(algorithm).map_err(|e| e.to_string())?;
    let der = signer.to_pkcs8_der().map_err(|e| e.to_string())?;
    if host.shared_data(name).is_some() {
        return Ok(()); // another worker finished first: use its key
    }
    host.set_shared_data(name, &der, None)
        .map_err(|e| format!("cannot publish the generated key in shared data: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn workers_share_one_generated_key() {
        let a = FakeHost::default();
        let b = FakeHost::with_shared(a.shared.clone());
        let first = Plugin::load(br#"{"algorithm":"ES256"}"#, None, &a).unwrap();
        let second = Plugin::load(br#"{"algorithm":"ES256"}"#, None, &b).unwrap();
        let kid_a = first.plugin.keys.signer(&a).unwrap().kid().to_string();
        let kid_b = second.plugin.keys.signer(&b).unwrap().kid().to_string();
        assert_eq!(kid_a, kid_b);
        assert!(first.plugin.keys.is_ephemeral());
        assert_eq!(first.logs[0].0, LogLevel::Warn);
    }

    #[test]
    fn a_worker_that_lost_the_race_converges_on_the_published_key() {
        let host = FakeHost::default();
        let loaded = Plugin::load(br#"{"algorithm":"EdDSA"}"#, None, &host).unwrap();
        let before = loaded.plugin.keys.signer(&host).unwrap().kid().to_string();
        // Another worker overwrites the key (the race shared data cannot prevent).
        let other = Signer::generate(Algorithm::EdDsa).unwrap();
        let name = shared_key_name(Algorithm::EdDsa);
        host.set_shared_data(&name, &other.to_pkcs8_der().unwrap(), None)
            .unwrap();
        let after = loaded.plugin.keys.signer(&host).unwrap();
        assert_ne!(after.kid(), before);
        assert_eq!(after.kid(), other.kid());
    }

    #[test]
    fn past_the_first_uses_the_key_is_rechecked_periodically() {
        let host = FakeHost::default();
        let loaded = Plugin::load(br#"{"algorithm":"EdDSA"}"#, None, &host).unwrap();
        let keys = &loaded.plugin.keys;
        for _ in 0..SHARED_KEY_RECHECK + 1 {
            keys.signer(&host).unwrap();
        }
        let other = Signer::generate(Algorithm::EdDsa).unwrap();
        host.set_shared_data(&shared_key_name(Algorithm::EdDsa), &other.to_pkcs8_der().unwrap(), None)
            .unwrap();
        // Not re-read on the next use ...
        assert_ne!(keys.signer(&host).unwrap().kid(), other.kid());
        // ... but by the next multiple of SHARED_KEY_RECHECK.
        let mut seen = false;
        for _ in 0..SHARED_KEY_RECHECK {
            seen |= keys.signer(&host).unwrap().kid() == other.kid();
        }
        assert!(seen);
    }

    #[test]
    fn configured_key_errors_name_the_field_and_the_algorithm() {
        let host = FakeHost::default();
        let e = Plugin::load(
            br#"{"signing_key":"-----BEGIN EC PRIVATE KEY-----\nAA\n-----END EC PRIVATE KEY-----"}"#,
            None,
            &host,
        )
        .err()
        .unwrap();
        assert!(e.contains("field `signing_key`"), "{e}");
        assert!(e.contains("RSA private key"), "{e}");
        let e = Plugin::load(b"{}", Some("not a pem"), &host).err().unwrap();
        assert!(e.contains(SIGNING_KEY_ENV), "{e}");
    }

    #[test]
    fn an_envoy_without_the_buffering_flag_is_refused_unless_nothing_is_buffered() {
        let on = |version| FakeHost {
            envoy_version: version,
            ..FakeHost::default()
        };
        let e = Plugin::load(b"{}", None, &on(Some((1, 34)))).err().unwrap();
        assert!(
            e.contains("allow_on_headers_stop_iteration") && e.contains("Envoy 1.34"),
            "{e}"
        );
        assert!(e.contains("Envoy 1.35 or later"), "{e}");
        let header_mode = br#"{"scope_source":"headers","allow_body_buffering":false}"#;
        assert!(Plugin::load(header_mode, None, &on(Some((1, 34)))).is_ok());
        for fine in [Some((1, 35)), Some((1, 40)), Some((2, 0)), None] {
            assert!(Plugin::load(b"{}", None, &on(fine)).is_ok(), "{fine:?}");
        }
    }
}
