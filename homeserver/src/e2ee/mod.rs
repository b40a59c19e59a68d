//! End-to-end encryption, the server's side: device keys, one-time and fallback keys
//! (`keys.rs`), server-side key backups (`backup.rs`), cross-signing keys and signatures (`cross_signing.rs`), who must hear that a
//! user's devices changed (`device_lists.rs`) and to-device messages (`to_device.rs`).
//!
//! The server checks signatures (`hearth_e2ee::verify`) but holds no secret. Remote users are
//! answered in `failures` today; federation will fetch them at the seams marked "remote".

pub mod backup;
pub mod cross_signing;
pub mod device_lists;
pub mod keys;
pub mod to_device;

use serde_json::Value;

use crate::error::{Error, Result};

/// Most one-time keys one `/keys/upload` may carry.
pub const MAX_ONE_TIME_KEYS_PER_UPLOAD: usize = 1000;
/// Most unclaimed one-time keys a device may hold per algorithm.
pub const MAX_ONE_TIME_KEYS_STORED: u64 = 1000;
/// Most users one `/keys/query` may name, and most devices one `/keys/claim` may name.
pub const MAX_QUERIED: usize = 1000;
/// Most (user, device) entries one `sendToDevice` may carry.
pub const MAX_TO_DEVICE_RECIPIENTS: usize = 1000;
/// Most to-device messages queued for one device by default (`limits.max_pending_to_device`);
/// senders past it get 429.
pub const MAX_PENDING_TO_DEVICE: i64 = 10_000;
/// Most to-device messages one sync delivers.
pub const TO_DEVICE_PER_SYNC: i64 = 100;
/// Most signed objects one `/keys/signatures/upload` may carry.
pub const MAX_SIGNATURE_UPLOADS: usize = 1000;

/// Splits a key ID `algorithm:key_id`, refusing malformed ones.
pub fn split_key_id(id: &str) -> Result<(&str, &str)> {
    let bad = || Error::invalid_param(format!("Malformed key ID {id:?}: expected algorithm:key_id"));
    let (algorithm, key_id) = id.split_once(':').ok_or_else(bad)?;
    let algorithm_ok = !algorithm.is_empty()
        && algorithm.len() <= 64
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let key_ok = !key_id.is_empty()
        && key_id.len() <= 255
        && !key_id.chars().any(|c| c.is_control() || c.is_whitespace());
    if algorithm_ok && key_ok {
        Ok((algorithm, key_id))
    } else {
        Err(bad())
    }
}

/// The object without `signatures` and `unsigned`: what a signature covers.
pub(crate) fn signed_part(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    object
}

/// Whether `user_id` is one of this server's users (others are remote).
pub(crate) fn is_local(svc: &crate::services::Services, user_id: &str) -> bool {
    crate::util::is_user_of(user_id, svc.server_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids() {
        assert_eq!(
            split_key_id("signed_curve25519:AAAAQ").unwrap(),
            ("signed_curve25519", "AAAAQ")
        );
        assert_eq!(split_key_id("ed25519:a:b").unwrap(), ("ed25519", "a:b"));
        for bad in ["", "nocolon", ":id", "alg:", "al g:id", "alg:i d"] {
            assert!(split_key_id(bad).is_err(), "{bad}");
        }
    }
}
