//! Presence: stored on change only, with `last_active_ago` computed when read, so an idle
//! server runs no per-user timers.

use std::collections::HashMap;

use ruma::UserId;
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    services::Services,
    store::PresenceRow,
    util::now_ms,
};

/// How long after their last activity a user still counts as `currently_active`.
const ACTIVE_WINDOW_MS: i64 = 5 * 60 * 1000;

pub const STATES: &[&str] = &["online", "offline", "unavailable"];

/// Sets a user's presence, waking the syncs of everyone sharing a room with them.
pub async fn set_presence(
    svc: &Services,
    user_id_typed: &UserId,
    presence: &str,
    status_msg: Option<&str>,
) -> Result<()> {
    let user_id = user_id_typed.as_str();
    if !STATES.contains(&presence) {
        return Err(Error::invalid_param(format!("Unknown presence state {presence}")));
    }
    let now = now_ms();
    svc.store.put_presence(user_id, presence, status_msg, now).await?;
    remember_written(svc, user_id, presence, now);
    crate::federation::sender::presence(svc, user_id, presence, status_msg, 0, presence == "online");
    notify(svc, user_id).await
}

/// Marks a syncing user online, writing only when that changes something a client sees.
/// It wakes nobody: others see it with their next sync response. (Waking every long-poll in
/// every room of each user who comes online costs the square of a room's size.)
pub async fn mark_active(svc: &Services, user_id_typed: &UserId, presence: &str) -> Result<()> {
    let user_id = user_id_typed.as_str();
    if !STATES.contains(&presence) {
        return Err(Error::invalid_param(format!("Unknown presence state {presence}")));
    }
    // Known unchanged and fresh without reading it: every `/sync` request comes through here.
    let fresh = |(state, at): &(String, i64)| state == presence && now_ms() - at <= ACTIVE_WINDOW_MS / 2;
    if lock_written(svc).get(user_id).is_some_and(fresh) {
        return Ok(());
    }
    let current = svc.store.presence(user_id).await?;
    let stale = |p: &PresenceRow| now_ms() - p.last_active_ts > ACTIVE_WINDOW_MS / 2;
    let needed = match &current {
        None => presence != "offline",
        Some(p) => p.presence != presence || (presence == "online" && stale(p)),
    };
    if needed {
        let changed = current.as_ref().is_none_or(|p| p.presence != presence);
        let status = current.and_then(|p| p.status_msg);
        let now = now_ms();
        svc.store
            .put_presence(user_id, presence, status.as_deref(), now)
            .await?;
        remember_written(svc, user_id, presence, now);
        if changed {
            crate::federation::sender::presence(
                svc,
                user_id,
                presence,
                status.as_deref(),
                0,
                presence == "online",
            );
        }
    } else if let Some(p) = &current {
        remember_written(svc, user_id, &p.presence, p.last_active_ts);
    }
    Ok(())
}

fn lock_written(svc: &Services) -> std::sync::MutexGuard<'_, HashMap<String, (String, i64)>> {
    svc.presence_written.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a local user's stored presence and last-active time (every write of it goes through
/// this module), so that `mark_active` need not read it back.
fn remember_written(svc: &Services, user_id: &str, presence: &str, at: i64) {
    let mut written = lock_written(svc);
    if written.len() > 100_000 {
        written.clear();
    }
    written.insert(user_id.to_owned(), (presence.to_owned(), at));
}

/// Wakes the users who share a room with `user_id` (and the user): presence wakes people, not
/// rooms, so a user in many rooms does not wake every long-poll of every room. Under each
/// one's presence key: a woken sync then reads presence and nothing else.
pub(crate) async fn notify(svc: &Services, user_id: &str) -> Result<()> {
    let mut users: Vec<String> = svc
        .store
        .users_sharing_rooms(user_id)
        .await?
        .into_iter()
        .collect();
    if !users.iter().any(|u| u == user_id) {
        users.push(user_id.to_owned());
    }
    svc.notifier
        .notify(users.iter().map(|u| presence_key(u)).collect());
    Ok(())
}

/// The notifier key of presence changes a user is to hear of.
pub fn presence_key(user_id: &str) -> String {
    format!("{user_id}/presence")
}

/// The presence content clients see.
pub fn presence_content(row: &PresenceRow) -> Value {
    let ago = (now_ms() - row.last_active_ts).max(0);
    let mut content = json!({
        "presence": row.presence,
        "last_active_ago": ago,
        "currently_active": row.presence == "online" && ago < ACTIVE_WINDOW_MS,
    });
    if let Some(msg) = &row.status_msg {
        content["status_msg"] = json!(msg);
    }
    content
}

/// A user's presence as `GET /presence/{userId}/status` answers it.
pub struct Presence {
    pub presence: String,
    pub last_active_ago: Option<u64>,
    pub currently_active: Option<bool>,
    pub status_msg: Option<String>,
}

/// `PUT /presence/{userId}/status`: only one's own, rate limited.
pub async fn set_own_presence(
    svc: &Services,
    setter: &UserId,
    target: &UserId,
    presence: &str,
    status_msg: Option<&str>,
) -> Result<()> {
    svc.rate_limiter.check(Action::Presence, setter.as_str())?;
    if setter != target {
        return Err(Error::forbidden("Cannot set another user's presence"));
    }
    set_presence(svc, target, presence, status_msg).await
}

/// `GET /presence/{userId}/status`: for oneself and users who share a room.
pub async fn presence_of(svc: &Services, viewer: &UserId, target: &UserId) -> Result<Presence> {
    if target != viewer
        && svc
            .store
            .shared_rooms(viewer.as_str(), target.as_str())
            .await?
            .is_empty()
    {
        return Err(Error::forbidden("You do not share a room with this user"));
    }
    match svc.store.presence(target.as_str()).await? {
        Some(row) => {
            let ago = (now_ms() - row.last_active_ts).max(0);
            Ok(Presence {
                currently_active: Some(row.presence == "online" && ago < ACTIVE_WINDOW_MS),
                presence: row.presence,
                last_active_ago: Some(ago as u64),
                status_msg: row.status_msg,
            })
        }
        None if svc.store.user(target.as_str()).await?.is_some() => Ok(Presence {
            presence: "offline".into(),
            last_active_ago: None,
            currently_active: None,
            status_msg: None,
        }),
        None => Err(Error::not_found("Unknown user")),
    }
}
