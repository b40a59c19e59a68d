//! Client-Server API §"End-to-End Encryption" end to end: real Olm/Megolm devices
//! (`hearth-e2ee` on vodozemac) exchanging keys and messages through the homeserver, which only
//! stores and forwards what they upload and send.

use std::time::{Duration, Instant};

use conformance_tests::e2ee::{E2eeDevice, new_device};
use conformance_tests::{Client, V3, conformance_test, enc};
use hearth_e2ee::{DecryptedEvent, Error};
use serde_json::{Value, json};

/// A private room with `m.room.encryption` (Megolm) that `members` have joined.
async fn encrypted_room(owner: &Client, members: &[&Client]) -> String {
    let room = owner
        .create_room(json!({"preset": "private_chat", "initial_state": [{
            "type": "m.room.encryption", "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}))
        .await;
    for m in members {
        owner.invite_and_join(&room, m).await;
    }
    room
}

/// Fetch `event_id` and decrypt it, syncing (to receive the room key by to-device) while the
/// device does not know its Megolm session, for up to 20 s.
async fn receive(d: &mut E2eeDevice, room: &str, event_id: &str) -> Result<DecryptedEvent, Error> {
    let event = d.transport.get_event(room, event_id).await.ok().clone();
    assert_eq!(event["type"], "m.room.encrypted", "{event}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match d.device.decrypt_room_event(room, &event) {
            Err(Error::UnknownMegolmSession { .. }) if Instant::now() < deadline => {
                d.sync_once(1000).await.expect("sync");
            }
            other => return other,
        }
    }
}

fn text(body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body})
}

/// Sync `d` until its device knows exactly the devices `expected` of `user`.
async fn sync_until_devices(d: &mut E2eeDevice, user: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut have: Vec<String> = d
            .device
            .devices_of(user)
            .into_iter()
            .map(|k| k.device_id)
            .collect();
        have.sort();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user}'s devices: have {have:?}, want {want:?}"
        );
        d.sync_once(1000).await.expect("sync");
    }
}

conformance_test! {
    /// §End-to-End Encryption "m.megolm.v1.aes-sha2": Alice and Bob, two devices each, in an
    /// encrypted room: a Megolm message sent by one device is decrypted by every device (its
    /// room key went to each of them as an Olm-encrypted `m.room_key` to-device message).
    /// Hostile: Bob re-sending Alice's ciphertext as his own event is not believed.
    async fn every_device_decrypts_megolm_messages(hs) {
        let alice1 = hs.user("e2ea").await;
        let alice2 = alice1.login_again().await;
        let bob1 = hs.user("e2eb").await;
        let bob2 = bob1.login_again().await;
        let room = encrypted_room(&alice1, &[&bob1]).await;
        let mut devs = Vec::new();
        for c in [&alice1, &alice2, &bob1, &bob2] {
            devs.push(new_device(c, 5).await);
        }
        for (sender, body) in [(0, "from alice's first device"), (3, "from bob's second device")] {
            let ev = devs[sender].send_encrypted(&room, "m.room.message", &text(body)).await.unwrap();
            let mut recipients = devs[sender].device.room_key_recipients(&room);
            recipients.sort();
            assert_eq!(recipients.len(), 3, "the room key goes to every other device: {recipients:?}");
            for d in devs.iter_mut() {
                let m = receive(d, &room, &ev).await.unwrap_or_else(|e| panic!("{} cannot decrypt: {e}", d.device.device_id()));
                assert_eq!((m.event_type.as_str(), &m.content), ("m.room.message", &text(body)));
                assert_eq!(m.sender_device, devs_device_id(sender, &[&alice1, &alice2, &bob1, &bob2]));
            }
        }
        // Hostile: Bob sends Alice's ciphertext (her session, her sender_key) as his own event.
        let first = devs[0].send_encrypted(&room, "m.room.message", &text("alice again")).await.unwrap();
        let stolen = alice1.get_event(&room, &first).await.ok()["content"].clone();
        let forged = devs[2].send_raw(&room, &stolen).await.unwrap();
        for i in [0, 1, 3] {
            let got = receive(&mut devs[i], &room, &forged).await;
            assert!(matches!(got, Err(Error::PayloadMismatch(_))), "forged event accepted: {got:?}");
        }
    }
}

fn devs_device_id(i: usize, clients: &[&Client]) -> String {
    clients[i].device_id.clone()
}

conformance_test! {
    /// §End-to-End Encryption "Tracking the device list for a user": a device that logs in
    /// later is reported to the sender (`device_lists.changed` in `/sync`), gets the room key by
    /// to-device, and decrypts messages sent after it appeared. Hostile: it cannot decrypt the
    /// earlier message (it only got the session from its current ratchet index).
    async fn new_device_receives_keys_for_later_messages(hs) {
        let alice = hs.user("e2nd").await;
        let bob1 = hs.user("e2ndb").await;
        let room = encrypted_room(&alice, &[&bob1]).await;
        let mut a = new_device(&alice, 5).await;
        let mut b1 = new_device(&bob1, 5).await;
        let early = a.send_encrypted(&room, "m.room.message", &text("before")).await.unwrap();
        assert_eq!(receive(&mut b1, &room, &early).await.unwrap().content, text("before"));

        let bob2 = bob1.login_again().await;
        let mut b2 = new_device(&bob2, 5).await;
        sync_until_devices(&mut a, &bob1.user_id, &[&bob1.device_id, &bob2.device_id]).await;
        let late = a.send_encrypted(&room, "m.room.message", &text("after")).await.unwrap();
        assert_eq!(receive(&mut b2, &room, &late).await.unwrap().content, text("after"));
        assert_eq!(receive(&mut b1, &room, &late).await.unwrap().content, text("after"));
        let old = receive(&mut b2, &room, &early).await;
        assert!(matches!(old, Err(Error::MegolmDecryption(_))), "a later device read an earlier message: {old:?}");
    }
}

conformance_test! {
    /// §End-to-End Encryption: after a device is deleted (`DELETE /devices/{id}`) the sender
    /// learns it (`device_lists.changed`, then `/keys/query` no longer lists it), rotates the
    /// room's Megolm session and no longer encrypts to it. Hostile: the deleted device's keys
    /// cannot decrypt the next message, and its access token is gone.
    async fn deleted_device_stops_receiving(hs) {
        let alice = hs.user("e2del").await;
        let bob1 = hs.user("e2delb").await;
        let bob2 = bob1.login_again().await;
        let room = encrypted_room(&alice, &[&bob1]).await;
        let mut a = new_device(&alice, 5).await;
        let mut b1 = new_device(&bob1, 5).await;
        let mut b2 = new_device(&bob2, 5).await;
        let before = a.send_encrypted(&room, "m.room.message", &text("to both")).await.unwrap();
        assert_eq!(receive(&mut b2, &room, &before).await.unwrap().content, text("to both"));
        let first_session = a.device.outbound_session_id(&room).unwrap();

        bob1.with_password_auth("DELETE", &format!("{V3}/devices/{}", enc(&bob2.device_id)), json!({})).await.ok();
        sync_until_devices(&mut a, &bob1.user_id, &[&bob1.device_id]).await;
        let query = alice.post(&format!("{V3}/keys/query"), &json!({"device_keys": {bob1.user_id.clone(): []}})).await;
        assert!(query.ok()["device_keys"][&bob1.user_id].get(&bob2.device_id).is_none(), "{}", query.text);

        let after = a.send_encrypted(&room, "m.room.message", &text("bob1 only")).await.unwrap();
        assert_ne!(a.device.outbound_session_id(&room).unwrap(), first_session, "the room key was not rotated");
        assert_eq!(a.device.room_key_recipients(&room), vec![(bob1.user_id.clone(), bob1.device_id.clone())]);
        assert_eq!(receive(&mut b1, &room, &after).await.unwrap().content, text("bob1 only"));
        let event = bob1.get_event(&room, &after).await.ok().clone();
        assert!(matches!(b2.device.decrypt_room_event(&room, &event), Err(Error::UnknownMegolmSession { .. })));
        bob2.whoami().await.expect_err(401, "M_UNKNOWN_TOKEN");
    }
}

conformance_test! {
    /// §End-to-End Encryption "Fallback keys": when a device's one-time keys are used up,
    /// `/keys/claim` returns its fallback key (`fallback: true`, signed, handed out again on
    /// the next claim) and an Olm session is still established with it. Hostile: claiming keys
    /// of a device that does not exist yields no key (and no error).
    async fn fallback_key_used_when_one_time_keys_run_out(hs) {
        let alice = hs.user("e2fb").await;
        let bob = hs.user("e2fbb").await;
        let room = encrypted_room(&alice, &[&bob]).await;
        let mut a = new_device(&alice, 5).await;
        let mut b = new_device(&bob, 1).await;
        let claim = json!({"one_time_keys": {bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"}}});
        let key_of = |resp: &Value| -> (String, Value) {
            let keys = resp["one_time_keys"][&bob.user_id][&bob.device_id].as_object().cloned().unwrap_or_default();
            assert_eq!(keys.len(), 1, "one key per claimed device: {resp}");
            let (id, k) = keys.into_iter().next().unwrap();
            (id, k)
        };
        let (_, otk) = key_of(alice.post(&format!("{V3}/keys/claim"), &claim).await.ok());
        assert!(otk.get("fallback").is_none(), "the one-time key came first: {otk}");
        bob.sync_until(None, None, |s| s["device_one_time_keys_count"]["signed_curve25519"].as_u64().unwrap_or(0) == 0).await;
        let (fb_id, fb) = key_of(alice.post(&format!("{V3}/keys/claim"), &claim).await.ok());
        assert_ne!(fb["key"], otk["key"]);
        assert_eq!(fb["fallback"], json!(true), "{fb}");
        hearth_e2ee::verify::verify_signed_json(&fb, &bob.user_id, &format!("ed25519:{}", bob.device_id), &b.device.ed25519_key())
            .expect("the fallback key is signed by its device");
        let (fb_again_id, fb_again) = key_of(alice.post(&format!("{V3}/keys/claim"), &claim).await.ok());
        assert_eq!((fb_again_id, &fb_again["key"]), (fb_id, &fb["key"]), "a fallback key is handed out again");

        let ev = a.send_encrypted(&room, "m.room.message", &text("over the fallback key")).await.unwrap();
        assert_eq!(receive(&mut b, &room, &ev).await.unwrap().content, text("over the fallback key"));

        let none = alice.post(&format!("{V3}/keys/claim"),
            &json!({"one_time_keys": {bob.user_id.clone(): {"NOSUCHDEVICE": "signed_curve25519"}}})).await;
        assert!(none.ok()["one_time_keys"].get(&bob.user_id).and_then(|d| d.get("NOSUCHDEVICE")).is_none(), "{}", none.text);
    }
}

conformance_test! {
    /// §End-to-End Encryption "Claiming one-time keys": 50 concurrent `/keys/claim` calls for
    /// a device with 30 one-time keys and a fallback key hand each one-time key out at most
    /// once (the others get the fallback key), the device's count drops by what was handed out,
    /// and the remaining keys come out later, again each once.
    async fn concurrent_claims_never_hand_out_a_key_twice(hs) {
        let alice = hs.user("e2cc").await;
        let bob = hs.user("e2ccb").await;
        let _b = new_device(&bob, 30).await;
        let claim = json!({"one_time_keys": {bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"}}});
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, body) = (alice.clone(), claim.clone());
            tasks.push(tokio::spawn(async move { c.post(&format!("{V3}/keys/claim"), &body).await }));
        }
        let mut one_time = Vec::new();
        let mut fallback = 0;
        for t in tasks {
            let resp = t.await.unwrap();
            let keys = resp.ok()["one_time_keys"][&bob.user_id][&bob.device_id].as_object().cloned().unwrap_or_default();
            assert_eq!(keys.len(), 1, "{}", resp.text);
            let (id, k) = keys.into_iter().next().unwrap();
            if k.get("fallback") == Some(&json!(true)) {
                fallback += 1;
            } else {
                one_time.push((id, k["key"].clone()));
            }
        }
        let mut ids: Vec<&String> = one_time.iter().map(|(id, _)| id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), one_time.len(), "a one-time key was handed out twice: {one_time:?}");
        // Under contention a server may hand out the fallback key while one-time keys remain
        // (Synapse on PostgreSQL skips locked rows); every claim gets a key either way.
        assert_eq!(one_time.len() + fallback, 50);
        assert!((1..=30).contains(&one_time.len()), "{} one-time keys out of 30", one_time.len());
        let left = 30 - one_time.len() as u64;
        bob.sync_until(None, None, |s| s["device_one_time_keys_count"]["signed_curve25519"].as_u64().unwrap_or(0) == left).await;
        // The rest are handed out later, each once.
        let mut later = Vec::new();
        for _ in 0..left {
            let resp = alice.post(&format!("{V3}/keys/claim"), &claim).await;
            let keys = resp.ok()["one_time_keys"][&bob.user_id][&bob.device_id].as_object().cloned().unwrap_or_default();
            let (id, k) = keys.into_iter().next().expect("a key");
            assert!(k.get("fallback").is_none(), "fallback while one-time keys remain: {k}");
            later.push(id);
        }
        let mut all: Vec<&String> = one_time.iter().map(|(id, _)| id).chain(&later).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 30, "a one-time key was handed out twice");
    }
}
