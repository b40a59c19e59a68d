//! `/notifications`: a page of the events a user's push rules notified them of, newest first,
//! each only if the user may still see it (`rooms::access`).

use std::collections::{BTreeSet, HashMap};

use ruma::{
    MilliSecondsSinceUnixEpoch, RoomId, UInt, UserId, api::client::push::get_notifications::v3::Notification,
    serde::Raw,
};

use crate::{
    error::{Error, Result},
    rooms::{access::RoomAccess, client_event::client_event},
    services::Services,
};

/// Most notifications in one page, and the page size when the client gives none.
const MAX_LIMIT: u64 = 1000;
const DEFAULT_LIMIT: u64 = 50;

/// A page of notifications and the token of the next (older) one, if the page was full.
pub struct Page {
    pub notifications: Vec<Notification>,
    pub next_token: Option<String>,
}

/// The notifications of `user_id` older than `from` (a token from an earlier page; the newest
/// without one), at most `limit`, only the highlighting ones when `only` says `highlight`.
pub async fn page(
    svc: &Services,
    user_id: &UserId,
    from: Option<&str>,
    limit: Option<UInt>,
    only: Option<&str>,
) -> Result<Page> {
    let before = match from {
        Some(from) => from
            .parse::<i64>()
            .map_err(|_| Error::invalid_param("Invalid 'from' token"))?,
        None => i64::MAX,
    };
    let limit = limit.map_or(DEFAULT_LIMIT, u64::from).min(MAX_LIMIT) as i64;
    let only_highlight = only.is_some_and(|o| o.contains("highlight"));
    let rows = svc
        .store
        .push_notifications(user_id.as_str(), before, limit, only_highlight)
        .await?;
    let rooms: Vec<String> = rows
        .iter()
        .map(|r| r.room_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let access = RoomAccess::load_many(svc, &rooms, Some(user_id.as_str())).await?;
    let mut versions: HashMap<String, String> = HashMap::new();
    let mut notifications = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(event) = svc.store.event(&row.event_id).await? else {
            continue;
        };
        if !access.get(&row.room_id).is_some_and(|a| a.can_see(&event)) {
            continue;
        }
        let version = match versions.get(&row.room_id) {
            Some(v) => v.clone(),
            None => {
                let Some(room) = svc.store.room(&row.room_id).await? else {
                    continue;
                };
                versions.insert(row.room_id.clone(), room.room_version.clone());
                room.room_version
            }
        };
        let client = client_event(svc, &event, &version, None).await?;
        let notification = Notification::new(
            serde_json::from_str(&row.actions).unwrap_or_default(),
            Raw::new(&client).map_err(Error::internal)?.cast_unchecked(),
            false,
            RoomId::parse(&row.room_id).map_err(Error::internal)?,
            MilliSecondsSinceUnixEpoch(UInt::new(event.origin_server_ts as u64).unwrap_or_default()),
        );
        notifications.push(notification);
    }
    let next_token = rows
        .last()
        .filter(|_| limit > 0 && rows.len() as i64 == limit)
        .map(|last| last.stream_ordering.to_string());
    Ok(Page {
        notifications,
        next_token,
    })
}
