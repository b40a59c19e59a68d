//! Server-side search (`POST /search`, spec/privacy-modes.md): ranking, order, highlights,
//! groups and pages as the spec says; edits and redactions seen at once; only what the searcher
//! may read; never strict rooms; CJK and stemmed words; the index survives restarts and is
//! rebuilt by `hearth search reindex`. Every happy path has its hostile case beside it.

mod common;

use std::collections::HashSet;

use common::{Client, Server, hearth_command};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PRIVACY: &str = "org.hearth.room.privacy";

async fn search_raw(client: &Client, body: Value, next_batch: Option<&str>) -> (StatusCode, Value) {
    let path = match next_batch {
        Some(token) => format!("/search?next_batch={}", common::encode(token)),
        None => "/search".to_owned(),
    };
    client.request(Method::POST, &path, Some(&body)).await
}

/// `room_events` of a search for `term` with extra criteria.
async fn search(client: &Client, term: &str, extra: Value) -> Value {
    let mut criteria = json!({ "search_term": term });
    if let (Some(c), Some(e)) = (criteria.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let (status, body) = search_raw(
        client,
        json!({"search_categories": {"room_events": criteria}}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "search {term:?}: {body}");
    body["search_categories"]["room_events"].clone()
}

fn ids(room_events: &Value) -> Vec<String> {
    room_events["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"]["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

fn edit(original: &str, text: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {text}"),
        "m.new_content": {"msgtype": "m.text", "body": text},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    })
}

#[tokio::test]
async fn ranking_order_highlights_groups_and_pages_follow_the_spec() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({"name": "Fruit"})).await;
    // New unencrypted rooms are search_enabled by default.
    assert_eq!(
        alice.get_state_content(&room, PRIVACY, "").await,
        json!({"mode": "search_enabled"})
    );
    let other = alice.create_room(json!({})).await;
    let weak = alice
        .send_text(
            &room,
            "an apple among many other words about pears plums and cherries",
        )
        .await;
    let strong = alice.send_text(&room, "apple apple apple").await;
    let third = alice.send_text(&other, "one apple here").await;

    let ranked = search(&alice, "apple", json!({})).await;
    let ranked_ids = ids(&ranked);
    assert_eq!(ranked_ids.len(), 3, "{ranked}");
    assert_eq!(ranked_ids[0], strong, "BM25 puts the dense match first: {ranked}");
    assert_eq!(ranked["count"], 3);
    assert!(ranked["highlights"].as_array().unwrap().contains(&json!("apple")));
    let ranks: Vec<f64> = ranked["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rank"].as_f64().expect("rank"))
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
    assert_eq!(
        ranked["results"][0]["result"]["content"]["body"],
        "apple apple apple"
    );

    let recent = search(&alice, "apple", json!({"order_by": "recent"})).await;
    assert_eq!(ids(&recent), [third.clone(), strong.clone(), weak.clone()]);

    // Groups by room: each room's results and their order.
    let grouped = search(
        &alice,
        "apple",
        json!({"order_by": "recent", "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]}}),
    )
    .await;
    let by_room = &grouped["groups"]["room_id"];
    assert_eq!(by_room[&room]["results"], json!([strong, weak]), "{grouped}");
    assert_eq!(by_room[&other]["results"], json!([third]));
    assert_eq!(
        grouped["groups"]["sender"][&alice.user_id]["results"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Pages of one result: all three, once each, then no next_batch.
    let body = json!({"search_categories": {"room_events": {
        "search_term": "apple", "order_by": "recent", "filter": {"limit": 1}
    }}});
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..5 {
        let (status, page) = search_raw(&alice, body.clone(), token.as_deref()).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page = &page["search_categories"]["room_events"];
        seen.extend(ids(page));
        // A message sent between pages does not shift them.
        if seen.len() == 1 {
            alice.send_text(&room, "late apple").await;
        }
        match page["next_batch"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, [third.clone(), strong.clone(), weak.clone()]);

    // Filters: rooms, not_senders, types.
    let only_other = search(&alice, "apple", json!({"filter": {"rooms": [other]}})).await;
    assert_eq!(ids(&only_other), vec![third.clone()]);
    let nobody = search(
        &alice,
        "apple",
        json!({"filter": {"not_senders": [alice.user_id]}}),
    )
    .await;
    assert!(ids(&nobody).is_empty());
    let names = search(&alice, "fruit", json!({"keys": ["content.name"]})).await;
    assert_eq!(names["results"][0]["result"]["type"], "m.room.name", "{names}");
    let no_names = search(&alice, "fruit", json!({"keys": ["content.body"]})).await;
    assert!(ids(&no_names).is_empty());

    // Context with profiles, and the room's state.
    let with_context = search(&alice, "dense", json!({})).await;
    assert!(ids(&with_context).is_empty());
    let ctx = search(
        &alice,
        "apple",
        json!({"filter": {"rooms": [room]}, "order_by": "recent",
               "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true},
               "include_state": true}),
    )
    .await;
    let first = &ctx["results"][0];
    assert_eq!(first["result"]["content"]["body"], "late apple", "{ctx}");
    assert_eq!(
        first["context"]["events_before"].as_array().unwrap().len(),
        1,
        "{ctx}"
    );
    assert!(
        first["context"]["profile_info"][&alice.user_id].is_object(),
        "{ctx}"
    );
    assert!(
        ctx["state"][&room]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
}

#[tokio::test]
async fn bad_input_gets_the_spec_400_never_a_500() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "hello there").await;
    let criteria = |extra: Value| {
        let mut c = json!({"search_term": "hello"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"search_categories": {"room_events": c}})
    };
    for (what, body) in [
        ("unknown key", criteria(json!({"keys": ["content.nope"]}))),
        (
            "empty term",
            json!({"search_categories": {"room_events": {"search_term": "   "}}}),
        ),
        (
            "10 KB term",
            json!({"search_categories": {"room_events": {"search_term": "x".repeat(10 * 1024)}}}),
        ),
        ("unknown order", criteria(json!({"order_by": "random"}))),
        (
            "unknown grouping",
            criteria(json!({"groupings": {"group_by": [{"key": "type"}]}})),
        ),
    ] {
        let (status, body) = search_raw(&alice, body, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(
            body["errcode"].as_str().unwrap().starts_with("M_"),
            "{what}: {body}"
        );
    }
    for token in ["garbage", "h1.r.-1.5", "h1.t.5", "h1.r.99999999.5", "h1.t.0.5"] {
        let (status, body) = search_raw(&alice, criteria(json!({})), Some(token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "next_batch {token}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
    }
    // Query syntax is not syntax here: every character is just text.
    for term in [
        "hello AND (",
        "\"unbalanced",
        "title:hello",
        "*",
        "hello~2^3",
        "-",
    ] {
        let (status, body) = search_raw(
            &alice,
            json!({"search_categories": {"room_events": {"search_term": term}}}),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{term:?}: {body}");
    }
    let (status, body) = server
        .anon()
        .request(Method::POST, "/search", Some(&criteria(json!({}))))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn edits_and_redactions_are_reflected_at_once() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let original = alice.send_text(&room, "the zebra crossing").await;
    assert_eq!(
        ids(&search(&alice, "zebra", json!({})).await),
        vec![original.clone()]
    );
    alice
        .send(&room, "m.room.message", edit(&original, "the giraffe crossing"))
        .await;
    assert!(
        ids(&search(&alice, "zebra", json!({})).await).is_empty(),
        "old text gone"
    );
    let found = search(&alice, "giraffe", json!({})).await;
    assert_eq!(
        ids(&found),
        vec![original.clone()],
        "the original is found by its edit's text"
    );
    assert!(
        found["results"][0]["result"]["unsigned"]["m.relations"]["m.replace"].is_object(),
        "bundled aggregations: {found}"
    );
    // A redacted edit: back to the original's text.
    let second = alice
        .send(&room, "m.room.message", edit(&original, "the okapi crossing"))
        .await;
    assert_eq!(
        ids(&search(&alice, "okapi", json!({})).await),
        vec![original.clone()]
    );
    alice.redact(&room, &second).await;
    assert!(ids(&search(&alice, "okapi", json!({})).await).is_empty());
    assert_eq!(
        ids(&search(&alice, "giraffe", json!({})).await),
        vec![original.clone()]
    );
    // A redacted message is gone.
    alice.redact(&room, &original).await;
    assert!(ids(&search(&alice, "giraffe", json!({})).await).is_empty());
    assert!(ids(&search(&alice, "crossing", json!({})).await).is_empty());
    // A forged edit by someone else does not change alice's message.
    let bob = server.register("bob").await;
    alice.invite(&room, &bob.user_id).await;
    bob.join(&room).await;
    let mine = alice.send_text(&room, "my llama").await;
    bob.send(&room, "m.room.message", edit(&mine, "bob's vicuna"))
        .await;
    assert_eq!(ids(&search(&alice, "llama", json!({})).await), [mine]);
    assert!(ids(&search(&alice, "vicuna", json!({})).await).is_empty());
}

#[tokio::test]
async fn only_what_the_searcher_may_read_is_found() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
        ]}))
        .await;
    let before = alice.send_text(&room, "secret walnut before").await;
    carol.join(&room).await;
    let during = alice.send_text(&room, "walnut while carol is here").await;
    carol.leave(&room).await;
    let after = alice.send_text(&room, "walnut after carol left").await;

    assert_eq!(
        ids(&search(&alice, "walnut", json!({"order_by": "recent"})).await),
        [after.clone(), during.clone(), before.clone()]
    );
    // Never joined: nothing, even in a public room.
    assert!(ids(&search(&bob, "walnut", json!({})).await).is_empty());
    let explicit = search(&bob, "walnut", json!({"filter": {"rooms": [room]}})).await;
    assert!(ids(&explicit).is_empty());
    // Joined with history visibility "joined", then left: only what was sent while joined.
    assert_eq!(
        ids(&search(&carol, "walnut", json!({})).await),
        vec![during.clone()]
    );
    assert_eq!(
        search(&carol, "walnut", json!({})).await["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn strict_rooms_are_never_found_and_the_mode_only_tightens() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    alice.send_text(&room, "narwhal before strict").await;
    assert_eq!(ids(&search(&alice, "narwhal", json!({})).await).len(), 1);
    // search_enabled → strict_e2e: what was indexed goes at once.
    alice
        .set_state(&room, PRIVACY, "", json!({"mode": "strict_e2e"}))
        .await;
    assert!(ids(&search(&alice, "narwhal", json!({})).await).is_empty());
    // And never back.
    let (status, body) = alice
        .request(
            Method::PUT,
            &Client::state_path(&room, PRIVACY, ""),
            Some(&json!({"mode": "search_enabled"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A room with encryption cannot be made search_enabled.
    let encrypted = alice
        .create_room(json!({"initial_state": [
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ]}))
        .await;
    let (status, body) = alice
        .request(
            Method::PUT,
            &Client::state_path(&encrypted, PRIVACY, ""),
            Some(&json!({"mode": "search_enabled"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A search_enabled room that gets encryption is strict from then on.
    let other = alice.create_room(json!({})).await;
    alice.send_text(&other, "narwhal in other").await;
    alice
        .set_state(
            &other,
            "m.room.encryption",
            "",
            json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        )
        .await;
    assert!(ids(&search(&alice, "narwhal", json!({})).await).is_empty());
    // The mode can be given at creation, and default_mode does not override it.
    let plain = alice
        .create_room(json!({"initial_state": [
            {"type": PRIVACY, "state_key": "", "content": {"mode": "strict_e2e"}}
        ]}))
        .await;
    assert_eq!(
        alice.get_state_content(&plain, PRIVACY, "").await,
        json!({"mode": "strict_e2e"})
    );
}

#[tokio::test]
async fn rooms_without_a_mode_are_searchable_when_default_mode_is_none() {
    let server = Server::start_with_config(
        common::Backend::from_env(),
        "[privacy]\ndefault_mode = \"none\"\n",
    )
    .await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let (status, _) = alice
        .request(Method::GET, &Client::state_path(&room, PRIVACY, ""), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no mode event");
    let id = alice.send_text(&room, "plain room pelican").await;
    assert_eq!(ids(&search(&alice, "pelican", json!({})).await), [id]);
}

#[tokio::test]
async fn cjk_text_and_stemmed_words_are_found() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let chinese = alice.send_text(&room, "我们明天下午开会讨论预算").await;
    let japanese = alice.send_text(&room, "会議室は三階にあります").await;
    let korean = alice.send_text(&room, "내일 회의실에서 만나요").await;
    let english = alice.send_text(&room, "She was running the meetings").await;
    let html = alice
        .send(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "see link", "format": "org.matrix.custom.html",
                   "formatted_body": "<a href=\"https://x\">quarterly <b>forecast</b></a>"}),
        )
        .await;
    assert_eq!(
        ids(&search(&alice, "开会", json!({})).await),
        vec![chinese.clone()]
    );
    assert_eq!(ids(&search(&alice, "讨论预算", json!({})).await), [chinese]);
    assert_eq!(ids(&search(&alice, "会議室", json!({})).await), [japanese]);
    assert_eq!(ids(&search(&alice, "회의실", json!({})).await), [korean]);
    assert_eq!(
        ids(&search(&alice, "runs meeting", json!({})).await),
        vec![english.clone()]
    );
    assert_eq!(ids(&search(&alice, "RUN", json!({})).await), [english]);
    assert_eq!(ids(&search(&alice, "forecasts", json!({})).await), [html]);
    assert!(
        ids(&search(&alice, "href", json!({})).await).is_empty(),
        "markup is not text"
    );
}

#[tokio::test]
async fn the_index_survives_restarts_and_reindex_rebuilds_it() {
    let mut server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let first = alice.send_text(&room, "persistent platypus").await;
    assert_eq!(
        ids(&search(&alice, "platypus", json!({})).await),
        vec![first.clone()]
    );
    server.crash_and_restart().await;
    let again = search(&alice, "platypus", json!({})).await;
    assert_eq!(ids(&again), vec![first.clone()], "indexed once, kept: {again}");
    assert_eq!(again["count"], 1);
    let second = alice.send_text(&room, "second platypus").await;
    // Not while the server holds the index.
    let refused = hearth_command()
        .args(["search", "reindex", "--config"])
        .arg(server.config_path())
        .status()
        .expect("run hearth search reindex");
    assert!(!refused.success(), "reindex beside a running server");
    assert_eq!(ids(&search(&alice, "platypus", json!({})).await).len(), 2);
    server.stop().await;
    // A stopped server's index rebuilt from the log.
    let status = hearth_command()
        .args(["search", "reindex", "--config"])
        .arg(server.config_path())
        .status()
        .expect("run hearth search reindex");
    assert!(status.success());
    server.restart().await;
    let rebuilt = search(&alice, "platypus", json!({"order_by": "recent"})).await;
    assert_eq!(ids(&rebuilt), [second, first], "{rebuilt}");
    assert_eq!(rebuilt["count"], 2);
    // A deleted index directory is rebuilt at start-up, not trusted to the stored position.
    server.stop().await;
    std::fs::remove_dir_all(server.dir().join("data").join("search")).expect("delete the index");
    server.restart().await;
    let set: HashSet<String> = ids(&search(&alice, "platypus", json!({})).await)
        .into_iter()
        .collect();
    assert_eq!(set.len(), 2);
}
