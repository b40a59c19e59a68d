//! What `/sync` computations cost, counted: how many ran, how many database queries a woken
//! one made, how much room work they did, how often the formatted-event cache answered.
//! Read by tests and `hearth-bench` through `GET /_hearth/testing/v1/sync_stats` (on only with
//! `testing.sync_stats`), and logged per computation at `debug`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Default)]
pub struct SyncStats {
    /// Computations over everything the user can see (every first step of a request, and a
    /// woken one when more than joined rooms moved).
    pub full_computes: AtomicU64,
    /// Computations after a wake-up (of only the joined rooms that moved, when that is all).
    pub woken_computes: AtomicU64,
    /// First computations of requests that continued a device's previous step (carry.rs).
    pub continued_computes: AtomicU64,
    /// Times a request found nothing new and started waiting for the notifier.
    pub waits: AtomicU64,
    /// Database queries of the latest woken computation, and of all of them.
    pub last_woken_queries: AtomicU64,
    pub woken_queries: AtomicU64,
    /// Rooms whose timeline was read (a scan through `RoomAccess`), over all computations.
    pub rooms_scanned: AtomicU64,
    /// Rooms left out because the in-memory positions say nothing was appended after the token.
    pub rooms_skipped: AtomicU64,
    /// Events formatted from the shared cache, and formatted afresh.
    pub format_hits: AtomicU64,
    pub format_misses: AtomicU64,
    /// Timeline reads answered from the recent-event rings instead of the database.
    pub ring_hits: AtomicU64,
    /// Woken steps answered by an identical step's computation (shared.rs), not computed.
    pub shared_answers: AtomicU64,
}

/// A snapshot, as served.
#[derive(Serialize)]
pub struct StatsSnapshot {
    pub full_computes: u64,
    pub woken_computes: u64,
    pub continued_computes: u64,
    pub waits: u64,
    pub last_woken_queries: u64,
    pub woken_queries: u64,
    pub rooms_scanned: u64,
    pub rooms_skipped: u64,
    pub format_hits: u64,
    pub format_misses: u64,
    pub ring_hits: u64,
    pub shared_answers: u64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl SyncStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            full_computes: get(&self.full_computes),
            woken_computes: get(&self.woken_computes),
            continued_computes: get(&self.continued_computes),
            waits: get(&self.waits),
            last_woken_queries: get(&self.last_woken_queries),
            woken_queries: get(&self.woken_queries),
            rooms_scanned: get(&self.rooms_scanned),
            rooms_skipped: get(&self.rooms_skipped),
            format_hits: get(&self.format_hits),
            format_misses: get(&self.format_misses),
            ring_hits: get(&self.ring_hits),
            shared_answers: get(&self.shared_answers),
        }
    }

    /// Records a computation (after a wake-up, the first of a continued request, or neither;
    /// of everything or of what moved) and the queries it made.
    pub(crate) fn computed(&self, woken: bool, continued: bool, full: bool, queries: u64) {
        if full {
            bump(&self.full_computes);
        }
        if continued {
            bump(&self.continued_computes);
        }
        if woken {
            bump(&self.woken_computes);
            self.last_woken_queries.store(queries, Ordering::Relaxed);
            self.woken_queries.fetch_add(queries, Ordering::Relaxed);
        }
    }
}
