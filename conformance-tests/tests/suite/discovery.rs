//! Client-Server API §"API Standards" / server discovery: `GET /_matrix/client/versions`,
//! `GET /capabilities`, `GET /.well-known/matrix/client`.

use conformance_tests::{V3, conformance_test};
use serde_json::json;

conformance_test! {
    /// §`GET /versions`: lists supported spec versions (`r0.x` / `vX.Y` strings, at least one v1.x).
    async fn versions_lists_spec_versions(hs) {
        let resp = hs.anonymous().get("/_matrix/client/versions").await;
        let versions = resp.ok()["versions"].as_array().unwrap().clone();
        assert!(versions.iter().all(|v| v.as_str().is_some_and(|s| s.starts_with('r') || s.starts_with('v'))), "{versions:?}");
        assert!(versions.iter().any(|v| v.as_str().unwrap().starts_with("v1.")), "{versions:?}");
    }
}

conformance_test! {
    /// §`GET /versions`: works with an access token too (authentication is optional).
    async fn versions_with_token(hs) {
        let alice = hs.user("ver").await;
        alice.get("/_matrix/client/versions").await.ok();
    }
}

conformance_test! {
    /// §Capabilities: `GET /capabilities` reports `m.room_versions` with a `default` that is one
    /// of the `available` versions.
    async fn capabilities_room_versions(hs) {
        let alice = hs.user("caps").await;
        let caps = alice.get(&format!("{V3}/capabilities")).await.ok()["capabilities"].clone();
        let rv = &caps["m.room_versions"];
        let default = rv["default"].as_str().expect("default room version");
        assert!(rv["available"].get(default).is_some(), "{rv}");
    }
}

conformance_test! {
    /// §Capabilities: `m.change_password` (when present) is a boolean capability, and it matches
    /// behaviour: if enabled, a password change succeeds.
    async fn capabilities_change_password(hs) {
        let alice = hs.user("caps2").await;
        let caps = alice.get(&format!("{V3}/capabilities")).await.ok()["capabilities"].clone();
        let enabled = caps["m.change_password"]["enabled"].as_bool().unwrap_or(true);
        if enabled {
            alice.with_password_auth("POST", &format!("{V3}/account/password"), json!({"new_password": "caps-pw-123"})).await.ok();
        }
    }
}

conformance_test! {
    /// §Capabilities: `GET /capabilities` requires authentication (401 `M_MISSING_TOKEN`).
    async fn capabilities_requires_token(hs) {
        hs.anonymous().get(&format!("{V3}/capabilities")).await.expect_err(401, "M_MISSING_TOKEN");
    }
}

conformance_test! {
    /// §Room versions: a room created without `room_version` uses the default version advertised
    /// in `/capabilities`.
    async fn default_room_version_is_used(hs) {
        let alice = hs.user("caps3").await;
        let caps = alice.get(&format!("{V3}/capabilities")).await.ok()["capabilities"].clone();
        let default = caps["m.room_versions"]["default"].clone();
        let room = alice.create_room(json!({})).await;
        assert_eq!(alice.get_state(&room, "m.room.create", "").await.ok()["room_version"], default);
    }
}

conformance_test! {
    /// §Well-known URI: `GET /.well-known/matrix/client` is either 404 (not configured) or a JSON
    /// object with `m.homeserver.base_url` (validated against the spec schema).
    async fn well_known_client(hs) {
        let resp = hs.anonymous().get("/.well-known/matrix/client").await;
        match resp.status {
            200 => assert!(resp.body["m.homeserver"]["base_url"].is_string(), "{}", resp.text),
            404 => {}
            other => panic!("unexpected status {other}: {}", resp.text),
        }
    }
}
