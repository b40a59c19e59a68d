//! Refresh tokens (spec: "Refreshing access tokens", `POST /refresh`): issued only to clients that
//! ask, rotated on every refresh, refused once retired, expired or logged out; expired access
//! tokens are a soft logout.

mod common;

use std::time::Duration;

use common::{Backend, Client, PASSWORD, Server, count};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `POST /login` with a password; `refresh` is the body's `refresh_token`.
async fn login(server: &Server, user: &str, device_id: Option<&str>, refresh: bool) -> Value {
    let mut body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": PASSWORD,
        "refresh_token": refresh,
    });
    if let Some(device_id) = device_id {
        body["device_id"] = json!(device_id);
    }
    server.anon().ok(Method::POST, "/login", Some(&body)).await
}

async fn refresh(server: &Server, refresh_token: &str) -> (StatusCode, Value) {
    server
        .anon()
        .request(
            Method::POST,
            "/refresh",
            Some(&json!({ "refresh_token": refresh_token })),
        )
        .await
}

fn with_token(server: &Server, token: &str) -> Client {
    server.client_with_token("", "", token)
}

async fn whoami(server: &Server, token: &str) -> (StatusCode, Value) {
    with_token(server, token)
        .request(Method::GET, "/account/whoami", None)
        .await
}

fn str_of<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key].as_str().unwrap_or_else(|| panic!("no {key} in {body}"))
}

/// Asserts a 401 `M_UNKNOWN_TOKEN` with the given `soft_logout`.
fn assert_unknown_token(what: &str, (status, body): (StatusCode, Value), soft_logout: bool) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{what}: {body}");
    assert_eq!(body["soft_logout"], json!(soft_logout), "{what}: {body}");
}

/// Login with `refresh_token: true` gets a refresh token and `expires_in_ms` (5 minutes by
/// default); `/refresh` rotates both tokens; once the new access token is used, the old refresh
/// and access tokens stop working. The database holds neither token in the clear.
#[tokio::test]
async fn refresh_rotates_and_retires_the_old_tokens() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let first = login(&server, "alice", None, true).await;
    assert_eq!(first["expires_in_ms"], json!(300_000), "{first}");
    let (access1, refresh1) = (str_of(&first, "access_token"), str_of(&first, "refresh_token"));
    assert_ne!(access1, refresh1);
    let (status, who) = whoami(&server, access1).await;
    assert_eq!(status, StatusCode::OK, "{who}");
    assert_eq!(who["user_id"], json!(alice.user_id));

    let (status, second) = refresh(&server, refresh1).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["expires_in_ms"], json!(300_000), "{second}");
    let (access2, refresh2) = (str_of(&second, "access_token"), str_of(&second, "refresh_token"));
    assert!(access2 != access1 && refresh2 != refresh1, "{second}");
    assert!(
        second.get("device_id").is_none(),
        "not in the spec's response: {second}"
    );

    // Until the new tokens are used, the old ones still work.
    let (status, body) = whoami(&server, access1).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "old access token before first use of the new: {body}"
    );
    let (status, who) = whoami(&server, access2).await;
    assert_eq!(status, StatusCode::OK, "{who}");
    assert_eq!(who["user_id"], json!(alice.user_id));
    assert_eq!(
        who["device_id"], first["device_id"],
        "same device after a refresh"
    );

    assert_unknown_token("reused refresh token", refresh(&server, refresh1).await, false);
    assert_unknown_token("old access token", whoami(&server, access1).await, false);
    // The new token keeps working (now from the token cache), and refreshes again.
    assert_eq!(whoami(&server, access2).await.0, StatusCode::OK);
    let (status, third) = refresh(&server, refresh2).await;
    assert_eq!(status, StatusCode::OK, "{third}");
    assert_eq!(
        whoami(&server, str_of(&third, "access_token")).await.0,
        StatusCode::OK
    );

    let db = server.db().await;
    for token in [access1, refresh1, access2, refresh2] {
        for sql in [
            "SELECT COUNT(*) FROM refresh_tokens WHERE token_hash = $1 OR replaces = $1",
            "SELECT COUNT(*) FROM access_tokens WHERE token_hash = $1 OR refresh_token_hash = $1",
        ] {
            assert_eq!(count(&db, sql, &[token]).await, 0, "{token} stored in the clear");
        }
    }
    // One session: one access token and one refresh token left for the device.
    let device = str_of(&first, "device_id");
    for sql in [
        "SELECT COUNT(*) FROM refresh_tokens WHERE device_id = $1",
        "SELECT COUNT(*) FROM access_tokens WHERE device_id = $1",
    ] {
        assert_eq!(count(&db, sql, &[device]).await, 1, "{sql}");
    }
}

/// A client that never received the refresh answer repeats the refresh with the old token: that
/// works, and the unused tokens of the lost answer are retired.
#[tokio::test]
async fn a_repeated_refresh_replaces_the_unused_successor() {
    let server = Server::start().await;
    server.register("bob").await;
    let first = login(&server, "bob", None, true).await;
    let refresh1 = str_of(&first, "refresh_token");
    let (status, lost) = refresh(&server, refresh1).await;
    assert_eq!(status, StatusCode::OK, "{lost}");
    let (status, retry) = refresh(&server, refresh1).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the old refresh token is valid until its successor is used: {retry}"
    );
    assert_unknown_token(
        "lost access token",
        whoami(&server, str_of(&lost, "access_token")).await,
        false,
    );
    assert_unknown_token(
        "lost refresh token",
        refresh(&server, str_of(&lost, "refresh_token")).await,
        false,
    );
    assert_eq!(
        whoami(&server, str_of(&retry, "access_token")).await.0,
        StatusCode::OK
    );
    // Refreshing with the successor also retires the old refresh token.
    let (status, next) = refresh(&server, str_of(&retry, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_unknown_token(
        "refresh token retired by its successor",
        refresh(&server, refresh1).await,
        false,
    );
}

/// Access and refresh tokens are not interchangeable, and made-up or malformed refresh requests
/// get the spec's errors.
#[tokio::test]
async fn tokens_of_one_kind_are_refused_as_the_other() {
    let server = Server::start().await;
    server.register("carol").await;
    let session = login(&server, "carol", None, true).await;
    let (access, refresh_token) = (
        str_of(&session, "access_token"),
        str_of(&session, "refresh_token"),
    );
    assert_unknown_token(
        "refresh token as access token",
        whoami(&server, refresh_token).await,
        false,
    );
    assert_unknown_token(
        "access token as refresh token",
        refresh(&server, access).await,
        false,
    );
    assert_unknown_token(
        "made-up refresh token",
        refresh(&server, "hthr_nope").await,
        false,
    );
    assert_unknown_token("empty refresh token", refresh(&server, "").await, false);
    // The session survives all of that.
    assert_eq!(whoami(&server, access).await.0, StatusCode::OK);

    let anon = server.anon();
    let (status, body) = anon.request(Method::POST, "/refresh", Some(&json!({}))).await;
    assert_eq!(
        (status, &body["errcode"]),
        (StatusCode::BAD_REQUEST, &json!("M_BAD_JSON")),
        "{body}"
    );
    let (status, body) = anon
        .request(Method::POST, "/refresh", Some(&json!({ "refresh_token": 7 })))
        .await;
    assert_eq!(
        (status, &body["errcode"]),
        (StatusCode::BAD_REQUEST, &json!("M_BAD_JSON")),
        "{body}"
    );
    let (status, body) = anon
        .request(
            Method::POST,
            "/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "carol" },
                "password": PASSWORD,
                "refresh_token": "yes",
            })),
        )
        .await;
    assert_eq!(
        (status, &body["errcode"]),
        (StatusCode::BAD_REQUEST, &json!("M_BAD_JSON")),
        "{body}"
    );
}

/// Without `refresh_token: true`, login and registration hand out access tokens that never
/// expire, and no refresh token. With it, registration hands one out too.
#[tokio::test]
async fn only_clients_that_ask_get_refresh_tokens() {
    let server = Server::start().await;
    server.register("dave").await;
    let body = login(&server, "dave", None, false).await;
    assert!(
        body.get("refresh_token").is_none() && body.get("expires_in_ms").is_none(),
        "{body}"
    );
    let anon = server.anon();
    let request = json!({ "username": "erin", "password": PASSWORD, "refresh_token": true });
    let (status, first) = anon.request(Method::POST, "/register", Some(&request)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{first}");
    let mut request = request;
    request["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
    let registered = anon.ok(Method::POST, "/register", Some(&request)).await;
    assert_eq!(registered["expires_in_ms"], json!(300_000), "{registered}");
    let (status, refreshed) = refresh(&server, str_of(&registered, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let (status, who) = whoami(&server, str_of(&refreshed, "access_token")).await;
    assert_eq!(
        (status, &who["user_id"]),
        (StatusCode::OK, &registered["user_id"]),
        "{who}"
    );
}

/// Logging out (one device, all devices), deleting the device and logging in again on it end its
/// refresh tokens: a later refresh is refused.
#[tokio::test]
async fn logout_ends_refresh_tokens() {
    let server = Server::start().await;
    server.register("frank").await;

    let session = login(&server, "frank", Some("PHONE"), true).await;
    with_token(&server, str_of(&session, "access_token"))
        .ok(Method::POST, "/logout", Some(&json!({})))
        .await;
    assert_unknown_token(
        "after /logout",
        refresh(&server, str_of(&session, "refresh_token")).await,
        false,
    );

    let a = login(&server, "frank", Some("LAPTOP"), true).await;
    let b = login(&server, "frank", Some("TABLET"), true).await;
    with_token(&server, str_of(&b, "access_token"))
        .ok(Method::POST, "/logout/all", Some(&json!({})))
        .await;
    for session in [&a, &b] {
        assert_unknown_token(
            "after /logout/all",
            refresh(&server, str_of(session, "refresh_token")).await,
            false,
        );
    }

    // Deleting a device from another one (user-interactive auth with the password).
    let phone = login(&server, "frank", Some("OLDPHONE"), true).await;
    let other = with_token(
        &server,
        str_of(&login(&server, "frank", Some("PC"), false).await, "access_token"),
    );
    let (status, first) = other
        .request(Method::DELETE, "/devices/OLDPHONE", Some(&json!({})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{first}");
    let auth = json!({ "auth": {
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "frank" },
        "password": PASSWORD,
        "session": first["session"],
    }});
    other.ok(Method::DELETE, "/devices/OLDPHONE", Some(&auth)).await;
    assert_unknown_token(
        "after device deletion",
        refresh(&server, str_of(&phone, "refresh_token")).await,
        false,
    );

    let old = login(&server, "frank", Some("DESK"), true).await;
    let new = login(&server, "frank", Some("DESK"), true).await;
    assert_unknown_token(
        "replaced by a new login",
        refresh(&server, str_of(&old, "refresh_token")).await,
        false,
    );
    assert_eq!(
        refresh(&server, str_of(&new, "refresh_token")).await.0,
        StatusCode::OK
    );

    let db = server.db().await;
    let rows = count(
        &db,
        "SELECT COUNT(*) FROM refresh_tokens WHERE device_id <> $1",
        &["DESK"],
    )
    .await;
    assert_eq!(rows, 0, "refresh tokens of logged-out devices are deleted");
}

/// An expired access token is refused with `soft_logout: true`, even while it is in the token
/// cache; the refresh token still gets a new one. An expired refresh token is refused the same way.
#[tokio::test]
async fn expired_tokens_are_a_soft_logout() {
    let server = Server::start_with_config(
        Backend::from_env(),
        "[auth]\nrefreshable_access_token_lifetime_ms = 3000\nrefresh_token_lifetime_ms = 6000\n",
    )
    .await;
    server.register("grace").await;
    let session = login(&server, "grace", None, true).await;
    assert_eq!(session["expires_in_ms"], json!(3000), "{session}");
    let access = str_of(&session, "access_token");
    assert_eq!(
        whoami(&server, access).await.0,
        StatusCode::OK,
        "a fresh token works (and is cached)"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_unknown_token("expired access token", whoami(&server, access).await, true);

    let (status, refreshed) = refresh(&server, str_of(&session, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(
        whoami(&server, str_of(&refreshed, "access_token")).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert_unknown_token(
        "expired refresh token",
        refresh(&server, str_of(&refreshed, "refresh_token")).await,
        true,
    );
}

/// With `refreshable_access_token_lifetime_ms = 0` a client asking for a refresh token gets a
/// non-expiring access token instead, and `/refresh` does not exist (as in Synapse).
#[tokio::test]
async fn refresh_tokens_can_be_turned_off() {
    let server = Server::start_with_config(
        Backend::from_env(),
        "[auth]\nrefreshable_access_token_lifetime_ms = 0\n",
    )
    .await;
    server.register("heidi").await;
    let session = login(&server, "heidi", None, true).await;
    assert!(
        session.get("refresh_token").is_none() && session.get("expires_in_ms").is_none(),
        "{session}"
    );
    assert_eq!(
        whoami(&server, str_of(&session, "access_token")).await.0,
        StatusCode::OK
    );
    let (status, body) = refresh(&server, "hthr_anything").await;
    assert_eq!(
        (status, &body["errcode"]),
        (StatusCode::NOT_FOUND, &json!("M_UNRECOGNIZED")),
        "{body}"
    );
}

/// Racing refreshes of one refresh token take turns: each replaces the previous successor, so
/// one session remains with exactly one working new access token, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_refreshes_leave_one_successor() {
    let server = Server::start().await;
    server.register("ivan").await;
    let session = login(&server, "ivan", Some("RACE"), true).await;
    let refresh1 = str_of(&session, "refresh_token").to_owned();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let anon = server.anon();
        let body = json!({ "refresh_token": refresh1 });
        tasks.push(tokio::spawn(async move {
            anon.request(Method::POST, "/refresh", Some(&body)).await
        }));
    }
    let mut access_tokens = Vec::new();
    for task in tasks {
        let (status, body) = task.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{body}");
        access_tokens.push(str_of(&body, "access_token").to_owned());
    }
    let db = server.db().await;
    let rows = count(
        &db,
        "SELECT COUNT(*) FROM refresh_tokens WHERE device_id = $1",
        &["RACE"],
    )
    .await;
    assert_eq!(rows, 2, "the old refresh token and one successor");
    let mut working = 0;
    for token in &access_tokens {
        if whoami(&server, token).await.0 == StatusCode::OK {
            working += 1;
        }
    }
    assert_eq!(
        working, 1,
        "exactly one of the racing answers holds a live session"
    );
}
