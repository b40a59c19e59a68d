//! Audited admin reads (spec/admin.md): a reason and admin rights are required, only
//! search-enabled rooms can be read, every read is in the audit log before data is returned
//! (also across a SIGKILL right after the read), and no endpoint changes or deletes entries.

mod common;

use common::{Backend, Client, RATE_LIMIT_FIELDS, Server, encode, hearth_command};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ADMIN: &str = "@boss:hearth.test";

async fn start() -> Server {
    Server::start_with_limits(
        Backend::from_env(),
        &format!("admins = [\"{ADMIN}\"]"),
        &format!("enabled = false\n{RATE_LIMIT_FIELDS}"),
        // Rooms created without a mode stay plain (the server default would make them
        // search-enabled), so the refusals for plain rooms can be checked.
        "[privacy]\ndefault_mode = \"none\"\n",
    )
    .await
}

/// A request to `/_hearth/admin/v1{path}`.
async fn admin_api(client: &Client, method: Method, path: &str) -> (StatusCode, Value) {
    let url = format!("{}/_hearth/admin/v1{path}", client.base_url);
    let mut req = client.http.request(method, &url);
    if let Some(token) = &client.token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn messages_path(room: &str, query: &str) -> String {
    format!("/rooms/{}/messages?{query}", encode(room))
}

fn mode_room(mode: &str) -> Value {
    json!({
        "preset": "public_chat",
        "initial_state": [{"type": "org.hearth.room.privacy", "state_key": "", "content": {"mode": mode}}],
    })
}

#[tokio::test]
async fn admin_reads_need_a_reason_rights_and_a_search_enabled_room() {
    let server = start().await;
    let admin = server.register("boss").await;
    let alice = server.register("alice").await;
    let room = alice.create_room(mode_room("search_enabled")).await;
    alice.send_text(&room, "budget figures").await;

    let ok = messages_path(&room, "reason=legal%20hold");
    // Not an admin (even the room's creator) → 403.
    let (status, body) = admin_api(&alice, Method::GET, &ok).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // No token → 401.
    let (status, _) = admin_api(&server.anon(), Method::GET, &ok).await;
    assert_eq!(status, 401);
    // No reason, or a blank one → 400 M_MISSING_PARAM.
    for query in ["", "reason=", "reason=%20%20"] {
        let (status, body) = admin_api(&admin, Method::GET, &messages_path(&room, query)).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["errcode"], "M_MISSING_PARAM");
    }
    // Oversized reason, bad limit, bad from → 400 M_INVALID_PARAM.
    let long = format!("reason={}", "x".repeat(2000));
    for query in [
        long.as_str(),
        "reason=r&limit=-1",
        "reason=r&limit=abc",
        "reason=r&from=zz",
    ] {
        let (status, body) = admin_api(&admin, Method::GET, &messages_path(&room, query)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["errcode"], "M_INVALID_PARAM");
    }
    // Unknown room → 404; malformed room ID → 400.
    let (status, _) = admin_api(
        &admin,
        Method::GET,
        &messages_path("!nope:hearth.test", "reason=r"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = admin_api(&admin, Method::GET, &messages_path("not-a-room", "reason=r")).await;
    assert_eq!(status, 400);

    // Strict and plain rooms → 403 with a reason code.
    let strict = alice.create_room(mode_room("strict_e2e")).await;
    let (status, body) = admin_api(&admin, Method::GET, &messages_path(&strict, "reason=r")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["org.hearth.error"], "strict_e2e");
    let plain = alice.create_room(json!({})).await;
    let (status, body) = admin_api(&admin, Method::GET, &messages_path(&plain, "reason=r")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["org.hearth.error"], "not_search_enabled");
    assert!(
        body["error"].as_str().unwrap().contains("no privacy mode"),
        "{body}"
    );

    // None of the refusals was recorded.
    let (status, log) = admin_api(&admin, Method::GET, "/audit").await;
    assert_eq!(status, 200);
    assert_eq!(log["chunk"], json!([]), "{log}");

    // The admin reads the search-enabled room; the read is recorded.
    let (status, page) = admin_api(&admin, Method::GET, &ok).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.to_string().contains("budget figures"), "{page}");
    let (_, log) = admin_api(&admin, Method::GET, "/audit").await;
    let entry = &log["chunk"][0];
    assert_eq!(entry["admin"], ADMIN);
    assert_eq!(entry["room_id"], room.as_str());
    assert_eq!(entry["reason"], "legal hold");
    assert_eq!(entry["audit_id"], page["audit_id"]);
    assert!(entry["ts"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn pages_and_notices_and_room_audit_for_members() {
    let server = start().await;
    let admin = server.register("boss").await;
    let alice = server.register("alice").await;
    let outsider = server.register("eve").await;
    let room = alice.create_room(mode_room("search_enabled")).await;
    for i in 0..5 {
        alice.send_text(&room, &format!("message {i}")).await;
    }
    // Paging backwards by two.
    let (_, first) = admin_api(&admin, Method::GET, &messages_path(&room, "reason=audit&limit=2")).await;
    assert_eq!(first["chunk"].as_array().unwrap().len(), 2);
    assert_eq!(first["chunk"][0]["content"]["body"], "message 4");
    let next = first["next_batch"].as_str().expect("next_batch");
    let (_, second) = admin_api(
        &admin,
        Method::GET,
        &messages_path(&room, &format!("reason=audit&limit=2&from={next}")),
    )
    .await;
    assert_eq!(second["chunk"][0]["content"]["body"], "message 2");
    let (_, log) = admin_api(&admin, Method::GET, "/audit").await;
    assert_eq!(log["chunk"][0]["from"], next, "the range is recorded: {log}");
    assert_eq!(log["chunk"][0]["limit"], 2);

    // Members list their room's entries; outsiders cannot; only admins list everything.
    let room_audit = format!("/rooms/{}/audit", encode(&room));
    let (status, mine) = admin_api(&alice, Method::GET, &room_audit).await;
    assert_eq!(status, 200);
    assert_eq!(mine["chunk"].as_array().unwrap().len(), 2);
    let (status, _) = admin_api(&outsider, Method::GET, &room_audit).await;
    assert_eq!(status, 403);
    let (status, _) = admin_api(&alice, Method::GET, "/audit").await;
    assert_eq!(status, 403);
    let (_, page) = admin_api(&admin, Method::GET, "/audit?limit=1").await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    let (_, rest) = admin_api(
        &admin,
        Method::GET,
        &format!("/audit?limit=1&from={}", page["next_batch"].as_str().unwrap()),
    )
    .await;
    assert_ne!(rest["chunk"][0]["audit_id"], page["chunk"][0]["audit_id"]);

    // A joined admin's read posts the org.hearth.admin_read notice into the room.
    admin.join(&room).await;
    let (_, read) = admin_api(&admin, Method::GET, &messages_path(&room, "reason=investigation")).await;
    let timeline = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=5", encode(&room)),
            None,
        )
        .await;
    let notice = timeline["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "org.hearth.admin_read")
        .unwrap_or_else(|| panic!("no notice in {timeline}"));
    assert_eq!(notice["content"]["reason"], "investigation");
    assert_eq!(notice["content"]["audit_id"], read["audit_id"]);
}

#[tokio::test]
async fn every_read_survives_a_crash_and_no_endpoint_deletes_entries() {
    let mut server = start().await;
    let admin = server.register("boss").await;
    let alice = server.register("alice").await;
    let room = alice.create_room(mode_room("search_enabled")).await;
    alice.send_text(&room, "evidence").await;

    let (status, page) = admin_api(&admin, Method::GET, &messages_path(&room, "reason=incident%2042")).await;
    assert_eq!(status, 200);
    server.crash_and_restart().await;
    let (_, log) = admin_api(&admin, Method::GET, "/audit").await;
    assert_eq!(log["chunk"][0]["audit_id"], page["audit_id"], "{log}");
    assert_eq!(log["chunk"][0]["reason"], "incident 42");

    // No method changes or deletes entries, on any audit or read path.
    let id = page["audit_id"].as_i64().unwrap();
    let paths = [
        "/audit".to_owned(),
        format!("/audit/{id}"),
        format!("/rooms/{}/audit", encode(&room)),
        format!("/rooms/{}/audit/{id}", encode(&room)),
        messages_path(&room, "reason=x"),
    ];
    for path in &paths {
        for method in [Method::DELETE, Method::PUT, Method::POST, Method::PATCH] {
            let (status, body) = admin_api(&admin, method.clone(), path).await;
            assert!(
                status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_FOUND,
                "{method} {path}: {status} {body}"
            );
            assert_eq!(body["errcode"], "M_UNRECOGNIZED");
        }
    }
    let (_, after) = admin_api(&admin, Method::GET, "/audit").await;
    assert_eq!(after["chunk"], log["chunk"]);
}

#[tokio::test]
async fn admins_granted_from_the_command_line() {
    let server = start().await;
    let alice = server.register("alice").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(mode_room("search_enabled")).await;
    let path = messages_path(&room, "reason=review");
    let (status, _) = admin_api(&carol, Method::GET, &path).await;
    assert_eq!(status, 403);

    let out = hearth_command()
        .args(["admin", "grant", "--config"])
        .arg(server.config_path())
        .arg(&carol.user_id)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, body) = admin_api(&carol, Method::GET, &path).await;
    assert_eq!(status, 200, "{body}");

    // Hostile: a remote or malformed user ID is refused.
    for bad in ["@mallory:elsewhere.example", "carol"] {
        let out = hearth_command()
            .args(["admin", "grant", "--config"])
            .arg(server.config_path())
            .arg(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad} was granted");
    }
}
