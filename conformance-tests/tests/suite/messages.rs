//! Client-Server API §"Sending events to a room" (`PUT /rooms/{roomId}/send/{eventType}/{txnId}`,
//! transaction IDs), §"Redactions", §"Getting events for a room" (`GET /rooms/{roomId}/event/{eventId}`,
//! `GET /rooms/{roomId}/messages`, `GET /rooms/{roomId}/context/{eventId}`).

use conformance_tests::{Client, V3, conformance_test, enc};
use serde_json::{Value, json};

/// Page through `/messages` from `from` in `dir` with `limit`, returning all events and the
/// number of pages, until the server omits `end` (or returns an empty chunk).
async fn page_all(
    c: &Client,
    room: &str,
    dir: &str,
    limit: u32,
    filter: Option<&Value>,
) -> (Vec<Value>, usize) {
    let mut from: Option<String> = None;
    let mut all = Vec::new();
    for page in 1..=200 {
        let body = c
            .messages(room, dir, from.as_deref(), limit, filter)
            .await
            .ok()
            .clone();
        let chunk = body["chunk"].as_array().cloned().unwrap_or_default();
        assert!(
            chunk.len() <= limit as usize,
            "page larger than limit {limit}: {}",
            chunk.len()
        );
        let empty = chunk.is_empty();
        all.extend(chunk);
        match body.get("end").and_then(Value::as_str) {
            Some(end) if !empty => from = Some(end.to_string()),
            _ => return (all, page),
        }
    }
    panic!("/messages did not finish paging in 200 pages");
}

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(String::from))
        .collect()
}

conformance_test! {
    /// §Sending events: `PUT /send/{eventType}/{txnId}` returns an `event_id` (`$`-prefixed).
    async fn send_returns_event_id(hs) {
        let alice = hs.user("msg").await;
        let room = alice.create_room(json!({})).await;
        let id = alice.send_text(&room, "hello").await;
        assert!(id.starts_with('$'), "{id}");
    }
}

conformance_test! {
    /// §Transaction identifiers: repeating a request with the same transaction ID (same device)
    /// returns the same event ID and does not create a second event.
    async fn same_txn_id_is_idempotent(hs) {
        let alice = hs.user("msg2").await;
        let room = alice.create_room(json!({})).await;
        let content = json!({"msgtype": "m.text", "body": "only once"});
        let a = alice.send_txn(&room, "m.room.message", "fixed-txn-1", &content).await.ok().clone();
        let b = alice.send_txn(&room, "m.room.message", "fixed-txn-1", &content).await.ok().clone();
        assert_eq!(a["event_id"], b["event_id"]);
        let filter = json!({"types": ["m.room.message"]});
        let (events, _) = page_all(&alice, &room, "b", 50, Some(&filter)).await;
        assert_eq!(bodies(&events), vec!["only once".to_string()]);
    }
}

conformance_test! {
    /// §Transaction identifiers: transaction IDs are scoped to the device: the same ID from
    /// another device of the same user creates a new event.
    async fn txn_ids_are_scoped_per_device(hs) {
        let alice = hs.user("msg3").await;
        let other = alice.login_again().await;
        let room = alice.create_room(json!({})).await;
        let content = json!({"msgtype": "m.text", "body": "per device"});
        let a = alice.send_txn(&room, "m.room.message", "shared-txn", &content).await.ok().clone();
        let b = other.send_txn(&room, "m.room.message", "shared-txn", &content).await.ok().clone();
        assert_ne!(a["event_id"], b["event_id"]);
    }
}

conformance_test! {
    /// §Transaction identifiers: different transaction IDs create different events.
    async fn different_txn_ids_create_events(hs) {
        let alice = hs.user("msg4").await;
        let room = alice.create_room(json!({})).await;
        let a = alice.send_text(&room, "one").await;
        let b = alice.send_text(&room, "one").await;
        assert_ne!(a, b);
    }
}

conformance_test! {
    /// §`GET /rooms/{roomId}/event/{eventId}`: returns the event with its content, sender, type,
    /// room ID and `origin_server_ts`.
    async fn get_event_by_id(hs) {
        let alice = hs.user("msg5").await;
        let room = alice.create_room(json!({})).await;
        let id = alice.send(&room, "org.hearth.conformance.custom", json!({"answer": 42})).await;
        let ev = alice.get(&format!("{V3}/rooms/{}/event/{}", enc(&room), enc(&id))).await.ok().clone();
        assert_eq!(ev["event_id"], json!(id));
        assert_eq!(ev["type"], json!("org.hearth.conformance.custom"));
        assert_eq!(ev["content"]["answer"], json!(42));
        assert_eq!(ev["sender"], json!(alice.user_id));
        assert_eq!(ev["room_id"], json!(room));
        assert!(ev["origin_server_ts"].as_u64().is_some_and(|t| t > 1_600_000_000_000));
    }
}

conformance_test! {
    /// §`GET /rooms/{roomId}/event/{eventId}`: an unknown event answers 404 `M_NOT_FOUND`.
    async fn get_unknown_event_is_404(hs) {
        let alice = hs.user("msg6").await;
        let room = alice.create_room(json!({})).await;
        alice.get(&format!("{V3}/rooms/{}/event/{}", enc(&room), enc("$doesnotexist"))).await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §`GET /rooms/{roomId}/event/{eventId}`: a user who cannot see the room gets an error
    /// (404 "not found or no permission" per the spec; 403 also seen in the wild).
    async fn get_event_of_foreign_room_is_refused(hs) {
        let alice = hs.user("msg7").await;
        let bob = hs.user("msg7b").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        let id = alice.send_text(&room, "secret").await;
        let resp = bob.get(&format!("{V3}/rooms/{}/event/{}", enc(&room), enc(&id))).await;
        assert!(resp.status == 404 || resp.status == 403, "{} {}", resp.status, resp.text);
        assert!(!resp.text.contains("secret"));
    }
}

conformance_test! {
    /// §Redactions: `PUT /redact/{eventId}/{txnId}` returns the redaction's event ID; the redacted
    /// event's content is stripped and its `unsigned.redacted_because` holds the redaction.
    async fn redact_strips_content(hs) {
        let alice = hs.user("msg8").await;
        let room = alice.create_room(json!({})).await;
        let id = alice.send_text(&room, "to be redacted").await;
        let resp = alice.put(&format!("{V3}/rooms/{}/redact/{}/{}", enc(&room), enc(&id), alice.txn_id()), &json!({"reason": "oops"})).await;
        let redaction_id = resp.ok()["event_id"].as_str().unwrap().to_string();
        let ev = alice.get(&format!("{V3}/rooms/{}/event/{}", enc(&room), enc(&id))).await.ok().clone();
        assert_eq!(ev["content"], json!({}), "{ev}");
        assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], json!(redaction_id), "{ev}");
    }
}

conformance_test! {
    /// §Redactions: a member may redact their own events without elevated power.
    async fn redact_own_event_without_power(hs) {
        let alice = hs.user("msg9").await;
        let bob = hs.user("msg9b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let id = bob.send_text(&room, "bob's own").await;
        bob.put(&format!("{V3}/rooms/{}/redact/{}/{}", enc(&room), enc(&id), bob.txn_id()), &json!({})).await.ok();
    }
}

conformance_test! {
    /// §Redactions: redacting someone else's event needs the `redact` power level
    /// (403 `M_FORBIDDEN` otherwise).
    async fn redact_others_event_without_power_is_forbidden(hs) {
        let alice = hs.user("msg10").await;
        let bob = hs.user("msg10b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let id = alice.send_text(&room, "alice's").await;
        bob.put(&format!("{V3}/rooms/{}/redact/{}/{}", enc(&room), enc(&id), bob.txn_id()), &json!({}))
            .await
            .expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §`GET /messages` with `dir=b` (no `from`): newest events first.
    async fn messages_backwards_newest_first(hs) {
        let alice = hs.user("msg11").await;
        let room = alice.create_room(json!({})).await;
        for i in 0..5 {
            alice.send_text(&room, &format!("m{i}")).await;
        }
        let filter = json!({"types": ["m.room.message"]});
        let body = alice.messages(&room, "b", None, 3, Some(&filter)).await.ok().clone();
        assert_eq!(bodies(body["chunk"].as_array().unwrap()), vec!["m4", "m3", "m2"]);
        assert!(body["start"].is_string() && body["end"].is_string());
    }
}

conformance_test! {
    /// §`GET /messages`: paging backwards with `end` tokens returns every event exactly once,
    /// in reverse order, and the last page has no `end`.
    async fn messages_paging_backwards_is_complete(hs) {
        let alice = hs.user("msg12").await;
        let room = alice.create_room(json!({})).await;
        let sent: Vec<String> = (0..12).map(|i| format!("b{i}")).collect();
        for b in &sent {
            alice.send_text(&room, b).await;
        }
        let (events, pages) = page_all(&alice, &room, "b", 4, None).await;
        assert!(pages >= 3, "only {pages} pages");
        let mut got = bodies(&events);
        got.reverse();
        assert_eq!(got, sent);
        let mut ids: Vec<&str> = events.iter().filter_map(|e| e["event_id"].as_str()).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "an event was returned twice");
        assert_eq!(events.last().unwrap()["type"], json!("m.room.create"), "paging back ends at the room's creation");
    }
}

conformance_test! {
    /// §`GET /messages` with `dir=f` (no `from`): from the start of the room, chronological,
    /// starting with `m.room.create`; paging forwards returns every event once.
    async fn messages_paging_forwards_is_complete(hs) {
        let alice = hs.user("msg13").await;
        let room = alice.create_room(json!({})).await;
        let sent: Vec<String> = (0..7).map(|i| format!("f{i}")).collect();
        for b in &sent {
            alice.send_text(&room, b).await;
        }
        let (events, _) = page_all(&alice, &room, "f", 3, None).await;
        assert_eq!(events[0]["type"], json!("m.room.create"));
        assert_eq!(bodies(&events), sent);
        let ts: Vec<u64> = events.iter().map(|e| e["origin_server_ts"].as_u64().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "timestamps not chronological: {ts:?}");
    }
}

conformance_test! {
    /// §`GET /messages`: a backwards page's `end` token, used with `dir=f`, pages forward again
    /// over the same events (tokens are positions between events).
    async fn messages_tokens_work_in_both_directions(hs) {
        let alice = hs.user("msg14").await;
        let room = alice.create_room(json!({})).await;
        for i in 0..6 {
            alice.send_text(&room, &format!("d{i}")).await;
        }
        let filter = json!({"types": ["m.room.message"]});
        let back = alice.messages(&room, "b", None, 3, Some(&filter)).await.ok().clone();
        assert_eq!(bodies(back["chunk"].as_array().unwrap()), vec!["d5", "d4", "d3"]);
        let end = back["end"].as_str().unwrap();
        let fwd = alice.messages(&room, "f", Some(end), 10, Some(&filter)).await.ok().clone();
        assert_eq!(bodies(fwd["chunk"].as_array().unwrap()), vec!["d3", "d4", "d5"]);
    }
}

conformance_test! {
    /// §`GET /messages`: the `filter` parameter restricts event types.
    async fn messages_filter_by_type(hs) {
        let alice = hs.user("msg15").await;
        let room = alice.create_room(json!({})).await;
        alice.send_text(&room, "plain").await;
        alice.send(&room, "org.hearth.conformance.other", json!({"x": 1})).await;
        let filter = json!({"types": ["org.hearth.conformance.other"]});
        let body = alice.messages(&room, "b", None, 20, Some(&filter)).await.ok().clone();
        let chunk = body["chunk"].as_array().unwrap();
        assert_eq!(chunk.len(), 1, "{body}");
        assert_eq!(chunk[0]["type"], json!("org.hearth.conformance.other"));
    }
}

conformance_test! {
    /// §`GET /messages`: a user who never joined a private room gets 403 `M_FORBIDDEN`.
    async fn messages_forbidden_for_non_member(hs) {
        let alice = hs.user("msg16").await;
        let bob = hs.user("msg16b").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        bob.messages(&room, "b", None, 10, None).await.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Sending events: a non-member cannot send (403 `M_FORBIDDEN`).
    async fn send_as_non_member_is_forbidden(hs) {
        let alice = hs.user("msg17").await;
        let bob = hs.user("msg17b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.send_txn(&room, "m.room.message", "t1", &json!({"msgtype": "m.text", "body": "hi"}))
            .await
            .expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §`GET /context/{eventId}`: returns the event with the events just before and after it,
    /// and `start`/`end` tokens.
    async fn context_around_event(hs) {
        let alice = hs.user("msg18").await;
        let room = alice.create_room(json!({})).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(alice.send_text(&room, &format!("c{i}")).await);
        }
        let body = alice.get(&format!("{V3}/rooms/{}/context/{}?limit=4", enc(&room), enc(&ids[2]))).await.ok().clone();
        assert_eq!(body["event"]["event_id"], json!(ids[2]));
        assert_eq!(body["events_before"][0]["event_id"], json!(ids[1]), "events_before starts with the closest event");
        assert_eq!(body["events_after"][0]["event_id"], json!(ids[3]));
        assert!(body["start"].is_string() && body["end"].is_string());
        assert!(body["state"].as_array().is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.create")), "state at the event");
    }
}

conformance_test! {
    /// §`GET /context/{eventId}`: an unknown event answers 404 `M_NOT_FOUND`.
    async fn context_unknown_event_is_404(hs) {
        let alice = hs.user("msg19").await;
        let room = alice.create_room(json!({})).await;
        alice.get(&format!("{V3}/rooms/{}/context/{}", enc(&room), enc("$nope"))).await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §m.room.message: message content round-trips unchanged, including `format`/`formatted_body`
    /// and unknown keys.
    async fn message_content_round_trips(hs) {
        let alice = hs.user("msg20").await;
        let room = alice.create_room(json!({})).await;
        let content = json!({"msgtype": "m.text", "body": "**bold** ünïcødé 🎉", "format": "org.matrix.custom.html",
            "formatted_body": "<b>bold</b> ünïcødé 🎉", "org.hearth.extra": {"nested": [1, 2, 3]}});
        let id = alice.send(&room, "m.room.message", content.clone()).await;
        let ev = alice.get(&format!("{V3}/rooms/{}/event/{}", enc(&room), enc(&id))).await.ok().clone();
        assert_eq!(ev["content"], content);
    }
}

conformance_test! {
    /// §History visibility (`shared`) / §`GET /messages`: a user who left can page the history
    /// up to their leave, but sees nothing sent after it.
    async fn messages_after_leave_stop_at_leave(hs) {
        let alice = hs.user("msg21").await;
        let bob = hs.user("msg21b").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        alice.send_text(&room, "while bob is here").await;
        bob.leave(&room).await.ok();
        alice.send_text(&room, "after bob left").await;
        let (events, _) = page_all(&bob, &room, "b", 10, None).await;
        let got = bodies(&events);
        assert!(got.contains(&"while bob is here".to_string()), "{got:?}");
        assert!(!got.contains(&"after bob left".to_string()), "{got:?}");
    }
}

conformance_test! {
    /// §Redactions: `/messages` returns a redacted event with its content stripped, and the
    /// `m.room.redaction` event naming it (`redacts`, top level or in content from v11).
    async fn redaction_visible_in_messages(hs) {
        let alice = hs.user("msg22").await;
        let room = alice.create_room(json!({})).await;
        let id = alice.send_text(&room, "secret words").await;
        alice.put(&format!("{V3}/rooms/{}/redact/{}/{}", enc(&room), enc(&id), alice.txn_id()), &json!({})).await.ok();
        let body = alice.messages(&room, "b", None, 10, None).await.ok().clone();
        let chunk = body["chunk"].as_array().unwrap();
        let redaction = chunk.iter().find(|e| e["type"] == "m.room.redaction").expect("redaction event");
        let target = redaction.get("redacts").or_else(|| redaction["content"].get("redacts")).cloned();
        assert_eq!(target, Some(json!(id)));
        let original = chunk.iter().find(|e| e["event_id"] == json!(id)).expect("redacted event still listed");
        assert!(original["content"].get("body").is_none(), "{original}");
        assert!(!body.to_string().contains("secret words"));
    }
}

conformance_test! {
    /// §`GET /messages`: a sync `next_batch` token is a valid `from`: paging backwards from it
    /// returns the events before that point, newest first.
    async fn messages_from_sync_token(hs) {
        let alice = hs.user("msg23").await;
        let room = alice.create_room(json!({})).await;
        alice.send_text(&room, "s0").await;
        alice.send_text(&room, "s1").await;
        let token = alice.sync(&conformance_tests::SyncOpts::default()).await["next_batch"].as_str().unwrap().to_string();
        alice.send_text(&room, "after the token").await;
        let filter = json!({"types": ["m.room.message"]});
        let body = alice.messages(&room, "b", Some(&token), 10, Some(&filter)).await.ok().clone();
        assert_eq!(bodies(body["chunk"].as_array().unwrap()), vec!["s1", "s0"]);
    }
}

conformance_test! {
    /// §`GET /messages`: the `to` token stops pagination: paging backwards from the end `to` a
    /// sync token returns only the events after that token.
    async fn messages_to_token_stops(hs) {
        let alice = hs.user("msg24").await;
        let room = alice.create_room(json!({})).await;
        alice.send_text(&room, "before").await;
        let token = alice.sync(&conformance_tests::SyncOpts::default()).await["next_batch"].as_str().unwrap().to_string();
        alice.send_text(&room, "after1").await;
        alice.send_text(&room, "after2").await;
        let body = alice.get(&format!("{V3}/rooms/{}/messages?dir=b&limit=20&to={}", enc(&room), enc(&token))).await.ok().clone();
        assert_eq!(bodies(body["chunk"].as_array().unwrap()), vec!["after2", "after1"]);
    }
}
