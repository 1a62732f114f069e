//! `token_cache`: the bounds of the per-worker token cache and of the one the workers share.

use serde::Deserialize;

use super::defaults;
use super::error::ConfigError;

/// `token_cache` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTokenCache {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    min_remaining_seconds: Option<u64>,
    shared_max_entries: Option<u64>,
    shared_max_bytes: Option<u64>,
}

/// Token cache settings: the worker's own cache and the one shared by every worker of the Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCacheConfig {
    /// 0: no cache (a fresh token and `jti` per request).
    pub max_entries: usize,
    /// Bytes of keys and tokens held.
    pub max_bytes: usize,
    /// A cached token is used only while at least this many seconds of its lifetime remain.
    pub min_remaining_seconds: u64,
    /// Slots of the shared cache (0: not shared; each worker mints for itself).
    pub shared_max_entries: usize,
    /// The largest value one shared slot holds (`shared_max_bytes / shared_max_entries`): what the shared cache
    /// can hold in all is at most `shared_max_entries` times this.
    pub shared_entry_bytes: usize,
}

/// A cache's entry bound: `value`, else `default`; at most `CACHE_MAX_ENTRIES_LIMIT`, refused naming `field`.
pub(crate) fn entries(field: &str, value: Option<u64>, default: usize) -> Result<u64, ConfigError> {
    let n = value.unwrap_or(default as u64);
    if n > defaults::CACHE_MAX_ENTRIES_LIMIT as u64 {
        return Err(ConfigError::new(
            field,
            format!("at most {}", defaults::CACHE_MAX_ENTRIES_LIMIT),
        ));
    }
    Ok(n)
}

/// A cache's byte bound: `value`, else `default`; at most `CACHE_MAX_BYTES_LIMIT` (1 GiB), refused naming `field`.
pub(crate) fn bytes(field: &str, value: Option<u64>, default: usize) -> Result<u64, ConfigError> {
    let n = value.unwrap_or(default as u64);
    if n > defaults::CACHE_MAX_BYTES_LIMIT as u64 {
        return Err(ConfigError::new(
            field,
            format!("at most {} bytes (1 GiB)", defaults::CACHE_MAX_BYTES_LIMIT),
        ));
    }
    Ok(n)
}

impl TokenCacheConfig {
    /// Validates `token_cache` against the token lifetime.
    pub(crate) fn from_raw(raw: RawTokenCache, ttl_seconds: u64) -> Result<TokenCacheConfig, ConfigError> {
        let max_entries = entries("token_cache.max_entries", raw.max_entries, defaults::CACHE_MAX_ENTRIES)?;
        let max_bytes = bytes("token_cache.max_bytes", raw.max_bytes, defaults::CACHE_MAX_BYTES)?;
        let default_remaining = (ttl_seconds as f64 * defaults::CACHE_MIN_REMAINING_FRACTION).ceil() as u64;
        let min_remaining_seconds = raw.min_remaining_seconds.unwrap_or(default_remaining);
        if min_remaining_seconds >= ttl_seconds && max_entries > 0 {
            return Err(ConfigError::new(
                "token_cache.min_remaining_seconds",
                "must be less than ttl_seconds (or switch the cache off with max_entries: 0)",
            ));
        }
        let shared_max_entries = entries(
            "token_cache.shared_max_entries",
            raw.shared_max_entries,
            defaults::SHARED_CACHE_MAX_ENTRIES,
        )?;
        let shared_max_bytes = bytes(
            "token_cache.shared_max_bytes",
            raw.shared_max_bytes,
            defaults::SHARED_CACHE_MAX_BYTES,
        )?;
        // With the worker cache off nothing is reused, so nothing is shared either.
        let shared_max_entries = if max_entries == 0 {
            0
        } else {
            shared_max_entries as usize
        };
        let shared_entry_bytes = (shared_max_bytes as usize).checked_div(shared_max_entries).unwrap_or(0);
        if shared_max_entries > 0 && shared_entry_bytes < defaults::SHARED_CACHE_MIN_ENTRY_BYTES {
            return Err(ConfigError::new(
                "token_cache.shared_max_bytes",
                format!(
                    "gives each of the {shared_max_entries} shared entries {shared_entry_bytes} bytes, fewer than \
                     the {} a token needs: raise it, or lower token_cache.shared_max_entries",
                    defaults::SHARED_CACHE_MIN_ENTRY_BYTES
                ),
            ));
        }
        Ok(TokenCacheConfig {
            max_entries: max_entries as usize,
            max_bytes: max_bytes as usize,
            min_remaining_seconds,
            shared_max_entries,
            shared_entry_bytes,
        })
    }
}
