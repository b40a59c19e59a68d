//! Client-Server API §"Relationship types" / §"Relations" (`GET /rooms/{roomId}/relations/{eventId}`),
//! §"Server Side Search" (`POST /search`), §"Room Upgrades" (`POST /rooms/{roomId}/upgrade`),
//! §"User Directory" (`POST /user_directory/search`) and §"Refreshing access tokens".

use conformance_tests::{V3, conformance_test, enc, eventually, unique_suffix};
use serde_json::json;

const V1: &str = "/_matrix/client/v1";

conformance_test! {
    /// §Relations: `GET /relations/{eventId}` lists events that relate to the parent (here a
    /// thread reply), and `/relations/{eventId}/{relType}` filters by relation type.
    async fn relations_list_children(hs) {
        let alice = hs.user("rel").await;
        let room = alice.create_room(json!({})).await;
        let root = alice.send_text(&room, "thread root").await;
        let reply = alice.send(&room, "m.room.message", json!({"msgtype": "m.text", "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}})).await;
        let edit = alice.send(&room, "m.room.message", json!({"msgtype": "m.text", "body": "* edited",
            "m.new_content": {"msgtype": "m.text", "body": "edited"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": root}})).await;
        let all = alice.get(&format!("{V1}/rooms/{}/relations/{}", enc(&room), enc(&root))).await.ok().clone();
        let ids: Vec<&str> = all["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
        assert!(ids.contains(&reply.as_str()) && ids.contains(&edit.as_str()), "{all}");
        let threads = alice.get(&format!("{V1}/rooms/{}/relations/{}/m.thread", enc(&room), enc(&root))).await.ok().clone();
        let ids: Vec<&str> = threads["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
        assert_eq!(ids, vec![reply.as_str()]);
    }
}

conformance_test! {
    /// §Server Side Search: `POST /search` over `room_events` finds a message by a word of its
    /// body, in the user's rooms.
    async fn search_finds_message(hs) {
        let alice = hs.user("search").await;
        let room = alice.create_room(json!({})).await;
        let word = format!("zebra{}", unique_suffix().replace('-', ""));
        let id = alice.send_text(&room, &format!("the {word} crossed the road")).await;
        alice.send_text(&room, "nothing to see here").await;
        let body = json!({"search_categories": {"room_events": {"search_term": word}}});
        let results = eventually("message is searchable", || async {
            let resp = alice.post(&format!("{V3}/search"), &body).await.ok().clone();
            let results = resp["search_categories"]["room_events"]["results"].as_array().cloned().unwrap_or_default();
            (!results.is_empty()).then_some(results)
        }).await;
        assert_eq!(results.len(), 1, "{results:?}");
        assert_eq!(results[0]["result"]["event_id"], json!(id));
    }
}

conformance_test! {
    /// §Room Upgrades: `POST /upgrade` creates a replacement room (returned as
    /// `replacement_room`), tombstones the old room pointing at it, and the new room's
    /// `m.room.create` names its predecessor.
    async fn upgrade_room(hs) {
        let alice = hs.user("upg").await;
        let room = alice.create_room(json!({"room_version": "10", "name": "Upgradable"})).await;
        let resp = alice.post(&format!("{V3}/rooms/{}/upgrade", enc(&room)), &json!({"new_version": "11"})).await;
        let new_room = resp.ok()["replacement_room"].as_str().unwrap().to_string();
        let tomb = alice.get_state(&room, "m.room.tombstone", "").await.ok().clone();
        assert_eq!(tomb["replacement_room"], json!(new_room));
        let create = alice.get_state(&new_room, "m.room.create", "").await.ok().clone();
        assert_eq!(create["room_version"], json!("11"));
        assert_eq!(create["predecessor"]["room_id"], json!(room));
        assert_eq!(alice.get_state(&new_room, "m.room.name", "").await.ok()["name"], json!("Upgradable"));
    }
}

conformance_test! {
    /// §Room Upgrades: upgrading to an unknown room version fails with 400
    /// `M_UNSUPPORTED_ROOM_VERSION`.
    async fn upgrade_to_unknown_version_is_rejected(hs) {
        let alice = hs.user("upg2").await;
        let room = alice.create_room(json!({})).await;
        alice.post(&format!("{V3}/rooms/{}/upgrade", enc(&room)), &json!({"new_version": "org.example.nope"}))
            .await
            .expect_err(400, "M_UNSUPPORTED_ROOM_VERSION");
    }
}

conformance_test! {
    /// §User Directory: users who share a room with the searcher are found by display name.
    async fn user_directory_finds_room_mate(hs) {
        let alice = hs.user("ud").await;
        let bob = hs.user("udb").await;
        let name = format!("Findable{}", unique_suffix().replace('-', ""));
        bob.put(&format!("{V3}/profile/{}/displayname", enc(&bob.user_id)), &json!({"displayname": name})).await.ok();
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        alice.invite_and_join(&room, &bob).await;
        let found = eventually("bob in the user directory", || async {
            let resp = alice.post(&format!("{V3}/user_directory/search"), &json!({"search_term": name, "limit": 10})).await.ok().clone();
            resp["results"].as_array().unwrap().iter().find(|u| u["user_id"] == json!(bob.user_id)).cloned()
        }).await;
        assert_eq!(found["display_name"], json!(name));
    }
}

conformance_test! {
    /// §Refreshing access tokens: registering with `refresh_token: true` returns a refresh
    /// token and `expires_in_ms`; `POST /refresh` exchanges it for a new working access token.
    async fn refresh_token_flow(hs) {
        let anon = hs.anonymous();
        let localpart = format!("refresh-{}", unique_suffix());
        let resp = anon.register_raw(&localpart, "pw-123456", json!({"refresh_token": true})).await;
        let body = resp.ok().clone();
        let refresh = body["refresh_token"].as_str().expect("refresh_token").to_string();
        assert!(body["expires_in_ms"].as_u64().is_some(), "{body}");
        let new = anon.post(&format!("{V3}/refresh"), &json!({"refresh_token": refresh})).await.ok().clone();
        let token = new["access_token"].as_str().unwrap();
        assert_ne!(Some(token), body["access_token"].as_str());
        let who = anon.with_token(Some(token)).whoami().await;
        assert_eq!(who.ok()["user_id"], body["user_id"]);
    }
}

conformance_test! {
    /// §Refreshing access tokens: an unknown refresh token is refused with 401 `M_UNKNOWN_TOKEN`.
    async fn unknown_refresh_token_is_refused(hs) {
        hs.anonymous().post(&format!("{V3}/refresh"), &json!({"refresh_token": "syr_not_a_real_refresh_token"}))
            .await
            .expect_err(401, "M_UNKNOWN_TOKEN");
    }
}
