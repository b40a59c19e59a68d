//! Client-Server API §"Send-to-Device messaging" (`PUT /sendToDevice/{eventType}/{txnId}`),
//! §"End-to-End Encryption" key management (`/keys/upload`, `/keys/query`, `/keys/claim`,
//! `/keys/changes`, device lists in `/sync`) and §"Cross-signing".
//!
//! Keys are signed for real (ed25519 over canonical JSON, vodozemac), as a client signs them.

use conformance_tests::{Client, V3, conformance_test};
use serde_json::{Value, json};
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey, Ed25519Keypair};

/// Canonical JSON (sorted keys, no whitespace) of what a signature covers: the object without
/// `signatures` and `unsigned`. Test objects hold strings, arrays, objects and booleans only.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&map[*k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn sign(object: &mut Value, user_id: &str, key_id: &str, key: &Ed25519Keypair) {
    let mut unsigned = object.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    unsigned.as_object_mut().unwrap().remove("unsigned");
    let mut text = String::new();
    canonical(&unsigned, &mut text);
    let signature = key.sign(text.as_bytes()).to_base64();
    let sigs = object
        .as_object_mut()
        .unwrap()
        .entry("signatures")
        .or_insert_with(|| json!({}));
    let by_user = sigs
        .as_object_mut()
        .unwrap()
        .entry(user_id.to_owned())
        .or_insert_with(|| json!({}));
    by_user[key_id] = Value::String(signature);
}

fn curve25519() -> String {
    Curve25519PublicKey::from(&Curve25519SecretKey::new()).to_base64()
}

/// A client device's keys, held by the test.
struct Device {
    user_id: String,
    device_id: String,
    ed25519: Ed25519Keypair,
    curve25519: String,
}

impl Device {
    fn new(c: &Client) -> Self {
        Self {
            user_id: c.user_id.clone(),
            device_id: c.device_id.clone(),
            ed25519: Ed25519Keypair::new(),
            curve25519: curve25519(),
        }
    }

    fn key_id(&self) -> String {
        format!("ed25519:{}", self.device_id)
    }

    /// The self-signed `device_keys` object.
    fn device_keys(&self) -> Value {
        let mut keys = json!({
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {self.key_id(): self.ed25519.public_key().to_base64(), format!("curve25519:{}", self.device_id): self.curve25519},
        });
        sign(&mut keys, &self.user_id, &self.key_id(), &self.ed25519);
        keys
    }

    /// A signed curve25519 key (a one-time key, or a fallback key).
    fn signed_key(&self, fallback: bool) -> Value {
        let mut key = json!({"key": curve25519()});
        if fallback {
            key["fallback"] = json!(true);
        }
        sign(&mut key, &self.user_id, &self.key_id(), &self.ed25519);
        key
    }
}

fn cross_signing_key(
    user_id: &str,
    usage: &str,
    key: &Ed25519Keypair,
    signer: Option<&Ed25519Keypair>,
) -> Value {
    let public = key.public_key().to_base64();
    let mut object =
        json!({"user_id": user_id, "usage": [usage], "keys": {format!("ed25519:{public}"): public}});
    if let Some(signer) = signer {
        sign(
            &mut object,
            user_id,
            &format!("ed25519:{}", signer.public_key().to_base64()),
            signer,
        );
    }
    object
}

fn lists(s: &Value, field: &str, user: &str) -> bool {
    s["device_lists"][field]
        .as_array()
        .is_some_and(|l| l.iter().any(|u| u == user))
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
        let dev = Device::new(&alice);
        let body = json!({
            "device_keys": dev.device_keys(),
            "one_time_keys": {"signed_curve25519:AAAAAQ": dev.signed_key(false), "signed_curve25519:AAAAAg": dev.signed_key(false)}
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
        let dev = Device::new(&alice);
        let keys = dev.device_keys();
        alice.post(&format!("{V3}/keys/upload"), &json!({"device_keys": keys})).await.ok();
        let resp = bob.post(&format!("{V3}/keys/query"), &json!({"device_keys": {alice.user_id.clone(): []}})).await;
        let got = resp.ok()["device_keys"][&alice.user_id][&alice.device_id].clone();
        assert_eq!(got["keys"], keys["keys"], "{}", resp.text);
        assert_eq!(got["device_id"], json!(alice.device_id));
        assert_eq!(got["signatures"][&alice.user_id][dev.key_id()], keys["signatures"][&alice.user_id][dev.key_id()]);
    }
}

conformance_test! {
    /// §Key management: `POST /keys/claim` hands out one of the uploaded one-time keys, once.
    async fn claim_one_time_key(hs) {
        let alice = hs.user("keys3").await;
        let bob = hs.user("keys3b").await;
        let dev = Device::new(&alice);
        let otk = dev.signed_key(false);
        alice.post(&format!("{V3}/keys/upload"), &json!({"device_keys": dev.device_keys(),
            "one_time_keys": {"signed_curve25519:CLAIM1": otk.clone()}})).await.ok();
        let claim = json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
        let resp = bob.post(&format!("{V3}/keys/claim"), &claim).await;
        let keys = resp.ok()["one_time_keys"][&alice.user_id][&alice.device_id].clone();
        assert_eq!(keys["signed_curve25519:CLAIM1"]["key"], otk["key"], "{}", resp.text);
        let again = bob.post(&format!("{V3}/keys/claim"), &claim).await;
        assert!(again.ok()["one_time_keys"][&alice.user_id][&alice.device_id].get("signed_curve25519:CLAIM1").is_none(),
            "a one-time key was handed out twice: {}", again.text);
    }
}

conformance_test! {
    /// §Key management: a sync reports the device's `device_one_time_keys_count`.
    async fn sync_reports_one_time_key_count(hs) {
        let alice = hs.user("keys4").await;
        let dev = Device::new(&alice);
        alice.post(&format!("{V3}/keys/upload"), &json!({"device_keys": dev.device_keys(), "one_time_keys": {
            "signed_curve25519:S1": dev.signed_key(false),
            "signed_curve25519:S2": dev.signed_key(false),
            "signed_curve25519:S3": dev.signed_key(false)}})).await.ok();
        let s = alice.sync_until(None, None, |s| s["device_one_time_keys_count"]["signed_curve25519"] == json!(3)).await;
        assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], json!(3));
    }
}

conformance_test! {
    /// §Key management (fallback keys): when a device's one-time keys are used up, `/keys/claim`
    /// hands out its fallback key, and the device's sync no longer lists that algorithm in
    /// `device_unused_fallback_key_types`.
    async fn claim_exhaustion_returns_fallback_key(hs) {
        let alice = hs.user("fb").await;
        let bob = hs.user("fbb").await;
        let dev = Device::new(&alice);
        let fallback = dev.signed_key(true);
        alice.post(&format!("{V3}/keys/upload"), &json!({
            "device_keys": dev.device_keys(),
            "one_time_keys": {"signed_curve25519:ONE": dev.signed_key(false)},
            "fallback_keys": {"signed_curve25519:FB": fallback.clone()}})).await.ok();
        let s = alice.sync(&conformance_tests::SyncOpts::default()).await;
        assert_eq!(s["device_unused_fallback_key_types"], json!(["signed_curve25519"]), "{s}");
        let claim = json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
        let first = bob.post(&format!("{V3}/keys/claim"), &claim).await;
        assert!(first.ok()["one_time_keys"][&alice.user_id][&alice.device_id].get("signed_curve25519:ONE").is_some(), "{}", first.text);
        let second = bob.post(&format!("{V3}/keys/claim"), &claim).await;
        let got = &second.ok()["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:FB"];
        assert_eq!(got["key"], fallback["key"], "{}", second.text);
        let s = alice.sync_until(None, None, |s| s["device_unused_fallback_key_types"] == json!([])).await;
        assert_eq!(s["device_unused_fallback_key_types"], json!([]));
    }
}

conformance_test! {
    /// §Tracking the device list for a user: `GET /keys/changes` lists a user sharing a room whose
    /// device keys changed between the two tokens, and the next sync names them in
    /// `device_lists.changed`.
    async fn keys_changes_and_sync_report_new_device_keys(hs) {
        let alice = hs.user("kc").await;
        let bob = hs.user("kcb").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        let s0 = bob.sync(&conformance_tests::SyncOpts::default()).await;
        let from = s0["next_batch"].as_str().unwrap().to_owned();
        alice.post(&format!("{V3}/keys/upload"), &json!({"device_keys": Device::new(&alice).device_keys()})).await.ok();
        let s1 = bob.sync_until(Some(&from), None, |s| lists(s, "changed", &alice.user_id)).await;
        let to = s1["next_batch"].as_str().unwrap();
        let changes = bob.get(&format!("{V3}/keys/changes?from={}&to={}", conformance_tests::enc(&from), conformance_tests::enc(to))).await;
        assert!(changes.ok()["changed"].as_array().unwrap().iter().any(|u| u == &json!(alice.user_id)), "{}", changes.text);
    }
}

conformance_test! {
    /// §Tracking the device list for a user: a user who starts sharing a room with the syncing
    /// user appears in `device_lists.changed`; one who no longer shares any room in `left`.
    async fn device_lists_on_join_and_leave(hs) {
        let alice = hs.user("dl").await;
        let bob = hs.user("dlb").await;
        alice.post(&format!("{V3}/keys/upload"), &json!({"device_keys": Device::new(&alice).device_keys()})).await.ok();
        let room = bob.create_room(json!({"preset": "public_chat"})).await;
        let s0 = bob.sync(&conformance_tests::SyncOpts::default()).await;
        alice.join(&room).await.ok();
        let s1 = bob.sync_until(s0["next_batch"].as_str(), None, |s| lists(s, "changed", &alice.user_id)).await;
        alice.leave(&room).await.ok();
        bob.sync_until(s1["next_batch"].as_str(), None, |s| lists(s, "left", &alice.user_id)).await;
    }
}

conformance_test! {
    /// §Cross-signing: the first upload of cross-signing keys needs no user-interactive auth;
    /// `/keys/query` returns the master and self-signing keys to everyone and the user-signing
    /// key to its owner only; signatures uploaded by the self-signing key on a device are
    /// merged into that device's keys.
    async fn cross_signing_upload_and_query(hs) {
        let alice = hs.user("xs").await;
        let bob = hs.user("xsb").await;
        let dev = Device::new(&alice);
        alice.post(&format!("{V3}/keys/upload"), &json!({"device_keys": dev.device_keys()})).await.ok();
        let (master, ssk, usk) = (Ed25519Keypair::new(), Ed25519Keypair::new(), Ed25519Keypair::new());
        let a = alice.user_id.clone();
        let keys = json!({
            "master_key": cross_signing_key(&a, "master", &master, None),
            "self_signing_key": cross_signing_key(&a, "self_signing", &ssk, Some(&master)),
            "user_signing_key": cross_signing_key(&a, "user_signing", &usk, Some(&master)),
        });
        let resp = alice.post(&format!("{V3}/keys/device_signing/upload"), &keys).await;
        resp.ok();
        let query = json!({"device_keys": {a.clone(): []}});
        let by_bob = bob.post(&format!("{V3}/keys/query"), &query).await;
        let by_bob = by_bob.ok().clone();
        assert_eq!(by_bob["master_keys"][&a]["keys"], keys["master_key"]["keys"], "{by_bob}");
        assert_eq!(by_bob["self_signing_keys"][&a]["keys"], keys["self_signing_key"]["keys"]);
        assert!(by_bob.get("user_signing_keys").and_then(|k| k.get(&a)).is_none(), "{by_bob}");
        let by_alice = alice.post(&format!("{V3}/keys/query"), &query).await;
        assert_eq!(by_alice.ok()["user_signing_keys"][&a]["keys"], keys["user_signing_key"]["keys"]);

        let mut signed = dev.device_keys();
        let ssk_id = format!("ed25519:{}", ssk.public_key().to_base64());
        sign(&mut signed, &a, &ssk_id, &ssk);
        let resp = alice.post(&format!("{V3}/keys/signatures/upload"), &json!({a.clone(): {alice.device_id.clone(): signed}})).await;
        assert_eq!(resp.ok()["failures"], json!({}), "{}", resp.text);
        let got = bob.post(&format!("{V3}/keys/query"), &query).await;
        assert!(got.ok()["device_keys"][&a][&alice.device_id]["signatures"][&a][&ssk_id].is_string(), "{}", got.text);
    }
}
