//! Small helpers every module may use; this module depends on nothing else in the crate, so
//! using it never creates an import cycle.

use rand::{Rng, distr::Alphanumeric};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lower-case hex digits of `bytes` (token hashes, digests as IDs).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Letters and digits, for device IDs, session IDs, media IDs and room ID localparts.
pub fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Holders per key, up to a bound per key (e.g. open streams per user): [`Slots::take`] hands
/// out a [`Slot`] that gives itself back when dropped.
#[derive(Default)]
pub struct Slots {
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One held slot of a [`Slots`].
pub struct Slot {
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    key: String,
}

impl Slots {
    /// A slot for `key` if it holds fewer than `max`.
    pub fn take(&self, key: &str, max: usize) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(key.to_owned()).or_default();
        if *count >= max {
            if *count == 0 {
                held.remove(key);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            held: self.held.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Whether a user ID (`@localpart:server_name`) belongs to `server_name`. A localpart holds no
/// `:`, a server name may (`host:port`): the ID splits at its first colon.
pub fn is_user_of(user_id: &str, server_name: &str) -> bool {
    user_id
        .split_once(':')
        .is_some_and(|(_, server)| server == server_name)
}

/// A map for hot paths keyed by IDs: hashed with foldhash, randomly seeded (std's
/// SipHash is several times slower on short keys, and a per-member map is hashed once per
/// member and event).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set of [`FastMap`].
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    use super::{Slots, is_user_of};

    #[test]
    fn slots_are_bounded_per_key_and_given_back() {
        let slots = Slots::default();
        let a1 = slots.take("a", 2).unwrap();
        let _a2 = slots.take("a", 2).unwrap();
        assert!(slots.take("a", 2).is_none());
        assert!(slots.take("b", 2).is_some());
        drop(a1);
        assert!(slots.take("a", 2).is_some());
        assert!(slots.take("c", 0).is_none());
        assert!(slots.held.lock().unwrap().get("c").is_none());
    }

    #[test]
    fn user_ids_split_at_their_first_colon() {
        assert!(is_user_of("@a:hs", "hs"));
        assert!(is_user_of("@a:localhost:8448", "localhost:8448"));
        assert!(!is_user_of("@a:localhost:8448", "8448"));
        assert!(!is_user_of("@a:evil.localhost:8448", "localhost:8448"));
        assert!(!is_user_of("@a:hs.other", "hs"));
        assert!(!is_user_of("no colon", "hs"));
    }
}
