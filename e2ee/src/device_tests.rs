//! Two (and three) devices in memory: Olm and Megolm exchange, tampering, pickling.

use serde_json::{Value, json};

use crate::device::{Device, Error};

const ROOM: &str = "!room:hs";

/// A fake server's `/keys/query` answer for these devices.
fn query_response(devices: &[&Device]) -> Value {
    let mut map = serde_json::Map::new();
    for d in devices {
        map.entry(d.user_id().to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap()
            .insert(d.device_id().to_owned(), d.device_keys());
    }
    json!({"device_keys": map})
}

/// Claim one key of `from` (taken from its upload body), as a server would answer.
fn claim_response(upload: &Value, owner: &Device, fallback: bool) -> Value {
    let (id, key) = if fallback {
        upload["fallback_keys"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap()
    } else {
        upload["one_time_keys"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap()
    };
    json!({"one_time_keys": {owner.user_id(): {owner.device_id(): {id.clone(): key.clone()}}}})
}

fn to_device_sync(sender: &Device, body: &Value, to: &Device) -> Value {
    let content = body["messages"][to.user_id()][to.device_id()].clone();
    json!({"to_device": {"events": [{"type": "m.room.encrypted", "sender": sender.user_id(), "content": content}]}})
}

fn room_event(sender: &Device, content: Value, event_id: &str) -> Value {
    json!({"type": "m.room.encrypted", "sender": sender.user_id(), "event_id": event_id, "content": content})
}

/// Alice shares a room key with Bob; returns Bob's upload body (for further claims).
fn setup(alice: &mut Device, bob: &mut Device) -> Value {
    let _ = alice.initial_keys_upload_body();
    alice.mark_keys_as_published();
    let bob_upload = bob.initial_keys_upload_body();
    bob.mark_keys_as_published();
    let q = query_response(&[alice, bob]);
    alice.track_users(["@bob:hs"]);
    alice.receive_keys_query(&q);
    bob.track_users(["@alice:hs"]);
    bob.receive_keys_query(&q);
    let members = vec!["@alice:hs".to_owned(), "@bob:hs".to_owned()];
    let claim = alice.keys_claim_body(&members).expect("bob needs a session");
    assert!(claim["one_time_keys"]["@bob:hs"]["BOB"] == "signed_curve25519");
    assert!(
        alice
            .receive_keys_claim(&claim_response(&bob_upload, bob, false))
            .is_empty()
    );
    let body = alice.share_room_key(ROOM, &members).unwrap().unwrap();
    let changes = bob.receive_sync(&to_device_sync(alice, &body, bob));
    assert_eq!(changes.failures, Vec::<String>::new());
    assert_eq!(changes.room_keys.len(), 1);
    bob_upload
}

#[test]
fn olm_and_megolm_round_trip() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    setup(&mut alice, &mut bob);
    for i in 0..3 {
        let c = alice
            .encrypt_room_event(ROOM, "m.room.message", &json!({"body": format!("hi {i}")}))
            .unwrap();
        assert_eq!(c["algorithm"], "m.megolm.v1.aes-sha2");
        assert_eq!(c["device_id"], "ALICE");
        crate::verify::check_megolm_ciphertext(c["ciphertext"].as_str().unwrap()).unwrap();
        let ev = room_event(&alice, c, &format!("$e{i}"));
        let d = bob.decrypt_room_event(ROOM, &ev).unwrap();
        assert_eq!(d.content["body"], format!("hi {i}"));
        assert_eq!(d.event_type, "m.room.message");
        assert_eq!(d.sender_device, "ALICE");
        assert_eq!(d.message_index, i);
        // The sender reads its own messages too.
        assert_eq!(
            alice.decrypt_room_event(ROOM, &ev).unwrap().content["body"],
            format!("hi {i}")
        );
    }
    // Bob answers over the Olm session Alice created (a normal message, no new claim).
    let alice_keys = bob.devices_of("@alice:hs").pop().unwrap();
    // Bob has an inbound session from Alice's pre-key message: encrypt back.
    let c = bob
        .olm_encrypt(&alice_keys, "org.example.ping", &json!({"n": 1}))
        .unwrap();
    let sync =
        json!({"to_device": {"events": [{"type": "m.room.encrypted", "sender": "@bob:hs", "content": c}]}});
    let changes = alice.receive_sync(&sync);
    assert_eq!(changes.failures, Vec::<String>::new());
    assert_eq!(changes.to_device[0].event_type, "org.example.ping");
    assert_eq!(changes.to_device[0].sender_device, "BOB");
}

#[test]
fn tampered_megolm_ciphertext_and_wrong_room_fail() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    setup(&mut alice, &mut bob);
    let c = alice
        .encrypt_room_event(ROOM, "m.room.message", &json!({"body": "x"}))
        .unwrap();
    // Flip a character of the ciphertext.
    let mut bad = c.clone();
    let mut s = c["ciphertext"].as_str().unwrap().to_owned();
    let i = s.len() / 2;
    let ch = if &s[i..i + 1] == "A" { "B" } else { "A" };
    s.replace_range(i..i + 1, ch);
    bad["ciphertext"] = json!(s);
    assert!(
        bob.decrypt_room_event(ROOM, &room_event(&alice, bad, "$bad"))
            .is_err()
    );
    // The same event presented in another room: no session there.
    assert!(matches!(
        bob.decrypt_room_event("!other:hs", &room_event(&alice, c.clone(), "$x")),
        Err(Error::UnknownMegolmSession { .. })
    ));
    // Another sender claiming Alice's session.
    let mut mallory_ev = room_event(&alice, c.clone(), "$m");
    mallory_ev["sender"] = json!("@mallory:hs");
    assert!(matches!(
        bob.decrypt_room_event(ROOM, &mallory_ev),
        Err(Error::PayloadMismatch(_))
    ));
    // Replay of the same index under another event ID.
    bob.decrypt_room_event(ROOM, &room_event(&alice, c.clone(), "$1"))
        .unwrap();
    bob.decrypt_room_event(ROOM, &room_event(&alice, c.clone(), "$1"))
        .unwrap();
    assert_eq!(
        bob.decrypt_room_event(ROOM, &room_event(&alice, c, "$2")),
        Err(Error::Replay(0))
    );
}

#[test]
fn megolm_plaintext_naming_another_room_is_refused() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    setup(&mut alice, &mut bob);
    // Alice's (malicious) client encrypts a plaintext naming another room with the room's session.
    let sender_key = alice.curve25519_key();
    let g = alice.outbound.get_mut(ROOM).unwrap();
    let msg = g
        .session
        .encrypt(json!({"type": "m.room.message", "content": {}, "room_id": "!else:hs"}).to_string());
    let content = json!({"algorithm": "m.megolm.v1.aes-sha2", "sender_key": sender_key,
        "ciphertext": msg.to_base64(), "session_id": g.session.session_id(), "device_id": "ALICE"});
    assert!(matches!(
        bob.decrypt_room_event(ROOM, &room_event(&alice, content, "$r")),
        Err(Error::RoomMismatch { .. })
    ));
}

#[test]
fn tampered_keys_are_refused() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    let bob_upload = bob.initial_keys_upload_body();
    // Device keys with a bad self-signature are ignored.
    let mut q = query_response(&[&bob]);
    q["device_keys"]["@bob:hs"]["BOB"]["algorithms"] = json!(["evil"]);
    let (_, refused) = alice.receive_keys_query(&q);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(alice.devices_of("@bob:hs").is_empty());
    // Keys listed under another device ID are ignored.
    let mut q = query_response(&[&bob]);
    let keys = q["device_keys"]["@bob:hs"]["BOB"].clone();
    q["device_keys"]["@bob:hs"]["OTHER"] = keys;
    let (_, refused) = alice.receive_keys_query(&q);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(alice.devices_of("@bob:hs").len(), 1);
    // A claimed one-time key whose signature does not verify is not used.
    let mut claim = claim_response(&bob_upload, &bob, false);
    let obj = claim["one_time_keys"]["@bob:hs"]["BOB"].as_object_mut().unwrap();
    let (_, k) = obj.iter_mut().next().unwrap();
    k["key"] = json!(Device::new("@x:hs", "X").curve25519_key());
    let refused = alice.receive_keys_claim(&claim);
    assert_eq!(refused.len(), 1);
    assert!(
        alice.keys_claim_body(&["@bob:hs".to_owned()]).is_some(),
        "no session was made"
    );
    // A changed key for a known device ID is not accepted.
    let mut impostor = Device::new("@bob:hs", "BOB");
    let (_, refused) = alice.receive_keys_query(&query_response(&[&mut impostor]));
    assert_eq!(refused.len(), 1);
    assert_eq!(alice.devices_of("@bob:hs")[0].ed25519, bob.ed25519_key());
}

#[test]
fn olm_payload_for_someone_else_or_from_wrong_sender_is_refused() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    let mut carol = Device::new("@carol:hs", "CAROL");
    let bob_upload = bob.initial_keys_upload_body();
    bob.mark_keys_as_published();
    let q = query_response(&[&alice, &bob, &carol]);
    alice.receive_keys_query(&q);
    bob.receive_keys_query(&q);
    carol.receive_keys_query(&q);
    alice.receive_keys_claim(&claim_response(&bob_upload, &bob, false));
    let bob_keys = alice.devices_of("@bob:hs").pop().unwrap();
    let c = alice.olm_encrypt(&bob_keys, "m.dummy", &json!({})).unwrap();
    // Carol cannot read it (no ciphertext for her key).
    assert_eq!(
        carol.receive_to_device_encrypted("@alice:hs", &c),
        Err(Error::NotForThisDevice)
    );
    // A to-device event that claims another sender than the payload names.
    assert!(matches!(
        bob.receive_to_device_encrypted("@carol:hs", &c),
        Err(Error::PayloadMismatch(_))
    ));
    // Tampered Olm body.
    let mut bad = c.clone();
    let body = bad["ciphertext"][bob.curve25519_key()]["body"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b = body.clone();
    let i = b.len() - 10;
    let ch = if &b[i..i + 1] == "A" { "B" } else { "A" };
    b.replace_range(i..i + 1, ch);
    bad["ciphertext"][bob.curve25519_key()]["body"] = json!(b);
    assert!(bob.receive_to_device_encrypted("@alice:hs", &bad).is_err());
    // A replay of a message already decrypted fails; a new genuine one still works.
    assert!(bob.receive_to_device_encrypted("@alice:hs", &c).is_err());
    let c = alice.olm_encrypt(&bob_keys, "m.dummy", &json!({})).unwrap();
    let payload = bob.receive_to_device_encrypted("@alice:hs", &c).unwrap().unwrap();
    assert_eq!(payload["type"], "m.dummy");
}

#[test]
fn payload_from_unknown_device_waits_for_keys_query() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    let bob_upload = bob.initial_keys_upload_body();
    bob.mark_keys_as_published();
    alice.receive_keys_query(&query_response(&[&bob]));
    alice.receive_keys_claim(&claim_response(&bob_upload, &bob, false));
    let members = vec!["@alice:hs".to_owned(), "@bob:hs".to_owned()];
    let body = alice.share_room_key(ROOM, &members).unwrap().unwrap();
    let changes = bob.receive_sync(&to_device_sync(&alice, &body, &bob));
    assert!(changes.room_keys.is_empty());
    assert_eq!(bob.stale_users(), vec!["@alice:hs".to_owned()]);
    let (changes, _) = bob.receive_keys_query(&query_response(&[&alice]));
    assert_eq!(changes.room_keys.len(), 1);
    let c = alice
        .encrypt_room_event(ROOM, "m.room.message", &json!({"body": "late"}))
        .unwrap();
    assert_eq!(
        bob.decrypt_room_event(ROOM, &room_event(&alice, c, "$l"))
            .unwrap()
            .content["body"],
        "late"
    );
}

#[test]
fn fallback_key_establishes_a_session() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    let bob_upload = bob.keys_upload_body(0, true);
    assert!(bob_upload.get("one_time_keys").is_none());
    bob.mark_keys_as_published();
    let q = query_response(&[&alice, &bob]);
    alice.receive_keys_query(&q);
    bob.receive_keys_query(&q);
    let claim = claim_response(&bob_upload, &bob, true);
    assert_eq!(alice.receive_keys_claim(&claim), Vec::<String>::new());
    let members = vec!["@bob:hs".to_owned()];
    let body = alice.share_room_key(ROOM, &members).unwrap().unwrap();
    assert_eq!(
        bob.receive_sync(&to_device_sync(&alice, &body, &bob))
            .room_keys
            .len(),
        1
    );
}

#[test]
fn deleted_device_rotates_the_room_key() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    let mut bob2 = Device::new("@bob:hs", "BOB2");
    let up1 = bob.initial_keys_upload_body();
    let up2 = bob2.initial_keys_upload_body();
    let q = query_response(&[&alice, &bob, &bob2]);
    alice.receive_keys_query(&q);
    alice.receive_keys_claim(&claim_response(&up1, &bob, false));
    alice.receive_keys_claim(&claim_response(&up2, &bob2, false));
    let members = vec!["@alice:hs".to_owned(), "@bob:hs".to_owned()];
    alice.share_room_key(ROOM, &members).unwrap().unwrap();
    let first = alice.outbound_session_id(ROOM).unwrap();
    assert_eq!(alice.room_key_recipients(ROOM).len(), 2);
    // Nothing changed: same session, nothing to send.
    assert!(alice.share_room_key(ROOM, &members).unwrap().is_none());
    // BOB2 is deleted: the next query no longer lists it.
    let sync = json!({"device_lists": {"changed": ["@bob:hs"]}});
    alice.receive_sync(&sync);
    assert_eq!(alice.stale_users(), vec!["@bob:hs".to_owned()]);
    alice.receive_keys_query(&query_response(&[&bob]));
    let body = alice.share_room_key(ROOM, &members).unwrap().unwrap();
    assert_ne!(alice.outbound_session_id(ROOM).unwrap(), first);
    assert!(body["messages"]["@bob:hs"].get("BOB2").is_none());
    assert!(body["messages"]["@bob:hs"].get("BOB").is_some());
    // Bob leaving the room also rotates.
    let second = alice.outbound_session_id(ROOM).unwrap();
    assert!(
        alice
            .share_room_key(ROOM, &["@alice:hs".to_owned()])
            .unwrap()
            .is_none()
    );
    assert_ne!(alice.outbound_session_id(ROOM).unwrap(), second);
}

#[test]
fn pickle_round_trip_and_tamper() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    setup(&mut alice, &mut bob);
    let key = [7u8; 32];
    let pickled_alice = alice.pickle(&key);
    let pickled_bob = bob.pickle(&key);
    // No secret in the clear: the room's session key does not appear.
    let session_key = alice.outbound[ROOM].session.session_key().to_base64();
    assert!(!pickled_alice.contains(&session_key[..40]));
    let mut alice2 = Device::unpickle(&pickled_alice, &key).unwrap();
    let mut bob2 = Device::unpickle(&pickled_bob, &key).unwrap();
    assert_eq!(alice2.curve25519_key(), alice.curve25519_key());
    assert_eq!(alice2.ed25519_key(), alice.ed25519_key());
    let c = alice2
        .encrypt_room_event(ROOM, "m.room.message", &json!({"body": "after"}))
        .unwrap();
    assert_eq!(
        bob2.decrypt_room_event(ROOM, &room_event(&alice, c, "$p"))
            .unwrap()
            .content["body"],
        "after"
    );
    // Olm sessions survive too.
    let bob_keys = alice2.devices_of("@bob:hs").pop().unwrap();
    let c = alice2.olm_encrypt(&bob_keys, "m.dummy", &json!({})).unwrap();
    assert!(
        bob2.receive_to_device_encrypted("@alice:hs", &c)
            .unwrap()
            .is_some()
    );
    // Wrong key, or an altered document, is refused.
    assert!(Device::unpickle(&pickled_alice, &[8u8; 32]).is_err());
    let altered = pickled_alice.replace("@bob:hs", "@eve:hs");
    assert!(matches!(Device::unpickle(&altered, &key), Err(Error::Pickle(_))));
    assert!(Device::unpickle("{}", &key).is_err());
    assert!(Device::unpickle("not json", &key).is_err());
}

#[test]
fn outbound_session_rotates_after_rotation_period_msgs() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    setup(&mut alice, &mut bob);
    alice.set_rotation_period_msgs(2);
    let members = vec!["@alice:hs".to_owned(), "@bob:hs".to_owned()];
    let first = alice.outbound_session_id(ROOM).unwrap();
    alice
        .encrypt_room_event(ROOM, "m.room.message", &json!({}))
        .unwrap();
    alice
        .encrypt_room_event(ROOM, "m.room.message", &json!({}))
        .unwrap();
    assert_eq!(
        alice.encrypt_room_event(ROOM, "m.room.message", &json!({})),
        Err(Error::NoOutboundSession(ROOM.into()))
    );
    let body = alice.share_room_key(ROOM, &members).unwrap().unwrap();
    assert_ne!(alice.outbound_session_id(ROOM).unwrap(), first);
    assert_eq!(
        bob.receive_sync(&to_device_sync(&alice, &body, &bob))
            .room_keys
            .len(),
        1
    );
    let c = alice
        .encrypt_room_event(ROOM, "m.room.message", &json!({"body": "new"}))
        .unwrap();
    assert_eq!(
        bob.decrypt_room_event(ROOM, &room_event(&alice, c, "$n"))
            .unwrap()
            .content["body"],
        "new"
    );
}

#[test]
fn inconsistent_sender_device_keys_are_refused() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    let other = Device::new("@alice:hs", "OTHER");
    let bob_upload = bob.initial_keys_upload_body();
    bob.mark_keys_as_published();
    let q = query_response(&[&alice, &bob]);
    alice.receive_keys_query(&q);
    bob.receive_keys_query(&q);
    alice.receive_keys_claim(&claim_response(&bob_upload, &bob, false));
    let bob_keys = alice.devices_of("@bob:hs").pop().unwrap();
    // A payload naming another device's keys as sender_device_keys.
    let payload = json!({
        "type": "m.dummy", "content": {}, "sender": "@alice:hs", "sender_device": "ALICE",
        "keys": {"ed25519": alice.ed25519_key()}, "recipient": "@bob:hs",
        "recipient_keys": {"ed25519": bob.ed25519_key()}, "sender_device_keys": other.device_keys(),
    });
    let session = alice
        .olm_sessions
        .get_mut(&bob_keys.curve25519)
        .unwrap()
        .first_mut()
        .unwrap();
    let (t, body) = session.encrypt(payload.to_string()).unwrap().to_parts();
    let content = json!({"algorithm": crate::OLM_ALGORITHM, "sender_key": alice.curve25519_key(),
        "ciphertext": {bob.curve25519_key(): {"type": t, "body": vodozemac::base64_encode(body)}}});
    assert!(matches!(
        bob.receive_to_device_encrypted("@alice:hs", &content),
        Err(Error::PayloadMismatch(_))
    ));
}
