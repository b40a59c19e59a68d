//! Server admins granted from the command line, and the append-only audit log of admin reads
//! (spec/admin.md). No function here updates or deletes an audit entry.

use sqlx::Row;

use super::{Store, StoreResult, q, qs};

/// One audit entry: an admin's read of a room's messages.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub audit_id: i64,
    pub admin_id: String,
    pub room_id: String,
    pub reason: String,
    pub range_from: Option<String>,
    pub range_limit: i64,
    pub ts: i64,
}

const AUDIT_COLUMNS: &str = "audit_id, admin_id, room_id, reason, range_from, range_limit, ts";

fn audit_row(r: sqlx::any::AnyRow) -> AuditRow {
    AuditRow {
        audit_id: r.get(0),
        admin_id: r.get(1),
        room_id: r.get(2),
        reason: r.get(3),
        range_from: r.get(4),
        range_limit: r.get(5),
        ts: r.get(6),
    }
}

impl Store {
    pub async fn grant_admin(&self, user_id: &str, now: i64) -> StoreResult<()> {
        q("INSERT INTO server_admins (user_id, granted_ts) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING")
            .bind(user_id.to_owned())
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn is_granted_admin(&self, user_id: &str) -> StoreResult<bool> {
        Ok(q("SELECT 1 FROM server_admins WHERE user_id = $1")
            .bind(user_id.to_owned())
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Appends an audit entry and commits it; returns its ID.
    pub async fn append_audit(&self, entry: &AuditRow) -> StoreResult<i64> {
        let row = q(
            "INSERT INTO admin_audit_log (admin_id, room_id, reason, range_from, range_limit, ts) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING audit_id",
        )
        .bind(entry.admin_id.clone())
        .bind(entry.room_id.clone())
        .bind(entry.reason.clone())
        .bind(entry.range_from.clone())
        .bind(entry.range_limit)
        .bind(entry.ts)
        .fetch_one(&self.writer)
        .await?;
        Ok(row.get(0))
    }

    /// Up to `limit` audit entries older than `before` (all when `None`), newest first; only
    /// the room's when `room_id` is given.
    pub async fn audit_entries(
        &self,
        room_id: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<AuditRow>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM admin_audit_log WHERE ($1 = '' OR room_id = $1) AND audit_id < $2 \
             ORDER BY audit_id DESC LIMIT $3"
        );
        let rows = qs(sql)
            .bind(room_id.unwrap_or_default().to_owned())
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(audit_row).collect())
    }
}
