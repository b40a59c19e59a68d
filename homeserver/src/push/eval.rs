//! Evaluating push rules against a new event for every local member of its room.
//!
//! Cost on the send path: the room's members (with display names) and power levels come from a
//! cache refreshed after each state event (three queries then); the event is flattened once;
//! per member an in-memory walk of their rule set (cached parsed in `PushState`). The outcomes
//! that notify are written by the event's own transaction (`PushListener::prepare`, before the
//! timeline stores a batch); delivery to push gateways is spawned after the commit.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    OwnedUserId, RoomId, UInt, UserId,
    events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    serde::Raw,
};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    push::pushers,
    rooms::listener::{AppendListener, ListenerFuture},
    services::Services,
    store::{Appending, NewEvent, Placed, PushActionRow},
};

/// Push rules on the timeline: evaluated for each event before its batch is stored, so the
/// outcomes are written in the event's own transaction (unread counts never lag behind the
/// event that changes them); delivered to push gateways after the commit.
pub struct PushListener;

impl AppendListener for PushListener {
    fn prepare<'a>(&'a self, svc: &'a Services, batch: &'a mut [Appending]) -> Option<ListenerFuture<'a>> {
        Some(Box::pin(async move {
            // A late event is not new: it notifies no one and counts as no unread message.
            for appending in batch.iter_mut().filter(|a| !a.event.late) {
                appending.push = outcomes(svc, &appending.event).await;
            }
        }))
    }

    fn committed(&self, svc: &Services, batch: &[Appending], placed: &[Placed]) {
        // The store filled in the rows' positions (their events').
        if let Some(last) = placed.iter().map(|p| p.stream_ordering).max() {
            svc.push
                .unread
                .committed(batch.iter().flat_map(|a| &a.push), last);
        }
        for appending in batch {
            after_append(svc, &appending.event);
        }
        // Only rows of users with pushers go on: a batch to large rooms carries thousands of
        // rows, cloned and looked up for nothing when nobody has a pusher.
        let notified: Vec<(NewEvent, Vec<PushActionRow>)> = batch
            .iter()
            .filter_map(|a| {
                let rows = svc.store.rows_with_pushers(&a.push);
                (!rows.is_empty()).then(|| (a.event.clone(), rows.into_iter().cloned().collect()))
            })
            .collect();
        if !notified.is_empty() {
            pushers::spawn_delivery(svc.clone(), notified);
        }
    }

    fn room_created<'a>(
        &'a self,
        svc: &'a Services,
        events: &'a [NewEvent],
        _last: Placed,
    ) -> Option<ListenerFuture<'a>> {
        Some(Box::pin(on_room_created(svc, events)))
    }
}

/// The push rule outcomes that notify someone, for every local user concerned by an event
/// about to be appended (`stream_ordering` is filled in when it is stored). Failures are logged
/// and give no outcome: evaluation must not fail a send.
pub async fn outcomes(svc: &Services, event: &NewEvent) -> Vec<PushActionRow> {
    match evaluate(svc, event).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::error!(event_id = %event.event_id, error = %error, "push rule evaluation failed");
            Vec::new()
        }
    }
}

/// After the event is stored: drops the room's cached context when the event changed its state.
fn after_append(svc: &Services, event: &NewEvent) {
    if event.state_key.is_some()
        && let Ok(mut rooms) = svc.push.rooms.lock()
    {
        rooms.remove(&event.room_id);
    }
}

/// Evaluates a new room's first events (stored together by `createRoom`). Only the creator is
/// joined then and sends them all, so only the invites among them can notify anyone.
async fn on_room_created(svc: &Services, events: &[NewEvent]) {
    for event in events {
        let mut rows = outcomes(svc, event).await;
        if !rows.is_empty() {
            match svc.store.event(&event.event_id).await {
                Ok(Some(row)) => {
                    for action in &mut rows {
                        action.stream_ordering = row.stream_ordering;
                    }
                    if let Err(error) = svc.store.insert_push_actions(&rows).await {
                        tracing::error!(event_id = %event.event_id, %error, "storing push actions failed");
                    }
                    // Written outside the timeline's batches: counted from the database again.
                    for row in &rows {
                        svc.push.unread.drop_entry(&row.user_id, &row.room_id);
                    }
                }
                Ok(None) => tracing::error!(event_id = %event.event_id, "created room's event not found"),
                Err(error) => {
                    tracing::error!(event_id = %event.event_id, %error, "push rule evaluation failed")
                }
            }
        }
        after_append(svc, event);
        let pushed: Vec<PushActionRow> = svc.store.rows_with_pushers(&rows).into_iter().cloned().collect();
        if !pushed.is_empty() {
            pushers::spawn_delivery(svc.clone(), vec![(event.clone(), pushed)]);
        }
    }
}

/// The member event content's `displayname`, when set.
fn display_name(member_json: &str) -> Option<String> {
    let pdu: Value = serde_json::from_str(member_json).ok()?;
    pdu.get("content")?
        .get("displayname")?
        .as_str()
        .map(ToOwned::to_owned)
}

/// The thread an event belongs to: the root of its `m.thread` relation.
pub fn thread_of(content: &Value) -> Option<String> {
    let relation = content.get("m.relates_to")?;
    (relation.get("rel_type")?.as_str()? == "m.thread")
        .then(|| relation.get("event_id")?.as_str().map(ToOwned::to_owned))
        .flatten()
}

/// What evaluation needs to know about a room, cached between events and dropped whenever a
/// state event is stored in the room (every local event passes through `after_append`).
pub struct RoomContext {
    /// Every joined member's user ID (on any server): the room's member count, and who is in.
    joined: HashSet<String>,
    /// The joined members of this server, the only ones evaluated for: their IDs parsed once
    /// per context rather than once per event, with their display names in the room.
    local: Vec<LocalMember>,
    power_levels: Option<PushConditionPowerLevelsCtx>,
}

struct LocalMember {
    user_id: OwnedUserId,
    display_name: Option<String>,
}

/// Rooms kept in the cache before it is emptied (a crude bound on memory).
const MAX_CACHED_ROOMS: usize = 10_000;

async fn room_context(svc: &Services, event: &NewEvent) -> Result<Arc<RoomContext>> {
    {
        let rooms = svc.push.rooms.lock().map_err(Error::internal)?;
        if let Some(found) = rooms.get(&event.room_id) {
            return Ok(found.clone());
        }
    }
    let mut joined = HashSet::new();
    let mut local = Vec::new();
    for (user, json) in svc.store.joined_member_events(&event.room_id).await? {
        if crate::util::is_user_of(&user, svc.server_name())
            && let Ok(user_id) = OwnedUserId::try_from(user.as_str())
        {
            local.push(LocalMember {
                user_id,
                display_name: display_name(&json),
            });
        }
        joined.insert(user);
    }
    let room_id = RoomId::parse(&event.room_id).map_err(Error::internal)?;
    let context = Arc::new(RoomContext {
        joined,
        local,
        power_levels: power_levels_ctx(svc, &room_id).await?,
    });
    let mut rooms = svc.push.rooms.lock().map_err(Error::internal)?;
    if rooms.len() >= MAX_CACHED_ROOMS {
        rooms.clear();
    }
    rooms.insert(event.room_id.clone(), context.clone());
    Ok(context)
}

async fn evaluate(svc: &Services, event: &NewEvent) -> Result<Vec<PushActionRow>> {
    let room = room_context(svc, event).await?;
    let mut targets: Vec<(OwnedUserId, Option<&str>)> = room
        .local
        .iter()
        .filter(|m| m.user_id != event.sender.as_str())
        .map(|m| (m.user_id.clone(), m.display_name.as_deref()))
        .collect();
    if event.membership.as_deref() == Some("invite")
        && let Some(invitee) = event.state_key.as_deref()
        && invitee != event.sender
        && crate::util::is_user_of(invitee, svc.server_name())
        && !room.joined.contains(invitee)
        && let Ok(invitee) = OwnedUserId::try_from(invitee)
    {
        targets.push((invitee, None));
    }
    if targets.is_empty() {
        return Ok(Vec::new());
    }

    let room_id = RoomId::parse(&event.room_id).map_err(Error::internal)?;
    let raw: Raw<Value> = Raw::from_json_string(event.json.clone()).map_err(Error::internal)?;
    // Flattened once for all users (ruma's `Ruleset::get_actions` would flatten per call).
    let flattened = FlattenedJson::from_raw(&raw);
    let content: Value = serde_json::from_str::<Value>(&event.json)
        .ok()
        .and_then(|v| v.get("content").cloned())
        .unwrap_or_default();
    let thread_id = thread_of(&content);

    let mut memo = super::memo::EventMemo::default();
    // One context, its member fields set per member (the power levels are not cloned per member).
    let mut ctx = PushConditionRoomCtx::new(
        room_id,
        UInt::new(room.joined.len() as u64).unwrap_or_default(),
        OwnedUserId::try_from(event.sender.as_str()).map_err(Error::internal)?,
        String::new(),
    );
    if let Some(levels) = &room.power_levels {
        ctx = ctx.with_power_levels(levels.clone());
    }
    let mut rows = Vec::new();
    for (user_id, name) in targets {
        let rules = super::ruleset(svc, &user_id).await?;
        // Only `contains_display_name` reads the name: most rule sets no longer have it.
        ctx.user_display_name.clear();
        if rules.reads_display_name() {
            ctx.user_display_name
                .push_str(name.unwrap_or_else(|| user_id.localpart()));
        }
        ctx.user_id = user_id;
        let actions = memo.actions(&rules, &flattened, &ctx).await;
        if !actions.iter().any(Action::should_notify) {
            continue;
        }
        let highlight = actions.iter().any(Action::is_highlight);
        rows.push(PushActionRow {
            event_id: event.event_id.clone(),
            room_id: event.room_id.clone(),
            user_id: ctx.user_id.as_str().to_owned(),
            stream_ordering: 0,
            highlight,
            thread_id: thread_id.clone(),
            actions: serde_json::to_string(actions).map_err(Error::internal)?,
        });
    }
    Ok(rows)
}

/// What `sender_notification_permission` needs: the room's power levels (or the spec's defaults
/// when it has none) and, from room version 12, its privileged creators.
async fn power_levels_ctx(svc: &Services, room_id: &RoomId) -> Result<Option<PushConditionPowerLevelsCtx>> {
    let Some(room) = svc.store.room(room_id.as_str()).await? else {
        return Ok(None);
    };
    let rules = crate::rooms::rules_of(&room.room_version)?;
    let wanted = [
        ("m.room.power_levels".to_owned(), String::new()),
        ("m.room.create".to_owned(), String::new()),
    ];
    let mut levels_content = None;
    let mut creators: Vec<OwnedUserId> = Vec::new();
    for ((event_type, _), _, json) in svc.store.current_state_entries(room_id.as_str(), &wanted).await? {
        let pdu: Value = serde_json::from_str(&json).map_err(Error::internal)?;
        let content = pdu.get("content").cloned().unwrap_or_default();
        if event_type == "m.room.power_levels" {
            levels_content = serde_json::from_value::<RoomPowerLevelsEventContent>(content).ok();
        } else {
            creators.extend(
                pdu.get("sender")
                    .and_then(Value::as_str)
                    .and_then(|s| UserId::parse(s).ok()),
            );
            if let Some(extra) = content.get("additional_creators").and_then(Value::as_array) {
                creators.extend(
                    extra
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(|s| UserId::parse(s).ok()),
                );
            }
        }
    }
    let source = match levels_content {
        Some(content) => RoomPowerLevelsSource::Original(content),
        None => RoomPowerLevelsSource::None,
    };
    let levels = RoomPowerLevels::new(source, &rules.authorization, creators);
    Ok(Some(levels.into()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{
        rooms::{
            EventSpec,
            timeline::tests::{alice, bob, public_room, send},
        },
        services::TestServices,
    };

    #[tokio::test]
    async fn a_mentioned_member_is_notified_and_highlighted() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        let join = EventSpec::state("m.room.member", bob().as_str(), json!({ "membership": "join" }));
        svc.timeline
            .append(svc, &room_id, bob(), join, None)
            .await
            .expect("bob joins");

        let plain = json!({ "msgtype": "m.text", "body": "good morning" });
        send(svc, &room_id, alice(), plain).await.expect("sent");
        let mention = json!({
            "msgtype": "m.text",
            "body": "bob: look",
            "m.mentions": { "user_ids": [bob().as_str()] },
        });
        let mentioned = send(svc, &room_id, alice(), mention).await.expect("sent");

        // Stored with the events: both notify bob (a room of two), only the mention highlights.
        let counts = crate::push::unread_counts(svc, bob().as_str(), room_id.as_str(), 0)
            .await
            .unwrap();
        assert_eq!((counts.notification_count, counts.highlight_count), (2, 1));
        let rows = svc
            .store
            .push_notifications(bob().as_str(), i64::MAX, 10, true)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].event_id, mentioned.event_id.as_str());
        assert_eq!(rows[0].stream_ordering, mentioned.stream_ordering);

        // The sender's own events never count for them.
        let own = crate::push::unread_counts(svc, alice().as_str(), room_id.as_str(), 0)
            .await
            .unwrap();
        assert_eq!(own, crate::push::Counts::default());
    }

    /// Outcomes shared between members (`memo`) never cross a difference in their rules: carol
    /// turned off `.m.rule.message`, and only bob is mentioned (a rule naming each user).
    #[tokio::test]
    async fn members_with_different_rules_get_their_own_outcomes() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        let carol = ruma::user_id!("@carol:hearth.test");
        for user in [bob(), carol] {
            let join = EventSpec::state("m.room.member", user.as_str(), json!({ "membership": "join" }));
            svc.timeline
                .append(svc, &room_id, user, join, None)
                .await
                .expect("joins");
        }
        crate::push::rules::set_enabled(
            svc,
            carol,
            ruma::push::RuleKind::Underride,
            ".m.rule.message",
            false,
        )
        .await
        .expect("carol turns off messages");

        send(
            svc,
            &room_id,
            alice(),
            json!({ "msgtype": "m.text", "body": "morning" }),
        )
        .await
        .expect("sent");
        let mention = json!({
            "msgtype": "m.text",
            "body": "over to you, bob",
            "m.mentions": { "user_ids": [bob().as_str()] },
        });
        send(svc, &room_id, alice(), mention).await.expect("sent");

        let counts = |user: &'static ruma::UserId| {
            let room_id = room_id.clone();
            async move {
                let c = crate::push::unread_counts(svc, user.as_str(), room_id.as_str(), 0)
                    .await
                    .unwrap();
                (c.notification_count, c.highlight_count)
            }
        };
        assert_eq!(counts(bob()).await, (2, 1));
        assert_eq!(counts(carol).await, (0, 0));
    }

    #[tokio::test]
    async fn a_non_member_is_not_notified() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        let mention = json!({
            "msgtype": "m.text",
            "body": "bob?",
            "m.mentions": { "user_ids": [bob().as_str()] },
        });
        send(svc, &room_id, alice(), mention).await.expect("sent");
        let counts = crate::push::unread_counts(svc, bob().as_str(), room_id.as_str(), 0)
            .await
            .unwrap();
        assert_eq!(counts, crate::push::Counts::default());
    }
}
