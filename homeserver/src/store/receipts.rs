//! Read receipts.

use sqlx::Row;

use super::{Store, StoreResult, Stream, q};

/// A stored receipt.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
}

impl Store {
    /// Stores a receipt, replacing the user's previous one of that type and thread; returns its
    /// stream position.
    pub async fn put_receipt(
        &self,
        room_id: &str,
        user_id: &str,
        receipt_type: &str,
        thread_id: &str,
        event_id: &str,
        ts: i64,
    ) -> StoreResult<i64> {
        let mut tx = self.begin_stream_write(Stream::Receipts).await?;
        let stream: i64 = q("INSERT INTO receipts_stream (room_id) VALUES ($1) RETURNING stream_id")
            .bind(room_id.to_owned())
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        q(
            "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_id) \
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (room_id, user_id, receipt_type, thread_id) \
           DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_id = excluded.stream_id",
        )
        .bind(room_id.to_owned())
        .bind(user_id.to_owned())
        .bind(receipt_type.to_owned())
        .bind(thread_id.to_owned())
        .bind(event_id.to_owned())
        .bind(ts)
        .bind(stream)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stream)
    }

    /// Receipts in a room that changed in `(after, upto]`.
    pub async fn receipts_since(&self, room_id: &str, after: i64, upto: i64) -> StoreResult<Vec<ReceiptRow>> {
        let rows = q(
            "SELECT user_id, receipt_type, thread_id, event_id, ts FROM receipts \
                      WHERE room_id = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id",
        )
        .bind(room_id.to_owned())
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ReceiptRow {
                user_id: r.get(0),
                receipt_type: r.get(1),
                thread_id: r.get(2),
                event_id: r.get(3),
                ts: r.get(4),
            })
            .collect())
    }

    /// The stream position of the event a user's receipt of a type points at, if any.
    pub async fn receipt_position(
        &self,
        room_id: &str,
        user_id: &str,
        receipt_type: &str,
        thread_id: &str,
    ) -> StoreResult<Option<i64>> {
        let row = q(
            "SELECT e.stream_ordering FROM receipts r JOIN events e ON e.event_id = r.event_id \
                     WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type = $3 AND r.thread_id = $4",
        )
        .bind(room_id.to_owned())
        .bind(user_id.to_owned())
        .bind(receipt_type.to_owned())
        .bind(thread_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn max_receipts_stream(&self) -> StoreResult<i64> {
        let row = q("SELECT MAX(stream_id) FROM receipts_stream")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0).unwrap_or(0))
    }
}
