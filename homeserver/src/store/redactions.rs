//! Received redactions waiting for their target (room versions 3+, "Handling redactions"): a
//! redaction whose sender lacks the redact level applies only to an event of their own server,
//! which is not known until the target arrives.

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
    ) -> StoreResult<()> {
        q(
            "INSERT INTO redactions_awaiting_target (target_id, redaction_id, room_id, sender_server) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(target_id.to_owned())
        .bind(redaction_id.to_owned())
        .bind(room_id.to_owned())
        .bind(sender_server.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
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
        let waiting = q("DELETE FROM redactions_awaiting_target WHERE target_id = $1 \
                         RETURNING redaction_id, room_id, sender_server")
        .bind(event_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
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
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(applied)
    }
}
