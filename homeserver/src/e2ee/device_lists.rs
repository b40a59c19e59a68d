//! Who must hear that a user's devices or keys changed: `device_lists` in `/sync` and
//! `/keys/changes`.
//!
//! `changed`: users sharing a room with the syncing user now whose devices, device keys or
//! cross-signing keys changed in the window (the user's own included: their other devices),
//! and users who started sharing a room with them (a join in a room they are in, or a room
//! they joined). `left`: users who shared a room with them during the window and share none
//! now. "Sharing" is read from the current room state (any room, encrypted or not).

use std::collections::{BTreeSet, HashSet};

use ruma::events::room::member::MembershipState;

use crate::{error::Result, services::Services, stream::StreamToken};

/// `changed` and `left`, sorted.
#[derive(Debug, Default)]
pub struct Changes {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

/// Device list changes for `user_id` between two tokens.
pub async fn changes(svc: &Services, user_id: &str, from: StreamToken, to: StreamToken) -> Result<Changes> {
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut candidates_left: HashSet<String> = HashSet::new();
    if to.device_lists > from.device_lists {
        changed.extend(
            svc.store
                .device_list_changes(from.device_lists, to.device_lists)
                .await?,
        );
    }
    if to.events > from.events {
        let joined = |rows: Vec<(String, String, i64)>| -> HashSet<String> {
            rows.into_iter()
                .filter(|(_, m, _)| m == MembershipState::Join.as_str())
                .map(|(r, _, _)| r)
                .collect()
        };
        let then = joined(svc.store.memberships_at(user_id, from.events).await?);
        let now = joined(svc.store.memberships_at(user_id, to.events).await?);
        for room in now.difference(&then) {
            let members = svc.store.members_with(room, "join").await?;
            changed.extend(members.into_iter().filter(|u| u != user_id));
        }
        for room in then.difference(&now) {
            candidates_left.extend(svc.store.members_with(room, "join").await?);
        }
        let rooms: Vec<String> = then.union(&now).cloned().collect();
        for (room, user, membership) in svc
            .store
            .room_membership_changes(&rooms, from.events, to.events)
            .await?
        {
            if user == user_id {
                continue;
            }
            if membership == MembershipState::Join.as_str() {
                if now.contains(&room) {
                    changed.insert(user);
                }
            } else {
                candidates_left.insert(user);
            }
        }
    }
    if changed.is_empty() && candidates_left.is_empty() {
        return Ok(Changes::default());
    }
    // Read only when something may concern the user: most syncs skip it.
    let sharing = svc.store.users_sharing_rooms(user_id).await?;
    changed.retain(|u| sharing.contains(u) || u == user_id);
    let mut left: Vec<String> = candidates_left
        .into_iter()
        .filter(|u| u != user_id && !sharing.contains(u))
        .collect();
    left.sort();
    Ok(Changes {
        changed: changed.into_iter().collect(),
        left,
    })
}

/// Wakes the syncs of everyone who should hear that `user_id`'s devices or keys changed (the
/// change is already stored).
pub async fn announce(svc: &Services, user_id: &str) -> Result<()> {
    announce_removed(svc, user_id, &[]).await
}

/// The IDs of `user_id`'s devices that have keys: read before deleting devices wholesale, so
/// [`announce_removed`] can name the ones that went.
pub async fn keyed_devices(svc: &Services, user_id: &str) -> Result<Vec<String>> {
    Ok(svc
        .store
        .user_device_keys(user_id)
        .await?
        .into_iter()
        .map(|(device_id, _, _)| device_id)
        .collect())
}

/// [`announce`] after `removed` devices of `user_id` were deleted: other servers are also told
/// each of those is gone, which they would not hear otherwise once no device with keys is left.
pub async fn announce_removed(svc: &Services, user_id: &str, removed: &[String]) -> Result<()> {
    let mut users: Vec<String> = svc
        .store
        .users_sharing_rooms(user_id)
        .await?
        .into_iter()
        .collect();
    if !users.iter().any(|u| u == user_id) {
        users.push(user_id.to_owned());
    }
    svc.notifier.notify(users);
    crate::federation::sender::device_list_update(svc, user_id, removed).await
}

/// `GET /keys/changes`.
pub async fn keys_changes(svc: &Services, user_id: &str, from: &str, to: &str) -> Result<Changes> {
    let from = StreamToken::parse(from)?;
    let to = StreamToken::parse(to)?;
    changes(svc, user_id, from, to).await
}
