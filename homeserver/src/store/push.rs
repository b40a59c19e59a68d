//! Push notifications: per-member push rule outcomes (stored by `push_outcomes`) and pushers.

use sqlx::{Row, any::AnyRow};

use super::{Store, StoreResult, q, qs};

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

impl Store {
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
