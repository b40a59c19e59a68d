//! Tags and push rules are read-modify-writes of one account data entry: concurrent changes to
//! different tags or rules must all survive (each runs in one transaction under the account data
//! write lock), and a refused change must write nothing.

mod common;

use std::collections::BTreeSet;

use common::{Server, encode};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tag_changes_all_survive() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({ "name": "tagged" })).await;
    let tags_path = format!("/user/{}/rooms/{}/tags", encode(&alice.user_id), encode(&room));
    for i in 0..10 {
        alice
            .ok(
                Method::PUT,
                &format!("{tags_path}/old.{i}"),
                Some(&json!({ "order": 0.5 })),
            )
            .await;
    }

    // 20 new tags put and the 10 old ones deleted, all at once, plus refused changes.
    let puts = (0..20).map(|i| {
        let alice = alice.clone();
        let path = format!("{tags_path}/u.tag{i}");
        async move {
            alice
                .request(Method::PUT, &path, Some(&json!({ "order": i as f64 / 20.0 })))
                .await
        }
    });
    let deletes = (0..10).map(|i| {
        let alice = alice.clone();
        let path = format!("{tags_path}/old.{i}");
        async move { alice.request(Method::DELETE, &path, None).await }
    });
    let refused = (0..5).map(|i| {
        let alice = alice.clone();
        let path = if i % 2 == 0 {
            format!("{tags_path}/{}", "x".repeat(300))
        } else {
            format!("{tags_path}/bad.order")
        };
        async move {
            alice
                .request(Method::PUT, &path, Some(&json!({ "order": "first" })))
                .await
        }
    });
    let (puts, deletes, refused) = tokio::join!(join_all(puts), join_all(deletes), join_all(refused));
    for (status, body) in puts.iter().chain(&deletes) {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    for (status, body) in &refused {
        assert_eq!(*status, StatusCode::BAD_REQUEST, "{body}");
    }

    let tags = alice.ok(Method::GET, &tags_path, None).await;
    let names: BTreeSet<String> = tags["tags"]
        .as_object()
        .expect("tags object")
        .keys()
        .cloned()
        .collect();
    let expected: BTreeSet<String> = (0..20).map(|i| format!("u.tag{i}")).collect();
    assert_eq!(names, expected);
    assert_eq!(tags["tags"]["u.tag10"]["order"], json!(0.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_push_rule_changes_all_survive() {
    let server = Server::start().await;
    let alice = server.register("alice").await;

    let puts = (0..20).map(|i| {
        let alice = alice.clone();
        async move {
            alice
                .request(
                    Method::PUT,
                    &format!("/pushrules/global/content/word{i}"),
                    Some(&json!({ "pattern": format!("word{i}"), "actions": ["notify"] })),
                )
                .await
        }
    });
    // Changes of server-default rules at the same time, and ones that must be refused whole.
    let toggles = [".m.rule.master", ".m.rule.suppress_notices"].map(|rule| {
        let alice = alice.clone();
        async move {
            alice
                .request(
                    Method::PUT,
                    &format!("/pushrules/global/override/{rule}/enabled"),
                    Some(&json!({ "enabled": rule == ".m.rule.master" })),
                )
                .await
        }
    });
    let refused = (0..5).map(|i| {
        let alice = alice.clone();
        async move {
            alice
                .request(
                    Method::PUT,
                    &format!("/pushrules/global/content/refused{i}?before=no.such.rule"),
                    Some(&json!({ "pattern": "x", "actions": ["notify"] })),
                )
                .await
        }
    });
    let (puts, toggles, refused) = tokio::join!(join_all(puts), join_all(toggles), join_all(refused));
    for (status, body) in puts.iter().chain(&toggles) {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    for (status, body) in &refused {
        assert_eq!(*status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errcode"], "M_UNKNOWN", "{body}");
    }

    let rules = alice.ok(Method::GET, "/pushrules/", None).await;
    let content: BTreeSet<String> = rules["global"]["content"]
        .as_array()
        .expect("content rules")
        .iter()
        .map(|r| r["rule_id"].as_str().expect("rule_id").to_owned())
        .collect();
    let expected: BTreeSet<String> = (0..20).map(|i| format!("word{i}")).collect();
    assert_eq!(content, expected);
    let overrides = rules["global"]["override"].as_array().expect("override rules");
    let enabled = |id: &str| {
        overrides
            .iter()
            .find(|r| r["rule_id"] == id)
            .map(|r| r["enabled"].clone())
    };
    assert_eq!(enabled(".m.rule.master"), Some(json!(true)));
    assert_eq!(enabled(".m.rule.suppress_notices"), Some(json!(false)));

    // What /sync delivers (the stored account data) agrees.
    let sync = alice.ok(Method::GET, "/sync", None).await;
    let stored = sync["account_data"]["events"]
        .as_array()
        .expect("account data")
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules")
        .clone();
    let stored: BTreeSet<String> = stored["content"]["global"]["content"]
        .as_array()
        .expect("stored content rules")
        .iter()
        .map(|r| r["rule_id"].as_str().expect("rule_id").to_owned())
        .collect();
    assert_eq!(stored, expected);
}
