//! The incoming PDU pipeline on a database without HTTP: events built and signed here but fed
//! through `inbound::accept_checked` as a remote server's would be (forks, soft failure,
//! rejection, outliers).

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName, UInt, UserId, user_id,
};
use serde_json::{Value, json};

use super::inbound::{Fate, accept_checked};
use crate::{
    rooms::{
        EventSpec,
        timeline::tests::{alice, bob, public_room},
    },
    services::{Services, TestServices},
    store::{Direction, EventPlace},
};
use hearth_federation::{Pdu, pdu::PduTemplate};

fn origin() -> &'static ServerName {
    <&ServerName>::try_from("hearth.test").unwrap()
}

/// The current state's event ID for (type, state key).
async fn state_id(svc: &Services, room_id: &RoomId, event_type: &str, state_key: &str) -> OwnedEventId {
    let state = svc.store.current_state(room_id.as_str()).await.unwrap();
    let id = &state[&(event_type.to_owned(), state_key.to_owned())];
    ruma::EventId::parse(id).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn craft(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    event_type: &str,
    state_key: Option<&str>,
    content: Value,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    depth: u64,
    ts: u64,
) -> Pdu {
    PduTemplate {
        room_id: Some(room_id.to_owned()),
        sender: sender.to_owned(),
        event_type: event_type.into(),
        state_key: state_key.map(ToOwned::to_owned),
        content,
        prev_events,
        auth_events,
        depth,
        origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new(ts).unwrap()),
        redacts: None,
    }
    .finish(
        &RoomVersionId::V11.rules().unwrap(),
        svc.server_name(),
        &svc.signing_key,
    )
    .unwrap()
}

async fn join(svc: &Services, room_id: &RoomId, user: &UserId) -> OwnedEventId {
    let spec = EventSpec::state("m.room.member", user.as_str(), json!({ "membership": "join" }));
    svc.timeline
        .append(svc, room_id, user, spec, None)
        .await
        .unwrap()
        .event_id
}

async fn depth_of(svc: &Services, id: &OwnedEventId) -> u64 {
    svc.store.event(id.as_str()).await.unwrap().unwrap().depth as u64
}

#[tokio::test]
async fn a_power_level_fork_resolves_and_the_next_event_merges_it() {
    let test = TestServices::new().await;
    let svc = &test.svc;
    let rules = RoomVersionId::V11.rules().unwrap();
    let room_id = public_room(svc).await;
    let joined = join(svc, &room_id, bob()).await;
    let create = state_id(svc, &room_id, "m.room.create", "").await;
    let levels = state_id(svc, &room_id, "m.room.power_levels", "").await;
    let member = state_id(svc, &room_id, "m.room.member", alice().as_str()).await;
    let depth = depth_of(svc, &joined).await;
    let auth = vec![create, levels, member];

    // Two branches from Bob's join, each changing the power levels.
    let left = craft(
        svc,
        &room_id,
        alice(),
        "m.room.power_levels",
        Some(""),
        json!({ "users": { alice().as_str(): 100, bob().as_str(): 50 } }),
        vec![joined.clone()],
        auth.clone(),
        depth + 1,
        1_000,
    );
    let right = craft(
        svc,
        &room_id,
        alice(),
        "m.room.power_levels",
        Some(""),
        json!({ "users": { alice().as_str(): 100, "@carol:hearth.test": 50 } }),
        vec![joined.clone()],
        auth,
        depth + 1,
        2_000,
    );
    let first = accept_checked(svc, origin(), &rules, left.clone()).await.unwrap();
    assert_eq!(first.fate, Fate::Timeline);
    let second = accept_checked(svc, origin(), &rules, right.clone())
        .await
        .unwrap();
    assert_eq!(second.fate, Fate::Timeline);

    let extremities = svc.store.forward_extremities(room_id.as_str()).await.unwrap();
    assert_eq!(extremities.len(), 2, "two branches");
    // Same sender, same power: the later event is applied last and wins.
    assert_eq!(
        state_id(svc, &room_id, "m.room.power_levels", "").await,
        right.event_id,
        "the current state is the resolved state of both branches"
    );

    // A local event now follows both branches.
    let next = crate::rooms::timeline::tests::send(svc, &room_id, alice(), json!({ "body": "merge" }))
        .await
        .unwrap();
    let row = svc.store.event(next.event_id.as_str()).await.unwrap().unwrap();
    let pdu = crate::rooms::timeline::pdu_of(&row).unwrap();
    let mut prev = pdu.prev_events.clone();
    prev.sort();
    let mut expected = vec![left.event_id.clone(), right.event_id.clone()];
    expected.sort();
    assert_eq!(prev, expected);
    // Its state is the resolved one, not either branch's.
    let state = svc.store.state_of_group(row.state_group).await.unwrap();
    assert_eq!(
        state[&("m.room.power_levels".to_owned(), String::new())],
        right.event_id.as_str()
    );

    // Accepting the same event again changes nothing.
    let again = accept_checked(svc, origin(), &rules, right).await.unwrap();
    assert_eq!(again.fate, Fate::Timeline);
}

/// Soft-failed events are part of the DAG (a state group, a prev event of later events, served
/// to servers) but never shown to clients nor a forward extremity; rejected events and
/// outliers stay out of it.
#[tokio::test]
async fn soft_failed_events_join_the_dag_but_not_the_timeline_and_rejected_ones_stay_out() {
    let test = TestServices::new().await;
    let svc = &test.svc;
    let rules = RoomVersionId::V11.rules().unwrap();
    let room_id = public_room(svc).await;
    let joined = join(svc, &room_id, bob()).await;
    let create = state_id(svc, &room_id, "m.room.create", "").await;
    let levels = state_id(svc, &room_id, "m.room.power_levels", "").await;
    let depth = depth_of(svc, &joined).await;
    // Alice bans Bob after his join.
    let ban = EventSpec::state("m.room.member", bob().as_str(), json!({ "membership": "ban" }));
    let ban = svc
        .timeline
        .append(svc, &room_id, alice(), ban, None)
        .await
        .unwrap()
        .event_id;

    // Bob's message on the branch before the ban: allowed by the state before it, not by the
    // current state — soft-failed.
    let late = craft(
        svc,
        &room_id,
        bob(),
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "sneaky" }),
        vec![joined.clone()],
        vec![create.clone(), levels.clone(), joined.clone()],
        depth + 1,
        5_000,
    );
    let accepted = accept_checked(svc, origin(), &rules, late.clone()).await.unwrap();
    assert_eq!(accepted.fate, Fate::SoftFailed);
    assert_eq!(
        svc.store.event_place(late.event_id.as_str()).await.unwrap(),
        Some(EventPlace::SoftFailed)
    );
    assert_eq!(svc.store.unserved(late.event_id.as_str()).await.unwrap(), None);
    // The same event again: the same answer, nothing stored twice.
    let again = accept_checked(svc, origin(), &rules, late.clone()).await.unwrap();
    assert_eq!(again.fate, Fate::SoftFailed);

    // Carol never joined: rejected against the event's own auth events.
    let carol = user_id!("@carol:hearth.test");
    let stranger = craft(
        svc,
        &room_id,
        carol,
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "hi" }),
        vec![joined.clone()],
        vec![create.clone(), levels.clone()],
        depth + 1,
        6_000,
    );
    let refused = accept_checked(svc, origin(), &rules, stranger.clone())
        .await
        .unwrap_err();
    assert!(refused.reason.starts_with("rejected"), "{}", refused.reason);
    let unserved = svc.store.unserved(stranger.event_id.as_str()).await.unwrap();
    assert_eq!(unserved.map(|(kind, _)| kind).as_deref(), Some("rejected"));
    // A rejected event is never an auth event: an event naming it is refused too.
    let child = craft(
        svc,
        &room_id,
        alice(),
        "m.room.message",
        None,
        json!({ "body": "x" }),
        vec![joined.clone()],
        vec![create.clone(), levels.clone(), stranger.event_id.clone()],
        depth + 2,
        7_000,
    );
    assert!(accept_checked(svc, origin(), &rules, child).await.is_err());
    // Nor a prev event: it is not in the DAG.
    let orphan = craft(
        svc,
        &room_id,
        alice(),
        "m.room.message",
        None,
        json!({ "body": "y" }),
        vec![stranger.event_id.clone()],
        vec![
            create.clone(),
            levels.clone(),
            state_id(svc, &room_id, "m.room.member", alice().as_str()).await,
        ],
        depth + 2,
        7_500,
    );
    assert!(accept_checked(svc, origin(), &rules, orphan).await.is_err());

    // An outlier: stored, known by ID, out of the timeline.
    let outlier = craft(
        svc,
        &room_id,
        alice(),
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "outlier" }),
        vec![joined.clone()],
        vec![create.clone(), levels.clone()],
        depth + 1,
        8_000,
    );
    svc.store
        .insert_outliers(&[super::inbound::new_event(&outlier)])
        .await
        .unwrap();
    assert_eq!(
        svc.store.is_outlier(outlier.event_id.as_str()).await.unwrap(),
        Some(true)
    );

    let upto = svc.store.max_stream_ordering().await.unwrap();
    let timeline: Vec<String> = svc
        .store
        .room_events(room_id.as_str(), 0, upto, 1000, Direction::Backwards)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    for hidden in [&late.event_id, &stranger.event_id, &outlier.event_id] {
        assert!(
            !timeline.contains(&hidden.to_string()),
            "{hidden} is not in the timeline"
        );
    }
    // Nor are they forward extremities.
    let extremities = svc.store.forward_extremities(room_id.as_str()).await.unwrap();
    assert_eq!(extremities.len(), 1);
    // The soft-failed event is stored (servable to servers, with the state after it) but a
    // client asking for it by ID is told it does not exist.
    let row = svc.store.event(late.event_id.as_str()).await.unwrap().unwrap();
    assert!(row.soft_failed);
    let after = svc.store.state_of_group(row.state_group).await.unwrap();
    assert_eq!(
        after[&("m.room.member".to_owned(), bob().to_string())],
        joined.as_str(),
        "the state after it is its branch's, where Bob is joined"
    );
    assert!(
        crate::rooms::history::event(svc, &room_id, alice().as_str(), &late.event_id)
            .await
            .is_err()
    );
    assert!(
        svc.store
            .event(stranger.event_id.as_str())
            .await
            .unwrap()
            .is_none()
    );

    // Another server's event naming the soft-failed one and the ban as prev events enters the
    // timeline: the branch merges, and the resolved state keeps the ban.
    let merge = craft(
        svc,
        &room_id,
        alice(),
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "merge" }),
        vec![late.event_id.clone(), ban.clone()],
        vec![
            create.clone(),
            levels.clone(),
            state_id(svc, &room_id, "m.room.member", alice().as_str()).await,
        ],
        depth + 3,
        9_000,
    );
    let merged = accept_checked(svc, origin(), &rules, merge.clone())
        .await
        .unwrap();
    assert_eq!(merged.fate, Fate::Timeline);
    let extremities = svc.store.forward_extremities(room_id.as_str()).await.unwrap();
    assert_eq!(
        extremities.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![merge.event_id.to_string()]
    );
    assert_eq!(
        state_id(svc, &room_id, "m.room.member", bob().as_str()).await,
        ban
    );
    let upto = svc.store.max_stream_ordering().await.unwrap();
    let timeline: Vec<String> = svc
        .store
        .room_events(room_id.as_str(), 0, upto, 1000, Direction::Backwards)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert!(timeline.contains(&merge.event_id.to_string()));
    assert!(!timeline.contains(&late.event_id.to_string()));
}

#[tokio::test]
async fn handle_incoming_pdu_checks_signatures_and_keeps_a_bad_hash_redacted() {
    let test = TestServices::new().await;
    let svc = &test.svc;
    let room_id = public_room(svc).await;
    let joined = join(svc, &room_id, bob()).await;
    let create = state_id(svc, &room_id, "m.room.create", "").await;
    let levels = state_id(svc, &room_id, "m.room.power_levels", "").await;
    let depth = depth_of(svc, &joined).await;
    let message = |body: &str, ts: u64| {
        craft(
            svc,
            &room_id,
            bob(),
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": body }),
            vec![joined.clone()],
            vec![create.clone(), levels.clone(), joined.clone()],
            depth + 1,
            ts,
        )
    };
    let raw = |pdu: &Pdu| serde_json::value::to_raw_value(&pdu.json).unwrap();

    let good = message("hello", 10);
    let result = super::inbound::handle_incoming_pdu(svc, origin(), &raw(&good)).await;
    assert_eq!(result.error, None);
    assert_eq!(result.event_id.as_ref(), Some(&good.event_id));
    assert!(svc.store.event(good.event_id.as_str()).await.unwrap().is_some());

    // The body changed after signing: same event ID (the reference hash covers the redacted
    // form), stored without its content.
    let mut tampered = message("original", 20);
    let id = tampered.event_id.clone();
    if let Some(ruma::CanonicalJsonValue::Object(content)) = tampered.json.get_mut("content") {
        content.insert("body".into(), ruma::CanonicalJsonValue::String("changed".into()));
    }
    let result = super::inbound::handle_incoming_pdu(svc, origin(), &raw(&tampered)).await;
    assert_eq!(result.error, None);
    assert_eq!(result.event_id.as_ref(), Some(&id));
    let row = svc.store.event(id.as_str()).await.unwrap().unwrap();
    let stored: Value = serde_json::from_str(&row.json).unwrap();
    assert_eq!(stored["content"], json!({}));

    // A signature that does not verify: dropped, nothing stored; its error is reported under
    // its event ID.
    let mut forged = message("forged", 30);
    let other = hearth_federation::SigningKey::generate(svc.signing_key.version()).unwrap();
    forged.json.remove("signatures");
    ruma::signatures::sign_json("hearth.test", other.pair(), &mut forged.json).unwrap();
    let result = super::inbound::handle_incoming_pdu(svc, origin(), &raw(&forged)).await;
    assert!(result.error.is_some());
    assert_eq!(result.event_id.as_ref(), Some(&forged.event_id));
    assert!(svc.store.event(forged.event_id.as_str()).await.unwrap().is_none());

    // Not a PDU at all.
    let garbage = serde_json::value::to_raw_value(&json!({ "type": 5 })).unwrap();
    let result = super::inbound::handle_incoming_pdu(svc, origin(), &garbage).await;
    assert!(result.error.is_some());
    assert_eq!(result.event_id, None);
}

#[tokio::test]
async fn a_pdu_missing_a_prev_event_is_kept_and_placed_once_the_prev_event_arrives() {
    let test = TestServices::new().await;
    let svc = &test.svc;
    let rules = RoomVersionId::V11.rules().unwrap();
    let room_id = public_room(svc).await;
    let joined = join(svc, &room_id, bob()).await;
    let create = state_id(svc, &room_id, "m.room.create", "").await;
    let levels = state_id(svc, &room_id, "m.room.power_levels", "").await;
    let depth = depth_of(svc, &joined).await;
    let auth = vec![create.clone(), levels.clone(), joined.clone()];
    let message = |body: &str, prev: OwnedEventId, depth: u64, ts: u64| {
        craft(
            svc,
            &room_id,
            bob(),
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": body }),
            vec![prev],
            auth.clone(),
            depth,
            ts,
        )
    };
    let raw = |pdu: &Pdu| serde_json::value::to_raw_value(&pdu.json).unwrap();
    let first = message("first", joined.clone(), depth + 1, 10);
    let second = message("second", first.event_id.clone(), depth + 2, 20);

    // The first is not known and cannot be fetched (no server answers here): the second is
    // refused with an error, and kept.
    let result = super::inbound::handle_incoming_pdu(svc, origin(), &raw(&second)).await;
    assert_eq!(result.event_id.as_ref(), Some(&second.event_id));
    assert!(
        result.error.as_deref().is_some_and(|e| e.contains("prev event")),
        "{:?}",
        result.error
    );
    let pending = svc
        .store
        .pending_pdus_of_room(room_id.as_str(), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event_id, second.event_id.as_str());
    // Tried again while the prev event is still missing: still kept, one attempt more.
    assert_eq!(super::pending::retry_room(svc, room_id.as_str(), false).await, 0);
    let pending = svc
        .store
        .pending_pdus_of_room(room_id.as_str(), 10)
        .await
        .unwrap();
    assert_eq!(pending[0].attempts, 1);
    assert!(svc.store.event(second.event_id.as_str()).await.unwrap().is_none());

    // A rejected PDU is not kept: waiting would not change its fate.
    let stranger = craft(
        svc,
        &room_id,
        user_id!("@carol:hearth.test"),
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "hi" }),
        vec![joined.clone()],
        vec![create, levels],
        depth + 1,
        30,
    );
    let result = super::inbound::handle_incoming_pdu(svc, origin(), &raw(&stranger)).await;
    assert!(result.error.is_some());
    assert_eq!(
        svc.store
            .pending_pdus_of_room(room_id.as_str(), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // The first arrives: the second, tried again, follows it into the timeline.
    let result = super::inbound::handle_incoming_pdu(svc, origin(), &raw(&first)).await;
    assert_eq!(result.error, None);
    assert_eq!(super::pending::retry_room(svc, room_id.as_str(), false).await, 1);
    assert!(
        svc.store
            .pending_pdus_of_room(room_id.as_str(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let extremities = svc.store.forward_extremities(room_id.as_str()).await.unwrap();
    assert_eq!(
        extremities.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![second.event_id.to_string()]
    );
    let again = accept_checked(svc, origin(), &rules, second).await.unwrap();
    assert_eq!(again.fate, Fate::Timeline);
}
