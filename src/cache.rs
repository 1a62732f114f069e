//! A per-worker token cache: a signed token is reused for requests whose claims (all but time and `jti`) are
//! identical, while enough of its lifetime remains. Bounded in entries and bytes; least recently used first out.
//!
//! Reuse means a `jti` names a token, not a request: with the cache on, repeated identical calls within the reuse
//! window carry the same `jti`. `token_cache.max_entries: 0` switches the cache off (a fresh token per request).
//!
//! Accounting counts what is stored: the key (held once, shared by the map and the recency index), the token and
//! a fixed overhead per entry. No single entry may take more than [`MAX_ENTRY_SHARE`] of `max_bytes`: one request
//! with a huge claim set must not be able to evict every other user's token.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::config::TokenCacheConfig;

/// Bytes counted per entry on top of its key and token: the map slot, the index node, the entry's fields.
pub const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The largest share of `max_bytes` one entry may take (1/16): larger tokens are used once, not cached.
pub const MAX_ENTRY_SHARE: usize = 16;

struct Entry {
    token: String,
    /// The token's `jti` (for the audit fields of a request that reuses it).
    jti: String,
    exp: u64,
    /// Position in the recency order.
    tick: u64,
}

/// The cache of one worker.
pub struct TokenCache {
    config: TokenCacheConfig,
    entries: HashMap<Rc<str>, Entry>,
    /// tick → key, oldest first.
    recency: BTreeMap<u64, Rc<str>>,
    tick: u64,
    bytes: usize,
}

/// A cached token and what the audit fields say about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    /// The compact JWS.
    pub jwt: String,
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`.
    pub exp: u64,
}

/// What a lookup found, for metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A token with enough life left.
    Hit(Cached),
    /// None (or a stale one, now dropped).
    Miss,
}

/// The bytes an entry is counted as.
pub fn entry_size(key: &str, token: &str, jti: &str) -> usize {
    key.len() + token.len() + jti.len() + ENTRY_OVERHEAD_BYTES
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
        let Some((stored_key, entry)) = self.entries.get_key_value(key) else {
            return Lookup::Miss;
        };
        let (old_tick, stored_key) = (entry.tick, stored_key.clone());
        self.recency.remove(&old_tick);
        self.recency.insert(tick, stored_key);
        let Some(entry) = self.entries.get_mut(key) else {
            return Lookup::Miss;
        };
        entry.tick = tick;
        Lookup::Hit(Cached {
            jwt: entry.token.clone(),
            jti: entry.jti.clone(),
            exp: entry.exp,
        })
    }

    /// Stores `token` under `key` until `exp`, evicting the least recently used entries to make room. An entry
    /// larger than `max_bytes / MAX_ENTRY_SHARE` is not stored.
    pub fn insert(&mut self, key: String, token: String, jti: String, exp: u64) {
        if !self.enabled() {
            return;
        }
        let size = entry_size(&key, &token, &jti);
        if size > self.config.max_bytes / MAX_ENTRY_SHARE {
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
        let key: Rc<str> = Rc::from(key);
        self.recency.insert(self.tick, key.clone());
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                token,
                jti,
                exp,
                tick: self.tick,
            },
        );
    }

    fn remove(&mut self, key: &str) {
        if let Some((key, entry)) = self.entries.remove_entry(key) {
            self.recency.remove(&entry.tick);
            self.bytes -= entry_size(&key, &entry.token, &entry.jti);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(jwt: &str, exp: u64) -> Lookup {
        Lookup::Hit(Cached {
            jwt: jwt.into(),
            jti: String::new(),
            exp,
        })
    }

    fn cache(max_entries: usize, max_bytes: usize, min_remaining_seconds: u64) -> TokenCache {
        TokenCache::new(TokenCacheConfig {
            max_entries,
            max_bytes,
            min_remaining_seconds,
            shared_max_entries: 0,
            shared_entry_bytes: 0,
        })
    }

    #[test]
    fn reuse_until_too_little_life_remains() {
        let mut c = cache(10, 100_000, 150);
        c.insert("k".into(), "t".into(), String::new(), 1300);
        assert_eq!(c.get("k", 1000), hit("t", 1300));
        assert_eq!(c.get("k", 1150), hit("t", 1300));
        assert_eq!(c.get("k", 1151), Lookup::Miss);
        assert!(c.is_empty(), "a stale entry is dropped");
    }

    #[test]
    fn an_entry_counts_its_key_token_and_jti() {
        assert_eq!(entry_size("key", "token", "jti-1"), 3 + 5 + 5 + ENTRY_OVERHEAD_BYTES);
        let mut c = cache(10, 100_000, 0);
        assert!(c.is_empty());
        c.insert("key".into(), "token".into(), "jti-1".into(), 100);
        assert!(!c.is_empty());
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 3 + 5 + 5 + ENTRY_OVERHEAD_BYTES);
        assert_eq!(
            c.get("key", 0),
            Lookup::Hit(Cached {
                jwt: "token".into(),
                jti: "jti-1".into(),
                exp: 100
            })
        );
        // Replaced: the old entry's bytes are given back.
        c.insert("key".into(), "token-2".into(), "jti-22".into(), 100);
        assert_eq!(c.bytes(), 3 + 7 + 6 + ENTRY_OVERHEAD_BYTES);
    }

    #[test]
    fn different_keys_never_share() {
        let mut c = cache(10, 100_000, 0);
        c.insert("alice|tool-a".into(), "ta".into(), String::new(), 100);
        assert_eq!(c.get("alice|tool-b", 0), Lookup::Miss);
        assert_eq!(c.get("bob|tool-a", 0), Lookup::Miss);
    }

    #[test]
    fn evicts_least_recently_used_by_count() {
        let mut c = cache(2, 100_000, 0);
        c.insert("a".into(), "1".into(), String::new(), 100);
        c.insert("b".into(), "2".into(), String::new(), 100);
        assert_eq!(c.get("a", 0), hit("1", 100)); // b is now the oldest
        c.insert("c".into(), "3".into(), String::new(), 100);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get("b", 0), Lookup::Miss);
        assert_eq!(c.get("a", 0), hit("1", 100));
        assert_eq!(c.get("c", 0), hit("3", 100));
    }

    /// An entry of exactly `size` counted bytes.
    fn token_of(key: &str, size: usize) -> String {
        "t".repeat(size - key.len() - ENTRY_OVERHEAD_BYTES)
    }

    #[test]
    fn evicts_by_bytes_and_skips_oversized() {
        // 16 entries of 100 counted bytes fill 1600; the largest entry allowed is 1600 / 16 = 100.
        let mut c = cache(100, 1600, 0);
        for i in 0..16 {
            let key = format!("k{i:02}");
            c.insert(key.clone(), token_of(&key, 100), String::new(), 100);
        }
        assert_eq!((c.len(), c.bytes()), (16, 1600));
        c.insert("new".into(), token_of("new", 100), String::new(), 100); // evicts k00, the least recently used
        assert_eq!(c.bytes(), 1600);
        assert_eq!(c.get("k00", 0), Lookup::Miss);
        assert!(matches!(c.get("k01", 0), Lookup::Hit(_)));
        // One entry over the share is used once, not stored, and evicts nobody.
        c.insert("big".into(), token_of("big", 101), String::new(), 100);
        assert_eq!(c.get("big", 0), Lookup::Miss);
        assert_eq!(c.len(), 16);
    }

    #[test]
    fn a_flood_of_large_claim_sets_cannot_flush_the_cache() {
        let mut c = cache(1024, 4 << 20, 0);
        for user in 0..100 {
            c.insert(format!("user-{user}"), "t".repeat(900), String::new(), 100);
        }
        // Requests whose tokens are each as large as the whole cache: none is stored, nobody is evicted.
        for i in 0..4 {
            c.insert(format!("flood-{i}"), "x".repeat(1 << 20), String::new(), 100);
        }
        assert_eq!(c.len(), 100);
        assert!((0..100).all(|u| matches!(c.get(&format!("user-{u}"), 0), Lookup::Hit(_))));
    }

    #[test]
    fn accounting_counts_what_is_stored_and_returns_to_zero() {
        let mut c = cache(10, 100_000, 0);
        c.insert("a".into(), "1".into(), String::new(), 100);
        c.insert("a".into(), "22".into(), String::new(), 100);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), 1 + 2 + ENTRY_OVERHEAD_BYTES);
        c.insert("b".into(), "333".into(), String::new(), 100);
        assert_eq!(c.bytes(), entry_size("a", "22", "") + entry_size("b", "333", ""));
        assert_eq!(c.get("a", 200), Lookup::Miss); // expired: dropped
        assert_eq!(c.get("b", 200), Lookup::Miss);
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let mut c = cache(0, 100, 0);
        c.insert("a".into(), "1".into(), String::new(), 100);
        assert_eq!(c.get("a", 0), Lookup::Miss);
    }
}
