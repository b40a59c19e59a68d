//! Server-Server API, black-box. The test process plays a remote homeserver
//! (`conformance_tests::federation::FakeServer`: its own TLS listener, IP-literal server name,
//! signing key and key response) and drives the target's federation listener as such a server
//! would; the last test needs two servers that federate and uses the client API only.
//! Every federation response is validated against the Server-Server API's OpenAPI definitions.

use conformance_tests::federation::{FakeServer, SigningKey, Target, canonical, get_unsigned, now_ms};
use conformance_tests::{Client, V3, client, enc, federation_test, two_server_test};
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, verify_json};
use serde_json::{Value, json};

/// The authenticated endpoint the request-authentication tests call.
fn profile_path(user_id: &str) -> String {
    format!("/_matrix/federation/v1/query/profile?user_id={}", enc(user_id))
}

/// A public room of `alice` (on the target) and the fake server's user joined to it.
async fn joined_room(
    alice: &Client,
    fake: &FakeServer,
    target: &Target,
) -> (conformance_tests::federation::RemoteRoom, String) {
    let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
    let user = fake.user_id("remote");
    let (room, _) = fake.join(target, &room_id, &user).await;
    (room, user)
}

/// The `/send` result of one PDU.
fn pdu_result<'a>(body: &'a Value, event_id: &str) -> &'a Value {
    body["pdus"]
        .get(event_id)
        .unwrap_or_else(|| panic!("no result for {event_id} in {body}"))
}

federation_test! {
    /// §Retrieving server keys, §Publishing Keys: `GET /_matrix/key/v2/server` names the server,
    /// is signed by its own `verify_keys` (the signature verifies; a tampered copy does not),
    /// and is valid until a time in the future.
    async fn server_keys_are_self_signed(hs) {
        let url = hs.federation_url.as_deref().unwrap();
        let resp = get_unsigned(url, "/_matrix/key/v2/server").await;
        let keys = resp.ok().clone();
        let name = keys["server_name"].as_str().expect("server_name").to_string();
        assert!(keys["valid_until_ts"].as_u64().expect("valid_until_ts") > now_ms(), "{keys}");
        let verify_keys = keys["verify_keys"].as_object().expect("verify_keys");
        assert!(!verify_keys.is_empty(), "{keys}");
        let mut set = std::collections::BTreeMap::new();
        for (id, key) in verify_keys {
            set.insert(id.clone(), Base64::parse(key["key"].as_str().expect("key")).expect("base64 key"));
        }
        let map = PublicKeyMap::from([(name.clone(), set)]);
        verify_json(&map, &canonical(&keys)).expect("the key response's self-signature verifies");
        assert!(keys["signatures"][&name].as_object().is_some_and(|s| s.keys().any(|k| verify_keys.contains_key(k))));
        let mut tampered = keys.clone();
        tampered["valid_until_ts"] = json!(keys["valid_until_ts"].as_u64().unwrap() + 1);
        assert!(verify_json(&map, &canonical(&tampered)).is_err(), "a changed response must not verify");
    }
}

federation_test! {
    /// §Server implementation: `GET /_matrix/federation/v1/version` needs no authentication and
    /// names the implementation.
    async fn version_names_the_implementation(hs) {
        let resp = get_unsigned(hs.federation_url.as_deref().unwrap(), "/_matrix/federation/v1/version").await;
        let body = resp.ok();
        assert!(body["server"]["name"].as_str().is_some_and(|n| !n.is_empty()), "{body}");
    }
}

federation_test! {
    /// §Request Authentication: a request without an `Authorization` header is refused with 401
    /// `M_UNAUTHORIZED`; the same request signed is answered.
    async fn request_without_authorization_is_refused(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedauth").await;
        let fake = FakeServer::start().await;
        let path = profile_path(&alice.user_id);
        fake.request_with_auth(&target, "GET", &path, None, None).await.expect_err(401, "M_UNAUTHORIZED");
        let signed = fake.get(&target, &path).await;
        assert_ne!(signed.status, 401, "a signed request is authenticated: {}", signed.text);
    }
}

federation_test! {
    /// §Request Authentication: a signature that does not match the request (signed for another
    /// URI) is refused with 401 `M_UNAUTHORIZED`.
    async fn request_with_bad_signature_is_refused(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedsig").await;
        let fake = FakeServer::start().await;
        let path = profile_path(&alice.user_id);
        let other_uri = format!("{path}&field=displayname");
        let auth = fake.x_matrix(&target, "GET", &other_uri, None);
        fake.request_with_auth(&target, "GET", &path, None, Some(&auth)).await.expect_err(401, "M_UNAUTHORIZED");
        // A body that differs from what was signed.
        let txn_path = format!("/_matrix/federation/v1/send/t-{}", conformance_tests::unique_suffix());
        let signed_body = json!({"origin": fake.name, "origin_server_ts": now_ms(), "pdus": []});
        let mut sent_body = signed_body.clone();
        sent_body["origin_server_ts"] = json!(1);
        let auth = fake.x_matrix(&target, "PUT", &txn_path, Some(&signed_body));
        fake.request_with_auth(&target, "PUT", &txn_path, Some(&sent_body), Some(&auth)).await
            .expect_err(401, "M_UNAUTHORIZED");
    }
}

federation_test! {
    /// §Request Authentication: a request whose `destination` is another server is refused with
    /// 401.
    async fn request_for_another_destination_is_refused(hs) {
        let target = hs.federation().await;
        let alice = hs.user("feddest").await;
        let fake = FakeServer::start().await;
        let path = profile_path(&alice.user_id);
        let auth = FakeServer::x_matrix_with(fake.key(), &fake.name, "elsewhere.example.org", "GET", &path, None);
        fake.request_with_auth(&target, "GET", &path, None, Some(&auth)).await.expect_err(401, "M_UNAUTHORIZED");
    }
}

federation_test! {
    /// §Request Authentication, §Retrieving server keys: a request signed with a key the origin
    /// does not publish is refused with 401 `M_UNAUTHORIZED`.
    async fn request_signed_with_unknown_key_is_refused(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedkey").await;
        let fake = FakeServer::start().await;
        let path = profile_path(&alice.user_id);
        let unpublished = SigningKey::generate("unpublished");
        let auth = FakeServer::x_matrix_with(&unpublished, &fake.name, &target.server_name, "GET", &path, None);
        fake.request_with_auth(&target, "GET", &path, None, Some(&auth)).await.expect_err(401, "M_UNAUTHORIZED");
        // The same key ID as the published one, another key: the signature does not verify.
        let impostor = SigningKey::generate(fake.key().id.trim_start_matches("ed25519:"));
        let auth = FakeServer::x_matrix_with(&impostor, &fake.name, &target.server_name, "GET", &path, None);
        fake.request_with_auth(&target, "GET", &path, None, Some(&auth)).await.expect_err(401, "M_UNAUTHORIZED");
    }
}

federation_test! {
    /// §Querying for information (`GET /query/profile`): a local user's display name, whole and
    /// by `field`; an unknown user is 404 `M_NOT_FOUND`.
    async fn query_profile_of_local_user(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedprof").await;
        alice.put(&format!("{V3}/profile/{}/displayname", enc(&alice.user_id)), &json!({"displayname": "Alice Federated"})).await.ok();
        let fake = FakeServer::start().await;
        let whole = fake.get(&target, &profile_path(&alice.user_id)).await;
        assert_eq!(whole.ok()["displayname"], json!("Alice Federated"), "{}", whole.text);
        let field = fake.get(&target, &format!("{}&field=displayname", profile_path(&alice.user_id))).await;
        assert_eq!(field.ok()["displayname"], json!("Alice Federated"), "{}", field.text);
        let nobody = format!("@nobody-{}:{}", conformance_tests::unique_suffix(), target.server_name);
        fake.get(&target, &profile_path(&nobody)).await.expect_err(404, "M_NOT_FOUND");
    }
}

federation_test! {
    /// §Joining Rooms (`make_join`, `send_join` v2): a remote server's user joins a public room;
    /// the answer carries the room's state and auth chain, the room's members (client API) then
    /// include the remote user, and the joined server may read the room (`GET /event`).
    /// `make_join` for a user of another server than the requesting one is 403 `M_FORBIDDEN`.
    async fn make_join_and_send_join(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedjoin").await;
        let fake = FakeServer::start().await;
        let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
        let stranger = format!("@stranger-{}:elsewhere.example.org", conformance_tests::unique_suffix());
        fake.get(&target, &format!("/_matrix/federation/v1/make_join/{}/{}?ver=10&ver=11&ver=12", enc(&room_id), enc(&stranger)))
            .await
            .expect_err(403, "M_FORBIDDEN");

        let user = fake.user_id("joiner");
        let (room, answer) = fake.join(&target, &room_id, &user).await;
        let state = answer["state"].as_array().expect("state");
        assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{answer}");
        assert!(state.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str()), "{answer}");
        assert!(answer["auth_chain"].is_array(), "{answer}");

        let members = alice.joined_members(&room_id).await.ok().clone();
        assert!(members["joined"].get(&user).is_some(), "{members}");
        assert!(members["joined"].get(&alice.user_id).is_some(), "{members}");

        let message = alice.send_text(&room_id, "readable by the joined server").await;
        let got = fake.get(&target, &format!("/_matrix/federation/v1/event/{}", enc(&message))).await;
        let pdus = got.ok()["pdus"].as_array().expect("pdus");
        assert_eq!(pdus.len(), 1, "{}", got.text);
        assert_eq!(pdus[0]["content"]["body"], json!("readable by the joined server"));
        assert_eq!(pdus[0]["room_id"], json!(room.room_id));
    }
}

federation_test! {
    /// §Transactions, §Request Authentication: once a remote server's user is in a room, the
    /// target sends the room's new events to that server in a `/send` transaction, whose
    /// `X-Matrix` signature verifies with the target's published key.
    async fn events_are_sent_to_joined_server(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedout").await;
        let fake = FakeServer::start().await;
        let (room, _) = joined_room(&alice, &fake, &target).await;
        let message = alice.send_text(&room.room_id, "pushed to the joined server").await;
        let txn = conformance_tests::eventually("the message reaches the joined server", || async {
            fake.transactions().into_iter().find(|t| {
                t.body["pdus"].as_array().is_some_and(|pdus| pdus.iter().any(|p| p["content"]["body"] == "pushed to the joined server"))
            })
        }).await;
        assert_eq!(txn.method, "PUT");
        assert!(txn.uri.starts_with("/_matrix/federation/v1/send/"), "{}", txn.uri);
        assert_eq!(txn.body["origin"], json!(target.server_name), "{}", txn.body);
        let keys = get_unsigned(&target.url, "/_matrix/key/v2/server").await.ok().clone();
        txn.verify_x_matrix(&keys, &fake.name).expect("the transaction's X-Matrix signature verifies");
        // The PDU is the event the client sent.
        let pdu = txn.body["pdus"].as_array().unwrap().iter()
            .find(|p| p["content"]["body"] == "pushed to the joined server").unwrap();
        assert_eq!(conformance_tests::federation::event_id(&room.rules, &canonical(pdu)), message);
        // A changed body would not verify.
        let mut tampered = txn.clone();
        tampered.body["origin_server_ts"] = json!(1);
        assert!(tampered.verify_x_matrix(&keys, &fake.name).is_err());
    }
}

federation_test! {
    /// §Joining Rooms (`send_join` v2), §Validating hashes and signatures on received events: a
    /// join whose signature does not verify is refused (403 `M_FORBIDDEN`) and the user is not
    /// in the room; the same join properly signed is accepted.
    async fn send_join_with_forged_signature_is_refused(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedforge").await;
        let fake = FakeServer::start().await;
        let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
        let user = fake.user_id("forger");
        let (_, rules, join_id, join) = fake.prepare_join(&target, &room_id, &user).await;
        let mut forged = join.clone();
        let impostor = SigningKey::generate(fake.key().id.trim_start_matches("ed25519:"));
        fake.resign_pdu(&impostor, &rules, &mut forged);
        let forged = serde_json::to_value(&forged).unwrap();
        fake.send_join(&target, &room_id, &join_id, &forged).await.expect_err(403, "M_FORBIDDEN");
        let members = alice.joined_members(&room_id).await.ok().clone();
        assert!(members["joined"].get(&user).is_none(), "a refused join joined: {members}");

        let join = serde_json::to_value(&join).unwrap();
        fake.send_join(&target, &room_id, &join_id, &join).await.ok();
        let members = alice.joined_members(&room_id).await.ok().clone();
        assert!(members["joined"].get(&user).is_some(), "{members}");
    }
}

federation_test! {
    /// §Joining Rooms (`make_join`): a `ver` list without the room's version is 400
    /// `M_INCOMPATIBLE_ROOM_VERSION`, naming the room's version.
    async fn make_join_with_unsupported_version(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedver").await;
        let fake = FakeServer::start().await;
        let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
        let create = alice.get_state(&room_id, "m.room.create", "").await.ok().clone();
        let version = create["room_version"].as_str().unwrap_or("1").to_string();
        let user = fake.user_id("oldserver");
        let resp = fake
            .get(&target, &format!("/_matrix/federation/v1/make_join/{}/{}?ver=org.example.unknown", enc(&room_id), enc(&user)))
            .await;
        resp.expect_err(400, "M_INCOMPATIBLE_ROOM_VERSION");
        assert_eq!(resp.body["room_version"], json!(version), "{}", resp.text);
    }
}

federation_test! {
    /// §Transactions (`PUT /send/{txnId}`), §Checks performed on receipt of a PDU: a message
    /// from a joined remote user, in a transaction, is accepted (no `error` in its result) and
    /// shows in the local member's `/sync`.
    async fn transaction_pdu_reaches_sync(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedtxn").await;
        let fake = FakeServer::start().await;
        let (mut room, user) = joined_room(&alice, &fake, &target).await;
        let since = alice.sync(&client::SyncOpts::default()).await["next_batch"].as_str().unwrap().to_string();
        let (event_id, pdu) = fake.build_event(&mut room, &user, "m.room.message",
            json!({"msgtype": "m.text", "body": "hello over federation"}));
        let resp = fake.send_transaction(&target, vec![serde_json::to_value(&pdu).unwrap()], vec![]).await;
        let result = pdu_result(resp.ok(), &event_id);
        assert!(result.get("error").is_none(), "accepted PDU reported an error: {}", resp.text);
        let sync = alice.sync_until(Some(&since), None, |s| {
            client::timeline(s, "join", &room.room_id).iter().any(|e| e["event_id"] == event_id.as_str())
        }).await;
        let event = client::timeline(&sync, "join", &room.room_id).into_iter()
            .find(|e| e["event_id"] == event_id.as_str()).unwrap().clone();
        assert_eq!(event["sender"], json!(user));
        assert_eq!(event["content"]["body"], json!("hello over federation"));
    }
}

federation_test! {
    /// §Checks performed on receipt of a PDU, §Validating hashes and signatures on received
    /// events: in one transaction, a PDU whose signature does not verify is dropped with an
    /// `error` in its result, a PDU whose content hash does not match is kept redacted, and the
    /// transaction's good PDU is accepted all the same.
    async fn transaction_with_bad_signature_and_bad_hash(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedbad").await;
        let fake = FakeServer::start().await;
        let (mut room, user) = joined_room(&alice, &fake, &target).await;
        let since = alice.sync(&client::SyncOpts::default()).await["next_batch"].as_str().unwrap().to_string();
        let base = room.prev_events.clone();
        let depth = room.depth;

        // Signed by another key under the published key ID: the signature does not verify.
        let (bad_sig_id, mut bad_sig) = fake.build_event(&mut room, &user, "m.room.message",
            json!({"msgtype": "m.text", "body": "forged"}));
        let impostor = SigningKey::generate(fake.key().id.trim_start_matches("ed25519:"));
        fake.resign_pdu(&impostor, &room.rules, &mut bad_sig);

        // Content changed after hashing: the redacted form (which the signature covers, and the
        // event ID is the hash of) is unchanged, the content hash is not.
        room.prev_events = base.clone();
        room.depth = depth;
        let (bad_hash_id, mut bad_hash) = fake.build_event(&mut room, &user, "org.example.conformance",
            json!({"body": "original"}));
        bad_hash.insert("content".into(), ruma::CanonicalJsonValue::Object(canonical(&json!({"body": "tampered"}))));

        room.prev_events = base.clone();
        room.depth = depth;
        let (good_id, good) = fake.build_event(&mut room, &user, "m.room.message",
            json!({"msgtype": "m.text", "body": "the good one"}));

        let pdus = [&bad_sig, &bad_hash, &good].map(|p| serde_json::to_value(p).unwrap()).to_vec();
        let resp = fake.send_transaction(&target, pdus, vec![]).await;
        let body = resp.ok().clone();
        assert!(pdu_result(&body, &bad_sig_id)["error"].is_string(), "a dropped PDU's result carries an error: {body}");
        assert!(pdu_result(&body, &good_id).get("error").is_none(), "{body}");

        alice.sync_until(Some(&since), None, |s| {
            client::timeline(s, "join", &room.room_id).iter().any(|e| e["event_id"] == good_id.as_str())
        }).await;
        let redacted = alice.get_event(&room.room_id, &bad_hash_id).await;
        let content = redacted.ok()["content"].clone();
        assert!(content.get("body").is_none(), "an event whose hash does not match is kept redacted: {}", redacted.text);
        let forged = alice.get_event(&room.room_id, &bad_sig_id).await;
        assert_eq!(forged.status, 404, "a PDU with a bad signature is dropped: {}", forged.text);
    }
}

federation_test! {
    /// §Retrieving events, §Backfilling and retrieving missing events: `GET /event`,
    /// `GET /state_ids` and `GET /backfill` of a room are refused (403 `M_FORBIDDEN`) to a
    /// server none of whose users is in the room.
    async fn reads_refused_to_server_not_in_room(hs) {
        let target = hs.federation().await;
        let alice = hs.user("fedread").await;
        let fake = FakeServer::start().await;
        let room_id = alice.create_room(json!({"preset": "private_chat"})).await;
        let message = alice.send_text(&room_id, "not for other servers").await;
        fake.get(&target, &format!("/_matrix/federation/v1/event/{}", enc(&message)))
            .await
            .expect_err(403, "M_FORBIDDEN");
        fake.get(&target, &format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room_id), enc(&message)))
            .await
            .expect_err(403, "M_FORBIDDEN");
        fake.get(&target, &format!("/_matrix/federation/v1/backfill/{}?v={}&limit=10", enc(&room_id), enc(&message)))
            .await
            .expect_err(403, "M_FORBIDDEN");
    }
}

two_server_test! {
    /// §Joining Rooms, §Transactions, end to end through the client API: a user of the second
    /// server joins a public room of the first (`POST /join/{roomId}` with `via`), and messages
    /// sent on either side show in the other side's `/sync`.
    async fn two_servers_exchange_messages(hs1, hs2) {
        let alice = hs1.user("fedalice").await;
        let bob = hs2.user("fedbob").await;
        assert_ne!(alice.server_name(), bob.server_name(), "HS_URL and HS2_URL must be two servers");
        let room_id = alice.create_room(json!({"preset": "public_chat"})).await;
        let via = enc(alice.server_name());
        let joined = bob.post(&format!("{V3}/join/{}?via={via}&server_name={via}", enc(&room_id)), &json!({})).await;
        assert_eq!(joined.ok()["room_id"], json!(room_id));

        let alice_since = alice.sync(&client::SyncOpts::default()).await["next_batch"].as_str().unwrap().to_string();
        let bob_since = bob.sync(&client::SyncOpts::default()).await["next_batch"].as_str().unwrap().to_string();

        let from_alice = alice.send_text(&room_id, "hello from the first server").await;
        let sync = bob.sync_until(Some(&bob_since), None, |s| {
            client::timeline(s, "join", &room_id).iter().any(|e| e["event_id"] == from_alice.as_str())
        }).await;
        let seen = client::timeline(&sync, "join", &room_id).into_iter().find(|e| e["event_id"] == from_alice.as_str()).unwrap().clone();
        assert_eq!(seen["content"]["body"], json!("hello from the first server"));
        assert_eq!(seen["sender"], json!(alice.user_id));

        let from_bob = bob.send_text(&room_id, "hello from the second server").await;
        let sync = alice.sync_until(Some(&alice_since), None, |s| {
            client::timeline(s, "join", &room_id).iter().any(|e| e["event_id"] == from_bob.as_str())
        }).await;
        let seen = client::timeline(&sync, "join", &room_id).into_iter().find(|e| e["event_id"] == from_bob.as_str()).unwrap().clone();
        assert_eq!(seen["content"]["body"], json!("hello from the second server"));
        assert_eq!(seen["sender"], json!(bob.user_id));
    }
}
