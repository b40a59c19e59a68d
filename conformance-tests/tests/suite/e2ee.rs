//! Client-Server API §"Send-to-Device messaging" (`PUT /sendToDevice/{eventType}/{txnId}`) and
//! §"End-to-End Encryption" key management (`/keys/upload`, `/keys/query`, `/keys/claim`).

use conformance_tests::{Client, V3, conformance_test};
use serde_json::{Value, json};

fn device_keys(c: &Client) -> Value {
    let key = format!("ed25519:{}", c.device_id);
    let curve = format!("curve25519:{}", c.device_id);
    json!({
        "user_id": c.user_id,
        "device_id": c.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {key.clone(): "dGVzdGVkMjU1MTlrZXlmb3Jjb25mb3JtYW5jZXh4eA", curve: "dGVzdGN1cnZlMjU1MTlrZXlmb3Jjb25mb3JtYW5jZXg"},
        "signatures": {c.user_id.clone(): {key: "c2lnbmF0dXJlbm90dmVyaWZpZWRieXRoZXNlcnZlcg"}}
    })
}

conformance_test! {
    /// §Send-to-Device messaging: a message sent to a specific device is delivered in that
    /// device's `/sync` under `to_device.events`, with `sender` and `type`.
    async fn to_device_message_is_delivered(hs) {
        let alice = hs.user("td").await;
        let bob = hs.user("tdb").await;
        let s0 = bob.sync(&conformance_tests::SyncOpts::default()).await;
        let body = json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"secret": "hello device"}}}});
        alice.put(&format!("{V3}/sendToDevice/org.hearth.conformance.todevice/{}", alice.txn_id()), &body).await.ok();
        let find = |s: &Value| s["to_device"]["events"].as_array().and_then(|evs| {
            evs.iter().find(|e| e["type"] == "org.hearth.conformance.todevice").cloned()
        });
        let s1 = bob.sync_until(s0["next_batch"].as_str(), None, |s| find(s).is_some()).await;
        let ev = find(&s1).unwrap();
        assert_eq!(ev["sender"], json!(alice.user_id));
        assert_eq!(ev["content"]["secret"], json!("hello device"));
    }
}

conformance_test! {
    /// §Send-to-Device messaging: to-device messages are delivered once: after the sync that
    /// carried them is acknowledged (next `since`), they are not sent again.
    async fn to_device_message_delivered_once(hs) {
        let alice = hs.user("td2").await;
        let bob = hs.user("td2b").await;
        let body = json!({"messages": {bob.user_id.clone(): {"*": {"n": 1}}}});
        alice.put(&format!("{V3}/sendToDevice/org.hearth.conformance.once/{}", alice.txn_id()), &body).await.ok();
        let has = |s: &Value| s["to_device"]["events"].as_array().is_some_and(|evs| evs.iter().any(|e| e["type"] == "org.hearth.conformance.once"));
        let s1 = bob.sync_until(None, None, has).await;
        let s2 = bob.sync(&conformance_tests::SyncOpts::since(s1["next_batch"].as_str().unwrap()).timeout(0)).await;
        assert!(!has(&s2), "to-device message delivered twice: {s2}");
    }
}

conformance_test! {
    /// §Key management: `POST /keys/upload` stores device keys and one-time keys and returns the
    /// per-algorithm `one_time_key_counts`.
    async fn upload_keys_counts_one_time_keys(hs) {
        let alice = hs.user("keys").await;
        let body = json!({
            "device_keys": device_keys(&alice),
            "one_time_keys": {
                "signed_curve25519:AAAAAQ": {"key": "b3RrMQ", "signatures": {alice.user_id.clone(): {format!("ed25519:{}", alice.device_id): "c2ln"}}},
                "signed_curve25519:AAAAAg": {"key": "b3RrMg", "signatures": {alice.user_id.clone(): {format!("ed25519:{}", alice.device_id): "c2ln"}}}
            }
        });
        let resp = alice.post(&format!("{V3}/keys/upload"), &body).await;
        assert_eq!(resp.ok()["one_time_key_counts"]["signed_curve25519"], json!(2));
    }
}

conformance_test! {
    /// §Key management: `POST /keys/query` returns the device keys another user uploaded.
    async fn query_returns_uploaded_device_keys(hs) {
        let alice = hs.user("keys2").await;
        let bob = hs.user("keys2b").await;
        alice.post(&format!("{V3}/keys/upload"), &json!({"device_keys": device_keys(&alice)})).await.ok();
        let resp = bob.post(&format!("{V3}/keys/query"), &json!({"device_keys": {alice.user_id.clone(): []}})).await;
        let dev = resp.ok()["device_keys"][&alice.user_id][&alice.device_id].clone();
        assert_eq!(dev["keys"], device_keys(&alice)["keys"], "{}", resp.text);
        assert_eq!(dev["device_id"], json!(alice.device_id));
    }
}

conformance_test! {
    /// §Key management: `POST /keys/claim` hands out one of the uploaded one-time keys, once.
    async fn claim_one_time_key(hs) {
        let alice = hs.user("keys3").await;
        let bob = hs.user("keys3b").await;
        let otk = json!({"key": "b3RrY2xhaW0", "signatures": {alice.user_id.clone(): {format!("ed25519:{}", alice.device_id): "c2ln"}}});
        alice.post(&format!("{V3}/keys/upload"), &json!({"device_keys": device_keys(&alice),
            "one_time_keys": {"signed_curve25519:CLAIM1": otk}})).await.ok();
        let claim = json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
        let resp = bob.post(&format!("{V3}/keys/claim"), &claim).await;
        let keys = resp.ok()["one_time_keys"][&alice.user_id][&alice.device_id].clone();
        assert_eq!(keys["signed_curve25519:CLAIM1"]["key"], json!("b3RrY2xhaW0"), "{}", resp.text);
        let again = bob.post(&format!("{V3}/keys/claim"), &claim).await;
        assert!(again.ok()["one_time_keys"][&alice.user_id][&alice.device_id].get("signed_curve25519:CLAIM1").is_none(),
            "a one-time key was handed out twice: {}", again.text);
    }
}

conformance_test! {
    /// §Key management: a sync reports the device's `device_one_time_keys_count`.
    async fn sync_reports_one_time_key_count(hs) {
        let alice = hs.user("keys4").await;
        let sig = json!({alice.user_id.clone(): {format!("ed25519:{}", alice.device_id): "c2ln"}});
        alice.post(&format!("{V3}/keys/upload"), &json!({"one_time_keys": {
            "signed_curve25519:S1": {"key": "azE", "signatures": sig.clone()},
            "signed_curve25519:S2": {"key": "azI", "signatures": sig.clone()},
            "signed_curve25519:S3": {"key": "azM", "signatures": sig}}})).await.ok();
        let s = alice.sync_until(None, None, |s| s["device_one_time_keys_count"]["signed_curve25519"] == json!(3)).await;
        assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], json!(3));
    }
}
