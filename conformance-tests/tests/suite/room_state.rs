//! Client-Server API §"Getting events for a room" / §"Sending events to a room" for state:
//! `GET/PUT /rooms/{roomId}/state/{eventType}/{stateKey}`, `GET /rooms/{roomId}/state`.

use conformance_tests::{V3, conformance_test, enc};
use serde_json::json;

conformance_test! {
    /// §PUT state: returns an `event_id`; GET of the same type and key returns the content.
    async fn put_then_get_state(hs) {
        let alice = hs.user("state").await;
        let room = alice.create_room(json!({})).await;
        let resp = alice.put_state(&room, "m.room.topic", "", &json!({"topic": "state topic"})).await;
        assert!(resp.ok()["event_id"].as_str().unwrap().starts_with('$'));
        assert_eq!(alice.get_state(&room, "m.room.topic", "").await.ok()["topic"], json!("state topic"));
    }
}

conformance_test! {
    /// §PUT state: custom state types with a non-empty state key are stored per key.
    async fn custom_state_with_state_keys(hs) {
        let alice = hs.user("state2").await;
        let room = alice.create_room(json!({})).await;
        alice.put_state(&room, "org.hearth.conformance.kv", "a", &json!({"v": 1})).await.ok();
        alice.put_state(&room, "org.hearth.conformance.kv", "b", &json!({"v": 2})).await.ok();
        assert_eq!(alice.get_state(&room, "org.hearth.conformance.kv", "a").await.ok()["v"], json!(1));
        assert_eq!(alice.get_state(&room, "org.hearth.conformance.kv", "b").await.ok()["v"], json!(2));
    }
}

conformance_test! {
    /// §PUT state: a later state event with the same type and key replaces the earlier one.
    async fn state_is_replaced(hs) {
        let alice = hs.user("state3").await;
        let room = alice.create_room(json!({})).await;
        alice.put_state(&room, "m.room.name", "", &json!({"name": "First"})).await.ok();
        alice.put_state(&room, "m.room.name", "", &json!({"name": "Second"})).await.ok();
        assert_eq!(alice.get_state(&room, "m.room.name", "").await.ok()["name"], json!("Second"));
    }
}

conformance_test! {
    /// §GET state: a state event that does not exist answers 404 `M_NOT_FOUND`.
    async fn missing_state_is_404(hs) {
        let alice = hs.user("state4").await;
        let room = alice.create_room(json!({})).await;
        alice.get_state(&room, "org.hearth.conformance.absent", "").await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §GET /state: returns the full current state as a list of events.
    async fn full_state_list(hs) {
        let alice = hs.user("state5").await;
        let room = alice.create_room(json!({"name": "Listed state"})).await;
        alice.put_state(&room, "org.hearth.conformance.kv", "x", &json!({"v": "x"})).await.ok();
        let state = alice.get(&format!("{V3}/rooms/{}/state", enc(&room))).await.ok().clone();
        let types: Vec<(&str, &str)> = state.as_array().unwrap().iter()
            .map(|e| (e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap())).collect();
        for want in [("m.room.create", ""), ("m.room.name", "Listed state"), ("org.hearth.conformance.kv", "x")] {
            let ty = want.0;
            assert!(types.iter().any(|(t, _)| *t == ty), "{ty} missing from {types:?}");
        }
        // Each (type, state_key) appears once.
        let mut sorted = types.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), types.len(), "duplicate state entries: {types:?}");
    }
}

conformance_test! {
    /// §GET state: a user who is not in the room gets 403 `M_FORBIDDEN`.
    async fn state_forbidden_for_non_member(hs) {
        let alice = hs.user("state6").await;
        let bob = hs.user("state6b").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        bob.get_state(&room, "m.room.create", "").await.expect_err(403, "M_FORBIDDEN");
        bob.get(&format!("{V3}/rooms/{}/state", enc(&room))).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §PUT state: a member without the required power level gets 403 `M_FORBIDDEN`.
    async fn put_state_without_power_is_forbidden(hs) {
        let alice = hs.user("state7").await;
        let bob = hs.user("state7b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        bob.put_state(&room, "m.room.name", "", &json!({"name": "Bob's room now"})).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §PUT state: a non-member cannot send state (403 `M_FORBIDDEN`).
    async fn put_state_as_non_member_is_forbidden(hs) {
        let alice = hs.user("state8").await;
        let bob = hs.user("state8b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.put_state(&room, "org.hearth.conformance.kv", "", &json!({})).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §m.room.power_levels: raising a user's power level lets them send restricted state.
    async fn power_levels_grant_permission(hs) {
        let alice = hs.user("state9").await;
        let bob = hs.user("state9b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let mut pl = alice.get_state(&room, "m.room.power_levels", "").await.ok().clone();
        pl["users"][&bob.user_id] = json!(50);
        alice.put_state(&room, "m.room.power_levels", "", &pl).await.ok();
        bob.put_state(&room, "m.room.name", "", &json!({"name": "Bob may"})).await.ok();
        assert_eq!(alice.get_state(&room, "m.room.name", "").await.ok()["name"], json!("Bob may"));
    }
}

conformance_test! {
    /// §GET state: the state key is part of the path; a state key containing `/`, `:` and a space
    /// round-trips when percent-encoded. (Keys starting with `@` are reserved for that user.)
    async fn state_key_with_special_characters(hs) {
        let alice = hs.user("state10").await;
        let room = alice.create_room(json!({})).await;
        let key = "dir/sub:key with space".to_string();
        alice.put_state(&room, "org.hearth.conformance.kv", &key, &json!({"ok": true})).await.ok();
        assert_eq!(alice.get_state(&room, "org.hearth.conformance.kv", &key).await.ok()["ok"], json!(true));
    }
}

conformance_test! {
    /// §GET state: for a user who has left, state is taken from the moment they left: later
    /// changes are not visible to them.
    async fn state_after_leave_is_frozen(hs) {
        let alice = hs.user("state11").await;
        let bob = hs.user("state11b").await;
        let room = alice.create_room(json!({"preset": "public_chat", "name": "Before"})).await;
        bob.join(&room).await.ok();
        bob.leave(&room).await.ok();
        alice.put_state(&room, "m.room.name", "", &json!({"name": "After"})).await.ok();
        assert_eq!(bob.get_state(&room, "m.room.name", "").await.ok()["name"], json!("Before"));
    }
}
