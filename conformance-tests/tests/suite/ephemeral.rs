//! Client-Server API §"Typing Notifications" (`PUT /rooms/{roomId}/typing/{userId}`),
//! §"Receipts" (`POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`), §"Fully read markers"
//! (`POST /rooms/{roomId}/read_markers`) and §"Presence" (`/presence/{userId}/status`).

use conformance_tests::client::joined;
use conformance_tests::{Client, SyncOpts, V3, conformance_test, enc};
use serde_json::{Value, json};

async fn two_in_room(hs: &conformance_tests::TestServer, p: &str) -> (Client, Client, String) {
    let alice = hs.user(p).await;
    let bob = hs.user(&format!("{p}b")).await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await.ok();
    (alice, bob, room)
}

fn ephemeral<'a>(s: &'a Value, room: &str, ty: &str) -> Option<&'a Value> {
    joined(s, room)?["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == ty)
}

fn typing_users(s: &Value, room: &str) -> Option<Vec<String>> {
    ephemeral(s, room, "m.typing").map(|e| {
        e["content"]["user_ids"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u.as_str().map(String::from))
            .collect()
    })
}

conformance_test! {
    /// §Typing Notifications: a user's typing notification reaches the other members as an
    /// `m.typing` ephemeral event listing them.
    async fn typing_is_delivered(hs) {
        let (alice, bob, room) = two_in_room(hs, "typ").await;
        alice.put(&format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)), &json!({"typing": true, "timeout": 30000})).await.ok();
        let s = bob.sync_until(None, None, |s| typing_users(s, &room).is_some_and(|u| u.contains(&alice.user_id))).await;
        assert!(typing_users(&s, &room).unwrap().contains(&alice.user_id));
    }
}

conformance_test! {
    /// §Typing Notifications: `typing: false` stops the notification (an `m.typing` event without
    /// the user follows).
    async fn typing_stops(hs) {
        let (alice, bob, room) = two_in_room(hs, "typ2").await;
        let path = format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
        alice.put(&path, &json!({"typing": true, "timeout": 30000})).await.ok();
        let s = bob.sync_until(None, None, |s| typing_users(s, &room).is_some_and(|u| u.contains(&alice.user_id))).await;
        alice.put(&path, &json!({"typing": false})).await.ok();
        let since = s["next_batch"].as_str().unwrap().to_string();
        bob.sync_until(Some(&since), None, |s| typing_users(s, &room).is_some_and(|u| !u.contains(&alice.user_id))).await;
    }
}

conformance_test! {
    /// §Typing Notifications: a user cannot send typing notifications for someone else
    /// (`M_FORBIDDEN`; the spec lists no error status for this endpoint: Synapse uses 400).
    async fn typing_for_other_user_is_forbidden(hs) {
        let (alice, bob, room) = two_in_room(hs, "typ3").await;
        let resp = bob
            .put(&format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)), &json!({"typing": true, "timeout": 1000}))
            .await;
        assert!(resp.status == 400 || resp.status == 403, "{} {}", resp.status, resp.text);
        assert_eq!(resp.errcode(), Some("M_FORBIDDEN"), "{}", resp.text);
    }
}

conformance_test! {
    /// §Receipts: an `m.read` receipt is delivered to other members as an `m.receipt` ephemeral
    /// event: `{eventId: {"m.read": {userId: {ts}}}}`.
    async fn read_receipt_is_delivered(hs) {
        let (alice, bob, room) = two_in_room(hs, "rcpt").await;
        let id = alice.send_text(&room, "read me").await;
        bob.post(&format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&room), enc(&id)), &json!({})).await.ok();
        let find = |s: &Value| ephemeral(s, &room, "m.receipt")
            .and_then(|e| e["content"][&id]["m.read"].get(&bob.user_id).cloned());
        let s = alice.sync_until(None, None, |s| find(s).is_some()).await;
        assert!(find(&s).unwrap()["ts"].as_u64().is_some(), "{s}");
    }
}

conformance_test! {
    /// §Private read receipts: an `m.read.private` receipt is visible to its sender only.
    async fn private_receipt_is_private(hs) {
        let (alice, bob, room) = two_in_room(hs, "rcpt2").await;
        let id = alice.send_text(&room, "private").await;
        bob.post(&format!("{V3}/rooms/{}/receipt/m.read.private/{}", enc(&room), enc(&id)), &json!({})).await.ok();
        let own = |s: &Value| ephemeral(s, &room, "m.receipt")
            .and_then(|e| e["content"][&id]["m.read.private"].get(&bob.user_id).cloned());
        bob.sync_until(None, None, |s| own(s).is_some()).await;
        let s = alice.sync(&SyncOpts::default()).await;
        assert!(!s.to_string().contains("m.read.private"), "{s}");
    }
}

conformance_test! {
    /// §Receipts: an unknown receipt type is refused with 400.
    async fn unknown_receipt_type_is_400(hs) {
        let (alice, _bob, room) = two_in_room(hs, "rcpt3").await;
        let id = alice.send_text(&room, "x").await;
        let resp = alice.post(&format!("{V3}/rooms/{}/receipt/org.example.nope/{}", enc(&room), enc(&id)), &json!({})).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
    }
}

conformance_test! {
    /// §Fully read markers: `POST /read_markers` with `m.fully_read` sets the `m.fully_read` room
    /// account data, delivered in `/sync`.
    async fn fully_read_marker(hs) {
        let (alice, bob, room) = two_in_room(hs, "rm").await;
        let id = alice.send_text(&room, "marker").await;
        bob.post(&format!("{V3}/rooms/{}/read_markers", enc(&room)), &json!({"m.fully_read": id, "m.read": id})).await.ok();
        let find = |s: &Value| joined(s, &room).and_then(|r| r["account_data"]["events"].as_array())
            .and_then(|evs| evs.iter().find(|e| e["type"] == "m.fully_read").cloned());
        let s = bob.sync_until(None, None, |s| find(s).is_some()).await;
        assert_eq!(find(&s).unwrap()["content"]["event_id"], json!(id));
    }
}

conformance_test! {
    /// §Presence: a user sets their presence and status message; `GET /presence/{userId}/status`
    /// returns them.
    async fn set_and_get_presence(hs) {
        let alice = hs.user("pres").await;
        let path = format!("{V3}/presence/{}/status", enc(&alice.user_id));
        alice.put(&path, &json!({"presence": "unavailable", "status_msg": "in a meeting"})).await.ok();
        let body = alice.get(&path).await.ok().clone();
        assert_eq!(body["presence"], json!("unavailable"));
        assert_eq!(body["status_msg"], json!("in a meeting"));
    }
}

conformance_test! {
    /// §Presence: a user cannot set another user's presence (403 `M_FORBIDDEN`).
    async fn presence_of_other_user_is_forbidden(hs) {
        let alice = hs.user("pres2").await;
        let bob = hs.user("pres2b").await;
        bob.put(&format!("{V3}/presence/{}/status", enc(&alice.user_id)), &json!({"presence": "offline"}))
            .await
            .expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Presence: an invalid presence value is refused with 400.
    async fn invalid_presence_value_is_400(hs) {
        let alice = hs.user("pres3").await;
        let resp = alice.put(&format!("{V3}/presence/{}/status", enc(&alice.user_id)), &json!({"presence": "sleeping"})).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
    }
}
