//! Hearth's black-box conformance suite: a harness that starts (or finds) a homeserver, a small
//! Matrix client whose every JSON response is validated against the Matrix specification's
//! schemas, a fake remote homeserver for the Server-Server API (`federation`), and the test
//! groups in `tests/suite/` (one module per spec module).
//!
//! Run against Hearth: `cargo test -p conformance-tests` (spawns `target/debug/hearth`);
//! against any running server: `HS_URL=http://127.0.0.1:8008 cargo test -p conformance-tests`.
//! `cargo run -p conformance-tests --bin conformance-report` prints a per-module summary.

pub mod client;
pub mod e2ee;
pub mod federation;
pub mod harness;
pub mod spec;

pub use client::{Client, Response, SyncOpts, V3, enc};
pub use harness::{ServerKind, TestServer};

use std::sync::atomic::{AtomicU64, Ordering};

/// A suffix unique across processes and calls: `<pid>-<counter>-<time>` (lowercase, URL-safe).
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{n}-{:x}", std::process::id(), nanos)
}

/// Retry `f` (every 100 ms, for up to 10 s) until it yields `Some`; panics with `what` otherwise.
/// For effects that servers may apply asynchronously (profile propagation, directory updates).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
