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

/// Letters and digits, for device IDs, session IDs, media IDs and room ID localparts.
pub fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
