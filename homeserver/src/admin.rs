//! Server admins and their audited reads of search-enabled rooms (spec/admin.md).
//!
//! An admin is a user listed in `admins` or granted with `hearth admin grant`. Reading a room's
//! messages needs a reason, and only search-enabled rooms can be read: strict rooms are never
//! read by the server, rooms without a mode were not opened to it. Every read is first written
//! to the append-only audit log, committed before a single event is read, so the entry
//! survives a crash at any later point; then, when `privacy.notify_admin_reads` is on, an
//! `org.hearth.admin_read` notice goes into the room.

use ruma::{RoomId, UserId};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    config::Config,
    error::{Error, Result},
    rooms::{
        EventSpec, client_event,
        privacy::{self, PrivacyMode},
    },
    services::Services,
    store::{AuditRow, Direction, Store},
    util::now_ms,
};

/// The notice event type posted into a room after an admin read.
pub const ADMIN_READ_EVENT_TYPE: &str = "org.hearth.admin_read";
const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;
const MAX_REASON_BYTES: usize = 1000;

/// `hearth admin grant`: stores a local user as a server admin.
pub async fn grant(config: &Config, user_id: &str) -> anyhow::Result<()> {
    let user = UserId::parse(user_id).map_err(|e| anyhow::anyhow!("{user_id:?} is not a user ID: {e}"))?;
    if user.server_name().as_str() != config.server_name {
        anyhow::bail!("{user_id} is not a user of this server ({})", config.server_name);
    }
    let store = Store::connect(&config.database_url(), config.database.max_connections).await?;
    store.grant_admin(user.as_str(), now_ms()).await?;
    Ok(())
}

/// Whether the user is a server admin (config or granted).
pub async fn is_admin(svc: &Services, user_id: &UserId) -> Result<bool> {
    if svc.config.admins.iter().any(|a| a == user_id.as_str()) {
        return Ok(true);
    }
    Ok(svc.store.is_granted_admin(user_id.as_str()).await?)
}

/// The query of an admin read or an audit listing, as sent.
#[derive(Debug, Default)]
pub struct PageQuery {
    pub reason: Option<String>,
    pub from: Option<String>,
    pub limit: Option<String>,
}

impl PageQuery {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut query = Self::default();
        for (key, value) in pairs {
            match key.as_str() {
                "reason" => query.reason = Some(value),
                "from" => query.from = Some(value),
                "limit" => query.limit = Some(value),
                _ => {}
            }
        }
        query
    }

    fn limit(&self) -> Result<i64> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| n.min(MAX_LIMIT))
                .ok_or_else(|| Error::invalid_param("limit must be a positive integer")),
        }
    }

    /// `from`: a position from an earlier page's `next_batch` (a decimal stream position or
    /// audit ID).
    fn from(&self) -> Result<Option<i64>> {
        self.from
            .as_deref()
            .map(|text| {
                text.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| Error::invalid_param("from is not a token this server issued"))
            })
            .transpose()
    }
}

#[derive(Debug, Serialize)]
pub struct AdminMessages {
    /// Events, newest first, as clients see them.
    pub chunk: Vec<Value>,
    /// Pass as `from` for older events; absent at the start of the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
    /// The audit entry this read was recorded as.
    pub audit_id: i64,
}

/// `GET /_hearth/admin/v1/rooms/{roomId}/messages`.
pub async fn read_messages(
    svc: &Services,
    admin: &UserId,
    room_id: &str,
    query: PageQuery,
) -> Result<AdminMessages> {
    let reason = query
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Error::missing_param("reason is required: say why you read this room"))?;
    if reason.len() > MAX_REASON_BYTES {
        return Err(Error::invalid_param(format!(
            "reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    let limit = query.limit()?;
    let from = query.from()?;
    if !is_admin(svc, admin).await? {
        return Err(Error::forbidden(
            "Only server admins may read rooms through the admin API",
        ));
    }
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("not a room ID"))?;
    let room = svc
        .store
        .room(room_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("Unknown room"))?;
    match privacy::mode(svc, &room_id).await? {
        PrivacyMode::SearchEnabled => {}
        PrivacyMode::StrictE2e => {
            return Err(Error::forbidden_because(
                "This room is strict_e2e: the server never reads it",
                "strict_e2e",
            ));
        }
        PrivacyMode::Plain => {
            return Err(Error::forbidden_because(
                "This room has no privacy mode: admins may read only search_enabled rooms",
                "not_search_enabled",
            ));
        }
    }
    // The entry is committed before anything is read: a crash after this leaves it.
    let audit_id = svc
        .store
        .append_audit(&AuditRow {
            audit_id: 0,
            admin_id: admin.to_string(),
            room_id: room_id.to_string(),
            reason: reason.to_owned(),
            range_from: query.from.clone(),
            range_limit: limit,
            ts: now_ms(),
        })
        .await?;
    tracing::info!(%admin, %room_id, audit_id, reason, "admin read of a room");
    let upto = match from {
        Some(position) => position,
        None => svc.store.max_stream_ordering().await?,
    };
    let rows = svc
        .store
        .room_events(room_id.as_str(), 0, upto, limit, Direction::Backwards)
        .await?;
    let next_batch = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| (r.stream_ordering - 1).to_string()))
        .flatten();
    let chunk = client_event::client_events(svc, &rows, &room.room_version, None).await?;
    if svc.config.privacy.notify_admin_reads {
        notify(svc, admin, &room_id, reason, audit_id).await;
    }
    Ok(AdminMessages {
        chunk,
        next_batch,
        audit_id,
    })
}

/// Posts the `org.hearth.admin_read` notice. Events need a sender with the right to send in
/// the room: the admin, when joined; otherwise the read is in the audit log only (logged).
async fn notify(svc: &Services, admin: &UserId, room_id: &RoomId, reason: &str, audit_id: i64) {
    let spec = EventSpec {
        event_type: ADMIN_READ_EVENT_TYPE.into(),
        state_key: None,
        content: json!({
            "msgtype": "m.notice",
            "body": format!("A server admin ({admin}) read this room's messages. Reason: {reason}"),
            "admin": admin,
            "reason": reason,
            "audit_id": audit_id,
        }),
        redacts: None,
    };
    if let Err(error) = svc.timeline.append(svc, room_id, admin, spec, None).await {
        tracing::warn!(%error, %room_id, audit_id, "cannot post the admin-read notice; the read is in the audit log");
    }
}

#[derive(Debug, Serialize)]
pub struct AuditEntry {
    pub audit_id: i64,
    pub admin: String,
    pub room_id: String,
    pub reason: String,
    /// The `from` the read was given (absent: from the newest event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub limit: i64,
    pub ts: i64,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub chunk: Vec<AuditEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_batch: Option<String>,
}

/// `GET /_hearth/admin/v1/audit`: every entry, for admins.
pub async fn audit_log(svc: &Services, user: &UserId, query: PageQuery) -> Result<AuditPage> {
    let (limit, from) = (query.limit()?, query.from()?);
    if !is_admin(svc, user).await? {
        return Err(Error::forbidden("Only server admins may list the audit log"));
    }
    audit_page(svc, None, from, limit).await
}

/// `GET /_hearth/admin/v1/rooms/{roomId}/audit`: a room's entries, for its joined members and
/// admins.
pub async fn room_audit_log(
    svc: &Services,
    user: &UserId,
    room_id: &str,
    query: PageQuery,
) -> Result<AuditPage> {
    let (limit, from) = (query.limit()?, query.from()?);
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("not a room ID"))?;
    let member = svc
        .store
        .membership(room_id.as_str(), user.as_str())
        .await?
        .as_deref()
        == Some("join");
    if !member && !is_admin(svc, user).await? {
        return Err(Error::forbidden(
            "Only the room's members may list its audit entries",
        ));
    }
    audit_page(svc, Some(room_id.as_str()), from, limit).await
}

async fn audit_page(
    svc: &Services,
    room_id: Option<&str>,
    from: Option<i64>,
    limit: i64,
) -> Result<AuditPage> {
    let rows = svc.store.audit_entries(room_id, from, limit).await?;
    let next_batch = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.audit_id.to_string()))
        .flatten();
    Ok(AuditPage {
        chunk: rows
            .into_iter()
            .map(|r| AuditEntry {
                audit_id: r.audit_id,
                admin: r.admin_id,
                room_id: r.room_id,
                reason: r.reason,
                from: r.range_from,
                limit: r.range_limit,
                ts: r.ts,
            })
            .collect(),
        next_batch,
    })
}
