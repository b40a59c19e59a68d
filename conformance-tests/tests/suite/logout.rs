//! Client-Server API §"Logout" (`POST /logout`, `POST /logout/all`).

use conformance_tests::{V3, conformance_test};
use serde_json::json;

conformance_test! {
    /// §Logout: after `POST /logout` the access token is invalid (401 `M_UNKNOWN_TOKEN`).
    async fn logout_invalidates_token(hs) {
        let alice = hs.user("logout").await;
        alice.post(&format!("{V3}/logout"), &json!({})).await.ok();
        alice.whoami().await.expect_err(401, "M_UNKNOWN_TOKEN");
    }
}

conformance_test! {
    /// §Logout: logging out one device leaves the user's other sessions working.
    async fn logout_keeps_other_sessions(hs) {
        let alice = hs.user("logout2").await;
        let second = alice.login_again().await;
        alice.post(&format!("{V3}/logout"), &json!({})).await.ok();
        second.whoami().await.ok();
    }
}

conformance_test! {
    /// §Logout: `POST /logout` also deletes the device (it disappears from `GET /devices`).
    async fn logout_deletes_device(hs) {
        let alice = hs.user("logout3").await;
        let second = alice.login_again().await;
        second.post(&format!("{V3}/logout"), &json!({})).await.ok();
        let devices = alice.get(&format!("{V3}/devices")).await;
        let ids: Vec<&str> = devices.ok()["devices"].as_array().unwrap().iter().filter_map(|d| d["device_id"].as_str()).collect();
        assert!(!ids.contains(&second.device_id.as_str()), "{ids:?}");
        assert!(ids.contains(&alice.device_id.as_str()), "{ids:?}");
    }
}

conformance_test! {
    /// §Logout all: `POST /logout/all` invalidates every access token of the user.
    async fn logout_all_invalidates_all_tokens(hs) {
        let alice = hs.user("logoutall").await;
        let second = alice.login_again().await;
        alice.post(&format!("{V3}/logout/all"), &json!({})).await.ok();
        alice.whoami().await.expect_err(401, "M_UNKNOWN_TOKEN");
        second.whoami().await.expect_err(401, "M_UNKNOWN_TOKEN");
    }
}

conformance_test! {
    /// §Logout: logging out requires authentication (401 `M_MISSING_TOKEN` without a token).
    async fn logout_requires_token(hs) {
        hs.anonymous().post(&format!("{V3}/logout"), &json!({})).await.expect_err(401, "M_MISSING_TOKEN");
    }
}
