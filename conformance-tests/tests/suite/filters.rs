//! Client-Server API §"Filtering": `POST/GET /user/{userId}/filter`, inline filters on `/sync`
//! and `/messages`, event filters (`types`, `not_types`, `senders`, `not_senders`, `limit`),
//! room filters (`rooms`, `not_rooms`, state filters) and lazy-loading room members.

use conformance_tests::client::{joined, timeline};
use conformance_tests::{Client, SyncOpts, V3, conformance_test, enc};
use serde_json::{Value, json};

async fn room_with_two_senders(hs: &conformance_tests::TestServer) -> (Client, Client, String) {
    let alice = hs.user("filt").await;
    let bob = hs.user("filtb").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await.ok();
    alice.send_text(&room, "from alice").await;
    bob.send_text(&room, "from bob").await;
    alice
        .send(&room, "org.hearth.conformance.ping", json!({"n": 1}))
        .await;
    (alice, bob, room)
}

fn inline(f: Value) -> SyncOpts {
    SyncOpts::default().filter(f.to_string())
}

conformance_test! {
    /// §Filtering: `POST /user/{userId}/filter` returns a `filter_id`; GET returns the definition.
    async fn create_and_get_filter(hs) {
        let alice = hs.user("filt1").await;
        let def = json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}}, "presence": {"not_types": ["*"]}});
        let id = alice.post(&format!("{V3}/user/{}/filter", enc(&alice.user_id)), &def).await.ok()["filter_id"]
            .as_str().unwrap().to_string();
        assert!(!id.starts_with('{'), "filter IDs must not start with '{{': {id}");
        let got = alice.get(&format!("{V3}/user/{}/filter/{}", enc(&alice.user_id), enc(&id))).await.ok().clone();
        assert_eq!(got["room"]["timeline"]["limit"], json!(10));
        assert_eq!(got["room"]["timeline"]["types"], json!(["m.room.message"]));
        assert_eq!(got["presence"]["not_types"], json!(["*"]));
    }
}

conformance_test! {
    /// §Filtering: an unknown filter ID answers 404 `M_NOT_FOUND`.
    async fn unknown_filter_is_404(hs) {
        let alice = hs.user("filt2").await;
        alice.get(&format!("{V3}/user/{}/filter/987654", enc(&alice.user_id))).await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §Filtering: an inline JSON filter's `timeline.limit` caps the timeline.
    async fn inline_filter_timeline_limit(hs) {
        let (alice, _bob, room) = room_with_two_senders(hs).await;
        let s = alice.sync(&inline(json!({"room": {"timeline": {"limit": 1}}}))).await;
        let tl = timeline(&s, "join", &room);
        assert_eq!(tl.len(), 1);
        assert_eq!(tl[0]["type"], json!("org.hearth.conformance.ping"));
    }
}

conformance_test! {
    /// §Filtering: `types` keeps only the listed event types (with `*` wildcards).
    async fn filter_types(hs) {
        let (alice, _bob, room) = room_with_two_senders(hs).await;
        let s = alice.sync(&inline(json!({"room": {"timeline": {"types": ["org.hearth.conformance.*"]}}}))).await;
        let tl = timeline(&s, "join", &room);
        assert!(!tl.is_empty());
        assert!(tl.iter().all(|e| e["type"] == "org.hearth.conformance.ping"), "{tl:?}");
    }
}

conformance_test! {
    /// §Filtering: `not_types` removes the listed event types.
    async fn filter_not_types(hs) {
        let (alice, _bob, room) = room_with_two_senders(hs).await;
        let s = alice.sync(&inline(json!({"room": {"timeline": {"not_types": ["m.room.message", "m.room.member"]}}}))).await;
        let tl = timeline(&s, "join", &room);
        assert!(!tl.is_empty());
        assert!(tl.iter().all(|e| e["type"] != "m.room.message" && e["type"] != "m.room.member"), "{tl:?}");
        assert!(tl.iter().any(|e| e["type"] == "org.hearth.conformance.ping"));
    }
}

conformance_test! {
    /// §Filtering: `senders` keeps only events from the listed users.
    async fn filter_senders(hs) {
        let (alice, bob, room) = room_with_two_senders(hs).await;
        let s = alice.sync(&inline(json!({"room": {"timeline": {"senders": [bob.user_id]}}}))).await;
        let tl = timeline(&s, "join", &room);
        assert!(!tl.is_empty());
        assert!(tl.iter().all(|e| e["sender"] == json!(bob.user_id)), "{tl:?}");
    }
}

conformance_test! {
    /// §Filtering: `not_senders` removes events from the listed users.
    async fn filter_not_senders(hs) {
        let (alice, bob, room) = room_with_two_senders(hs).await;
        let s = alice.sync(&inline(json!({"room": {"timeline": {"not_senders": [alice.user_id]}}}))).await;
        let tl = timeline(&s, "join", &room);
        assert!(!tl.is_empty());
        assert!(tl.iter().all(|e| e["sender"] == json!(bob.user_id)), "{tl:?}");
    }
}

conformance_test! {
    /// §Filtering: `room.rooms` restricts the sync to the listed rooms.
    async fn filter_rooms(hs) {
        let alice = hs.user("filt3").await;
        let r1 = alice.create_room(json!({})).await;
        let r2 = alice.create_room(json!({})).await;
        let s = alice.sync(&inline(json!({"room": {"rooms": [r1]}}))).await;
        assert!(joined(&s, &r1).is_some());
        assert!(joined(&s, &r2).is_none(), "{s}");
    }
}

conformance_test! {
    /// §Filtering: `room.not_rooms` excludes the listed rooms.
    async fn filter_not_rooms(hs) {
        let alice = hs.user("filt4").await;
        // Synapse deviation: in version 12 rooms it still sends an excluded room with its
        // `m.room.create` event (v12 create events carry no room_id), so use version 10 there.
        let create = hs.spec_or_synapse(json!({}), json!({"room_version": "10"}));
        let r1 = alice.create_room(create.clone()).await;
        let r2 = alice.create_room(create).await;
        let s = alice.sync(&inline(json!({"room": {"not_rooms": [r1]}}))).await;
        assert!(joined(&s, &r1).is_none(), "{s}");
        assert!(joined(&s, &r2).is_some());
    }
}

conformance_test! {
    /// §Filtering: a `state` filter with `types` restricts the `state` section.
    async fn state_filter_types(hs) {
        let alice = hs.user("filt5").await;
        let room = alice.create_room(json!({"name": "State filtered", "topic": "t"})).await;
        let s = alice.sync(&inline(json!({"room": {"state": {"types": ["m.room.name"]}, "timeline": {"limit": 0}}}))).await;
        let state = joined(&s, &room).expect("room")["state"]["events"].as_array().cloned().unwrap_or_default();
        assert!(state.iter().any(|e| e["type"] == "m.room.name"), "{state:?}");
        assert!(state.iter().all(|e| e["type"] == "m.room.name"), "{state:?}");
    }
}

conformance_test! {
    /// §Lazy-loading room members: with `lazy_load_members`, the sync `state` carries membership
    /// only for the senders of the returned timeline events, not for idle members.
    async fn lazy_load_members_in_sync(hs) {
        let alice = hs.user("filt6").await;
        let bob = hs.user("filt6b").await;
        let carol = hs.user("filt6c").await;
        // A named room: otherwise idle members may be sent anyway as the summary's `m.heroes`.
        let room = alice.create_room(json!({"preset": "public_chat", "name": "Lazy"})).await;
        bob.join(&room).await.ok();
        carol.join(&room).await.ok();
        bob.send_text(&room, "bob speaks").await;
        let s = alice.sync(&inline(json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}}))).await;
        let r = joined(&s, &room).expect("room");
        let members: Vec<&str> = r["state"]["events"].as_array().unwrap().iter()
            .filter(|e| e["type"] == "m.room.member").filter_map(|e| e["state_key"].as_str()).collect();
        assert!(members.contains(&bob.user_id.as_str()), "sender's membership missing: {members:?}");
        assert!(!members.contains(&carol.user_id.as_str()), "idle member was not lazy-loaded away: {members:?}");
    }
}

conformance_test! {
    /// §Lazy-loading room members: `/messages` with `lazy_load_members` returns the senders'
    /// membership in `state`.
    async fn lazy_load_members_in_messages(hs) {
        let alice = hs.user("filt7").await;
        let bob = hs.user("filt7b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        bob.send_text(&room, "bob again").await;
        let filter = json!({"lazy_load_members": true, "types": ["m.room.message"]});
        let body = alice.messages(&room, "b", None, 1, Some(&filter)).await.ok().clone();
        let state = body["state"].as_array().cloned().unwrap_or_default();
        assert!(state.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == json!(bob.user_id)), "{body}");
    }
}

conformance_test! {
    /// §Filtering: `timeline.limit: 0`-style small limits still report a correct `limited` flag
    /// and the events honour `types` together with `limit`.
    async fn types_and_limit_combine(hs) {
        let (alice, _bob, room) = room_with_two_senders(hs).await;
        let s = alice.sync(&inline(json!({"room": {"timeline": {"limit": 1, "types": ["m.room.message"]}}}))).await;
        let tl = timeline(&s, "join", &room);
        assert_eq!(tl.len(), 1);
        assert_eq!(tl[0]["content"]["body"], json!("from bob"));
    }
}
