//! Client-Server API §"Syncing" (`GET /sync`): initial and incremental sync, long-polling,
//! limited timelines, state, room summaries, invite/leave sections and token continuity.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use conformance_tests::client::{event_ids, joined, timeline};
use conformance_tests::{SyncOpts, V3, conformance_test, enc};
use serde_json::{Value, json};

const LAZY: &str = r#"{"room":{"state":{"lazy_load_members":true}}}"#;

fn next_batch(s: &Value) -> String {
    s["next_batch"].as_str().expect("next_batch").to_string()
}

fn room_events_all(s: &Value, room: &str) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(r) = joined(s, room) {
        for list in ["state", "timeline"] {
            if let Some(evs) = r[list]["events"].as_array() {
                out.extend(evs.iter().cloned());
            }
        }
    }
    out
}

conformance_test! {
    /// §Syncing: an initial sync returns `next_batch` and each joined room with its timeline and
    /// state (including `m.room.create` and the user's own membership).
    async fn initial_sync_contains_joined_room(hs) {
        let alice = hs.user("sync").await;
        let room = alice.create_room(json!({"name": "Sync room"})).await;
        alice.send_text(&room, "first").await;
        let s = alice.sync(&SyncOpts::default()).await;
        assert!(s["next_batch"].is_string());
        let all = room_events_all(&s, &room);
        assert!(all.iter().any(|e| e["type"] == "m.room.create"), "no m.room.create in {s}");
        assert!(all.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == json!(alice.user_id)));
        let tl = timeline(&s, "join", &room);
        assert!(tl.iter().any(|e| e["content"]["body"] == "first"));
    }
}

conformance_test! {
    /// §Syncing: an incremental sync (`since`) returns the events sent after the token, and not
    /// the earlier ones.
    async fn incremental_sync_returns_only_new_events(hs) {
        let alice = hs.user("sync2").await;
        let room = alice.create_room(json!({})).await;
        let old = alice.send_text(&room, "old").await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        let new = alice.send_text(&room, "new").await;
        let s1 = alice.sync_until(Some(&next_batch(&s0)), None, |s| !timeline(s, "join", &room).is_empty()).await;
        let ids = event_ids(&timeline(&s1, "join", &room));
        assert!(ids.contains(&new));
        assert!(!ids.contains(&old), "an event before `since` was repeated");
    }
}

conformance_test! {
    /// §Syncing (long-polling): a sync with `timeout` returns promptly once an event arrives,
    /// not at the end of the timeout.
    async fn long_poll_wakes_on_new_event(hs) {
        let alice = hs.user("sync3").await;
        let room = alice.create_room(json!({})).await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        let since = next_batch(&s0);
        let sender = alice.clone();
        let room2 = room.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            sender.send_text(&room2, "wake up").await
        });
        let start = Instant::now();
        let mut s = alice.sync(&SyncOpts::since(&since).timeout(20_000)).await;
        // A server may answer early with unrelated data (e.g. its own membership echo); follow on.
        while timeline(&s, "join", &room).is_empty() && start.elapsed() < Duration::from_secs(15) {
            s = alice.sync(&SyncOpts::since(&next_batch(&s)).timeout(20_000)).await;
        }
        let elapsed = start.elapsed();
        let id = task.await.unwrap();
        assert!(event_ids(&timeline(&s, "join", &room)).contains(&id));
        assert!(elapsed < Duration::from_secs(5), "long-poll took {elapsed:?} to deliver an event");
    }
}

conformance_test! {
    /// §Syncing (long-polling): with nothing new, a sync with a short `timeout` returns within
    /// about that time, with no timeline events for the room.
    async fn long_poll_times_out_without_events(hs) {
        let alice = hs.user("sync4").await;
        let room = alice.create_room(json!({})).await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        let start = Instant::now();
        let s1 = alice.sync(&SyncOpts::since(&next_batch(&s0)).timeout(1000)).await;
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_secs(8), "timeout=1000 took {elapsed:?}");
        assert!(timeline(&s1, "join", &room).is_empty(), "unexpected events: {s1}");
        assert!(s1["next_batch"].is_string());
    }
}

conformance_test! {
    /// §Syncing: with a timeline `limit`, a gap is reported as `limited: true` with a
    /// `prev_batch` token; `/messages` from `prev_batch` backwards returns the skipped events.
    async fn limited_timeline_has_prev_batch(hs) {
        let alice = hs.user("sync5").await;
        let room = alice.create_room(json!({})).await;
        let filter = json!({"room": {"timeline": {"limit": 3}}}).to_string();
        let s0 = alice.sync(&SyncOpts::default().filter(filter.clone())).await;
        let mut ids = Vec::new();
        for i in 0..8 {
            ids.push(alice.send_text(&room, &format!("l{i}")).await);
        }
        let s1 = alice.sync(&SyncOpts::since(&next_batch(&s0)).filter(filter)).await;
        let r = joined(&s1, &room).expect("room in sync");
        assert_eq!(r["timeline"]["limited"], json!(true), "{r}");
        assert_eq!(event_ids(&timeline(&s1, "join", &room)), ids[5..].to_vec());
        let prev = r["timeline"]["prev_batch"].as_str().expect("prev_batch");
        let page = alice.messages(&room, "b", Some(prev), 2, None).await.ok().clone();
        let got: Vec<&str> = page["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
        assert_eq!(got, vec![ids[4].as_str(), ids[3].as_str()]);
    }
}

conformance_test! {
    /// §Syncing: an incremental sync whose timeline has no gap says `limited: false` (or omits it).
    async fn unlimited_timeline_is_not_limited(hs) {
        let alice = hs.user("sync6").await;
        let room = alice.create_room(json!({})).await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        alice.send_text(&room, "just one").await;
        let s1 = alice.sync_until(Some(&next_batch(&s0)), None, |s| !timeline(s, "join", &room).is_empty()).await;
        let limited = &joined(&s1, &room).unwrap()["timeline"]["limited"];
        assert!(limited.is_null() || *limited == json!(false), "{limited}");
    }
}

conformance_test! {
    /// §Syncing: state changes appear in the timeline as state events (with `state_key`).
    async fn state_changes_appear_in_timeline(hs) {
        let alice = hs.user("sync7").await;
        let room = alice.create_room(json!({})).await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        alice.put_state(&room, "m.room.topic", "", &json!({"topic": "synced topic"})).await.ok();
        let s1 = alice.sync_until(Some(&next_batch(&s0)), None, |s| !timeline(s, "join", &room).is_empty()).await;
        let tl = timeline(&s1, "join", &room);
        let ev = tl.iter().find(|e| e["type"] == "m.room.topic").expect("topic event in timeline");
        assert_eq!(ev["state_key"], json!(""));
        assert_eq!(ev["content"]["topic"], json!("synced topic"));
    }
}

conformance_test! {
    /// §Syncing: a room joined after the `since` token comes with its state (the `m.room.create`
    /// event, in `state` or `timeline`).
    async fn newly_joined_room_includes_state(hs) {
        let alice = hs.user("sync8").await;
        let bob = hs.user("sync8b").await;
        let room = alice.create_room(json!({"preset": "public_chat", "name": "Joined later"})).await;
        let s0 = bob.sync(&SyncOpts::default()).await;
        bob.join(&room).await.ok();
        let s1 = bob.sync_until(Some(&next_batch(&s0)), None, |s| joined(s, &room).is_some()).await;
        let all = room_events_all(&s1, &room);
        assert!(all.iter().any(|e| e["type"] == "m.room.create"), "no create event: {s1}");
        assert!(all.iter().any(|e| e["type"] == "m.room.name"));
    }
}

conformance_test! {
    /// §Syncing: `full_state=true` returns the room's full state even in an incremental sync.
    async fn full_state_returns_all_state(hs) {
        let alice = hs.user("sync9").await;
        let room = alice.create_room(json!({"name": "Full state"})).await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        let opts = SyncOpts { since: Some(next_batch(&s0)), full_state: true, timeout_ms: Some(0), filter: None };
        let s1 = alice.sync(&opts).await;
        let all = room_events_all(&s1, &room);
        for ty in ["m.room.create", "m.room.name", "m.room.power_levels", "m.room.join_rules"] {
            assert!(all.iter().any(|e| e["type"] == ty), "{ty} missing with full_state: {s1}");
        }
    }
}

conformance_test! {
    /// §Syncing (room summary) / §Lazy-loading room members: `summary` gives
    /// `m.joined_member_count` and `m.invited_member_count` (Synapse computes the summary only
    /// when members are lazy-loaded, so the filter asks for that).
    async fn room_summary_counts_members(hs) {
        let alice = hs.user("sync10").await;
        let bob = hs.user("sync10b").await;
        let carol = hs.user("sync10c").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        alice.invite_and_join(&room, &bob).await;
        alice.invite(&room, &carol.user_id).await.ok();
        let s = alice.sync(&SyncOpts::default().filter(LAZY)).await;
        let summary = &joined(&s, &room).expect("room")["summary"];
        assert_eq!(summary["m.joined_member_count"], json!(2), "{summary}");
        assert_eq!(summary["m.invited_member_count"], json!(1), "{summary}");
    }
}

conformance_test! {
    /// §Syncing (room summary): for an unnamed room, `m.heroes` lists other members (with
    /// lazy-loaded members, see above).
    async fn room_summary_heroes(hs) {
        let alice = hs.user("sync11").await;
        let bob = hs.user("sync11b").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        alice.invite_and_join(&room, &bob).await;
        let s = alice.sync(&SyncOpts::default().filter(LAZY)).await;
        let heroes = &joined(&s, &room).expect("room")["summary"]["m.heroes"];
        assert_eq!(*heroes, json!([bob.user_id]), "{s}");
    }
}

conformance_test! {
    /// §Syncing: an invitation appears under `rooms.invite` with `invite_state` stripped events,
    /// including the invitee's own `invite` membership.
    async fn invite_appears_in_invite_section(hs) {
        let alice = hs.user("sync12").await;
        let bob = hs.user("sync12b").await;
        let room = alice.create_room(json!({"preset": "private_chat", "name": "Invited"})).await;
        let s0 = bob.sync(&SyncOpts::default()).await;
        alice.invite(&room, &bob.user_id).await.ok();
        let s1 = bob.sync_until(Some(&next_batch(&s0)), None, |s| s.pointer(&format!("/rooms/invite/{room}")).is_some()).await;
        let events = s1["rooms"]["invite"][&room]["invite_state"]["events"].as_array().unwrap().clone();
        assert!(events.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == json!(bob.user_id)
            && e["content"]["membership"] == "invite"), "{events:?}");
        assert!(events.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Invited"));
    }
}

conformance_test! {
    /// §Syncing: after leaving, the room appears under `rooms.leave` with the leave event in its
    /// timeline, and no longer under `rooms.join`.
    async fn leave_appears_in_leave_section(hs) {
        let alice = hs.user("sync13").await;
        let bob = hs.user("sync13b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let s0 = bob.sync(&SyncOpts::default()).await;
        bob.leave(&room).await.ok();
        let s1 = bob.sync_until(Some(&next_batch(&s0)), None, |s| s.pointer(&format!("/rooms/leave/{room}")).is_some()).await;
        let tl = timeline(&s1, "leave", &room);
        assert!(tl.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == json!(bob.user_id)
            && e["content"]["membership"] == "leave"), "{s1}");
        assert!(joined(&s1, &room).is_none());
    }
}

conformance_test! {
    /// §Syncing: a kicked user sees the room under `rooms.leave`, with the kick event.
    async fn kick_appears_in_leave_section(hs) {
        let alice = hs.user("sync14").await;
        let bob = hs.user("sync14b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let s0 = bob.sync(&SyncOpts::default()).await;
        alice.kick(&room, &bob.user_id, "bye").await.ok();
        let s1 = bob.sync_until(Some(&next_batch(&s0)), None, |s| s.pointer(&format!("/rooms/leave/{room}")).is_some()).await;
        let tl = timeline(&s1, "leave", &room);
        assert!(tl.iter().any(|e| e["type"] == "m.room.member" && e["sender"] == json!(alice.user_id)
            && e["content"]["membership"] == "leave"), "{s1}");
    }
}

conformance_test! {
    /// §Syncing / §Transaction identifiers: the sender's own events carry
    /// `unsigned.transaction_id` (for the device that sent them); other users never see it.
    async fn transaction_id_only_for_sender(hs) {
        let alice = hs.user("sync15").await;
        let bob = hs.user("sync15b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let id = alice.send_txn(&room, "m.room.message", "my-txn-42", &json!({"msgtype": "m.text", "body": "t"})).await.ok()["event_id"].clone();
        let find = |s: &Value| timeline(s, "join", &room).into_iter().find(|e| e["event_id"] == id).cloned();
        let sa = alice.sync_until(None, None, |s| find(s).is_some()).await;
        assert_eq!(find(&sa).unwrap()["unsigned"]["transaction_id"], json!("my-txn-42"));
        let sb = bob.sync_until(None, None, |s| find(s).is_some()).await;
        assert!(find(&sb).unwrap()["unsigned"].get("transaction_id").is_none());
    }
}

conformance_test! {
    /// §Syncing: timeline events are in the order they were sent.
    async fn timeline_is_in_send_order(hs) {
        let alice = hs.user("sync16").await;
        let room = alice.create_room(json!({})).await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(alice.send_text(&room, &format!("o{i}")).await);
        }
        let s1 = alice.sync(&SyncOpts::since(&next_batch(&s0))).await;
        assert_eq!(event_ids(&timeline(&s1, "join", &room)), ids);
    }
}

conformance_test! {
    /// §Syncing: `next_batch` tokens never skip or repeat events: many incremental syncs running
    /// while another user sends 40 messages deliver each message exactly once, in order.
    async fn tokens_never_skip_or_repeat(hs) {
        let alice = hs.user("sync17").await;
        let bob = hs.user("sync17b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let filter = json!({"room": {"timeline": {"limit": 100}}}).to_string();
        let mut since = next_batch(&alice.sync(&SyncOpts::default().filter(filter.clone())).await);
        let sender = bob.clone();
        let room2 = room.clone();
        let task = tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                ids.push(sender.send_text(&room2, &format!("seq{i}")).await);
                if i % 7 == 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            ids
        });
        let mut seen: Vec<String> = Vec::new();
        let mut syncs = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < 40 && Instant::now() < deadline {
            let s = alice.sync(&SyncOpts::since(&since).timeout(1000).filter(filter.clone())).await;
            syncs += 1;
            if let Some(r) = joined(&s, &room) {
                assert_ne!(r["timeline"]["limited"], json!(true), "gap with limit 100 after {syncs} syncs");
            }
            seen.extend(timeline(&s, "join", &room).into_iter()
                .filter(|e| e["type"] == "m.room.message").filter_map(|e| e["event_id"].as_str().map(String::from)));
            since = next_batch(&s);
        }
        let sent = task.await.unwrap();
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "an event was delivered twice over {syncs} syncs");
        assert_eq!(seen, sent, "events skipped or out of order over {syncs} syncs");
        assert!(syncs > 1);
    }
}

conformance_test! {
    /// §Syncing: a `filter` given as a filter ID (from `POST /user/{userId}/filter`) is applied.
    async fn sync_with_filter_id(hs) {
        let alice = hs.user("sync18").await;
        let room = alice.create_room(json!({})).await;
        for i in 0..4 {
            alice.send_text(&room, &format!("fid{i}")).await;
        }
        let id = alice.post(&format!("{V3}/user/{}/filter", enc(&alice.user_id)),
            &json!({"room": {"timeline": {"limit": 2}}})).await.ok()["filter_id"].as_str().unwrap().to_string();
        let s = alice.sync(&SyncOpts::default().filter(id)).await;
        let tl = timeline(&s, "join", &room);
        assert_eq!(tl.len(), 2);
        assert_eq!(tl[1]["content"]["body"], json!("fid3"));
        assert_eq!(joined(&s, &room).unwrap()["timeline"]["limited"], json!(true));
    }
}

conformance_test! {
    /// §Syncing: `/sync` requires authentication (401 `M_MISSING_TOKEN`).
    async fn sync_requires_token(hs) {
        hs.anonymous().get(&format!("{V3}/sync")).await.expect_err(401, "M_MISSING_TOKEN");
    }
}

conformance_test! {
    /// §Syncing: the leave section's timeline stops at the leave: events sent after the user
    /// left are not delivered to them.
    async fn no_events_after_leave(hs) {
        let alice = hs.user("sync19").await;
        let bob = hs.user("sync19b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let s0 = bob.sync(&SyncOpts::default()).await;
        bob.leave(&room).await.ok();
        alice.send_text(&room, "bob must not see this").await;
        let s1 = bob.sync_until(Some(&next_batch(&s0)), None, |s| s.pointer(&format!("/rooms/leave/{room}")).is_some()).await;
        assert!(!s1.to_string().contains("bob must not see this"), "{s1}");
        // And nothing more arrives later.
        let s2 = bob.sync(&SyncOpts::since(&next_batch(&s1)).timeout(500)).await;
        assert!(!s2.to_string().contains("bob must not see this"), "{s2}");
    }
}

conformance_test! {
    /// §Redactions / §Syncing: a redaction is delivered in the timeline, naming the redacted
    /// event (`redacts`, top level or in content from room version 11).
    async fn redaction_delivered_in_sync(hs) {
        let alice = hs.user("sync20").await;
        let room = alice.create_room(json!({})).await;
        let id = alice.send_text(&room, "to redact").await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        alice.put(&format!("{V3}/rooms/{}/redact/{}/{}", enc(&room), enc(&id), alice.txn_id()), &json!({"reason": "r"})).await.ok();
        let s1 = alice.sync_until(Some(&next_batch(&s0)), None, |s| !timeline(s, "join", &room).is_empty()).await;
        let tl = timeline(&s1, "join", &room);
        let red = tl.iter().find(|e| e["type"] == "m.room.redaction").expect("redaction in timeline");
        let target = red.get("redacts").or_else(|| red["content"].get("redacts")).cloned();
        assert_eq!(target, Some(json!(id)));
        assert_eq!(red["content"]["reason"], json!("r"));
    }
}

conformance_test! {
    /// §Syncing: when the timeline is `limited`, state changes that fell into the gap (before the
    /// returned timeline) are delivered in the `state` section.
    async fn state_in_gap_is_delivered(hs) {
        let alice = hs.user("sync21").await;
        let room = alice.create_room(json!({"name": "Old name"})).await;
        let filter = json!({"room": {"timeline": {"limit": 2}}}).to_string();
        let s0 = alice.sync(&SyncOpts::default().filter(filter.clone())).await;
        alice.put_state(&room, "m.room.name", "", &json!({"name": "Renamed in the gap"})).await.ok();
        for i in 0..5 {
            alice.send_text(&room, &format!("gap{i}")).await;
        }
        let s1 = alice.sync(&SyncOpts::since(&next_batch(&s0)).filter(filter)).await;
        let r = joined(&s1, &room).expect("room");
        assert_eq!(r["timeline"]["limited"], json!(true));
        assert!(timeline(&s1, "join", &room).iter().all(|e| e["type"] == "m.room.message"));
        let state = r["state"]["events"].as_array().cloned().unwrap_or_default();
        let name = state.iter().find(|e| e["type"] == "m.room.name").expect("m.room.name in state");
        assert_eq!(name["content"]["name"], json!("Renamed in the gap"));
    }
}

conformance_test! {
    /// §Syncing: each device syncs independently: a second device's initial sync sees the same
    /// room history as the first device's.
    async fn second_device_sees_same_history(hs) {
        let alice = hs.user("sync22").await;
        let room = alice.create_room(json!({})).await;
        let id = alice.send_text(&room, "for every device").await;
        let other = alice.login_again().await;
        let s = other.sync(&SyncOpts::default()).await;
        assert!(event_ids(&timeline(&s, "join", &room)).contains(&id));
    }
}
