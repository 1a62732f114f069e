//! A per-worker token cache: a signed token is reused for requests whose claims (all but time and `jti`) are
//! identical, while enough of its lifetime remains. Bounded in entries and bytes; least recently used first out.
//!
//! Reuse means a `jti` names a token, not a request: with the cache on, repeated identical calls within the reuse
//! window carry the same `jti`. `token_cache.max_entries: 0` switches the cache off (a fresh token per request).

use std::collections::{BTreeMap, HashMap};

use crate::config::TokenCacheConfig;

struct Entry {
    token: String,
    exp: u64,
    /// Position in the recency order.
    tick: u64,
}

/// The cache of one worker.
pub struct TokenCache {
    config: TokenCacheConfig,
    entries: HashMap<String, Entry>,
    /// tick → key, oldest first.
    recency: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

/// What a lookup found, for metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A token with enough life left.
    Hit(String),
    /// None (or a stale one, now dropped).
    Miss,
}

impl TokenCache {
    /// An empty cache.
    pub fn new(config: TokenCacheConfig) -> TokenCache {
        TokenCache {
            config,
            entries: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
            bytes: 0,
        }
    }

    /// Whether the cache stores anything (`max_entries` > 0).
    pub fn enabled(&self) -> bool {
        self.config.max_entries > 0
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entry held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes accounted for.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A cached token for `key` with at least `min_remaining_seconds` of life left at `now`.
    pub fn get(&mut self, key: &str, now: u64) -> Lookup {
        let fresh = match self.entries.get(key) {
            None => return Lookup::Miss,
            Some(entry) => entry.exp.saturating_sub(now) >= self.config.min_remaining_seconds && entry.exp > now,
        };
        if !fresh {
            self.remove(key);
            return Lookup::Miss;
        }
        self.tick += 1;
        let tick = self.tick;
        let Some(entry) = self.entries.get_mut(key) else {
            return Lookup::Miss;
        };
        self.recency.remove(&entry.tick);
        entry.tick = tick;
        self.recency.insert(tick, key.to_string());
        Lookup::Hit(entry.token.clone())
    }

    /// Stores `token` under `key` until `exp`, evicting the least recently used entries to make room.
    pub fn insert(&mut self, key: String, token: String, exp: u64) {
        if !self.enabled() {
            return;
        }
        let size = key.len() + token.len();
        if size > self.config.max_bytes {
            return;
        }
        self.remove(&key);
        while self.entries.len() >= self.config.max_entries || self.bytes + size > self.config.max_bytes {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            self.remove(&oldest);
        }
        self.tick += 1;
        self.recency.insert(self.tick, key.clone());
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                token,
                exp,
                tick: self.tick,
            },
        );
    }

    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.recency.remove(&entry.tick);
            self.bytes -= key.len() + entry.token.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_entries: usize, max_bytes: usize, min_remaining_seconds: u64) -> TokenCache {
        TokenCache::new(TokenCacheConfig {
            max_entries,
            max_bytes,
            min_remaining_seconds,
        })
    }

    #[test]
    fn reuse_until_too_little_life_remains() {
        let mut c = cache(10, 1000, 150);
        c.insert("k".into(), "t".into(), 1300);
        assert_eq!(c.get("k", 1000), Lookup::Hit("t".into()));
        assert_eq!(c.get("k", 1150), Lookup::Hit("t".into()));
        assert_eq!(c.get("k", 1151), Lookup::Miss);
        assert!(c.is_empty(), "a stale entry is dropped");
    }

    #[test]
    fn different_keys_never_share() {
        let mut c = cache(10, 1000, 0);
        c.insert("alice|tool-a".into(), "ta".into(), 100);
        assert_eq!(c.get("alice|tool-b", 0), Lookup::Miss);
        assert_eq!(c.get("bob|tool-a", 0), Lookup::Miss);
    }

    #[test]
    fn evicts_least_recently_used_by_count() {
        let mut c = cache(2, 1000, 0);
        c.insert("a".into(), "1".into(), 100);
        c.insert("b".into(), "2".into(), 100);
        assert_eq!(c.get("a", 0), Lookup::Hit("1".into())); // b is now the oldest
        c.insert("c".into(), "3".into(), 100);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b", 0), Lookup::Miss);
        assert_eq!(c.get("a", 0), Lookup::Hit("1".into()));
        assert_eq!(c.get("c", 0), Lookup::Hit("3".into()));
    }

    #[test]
    fn evicts_by_bytes_and_skips_oversized() {
        let mut c = cache(100, 10, 0);
        c.insert("a".into(), "xxxx".into(), 100); // 5 bytes
        c.insert("b".into(), "yyyy".into(), 100); // 10 bytes
        c.insert("c".into(), "zzzz".into(), 100); // evicts a
        assert_eq!(c.bytes(), 10);
        assert_eq!(c.get("a", 0), Lookup::Miss);
        c.insert("d".into(), "0123456789".into(), 100);
        assert_eq!(c.get("d", 0), Lookup::Miss);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn replacing_a_key_keeps_accounting_right() {
        let mut c = cache(10, 100, 0);
        c.insert("a".into(), "1".into(), 100);
        c.insert("a".into(), "22".into(), 100);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 3);
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let mut c = cache(0, 100, 0);
        c.insert("a".into(), "1".into(), 100);
        assert_eq!(c.get("a", 0), Lookup::Miss);
    }
}
