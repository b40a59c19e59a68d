//! The device on wasm32 (run by `scripts/e2ee-wasm-check.sh --run` in node through
//! wasm-bindgen-test-runner): key generation and randomness, Olm and Megolm, pickling.
#![cfg(target_arch = "wasm32")]

use hearth_e2ee::Device;
use serde_json::json;
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
fn olm_megolm_and_pickle_on_wasm() {
    let mut alice = Device::new("@alice:hs", "ALICE");
    let mut bob = Device::new("@bob:hs", "BOB");
    let _ = alice.initial_keys_upload_body();
    alice.mark_keys_as_published();
    let bob_upload = bob.initial_keys_upload_body();
    bob.mark_keys_as_published();
    let query = json!({"device_keys": {
        "@alice:hs": {"ALICE": alice.device_keys()},
        "@bob:hs": {"BOB": bob.device_keys()}}});
    alice.receive_keys_query(&query);
    bob.receive_keys_query(&query);
    let (id, key) = bob_upload["one_time_keys"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let claim = json!({"one_time_keys": {"@bob:hs": {"BOB": {id.clone(): key.clone()}}}});
    assert!(alice.receive_keys_claim(&claim).is_empty());
    let members = vec!["@alice:hs".to_owned(), "@bob:hs".to_owned()];
    let body = alice.share_room_key("!r:hs", &members).unwrap().unwrap();
    let sync = json!({"to_device": {"events": [{"type": "m.room.encrypted", "sender": "@alice:hs",
        "content": body["messages"]["@bob:hs"]["BOB"]}]}});
    assert_eq!(bob.receive_sync(&sync).room_keys.len(), 1);
    let content = alice
        .encrypt_room_event("!r:hs", "m.room.message", &json!({"body": "wasm"}))
        .unwrap();
    let event =
        json!({"type": "m.room.encrypted", "sender": "@alice:hs", "event_id": "$w", "content": content});
    let key = [3u8; 32];
    let mut bob = Device::unpickle(&bob.pickle(&key), &key).unwrap();
    assert_eq!(
        bob.decrypt_room_event("!r:hs", &event).unwrap().content["body"],
        "wasm"
    );
}
