//! Pushers cannot make the server send requests into its own network (gateways on loopback,
//! private, link-local and other non-global addresses are refused when set and when delivering,
//! unless the operator allows them), and a pusher goes with the device that set it: logout,
//! device deletion, password change with `logout_devices`, and account deactivation.

mod common;

use std::time::Duration;

use common::{Backend, Client, PASSWORD, Server, count};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wiremock::MockServer;

const ALLOW_LOCAL: &str = "[push]\nallow_private_addresses = true\n";

fn pusher(pushkey: &str, url: &str) -> Value {
    json!({
        "pushkey": pushkey, "kind": "http", "app_id": "org.example.app",
        "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
        "data": { "url": url },
    })
}

async fn pushkeys(client: &Client) -> Vec<String> {
    let list = client.ok(Method::GET, "/pushers", None).await;
    let mut keys: Vec<String> = list["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pushkey"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn gateways_on_non_public_addresses_are_refused() {
    let server = Server::start().await;
    let bob = server.register("bob").await;
    for host in [
        "127.0.0.1:8008",
        "localhost:8008",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "[::1]",
        "[fe80::1]",
        "[fd00::1]",
        "[::ffff:127.0.0.1]",
        // 127.0.0.1 written as one number: URL parsing normalises it to the loopback address.
        "2130706433",
    ] {
        let url = format!("http://{host}/_matrix/push/v1/notify");
        let (status, body) = bob
            .request(Method::POST, "/pushers/set", Some(&pusher("k", &url)))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM", "{url}: {body}");
    }
    assert!(pushkeys(&bob).await.is_empty());
    // A public address is fine.
    bob.ok(
        Method::POST,
        "/pushers/set",
        Some(&pusher("public", "http://192.0.32.10:9/_matrix/push/v1/notify")),
    )
    .await;
    assert_eq!(pushkeys(&bob).await, ["public"]);
}

#[tokio::test]
async fn the_operator_can_allow_networks() {
    let server = Server::start_with_config(
        Backend::from_env(),
        "[push]\nallowed_networks = [\"127.0.0.0/8\", \"fd00::/8\"]\n",
    )
    .await;
    let bob = server.register("bob").await;
    for (pushkey, host) in [("v4", "127.0.0.1:9"), ("v6", "[fd00::1]:9")] {
        let url = format!("http://{host}/_matrix/push/v1/notify");
        bob.ok(Method::POST, "/pushers/set", Some(&pusher(pushkey, &url)))
            .await;
    }
    let (status, body) = bob
        .request(
            Method::POST,
            "/pushers/set",
            Some(&pusher("k", "http://10.0.0.1/_matrix/push/v1/notify")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(pushkeys(&bob).await, ["v4", "v6"]);
}

/// Counts the notifications a mock gateway received within a short wait.
async fn deliveries_after_a_while(gateway: &MockServer) -> usize {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gateway.received_requests().await.unwrap().len()
}

/// A pusher stored while the operator allowed local gateways is not delivered to once the
/// allowance is withdrawn: delivery checks again (by name: the client's resolver; by literal
/// address: before the request).
#[tokio::test]
async fn delivery_checks_the_address_again() {
    let gateway = common::push_gateway(&[]).await;
    let port = gateway.address().port();
    let mut server = Server::start_with_config(Backend::from_env(), ALLOW_LOCAL).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await;
    for (pushkey, host) in [("literal", "127.0.0.1"), ("name", "localhost")] {
        let url = format!("http://{host}:{port}/_matrix/push/v1/notify");
        bob.ok(Method::POST, "/pushers/set", Some(&pusher(pushkey, &url)))
            .await;
    }
    // Allowed: both are delivered to (this is what the test would miss if delivery failed for
    // another reason).
    alice.send_text(&room, "one").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gateway.received_requests().await.unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no deliveries while allowed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.reset().await;
    common::accept_notifications(&gateway, &[]).await;

    // The operator withdraws the allowance.
    let config_path = server.dir().join("hearth.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(
        &config_path,
        config.replace(
            "allow_private_addresses = true",
            "allow_private_addresses = false",
        ),
    )
    .unwrap();
    server.restart().await;
    assert_eq!(
        pushkeys(&bob).await,
        ["literal", "name"],
        "the pushers are still stored"
    );
    alice.send_text(&room, "two").await;
    assert_eq!(
        deliveries_after_a_while(&gateway).await,
        0,
        "nothing reaches a local gateway"
    );
}

async fn login(server: &Server, user: &str) -> Client {
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
    server.client_with_token(
        body["user_id"].as_str().unwrap(),
        body["device_id"].as_str().unwrap(),
        body["access_token"].as_str().unwrap(),
    )
}

const URL: &str = "http://127.0.0.1:9/_matrix/push/v1/notify";

fn password_auth(user_id: &str) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user_id },
        "password": PASSWORD,
    })
}

#[tokio::test]
async fn pushers_go_with_their_device() {
    let server = Server::start_with_config(Backend::from_env(), ALLOW_LOCAL).await;
    let main = server.register("alice").await;
    let devices: Vec<Client> = [
        login(&server, "alice").await,
        login(&server, "alice").await,
        login(&server, "alice").await,
        login(&server, "alice").await,
    ]
    .into();
    main.ok(Method::POST, "/pushers/set", Some(&pusher("main", URL)))
        .await;
    for (i, device) in devices.iter().enumerate() {
        device
            .ok(Method::POST, "/pushers/set", Some(&pusher(&format!("d{i}"), URL)))
            .await;
    }
    // Re-setting a pusher from another device moves it there (as Synapse moves it to the
    // token that last set it).
    devices[3]
        .ok(Method::POST, "/pushers/set", Some(&pusher("d2", URL)))
        .await;
    assert_eq!(pushkeys(&main).await, ["d0", "d1", "d2", "d3", "main"]);

    // Logout.
    devices[0].ok(Method::POST, "/logout", Some(&json!({}))).await;
    assert_eq!(pushkeys(&main).await, ["d1", "d2", "d3", "main"]);

    // Device deletion.
    let body = json!({ "auth": password_auth(&main.user_id) });
    main.ok(
        Method::DELETE,
        &format!("/devices/{}", devices[1].device_id),
        Some(&body),
    )
    .await;
    assert_eq!(pushkeys(&main).await, ["d2", "d3", "main"]);
    // d2 belongs to device 3 now: logging device 2 out leaves it.
    devices[2].ok(Method::POST, "/logout", Some(&json!({}))).await;
    assert_eq!(pushkeys(&main).await, ["d2", "d3", "main"]);

    // A password change without logging out keeps them; with it, only the changer's remain.
    let keep =
        json!({ "new_password": PASSWORD, "logout_devices": false, "auth": password_auth(&main.user_id) });
    main.ok(Method::POST, "/account/password", Some(&keep)).await;
    assert_eq!(pushkeys(&main).await, ["d2", "d3", "main"]);
    let out = json!({ "new_password": PASSWORD, "auth": password_auth(&main.user_id) });
    main.ok(Method::POST, "/account/password", Some(&out)).await;
    assert_eq!(pushkeys(&main).await, ["main"]);

    // Logout everywhere.
    let last = login(&server, "alice").await;
    last.ok(Method::POST, "/pushers/set", Some(&pusher("last", URL)))
        .await;
    last.ok(Method::POST, "/logout/all", Some(&json!({}))).await;
    let fresh = login(&server, "alice").await;
    assert!(pushkeys(&fresh).await.is_empty());
}

#[tokio::test]
async fn deactivation_deletes_the_pushers() {
    let server = Server::start_with_config(Backend::from_env(), ALLOW_LOCAL).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    alice
        .ok(Method::POST, "/pushers/set", Some(&pusher("a", URL)))
        .await;
    bob.ok(Method::POST, "/pushers/set", Some(&pusher("b", URL)))
        .await;
    let body = json!({ "auth": password_auth(&alice.user_id) });
    alice.ok(Method::POST, "/account/deactivate", Some(&body)).await;
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM pushers WHERE user_id = $1",
            &[&alice.user_id]
        )
        .await,
        0
    );
    db.close().await;
    assert_eq!(pushkeys(&bob).await, ["b"], "other users keep theirs");
}
