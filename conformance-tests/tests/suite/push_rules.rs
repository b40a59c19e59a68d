//! Client-Server API §"Push Notifications": the predefined push rules, `GET/PUT/DELETE
//! /pushrules/global/{kind}/{ruleId}` with `before`/`after`, `…/enabled`, `…/actions`, the
//! `m.push_rules` account data in `/sync`, `GET /pushers` + `POST /pushers/set`, and
//! `GET /notifications`.

use std::time::{Duration, Instant};

use conformance_tests::{Client, V3, conformance_test, enc};
use serde_json::{Value, json};

fn ids(rules: &Value) -> Vec<String> {
    rules
        .as_array()
        .unwrap_or_else(|| panic!("not a rule array: {rules}"))
        .iter()
        .map(|r| r["rule_id"].as_str().expect("rule_id").to_owned())
        .collect()
}

/// Whether `want` appears in `all` in the same relative order (other rules may sit between).
fn in_order(all: &[String], want: &[&str]) -> bool {
    let mut rest = all.iter();
    want.iter().all(|w| rest.any(|a| a == w))
}

fn rule_path(kind: &str, id: &str) -> String {
    format!("{V3}/pushrules/global/{kind}/{}", enc(id))
}

async fn put_rule(
    user: &Client,
    kind: &str,
    id: &str,
    query: &str,
    body: Value,
) -> conformance_tests::client::Response {
    user.put(&format!("{}{query}", rule_path(kind, id)), &body).await
}

conformance_test! {
    /// §Predefined Rules: every user starts with the spec's server-default rules, in the spec's
    /// order, `.m.rule.master` first and disabled, `.m.rule.invite_for_me` naming the user.
    async fn predefined_rules(hs) {
        let alice = hs.user("pr1").await;
        let all = alice.get(&format!("{V3}/pushrules/")).await.ok().clone();
        let global = &all["global"];
        let over = ids(&global["override"]);
        assert_eq!(over.first().map(String::as_str), Some(".m.rule.master"), "{over:?}");
        assert!(in_order(&over, &[
            ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me", ".m.rule.member_event",
            ".m.rule.is_user_mention", ".m.rule.is_room_mention", ".m.rule.tombstone", ".m.rule.reaction",
            ".m.rule.room.server_acl", ".m.rule.suppress_edits",
        ]), "{over:?}");
        let under = ids(&global["underride"]);
        assert!(in_order(&under, &[
            ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
            ".m.rule.message", ".m.rule.encrypted",
        ]), "{under:?}");
        let master = alice.get(&rule_path("override", ".m.rule.master")).await.ok().clone();
        assert_eq!(master["enabled"], json!(false));
        assert_eq!(master["default"], json!(true));
        assert_eq!(master["actions"], json!([]));
        let invite = alice.get(&rule_path("override", ".m.rule.invite_for_me")).await.ok().clone();
        let conditions = invite["conditions"].as_array().unwrap();
        assert!(conditions.iter().any(|c| c["key"] == "state_key" && c["pattern"] == json!(alice.user_id)), "{invite}");
        let mention = alice.get(&rule_path("override", ".m.rule.is_user_mention")).await.ok().clone();
        assert_eq!(mention["conditions"][0]["kind"], json!("event_property_contains"));
        assert_eq!(mention["conditions"][0]["value"], json!(alice.user_id));
        assert!(mention["actions"].as_array().unwrap().contains(&json!({"set_tweak": "highlight"})));
        // The scope form returns the same rule set.
        let scope = alice.get(&format!("{V3}/pushrules/global/")).await.ok().clone();
        assert_eq!(ids(&scope["override"]), over);
    }
}

conformance_test! {
    /// §Push Rules: API: create a content rule, read it back, toggle `enabled`, replace its
    /// `actions`, delete it.
    async fn content_rule_lifecycle(hs) {
        let alice = hs.user("pr2").await;
        put_rule(&alice, "content", "cake", "", json!({"pattern": "cake*lie", "actions": ["notify"]})).await.ok();
        let rule = alice.get(&rule_path("content", "cake")).await.ok().clone();
        assert_eq!(rule["rule_id"], json!("cake"));
        assert_eq!(rule["pattern"], json!("cake*lie"));
        assert_eq!(rule["enabled"], json!(true), "created rules are enabled");
        assert_eq!(rule["default"], json!(false));
        assert_eq!(rule["actions"], json!(["notify"]));

        let enabled = format!("{}/enabled", rule_path("content", "cake"));
        alice.put(&enabled, &json!({"enabled": false})).await.ok();
        assert_eq!(alice.get(&enabled).await.ok()["enabled"], json!(false));
        alice.put(&enabled, &json!({"enabled": true})).await.ok();
        assert_eq!(alice.get(&enabled).await.ok()["enabled"], json!(true));

        let actions = format!("{}/actions", rule_path("content", "cake"));
        let new_actions = json!(["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}]);
        alice.put(&actions, &json!({"actions": new_actions})).await.ok();
        assert_eq!(alice.get(&actions).await.ok()["actions"], new_actions);

        let all = alice.get(&format!("{V3}/pushrules/")).await.ok().clone();
        assert!(ids(&all["global"]["content"]).contains(&"cake".to_owned()));

        alice.delete(&rule_path("content", "cake")).await.ok();
        alice.get(&rule_path("content", "cake")).await.expect_err(404, "M_NOT_FOUND");
        let all = alice.get(&format!("{V3}/pushrules/")).await.ok().clone();
        assert!(!ids(&all["global"]["content"]).contains(&"cake".to_owned()));
    }
}

conformance_test! {
    /// §Push Rules: API: a new rule without `before`/`after` becomes the most important user
    /// rule of its kind; `after` and `before` place it next to another user rule.
    async fn rule_placement(hs) {
        let alice = hs.user("pr3").await;
        let body = || json!({"conditions": [{"kind": "event_match", "key": "type", "pattern": "org.example.x"}], "actions": []});
        put_rule(&alice, "override", "a", "", body()).await.ok();
        put_rule(&alice, "override", "b", "", body()).await.ok();
        put_rule(&alice, "override", "c", "?after=a", body()).await.ok();
        put_rule(&alice, "override", "d", "?before=b", body()).await.ok();
        let all = alice.get(&format!("{V3}/pushrules/")).await.ok().clone();
        let mine: Vec<String> = ids(&all["global"]["override"]).into_iter().filter(|id| !id.starts_with('.')).collect();
        assert_eq!(mine, ["d", "b", "a", "c"]);
        // The master rule stays first.
        assert_eq!(ids(&all["global"]["override"])[0], ".m.rule.master");
    }
}

conformance_test! {
    /// §Push Rules: API: the rule-not-found and invalid-rule errors.
    async fn rule_errors(hs) {
        let alice = hs.user("pr4").await;
        alice.get(&rule_path("content", "nope")).await.expect_err(404, "M_NOT_FOUND");
        alice.get(&format!("{}/enabled", rule_path("content", "nope"))).await.expect_err(404, "M_NOT_FOUND");
        alice.put(&format!("{}/enabled", rule_path("content", "nope")), &json!({"enabled": true})).await.expect_err(404, "M_NOT_FOUND");
        alice.put(&format!("{}/actions", rule_path("content", "nope")), &json!({"actions": []})).await.expect_err(404, "M_NOT_FOUND");
        alice.delete(&rule_path("content", "nope")).await.expect_err(404, "M_NOT_FOUND");
        // Rule IDs starting with a dot are reserved for server-default rules.
        let resp = put_rule(&alice, "override", ".mine", "", json!({"conditions": [], "actions": []})).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
        // before/after naming an unknown rule.
        let resp = put_rule(&alice, "content", "x", "?before=unknown_rule", json!({"pattern": "x", "actions": []})).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
        alice.get(&rule_path("content", "x")).await.expect_err(404, "M_NOT_FOUND");
        // A content rule needs a pattern.
        let resp = put_rule(&alice, "content", "y", "", json!({"actions": ["notify"]})).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
        // Server-default rules cannot be deleted.
        let resp = alice.delete(&rule_path("override", ".m.rule.suppress_notices")).await;
        assert!(resp.status == 400 || resp.status == 404, "{} {}", resp.status, resp.text);
        alice.get(&rule_path("override", ".m.rule.suppress_notices")).await.ok();
    }
}

conformance_test! {
    /// §Push Rules: Events: rule changes reach the client as `m.push_rules` global account data.
    async fn rules_in_sync_account_data(hs) {
        let alice = hs.user("pr5").await;
        let first = alice.sync(&Default::default()).await;
        let since = first["next_batch"].as_str().unwrap().to_owned();
        put_rule(&alice, "room", "!someroom:example.org", "", json!({"actions": []})).await.ok();
        alice.sync_until(Some(&since), None, |s| {
            s["account_data"]["events"].as_array().is_some_and(|events| events.iter().any(|e| {
                e["type"] == "m.push_rules"
                    && e["content"]["global"]["room"].as_array().is_some_and(|rules| {
                        rules.iter().any(|r| r["rule_id"] == "!someroom:example.org" && r["actions"] == json!([]))
                    })
            }))
        }).await;
    }
}

fn pusher(app_id: &str, pushkey: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": app_id,
        "pushkey": pushkey,
        "app_display_name": "Conformance",
        "device_display_name": "Test device",
        "lang": "en",
        "data": {"url": "http://127.0.0.1:9/_matrix/push/v1/notify", "format": "event_id_only"},
    })
}

conformance_test! {
    /// §Push Notifications: `POST /pushers/set` adds, replaces (same app ID and pushkey) and,
    /// with `kind: null`, deletes pushers; `GET /pushers` lists them.
    async fn pusher_lifecycle(hs) {
        let alice = hs.user("pu1").await;
        assert_eq!(alice.get(&format!("{V3}/pushers")).await.ok()["pushers"], json!([]));
        alice.post(&format!("{V3}/pushers/set"), &pusher("org.example.conformance", "key-1")).await.ok();
        let list = alice.get(&format!("{V3}/pushers")).await.ok().clone();
        let pushers = list["pushers"].as_array().unwrap();
        assert_eq!(pushers.len(), 1, "{list}");
        assert_eq!(pushers[0]["pushkey"], json!("key-1"));
        assert_eq!(pushers[0]["app_id"], json!("org.example.conformance"));
        assert_eq!(pushers[0]["kind"], json!("http"));
        assert_eq!(pushers[0]["data"]["url"], json!("http://127.0.0.1:9/_matrix/push/v1/notify"));
        assert_eq!(pushers[0]["data"]["format"], json!("event_id_only"));

        let mut changed = pusher("org.example.conformance", "key-1");
        changed["device_display_name"] = json!("Renamed");
        alice.post(&format!("{V3}/pushers/set"), &changed).await.ok();
        let list = alice.get(&format!("{V3}/pushers")).await.ok().clone();
        assert_eq!(list["pushers"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list["pushers"][0]["device_display_name"], json!("Renamed"));

        alice.post(&format!("{V3}/pushers/set"), &json!({"kind": null, "app_id": "org.example.conformance", "pushkey": "key-1"})).await.ok();
        assert_eq!(alice.get(&format!("{V3}/pushers")).await.ok()["pushers"], json!([]));
    }
}

conformance_test! {
    /// §Push Notifications: `POST /pushers/set` refuses a pusher missing required fields.
    async fn pusher_missing_fields(hs) {
        let alice = hs.user("pu2").await;
        let mut body = pusher("org.example.conformance", "key-2");
        body.as_object_mut().unwrap().remove("lang");
        let resp = alice.post(&format!("{V3}/pushers/set"), &body).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
        let mut no_url = pusher("org.example.conformance", "key-3");
        no_url["data"] = json!({});
        let resp = alice.post(&format!("{V3}/pushers/set"), &no_url).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
        assert_eq!(alice.get(&format!("{V3}/pushers")).await.ok()["pushers"], json!([]));
    }
}

/// `GET /notifications` entries, polled until `pred` holds for the list (or 10 s pass).
async fn notifications_until(user: &Client, query: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = user.get(&format!("{V3}/notifications{query}")).await.ok().clone();
        let list = resp["notifications"].as_array().cloned().unwrap_or_default();
        if pred(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "notifications never matched: {resp}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

conformance_test! {
    /// §Listing Notifications: events that notify under the predefined rules are listed with the
    /// actions of the matching rule; `only=highlight` keeps the highlights; notices, the user's
    /// own events and an `@room` from a member without the power do not highlight.
    async fn notifications_list(hs) {
        let alice = hs.user("pn1").await;
        let bob = hs.user("pn2").await;
        let carol = hs.user("pn3").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        carol.join(&room).await.ok();
        let plain = alice.send_text(&room, "hello").await;
        let notice = alice.send(&room, "m.room.message", json!({"msgtype": "m.notice", "body": "bot"})).await;
        let mention = carol.send(&room, "m.room.message", json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}})).await;
        let room_mention = alice.send(&room, "m.room.message", json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}})).await;
        let weak_room_mention = carol.send(&room, "m.room.message", json!({"msgtype": "m.text", "body": "@room?", "m.mentions": {"room": true}})).await;
        let own = bob.send_text(&room, "mine").await;

        let find = |list: &[Value], id: &str| list.iter().find(|n| n["event"]["event_id"] == id).cloned();
        let list = notifications_until(&bob, "?limit=50", |l| {
            [&plain, &mention, &room_mention, &weak_room_mention].iter().all(|id| find(l, id).is_some())
        }).await;
        assert!(find(&list, &notice).is_none(), "notices are suppressed");
        assert!(find(&list, &own).is_none(), "own events never notify");
        let highlighted = |id: &str| {
            let entry = find(&list, id).unwrap();
            assert_eq!(entry["room_id"], json!(room));
            assert!(entry["ts"].as_i64().is_some());
            let actions = entry["actions"].as_array().unwrap();
            assert!(actions.contains(&json!("notify")), "{entry}");
            actions.contains(&json!({"set_tweak": "highlight"})) || actions.contains(&json!({"set_tweak": "highlight", "value": true}))
        };
        assert!(!highlighted(&plain));
        assert!(highlighted(&mention));
        assert!(highlighted(&room_mention));
        assert!(!highlighted(&weak_room_mention));
        // Newest first.
        let position = |id: &str| list.iter().position(|n| n["event"]["event_id"] == id).unwrap();
        assert!(position(&weak_room_mention) < position(&mention));
        assert!(position(&mention) < position(&plain));

        let highlights = notifications_until(&bob, "?only=highlight", |l| l.len() >= 2).await;
        let got: Vec<&str> = highlights.iter().filter_map(|n| n["event"]["event_id"].as_str()).collect();
        assert_eq!(got, [room_mention.as_str(), mention.as_str()]);

        // Pagination: limit=1 then from=next_token.
        let first = bob.get(&format!("{V3}/notifications?limit=1")).await.ok().clone();
        assert_eq!(first["notifications"].as_array().unwrap().len(), 1);
        let token = first["next_token"].as_str().expect("next_token with more to come");
        let second = bob.get(&format!("{V3}/notifications?limit=1&from={}", enc(token))).await.ok().clone();
        assert_eq!(second["notifications"].as_array().unwrap().len(), 1);
        assert_ne!(first["notifications"][0]["event"]["event_id"], second["notifications"][0]["event"]["event_id"]);
    }
}
