//! Client-Server API §"Server-side key backups" (`/room_keys/version`, `/room_keys/keys`), and
//! Hearth's strict end-to-end encrypted rooms (an `org.hearth.*` extension).

use conformance_tests::{Client, V3, conformance_test, enc, extension_test};
use serde_json::{Value, json};

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

async fn create_backup(c: &Client, public_key: &str) -> String {
    let body = json!({
        "algorithm": ALGORITHM,
        "auth_data": {"public_key": public_key, "signatures": {}},
    });
    let resp = c.post(&format!("{V3}/room_keys/version"), &body).await;
    resp.ok()["version"]
        .as_str()
        .expect("version is a string")
        .to_owned()
}

fn key(first_message_index: u64, forwarded_count: u64, is_verified: bool, ciphertext: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {"ephemeral": "ZXBoZW1lcmFs", "ciphertext": ciphertext, "mac": "bWFj"},
    })
}

fn session_path(room: &str, session: &str, version: &str) -> String {
    format!(
        "{V3}/room_keys/keys/{}/{}?version={}",
        enc(room),
        enc(session),
        enc(version)
    )
}

conformance_test! {
    /// §Server-side key backups: `POST /room_keys/version` creates a backup that
    /// `GET /room_keys/version` returns as the latest, with `algorithm`, `auth_data`, `count`,
    /// `etag` and `version`; `GET /room_keys/version/{version}` returns the same.
    async fn backup_version_is_created_and_read(hs) {
        let alice = hs.user("kb1").await;
        let version = create_backup(&alice, "cHVibGljIGtleQ").await;
        let latest = alice.get(&format!("{V3}/room_keys/version")).await;
        let latest = latest.ok();
        assert_eq!(latest["version"], json!(version));
        assert_eq!(latest["algorithm"], json!(ALGORITHM));
        assert_eq!(latest["auth_data"]["public_key"], json!("cHVibGljIGtleQ"));
        assert_eq!(latest["count"], json!(0));
        assert!(latest["etag"].is_string(), "{latest}");
        let by_version = alice.get(&format!("{V3}/room_keys/version/{}", enc(&version))).await;
        assert_eq!(by_version.ok()["auth_data"], latest["auth_data"]);
    }
}

conformance_test! {
    /// §Server-side key backups: with no backup, `GET /room_keys/version` is 404 `M_NOT_FOUND`,
    /// and so is an unknown version.
    async fn backup_unknown_versions_are_not_found(hs) {
        let alice = hs.user("kb2").await;
        alice.get(&format!("{V3}/room_keys/version")).await.expect_err(404, "M_NOT_FOUND");
        alice.get(&format!("{V3}/room_keys/version/12345")).await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §Server-side key backups: backups are per user: another user's version does not exist
    /// for you.
    async fn backup_of_another_user_is_not_found(hs) {
        let alice = hs.user("kb3").await;
        let bob = hs.user("kb3b").await;
        let version = create_backup(&alice, "YWxpY2U").await;
        bob.get(&format!("{V3}/room_keys/version/{}", enc(&version))).await.expect_err(404, "M_NOT_FOUND");
        bob.get(&format!("{V3}/room_keys/version")).await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §Server-side key backups: a key stored with `PUT /room_keys/keys/{roomId}/{sessionId}` is
    /// read back by the session, room and all-keys endpoints; the answers carry `etag` and
    /// `count`; a room without keys is `{"sessions": {}}`; a missing session is 404.
    async fn backup_keys_are_stored_and_read(hs) {
        let alice = hs.user("kb4").await;
        let version = create_backup(&alice, "a2V5").await;
        let room = format!("!kb4room:{}", alice.server_name());
        let resp = alice.put(&session_path(&room, "session1", &version), &key(0, 0, false, "Y2lwaGVy")).await;
        let body = resp.ok();
        assert_eq!(body["count"], json!(1));
        assert!(body["etag"].is_string(), "{body}");
        let got = alice.get(&session_path(&room, "session1", &version)).await;
        assert_eq!(got.ok(), &key(0, 0, false, "Y2lwaGVy"));
        let room_keys = alice.get(&format!("{V3}/room_keys/keys/{}?version={}", enc(&room), enc(&version))).await;
        assert_eq!(room_keys.ok()["sessions"]["session1"], key(0, 0, false, "Y2lwaGVy"));
        let all = alice.get(&format!("{V3}/room_keys/keys?version={}", enc(&version))).await;
        assert_eq!(all.ok()["rooms"][&room]["sessions"]["session1"], key(0, 0, false, "Y2lwaGVy"));
        let other_room = format!("!kb4none:{}", alice.server_name());
        let empty = alice.get(&format!("{V3}/room_keys/keys/{}?version={}", enc(&other_room), enc(&version))).await;
        assert_eq!(empty.ok(), &json!({"sessions": {}}));
        alice.get(&session_path(&room, "nosuchsession", &version)).await.expect_err(404, "M_NOT_FOUND");
        let info = alice.get(&format!("{V3}/room_keys/version")).await;
        assert_eq!(info.ok()["count"], json!(1));
    }
}

conformance_test! {
    /// §Server-side key backups: of two uploads of a session, the server keeps the verified
    /// one, then the one with the lower `first_message_index`, then the lower `forwarded_count`.
    async fn backup_keeps_the_better_key(hs) {
        let alice = hs.user("kb5").await;
        let version = create_backup(&alice, "a2V5").await;
        let room = format!("!kb5room:{}", alice.server_name());
        let path = session_path(&room, "s", &version);
        alice.put(&path, &key(5, 1, false, "Zmlyc3Q")).await.ok();
        let deviation = "§Server-side key backups (Synapse lets a lower forwarded_count beat a lower \
            first_message_index, and an unverified key with a lower index replace a verified one)";
        if !hs.skip_on_synapse(deviation) {
            // A higher first_message_index does not replace it, whatever its forwarded_count.
            alice.put(&path, &key(6, 0, false, "bGF0ZXI")).await.ok();
            assert_eq!(alice.get(&path).await.ok(), &key(5, 1, false, "Zmlyc3Q"));
        }
        // A lower one does.
        alice.put(&path, &key(2, 3, false, "ZWFybGllcg")).await.ok();
        assert_eq!(alice.get(&path).await.ok(), &key(2, 3, false, "ZWFybGllcg"));
        // Same index, lower forwarded_count: replaces.
        alice.put(&path, &key(2, 1, false, "bGVzcw")).await.ok();
        assert_eq!(alice.get(&path).await.ok(), &key(2, 1, false, "bGVzcw"));
        // Verified beats a better index.
        alice.put(&path, &key(9, 9, true, "dmVyaWZpZWQ")).await.ok();
        assert_eq!(alice.get(&path).await.ok(), &key(9, 9, true, "dmVyaWZpZWQ"));
        if !hs.skip_on_synapse(deviation) {
            // An unverified key never replaces a verified one.
            alice.put(&path, &key(0, 0, false, "dW52ZXJpZmllZA")).await.ok();
            assert_eq!(alice.get(&path).await.ok(), &key(9, 9, true, "dmVyaWZpZWQ"));
        }
    }
}

conformance_test! {
    /// §Server-side key backups: keys can only be written to the latest version; writing to an
    /// older one is 403 `M_WRONG_ROOM_KEYS_VERSION`.
    async fn backup_keys_only_go_to_the_latest_version(hs) {
        let alice = hs.user("kb6").await;
        let old = create_backup(&alice, "b2xk").await;
        let new = create_backup(&alice, "bmV3").await;
        assert_ne!(old, new);
        let room = format!("!kb6room:{}", alice.server_name());
        let resp = alice.put(&session_path(&room, "s", &old), &key(0, 0, false, "eA")).await;
        resp.expect_err(403, "M_WRONG_ROOM_KEYS_VERSION");
        alice.put(&session_path(&room, "s", &new), &key(0, 0, false, "eA")).await.ok();
    }
}

conformance_test! {
    /// §Server-side key backups: deleting a version deletes its keys: reading them is 404.
    async fn backup_deleted_version_takes_its_keys(hs) {
        let alice = hs.user("kb7").await;
        let version = create_backup(&alice, "a2V5").await;
        let room = format!("!kb7room:{}", alice.server_name());
        alice.put(&session_path(&room, "s", &version), &key(0, 0, false, "eA")).await.ok();
        alice.delete(&format!("{V3}/room_keys/version/{}", enc(&version))).await.ok();
        alice.get(&format!("{V3}/room_keys/version/{}", enc(&version))).await.expect_err(404, "M_NOT_FOUND");
        alice.get(&format!("{V3}/room_keys/keys?version={}", enc(&version))).await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §Server-side key backups: `PUT /room_keys/version/{version}` updates `auth_data`; a
    /// `version` in the body that differs from the path is 400 `M_INVALID_PARAM`.
    async fn backup_version_update(hs) {
        let alice = hs.user("kb8").await;
        let version = create_backup(&alice, "b2xk").await;
        let path = format!("{V3}/room_keys/version/{}", enc(&version));
        let body = json!({"algorithm": ALGORITHM, "auth_data": {"public_key": "bmV3", "signatures": {}}, "version": version});
        alice.put(&path, &body).await.ok();
        assert_eq!(alice.get(&path).await.ok()["auth_data"]["public_key"], json!("bmV3"));
        let wrong = json!({"algorithm": ALGORITHM, "auth_data": {"public_key": "eA", "signatures": {}}, "version": "not-this-one"});
        alice.put(&path, &wrong).await.expect_err(400, "M_INVALID_PARAM");
    }
}

extension_test! {
    /// Hearth §strict E2E rooms (spec/privacy-modes.md): a room created with `m.room.encryption`
    /// is strict; plaintext messages are 403 `M_FORBIDDEN` with `org.hearth.error: strict_e2e`.
    async fn strict_room_refuses_plaintext(hs) {
        let alice = hs.user("strict").await;
        let room = alice.create_room(json!({"initial_state": [
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
        ]})).await;
        let resp = alice.send_txn(&room, "m.room.message", &alice.txn_id(), &json!({"msgtype": "m.text", "body": "plain"})).await;
        resp.expect_err(403, "M_FORBIDDEN");
        assert_eq!(resp.body["org.hearth.error"], json!("strict_e2e"), "{}", resp.text);
        let state = alice.get(&format!("{V3}/rooms/{}/state/org.hearth.room.privacy/", enc(&room))).await;
        assert_eq!(state.ok()["mode"], json!("strict_e2e"));
    }
}
