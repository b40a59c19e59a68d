//! End-to-end encryption keys over HTTP: `/keys/upload`, `/keys/query`, `/keys/claim`,
//! `/keys/changes`, cross-signing, device lists in `/sync`, and what deleting a device removes.

mod common;
mod e2ee_support;

use std::collections::HashSet;

use common::{Server, count, encode};
use e2ee_support::{Device, cross_signing_key, login, password_auth, sign};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use vodozemac::Ed25519Keypair;

fn contains(list: &Value, user: &str) -> bool {
    list.as_array().is_some_and(|l| l.iter().any(|u| u == user))
}

#[tokio::test]
async fn upload_query_and_counts() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dev = Device::new(&alice);
    let keys = dev.device_keys();
    let mut fallback = serde_json::Map::new();
    fallback.insert("signed_curve25519:FB1".into(), dev.signed_key(true));
    let resp = alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({
                "device_keys": keys,
                "one_time_keys": dev.one_time_keys("A", 5),
                "fallback_keys": fallback,
            })),
        )
        .await;
    assert_eq!(resp["one_time_key_counts"]["signed_curve25519"], 5, "{resp}");

    // Others see the keys, with the device's display name in `unsigned`.
    let q = bob
        .ok(
            Method::POST,
            "/keys/query",
            Some(&json!({"device_keys": {
                alice.user_id.clone(): [],
                "@nobody:hearth.test": [],
                "@remote:elsewhere.example": [],
            }})),
        )
        .await;
    let got = &q["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(got["keys"], keys["keys"], "{q}");
    assert_eq!(got["signatures"], keys["signatures"]);
    assert!(got["unsigned"].is_object());
    assert_eq!(q["device_keys"]["@nobody:hearth.test"], json!({}));
    assert!(
        q["failures"]["elsewhere.example"].is_object(),
        "remote users are failures: {q}"
    );
    // Asking for one device only.
    let q = bob
        .ok(
            Method::POST,
            "/keys/query",
            Some(&json!({"device_keys": { alice.user_id.clone(): ["OTHER"] }})),
        )
        .await;
    assert_eq!(q["device_keys"][&alice.user_id], json!({}));

    // The device's own sync counts its keys; uploading the same keys again changes nothing.
    let s = alice.sync(None, 0, 1).await;
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 5, "{s}");
    assert_eq!(
        s["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    let again = alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": keys })),
        )
        .await;
    assert_eq!(again["one_time_key_counts"]["signed_curve25519"], 5);
    // A device that uploaded nothing still gets the fields.
    let s = bob.sync(None, 0, 1).await;
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 0, "{s}");
    assert_eq!(s["device_unused_fallback_key_types"], json!([]));
}

#[tokio::test]
async fn hostile_uploads_are_refused_and_store_nothing() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dev = Device::new(&alice);
    let refused = |body: Value, why: &'static str| {
        let alice = &alice;
        async move {
            let (status, resp) = alice.request(Method::POST, "/keys/upload", Some(&body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {resp}");
            assert_eq!(resp["errcode"], "M_INVALID_PARAM", "{why}: {resp}");
        }
    };
    // A signature that does not verify.
    let mut tampered = dev.device_keys();
    tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    refused(json!({ "device_keys": tampered }), "tampered device keys").await;
    // Not signed at all.
    let mut unsigned = dev.device_keys();
    unsigned.as_object_mut().unwrap().remove("signatures");
    refused(json!({ "device_keys": unsigned }), "unsigned device keys").await;
    // Keys for another user, or another device, validly self-signed.
    let other_user = Device {
        user_id: bob.user_id.clone(),
        device_id: alice.device_id.clone(),
        ed25519: Ed25519Keypair::new(),
        curve25519: e2ee_support::curve25519(),
    };
    refused(json!({ "device_keys": other_user.device_keys() }), "another user").await;
    let other_device = Device {
        user_id: alice.user_id.clone(),
        device_id: "NOTMINE".into(),
        ed25519: Ed25519Keypair::new(),
        curve25519: e2ee_support::curve25519(),
    };
    refused(
        json!({ "device_keys": other_device.device_keys() }),
        "another device",
    )
    .await;
    // Malformed key IDs and key shapes.
    for id in ["nocolon", ":AAAA", "signed_curve25519:", "bad alg:x"] {
        refused(json!({ "one_time_keys": { id: "a2V5" } }), "malformed key id").await;
    }
    refused(
        json!({ "one_time_keys": { "curve25519:A": 5 } }),
        "a number as key",
    )
    .await;
    refused(
        json!({ "one_time_keys": { "signed_curve25519:A": {"nokey": 1} } }),
        "no key field",
    )
    .await;
    let (status, resp) = alice
        .request(Method::POST, "/keys/upload", Some(&json!({ "device_keys": "x" })))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    let q = bob
        .ok(
            Method::POST,
            "/keys/query",
            Some(&json!({"device_keys": { alice.user_id.clone(): [] }})),
        )
        .await;
    assert_eq!(q["device_keys"][&alice.user_id], json!({}), "nothing stored: {q}");

    // With the device keys known, one-time keys must carry a valid signature.
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": dev.device_keys() })),
        )
        .await;
    let mut forged = dev.signed_key(false);
    forged["key"] = json!("Zm9yZ2VkIGtleQ");
    refused(
        json!({ "one_time_keys": { "signed_curve25519:F": forged } }),
        "forged otk",
    )
    .await;
    // A key ID reused with other content.
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "one_time_keys": { "signed_curve25519:R": dev.signed_key(false) } })),
        )
        .await;
    refused(
        json!({ "one_time_keys": { "signed_curve25519:R": dev.signed_key(false) } }),
        "reused key id",
    )
    .await;

    // Oversized uploads: more than 1,000 keys in a request, or stored per algorithm.
    let many = |prefix: &str, n: usize| -> Value {
        (0..n)
            .map(|i| (format!("curve25519:{prefix}{i}"), json!(format!("a2V5{i}"))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    refused(json!({ "one_time_keys": many("x", 1001) }), "1001 keys").await;
    let resp = alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "one_time_keys": many("y", 1000) })),
        )
        .await;
    assert_eq!(resp["one_time_key_counts"]["curve25519"], 1000);
    refused(json!({ "one_time_keys": many("z", 1) }), "the 1001st stored key").await;
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM one_time_keys WHERE algorithm = $1",
            &["curve25519"]
        )
        .await,
        1000
    );

    // Queries and claims for thousands at once.
    let users: serde_json::Map<String, Value> = (0..1001)
        .map(|i| (format!("@u{i}:hearth.test"), json!([])))
        .collect();
    let (status, resp) = bob
        .request(
            Method::POST,
            "/keys/query",
            Some(&json!({ "device_keys": users })),
        )
        .await;
    assert_eq!(
        (status, resp["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
    let devices: serde_json::Map<String, Value> = (0..1001)
        .map(|i| (format!("D{i}"), json!("signed_curve25519")))
        .collect();
    let (status, resp) = bob
        .request(
            Method::POST,
            "/keys/claim",
            Some(&json!({ "one_time_keys": { alice.user_id.clone(): devices } })),
        )
        .await;
    assert_eq!(
        (status, resp["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
    let (status, _) = bob
        .request(
            Method::POST,
            "/keys/query",
            Some(&json!({ "device_keys": { "not a user": [] } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, resp) = bob.request(Method::GET, "/keys/changes?from=s1", None).await;
    assert_eq!(
        (status, resp["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_MISSING_PARAM"))
    );
    let (status, resp) = bob
        .request(Method::GET, "/keys/changes?from=garbage&to=s1", None)
        .await;
    assert_eq!(
        (status, resp["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM"))
    );
}

async fn claim(client: &common::Client, user: &str, device: &str) -> Value {
    let resp = client
        .ok(
            Method::POST,
            "/keys/claim",
            Some(&json!({ "one_time_keys": { user: { device: "signed_curve25519" } } })),
        )
        .await;
    resp["one_time_keys"][user][device].clone()
}

#[tokio::test]
async fn claims_hand_out_each_key_once_then_the_fallback_key() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dev = Device::new(&alice);
    let fallback = dev.signed_key(true);
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({
                "device_keys": dev.device_keys(),
                "one_time_keys": dev.one_time_keys("K", 3),
                "fallback_keys": { "signed_curve25519:FB": fallback },
            })),
        )
        .await;
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let got = claim(&bob, &alice.user_id, &alice.device_id).await;
        let (id, key) = got
            .as_object()
            .unwrap()
            .iter()
            .next()
            .map(|(i, k)| (i.clone(), k.clone()))
            .expect("a key");
        assert!(id.starts_with("signed_curve25519:K"), "{got}");
        assert!(key["signatures"].is_object());
        assert!(seen.insert(id), "a key handed out twice");
    }
    let s = alice.sync(None, 0, 1).await;
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(
        s["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    // None left: the fallback key, marked used, and handed out again while nothing replaces it.
    for _ in 0..2 {
        let got = claim(&bob, &alice.user_id, &alice.device_id).await;
        assert_eq!(got["signed_curve25519:FB"], fallback, "{got}");
    }
    let s = alice.sync(None, 0, 1).await;
    assert_eq!(s["device_unused_fallback_key_types"], json!([]), "{s}");
    // A new fallback key is unused again.
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "fallback_keys": { "signed_curve25519:FB2": dev.signed_key(true) } })),
        )
        .await;
    let s = alice.sync(None, 0, 1).await;
    assert_eq!(
        s["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    // Unknown devices and users get nothing.
    assert!(claim(&bob, &alice.user_id, "NOSUCH").await.is_null());
    assert!(claim(&bob, "@nobody:hearth.test", "X").await.is_null());
}

#[tokio::test]
async fn fifty_concurrent_claims_never_share_a_key() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let dev = Device::new(&alice);
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": dev.device_keys(), "one_time_keys": dev.one_time_keys("C", 40) })),
        )
        .await;
    let mut claimers = Vec::new();
    for i in 0..5 {
        claimers.push(server.register(&format!("claimer{i}")).await);
    }
    let claimers = std::sync::Arc::new(claimers);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let claimers = claimers.clone();
        let (user, device) = (alice.user_id.clone(), alice.device_id.clone());
        tasks.push(tokio::spawn(async move {
            claim(&claimers[i % 5], &user, &device).await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        if let Some(map) = got.as_object() {
            ids.extend(map.keys().cloned());
        }
    }
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 40, "every key handed out, none twice: {ids:?}");
    assert_eq!(distinct.len(), 40);
    let db = server.db().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM one_time_keys", &[]).await, 0);
}

#[tokio::test]
async fn device_lists_follow_keys_rooms_and_deleted_devices() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let s0 = bob.sync(None, 0, 1).await;
    let since = s0["next_batch"].as_str().unwrap().to_owned();

    // A long-polling sync wakes for alice's new keys.
    let waiting = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move { bob.sync(Some(&since), 20_000, 1).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let dev = Device::new(&alice);
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": dev.device_keys() })),
        )
        .await;
    let s1 = waiting.await.unwrap();
    assert!(started.elapsed().as_secs() < 10, "the long-poll woke");
    assert!(contains(&s1["device_lists"]["changed"], &alice.user_id), "{s1}");
    let s1_token = s1["next_batch"].as_str().unwrap().to_owned();
    let changes = bob
        .ok(
            Method::GET,
            &format!("/keys/changes?from={}&to={}", encode(&since), encode(&s1_token)),
            None,
        )
        .await;
    assert!(contains(&changes["changed"], &alice.user_id), "{changes}");
    // Carol shares no room with bob: her keys are not his business.
    let carol_dev = Device::new(&carol);
    carol
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": carol_dev.device_keys() })),
        )
        .await;
    let s2 = bob.sync(Some(&s1_token), 0, 1).await;
    assert!(!contains(&s2["device_lists"]["changed"], &carol.user_id), "{s2}");
    // Carol joins: she now shares a room, so bob is told to fetch her keys.
    carol.join(&room).await;
    let s3 = bob.sync(Some(s2["next_batch"].as_str().unwrap()), 0, 1).await;
    assert!(contains(&s3["device_lists"]["changed"], &carol.user_id), "{s3}");
    // Carol leaves the only shared room: left.
    carol.leave(&room).await;
    let s4 = bob.sync(Some(s3["next_batch"].as_str().unwrap()), 0, 1).await;
    assert!(contains(&s4["device_lists"]["left"], &carol.user_id), "{s4}");
    assert!(!contains(&s4["device_lists"]["changed"], &carol.user_id), "{s4}");

    // Alice's second device uploads keys; her first device hears of it too.
    let alice2 = login(&server, "alice").await;
    let dev2 = Device::new(&alice2);
    alice2
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": dev2.device_keys(), "one_time_keys": dev2.one_time_keys("D", 2) })),
        )
        .await;
    let own = alice.sync(Some(&s1_token), 0, 1).await;
    assert!(contains(&own["device_lists"]["changed"], &alice.user_id), "{own}");

    // Deleting the device (with UIA) removes its keys and tells bob.
    let before = bob.sync(Some(s4["next_batch"].as_str().unwrap()), 0, 1).await;
    let before_token = before["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/devices/{}", alice2.device_id);
    let (status, challenge) = alice.request(Method::DELETE, &path, Some(&json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = challenge["session"].as_str().unwrap();
    alice
        .ok(
            Method::DELETE,
            &path,
            Some(&json!({ "auth": password_auth("alice", Some(session)) })),
        )
        .await;
    let after = bob.sync(Some(&before_token), 0, 1).await;
    assert!(
        contains(&after["device_lists"]["changed"], &alice.user_id),
        "{after}"
    );
    let q = bob
        .ok(
            Method::POST,
            "/keys/query",
            Some(&json!({"device_keys": { alice.user_id.clone(): [] }})),
        )
        .await;
    assert!(
        q["device_keys"][&alice.user_id].get(&alice2.device_id).is_none(),
        "{q}"
    );
    assert!(
        q["device_keys"][&alice.user_id].get(&alice.device_id).is_some(),
        "{q}"
    );
    assert!(claim(&bob, &alice.user_id, &alice2.device_id).await.is_null());
    let db = server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM one_time_keys WHERE device_id = $1",
            &[&alice2.device_id]
        )
        .await,
        0
    );

    // Logout of the remaining device too.
    let after_token = after["next_batch"].as_str().unwrap().to_owned();
    alice.ok(Method::POST, "/logout", Some(&json!({}))).await;
    let last = bob.sync(Some(&after_token), 0, 1).await;
    assert!(
        contains(&last["device_lists"]["changed"], &alice.user_id),
        "{last}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM device_keys WHERE user_id = $1",
            &[&alice.user_id]
        )
        .await,
        0
    );
}

#[tokio::test]
async fn cross_signing_keys_and_signatures() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let dev = Device::new(&alice);
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": dev.device_keys() })),
        )
        .await;
    let s0 = bob.sync(None, 0, 1).await;

    let master = Ed25519Keypair::new();
    let self_signing = Ed25519Keypair::new();
    let user_signing = Ed25519Keypair::new();
    let a = &alice.user_id;
    let keys = json!({
        "master_key": cross_signing_key(a, "master", &master, None),
        "self_signing_key": cross_signing_key(a, "self_signing", &self_signing, Some(&master)),
        "user_signing_key": cross_signing_key(a, "user_signing", &user_signing, Some(&master)),
    });
    // A self-signing key not signed by the master key is refused.
    let (status, resp) = alice
        .request(
            Method::POST,
            "/keys/device_signing/upload",
            Some(&json!({
                "master_key": cross_signing_key(a, "master", &master, None),
                "self_signing_key": cross_signing_key(a, "self_signing", &self_signing, None),
            })),
        )
        .await;
    assert_eq!(
        (status, resp["errcode"].clone()),
        (StatusCode::BAD_REQUEST, json!("M_INVALID_PARAM")),
        "{resp}"
    );
    // No master key yet: no UIA. The same keys again: no UIA either.
    alice
        .ok(Method::POST, "/keys/device_signing/upload", Some(&keys))
        .await;
    alice
        .ok(Method::POST, "/keys/device_signing/upload", Some(&keys))
        .await;
    let s1 = bob.sync(Some(s0["next_batch"].as_str().unwrap()), 0, 1).await;
    assert!(contains(&s1["device_lists"]["changed"], a), "{s1}");

    let query = |client: &common::Client| {
        let body = json!({ "device_keys": { a.clone(): [] } });
        let client = client.clone();
        async move { client.ok(Method::POST, "/keys/query", Some(&body)).await }
    };
    let by_bob = query(&bob).await;
    assert_eq!(
        by_bob["master_keys"][a]["keys"], keys["master_key"]["keys"],
        "{by_bob}"
    );
    assert_eq!(
        by_bob["self_signing_keys"][a]["keys"],
        keys["self_signing_key"]["keys"]
    );
    assert!(
        by_bob["user_signing_keys"].get(a).is_none(),
        "the user-signing key is private: {by_bob}"
    );
    let by_alice = query(&alice).await;
    assert_eq!(
        by_alice["user_signing_keys"][a]["keys"],
        keys["user_signing_key"]["keys"]
    );

    // A new master key needs UIA.
    let other_master = Ed25519Keypair::new();
    let replace = json!({ "master_key": cross_signing_key(a, "master", &other_master, None) });
    let (status, challenge) = alice
        .request(Method::POST, "/keys/device_signing/upload", Some(&replace))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(
        query(&bob).await["master_keys"][a]["keys"],
        keys["master_key"]["keys"]
    );
    // The same master key with a different self-signing key is new too: UIA.
    let other_ssk = json!({
        "master_key": keys["master_key"].clone(),
        "self_signing_key": cross_signing_key(a, "self_signing", &Ed25519Keypair::new(), Some(&master)),
    });
    let (status, _) = alice
        .request(Method::POST, "/keys/device_signing/upload", Some(&other_ssk))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // With the password, the new master key replaces the old one.
    let mut with_auth = replace.clone();
    with_auth["auth"] = password_auth("alice", challenge["session"].as_str());
    alice
        .ok(Method::POST, "/keys/device_signing/upload", Some(&with_auth))
        .await;
    assert_eq!(
        query(&bob).await["master_keys"][a]["keys"],
        replace["master_key"]["keys"]
    );
    // Back to the first master key (its self-signing and user-signing keys are still stored).
    let (_, challenge) = alice
        .request(Method::POST, "/keys/device_signing/upload", Some(&keys))
        .await;
    let mut with_auth = keys.clone();
    with_auth["auth"] = password_auth("alice", challenge["session"].as_str());
    alice
        .ok(Method::POST, "/keys/device_signing/upload", Some(&with_auth))
        .await;

    // The self-signing key signs alice's device: merged into /keys/query.
    let mut device_keys = dev.device_keys();
    let ss_id = format!("ed25519:{}", self_signing.public_key().to_base64());
    sign(&mut device_keys, a, &ss_id, &self_signing);
    let mut forged = dev.device_keys();
    sign(&mut forged, a, &ss_id, &Ed25519Keypair::new());
    let resp = alice
        .ok(
            Method::POST,
            "/keys/signatures/upload",
            Some(&json!({ a.clone(): { alice.device_id.clone(): device_keys } })),
        )
        .await;
    assert_eq!(resp["failures"], json!({}), "{resp}");
    let by_bob = query(&bob).await;
    assert!(
        by_bob["device_keys"][a][&alice.device_id]["signatures"][a][&ss_id].is_string(),
        "{by_bob}"
    );
    // A forged signature, an unknown key: per-key failures, nothing stored.
    let resp = alice
        .ok(
            Method::POST,
            "/keys/signatures/upload",
            Some(&json!({ a.clone(): { alice.device_id.clone(): forged, "NOSUCHKEY": {"user_id": a} } })),
        )
        .await;
    assert_eq!(
        resp["failures"][a][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
        "{resp}"
    );
    assert!(resp["failures"][a]["NOSUCHKEY"]["errcode"].is_string(), "{resp}");

    // Bob signs alice's master key with his user-signing key: only bob sees that signature.
    let bob_master = Ed25519Keypair::new();
    let bob_usk = Ed25519Keypair::new();
    let b = &bob.user_id;
    bob.ok(
        Method::POST,
        "/keys/device_signing/upload",
        Some(&json!({
            "master_key": cross_signing_key(b, "master", &bob_master, None),
            "user_signing_key": cross_signing_key(b, "user_signing", &bob_usk, Some(&bob_master)),
        })),
    )
    .await;
    let mut alice_master = query(&bob).await["master_keys"][a].clone();
    let usk_id = format!("ed25519:{}", bob_usk.public_key().to_base64());
    sign(&mut alice_master, b, &usk_id, &bob_usk);
    let master_id = master.public_key().to_base64();
    let resp = bob
        .ok(
            Method::POST,
            "/keys/signatures/upload",
            Some(&json!({ a.clone(): { master_id.clone(): alice_master } })),
        )
        .await;
    assert_eq!(resp["failures"], json!({}), "{resp}");
    assert!(query(&bob).await["master_keys"][a]["signatures"][b][&usk_id].is_string());
    let carol = server.register("carol").await;
    assert!(
        query(&carol).await["master_keys"][a]["signatures"]
            .get(b)
            .is_none()
    );
}

#[tokio::test]
async fn deactivation_removes_every_key() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await;
    let dev = Device::new(&alice);
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({
                "device_keys": dev.device_keys(),
                "one_time_keys": dev.one_time_keys("Z", 3),
                "fallback_keys": { "signed_curve25519:F": dev.signed_key(true) },
            })),
        )
        .await;
    let master = Ed25519Keypair::new();
    alice
        .ok(
            Method::POST,
            "/keys/device_signing/upload",
            Some(&json!({ "master_key": cross_signing_key(&alice.user_id, "master", &master, None) })),
        )
        .await;
    let s0 = bob.sync(None, 0, 1).await;
    let (_, challenge) = alice
        .request(Method::POST, "/account/deactivate", Some(&json!({})))
        .await;
    alice
        .ok(
            Method::POST,
            "/account/deactivate",
            Some(&json!({ "auth": password_auth("alice", challenge["session"].as_str()) })),
        )
        .await;
    let db = server.db().await;
    for table in [
        "device_keys",
        "one_time_keys",
        "fallback_keys",
        "cross_signing_keys",
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE user_id = $1");
        assert_eq!(count(&db, &sql, &[&alice.user_id]).await, 0, "{table}");
    }
    let s1 = bob.sync(Some(s0["next_batch"].as_str().unwrap()), 0, 1).await;
    assert!(contains(&s1["device_lists"]["left"], &alice.user_id), "{s1}");
    let q = bob
        .ok(
            Method::POST,
            "/keys/query",
            Some(&json!({"device_keys": { alice.user_id.clone(): [] }})),
        )
        .await;
    assert_eq!(q["device_keys"][&alice.user_id], json!({}));
    assert!(q["master_keys"].get(&alice.user_id).is_none());
}

async fn query_keys(client: &common::Client, user: &str) -> Value {
    let body = json!({ "device_keys": { user: [] } });
    client.ok(Method::POST, "/keys/query", Some(&body)).await
}

/// The sequence a client runs to replace its cross-signing keys (what matrix-js-sdk's
/// `bootstrapCrossSigning({setupNewCrossSigning: true})` does): the upload without auth is
/// answered 401 and changes nothing (no stored key, no device-list change a client would
/// re-query for); the upload with the password stores all three new keys at once, puts the
/// user in their own devices' `device_lists.changed`, and `/keys/query` then returns the new
/// set, with the new self-signing key's signature on the device.
#[tokio::test]
async fn replacing_cross_signing_keys_reaches_own_devices() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let second = login(&server, "alice").await;
    let a = alice.user_id.clone();
    let dev = Device::new(&alice);
    alice
        .ok(
            Method::POST,
            "/keys/upload",
            Some(&json!({ "device_keys": dev.device_keys() })),
        )
        .await;
    let bootstrap = |master: &Ed25519Keypair, ssk: &Ed25519Keypair, usk: &Ed25519Keypair| {
        let mut master_key = cross_signing_key(&a, "master", master, Some(master));
        sign(&mut master_key, &a, &dev.key_id(), &dev.ed25519);
        json!({
            "master_key": master_key,
            "self_signing_key": cross_signing_key(&a, "self_signing", ssk, Some(master)),
            "user_signing_key": cross_signing_key(&a, "user_signing", usk, Some(master)),
        })
    };
    let sign_device = |ssk: &Ed25519Keypair| {
        let mut device_keys = dev.device_keys();
        let id = format!("ed25519:{}", ssk.public_key().to_base64());
        sign(&mut device_keys, &a, &id, ssk);
        json!({ a.clone(): { alice.device_id.clone(): device_keys } })
    };
    let (m1, s1, u1) = (
        Ed25519Keypair::new(),
        Ed25519Keypair::new(),
        Ed25519Keypair::new(),
    );
    let first = bootstrap(&m1, &s1, &u1);
    alice
        .ok(Method::POST, "/keys/device_signing/upload", Some(&first))
        .await;
    let resp = alice
        .ok(Method::POST, "/keys/signatures/upload", Some(&sign_device(&s1)))
        .await;
    assert_eq!(resp["failures"], json!({}), "{resp}");
    let settled = second.sync(None, 0, 1).await;
    let since = settled["next_batch"].as_str().unwrap().to_owned();

    // New keys without auth: 401 with a password flow, nothing stored, nothing announced.
    let (m2, s2, u2) = (
        Ed25519Keypair::new(),
        Ed25519Keypair::new(),
        Ed25519Keypair::new(),
    );
    let replace = bootstrap(&m2, &s2, &u2);
    let (status, challenge) = alice
        .request(Method::POST, "/keys/device_signing/upload", Some(&replace))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert!(
        challenge["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["stages"] == json!(["m.login.password"])),
        "{challenge}"
    );
    let quiet = second.sync(Some(&since), 0, 1).await;
    assert!(
        !contains(&quiet["device_lists"]["changed"], &a),
        "a refused upload is no device-list change: {quiet}"
    );
    assert_eq!(
        query_keys(&second, &a).await["master_keys"][&a]["keys"],
        first["master_key"]["keys"]
    );
    // A wrong password: refused, still nothing stored.
    let mut wrong = replace.clone();
    wrong["auth"] = password_auth("alice", challenge["session"].as_str());
    wrong["auth"]["password"] = json!("not the password");
    let (status, resp) = alice
        .request(Method::POST, "/keys/device_signing/upload", Some(&wrong))
        .await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "{status} {resp}"
    );
    assert_eq!(
        query_keys(&second, &a).await["self_signing_keys"][&a]["keys"],
        first["self_signing_key"]["keys"]
    );

    // With the password: all three new keys at once, announced to alice's other device.
    let (_, challenge) = alice
        .request(Method::POST, "/keys/device_signing/upload", Some(&replace))
        .await;
    let mut with_auth = replace.clone();
    with_auth["auth"] = password_auth("alice", challenge["session"].as_str());
    alice
        .ok(Method::POST, "/keys/device_signing/upload", Some(&with_auth))
        .await;
    let changed = second.sync(Some(&since), 0, 1).await;
    assert!(contains(&changed["device_lists"]["changed"], &a), "{changed}");
    let q = query_keys(&second, &a).await;
    assert_eq!(q["master_keys"][&a], replace["master_key"], "{q}");
    assert_eq!(q["self_signing_keys"][&a], replace["self_signing_key"], "{q}");
    assert_eq!(q["user_signing_keys"][&a], replace["user_signing_key"], "{q}");
    // The new self-signing key signs the device: shown next to the device's own signature.
    let resp = alice
        .ok(Method::POST, "/keys/signatures/upload", Some(&sign_device(&s2)))
        .await;
    assert_eq!(resp["failures"], json!({}), "{resp}");
    let q = query_keys(&second, &a).await;
    let sigs = &q["device_keys"][&a][&alice.device_id]["signatures"][&a];
    assert!(sigs[dev.key_id()].is_string(), "{q}");
    assert!(
        sigs[format!("ed25519:{}", s2.public_key().to_base64())].is_string(),
        "{q}"
    );
    // A signature by the replaced self-signing key is refused now.
    let resp = alice
        .ok(Method::POST, "/keys/signatures/upload", Some(&sign_device(&s1)))
        .await;
    assert_eq!(
        resp["failures"][&a][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
        "{resp}"
    );
}
