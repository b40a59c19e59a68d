//! Received redactions waiting for their target (room versions 3+, "Handling redactions"): a
//! redaction whose sender lacks the redact level applies only to an event of their own server,
//! which is not known until the target arrives. Rows whose target never comes are pruned
//! (`prune_awaiting_redactions`). How many rows there are is kept in memory (`Store::
//! awaiting_redactions`, read once, then moved by every change, counted up before an insert so
//! it never reads low), so an arriving event costs no query while nothing waits.

use std::sync::atomic::{AtomicI64, Ordering};

use sqlx::Row;

use super::{Store, StoreResult, q};

impl Store {
    /// Remembers that `redaction_id`, by a user of `sender_server`, redacts `target_id` (not
    /// here yet) if that event turns out to be of the same server.
    pub async fn await_redaction_target(
        &self,
        target_id: &str,
        redaction_id: &str,
        room_id: &str,
        sender_server: &str,
        received_ts: i64,
    ) -> StoreResult<()> {
        let count = self.awaiting_count().await?;
        count.fetch_add(1, Ordering::SeqCst);
        let inserted = q(
            "INSERT INTO redactions_awaiting_target (target_id, redaction_id, room_id, sender_server, \
             received_ts) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(target_id.to_owned())
        .bind(redaction_id.to_owned())
        .bind(room_id.to_owned())
        .bind(sender_server.to_owned())
        .bind(received_ts)
        .execute(&self.writer)
        .await;
        if !matches!(&inserted, Ok(r) if r.rows_affected() > 0) {
            count.fetch_sub(1, Ordering::SeqCst);
        }
        inserted?;
        Ok(())
    }

    /// Forgets the redactions that started waiting before `before` (ms): their targets never
    /// came. Returns how many.
    pub async fn prune_awaiting_redactions(&self, before: i64) -> StoreResult<u64> {
        let count = self.awaiting_count().await?;
        if count.load(Ordering::SeqCst) == 0 {
            return Ok(0);
        }
        let pruned = q("DELETE FROM redactions_awaiting_target WHERE received_ts < $1")
            .bind(before)
            .execute(&self.writer)
            .await?
            .rows_affected();
        count.fetch_sub(pruned as i64, Ordering::SeqCst);
        Ok(pruned)
    }

    /// The in-memory row count, read from the table the first time.
    async fn awaiting_count(&self) -> StoreResult<&AtomicI64> {
        let count = &*self.awaiting_redactions;
        if count.load(Ordering::SeqCst) < 0 {
            let rows: i64 = q("SELECT COUNT(*) FROM redactions_awaiting_target")
                .fetch_one(&self.pool)
                .await?
                .get(0);
            // A concurrent first read may have won (and counted since): its value stands.
            let _ = count.compare_exchange(-1, rows, Ordering::SeqCst, Ordering::SeqCst);
        }
        Ok(count)
    }

    /// `event_id` (of `room_id`, sent by a user of `sender_server`) is arriving: the redactions
    /// that waited for it and were sent from that server now name it (their `redacts` column,
    /// which is what applies a redaction); the others never will. Returns how many now apply.
    pub async fn apply_awaiting_redactions(
        &self,
        event_id: &str,
        room_id: &str,
        sender_server: &str,
    ) -> StoreResult<u64> {
        let count = self.awaiting_count().await?;
        if count.load(Ordering::SeqCst) == 0 {
            return Ok(0);
        }
        let waiting = q("DELETE FROM redactions_awaiting_target WHERE target_id = $1 \
                         RETURNING redaction_id, room_id, sender_server")
        .bind(event_id.to_owned())
        .fetch_all(&self.writer)
        .await?;
        count.fetch_sub(waiting.len() as i64, Ordering::SeqCst);
        let mut applied = 0;
        for row in waiting {
            let (redaction_id, room, server): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            if room != room_id || server != sender_server {
                continue;
            }
            // Held back from clients while it waited (`outlier = 2`): shown from now on.
            applied += q(
                "UPDATE events SET redacts = $1, outlier = 0 WHERE event_id = $2 AND room_id = $3 \
                          AND redacts IS NULL",
            )
            .bind(event_id.to_owned())
            .bind(redaction_id)
            .bind(room_id.to_owned())
            .execute(&self.writer)
            .await?
            .rows_affected();
        }
        Ok(applied)
    }
}
