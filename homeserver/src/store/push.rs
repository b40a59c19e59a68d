//! Push notifications: per-(user, event) push rule outcomes and pushers.

use sqlx::{Any, Row, Transaction, any::AnyRow};

use super::{Backend, Store, StoreResult, q, qs};

/// One user's push rule outcome for one event (only events that notify are stored).
#[derive(Debug, Clone)]
pub struct PushActionRow {
    pub event_id: String,
    pub room_id: String,
    pub user_id: String,
    pub stream_ordering: i64,
    pub highlight: bool,
    /// Thread root of an `m.thread` relation; `None` for the main timeline.
    pub thread_id: Option<String>,
    /// The matched rule's actions, as JSON.
    pub actions: String,
}

/// A stored pusher.
#[derive(Debug, Clone)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// PusherData JSON.
    pub data: String,
    pub pushkey_ts: i64,
    /// The device whose token set it; the pusher goes with the device.
    pub device_id: Option<String>,
}

const PUSHER_COLUMNS: &str = "user_id, app_id, pushkey, kind, app_display_name, device_display_name, \
                              profile_tag, lang, data, pushkey_ts, device_id";

fn pusher_row(r: AnyRow) -> PusherRow {
    PusherRow {
        user_id: r.get(0),
        app_id: r.get(1),
        pushkey: r.get(2),
        kind: r.get(3),
        app_display_name: r.get(4),
        device_display_name: r.get(5),
        profile_tag: r.get(6),
        lang: r.get(7),
        data: r.get(8),
        pushkey_ts: r.get(9),
        device_id: r.get(10),
    }
}

/// (thread ID, notifications, highlights) for one room.
pub type ThreadCounts = Vec<(Option<String>, i64, i64)>;

/// The actions most stored outcomes have, stored as NULL (migration 0030).
const PLAIN_NOTIFY: &str = r#"["notify"]"#;

/// Push outcomes per insert statement (a bound on one statement's JSON parameter).
const PUSH_ROWS_PER_STATEMENT: usize = 5_000;

impl Store {
    /// Records the outcomes of one event for several users.
    pub async fn insert_push_actions(&self, rows: &[PushActionRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let rows: Vec<&PushActionRow> = rows.iter().collect();
        Self::insert_push_actions_in(&mut tx, self.backend, &rows).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The same inside a caller's transaction (the events' own, see `append_events`). The rows
    /// travel as one JSON array per statement, expanded by the database: a batch of messages to
    /// large rooms carries thousands of rows, and binding seven parameters each (and preparing a
    /// new VALUES list every time) cost more than the rows' insertion. On SQLite `jsonb_each`
    /// hands each row over in binary form, so `->>` does not parse it again.
    pub(super) async fn insert_push_actions_in(
        tx: &mut Transaction<'static, Any>,
        backend: Backend,
        rows: &[&PushActionRow],
    ) -> StoreResult<()> {
        let sql = match backend {
            Backend::Sqlite => {
                "INSERT INTO event_push_actions (room_id, user_id, stream_ordering, notify, highlight, \
                 thread_id, actions) SELECT value ->> 0, value ->> 1, value ->> 2, 1, value ->> 3, \
                 value ->> 4, value ->> 5 FROM jsonb_each($1) WHERE true \
                 ON CONFLICT (user_id, stream_ordering) DO NOTHING"
            }
            Backend::Postgres => {
                "INSERT INTO event_push_actions (room_id, user_id, stream_ordering, notify, highlight, \
                 thread_id, actions) SELECT r ->> 0, r ->> 1, (r ->> 2)::BIGINT, 1, (r ->> 3)::BIGINT, \
                 r ->> 4, r ->> 5 FROM jsonb_array_elements($1::jsonb) AS r \
                 ON CONFLICT (user_id, stream_ordering) DO NOTHING"
            }
        };
        for chunk in rows.chunks(PUSH_ROWS_PER_STATEMENT) {
            let array: Vec<_> = chunk
                .iter()
                .map(|row| {
                    (
                        &row.room_id,
                        &row.user_id,
                        row.stream_ordering,
                        i64::from(row.highlight),
                        &row.thread_id,
                        (row.actions != PLAIN_NOTIFY).then_some(&row.actions),
                    )
                })
                .collect();
            let json = serde_json::to_string(&array).map_err(|e| sqlx::Error::Encode(e.into()))?;
            q(sql).bind(json).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Notification and highlight counts per thread for a user in a room, for events after a
    /// stream position.
    pub async fn push_counts(&self, user_id: &str, room_id: &str, after: i64) -> StoreResult<ThreadCounts> {
        let rows = q(
            "SELECT thread_id, COUNT(*), CAST(COALESCE(SUM(highlight), 0) AS BIGINT) FROM event_push_actions \
             WHERE user_id = $1 AND room_id = $2 AND stream_ordering > $3 AND notify = 1 GROUP BY thread_id",
        )
        .bind(user_id.to_owned())
        .bind(room_id.to_owned())
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// How many notifying events a user has in all rooms (the badge count sent to push gateways).
    pub async fn push_total_count(&self, user_id: &str) -> StoreResult<i64> {
        let row = q("SELECT COUNT(*) FROM event_push_actions WHERE user_id = $1 AND notify = 1")
            .bind(user_id.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get(0))
    }

    /// A page of a user's notifications, newest first, with stream positions below `before`.
    pub async fn push_notifications(
        &self,
        user_id: &str,
        before: i64,
        limit: i64,
        only_highlight: bool,
    ) -> StoreResult<Vec<PushActionRow>> {
        let rows = q(
            "SELECT e.event_id, a.room_id, a.user_id, a.stream_ordering, a.highlight, a.thread_id, \
             a.actions FROM event_push_actions a JOIN events e ON e.stream_ordering = a.stream_ordering \
             WHERE a.user_id = $1 AND a.stream_ordering < $2 AND a.notify = 1 AND a.highlight >= $3 \
             ORDER BY a.stream_ordering DESC LIMIT $4",
        )
        .bind(user_id.to_owned())
        .bind(before)
        .bind(i64::from(only_highlight))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PushActionRow {
                event_id: r.get(0),
                room_id: r.get(1),
                user_id: r.get(2),
                stream_ordering: r.get(3),
                highlight: r.get::<i64, _>(4) != 0,
                thread_id: r.get(5),
                actions: r
                    .get::<Option<String>, _>(6)
                    .unwrap_or_else(|| PLAIN_NOTIFY.to_owned()),
            })
            .collect())
    }

    /// Joined members of a room with their `m.room.member` event JSON (for display names).
    pub async fn joined_member_events(&self, room_id: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = q(
            "SELECT c.state_key, e.json FROM current_state c JOIN events e ON e.event_id = c.event_id \
             WHERE c.room_id = $1 AND c.type = 'm.room.member' AND c.membership = 'join'",
        )
        .bind(room_id.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), super::at_rest::open(room_id, r.get(1))))
            .collect())
    }

    pub async fn pushers(&self, user_id: &str) -> StoreResult<Vec<PusherRow>> {
        let sql = format!("SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey");
        let rows = qs(sql).bind(user_id.to_owned()).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(pusher_row).collect())
    }

    /// Pushers of several users.
    pub async fn pushers_of(&self, user_ids: &[String]) -> StoreResult<Vec<PusherRow>> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = qs(sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            out.extend(query.fetch_all(&self.pool).await?.into_iter().map(pusher_row));
        }
        Ok(out)
    }

    /// Adds or replaces a pusher. Unless `append`, pushers of other users with the same app ID
    /// and pushkey are removed.
    pub async fn upsert_pusher(&self, pusher: &PusherRow, append: bool) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        if !append {
            q("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(pusher.app_id.clone())
                .bind(pusher.pushkey.clone())
                .bind(pusher.user_id.clone())
                .execute(&mut *tx)
                .await?;
        }
        q(
            "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, device_display_name, \
           profile_tag, lang, data, pushkey_ts, device_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
           ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET kind = excluded.kind, \
           app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name, \
           profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data, \
           device_id = excluded.device_id",
        )
        .bind(pusher.user_id.clone())
        .bind(pusher.app_id.clone())
        .bind(pusher.pushkey.clone())
        .bind(pusher.kind.clone())
        .bind(pusher.app_display_name.clone())
        .bind(pusher.device_display_name.clone())
        .bind(pusher.profile_tag.clone())
        .bind(pusher.lang.clone())
        .bind(pusher.data.clone())
        .bind(pusher.pushkey_ts)
        .bind(pusher.device_id.clone())
        .execute(&mut *tx)
        .await?;
        // Known before the commit, so that no batch committed right after the pusher's skips
        // it (a failed commit leaves a user in: the set is a superset anyway).
        self.pusher_users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pusher.user_id.clone());
        tx.commit().await?;
        Ok(())
    }

    /// Reads which users have pushers (at start).
    pub(super) async fn load_pusher_users(&self) -> StoreResult<()> {
        let rows = q("SELECT DISTINCT user_id FROM pushers")
            .fetch_all(&self.pool)
            .await?;
        let mut users = self.pusher_users.write().unwrap_or_else(|e| e.into_inner());
        users.extend(rows.into_iter().map(|r| r.get::<String, _>(0)));
        Ok(())
    }

    /// Keeps the rows of users who may have a pusher: a superset of those who do (a removed
    /// pusher leaves its user in), so that a batch notifying nobody with a pusher (the usual
    /// case) skips push delivery without a query. Only this process's additions are seen: a
    /// deployment of several processes must share them (the notifier's bus) before relying on it.
    pub fn rows_with_pushers<'a>(&self, rows: &'a [PushActionRow]) -> Vec<&'a PushActionRow> {
        let users = self.pusher_users.read().unwrap_or_else(|e| e.into_inner());
        if users.is_empty() {
            return Vec::new();
        }
        rows.iter().filter(|row| users.contains(&row.user_id)).collect()
    }

    /// Removes a pusher; true if there was one.
    pub async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> StoreResult<bool> {
        let done = q("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(user_id.to_owned())
            .bind(app_id.to_owned())
            .bind(pushkey.to_owned())
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
