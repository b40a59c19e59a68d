//! Client-Server API §"Client Config" (account data: `/user/{userId}/account_data/{type}`,
//! `/user/{userId}/rooms/{roomId}/account_data/{type}`) and §"Room Tagging" (`/tags`).

use conformance_tests::client::joined;
use conformance_tests::{SyncOpts, V3, conformance_test, enc};
use serde_json::{Value, json};

conformance_test! {
    /// §Client Config: global account data set with PUT is returned by GET.
    async fn global_account_data_round_trip(hs) {
        let alice = hs.user("ad").await;
        let path = format!("{V3}/user/{}/account_data/org.hearth.conformance.settings", enc(&alice.user_id));
        alice.put(&path, &json!({"theme": "dark", "n": 3})).await.ok();
        assert_eq!(*alice.get(&path).await.ok(), json!({"theme": "dark", "n": 3}));
    }
}

conformance_test! {
    /// §Client Config: account data that was never set answers 404 `M_NOT_FOUND`.
    async fn unset_account_data_is_404(hs) {
        let alice = hs.user("ad2").await;
        alice.get(&format!("{V3}/user/{}/account_data/org.hearth.conformance.never", enc(&alice.user_id)))
            .await
            .expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §Client Config: a user cannot read or write another user's account data (403 `M_FORBIDDEN`).
    async fn other_users_account_data_is_forbidden(hs) {
        let alice = hs.user("ad3").await;
        let bob = hs.user("ad3b").await;
        let path = format!("{V3}/user/{}/account_data/org.hearth.conformance.x", enc(&alice.user_id));
        bob.put(&path, &json!({"a": 1})).await.expect_err(403, "M_FORBIDDEN");
        bob.get(&path).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Client Config: `m.fully_read` and `m.push_rules` cannot be set through the account data
    /// API (405 `M_BAD_JSON`).
    async fn server_managed_types_are_refused(hs) {
        let alice = hs.user("ad4").await;
        let path = format!("{V3}/user/{}/account_data/m.push_rules", enc(&alice.user_id));
        alice.put(&path, &json!({"global": {}})).await.expect_err(405, "M_BAD_JSON");
    }
}

conformance_test! {
    /// §Client Config: global account data is delivered in `/sync` under `account_data`, and
    /// changes arrive in incremental syncs.
    async fn global_account_data_in_sync(hs) {
        let alice = hs.user("ad5").await;
        let s0 = alice.sync(&SyncOpts::default()).await;
        alice.put(&format!("{V3}/user/{}/account_data/org.hearth.conformance.sync", enc(&alice.user_id)), &json!({"v": 7})).await.ok();
        let find = |s: &Value| s["account_data"]["events"].as_array().and_then(|evs| {
            evs.iter().find(|e| e["type"] == "org.hearth.conformance.sync").cloned()
        });
        let since = s0["next_batch"].as_str().unwrap().to_string();
        let s1 = alice.sync_until(Some(&since), None, |s| find(s).is_some()).await;
        assert_eq!(find(&s1).unwrap()["content"], json!({"v": 7}));
    }
}

conformance_test! {
    /// §Client Config: per-room account data round-trips and is delivered in the room's
    /// `account_data` section of `/sync`.
    async fn room_account_data(hs) {
        let alice = hs.user("ad6").await;
        let room = alice.create_room(json!({})).await;
        let path = format!("{V3}/user/{}/rooms/{}/account_data/org.hearth.conformance.room", enc(&alice.user_id), enc(&room));
        alice.put(&path, &json!({"pinned": true})).await.ok();
        assert_eq!(*alice.get(&path).await.ok(), json!({"pinned": true}));
        let find = |s: &Value| joined(s, &room).and_then(|r| r["account_data"]["events"].as_array()).and_then(|evs| {
            evs.iter().find(|e| e["type"] == "org.hearth.conformance.room").cloned()
        });
        let s = alice.sync_until(None, None, |s| find(s).is_some()).await;
        assert_eq!(find(&s).unwrap()["content"], json!({"pinned": true}));
    }
}

conformance_test! {
    /// §Room Tagging: PUT a tag, GET lists it with its `order`, DELETE removes it.
    async fn tags_round_trip(hs) {
        let alice = hs.user("tag").await;
        let room = alice.create_room(json!({})).await;
        let base = format!("{V3}/user/{}/rooms/{}/tags", enc(&alice.user_id), enc(&room));
        alice.put(&format!("{base}/m.favourite"), &json!({"order": 0.25})).await.ok();
        alice.put(&format!("{base}/u.work"), &json!({})).await.ok();
        let tags = alice.get(&base).await.ok()["tags"].clone();
        assert_eq!(tags["m.favourite"]["order"], json!(0.25));
        assert!(tags.get("u.work").is_some(), "{tags}");
        alice.delete(&format!("{base}/u.work")).await.ok();
        let tags = alice.get(&base).await.ok()["tags"].clone();
        assert!(tags.get("u.work").is_none(), "{tags}");
        assert!(tags.get("m.favourite").is_some());
    }
}

conformance_test! {
    /// §Room Tagging: tags are delivered as the `m.tag` room account data event in `/sync`.
    async fn tags_in_sync(hs) {
        let alice = hs.user("tag2").await;
        let room = alice.create_room(json!({})).await;
        alice.put(&format!("{V3}/user/{}/rooms/{}/tags/m.lowpriority", enc(&alice.user_id), enc(&room)), &json!({"order": 1})).await.ok();
        let find = |s: &Value| joined(s, &room).and_then(|r| r["account_data"]["events"].as_array()).and_then(|evs| {
            evs.iter().find(|e| e["type"] == "m.tag").cloned()
        });
        let s = alice.sync_until(None, None, |s| find(s).is_some()).await;
        assert!(find(&s).unwrap()["content"]["tags"].get("m.lowpriority").is_some(), "{s}");
    }
}

conformance_test! {
    /// §Room Tagging: another user's tags cannot be read (403 `M_FORBIDDEN`).
    async fn other_users_tags_are_forbidden(hs) {
        let alice = hs.user("tag3").await;
        let bob = hs.user("tag3b").await;
        let room = alice.create_room(json!({})).await;
        bob.get(&format!("{V3}/user/{}/rooms/{}/tags", enc(&alice.user_id), enc(&room))).await.expect_err(403, "M_FORBIDDEN");
    }
}
