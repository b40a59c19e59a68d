//! Per-user account data, global (`room_id = ''`) and per room, with its own stream.

use sqlx::{Any, Row, Transaction};

use super::{Store, StoreResult, Stream, q};

impl Store {
    /// Stores account data and returns its new stream position.
    pub async fn put_account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
        content: &str,
    ) -> StoreResult<i64> {
        let mut tx = self.begin_stream_write(Stream::AccountData).await?;
        let stream = Self::put_account_data_in(&mut tx, user_id, room_id, data_type, content).await?;
        tx.commit().await?;
        Ok(stream)
    }

    /// Reads one account data entry, lets `change` compute its new content from the current
    /// one, and stores that, all in one transaction that holds the account data stream's write
    /// lock: concurrent read-modify-writes (tags, push rules) run one after another and lose no
    /// update. When `change` fails nothing is written and its error comes back inside `Ok`.
    /// On success: the new stream position and what `change` returned beside the content.
    pub async fn update_account_data<T, E>(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
        change: impl FnOnce(Option<String>) -> Result<(String, T), E>,
    ) -> StoreResult<Result<(i64, T), E>> {
        let mut tx = self.begin_stream_write(Stream::AccountData).await?;
        let current = q("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3")
            .bind(user_id.to_owned())
            .bind(room_id.unwrap_or("").to_owned())
            .bind(data_type.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        let (content, extra) = match change(current) {
            Ok(changed) => changed,
            Err(error) => return Ok(Err(error)),
        };
        let stream = Self::put_account_data_in(&mut tx, user_id, room_id, data_type, &content).await?;
        tx.commit().await?;
        Ok(Ok((stream, extra)))
    }

    async fn put_account_data_in(
        tx: &mut Transaction<'static, Any>,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
        content: &str,
    ) -> StoreResult<i64> {
        let stream: i64 = q("INSERT INTO account_data_stream (user_id) VALUES ($1) RETURNING stream_id")
            .bind(user_id.to_owned())
            .fetch_one(&mut **tx)
            .await?
            .get(0);
        q("INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES ($1, $2, $3, $4, $5) \
           ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream_id = excluded.stream_id")
        .bind(user_id.to_owned())
        .bind(room_id.unwrap_or("").to_owned())
        .bind(data_type.to_owned())
        .bind(content.to_owned())
        .bind(stream)
        .execute(&mut **tx)
        .await?;
        Ok(stream)
    }

    /// Like `account_data`, with the stream position of the entry's last change.
    pub async fn account_data_at(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
    ) -> StoreResult<Option<(String, i64)>> {
        let row = q(
            "SELECT content, stream_id FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
        )
        .bind(user_id.to_owned())
        .bind(room_id.unwrap_or("").to_owned())
        .bind(data_type.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub async fn account_data(
        &self,
        user_id: &str,
        room_id: Option<&str>,
        data_type: &str,
    ) -> StoreResult<Option<String>> {
        let row = q("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3")
            .bind(user_id.to_owned())
            .bind(room_id.unwrap_or("").to_owned())
            .bind(data_type.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Account data changed in `(after, upto]`: (room ID or '', type, content).
    pub async fn account_data_changes(
        &self,
        user_id: &str,
        after: i64,
        upto: i64,
    ) -> StoreResult<Vec<(String, String, String)>> {
        let rows = q(
            "SELECT room_id, type, content FROM account_data WHERE user_id = $1 AND stream_id > $2 \
                      AND stream_id <= $3 ORDER BY stream_id",
        )
        .bind(user_id.to_owned())
        .bind(after)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    pub async fn max_account_data_stream(&self) -> StoreResult<i64> {
        let row = q("SELECT MAX(stream_id) FROM account_data_stream")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<Option<i64>, _>(0).unwrap_or(0))
    }
}
