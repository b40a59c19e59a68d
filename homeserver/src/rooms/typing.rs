//! Typing notifications: in memory, since they only matter for seconds.
//!
//! Each room keeps who is typing until when, and the serial of its last change; sync tokens carry
//! the serial they have seen. Serials start from the clock so a restart does not reuse them.
//! (Several processes will share this through Redis.)

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{RoomId, UserId};

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    rooms,
    services::Services,
    sync::notifier::Covered,
    util::now_ms,
};

/// Longest a client may claim to be typing without renewing.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    serial: i64,
    until: HashMap<String, Instant>,
}

pub struct Typing {
    rooms: Mutex<HashMap<String, RoomTyping>>,
    serial: Mutex<i64>,
}

impl Default for Typing {
    fn default() -> Self {
        Self {
            rooms: Mutex::default(),
            serial: Mutex::new(now_ms()),
        }
    }
}

impl Typing {
    fn next_serial(&self) -> i64 {
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        *serial += 1;
        *serial
    }

    /// The serial of the newest change in any room.
    pub fn current_serial(&self) -> i64 {
        *self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who is typing in a room now, if that changed after `since`.
    pub fn typing_since(&self, room_id: &str, since: i64) -> Option<Vec<String>> {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.get(room_id).filter(|r| r.serial > since)?;
        let now = Instant::now();
        let mut users: Vec<String> = room
            .until
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        Some(users)
    }

    /// Records a change; `changed` hears its serial under the lock, so that changes are
    /// notified in serial order (see `notifier::Covered`).
    fn set(&self, room_id: &str, user_id: &str, until: Option<Instant>, changed: impl FnOnce(i64)) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms.entry(room_id.to_owned()).or_default();
        let was_typing = room.until.contains_key(user_id);
        match until {
            Some(t) => {
                room.until.insert(user_id.to_owned(), t);
            }
            None => {
                room.until.remove(user_id);
            }
        }
        // Renewing a running timeout changes nothing a client sees.
        if was_typing != until.is_some() {
            room.serial = self.next_serial();
            changed(room.serial);
        }
    }

    /// Ends a typing notification whose time ran out, unless it was renewed meanwhile.
    fn expire(&self, room_id: &str, user_id: &str, changed: impl FnOnce(i64)) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let Some(room) = rooms.get_mut(room_id) else {
            return;
        };
        if room.until.get(user_id).is_some_and(|t| *t <= Instant::now()) {
            room.until.remove(user_id);
            room.serial = self.next_serial();
            changed(room.serial);
        }
    }
}

/// `PUT /rooms/{roomId}/typing/{userId}`: rate limited; only for oneself, in a room one is
/// joined to. `timeout` is `None` to stop typing.
pub async fn typing(
    svc: &Services,
    user: &UserId,
    room_id: &RoomId,
    target: &str,
    timeout: Option<Duration>,
) -> Result<()> {
    svc.rate_limiter.check(Action::Typing, user.as_str())?;
    if target != user.as_str() {
        return Err(Error::forbidden("Cannot set another user's typing state"));
    }
    rooms::room(svc, room_id).await?;
    rooms::require_joined(svc, room_id, user).await?;
    set_typing(svc, room_id, user, timeout);
    crate::federation::sender::typing(svc, room_id.as_str(), user.as_str(), timeout.is_some());
    Ok(())
}

/// Starts or stops a user's typing notification in a room, waking syncs when it changes and
/// again when it times out.
pub(crate) fn set_typing(svc: &Services, room_id: &RoomId, user_id: &UserId, timeout: Option<Duration>) {
    let (room_id, user_id) = (room_id.as_str(), user_id.as_str());
    let timeout = timeout.map(|t| t.min(MAX_TIMEOUT));
    let notify = |serial| {
        svc.notifier
            .notify_at(vec![room_id.to_owned()], Covered::typing(serial))
    };
    svc.typing
        .set(room_id, user_id, timeout.map(|t| Instant::now() + t), notify);
    if let Some(timeout) = timeout {
        let (svc, room_id, user_id) = (svc.clone(), room_id.to_owned(), user_id.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let notify = |serial| {
                svc.notifier
                    .notify_at(vec![room_id.clone()], Covered::typing(serial))
            };
            svc.typing.expire(&room_id, &user_id, notify);
        });
    }
}
