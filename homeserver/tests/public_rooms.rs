//! `/publicRooms` answers bounded pages whatever the client asks for — no limit, 0, huge,
//! negative, far-away `since` tokens — and lists a room as soon as it is published or
//! unpublished (the listing is cached for a few seconds otherwise).

mod common;

use std::collections::HashSet;

use common::{Client, Server, encode};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `MAX_PAGE` in `rooms::directory`.
const MAX_PAGE: usize = 100;

fn room_ids(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|r| r["room_id"].as_str().expect("room_id").to_owned())
        .collect()
}

async fn get(client: &Client, query: &str) -> (StatusCode, Value) {
    client
        .request(Method::GET, &format!("/publicRooms{query}"), None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_are_bounded_for_any_limit_and_token() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rooms = join_all((0..MAX_PAGE + 3).map(|i| {
        let alice = alice.clone();
        async move {
            alice
                .create_room(
                    json!({ "preset": "public_chat", "visibility": "public", "name": format!("room {i}") }),
                )
                .await
        }
    }))
    .await;
    alice.create_room(json!({ "name": "unlisted" })).await;
    // The most joined room comes first.
    bob.join(&rooms[57]).await;

    // No limit: one bounded page, and next_batch to continue.
    let (status, first) = get(&alice, "").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["total_room_count_estimate"], MAX_PAGE + 3);
    let first_ids = room_ids(&first);
    assert_eq!(first_ids.len(), MAX_PAGE);
    assert_eq!(first_ids[0], rooms[57]);
    let next = first["next_batch"].as_str().expect("next_batch");
    let (status, second) = get(&alice, &format!("?since={}", encode(next))).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert!(second.get("next_batch").is_none(), "{second}");
    assert!(second["prev_batch"].is_string(), "{second}");
    let all: HashSet<String> = first_ids.into_iter().chain(room_ids(&second)).collect();
    assert_eq!(all, rooms.iter().cloned().collect::<HashSet<_>>());

    // 0 means "the server's choice"; more than a page gets a page.
    for query in ["?limit=0", "?limit=100000", "?limit=18446744073709551615"] {
        let (status, page) = get(&alice, query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        assert_eq!(room_ids(&page).len(), MAX_PAGE, "{query}");
    }
    let (status, page) = get(&alice, "?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(room_ids(&page).len(), 2);
    assert_eq!(page["next_batch"], "p2");

    // A token past the end: an empty page, no overflow.
    for since in ["p18446744073709551615", "p1000"] {
        let (status, page) = get(&alice, &format!("?since={since}&limit=18446744073709551615")).await;
        assert_eq!(status, StatusCode::OK, "{since}: {page}");
        assert!(room_ids(&page).is_empty(), "{since}");
        assert!(page.get("next_batch").is_none(), "{since}: {page}");
    }

    // Nonsense is refused, not a 500.
    for query in [
        "?limit=-1",
        "?limit=abc",
        "?limit=1e3",
        "?since=p-1",
        "?since=p99999999999999999999999",
        "?since=nonsense",
    ] {
        let (status, body) = get(&alice, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{query}: {body}");
    }
    let (status, body) = alice
        .request(Method::POST, "/publicRooms", Some(&json!({ "limit": -5 })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
    let page = alice
        .ok(
            Method::POST,
            "/publicRooms",
            Some(&json!({ "limit": u64::MAX, "since": "p100" })),
        )
        .await;
    assert_eq!(room_ids(&page).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_shows_at_once_despite_the_cache() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let listed = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public" }))
        .await;
    let (_, page) = get(&alice, "").await;
    assert_eq!(room_ids(&page), vec![listed.clone()]);

    // A room created public, one published later, one unpublished: each seen on the next request.
    let created = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public" }))
        .await;
    let (_, page) = get(&alice, "").await;
    assert_eq!(room_ids(&page).len(), 2, "{page}");
    assert!(room_ids(&page).contains(&created));

    let later = alice.create_room(json!({ "preset": "public_chat" })).await;
    let visibility = format!("/directory/list/room/{}", encode(&later));
    alice
        .ok(Method::PUT, &visibility, Some(&json!({ "visibility": "public" })))
        .await;
    let (_, page) = get(&alice, "").await;
    assert!(room_ids(&page).contains(&later), "{page}");

    let unlisted = format!("/directory/list/room/{}", encode(&listed));
    alice
        .ok(Method::PUT, &unlisted, Some(&json!({ "visibility": "private" })))
        .await;
    let (_, page) = get(&alice, "").await;
    assert!(!room_ids(&page).contains(&listed), "{page}");
    assert_eq!(page["total_room_count_estimate"], 2);
}
