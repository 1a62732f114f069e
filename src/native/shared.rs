//! What every worker of the Envoy process shares: proxy-wasm's "shared data", natively a process-wide map.
//!
//! One `.so` is loaded once per process, so a `static` is shared by the main thread (where filter configs are
//! created) and every worker thread. The semantics are the fake host's and proxy-wasm's: each key holds bytes and a
//! CAS token; a write with a CAS succeeds only if the stored token still matches; a write without one overwrites.
//! (Natively the map could offer create-if-absent; it does not, so the pure side behaves as under wasm.)

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::host::SharedDataError;

type Map = HashMap<String, (Vec<u8>, u32)>;

fn map() -> MutexGuard<'static, Map> {
    static SHARED: OnceLock<Mutex<Map>> = OnceLock::new();
    let lock = SHARED.get_or_init(|| Mutex::new(Map::new()));
    // A panic while holding the lock (caught at the entry point) leaves the map consistent: every write is a
    // single insert.
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A shared value and its CAS token.
pub fn get(key: &str) -> Option<(Vec<u8>, u32)> {
    map().get(key).cloned()
}

/// Stores a shared value; with `cas`, only if the stored value still carries that token.
pub fn set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedDataError> {
    let mut map = map();
    let next = match (map.get(key), cas) {
        (Some((_, stored)), Some(expected)) if *stored != expected => return Err(SharedDataError::CasMismatch),
        (Some((_, stored)), _) => stored.wrapping_add(1).max(1),
        (None, _) => 1,
    };
    map.insert(key.to_string(), (value.to_vec(), next));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_semantics_are_the_fake_hosts() {
        let key = "native-shared-test/cas";
        assert_eq!(get(key), None);
        set(key, b"a", None).unwrap();
        let (value, cas) = get(key).unwrap();
        assert_eq!((value.as_slice(), cas), (&b"a"[..], 1));
        assert_eq!(set(key, b"b", Some(cas + 7)), Err(SharedDataError::CasMismatch));
        set(key, b"b", Some(cas)).unwrap();
        assert_eq!(get(key).unwrap(), (b"b".to_vec(), 2));
        // Without a CAS, a write overwrites (and a missing key ignores the CAS, as proxy-wasm does).
        set(key, b"c", None).unwrap();
        assert_eq!(get(key).unwrap().1, 3);
        set("native-shared-test/new", b"x", Some(42)).unwrap();
        assert_eq!(get("native-shared-test/new").unwrap().1, 1);
    }

    #[test]
    fn every_thread_sees_one_map() {
        let key = "native-shared-test/threads";
        set(key, b"main", None).unwrap();
        let seen = std::thread::spawn(move || get(key)).join().unwrap();
        assert_eq!(seen.unwrap().0, b"main");
    }

    #[test]
    fn plugins_on_two_threads_sign_with_one_generated_key() {
        use crate::plugin::Plugin;
        let config = br#"{"algorithm":"EdDSA","issuer":"https://shared-key-test.example"}"#;
        let kid = |_: ()| {
            let loaded = Plugin::load(config, None, &super::super::host::ProcessHost).unwrap();
            let signer = loaded.plugin.keys.signer(&super::super::host::ProcessHost).unwrap();
            signer.kid().to_string()
        };
        let first = kid(());
        let other = std::thread::spawn(move || kid(())).join().unwrap();
        assert_eq!(first, other);
    }
}
