//! The room endpoints read their requests with ruma's types (or ours where ruma's would answer
//! differently) and answer typed responses: the shapes clients rely on stay as they were
//! (empty lists present, `state` exactly when lazy-loading), and requests ruma cannot read get
//! the spec's error codes, never a 500.

mod common;

use common::{Server, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn is_array(value: &Value) -> bool {
    value.is_array()
}

#[tokio::test]
async fn typed_responses_keep_their_shapes() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "shapes" })).await;
    let r = encode(&room);
    alice.send_text(&room, "hello").await;

    // /messages: `state` only when members are lazy-loaded, then a list.
    let page = alice
        .ok(Method::GET, &format!("/rooms/{r}/messages?dir=b&limit=5"), None)
        .await;
    assert!(page.get("state").is_none(), "{page}");
    assert_eq!(page["chunk"].as_array().map(Vec::len), Some(5), "{page}");
    assert!(page["start"].is_string() && page["end"].is_string(), "{page}");
    let lazy = encode(&json!({ "lazy_load_members": true }).to_string());
    let page = alice
        .ok(
            Method::GET,
            &format!("/rooms/{r}/messages?dir=b&limit=1&filter={lazy}"),
            None,
        )
        .await;
    let state = page["state"].as_array().expect("state with lazy loading");
    assert_eq!(state[0]["state_key"], alice.user_id.as_str(), "{page}");

    // /context of the room's first event: nothing before it, still a list.
    let state_events = alice.ok(Method::GET, &format!("/rooms/{r}/state"), None).await;
    let create = state_events
        .as_array()
        .expect("state list")
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .expect("create event")["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();
    let context = alice
        .ok(
            Method::GET,
            &format!("/rooms/{r}/context/{}?limit=4", encode(&create)),
            None,
        )
        .await;
    assert_eq!(context["events_before"], json!([]), "{context}");
    assert!(
        is_array(&context["events_after"]) && is_array(&context["state"]),
        "{context}"
    );
    assert_eq!(context["event"]["event_id"], create.as_str());
    let event = alice
        .ok(
            Method::GET,
            &format!("/rooms/{r}/event/{}", encode(&create)),
            None,
        )
        .await;
    assert_eq!(event["type"], "m.room.create");

    // State by type alone is the empty state key, with or without the trailing slash.
    for path in ["m.room.name", "m.room.name/"] {
        let name = alice
            .ok(Method::GET, &format!("/rooms/{r}/state/{path}"), None)
            .await;
        assert_eq!(name, json!({ "name": "shapes" }), "{path}");
    }
    let put = alice
        .ok(
            Method::PUT,
            &format!("/rooms/{r}/state/m.room.topic/"),
            Some(&json!({ "topic": "typed" })),
        )
        .await;
    assert!(put["event_id"].is_string(), "{put}");

    let joined = alice
        .ok(Method::GET, &format!("/rooms/{r}/joined_members"), None)
        .await;
    assert!(joined["joined"][&alice.user_id].is_object(), "{joined}");
    let members = alice
        .ok(
            Method::GET,
            &format!("/rooms/{r}/members?not_membership=leave"),
            None,
        )
        .await;
    assert_eq!(members["chunk"].as_array().map(Vec::len), Some(1), "{members}");
    let rooms = alice.ok(Method::GET, "/joined_rooms", None).await;
    assert_eq!(rooms, json!({ "joined_rooms": [room] }));

    // Typing with no timeout: the spec makes it optional.
    alice
        .ok(
            Method::PUT,
            &format!("/rooms/{r}/typing/{}", encode(&alice.user_id)),
            Some(&json!({ "typing": true })),
        )
        .await;

    // /sync sends every section, empty ones included.
    let sync = alice.ok(Method::GET, "/sync", None).await;
    for section in ["invite", "leave", "knock"] {
        assert_eq!(sync["rooms"][section], json!({}), "{section}");
    }
    assert_eq!(sync["to_device"], json!({ "events": [] }));
    assert_eq!(sync["device_lists"], json!({ "changed": [], "left": [] }));
    let joined_room = &sync["rooms"]["join"][&room];
    assert_eq!(joined_room["timeline"]["limited"], false, "{joined_room}");
    assert!(is_array(&joined_room["ephemeral"]["events"]), "{joined_room}");
    assert!(joined_room["unread_notifications"].is_object(), "{joined_room}");
    assert!(
        joined_room["summary"]["m.joined_member_count"].is_number(),
        "{joined_room}"
    );
}

#[tokio::test]
async fn unreadable_requests_get_spec_errors() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let r = encode(&room);
    let event_id = alice.send_text(&room, "hi").await;
    let e = encode(&event_id);

    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::GET,
            format!("/rooms/{r}/messages"),
            None,
            "M_MISSING_PARAM",
        ),
        (
            Method::GET,
            format!("/rooms/{r}/messages?dir=x"),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            format!("/rooms/{r}/messages?dir=b&limit=ten"),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            format!("/rooms/{r}/messages?dir=b&from=x1"),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            format!("/rooms/{r}/context/{e}?limit=-1"),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            format!("/rooms/{r}/event/not-an-event-id"),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            "/rooms/not-a-room/state".to_owned(),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            "/rooms/not-a-room/members".to_owned(),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::POST,
            "/join/not-a-room".to_owned(),
            Some(json!({})),
            "M_INVALID_PARAM",
        ),
        (
            Method::POST,
            format!("/rooms/{r}/leave"),
            Some(json!({ "reason": 5 })),
            "M_BAD_JSON",
        ),
        (
            Method::PUT,
            format!("/rooms/{r}/state/m.room.topic/"),
            Some(json!(["not", "an", "object"])),
            "M_BAD_JSON",
        ),
        (
            Method::POST,
            format!("/rooms/{r}/receipt/m.read/not-an-event-id"),
            Some(json!({})),
            "M_INVALID_PARAM",
        ),
        (
            Method::POST,
            format!("/rooms/{r}/receipt/m.read/{e}"),
            Some(json!({ "thread_id": "" })),
            "M_INVALID_PARAM",
        ),
        (
            Method::POST,
            format!("/rooms/{r}/invite"),
            Some(json!({ "user_id": "not a user" })),
            "M_INVALID_PARAM",
        ),
        (
            Method::PUT,
            format!("/rooms/{r}/typing/{}", encode(&alice.user_id)),
            Some(json!({ "typing": "yes" })),
            "M_BAD_JSON",
        ),
        (
            Method::GET,
            "/sync?timeout=soon".to_owned(),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            "/sync?full_state=yes".to_owned(),
            None,
            "M_INVALID_PARAM",
        ),
        (
            Method::GET,
            "/sync?filter=%7Bnot%20json".to_owned(),
            None,
            "M_BAD_JSON",
        ),
    ];
    for (method, path, body, errcode) in cases {
        let (status, answer) = alice.request(method.clone(), &path, body.as_ref()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
        assert_eq!(answer["errcode"], errcode, "{method} {path}: {answer}");
    }
    // An action that is not one is an unknown endpoint.
    let (status, answer) = alice
        .request(
            Method::POST,
            &format!("/rooms/{r}/dance"),
            Some(&json!({ "user_id": alice.user_id })),
        )
        .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_UNRECOGNIZED"))
    );
    // The server is still well after all of that.
    alice
        .ok(Method::GET, &format!("/rooms/{r}/messages?dir=b"), None)
        .await;
}
