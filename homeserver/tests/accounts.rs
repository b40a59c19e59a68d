//! Account rows under concurrency and after deactivation, checked in the database.

mod common;

use common::{PASSWORD, Server, count};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Many clients race to register one name: exactly one wins, and the losers leave no user,
/// device or token rows behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_registrations_make_one_account() {
    let server = Server::start().await;
    let anon = server.anon();
    let mut sessions = Vec::new();
    for _ in 0..8 {
        let (status, first) = anon
            .request(
                Method::POST,
                "/register",
                Some(&json!({ "username": "contested", "password": PASSWORD })),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{first}");
        sessions.push(first["session"].as_str().expect("session").to_owned());
    }
    let mut tasks = Vec::new();
    for session in sessions {
        let anon = anon.clone();
        tasks.push(tokio::spawn(async move {
            anon.request(
                Method::POST,
                "/register",
                Some(&json!({
                    "username": "contested",
                    "password": PASSWORD,
                    "auth": { "type": "m.login.dummy", "session": session },
                })),
            )
            .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        let (status, body) = t.await.expect("task");
        match status {
            StatusCode::OK => winners += 1,
            StatusCode::BAD_REQUEST => assert_eq!(body["errcode"], "M_USER_IN_USE", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners, 1, "{winners} registrations of one name succeeded");
    let db = server.db().await;
    let user = "@contested:hearth.test";
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM users WHERE user_id = $1", &[user]).await,
        1
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM devices WHERE user_id = $1", &[user]).await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM access_tokens WHERE user_id = $1",
            &[user]
        )
        .await,
        1
    );
    db.close().await;
}

/// Access tokens are stored hashed, never in clear.
#[tokio::test]
async fn access_tokens_are_not_stored_in_clear() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let token = alice.token.clone().expect("token");
    let db = server.db().await;
    let rows = count(
        &db,
        "SELECT COUNT(*) FROM access_tokens WHERE user_id = $1",
        &[&alice.user_id],
    )
    .await;
    assert_eq!(rows, 1);
    let clear = count(
        &db,
        "SELECT COUNT(*) FROM access_tokens WHERE token_hash = $1",
        &[&token],
    )
    .await;
    assert_eq!(clear, 0, "the access token is stored as it is");
    db.close().await;
}

/// Deactivation removes every device and token, and the account cannot log in again.
#[tokio::test]
async fn deactivation_removes_devices_and_tokens() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let login = server
        .anon()
        .ok(
            Method::POST,
            "/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD,
            })),
        )
        .await;
    assert!(login["access_token"].is_string());
    let body = json!({
        "auth": {
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": "alice" },
            "password": PASSWORD,
        }
    });
    let (mut status, mut resp) = alice
        .request(Method::POST, "/account/deactivate", Some(&body))
        .await;
    if status == StatusCode::UNAUTHORIZED {
        // Two-step UIA: repeat with the session.
        let mut with_session = body.clone();
        with_session["auth"]["session"] = resp["session"].clone();
        (status, resp) = alice
            .request(Method::POST, "/account/deactivate", Some(&with_session))
            .await;
    }
    assert_eq!(status, StatusCode::OK, "{resp}");
    let db = server.db().await;
    for table in ["devices", "access_tokens"] {
        let n = count(
            &db,
            &format!("SELECT COUNT(*) FROM {table} WHERE user_id = $1"),
            &[&alice.user_id],
        )
        .await;
        assert_eq!(n, 0, "{n} {table} rows left after deactivation");
    }
    db.close().await;
    let (status, resp) = server
        .anon()
        .request(
            Method::POST,
            "/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "login after deactivation: {resp}");
    assert_eq!(resp["errcode"], "M_USER_DEACTIVATED", "{resp}");
}
