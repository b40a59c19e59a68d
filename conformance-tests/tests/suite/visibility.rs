//! Client-Server API §"Room History Visibility" (the "Server behaviour" algorithm), §"Room
//! Previews" (`world_readable`), §"Redactions" with the room versions' redaction rules, and
//! §"Listing rooms" (who may publish a room): the black-box access matrix of which events each
//! kind of viewer may see through `/messages` (both directions), `/event`, `/context`, `/state`,
//! `/members`, `/joined_members` and `/sync`.
//!
//! The algorithm (spec §History visibility, "Server behaviour"), applied to the room state *at
//! each event*: 1. `world_readable` → allow; 2. the viewer's membership was `join` → allow;
//! 3. `shared` and the viewer joined at any point after the event → allow; 4. membership was
//! `invite` and visibility `invited` → allow; 5. otherwise deny. `m.room.history_visibility`
//! events are visible if the visibility before *or* after allows; the viewer's own
//! `m.room.member` events if their membership before *or* after allows.
//!
//! Status codes: `GET /event` documents a single 404 for "not found or you do not have permission
//! to read this event"; Synapse answers 403 `M_FORBIDDEN` there. Both are accepted for hidden
//! events (`/context` likewise), as long as nothing of the event leaks. `/messages`, `/state`,
//! `/members` document 403 for non-members, asserted exactly.
//!
//! Synapse deviations found (checked against Synapse 1.163.2), each test skipped for Synapse only
//! and keeping the spec's rule:
//! - A user who knocked and then left (or withdrew), never having joined, can page the `shared`
//!   history up to their leave through `/messages` (spec rule 3 needs a join):
//!   `knocked_then_left_sees_nothing`.
//! - A user who rejected an invite, never having joined, can page the `shared` history up to the
//!   rejection through `/messages` (rules 3 and 4 deny): `rejected_invite_under_shared_sees_nothing`.
//! - `GET /event` of a user's own leave event (from `join`, under `joined`) answers 404 to that
//!   user once left, though `/messages` and `/context` show it (the own-`m.room.member` special
//!   case allows it): `own_leave_event_via_event_endpoint`.
//! - `GET /event` of the `m.room.history_visibility` event switching `world_readable` to
//!   `joined` answers 404 to a non-member (the special case allows it, the spec's own example):
//!   `switch_away_from_world_readable_visible_to_non_member`. The opposite switch is served.
//! - `GET /joined_members` of a `world_readable` room answers 200 to a non-member, though it
//!   "must be" called by a user in the room: `joined_members_of_world_readable_room_needs_membership`.
//! - A banned user (previously joined) gets 403 from `/state`, `/state/{type}/{key}`, `/members`
//!   (and `/messages`), whose 403 is documented for users never in the room:
//!   `banned_member_reads_state_at_ban`.
//!
//! Where Synapse refuses outright but the spec's wording allows a refusal (`/messages` and
//! `/context` for a non-member whose visible events are served by `/event`: an invitee under
//! `invited`, a banned user, a non-member of a formerly world-readable room), the tests accept
//! 403 (see [`Gate::MayRefuse`]).

use conformance_tests::client::{Response, timeline};
use conformance_tests::{Client, SyncOpts, TestServer, V3, conformance_test, enc};
use serde_json::{Value, json};

// ---- helpers ---------------------------------------------------------------------------------

/// Inline sync filter with a timeline large enough to hold every event of these small rooms.
const BIG_TIMELINE: &str = r#"{"room":{"timeline":{"limit":100}}}"#;

/// A room whose history visibility is `hv`, created by `c` with `preset`.
async fn room_with(c: &Client, preset: &str, hv: &str) -> String {
    c.create_room(json!({
        "preset": preset,
        "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": hv}}],
    }))
    .await
}

fn message_bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(String::from))
        .collect()
}

/// Every message body `c` can page through `/messages` in `dir`, in chronological order, or the
/// first response when it is not a 200.
async fn page_bodies(c: &Client, room: &str, dir: &str) -> Result<Vec<String>, Response> {
    let filter = json!({"types": ["m.room.message"]});
    let mut from: Option<String> = None;
    let mut out = Vec::new();
    for _ in 0..30 {
        let resp = c.messages(room, dir, from.as_deref(), 50, Some(&filter)).await;
        if resp.status != 200 && from.is_none() {
            return Err(resp);
        }
        let body = resp.ok().clone();
        out.extend(message_bodies(
            body["chunk"].as_array().map(Vec::as_slice).unwrap_or(&[]),
        ));
        // An empty chunk with an `end` is allowed (events filtered out): keep paging.
        match body.get("end").and_then(Value::as_str) {
            Some(end) if from.as_deref() != Some(end) => from = Some(end.to_string()),
            _ => break,
        }
    }
    if dir == "b" {
        out.reverse();
    }
    Ok(out)
}

/// A refusal of an event the viewer may not see: 404 `M_NOT_FOUND` (the spec's documented
/// answer of `/event`) or 403 `M_FORBIDDEN` (Synapse's); nothing of the event may leak.
#[track_caller]
fn assert_hidden(resp: &Response, secret: &str) {
    assert!(
        matches!(
            (resp.status, resp.errcode()),
            (404, Some("M_NOT_FOUND")) | (403, Some("M_FORBIDDEN"))
        ),
        "{} {}: expected 404 M_NOT_FOUND or 403 M_FORBIDDEN for a hidden event, got {} {}",
        resp.method,
        resp.path,
        resp.status,
        resp.text
    );
    assert!(!resp.text.contains(secret), "{} leaks {secret:?}", resp.text);
}

/// One message of a scenario: its event ID, its body, and whether the viewer may see it.
struct Msg {
    id: String,
    body: &'static str,
    visible: bool,
}

impl Msg {
    fn new(id: String, body: &'static str, visible: bool) -> Msg {
        Msg { id, body, visible }
    }
}

/// How strictly `/messages` and `/context` are held for a viewer whose membership is not `join`
/// or `leave`-after-`join` (invited, rejected, banned, non-member of a formerly world-readable
/// room): those endpoints document 403 "You aren't a member of the room", so a server may refuse
/// the viewer outright; if it answers, the answer holds exactly the visible events.
#[derive(Clone, Copy, PartialEq)]
enum Gate {
    /// The endpoint must answer 200 with the visible events.
    Strict,
    /// 403 `M_FORBIDDEN` is acceptable as well.
    MayRefuse,
}

/// Check what `viewer` sees of `msgs` through `/messages` (both directions), `/event` and
/// `/context`.
async fn check_view(viewer: &Client, room: &str, msgs: &[Msg], gate: Gate) {
    let visible: Vec<String> = msgs
        .iter()
        .filter(|m| m.visible)
        .map(|m| m.body.to_string())
        .collect();
    for dir in ["b", "f"] {
        match page_bodies(viewer, room, dir).await {
            Ok(got) => assert_eq!(got, visible, "/messages dir={dir} of {}", viewer.user_id),
            Err(resp) if gate == Gate::MayRefuse => resp.expect_err(403, "M_FORBIDDEN"),
            Err(resp) => panic!("/messages dir={dir}: HTTP {} {}", resp.status, resp.text),
        }
    }
    for m in msgs {
        let resp = viewer.get_event(room, &m.id).await;
        if m.visible {
            assert_eq!(resp.ok()["content"]["body"], json!(m.body), "/event {}", m.body);
            assert!(resp.body["unsigned"].get("redacted_because").is_none());
        } else {
            assert_hidden(&resp, m.body);
        }
        let resp = viewer.context(room, &m.id, 20).await;
        if !m.visible {
            assert_hidden(&resp, m.body);
            continue;
        }
        if resp.status == 403 && gate == Gate::MayRefuse {
            resp.expect_err(403, "M_FORBIDDEN");
            continue;
        }
        let body = resp.ok();
        assert_eq!(body["event"]["content"]["body"], json!(m.body), "/context anchor");
        let mut around = Vec::new();
        for key in ["events_before", "events_after"] {
            around.extend(message_bodies(
                body[key].as_array().map(Vec::as_slice).unwrap_or(&[]),
            ));
        }
        for hidden in msgs.iter().filter(|m| !m.visible) {
            assert!(
                !around.contains(&hidden.body.to_string()),
                "/context of {:?} shows hidden {:?}: {around:?}",
                m.body,
                hidden.body
            );
        }
        for b in &around {
            assert!(visible.contains(b), "/context shows unknown {b:?}");
        }
    }
}

/// The message bodies of `room` in the timeline of a sync response (joined section).
fn sync_bodies(sync: &Value, room: &str) -> Vec<String> {
    let events: Vec<Value> = timeline(sync, "join", room).into_iter().cloned().collect();
    message_bodies(&events)
}

/// Assert that a sync timeline shows no hidden message and, when `must` is given, shows it.
#[track_caller]
fn check_sync_timeline(got: &[String], msgs: &[Msg], must: Option<&str>, what: &str) {
    for m in msgs.iter().filter(|m| !m.visible) {
        assert!(
            !got.contains(&m.body.to_string()),
            "{what} shows hidden {:?}: {got:?}",
            m.body
        );
    }
    if let Some(b) = must {
        assert!(got.contains(&b.to_string()), "{what} lacks {b:?}: {got:?}");
    }
}

/// The invited-then-joined matrix under `hv`: alice sends "before-invite", invites bob, sends
/// "while-invited", bob joins, alice sends "after-join". `expect` is what bob may see of these
/// three (spec algorithm). Checks `/messages`, `/event`, `/context`, an incremental `/sync` from a
/// token taken while invited, and an initial `/sync`.
async fn invited_then_joined(hs: &TestServer, hv: &str, expect: [bool; 3]) {
    let alice = hs.user("vis-a").await;
    let bob = hs.user("vis-b").await;
    let room = room_with(&alice, "private_chat", hv).await;
    let before = alice.send_text(&room, "before-invite").await;
    alice.invite(&room, &bob.user_id).await.ok();
    let token = bob
        .sync_until(None, Some(BIG_TIMELINE), |s| {
            s.pointer(&format!("/rooms/invite/{room}")).is_some()
        })
        .await["next_batch"]
        .as_str()
        .unwrap()
        .to_string();
    let during = alice.send_text(&room, "while-invited").await;
    bob.join_room_id(&room).await.ok();
    let after = alice.send_text(&room, "after-join").await;
    let msgs = [
        Msg::new(before, "before-invite", expect[0]),
        Msg::new(during, "while-invited", expect[1]),
        Msg::new(after, "after-join", expect[2]),
    ];
    check_view(&bob, &room, &msgs, Gate::Strict).await;

    let incremental = bob
        .sync_until(Some(&token), Some(BIG_TIMELINE), |s| {
            sync_bodies(s, &room).contains(&"after-join".to_string())
        })
        .await;
    check_sync_timeline(
        &sync_bodies(&incremental, &room),
        &msgs,
        Some("after-join"),
        "incremental /sync after the join",
    );
    // A filter unlike the one of the first sync: Synapse serves an identical repeated sync
    // request from a response cache for a while.
    let initial = bob
        .sync(&SyncOpts::default().filter(r#"{"room":{"timeline":{"limit":99}}}"#))
        .await;
    check_sync_timeline(
        &sync_bodies(&initial, &room),
        &msgs,
        Some("after-join"),
        "initial /sync",
    );
}

// ---- invited, then joined --------------------------------------------------------------------

conformance_test! {
    /// §History visibility `shared` (rule 3): a member who joins later sees everything, including
    /// events sent before the invite and while invited; in `/messages` (b, f), `/event`,
    /// `/context` and `/sync`.
    async fn invited_then_joined_shared(hs) {
        invited_then_joined(hs, "shared", [true, true, true]).await;
    }
}

conformance_test! {
    /// §History visibility `invited` (rules 2, 4): events from the invite on are visible after
    /// joining, events before the invite are not, in every endpoint including the timeline of the
    /// newly joined room in incremental and initial `/sync`.
    async fn invited_then_joined_invited(hs) {
        invited_then_joined(hs, "invited", [false, true, true]).await;
    }
}

conformance_test! {
    /// §History visibility `joined` (rule 2, 5): only events from the join on are visible, in
    /// every endpoint; the timeline of the newly joined room in `/sync` shows no earlier message.
    async fn invited_then_joined_joined(hs) {
        invited_then_joined(hs, "joined", [false, false, true]).await;
    }
}

conformance_test! {
    /// §History visibility, own `m.room.member` events: under `joined`, a user sees their own
    /// join event, and after leaving their own leave event (membership before it was `join`),
    /// but not their invite (neither `invite` nor the membership before allow under `joined`).
    async fn own_member_events_under_joined(hs) {
        let alice = hs.user("vis-own-a").await;
        let bob = hs.user("vis-own-b").await;
        let room = room_with(&alice, "private_chat", "joined").await;
        alice.invite(&room, &bob.user_id).await.ok();
        bob.join_room_id(&room).await.ok();
        bob.leave(&room).await.ok();
        let state = alice.room_state(&room).await.ok().clone();
        let leave = state.as_array().unwrap().iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == json!(bob.user_id))
            .unwrap().clone();
        assert_eq!(leave["content"]["membership"], json!("leave"));
        // Bob's own member events as `/messages` shows them: the join and the leave, no invite.
        let filter = json!({"types": ["m.room.member"]});
        let chunk = bob.messages(&room, "b", None, 50, Some(&filter)).await.ok()["chunk"].clone();
        let own: Vec<&Value> = chunk.as_array().unwrap().iter()
            .filter(|e| e["state_key"] == json!(bob.user_id))
            .collect();
        let memberships: Vec<&str> = own.iter().filter_map(|e| e["content"]["membership"].as_str()).collect();
        assert_eq!(memberships, vec!["leave", "join"], "{chunk}");
        assert_eq!(own[0]["event_id"], leave["event_id"]);
        let join_id = own[1]["event_id"].as_str().unwrap();
        assert_eq!(bob.get_event(&room, join_id).await.ok()["content"]["membership"], json!("join"));
    }
}

conformance_test! {
    /// §History visibility, own `m.room.member` events: "a user can always see `m.room.member`
    /// events ... which change their membership from `join` to any other value, even if
    /// `history_visibility` is `joined`": after leaving, `GET /event` serves the user's own
    /// leave event. Synapse deviates (404 from `/event`, though `/messages` and `/context` show
    /// the event): skipped there.
    async fn own_leave_event_via_event_endpoint(hs) {
        if hs.skip_on_synapse("§History visibility (own m.room.member events)") {
            return;
        }
        let alice = hs.user("vis-own2-a").await;
        let bob = hs.user("vis-own2-b").await;
        let room = room_with(&alice, "public_chat", "joined").await;
        bob.join(&room).await.ok();
        bob.leave(&room).await.ok();
        let state = alice.room_state(&room).await.ok().clone();
        let leave = state.as_array().unwrap().iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == json!(bob.user_id))
            .unwrap().clone();
        let ev = bob.get_event(&room, leave["event_id"].as_str().unwrap()).await;
        assert_eq!(ev.ok()["content"]["membership"], json!("leave"));
    }
}

// ---- left, banned ----------------------------------------------------------------------------

conformance_test! {
    /// §History visibility: "After a user has left a room, they may see any events which they
    /// were allowed to see before they left, but no events received after they left" (here under
    /// `joined`: nothing before the join either). `/state` and `/state/{type}/{key}` answer the
    /// state when they left (rooms.yaml); `/members` shows no member event sent after the leave;
    /// `/joined_members` needs the user to be in the room (403).
    async fn left_member_sees_until_leave(hs) {
        let alice = hs.user("vis-left-a").await;
        let bob = hs.user("vis-left-b").await;
        let carol = hs.user("vis-left-c").await;
        let room = alice.create_room(json!({"preset": "public_chat", "topic": "topic-while-joined",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                "content": {"history_visibility": "joined"}}]})).await;
        let before = alice.send_text(&room, "before-join").await;
        bob.join(&room).await.ok();
        let during = alice.send_text(&room, "while-joined").await;
        bob.leave(&room).await.ok();
        let after = alice.send_text(&room, "after-leave").await;
        alice.put_state(&room, "m.room.topic", "", &json!({"topic": "topic-after-leave"})).await.ok();
        carol.join(&room).await.ok();
        let msgs = [
            Msg::new(before, "before-join", false),
            Msg::new(during, "while-joined", true),
            Msg::new(after, "after-leave", false),
        ];
        check_view(&bob, &room, &msgs, Gate::Strict).await;

        let topic = bob.get_state(&room, "m.room.topic", "").await;
        assert_eq!(topic.ok()["topic"], json!("topic-while-joined"), "state at the leave");
        let state = bob.room_state(&room).await.ok().clone();
        assert!(!state.to_string().contains("topic-after-leave"), "{state}");
        assert!(!state.to_string().contains(&carol.user_id), "{state}");
        let members = bob.members(&room).await.ok().clone();
        assert!(!members.to_string().contains(&carol.user_id), "{members}");
        assert!(members.to_string().contains(&bob.user_id), "{members}");
        bob.joined_members(&room).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §History visibility: a banned user's membership stopped being `join` at the ban, so
    /// nothing sent after the ban is visible to them anywhere; what they saw while joined stays
    /// visible through `/event` (rule 2 at that event). `/messages` documents 403 for
    /// non-members, so refusing the banned user outright is acceptable.
    async fn banned_member_sees_nothing_after_ban(hs) {
        let alice = hs.user("vis-ban-a").await;
        let bob = hs.user("vis-ban-b").await;
        let room = room_with(&alice, "public_chat", "shared").await;
        bob.join(&room).await.ok();
        let during = alice.send_text(&room, "while-joined").await;
        alice.ban(&room, &bob.user_id, "vis").await.ok();
        let after = alice.send_text(&room, "after-ban").await;
        let msgs = [
            Msg::new(during, "while-joined", true),
            Msg::new(after, "after-ban", false),
        ];
        check_view(&bob, &room, &msgs, Gate::MayRefuse).await;
        bob.joined_members(&room).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// rooms.yaml `GET /state`, `/state/{type}/{key}`, `/members`: 403 only when "You aren't a
    /// member of the room and weren't previously a member"; a user who left "gets the state of
    /// the room when they left". A banned user was previously a member: they get the state at
    /// the ban (not a topic set after it, not a later member). Synapse deviates (403 for banned
    /// users): skipped there.
    async fn banned_member_reads_state_at_ban(hs) {
        if hs.skip_on_synapse("GET /rooms/{roomId}/state (403 only for users never in the room)") {
            return;
        }
        let alice = hs.user("vis-ban2-a").await;
        let bob = hs.user("vis-ban2-b").await;
        let carol = hs.user("vis-ban2-c").await;
        let room = alice.create_room(json!({"preset": "public_chat", "topic": "topic-before-ban"})).await;
        bob.join(&room).await.ok();
        alice.ban(&room, &bob.user_id, "vis").await.ok();
        alice.put_state(&room, "m.room.topic", "", &json!({"topic": "topic-after-ban"})).await.ok();
        carol.join(&room).await.ok();
        let topic = bob.get_state(&room, "m.room.topic", "").await;
        assert_eq!(topic.ok()["topic"], json!("topic-before-ban"));
        let state = bob.room_state(&room).await.ok().to_string();
        assert!(state.contains("topic-before-ban") && !state.contains("topic-after-ban"), "{state}");
        assert!(!state.contains(&carol.user_id), "{state}");
        let members = bob.members(&room).await.ok().to_string();
        assert!(members.contains(&alice.user_id) && !members.contains(&carol.user_id), "{members}");
    }
}

// ---- invited, never joined -------------------------------------------------------------------

conformance_test! {
    /// §History visibility rule 4: under `invited`, a user who is invited (and has not joined)
    /// may see the events sent while invited, not those before the invite. `/event` must serve
    /// them; `/messages` and `/context` may refuse a non-member outright (403), and otherwise
    /// hold exactly the events sent while invited.
    async fn invited_not_joined_under_invited(hs) {
        let alice = hs.user("vis-inv-a").await;
        let bob = hs.user("vis-inv-b").await;
        let room = room_with(&alice, "private_chat", "invited").await;
        let before = alice.send_text(&room, "before-invite").await;
        alice.invite(&room, &bob.user_id).await.ok();
        let during = alice.send_text(&room, "while-invited").await;
        let msgs = [
            Msg::new(before, "before-invite", false),
            Msg::new(during, "while-invited", true),
        ];
        check_view(&bob, &room, &msgs, Gate::MayRefuse).await;
    }
}

conformance_test! {
    /// §History visibility: under `shared`, a user who is invited but has not joined sees
    /// nothing (rule 3 needs a join, rule 4 applies to `invited` only).
    async fn invited_not_joined_under_shared(hs) {
        let alice = hs.user("vis-inv2-a").await;
        let bob = hs.user("vis-inv2-b").await;
        let room = room_with(&alice, "private_chat", "shared").await;
        let before = alice.send_text(&room, "before-invite").await;
        alice.invite(&room, &bob.user_id).await.ok();
        let during = alice.send_text(&room, "while-invited").await;
        let msgs = [
            Msg::new(before, "before-invite", false),
            Msg::new(during, "while-invited", false),
        ];
        check_view(&bob, &room, &msgs, Gate::MayRefuse).await;
    }
}

conformance_test! {
    /// §History visibility rule 4 and "after a user has left a room, they may see any events
    /// which they were allowed to see before they left": under `invited`, a user who rejected
    /// the invite still sees what was sent while invited, and nothing before or after.
    async fn rejected_invite_under_invited_sees_invited_span(hs) {
        let alice = hs.user("vis-rej-a").await;
        let bob = hs.user("vis-rej-b").await;
        let room = room_with(&alice, "private_chat", "invited").await;
        let before = alice.send_text(&room, "before-invite").await;
        alice.invite(&room, &bob.user_id).await.ok();
        let during = alice.send_text(&room, "while-invited").await;
        bob.leave(&room).await.ok();
        let after = alice.send_text(&room, "after-reject").await;
        let msgs = [
            Msg::new(before, "before-invite", false),
            Msg::new(during, "while-invited", true),
            Msg::new(after, "after-reject", false),
        ];
        check_view(&bob, &room, &msgs, Gate::MayRefuse).await;
    }
}

conformance_test! {
    /// §History visibility rules 3-5: under `shared`, a user who rejected an invite never joined,
    /// so they see none of the room's messages. Synapse deviates (it shows `shared` history up to
    /// the rejection to anyone whose membership is `leave`): skipped there.
    async fn rejected_invite_under_shared_sees_nothing(hs) {
        if hs.skip_on_synapse("§History visibility rule 3 (shared history needs a join)") {
            return;
        }
        let alice = hs.user("vis-rej2-a").await;
        let bob = hs.user("vis-rej2-b").await;
        let room = room_with(&alice, "private_chat", "shared").await;
        let before = alice.send_text(&room, "before-invite").await;
        alice.invite(&room, &bob.user_id).await.ok();
        let during = alice.send_text(&room, "while-invited").await;
        bob.leave(&room).await.ok();
        let after = alice.send_text(&room, "after-reject").await;
        let msgs = [
            Msg::new(before, "before-invite", false),
            Msg::new(during, "while-invited", false),
            Msg::new(after, "after-reject", false),
        ];
        check_view(&bob, &room, &msgs, Gate::MayRefuse).await;
    }
}

conformance_test! {
    /// §History visibility rules 3-5, §Knocking: under `shared`, a user who knocked (join rule
    /// `knock`) and then withdrew the knock never joined, so they see no message. Synapse deviates
    /// (shows `shared` history up to the leave): skipped there.
    async fn knocked_then_left_sees_nothing(hs) {
        if hs.skip_on_synapse("§History visibility rule 3 (shared history needs a join)") {
            return;
        }
        let alice = hs.user("vis-knock-a").await;
        let bob = hs.user("vis-knock-b").await;
        let room = alice.create_room(json!({"preset": "private_chat", "initial_state": [
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}},
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "shared"}}]})).await;
        let before = alice.send_text(&room, "before-knock").await;
        bob.knock(&room).await.ok();
        let during = alice.send_text(&room, "while-knocked").await;
        bob.leave(&room).await.ok();
        let after = alice.send_text(&room, "after-leave").await;
        let msgs = [
            Msg::new(before, "before-knock", false),
            Msg::new(during, "while-knocked", false),
            Msg::new(after, "after-leave", false),
        ];
        check_view(&bob, &room, &msgs, Gate::MayRefuse).await;
    }
}

// ---- never a member, world_readable ----------------------------------------------------------

conformance_test! {
    /// §History visibility rule 5 / rooms.yaml: a user who was never in a (`shared`) room is
    /// refused everywhere: `/messages`, `/state`, `/state/{type}/{key}`, `/members`,
    /// `/joined_members` answer 403 `M_FORBIDDEN`; `/event`, `/context` 404 or 403.
    async fn never_member_is_refused_everywhere(hs) {
        let alice = hs.user("vis-never-a").await;
        let eve = hs.user("vis-never-e").await;
        let room = room_with(&alice, "private_chat", "shared").await;
        let id = alice.send_text(&room, "private-words").await;
        for dir in ["b", "f"] {
            eve.messages(&room, dir, None, 10, None).await.expect_err(403, "M_FORBIDDEN");
        }
        assert_hidden(&eve.get_event(&room, &id).await, "private-words");
        assert_hidden(&eve.context(&room, &id, 10).await, "private-words");
        eve.room_state(&room).await.expect_err(403, "M_FORBIDDEN");
        eve.get_state(&room, "m.room.create", "").await.expect_err(403, "M_FORBIDDEN");
        eve.members(&room).await.expect_err(403, "M_FORBIDDEN");
        eve.joined_members(&room).await.expect_err(403, "M_FORBIDDEN");
        let sync = eve.sync(&SyncOpts::default().filter(BIG_TIMELINE)).await;
        assert!(!sync.to_string().contains("private-words"));
    }
}

conformance_test! {
    /// §Room previews / §History visibility rule 1: a non-member may read a `world_readable`
    /// room: `/messages` (b, f), `/event`, `/context`, `/state`, `/state/{type}/{key}` and
    /// `/members` answer 200 with the room's content (peeking).
    async fn world_readable_non_member_can_peek(hs) {
        let alice = hs.user("vis-wr-a").await;
        let eve = hs.user("vis-wr-e").await;
        let room = room_with(&alice, "public_chat", "world_readable").await;
        let one = alice.send_text(&room, "wr-1").await;
        let two = alice.send_text(&room, "wr-2").await;
        let msgs = [Msg::new(one, "wr-1", true), Msg::new(two, "wr-2", true)];
        check_view(&eve, &room, &msgs, Gate::Strict).await;
        let state = eve.room_state(&room).await.ok().clone();
        assert!(state.as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{state}");
        let hv = eve.get_state(&room, "m.room.history_visibility", "").await;
        assert_eq!(hv.ok()["history_visibility"], json!("world_readable"));
        let members = eve.members(&room).await.ok().clone();
        assert!(members.to_string().contains(&alice.user_id), "{members}");
    }
}

conformance_test! {
    /// rooms.yaml `GET /joined_members`: "The current user must be in the room for it to work"
    /// (no exception for `world_readable`, unlike `/members`): a non-member gets 403
    /// `M_FORBIDDEN`. Synapse deviates (serves a world-readable room's joined members to
    /// anyone): skipped there.
    async fn joined_members_of_world_readable_room_needs_membership(hs) {
        if hs.skip_on_synapse("GET /rooms/{roomId}/joined_members (current user must be in the room)") {
            return;
        }
        let alice = hs.user("vis-wrjm-a").await;
        let eve = hs.user("vis-wrjm-e").await;
        let room = room_with(&alice, "public_chat", "world_readable").await;
        eve.joined_members(&room).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §History visibility ("applied at the point an event is sent", rule 1, and the special
    /// case for `m.room.history_visibility` events): after a room switches from
    /// `world_readable` to `joined`, a non-member still sees the events sent while it was
    /// world-readable and the switching event itself, but nothing sent after; a member who joins
    /// later sees the world-readable span and their own span, not what lies between.
    async fn world_readable_span_survives_switch_to_joined(hs) {
        let alice = hs.user("vis-wrj-a").await;
        let eve = hs.user("vis-wrj-e").await;
        let bob = hs.user("vis-wrj-b").await;
        let room = room_with(&alice, "public_chat", "world_readable").await;
        let open = alice.send_text(&room, "while-world-readable").await;
        alice.put_state(&room, "m.room.history_visibility", "",
            &json!({"history_visibility": "joined"})).await.ok();
        let closed = alice.send_text(&room, "while-joined-only").await;
        let msgs = [
            Msg::new(open.clone(), "while-world-readable", true),
            Msg::new(closed.clone(), "while-joined-only", false),
        ];
        check_view(&eve, &room, &msgs, Gate::MayRefuse).await;

        bob.join(&room).await.ok();
        let after = alice.send_text(&room, "after-bob-joined").await;
        let msgs = [
            Msg::new(open, "while-world-readable", true),
            Msg::new(closed, "while-joined-only", false),
            Msg::new(after, "after-bob-joined", true),
        ];
        check_view(&bob, &room, &msgs, Gate::Strict).await;
    }
}

conformance_test! {
    /// §History visibility, `m.room.history_visibility` events: visible "if the
    /// `history_visibility` before *or* after the event would allow" — a non-member sees the
    /// event switching `world_readable` to `joined` (the spec's own example). Synapse deviates
    /// (404 from `/event` for that event): skipped there.
    async fn switch_away_from_world_readable_visible_to_non_member(hs) {
        if hs.skip_on_synapse("§History visibility (m.room.history_visibility events)") {
            return;
        }
        let alice = hs.user("vis-sw-a").await;
        let eve = hs.user("vis-sw-e").await;
        let room = room_with(&alice, "public_chat", "world_readable").await;
        let switch = alice.put_state(&room, "m.room.history_visibility", "",
            &json!({"history_visibility": "joined"})).await.ok()["event_id"].as_str().unwrap().to_string();
        let ev = eve.get_event(&room, &switch).await;
        assert_eq!(ev.ok()["content"]["history_visibility"], json!("joined"));
    }
}

conformance_test! {
    /// §History visibility (rule 1, and `m.room.history_visibility` events visible if the
    /// visibility after allows): when a `joined` room becomes `world_readable`, a non-member
    /// sees the switching event and everything after it, but nothing sent before, through
    /// `/messages` (b, f), `/event` and `/context`.
    async fn switch_to_world_readable_opens_only_later_events(hs) {
        let alice = hs.user("vis-sw2-a").await;
        let eve = hs.user("vis-sw2-e").await;
        let room = room_with(&alice, "public_chat", "joined").await;
        let closed = alice.send_text(&room, "before-opening").await;
        let switch = alice.put_state(&room, "m.room.history_visibility", "",
            &json!({"history_visibility": "world_readable"})).await.ok()["event_id"].as_str().unwrap().to_string();
        let open = alice.send_text(&room, "after-opening").await;
        let msgs = [
            Msg::new(closed, "before-opening", false),
            Msg::new(open, "after-opening", true),
        ];
        check_view(&eve, &room, &msgs, Gate::Strict).await;
        let ev = eve.get_event(&room, &switch).await;
        assert_eq!(ev.ok()["content"]["history_visibility"], json!("world_readable"));
        let filter = json!({"types": ["m.room.history_visibility"]});
        let chunk = eve.messages(&room, "b", None, 50, Some(&filter)).await.ok()["chunk"].clone();
        let ids: Vec<&Value> = chunk.as_array().unwrap().iter().map(|e| &e["event_id"]).collect();
        assert_eq!(ids, vec![&json!(switch)], "only the switching event: {chunk}");
    }
}

// ---- redaction forgery -----------------------------------------------------------------------

/// Assert that `target` (body `body`) in `room` is unredacted as `viewer` sees it through
/// `/event`, `/messages` and an initial `/sync`.
async fn assert_intact(viewer: &Client, room: &str, target: &str, body: &str) {
    let ev = viewer.get_event(room, target).await.ok().clone();
    assert_eq!(ev["content"]["body"], json!(body), "/event: {ev}");
    assert!(ev["unsigned"].get("redacted_because").is_none(), "/event: {ev}");
    let chunk = viewer.messages(room, "b", None, 50, None).await.ok()["chunk"].clone();
    let found = chunk
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == json!(target))
        .unwrap_or_else(|| panic!("/messages lacks the target: {chunk}"))
        .clone();
    assert_eq!(found["content"]["body"], json!(body), "/messages: {found}");
    assert!(
        found["unsigned"].get("redacted_because").is_none(),
        "/messages: {found}"
    );
    let sync = viewer.sync(&SyncOpts::default().filter(BIG_TIMELINE)).await;
    let found = timeline(&sync, "join", room)
        .into_iter()
        .find(|e| e["event_id"] == json!(target))
        .unwrap_or_else(|| panic!("/sync lacks the target"))
        .clone();
    assert_eq!(found["content"]["body"], json!(body), "/sync: {found}");
    assert!(
        found["unsigned"].get("redacted_because").is_none(),
        "/sync: {found}"
    );
}

conformance_test! {
    /// §Redactions / room versions v11-v12: only an `m.room.redaction` event redacts. An
    /// `m.room.message` whose content carries `redacts` (and other fields that look like a
    /// redaction's top level) leaves its target intact, even when its sender may redact.
    async fn forged_redacts_in_message_content_is_inert(hs) {
        let alice = hs.user("vis-forge-a").await;
        let bob = hs.user("vis-forge-b").await;
        let room = room_with(&alice, "public_chat", "shared").await;
        bob.join(&room).await.ok();
        let target = alice.send_text(&room, "keep-me").await;
        for sender in [&bob, &alice] {
            sender.send(&room, "m.room.message", json!({"msgtype": "m.text", "body": "forged",
                "redacts": target, "type": "m.room.redaction",
                "content": {"redacts": target}, "unsigned": {"redacted_because": {"redacts": target}}})).await;
        }
        assert_intact(&alice, &room, &target, "keep-me").await;
        assert_intact(&bob, &room, &target, "keep-me").await;
    }
}

conformance_test! {
    /// §Redactions (`PUT /rooms/{roomId}/redact/{eventId}/{txnId}`): a redaction sent in room X
    /// naming an event of room Y does not touch it, whatever the server answers, even though
    /// the sender has power to redact in both rooms.
    async fn cross_room_redact_endpoint_is_inert(hs) {
        let alice = hs.user("vis-xr-a").await;
        let room_x = alice.create_room(json!({"preset": "private_chat"})).await;
        let room_y = alice.create_room(json!({"preset": "private_chat"})).await;
        let target = alice.send_text(&room_y, "room-y-message").await;
        let resp = alice.redact(&room_x, &target, &json!({"reason": "cross-room"})).await;
        assert!(resp.status < 500, "{} {}", resp.status, resp.text);
        assert_intact(&alice, &room_y, &target, "room-y-message").await;
    }
}

conformance_test! {
    /// §Redactions (v1.18: `m.room.redaction` via `PUT /send`): an `m.room.redaction` sent in
    /// room X with `content.redacts` naming an event of room Y does not touch it, whatever the
    /// server answers.
    async fn cross_room_redaction_event_is_inert(hs) {
        let alice = hs.user("vis-xs-a").await;
        let room_x = alice.create_room(json!({"preset": "private_chat"})).await;
        let room_y = alice.create_room(json!({"preset": "private_chat"})).await;
        let target = alice.send_text(&room_y, "room-y-message").await;
        let resp = alice.send_txn(&room_x, "m.room.redaction", &alice.txn_id(),
            &json!({"redacts": target, "reason": "cross-room"})).await;
        assert!(resp.status < 500, "{} {}", resp.status, resp.text);
        assert_intact(&alice, &room_y, &target, "room-y-message").await;
    }
}

conformance_test! {
    /// §Redactions / room version redaction rules: a member below the `redact` power level
    /// cannot redact another user's event, neither through `/redact` (403 `M_FORBIDDEN`) nor by
    /// sending an `m.room.redaction` event (refused, or accepted but not applied).
    async fn redaction_without_power_is_not_applied(hs) {
        let alice = hs.user("vis-np-a").await;
        let bob = hs.user("vis-np-b").await;
        let room = room_with(&alice, "public_chat", "shared").await;
        bob.join(&room).await.ok();
        let target = alice.send_text(&room, "alice-owns-this").await;
        bob.redact(&room, &target, &json!({})).await.expect_err(403, "M_FORBIDDEN");
        let resp = bob.send_txn(&room, "m.room.redaction", &bob.txn_id(), &json!({"redacts": target})).await;
        assert!(resp.status == 200 || resp.status == 403, "{} {}", resp.status, resp.text);
        if resp.status == 403 {
            resp.expect_err(403, "M_FORBIDDEN");
        }
        assert_intact(&alice, &room, &target, "alice-owns-this").await;
        assert_intact(&bob, &room, &target, "alice-owns-this").await;
    }
}

// ---- directory -------------------------------------------------------------------------------

conformance_test! {
    /// §Listing rooms (`PUT /directory/list/room/{roomId}`): publishing needs the power to send
    /// `m.room.canonical_alias`; a joined member below it is refused with 403 `M_FORBIDDEN` and
    /// the room stays private.
    async fn directory_publish_needs_power(hs) {
        let alice = hs.user("vis-dir-a").await;
        let bob = hs.user("vis-dir-b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        bob.set_directory_visibility(&room, "public").await.expect_err(403, "M_FORBIDDEN");
        let vis = alice.get(&format!("{V3}/directory/list/room/{}", enc(&room))).await;
        assert_eq!(vis.ok()["visibility"], json!("private"));
    }
}

conformance_test! {
    /// §Listing rooms: the room's creator (power 100) may publish and unpublish it.
    async fn directory_publish_by_creator(hs) {
        let alice = hs.user("vis-dir2-a").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        alice.set_directory_visibility(&room, "public").await.ok();
        let vis = alice.get(&format!("{V3}/directory/list/room/{}", enc(&room))).await;
        assert_eq!(vis.ok()["visibility"], json!("public"));
        alice.set_directory_visibility(&room, "private").await.ok();
    }
}

conformance_test! {
    /// §Listing rooms: a user who is not in the room cannot publish it (403 `M_FORBIDDEN`).
    async fn directory_publish_by_non_member(hs) {
        let alice = hs.user("vis-dir3-a").await;
        let eve = hs.user("vis-dir3-e").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        eve.set_directory_visibility(&room, "public").await.expect_err(403, "M_FORBIDDEN");
        let vis = alice.get(&format!("{V3}/directory/list/room/{}", enc(&room))).await;
        assert_eq!(vis.ok()["visibility"], json!("private"));
    }
}
