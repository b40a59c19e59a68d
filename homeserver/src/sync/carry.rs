//! Where a device's last `/sync` step left off, so that the next request from its `next_batch`
//! starts as a woken computation (only what moved since) instead of a full one.
//!
//! A client that keeps up with a busy room sends a new long-poll the moment the last one
//! answered, and finds something new at once: without this, every such request computed
//! everything the user can see (memberships, account data, to-device, device lists, key counts,
//! every room), which is what delivery at a high message rate spent its time on. The notifier
//! remembers for every key the position of its last notification, so a continuation only needs
//! the notifier position its response was computed at (`mark`) and what that computation
//! covered (`Baseline`): the keys moved since `mark` say what to compute again, exactly as for a
//! long-poll woken in place. Anything but joined rooms and presence moving means a full
//! computation, as for a woken one.
//!
//! A step that found nothing and starts waiting keeps one too, from its own `since`: the
//! device's identical requests (tabs, a client's several sync loops, a retry) start from its
//! baseline instead of each computing in full, and share it while they wait.
//!
//! A cache: a request that does not continue the kept step (another token, filter or
//! `full_state`), a restart, or an evicted entry means a full computation, never a wrong one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::Baseline;
use crate::stream::StreamToken;

/// Devices kept at most; past it, entries older than [`MAX_AGE`] are dropped, then nothing new is
/// kept until some expire (those devices' requests compute in full).
const MAX_DEVICES: usize = 200_000;
/// A continuation older than this is not worth its memory: the client went away.
const MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// A full table is swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Continuations {
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_device: HashMap<(Arc<str>, Arc<str>), Continuation>,
    /// When the full table was last swept of old entries (a sweep visits every entry).
    swept: Option<Instant>,
}

#[derive(Clone)]
pub(super) struct Continuation {
    /// The `next_batch` this continues from.
    pub token: StreamToken,
    /// The request's `filter` parameter as sent (an inline filter or a stored filter's ID,
    /// which never changes).
    pub filter: Option<String>,
    /// The notifier's position before the step's positions were read.
    pub mark: u64,
    pub base: Arc<Baseline>,
    kept: Instant,
}

impl Continuation {
    pub(super) fn new(token: StreamToken, filter: Option<String>, mark: u64, base: Arc<Baseline>) -> Self {
        Self {
            token,
            filter,
            mark,
            base,
            kept: Instant::now(),
        }
    }
}

impl Continuations {
    /// The kept step that a request from `since` with `filter` continues, if any.
    pub(super) fn find(
        &self,
        user_id: &str,
        device_id: &str,
        since: StreamToken,
        filter: Option<&str>,
    ) -> Option<Continuation> {
        let kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let kept = kept.by_device.get(&(Arc::from(user_id), Arc::from(device_id)))?;
        (kept.token == since && kept.filter.as_deref() == filter && kept.kept.elapsed() < MAX_AGE)
            .then(|| kept.clone())
    }

    /// Keeps a device's latest step (replacing the one before).
    pub(super) fn keep(&self, user_id: &str, device_id: &str, continuation: Continuation) {
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::from(user_id), Arc::from(device_id));
        if kept.by_device.len() >= MAX_DEVICES && !kept.by_device.contains_key(&key) {
            if kept.swept.is_some_and(|at| at.elapsed() < SWEEP_EVERY) {
                return;
            }
            kept.by_device.retain(|_, c| c.kept.elapsed() < MAX_AGE);
            kept.swept = Some(Instant::now());
            if kept.by_device.len() >= MAX_DEVICES {
                return;
            }
        }
        kept.by_device.insert(key, continuation);
    }
}
