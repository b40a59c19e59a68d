//! Client-Server API §"Server Side Search" (`POST /search`, `room_events`): order, pagination
//! with `next_batch`, groups, event context, and which rooms are searched.

use conformance_tests::{V3, conformance_test, enc, eventually, unique_suffix};
use serde_json::{Value, json};

/// A word no other test uses.
fn unique_word(prefix: &str) -> String {
    format!("{prefix}{}", unique_suffix().replace('-', ""))
}

fn result_ids(room_events: &Value) -> Vec<String> {
    room_events["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["result"]["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// `room_events` of `body`, once the server finds at least `want` results.
async fn search_until(alice: &conformance_tests::Client, body: &Value, want: usize) -> Value {
    eventually("messages are searchable", || async {
        let resp = alice.post(&format!("{V3}/search"), body).await.ok().clone();
        let events = resp["search_categories"]["room_events"].clone();
        (result_ids(&events).len() >= want).then_some(events)
    })
    .await
}

conformance_test! {
    /// §Server Side Search: `order_by: recent` returns the newest results first; `next_batch`
    /// (a query parameter) fetches the following page until no `next_batch` is returned.
    async fn search_recent_order_and_pagination(hs) {
        let alice = hs.user("srch").await;
        let room = alice.create_room(json!({})).await;
        let word = unique_word("kestrel");
        let mut sent = Vec::new();
        for i in 0..3 {
            sent.push(alice.send_text(&room, &format!("{word} number {i}")).await);
        }
        let all = json!({"search_categories": {"room_events": {"search_term": word, "order_by": "recent"}}});
        let first = search_until(&alice, &all, 3).await;
        let newest_first: Vec<String> = sent.iter().rev().cloned().collect();
        assert_eq!(result_ids(&first), newest_first, "{first}");
        let paged = json!({"search_categories": {"room_events": {
            "search_term": word, "order_by": "recent", "filter": {"limit": 1}}}});
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..6 {
            let path = match &token {
                Some(t) => format!("{V3}/search?next_batch={}", enc(t)),
                None => format!("{V3}/search"),
            };
            let resp = alice.post(&path, &paged).await.ok().clone();
            let events = &resp["search_categories"]["room_events"];
            seen.extend(result_ids(events));
            match events["next_batch"].as_str() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, newest_first);
    }
}

conformance_test! {
    /// §Server Side Search: `groupings` by `room_id` puts each result's event ID under its room
    /// in `groups.room_id`.
    async fn search_groups_by_room(hs) {
        let alice = hs.user("srchg").await;
        let room = alice.create_room(json!({})).await;
        let word = unique_word("heron");
        let id = alice.send_text(&room, &format!("a {word} on the river")).await;
        let body = json!({"search_categories": {"room_events": {
            "search_term": word, "groupings": {"group_by": [{"key": "room_id"}]}}}});
        let events = search_until(&alice, &body, 1).await;
        assert_eq!(events["groups"]["room_id"][&room]["results"], json!([id]), "{events}");
    }
}

conformance_test! {
    /// §Server Side Search: `event_context` returns events before and after each result.
    async fn search_event_context(hs) {
        let alice = hs.user("srchc").await;
        let room = alice.create_room(json!({})).await;
        let word = unique_word("ibis");
        let before = alice.send_text(&room, "the message before").await;
        alice.send_text(&room, &format!("the {word} itself")).await;
        let after = alice.send_text(&room, "the message after").await;
        let body = json!({"search_categories": {"room_events": {
            "search_term": word, "event_context": {"before_limit": 1, "after_limit": 1}}}});
        let events = search_until(&alice, &body, 1).await;
        let context = &events["results"][0]["context"];
        assert_eq!(context["events_before"][0]["event_id"], json!(before), "{events}");
        assert_eq!(context["events_after"][0]["event_id"], json!(after), "{events}");
    }
}

conformance_test! {
    /// §Server Side Search: only rooms the user is in are searched: a user who never joined a
    /// (public) room finds nothing of it.
    async fn search_skips_rooms_not_joined(hs) {
        let alice = hs.user("srchp").await;
        let bob = hs.user("srchq").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        let word = unique_word("plover");
        alice.send_text(&room, &format!("{word} here")).await;
        let body = json!({"search_categories": {"room_events": {"search_term": word}}});
        search_until(&alice, &body, 1).await;
        let resp = bob.post(&format!("{V3}/search"), &body).await.ok().clone();
        assert!(result_ids(&resp["search_categories"]["room_events"]).is_empty(), "{resp}");
    }
}

conformance_test! {
    /// §Server Side Search: `keys` may only name `content.body`, `content.name` and
    /// `content.topic`; an unknown key is a bad request.
    async fn search_unknown_key_is_rejected(hs) {
        if hs.skip_on_synapse("§Server Side Search: Synapse ignores unknown keys") {
            return;
        }
        let alice = hs.user("srchk").await;
        let body = json!({"search_categories": {"room_events": {"search_term": "x", "keys": ["content.nope"]}}});
        let resp = alice.post(&format!("{V3}/search"), &body).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
    }
}
