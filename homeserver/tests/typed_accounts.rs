//! The account-side endpoints read their requests as typed values: the shapes that ruma's
//! types would refuse (or panic on) but Hearth accepts keep working, and malformed ones get
//! the spec's errors, never a 500 or a dropped connection.

mod common;

use common::{PASSWORD, Server, encode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// No JSON `null` anywhere in a response: optional fields are left out.
fn assert_no_nulls(value: &Value, context: &str) {
    match value {
        Value::Null => panic!("null in {context}"),
        Value::Object(map) => map.values().for_each(|v| assert_no_nulls(v, context)),
        Value::Array(items) => items.iter().for_each(|v| assert_no_nulls(v, context)),
        _ => {}
    }
}

#[tokio::test]
async fn login_bodies_of_any_shape_get_spec_errors() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let anon = server.anon();
    let identifier = json!({ "type": "m.id.user", "user": alice.user_id });
    let refused = [
        // No `type` at all (ruma's login type panics on this one).
        (
            json!({ "identifier": identifier, "password": PASSWORD }),
            400,
            "M_BAD_JSON",
        ),
        (
            json!({ "type": 5, "identifier": identifier, "password": PASSWORD }),
            400,
            "M_BAD_JSON",
        ),
        (
            json!({ "type": "m.login.password", "identifier": identifier }),
            400,
            "M_BAD_JSON",
        ),
        (
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.phone", "country": "GB", "phone": "1" }, "password": PASSWORD }),
            400,
            "M_UNKNOWN",
        ),
        (
            json!({ "type": "m.login.password", "password": PASSWORD }),
            400,
            "M_BAD_JSON",
        ),
        (json!({ "type": "m.login.token", "token": "x" }), 400, "M_UNKNOWN"),
        (
            json!({ "type": "m.login.password", "identifier": identifier, "password": "wrong" }),
            403,
            "M_FORBIDDEN",
        ),
    ];
    for (body, status, errcode) in refused {
        let (got, answer) = anon.request(Method::POST, "/login", Some(&body)).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        assert_eq!(answer["errcode"], errcode, "{body}: {answer}");
    }
    // The deprecated top-level `user` still logs in, and the server is still there.
    let body = json!({ "type": "m.login.password", "user": "alice", "password": PASSWORD });
    let logged_in = anon.ok(Method::POST, "/login", Some(&body)).await;
    assert_eq!(logged_in["user_id"], alice.user_id.as_str());
    assert!(
        logged_in["well_known"]["m.homeserver"]["base_url"].is_string(),
        "{logged_in}"
    );
    assert_no_nulls(&logged_in, "login");
}

/// The `auth` dict is read stage by stage, not as a request field: a password stage of the
/// wrong shape fails that stage (401, session kept) instead of the whole request (400).
#[tokio::test]
async fn a_malformed_auth_stage_fails_the_stage_not_the_request() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let path = format!("/devices/{}", encode(&alice.device_id));
    let (status, first) = alice.request(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{first}");
    let session = first["session"].as_str().expect("session").to_owned();
    let malformed = json!({ "auth": { "type": "m.login.password", "password": 5, "session": session } });
    let (status, failed) = alice.request(Method::DELETE, &path, Some(&malformed)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{failed}");
    assert_eq!(failed["errcode"], "M_FORBIDDEN", "{failed}");
    assert_eq!(failed["session"], session.as_str(), "{failed}");
    let good = json!({ "auth": {
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": alice.user_id },
        "password": PASSWORD,
        "session": session,
    } });
    alice.ok(Method::DELETE, &path, Some(&good)).await;
    let (status, _) = alice.request(Method::GET, "/account/whoami", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn registration_and_devices_leave_out_unset_fields() {
    let server = Server::start().await;
    let anon = server.anon();
    let body = json!({ "username": "quiet", "password": PASSWORD, "inhibit_login": true });
    let (status, first) = anon.request(Method::POST, "/register", Some(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{first}");
    let mut body = body;
    body["auth"] = json!({ "type": "m.login.dummy", "session": first["session"] });
    let registered = anon.ok(Method::POST, "/register", Some(&body)).await;
    assert_eq!(registered, json!({ "user_id": "@quiet:hearth.test" }));

    let alice = server.register("alice").await;
    let device = alice
        .ok(
            Method::GET,
            &format!("/devices/{}", encode(&alice.device_id)),
            None,
        )
        .await;
    assert_no_nulls(&device, "device");
    assert!(device.get("display_name").is_none(), "{device}");
    let devices = alice.ok(Method::GET, "/devices", None).await;
    assert_no_nulls(&devices, "devices");
    let threepids = alice.ok(Method::GET, "/account/3pid", None).await;
    assert_eq!(threepids, json!({ "threepids": [] }));
    // A bad device ID list is the body's shape, not a server error.
    let (status, body) = alice
        .request(
            Method::POST,
            "/delete_devices",
            Some(&json!({ "devices": "all" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
}

#[tokio::test]
async fn profile_fields_clear_with_null_or_absent_and_refuse_other_shapes() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let path = format!("/profile/{}/displayname", encode(&alice.user_id));
    alice
        .ok(Method::PUT, &path, Some(&json!({ "displayname": "Alice" })))
        .await;
    assert_eq!(
        alice.ok(Method::GET, &path, None).await,
        json!({ "displayname": "Alice" })
    );
    for clearing in [json!({ "displayname": null }), json!({})] {
        alice
            .ok(Method::PUT, &path, Some(&json!({ "displayname": "Alice" })))
            .await;
        alice.ok(Method::PUT, &path, Some(&clearing)).await;
        let (status, body) = alice.request(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{clearing}: {body}");
    }
    let (status, body) = alice
        .request(Method::PUT, &path, Some(&json!({ "displayname": 5 })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
    let other = format!("/profile/{}/m.tz", encode(&alice.user_id));
    let (status, body) = alice
        .request(Method::PUT, &other, Some(&json!({ "m.tz": "Europe/London" })))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = alice.request(Method::GET, "/profile/not-a-user-id", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_INVALID_PARAM", "{body}");
}

#[tokio::test]
async fn capabilities_and_tags_are_typed_but_equivalent() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let caps = alice.ok(Method::GET, "/capabilities", None).await;
    let caps = &caps["capabilities"];
    let default = caps["m.room_versions"]["default"].as_str().expect("default");
    assert_eq!(caps["m.room_versions"]["available"][default], "stable", "{caps}");
    assert_eq!(caps["m.3pid_changes"]["enabled"], false, "{caps}");
    // Left out means enabled.
    assert_ne!(caps["m.change_password"]["enabled"], false, "{caps}");

    let room = alice.create_room(json!({})).await;
    let tags = format!("/user/{}/rooms/{}/tags", encode(&alice.user_id), encode(&room));
    alice
        .ok(
            Method::PUT,
            &format!("{tags}/u.work"),
            Some(&json!({ "order": 0.5 })),
        )
        .await;
    alice
        .ok(Method::PUT, &format!("{tags}/u.none"), Some(&json!({})))
        .await;
    let got = alice.ok(Method::GET, &tags, None).await;
    assert_eq!(
        got,
        json!({ "tags": { "u.work": { "order": 0.5 }, "u.none": {} } })
    );
    let (status, body) = alice
        .request(Method::PUT, &format!("{tags}/u.bad"), Some(&json!([1])))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
}
