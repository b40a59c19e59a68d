//! A redacted event is served with exactly the content the room version's redaction algorithm
//! keeps (computed here with ruma from the stored PDU), and the stored PDU still carries its
//! original hashes so the redacted form verifies as "signatures only".

mod common;

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{Client, Server, encode};
use hearth_federation::SigningKey;
use reqwest::Method;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, RoomVersionId,
    canonical_json::redact,
    serde::Base64,
    signatures::{PublicKeyMap, Verified, verify_event},
};
use serde_json::{Value, json};
use sqlx::Row;

async fn served_content(client: &Client, room: &str, event_id: &str) -> Value {
    let event = client
        .ok(
            Method::GET,
            &format!("/rooms/{}/event/{}", encode(room), encode(event_id)),
            None,
        )
        .await;
    assert!(
        event["unsigned"]["redacted_because"].is_object(),
        "no unsigned.redacted_because: {event}"
    );
    event["content"].clone()
}

#[tokio::test]
async fn redacted_events_keep_what_the_room_version_keeps() {
    let server = Server::start_with_plain_rooms().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let db = server.db().await;
    let key_row = sqlx::query("SELECT key_id, pkcs8 FROM server_signing_keys")
        .fetch_one(&db)
        .await
        .expect("signing key");
    let key_id: String = key_row.get(0);
    let key = SigningKey::from_pkcs8(
        &STANDARD.decode(key_row.get::<String, _>(1)).expect("base64"),
        key_id.strip_prefix("ed25519:").expect("ed25519"),
    )
    .expect("key");
    let mut keys = PublicKeyMap::new();
    keys.insert(
        common::SERVER_NAME.to_owned(),
        [(
            key_id.clone(),
            Base64::parse(key.public_key_base64()).expect("base64"),
        )]
        .into(),
    );

    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let rules = version.rules().expect("rules");
        let room = alice
            .create_room(json!({ "room_version": version.as_str(), "preset": "public_chat", "topic": "t" }))
            .await;
        bob.join(&room).await;
        let message = bob
            .send(
                &room,
                "m.room.message",
                json!({ "msgtype": "m.text", "body": "secret", "m.relates_to": { "rel_type": "m.thread", "event_id": "$x" } }),
            )
            .await;
        let mut pl = alice.get_state_content(&room, "m.room.power_levels", "").await;
        pl["invite"] = json!(10);
        pl["notifications"] = json!({ "room": 20 });
        let power = alice.set_state(&room, "m.room.power_levels", "", pl).await;
        let rules_event = alice
            .set_state(
                &room,
                "m.room.join_rules",
                "",
                json!({ "join_rule": "public", "extra": 1 }),
            )
            .await;
        let member = alice
            .room_state_ids(&room)
            .await
            .remove(&("m.room.member".to_owned(), bob.user_id.clone()))
            .expect("bob's member event");
        let topic = alice
            .set_state(&room, "m.room.topic", "", json!({ "topic": "to be removed" }))
            .await;
        let mut failures = Vec::new();
        for event_id in [&message, &power, &rules_event, &member, &topic] {
            alice.redact(&room, event_id).await;
            let stored: String = sqlx::query("SELECT json FROM events WHERE event_id = $1")
                .bind(event_id.clone())
                .fetch_one(&db)
                .await
                .expect("stored event")
                .get(0);
            let pdu: CanonicalJsonObject = serde_json::from_str(&stored).expect("canonical JSON");
            let redacted = redact(pdu.clone(), &rules.redaction, None).expect("redact");
            let expected = match redacted.get("content") {
                Some(CanonicalJsonValue::Object(c)) => serde_json::to_value(c).expect("json"),
                _ => json!({}),
            };
            let served = served_content(&alice, &room, event_id).await;
            if served != expected {
                failures.push(format!(
                    "v{version} {event_id}: served {served}, the algorithm keeps {expected}"
                ));
            }
            // The stored PDU still verifies fully; its redacted form verifies by signature.
            assert_eq!(verify_event(&keys, &pdu, &rules).expect("verify"), Verified::All);
            if redacted != pdu {
                assert_eq!(
                    verify_event(&keys, &redacted, &rules).expect("verify redacted"),
                    Verified::Signatures
                );
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
    db.close().await;
}
