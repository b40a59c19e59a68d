//! The incremental sync engine's memory: what `/sync` knows without asking the database.

use super::stats::SyncStats;

#[derive(Default)]
pub struct SyncEngine {
    pub stats: SyncStats,
}
