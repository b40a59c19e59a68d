//! User-interactive auth sessions belong to the one API call that started them (method, path and
//! body), expire, and are pruned. The spec (Client-Server API §User-interactive authentication
//! API) has the client resubmit "the same request" with `auth` added, "in the same API call".

mod common;

use std::time::Duration;

use common::{Backend, Client, PASSWORD, Server, count};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn password_auth(client: &Client, session: Option<&str>) -> Value {
    let mut auth = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": client.user_id },
        "password": PASSWORD,
    });
    if let Some(session) = session {
        auth["session"] = json!(session);
    }
    auth
}

/// Sends `body` without `auth`: the 401 that starts a session; returns the session ID.
async fn start(client: &Client, method: Method, path: &str, body: Value) -> String {
    let (status, resp) = client.request(method, path, Some(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");
    resp["session"].as_str().expect("session").to_owned()
}

async fn with_auth(
    client: &Client,
    method: Method,
    path: &str,
    mut body: Value,
    session: &str,
) -> (StatusCode, Value) {
    body["auth"] = password_auth(client, Some(session));
    client.request(method, path, Some(&body)).await
}

async fn new_device(server: &Server, user: &str) -> String {
    let (status, body) = server
        .anon()
        .request(
            Method::POST,
            "/login",
            Some(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": PASSWORD,
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["device_id"].as_str().unwrap().to_owned()
}

async fn has_device(client: &Client, device: &str) -> bool {
    let (status, _) = client
        .request(Method::GET, &format!("/devices/{device}"), None)
        .await;
    status == StatusCode::OK
}

fn assert_refused(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{what}: {body}");
}

#[tokio::test]
async fn a_session_cannot_complete_another_endpoint() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let a = new_device(&server, "alice").await;
    let b = new_device(&server, "alice").await;

    let session = start(&alice, Method::DELETE, &format!("/devices/{a}"), json!({})).await;
    // Another device, same method.
    let (status, body) = with_auth(
        &alice,
        Method::DELETE,
        &format!("/devices/{b}"),
        json!({}),
        &session,
    )
    .await;
    assert_refused(status, &body, "session of DELETE /devices/A used for B");
    assert!(has_device(&alice, &b).await, "device B must survive");
    // Another endpoint altogether.
    let (status, body) = with_auth(
        &alice,
        Method::POST,
        "/account/password",
        json!({ "new_password": "taken over", "logout_devices": false }),
        &session,
    )
    .await;
    assert_refused(
        status,
        &body,
        "session of DELETE /devices/A used for /account/password",
    );
    let (status, _) = server
        .anon()
        .request(
            Method::POST,
            "/login",
            Some(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the password is unchanged");
    let (status, body) = with_auth(
        &alice,
        Method::POST,
        "/delete_devices",
        json!({ "devices": [b] }),
        &session,
    )
    .await;
    assert_refused(
        status,
        &body,
        "session of DELETE /devices/A used for /delete_devices",
    );
    assert!(has_device(&alice, &b).await);

    // The call it was started for still completes.
    let (status, body) = with_auth(
        &alice,
        Method::DELETE,
        &format!("/devices/{a}"),
        json!({}),
        &session,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!has_device(&alice, &a).await);
}

#[tokio::test]
async fn a_session_cannot_complete_a_changed_body() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let other = new_device(&server, "alice").await;
    let body = json!({ "new_password": "the one I typed", "logout_devices": false });
    let session = start(&alice, Method::POST, "/account/password", body.clone()).await;
    let changed = json!({ "new_password": "the attacker's", "logout_devices": false });
    let (status, resp) = with_auth(&alice, Method::POST, "/account/password", changed, &session).await;
    assert_refused(status, &resp, "changed new_password");
    let (status, resp) = with_auth(
        &alice,
        Method::POST,
        "/account/password",
        json!({ "new_password": "the one I typed", "logout_devices": true }),
        &session,
    )
    .await;
    assert_refused(status, &resp, "changed logout_devices");
    assert!(has_device(&alice, &other).await, "no device was logged out");

    // Key order and the `auth` dict itself do not count as changes.
    let reordered = json!({ "logout_devices": false, "new_password": "the one I typed" });
    let (status, resp) = with_auth(&alice, Method::POST, "/account/password", reordered, &session).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (status, _) = server
        .anon()
        .request(
            Method::POST,
            "/login",
            Some(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "the one I typed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_session_of_another_user_is_refused() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mallory = server.register("mallory").await;
    let session = start(&alice, Method::POST, "/account/deactivate", json!({})).await;
    let mut body = json!({});
    body["auth"] = password_auth(&mallory, Some(&session));
    let (status, resp) = mallory
        .request(Method::POST, "/account/deactivate", Some(&body))
        .await;
    assert_refused(status, &resp, "alice's session used by mallory");
    mallory.ok(Method::GET, "/account/whoami", None).await;
}

#[tokio::test]
async fn sessions_expire_and_are_pruned() {
    let server = Server::start_with_config(Backend::from_env(), "[uia]\nsession_timeout_secs = 1\n").await;
    let alice = server.register("alice").await;
    let device = new_device(&server, "alice").await;
    let path = format!("/devices/{device}");
    let old = start(&alice, Method::DELETE, &path, json!({})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (status, body) = with_auth(&alice, Method::DELETE, &path, json!({}), &old).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN", "{body}");
    assert!(has_device(&alice, &device).await);

    // Starting a new session deletes the expired ones.
    let fresh = start(&alice, Method::DELETE, &path, json!({})).await;
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM uia_sessions WHERE session_id = $1",
            &[&old]
        )
        .await,
        0,
        "the expired session is pruned"
    );
    let (status, body) = with_auth(&alice, Method::DELETE, &path, json!({}), &fresh).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM uia_sessions", &[]).await,
        0,
        "a completed session is deleted"
    );
    db.close().await;
}
