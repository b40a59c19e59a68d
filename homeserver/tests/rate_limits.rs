//! Rate limits: each limited action refuses a burst beyond its limit with 429
//! `M_LIMIT_EXCEEDED` and `retry_after_ms`; failed logins are counted per (user, client
//! address), so an attacker's failures never keep the owner out; `X-Forwarded-For` names the
//! client only when the connection comes from a trusted proxy.

mod common;

use common::{Backend, Client, PASSWORD, RATE_LIMIT_FIELDS, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Every per-user action limited to a burst of 2 with (practically) no refill; messages, login
/// and registration stay generous so that setting up users and rooms costs nothing.
fn tight_limits() -> String {
    let mut out = format!("enabled = true\n{RATE_LIMIT_FIELDS}");
    for action in [
        "room_creation",
        "invites",
        "joins",
        "profile",
        "typing",
        "receipts",
        "presence",
        "media_uploads",
        "pushers",
        "uia_failures",
    ] {
        out.push_str(&format!("{action}_per_second = 0.001\n{action}_burst = 2.0\n"));
    }
    out
}

async fn tight_server() -> Server {
    Server::start_with_limits(Backend::from_env(), "", &tight_limits(), "").await
}

fn assert_limited(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{what}: {body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{what}: {body}");
    assert!(
        body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{what}: retry_after_ms missing: {body}"
    );
}

/// Runs `call` three times: the first two must not be rate limited, the third must be.
async fn third_is_limited<F, Fut>(what: &str, mut call: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)>,
{
    for i in 0..2 {
        let (status, body) = call(i).await;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS, "{what} #{i}: {body}");
        assert!(status.is_success(), "{what} #{i}: {status} {body}");
    }
    let (status, body) = call(2).await;
    assert_limited(status, &body, what);
}

#[tokio::test]
async fn each_limited_action_refuses_a_burst() {
    let server = tight_server().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let others: Vec<Client> = [
        server.register("carol").await,
        server.register("dave").await,
        server.register("erin").await,
    ]
    .into();

    third_is_limited("createRoom", |_| {
        let alice = alice.clone();
        async move {
            alice
                .request(
                    Method::POST,
                    "/createRoom",
                    Some(&json!({"preset": "public_chat"})),
                )
                .await
        }
    })
    .await;
    // Alice's limit is hers alone.
    let room = bob.create_room(json!({"preset": "public_chat"})).await;
    let event = bob.send_text(&room, "hello").await;

    third_is_limited("invite", |i| {
        let body = json!({ "user_id": others[i].user_id });
        let path = format!("/rooms/{room}/invite");
        let bob = bob.clone();
        async move { bob.request(Method::POST, &path, Some(&body)).await }
    })
    .await;

    third_is_limited("join", |i| {
        let path = if i == 1 {
            format!("/join/{room}")
        } else {
            format!("/rooms/{room}/join")
        };
        let alice = alice.clone();
        async move { alice.request(Method::POST, &path, None).await }
    })
    .await;

    third_is_limited("profile", |i| {
        let path = format!("/profile/{}/displayname", alice.user_id);
        let body = json!({ "displayname": format!("Alice {i}") });
        let alice = alice.clone();
        async move { alice.request(Method::PUT, &path, Some(&body)).await }
    })
    .await;

    third_is_limited("typing", |_| {
        let path = format!("/rooms/{room}/typing/{}", alice.user_id);
        let alice = alice.clone();
        async move {
            alice
                .request(
                    Method::PUT,
                    &path,
                    Some(&json!({"typing": true, "timeout": 1000})),
                )
                .await
        }
    })
    .await;

    third_is_limited("receipt", |i| {
        let (path, body) = if i == 1 {
            (
                format!("/rooms/{room}/read_markers"),
                json!({ "m.fully_read": event }),
            )
        } else {
            (format!("/rooms/{room}/receipt/m.read/{event}"), json!({}))
        };
        let alice = alice.clone();
        async move { alice.request(Method::POST, &path, Some(&body)).await }
    })
    .await;

    third_is_limited("presence", |_| {
        let path = format!("/presence/{}/status", alice.user_id);
        let alice = alice.clone();
        async move {
            alice
                .request(Method::PUT, &path, Some(&json!({"presence": "online"})))
                .await
        }
    })
    .await;

    third_is_limited("pushers/set", |i| {
        // Deletions are the cheapest pusher change, and they count too.
        let body = json!({ "app_id": "a", "pushkey": format!("k{i}"), "kind": null });
        let alice = alice.clone();
        async move { alice.request(Method::POST, "/pushers/set", Some(&body)).await }
    })
    .await;

    // Uploads and /create share one limit.
    let http = server.http.clone();
    let base = server.base_url.clone();
    let token = alice.token.clone().unwrap();
    third_is_limited("upload", |i| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let req = if i == 1 {
                http.post(format!("{base}/_matrix/media/v1/create"))
            } else {
                http.post(format!("{base}/_matrix/media/v3/upload"))
                    .header("content-type", "text/plain")
                    .body("some bytes")
            };
            let resp = req.bearer_auth(token).send().await.expect("upload");
            let status = resp.status();
            (status, resp.json().await.unwrap_or(Value::Null))
        }
    })
    .await;

    // Messages are not affected by the other limits.
    alice.send_text(&room, "still here").await;
}

/// Wrong passwords in user-interactive auth are limited per user; right ones cost nothing.
#[tokio::test]
async fn uia_password_failures_are_limited() {
    let server = tight_server().await;
    let alice = server.register("alice").await;
    let other = login(&server, "alice", PASSWORD, None).await;
    let device = other["device_id"].as_str().unwrap().to_owned();
    let path = format!("/devices/{device}");
    let attempt = |password: &str| {
        json!({ "auth": {
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": alice.user_id },
            "password": password,
        }})
    };
    for i in 0..2 {
        let (status, body) = alice
            .request(Method::DELETE, &path, Some(&attempt("wrong")))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}: {body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "attempt {i}: {body}");
    }
    let (status, body) = alice
        .request(Method::DELETE, &path, Some(&attempt("wrong")))
        .await;
    assert_limited(status, &body, "third wrong UIA password");
    // The limit holds for a right password too until it refills: guessing stops there.
    let (status, body) = alice
        .request(Method::DELETE, &path, Some(&attempt(PASSWORD)))
        .await;
    assert_limited(status, &body, "UIA password after the failures");
    // Another user is not affected.
    let bob = server.register("bob").await;
    let bob_device = login(&server, "bob", PASSWORD, None).await["device_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({ "auth": {
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": bob.user_id },
        "password": PASSWORD,
    }});
    bob.ok(Method::DELETE, &format!("/devices/{bob_device}"), Some(&body))
        .await;
}

/// `POST /login` as `user`, from `forwarded_for` when given (sent as `X-Forwarded-For`).
async fn login_raw(
    server: &Server,
    user: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = server
        .http
        .post(format!("{}/_matrix/client/v3/login", server.base_url))
        .json(&json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user },
            "password": password,
        }));
    if let Some(address) = forwarded_for {
        req = req.header("x-forwarded-for", address);
    }
    let resp = req.send().await.expect("login");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn login(server: &Server, user: &str, password: &str, forwarded_for: Option<&str>) -> Value {
    let (status, body) = login_raw(server, user, password, forwarded_for).await;
    assert_eq!(status, StatusCode::OK, "login {user}: {body}");
    body
}

/// `GET /devices/{device}` with the token of that device, sent with `X-Forwarded-For`.
async fn own_device(server: &Server, token: &str, device: &str, forwarded_for: &str) -> Value {
    let resp = server
        .http
        .get(format!("{}/_matrix/client/v3/devices/{device}", server.base_url))
        .bearer_auth(token)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .expect("GET /devices");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.expect("device JSON")
}

const ATTACKER: &str = "203.0.113.7";
const OWNER: &str = "198.51.100.20";

fn login_limits() -> String {
    // Generous per-address request limit; three failures per (user, address).
    "enabled = true\nlogin_per_second = 1000.0\nlogin_burst = 10000.0\n\
     login_failures_per_second = 0.001\nlogin_failures_burst = 3.0\n\
     register_per_second = 1000.0\nregister_burst = 10000.0\n"
        .to_owned()
}

#[tokio::test]
async fn failed_logins_from_one_address_do_not_lock_out_another() {
    let server = Server::start_with_limits(
        Backend::from_env(),
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &login_limits(),
        "",
    )
    .await;
    server.register("alice").await;
    server.register("bob").await;

    for i in 0..3 {
        let (status, body) = login_raw(&server, "alice", "guess", Some(ATTACKER)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "failure {i}: {body}");
    }
    let (status, body) = login_raw(&server, "alice", "guess", Some(ATTACKER)).await;
    assert_limited(status, &body, "fourth failure from the attacker");
    // From the attacker's address even the right password waits: no more guesses there.
    let (status, body) = login_raw(&server, "alice", PASSWORD, Some(ATTACKER)).await;
    assert_limited(status, &body, "right password from the attacker's address");

    // The owner, elsewhere, logs in; a typo there is an ordinary 403.
    let (status, body) = login_raw(&server, "alice", "typo", Some(OWNER)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let session = login(&server, "alice", PASSWORD, Some(OWNER)).await;
    // Another user from the attacker's address is not affected either.
    login(&server, "bob", PASSWORD, Some(ATTACKER)).await;

    // Behind the trusted proxy, the device records the forwarded address.
    let device = own_device(
        &server,
        session["access_token"].as_str().unwrap(),
        session["device_id"].as_str().unwrap(),
        OWNER,
    )
    .await;
    assert_eq!(device["last_seen_ip"], OWNER, "{device}");
    // Successful logins never spend the failure budget.
    for _ in 0..5 {
        login(&server, "alice", PASSWORD, Some(OWNER)).await;
    }
}

#[tokio::test]
async fn forwarded_for_is_ignored_without_a_trusted_proxy() {
    // The peer (127.0.0.1) is not a trusted proxy here: the header is the client's say-so.
    let server = Server::start_with_limits(
        Backend::from_env(),
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &login_limits(),
        "",
    )
    .await;
    server.register("alice").await;
    for _ in 0..3 {
        let (status, body) = login_raw(&server, "alice", "guess", Some(ATTACKER)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    // A forged header does not make a fresh address: all came from 127.0.0.1.
    let (status, body) = login_raw(&server, "alice", PASSWORD, Some(OWNER)).await;
    assert_limited(status, &body, "forged X-Forwarded-For");
    let (status, body) = login_raw(&server, "alice", PASSWORD, None).await;
    assert_limited(status, &body, "same peer without the header");
    // And devices record the peer, not the header.
    let bob = server.register("bob").await;
    let device = own_device(&server, bob.token.as_deref().unwrap(), &bob.device_id, OWNER).await;
    assert_eq!(device["last_seen_ip"], "127.0.0.1", "{device}");
}

/// With `enabled = false` (what the other test suites run with), nothing is limited.
#[tokio::test]
async fn disabled_limits_limit_nothing() {
    let mut limits = tight_limits().replace("enabled = true", "enabled = false");
    limits.push_str("login_failures_per_second = 0.001\nlogin_failures_burst = 1.0\n");
    let server = Server::start_with_limits(Backend::from_env(), "", &limits, "").await;
    let alice = server.register("alice").await;
    for _ in 0..4 {
        alice.create_room(json!({})).await;
        let (status, _) = login_raw(&server, "alice", "guess", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    login(&server, "alice", PASSWORD, None).await;
    let room = alice.create_room(json!({})).await;
    for _ in 0..4 {
        alice
            .ok(
                Method::PUT,
                &format!("/rooms/{room}/typing/{}", alice.user_id),
                Some(&json!({"typing": false})),
            )
            .await;
    }
}
