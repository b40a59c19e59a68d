//! Server-side key backups (`/room_keys/…`) driven over HTTP: versions, the spec's rule for
//! which of two uploads of a session stays, etag and count, the latest-version rule, deletion,
//! per-user isolation, and hostile uploads (bounds, bad shapes) answered with the spec's errors.

mod common;

use common::{Client, Server, count, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

fn auth_data(public_key: &str) -> Value {
    json!({
        "public_key": public_key,
        "signatures": {"@alice:hearth.test": {"ed25519:DEV": "c2lnbmF0dXJl"}},
    })
}

async fn create_version(client: &Client, public_key: &str) -> String {
    let body = json!({"algorithm": ALGORITHM, "auth_data": auth_data(public_key)});
    let resp = client.ok(Method::POST, "/room_keys/version", Some(&body)).await;
    resp["version"].as_str().expect("version").to_owned()
}

fn key(first_message_index: u64, forwarded_count: u64, is_verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {"ephemeral": "ZXBoZW1lcmFs", "ciphertext": tag, "mac": "bWFj"},
    })
}

fn session_path(room: &str, session: &str, version: &str) -> String {
    format!(
        "/room_keys/keys/{}/{}?version={version}",
        encode(room),
        encode(session)
    )
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, errcode: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["errcode"], errcode, "{body}");
}

#[tokio::test]
async fn versions_are_created_read_updated_and_deleted() {
    let server = Server::start().await;
    let alice = server.register("alice").await;

    let (status, body) = alice.request(Method::GET, "/room_keys/version", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let v1 = create_version(&alice, "a2V5MQ").await;
    assert_eq!(v1, "1");
    let latest = alice.ok(Method::GET, "/room_keys/version", None).await;
    assert_eq!(latest["version"], "1");
    assert_eq!(latest["algorithm"], ALGORITHM);
    assert_eq!(latest["auth_data"], auth_data("a2V5MQ"));
    assert_eq!(latest["count"], 0);
    assert!(latest["etag"].is_string(), "{latest}");
    assert_eq!(alice.ok(Method::GET, "/room_keys/version/1", None).await, latest);

    // Only auth_data changes; a version in the body must be the path's.
    let update = json!({"algorithm": ALGORITHM, "auth_data": auth_data("a2V5Mg"), "version": "1"});
    alice.ok(Method::PUT, "/room_keys/version/1", Some(&update)).await;
    let read = alice.ok(Method::GET, "/room_keys/version/1", None).await;
    assert_eq!(read["auth_data"]["public_key"], "a2V5Mg");
    let other_version = json!({"algorithm": ALGORITHM, "auth_data": auth_data("x"), "version": "2"});
    let (status, body) = alice
        .request(Method::PUT, "/room_keys/version/1", Some(&other_version))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let other_algorithm = json!({"algorithm": "org.example.other", "auth_data": {"public_key": "x"}});
    let (status, body) = alice
        .request(Method::PUT, "/room_keys/version/1", Some(&other_algorithm))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let unknown = json!({"algorithm": ALGORITHM, "auth_data": auth_data("x")});
    let (status, body) = alice
        .request(Method::PUT, "/room_keys/version/7", Some(&unknown))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_eq!(
        alice.ok(Method::GET, "/room_keys/version/1", None).await["auth_data"]["public_key"],
        "a2V5Mg",
        "refused updates changed nothing"
    );

    // Unknown algorithms and malformed auth_data are refused at creation.
    for (body, status_code, errcode) in [
        (
            json!({"algorithm": "org.example.rot13", "auth_data": {"public_key": "x"}}),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        (
            json!({"algorithm": ALGORITHM, "auth_data": "not an object"}),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            json!({"algorithm": ALGORITHM, "auth_data": {}}),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            json!({"algorithm": ALGORITHM}),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            json!({"algorithm": 5, "auth_data": {"public_key": "x"}}),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            json!({"algorithm": ALGORITHM, "auth_data": {"public_key": "x".repeat(70_000)}}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
        ),
    ] {
        let (status, resp) = alice
            .request(Method::POST, "/room_keys/version", Some(&body))
            .await;
        assert_error(status, &resp, status_code, errcode);
    }
    assert_eq!(
        alice.ok(Method::GET, "/room_keys/version", None).await["version"],
        "1"
    );

    // Versions that were never handed out are unknown, whatever they look like.
    for version in ["2", "0", "01", "abc", "99999999999999999999999"] {
        let (status, body) = alice
            .request(Method::GET, &format!("/room_keys/version/{version}"), None)
            .await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }

    // Deleting: the version goes; deleting it again succeeds (the spec); numbers are not reused.
    alice.ok(Method::DELETE, "/room_keys/version/1", None).await;
    alice.ok(Method::DELETE, "/room_keys/version/1", None).await;
    let (status, body) = alice.request(Method::GET, "/room_keys/version/1", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, body) = alice.request(Method::GET, "/room_keys/version", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, body) = alice.request(Method::DELETE, "/room_keys/version/42", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_eq!(create_version(&alice, "a2V5Mw").await, "2");

    // Without a token: 401.
    let (status, body) = server
        .anon()
        .request(Method::GET, "/room_keys/version", None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn the_better_key_stays_and_etag_and_count_follow_changes() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let v = create_version(&alice, "a2V5").await;
    let room = "!room:hearth.test";
    let path = session_path(room, "sess", &v);

    let first = alice
        .ok(Method::PUT, &path, Some(&key(5, 1, false, "first")))
        .await;
    assert_eq!(first["count"], 1);
    let etag1 = first["etag"].as_str().unwrap().to_owned();
    assert_eq!(
        alice.ok(Method::GET, &path, None).await,
        key(5, 1, false, "first")
    );

    // (upload, does it replace what is stored?) in order; each row's expected stored key after.
    let steps = [
        // Same is_verified and index, higher forwarded_count: kept.
        (key(5, 2, false, "more forwarded"), key(5, 1, false, "first")),
        // Full tie: the stored key stays.
        (key(5, 1, false, "tie"), key(5, 1, false, "first")),
        // Lower forwarded_count: replaces.
        (
            key(5, 0, false, "less forwarded"),
            key(5, 0, false, "less forwarded"),
        ),
        // Higher first_message_index, even with forwarded_count 0: kept.
        (
            key(6, 0, false, "later index"),
            key(5, 0, false, "less forwarded"),
        ),
        // Lower first_message_index beats a lower forwarded_count.
        (
            key(3, 9, false, "earlier index"),
            key(3, 9, false, "earlier index"),
        ),
        // Verified beats everything.
        (key(50, 50, true, "verified"), key(50, 50, true, "verified")),
        // Unverified never replaces verified, even with a better index.
        (key(0, 0, false, "unverified"), key(50, 50, true, "verified")),
        // Among verified ones the index counts again.
        (
            key(10, 50, true, "verified earlier"),
            key(10, 50, true, "verified earlier"),
        ),
    ];
    let mut etag = etag1.clone();
    for (upload, expected) in steps {
        let before = alice.ok(Method::GET, &path, None).await;
        let resp = alice.ok(Method::PUT, &path, Some(&upload)).await;
        assert_eq!(resp["count"], 1, "{resp}");
        let stored = alice.ok(Method::GET, &path, None).await;
        assert_eq!(stored, expected, "after uploading {upload}");
        let new_etag = resp["etag"].as_str().unwrap().to_owned();
        if stored == before {
            assert_eq!(new_etag, etag, "an upload that changed nothing kept the etag");
        } else {
            assert_ne!(new_etag, etag, "a change moved the etag");
        }
        etag = new_etag;
    }

    // Several rooms at once; count and etag in /room_keys/version too.
    let body = json!({"rooms": {
        room: {"sessions": {"s2": key(0, 0, false, "s2"), "s3": key(0, 0, false, "s3")}},
        "!other:hearth.test": {"sessions": {"s4": key(0, 0, false, "s4")}},
    }});
    let resp = alice
        .ok(Method::PUT, &format!("/room_keys/keys?version={v}"), Some(&body))
        .await;
    assert_eq!(resp["count"], 4);
    let info = alice.ok(Method::GET, "/room_keys/version", None).await;
    assert_eq!(info["count"], 4);
    assert_eq!(info["etag"], resp["etag"]);

    let all = alice
        .ok(Method::GET, &format!("/room_keys/keys?version={v}"), None)
        .await;
    assert_eq!(
        all["rooms"][room]["sessions"].as_object().unwrap().len(),
        3,
        "{all}"
    );
    assert_eq!(
        all["rooms"]["!other:hearth.test"]["sessions"]["s4"],
        key(0, 0, false, "s4")
    );
    let one_room = alice
        .ok(
            Method::GET,
            &format!("/room_keys/keys/{}?version={v}", encode(room)),
            None,
        )
        .await;
    assert_eq!(one_room["sessions"], all["rooms"][room]["sessions"]);
    // A room without keys is an empty object, a session without a key 404.
    let empty = alice
        .ok(
            Method::GET,
            &format!("/room_keys/keys/{}?version={v}", encode("!none:hearth.test")),
            None,
        )
        .await;
    assert_eq!(empty, json!({"sessions": {}}));
    let (status, body) = alice
        .request(Method::GET, &session_path(room, "missing", &v), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Deleting: one session, then a room, then everything; etag moves, count follows.
    let resp = alice
        .ok(Method::DELETE, &session_path(room, "s2", &v), None)
        .await;
    assert_eq!(resp["count"], 3);
    assert_ne!(resp["etag"], info["etag"]);
    let resp = alice
        .ok(
            Method::DELETE,
            &format!("/room_keys/keys/{}?version={v}", encode(room)),
            None,
        )
        .await;
    assert_eq!(resp["count"], 1);
    let resp = alice
        .ok(Method::DELETE, &format!("/room_keys/keys?version={v}"), None)
        .await;
    assert_eq!(resp["count"], 0);
    let all = alice
        .ok(Method::GET, &format!("/room_keys/keys?version={v}"), None)
        .await;
    assert_eq!(all, json!({"rooms": {}}));
}

#[tokio::test]
async fn keys_go_only_to_the_latest_version_and_die_with_their_version() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let v1 = create_version(&alice, "a2V5MQ").await;
    let room = "!room:hearth.test";
    alice
        .ok(
            Method::PUT,
            &session_path(room, "old", &v1),
            Some(&key(0, 0, false, "old")),
        )
        .await;
    let v2 = create_version(&alice, "a2V5Mg").await;

    // v1 is no longer the latest: writes are refused with the current version named.
    let (status, body) = alice
        .request(
            Method::PUT,
            &session_path(room, "new", &v1),
            Some(&key(0, 0, false, "new")),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(body["current_version"], v2);
    // A version that does not exist is 404, not 403.
    let (status, body) = alice
        .request(
            Method::PUT,
            &session_path(room, "new", "77"),
            Some(&key(0, 0, false, "new")),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    // The version parameter is required.
    let (status, body) = alice
        .request(
            Method::PUT,
            &format!("/room_keys/keys/{}/s", encode(room)),
            Some(&key(0, 0, false, "x")),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");
    let (status, body) = alice.request(Method::GET, "/room_keys/keys", None).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");

    // The old version can still be read; the new one holds nothing of it.
    assert_eq!(
        alice.ok(Method::GET, &session_path(room, "old", &v1), None).await,
        key(0, 0, false, "old")
    );
    let (status, _) = alice
        .request(Method::GET, &session_path(room, "old", &v2), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting v1 deletes its keys: unreadable, and gone from the database.
    alice
        .ok(Method::DELETE, &format!("/room_keys/version/{v1}"), None)
        .await;
    let (status, body) = alice
        .request(Method::GET, &format!("/room_keys/keys?version={v1}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, body) = alice
        .request(Method::DELETE, &format!("/room_keys/keys?version={v1}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM key_backup_sessions WHERE version = 1",
            &[]
        )
        .await,
        0
    );
    // Deleting the latest version leaves no current one: uploads are 404.
    alice
        .ok(Method::DELETE, &format!("/room_keys/version/{v2}"), None)
        .await;
    let (status, body) = alice
        .request(
            Method::PUT,
            &session_path(room, "x", &v2),
            Some(&key(0, 0, false, "x")),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

#[tokio::test]
async fn another_users_backup_does_not_exist_for_you() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let v = create_version(&alice, "YWxpY2U").await;
    let room = "!room:hearth.test";
    alice
        .ok(
            Method::PUT,
            &session_path(room, "s", &v),
            Some(&key(0, 0, false, "alice's")),
        )
        .await;

    for (method, path) in [
        (Method::GET, "/room_keys/version".to_owned()),
        (Method::GET, format!("/room_keys/version/{v}")),
        (Method::GET, format!("/room_keys/keys?version={v}")),
        (Method::GET, session_path(room, "s", &v)),
        (Method::DELETE, session_path(room, "s", &v)),
        (Method::DELETE, format!("/room_keys/version/{v}")),
    ] {
        let (status, body) = bob.request(method.clone(), &path, None).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    let (status, body) = bob
        .request(
            Method::PUT,
            &session_path(room, "s", &v),
            Some(&key(0, 0, true, "bob's")),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let update = json!({"algorithm": ALGORITHM, "auth_data": auth_data("Ym9i")});
    let (status, body) = bob
        .request(Method::PUT, &format!("/room_keys/version/{v}"), Some(&update))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Bob's own version 1 is his; alice's stays as it was.
    assert_eq!(create_version(&bob, "Ym9i").await, "1");
    bob.ok(
        Method::PUT,
        &session_path(room, "s", "1"),
        Some(&key(0, 0, true, "bob's")),
    )
    .await;
    assert_eq!(
        alice.ok(Method::GET, &session_path(room, "s", &v), None).await,
        key(0, 0, false, "alice's")
    );
    assert_eq!(
        alice.ok(Method::GET, "/room_keys/version", None).await["auth_data"]["public_key"],
        "YWxpY2U"
    );
}

#[tokio::test]
async fn hostile_uploads_get_spec_errors_and_store_nothing() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let v = create_version(&alice, "a2V5").await;
    let room = "!room:hearth.test";
    let keys_path = format!("/room_keys/keys?version={v}");

    // Too many sessions in one request.
    let sessions: serde_json::Map<String, Value> = (0..1001)
        .map(|i| (format!("s{i}"), key(0, 0, false, "x")))
        .collect();
    let (status, body) = alice
        .request(
            Method::PUT,
            &keys_path,
            Some(&json!({"rooms": {room: {"sessions": sessions}}})),
        )
        .await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");

    // An oversized session_data.
    let big = json!({
        "first_message_index": 0, "forwarded_count": 0, "is_verified": false,
        "session_data": {"ciphertext": "A".repeat(20_000)},
    });
    let (status, body) = alice
        .request(Method::PUT, &session_path(room, "big", &v), Some(&big))
        .await;
    assert_error(status, &body, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");

    // Malformed keys: each refused as bad JSON (or an invalid parameter), none a 500.
    let bad_keys = [
        json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": "text"}),
        json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": false}),
        json!({"first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {}}),
        json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {}}),
        json!({"first_message_index": 9_007_199_254_740_993u64, "forwarded_count": 0, "is_verified": false, "session_data": {}}),
        json!([1, 2, 3]),
    ];
    for bad in bad_keys {
        let (status, body) = alice
            .request(Method::PUT, &session_path(room, "bad", &v), Some(&bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            ["M_BAD_JSON", "M_NOT_JSON", "M_INVALID_PARAM"].contains(&body["errcode"].as_str().unwrap_or("")),
            "{bad}: {body}"
        );
    }
    // Bad room IDs and session IDs inside the body.
    for body in [
        json!({"rooms": {"not a room": {"sessions": {"s": key(0, 0, false, "x")}}}}),
        json!({"rooms": {room: {"sessions": {"nul\u{0}": key(0, 0, false, "x")}}}}),
        json!({"rooms": {room: {"sessions": {"": key(0, 0, false, "x")}}}}),
        json!({"rooms": {room: {"sessions": {"x".repeat(300): key(0, 0, false, "x")}}}}),
        json!({"rooms": {room: {}}}),
        json!({"rooms": "none"}),
    ] {
        let (status, resp) = alice.request(Method::PUT, &keys_path, Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {resp}");
    }
    // One bad key refuses the whole upload: nothing was stored.
    let mixed = json!({"rooms": {room: {"sessions": {
        "good": key(0, 0, false, "good"),
        "bad": {"first_message_index": 0},
    }}}});
    let (status, _) = alice.request(Method::PUT, &keys_path, Some(&mixed)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let info = alice.ok(Method::GET, "/room_keys/version", None).await;
    assert_eq!(info["count"], 0, "{info}");
    let db = server.db().await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM key_backup_sessions", &[]).await,
        0
    );
}
