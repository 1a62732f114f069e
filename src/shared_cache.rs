//! The token cache every worker of one Envoy shares, in proxy-wasm shared data: a worker that misses its own
//! cache looks here before it mints, and publishes what it mints, so a claim set is minted once per Envoy rather
//! than once per worker.
//!
//! Shared data is a key-value store the proxy keeps for all VMs of one `vm_id`, with no listing, no deletion and
//! no atomic create-if-absent. So the cache is a fixed table of `shared_max_entries` slots (direct-mapped: a
//! claim set has one slot, a newer claim set in the same slot replaces the older one), each value at most
//! `shared_entry_bytes`: what it can ever hold is bounded by the configuration, whatever the traffic.
//!
//! A slot is found from, and its value carries, the SHA-256 of the plugin configuration's fingerprint and the
//! worker cache's key (the signing key's `kid` and every claim but time and `jti`): a lookup returns a token only
//! when those 32 bytes match, so no claim set, signing key or configuration can read another's token.
//!
//! The publish race (two workers minting the same claim set at once): a slot is created empty first, then
//! written only with the CAS token of the read that found no usable entry; of two concurrent publishers one
//! wins, the other keeps its own token for its one request, and every later lookup on every worker converges on
//! the stored one.

use sha2::{Digest, Sha256};

use crate::cache::Cached;
use crate::config::TokenCacheConfig;
use crate::host::{Host, SharedDataError};

/// Prefix of the slots' shared-data keys (`mcp_jwt_signer.token_cache.<slot>`).
pub const SLOT_PREFIX: &str = "mcp_jwt_signer.token_cache.";

/// The value of a slot created but not written yet (not empty: a host may answer an empty value as no value).
const PLACEHOLDER: &[u8] = b"-";

/// First bytes of a slot value (format version 1).
const MAGIC: &[u8; 4] = b"mjt1";

/// Bytes of a slot value before the `jti` and the token: magic, digest, `exp`, `jti` length, token length.
const HEADER_BYTES: usize = MAGIC.len() + 32 + 8 + 2 + 4;

/// What identifies one cached token across workers: SHA-256 over the configuration's fingerprint and the
/// worker cache's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedKey([u8; 32]);

impl SharedKey {
    /// The key of `cache_key` under the configuration whose fingerprint is `fingerprint`.
    pub fn new(fingerprint: &[u8; 32], cache_key: &str) -> SharedKey {
        let mut hash = Sha256::new();
        hash.update(fingerprint);
        hash.update(cache_key.as_bytes());
        SharedKey(hash.finalize().into())
    }

    fn slot(&self, slots: usize) -> usize {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        (u64::from_le_bytes(first) % slots.max(1) as u64) as usize
    }
}

/// A lookup's result, and what a publish after it needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A token for this key with enough life left.
    Hit(Cached),
    /// None usable; `cas` is the slot's CAS token when the slot exists.
    Miss {
        /// The CAS token of the slot as read.
        cas: Option<u32>,
    },
    /// The shared cache is off.
    Off,
}

fn slot_name(key: &SharedKey, config: &TokenCacheConfig) -> String {
    format!("{SLOT_PREFIX}{}", key.slot(config.shared_max_entries))
}

/// The value stored for a token.
fn encode(key: &SharedKey, token: &Cached) -> Option<Vec<u8>> {
    let jti_len = u16::try_from(token.jti.len()).ok()?;
    let jwt_len = u32::try_from(token.jwt.len()).ok()?;
    let mut value = Vec::with_capacity(HEADER_BYTES + token.jti.len() + token.jwt.len());
    value.extend_from_slice(MAGIC);
    value.extend_from_slice(&key.0);
    value.extend_from_slice(&token.exp.to_le_bytes());
    value.extend_from_slice(&jti_len.to_le_bytes());
    value.extend_from_slice(&jwt_len.to_le_bytes());
    value.extend_from_slice(token.jti.as_bytes());
    value.extend_from_slice(token.jwt.as_bytes());
    Some(value)
}

/// The token in a slot value, if it is one for `key` (anything else, an empty slot or a value of another format
/// included, is no token).
fn decode(key: &SharedKey, value: &[u8]) -> Option<Cached> {
    let rest = value.strip_prefix(MAGIC.as_slice())?;
    let (digest, rest) = rest.split_first_chunk::<32>()?;
    if digest != &key.0 {
        return None;
    }
    let (exp, rest) = rest.split_first_chunk::<8>()?;
    let (jti_len, rest) = rest.split_first_chunk::<2>()?;
    let (jwt_len, rest) = rest.split_first_chunk::<4>()?;
    let jti_len = u16::from_le_bytes(*jti_len) as usize;
    if rest.len() != jti_len + u32::from_le_bytes(*jwt_len) as usize {
        return None;
    }
    let (jti, jwt) = rest.split_at(jti_len);
    Some(Cached {
        jwt: String::from_utf8(jwt.to_vec()).ok()?,
        jti: String::from_utf8(jti.to_vec()).ok()?,
        exp: u64::from_le_bytes(*exp),
    })
}

/// The shared token for `key`, if one with at least `min_remaining_seconds` of life is stored.
pub fn lookup(host: &dyn Host, config: &TokenCacheConfig, key: &SharedKey, now: u64) -> Found {
    if config.shared_max_entries == 0 {
        return Found::Off;
    }
    let Some((value, cas)) = host.shared_data(&slot_name(key, config)) else {
        return Found::Miss { cas: None };
    };
    match decode(key, &value) {
        Some(t) if t.exp > now && t.exp - now >= config.min_remaining_seconds => Found::Hit(t),
        _ => Found::Miss { cas: Some(cas) },
    }
}

/// Publishes a token just minted after `found` (a [`lookup`] of the same key): into the slot as it was read, or
/// not at all. A token larger than a slot is not shared.
pub fn publish(host: &dyn Host, config: &TokenCacheConfig, key: &SharedKey, found: &Found, token: &Cached) {
    let Found::Miss { cas } = found else { return };
    let Some(value) = encode(key, token) else { return };
    if value.len() > config.shared_entry_bytes {
        return;
    }
    let name = slot_name(key, config);
    let cas = match cas {
        Some(cas) => *cas,
        None => {
            // The slot does not exist yet, and a CAS is ignored for a missing key: create it with a placeholder,
            // then write only with the CAS of what this worker reads back (another publisher's token, if it won,
            // stays).
            if host.shared_data(&name).is_none() && host.set_shared_data(&name, PLACEHOLDER, None).is_err() {
                return;
            }
            match host.shared_data(&name) {
                Some((current, cas)) if current == PLACEHOLDER => cas,
                _ => return,
            }
        }
    };
    match host.set_shared_data(&name, &value, Some(cas)) {
        Ok(()) | Err(SharedDataError::CasMismatch) | Err(SharedDataError::Failed) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    fn config(slots: usize, entry_bytes: usize) -> TokenCacheConfig {
        TokenCacheConfig {
            max_entries: 16,
            max_bytes: 1 << 20,
            min_remaining_seconds: 150,
            shared_max_entries: slots,
            shared_entry_bytes: entry_bytes,
        }
    }

    fn token(jwt: &str, exp: u64) -> Cached {
        Cached {
            jwt: jwt.into(),
            jti: format!("jti-{jwt}"),
            exp,
        }
    }

    const FP: [u8; 32] = [7; 32];

    #[test]
    fn a_token_published_by_one_worker_is_found_by_another() {
        let c = config(64, 4096);
        let a = FakeHost::default();
        let b = FakeHost::with_shared(a.shared.clone());
        let key = SharedKey::new(&FP, "kid|{\"sub\":\"alice\"}");
        let found = lookup(&a, &c, &key, 1000);
        assert_eq!(found, Found::Miss { cas: None });
        publish(&a, &c, &key, &found, &token("t1", 1300));
        assert_eq!(lookup(&b, &c, &key, 1000), Found::Hit(token("t1", 1300)));
        // Too little life left: a miss, as in the worker cache.
        assert!(matches!(lookup(&b, &c, &key, 1151), Found::Miss { cas: Some(_) }));
        assert!(matches!(lookup(&b, &c, &key, 1400), Found::Miss { cas: Some(_) }));
    }

    #[test]
    fn a_slot_value_is_the_header_then_the_jti_then_the_token() {
        let key = SharedKey::new(&FP, "k");
        let t = token("abc.def.ghi", 1300);
        let value = encode(&key, &t).unwrap();
        // magic (4), digest (32), exp (8), jti length (2), token length (4).
        assert_eq!(HEADER_BYTES, 50);
        assert_eq!(value.len(), HEADER_BYTES + t.jti.len() + t.jwt.len());
        assert_eq!(&value[HEADER_BYTES..HEADER_BYTES + t.jti.len()], t.jti.as_bytes());
        assert_eq!(decode(&key, &value), Some(t));
    }

    #[test]
    fn a_token_that_exactly_fills_a_slot_is_shared() {
        let key = SharedKey::new(&FP, "k");
        let t = token("t", 1300);
        let exact = encode(&key, &t).unwrap().len();
        for (entry_bytes, shared) in [(exact, true), (exact - 1, false)] {
            let c = config(64, entry_bytes);
            let host = FakeHost::default();
            let found = lookup(&host, &c, &key, 1000);
            publish(&host, &c, &key, &found, &t);
            assert_eq!(
                matches!(lookup(&host, &c, &key, 1000), Found::Hit(_)),
                shared,
                "{entry_bytes}"
            );
        }
    }

    #[test]
    fn a_token_at_its_exp_second_is_never_served() {
        let mut c = config(64, 4096);
        c.min_remaining_seconds = 0;
        let host = FakeHost::default();
        let key = SharedKey::new(&FP, "k");
        let found = lookup(&host, &c, &key, 1000);
        publish(&host, &c, &key, &found, &token("t", 1300));
        assert_eq!(lookup(&host, &c, &key, 1299), Found::Hit(token("t", 1300)));
        assert!(matches!(lookup(&host, &c, &key, 1300), Found::Miss { cas: Some(_) }));
    }

    #[test]
    fn no_claim_set_key_or_configuration_reads_another_token() {
        // One slot: every key lands in it, so only the digest tells them apart.
        let c = config(1, 4096);
        let host = FakeHost::default();
        let alice = SharedKey::new(&FP, "kid|alice");
        publish(&host, &c, &alice, &lookup(&host, &c, &alice, 0), &token("ta", 1300));
        for other in [
            SharedKey::new(&FP, "kid|bob"),
            SharedKey::new(&FP, "kid2|alice"),
            SharedKey::new(&[8; 32], "kid|alice"),
        ] {
            assert!(matches!(lookup(&host, &c, &other, 1000), Found::Miss { .. }));
        }
        assert_eq!(lookup(&host, &c, &alice, 1000), Found::Hit(token("ta", 1300)));
        // A newer claim set in the same slot replaces the older one.
        let bob = SharedKey::new(&FP, "kid|bob");
        publish(&host, &c, &bob, &lookup(&host, &c, &bob, 1000), &token("tb", 1300));
        assert_eq!(lookup(&host, &c, &bob, 1000), Found::Hit(token("tb", 1300)));
        assert!(matches!(lookup(&host, &c, &alice, 1000), Found::Miss { .. }));
    }

    #[test]
    fn of_two_racing_publishers_the_first_stays() {
        let c = config(8, 4096);
        let a = FakeHost::default();
        let b = FakeHost::with_shared(a.shared.clone());
        let key = SharedKey::new(&FP, "kid|alice");
        // Both miss before either publishes (the slot does not exist yet)...
        let (fa, fb) = (lookup(&a, &c, &key, 1000), lookup(&b, &c, &key, 1000));
        publish(&a, &c, &key, &fa, &token("ta", 1300));
        publish(&b, &c, &key, &fb, &token("tb", 1300));
        assert_eq!(lookup(&b, &c, &key, 1000), Found::Hit(token("ta", 1300)));
        // ... and with the slot existing (stale entry), the CAS decides the same way.
        let (fa, fb) = (lookup(&a, &c, &key, 1200), lookup(&b, &c, &key, 1200));
        publish(&b, &c, &key, &fb, &token("tb2", 1500));
        publish(&a, &c, &key, &fa, &token("ta2", 1500));
        assert_eq!(lookup(&a, &c, &key, 1200), Found::Hit(token("tb2", 1500)));
    }

    #[test]
    fn bounded_by_slots_and_slot_size() {
        let c = config(4, 64);
        let host = FakeHost::default();
        let big = SharedKey::new(&FP, "big");
        publish(
            &host,
            &c,
            &big,
            &lookup(&host, &c, &big, 0),
            &token(&"x".repeat(64), 1300),
        );
        assert!(
            matches!(lookup(&host, &c, &big, 0), Found::Miss { .. }),
            "larger than a slot: not shared"
        );
        for i in 0..100 {
            let key = SharedKey::new(&FP, &format!("k{i}"));
            publish(&host, &c, &key, &lookup(&host, &c, &key, 0), &token("t", 1300));
        }
        let shared = host.shared.borrow();
        assert!(shared.len() <= 4, "{} slots", shared.len());
        assert!(shared.values().all(|(v, _)| v.len() <= 64));
        assert_eq!(lookup(&host, &config(0, 0), &big, 0), Found::Off);
    }

    #[test]
    fn a_malformed_slot_is_no_token() {
        let key = SharedKey::new(&FP, "k");
        let good = encode(&key, &token("t", 9)).unwrap();
        for cut in 0..good.len() {
            assert_eq!(decode(&key, &good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode(&key, &good), Some(token("t", 9)));
        let mut bad = good.clone();
        bad[0] = b'x';
        assert_eq!(decode(&key, &bad), None);
    }
}
