//! Client-Server API §"Creation" of rooms (`POST /createRoom`).

use conformance_tests::{V3, conformance_test, enc};
use serde_json::{Value, json};

conformance_test! {
    /// §Room creation: `POST /createRoom` returns a `room_id` (a `!` identifier) and the creator
    /// is joined (it appears in `GET /joined_rooms`).
    async fn create_room_returns_id_and_joins_creator(hs) {
        let alice = hs.user("create").await;
        let room = alice.create_room(json!({})).await;
        assert!(room.starts_with('!'), "{room}");
        let joined = alice.get(&format!("{V3}/joined_rooms")).await;
        assert!(joined.ok()["joined_rooms"].as_array().unwrap().contains(&json!(room)));
    }
}

conformance_test! {
    /// §Room creation: the room starts with an `m.room.create` event sent by the creator carrying
    /// the `room_version`, and the creator's membership is `join`.
    async fn create_event_and_creator_membership(hs) {
        let alice = hs.user("create2").await;
        let room = alice.create_room(json!({})).await;
        let state = alice.get(&format!("{V3}/rooms/{}/state", enc(&room))).await.ok().clone();
        let events = state.as_array().unwrap();
        let create = events.iter().find(|e| e["type"] == "m.room.create").expect("m.room.create in state");
        assert_eq!(create["sender"], json!(alice.user_id));
        assert!(create["content"]["room_version"].is_string(), "{create}");
        let member = events.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == json!(alice.user_id)).expect("creator member event");
        assert_eq!(member["content"]["membership"], json!("join"));
        assert!(events.iter().any(|e| e["type"] == "m.room.power_levels"));
        assert!(events.iter().any(|e| e["type"] == "m.room.join_rules"));
    }
}

conformance_test! {
    /// §Room creation: `name` and `topic` become `m.room.name` and `m.room.topic` state.
    async fn name_and_topic_become_state(hs) {
        let alice = hs.user("create3").await;
        let room = alice.create_room(json!({"name": "Conformance Room", "topic": "Testing topics"})).await;
        assert_eq!(alice.get_state(&room, "m.room.name", "").await.ok()["name"], json!("Conformance Room"));
        assert_eq!(alice.get_state(&room, "m.room.topic", "").await.ok()["topic"], json!("Testing topics"));
    }
}

conformance_test! {
    /// §Room creation: `preset: public_chat` gives join rule `public`; `private_chat` gives `invite`.
    async fn presets_set_join_rules(hs) {
        let alice = hs.user("create4").await;
        let public = alice.create_room(json!({"preset": "public_chat"})).await;
        let private = alice.create_room(json!({"preset": "private_chat"})).await;
        assert_eq!(alice.get_state(&public, "m.room.join_rules", "").await.ok()["join_rule"], json!("public"));
        assert_eq!(alice.get_state(&private, "m.room.join_rules", "").await.ok()["join_rule"], json!("invite"));
    }
}

conformance_test! {
    /// §Room creation: `visibility: public` without a preset implies `public_chat` (join rule public).
    async fn public_visibility_implies_public_join_rule(hs) {
        let alice = hs.user("create5").await;
        let room = alice.create_room(json!({"visibility": "public"})).await;
        assert_eq!(alice.get_state(&room, "m.room.join_rules", "").await.ok()["join_rule"], json!("public"));
    }
}

conformance_test! {
    /// §Room creation: `room_alias_name` creates the local alias `#name:server` pointing at the room
    /// and sets it as `m.room.canonical_alias`.
    async fn room_alias_name_creates_alias(hs) {
        let alice = hs.user("create6").await;
        let local = format!("alias-{}", conformance_tests::unique_suffix());
        let room = alice.create_room(json!({"room_alias_name": local})).await;
        let alias = format!("#{local}:{}", alice.server_name());
        let resolved = alice.get(&format!("{V3}/directory/room/{}", enc(&alias))).await;
        assert_eq!(resolved.ok()["room_id"], json!(room));
        assert_eq!(alice.get_state(&room, "m.room.canonical_alias", "").await.ok()["alias"], json!(alias));
    }
}

conformance_test! {
    /// §Room creation: a `room_alias_name` already taken fails with 400 `M_ROOM_IN_USE`.
    async fn taken_alias_is_m_room_in_use(hs) {
        let alice = hs.user("create7").await;
        let local = format!("taken-{}", conformance_tests::unique_suffix());
        alice.create_room(json!({"room_alias_name": local})).await;
        let resp = alice.post(&format!("{V3}/createRoom"), &json!({"room_alias_name": local})).await;
        resp.expect_err(400, "M_ROOM_IN_USE");
    }
}

conformance_test! {
    /// §Room creation: events in `initial_state` are part of the room's state.
    async fn initial_state_is_applied(hs) {
        let alice = hs.user("create8").await;
        let room = alice.create_room(json!({"initial_state": [
            {"type": "org.hearth.conformance.initial", "state_key": "k", "content": {"value": 42}},
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
        ]})).await;
        assert_eq!(alice.get_state(&room, "org.hearth.conformance.initial", "k").await.ok()["value"], json!(42));
        assert_eq!(alice.get_state(&room, "m.room.history_visibility", "").await.ok()["history_visibility"], json!("joined"));
    }
}

conformance_test! {
    /// §Room creation: `power_level_content_override` is merged into the initial power levels.
    async fn power_level_override_is_applied(hs) {
        let alice = hs.user("create9").await;
        let room = alice.create_room(json!({"power_level_content_override": {"events_default": 7, "invite": 33}})).await;
        let pl = alice.get_state(&room, "m.room.power_levels", "").await.ok().clone();
        assert_eq!(pl["events_default"], json!(7));
        assert_eq!(pl["invite"], json!(33));
    }
}

conformance_test! {
    /// §Room creation: an unsupported `room_version` fails with 400 `M_UNSUPPORTED_ROOM_VERSION`.
    async fn unsupported_room_version_is_rejected(hs) {
        let alice = hs.user("create10").await;
        let resp = alice.post(&format!("{V3}/createRoom"), &json!({"room_version": "org.example.nope"})).await;
        resp.expect_err(400, "M_UNSUPPORTED_ROOM_VERSION");
    }
}

conformance_test! {
    /// §Room creation: an explicit supported `room_version` is used for the room.
    async fn explicit_room_version_is_used(hs) {
        let alice = hs.user("create11").await;
        let room = alice.create_room(json!({"room_version": "10"})).await;
        assert_eq!(alice.get_state(&room, "m.room.create", "").await.ok()["room_version"], json!("10"));
    }
}

conformance_test! {
    /// §Room creation: `creation_content` keys (e.g. `m.federate`) end up in `m.room.create`.
    async fn creation_content_is_applied(hs) {
        let alice = hs.user("create12").await;
        let room = alice.create_room(json!({"creation_content": {"m.federate": false}})).await;
        assert_eq!(alice.get_state(&room, "m.room.create", "").await.ok()["m.federate"], json!(false));
    }
}

conformance_test! {
    /// §Room creation: users in `invite` are invited; with `is_direct` their member event says so,
    /// and the invitee sees the invite in `/sync`.
    async fn invite_list_and_is_direct(hs) {
        let alice = hs.user("create13").await;
        let bob = hs.user("create13b").await;
        let room = alice.create_room(json!({"invite": [bob.user_id], "is_direct": true})).await;
        let member = alice.get_state(&room, "m.room.member", &bob.user_id).await.ok().clone();
        assert_eq!(member["membership"], json!("invite"));
        assert_eq!(member["is_direct"], json!(true));
        let sync: Value = bob.sync_until(None, None, |s| s.pointer(&format!("/rooms/invite/{room}")).is_some()).await;
        assert!(sync["rooms"]["invite"][&room]["invite_state"]["events"].is_array());
    }
}

conformance_test! {
    /// §Room creation: `visibility: public` publishes the room in the public room directory.
    async fn public_visibility_publishes_room(hs) {
        let alice = hs.user("create14").await;
        let room = alice.create_room(json!({"visibility": "public", "name": "Listed"})).await;
        let vis = alice.get(&format!("{V3}/directory/list/room/{}", enc(&room))).await;
        assert_eq!(vis.ok()["visibility"], json!("public"));
    }
}

conformance_test! {
    /// §Room creation: rooms are private to the directory by default (`visibility: private`).
    async fn rooms_are_unlisted_by_default(hs) {
        let alice = hs.user("create15").await;
        let room = alice.create_room(json!({})).await;
        let vis = alice.get(&format!("{V3}/directory/list/room/{}", enc(&room))).await;
        assert_eq!(vis.ok()["visibility"], json!("private"));
    }
}
