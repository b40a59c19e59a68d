//! Client-Server API §"Login" (`GET /login`, `POST /login`).

use conformance_tests::{V3, conformance_test};
use serde_json::json;

conformance_test! {
    /// §Login: `GET /login` lists the supported flows, including `m.login.password`.
    async fn login_flows_include_password(hs) {
        let resp = hs.anonymous().get(&format!("{V3}/login")).await;
        let flows = resp.ok()["flows"].as_array().expect("flows").clone();
        assert!(flows.iter().any(|f| f["type"] == "m.login.password"), "{flows:?}");
    }
}

conformance_test! {
    /// §Login: password login with an `m.id.user` identifier holding the full user ID.
    async fn password_login_with_full_user_id(hs) {
        let alice = hs.user("login").await;
        let resp = hs.anonymous().post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password})).await;
        let body = resp.ok();
        assert_eq!(body["user_id"], json!(alice.user_id));
        assert!(body["access_token"].is_string() && body["device_id"].is_string());
    }
}

conformance_test! {
    /// §Login / §Matrix User ID identifier: the identifier may hold just the localpart.
    async fn password_login_with_localpart(hs) {
        let alice = hs.user("loginlp").await;
        let resp = hs.anonymous().post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.localpart()}, "password": alice.password})).await;
        assert_eq!(resp.ok()["user_id"], json!(alice.user_id));
    }
}

conformance_test! {
    /// §Login: a new login creates a new device with a token distinct from the old one; both work.
    async fn login_creates_new_device_and_token(hs) {
        let alice = hs.user("login2").await;
        let second = alice.login_again().await;
        assert_ne!(second.device_id, alice.device_id);
        assert_ne!(second.access_token, alice.access_token);
        assert_eq!(second.whoami().await.ok()["device_id"], json!(second.device_id));
        assert_eq!(alice.whoami().await.ok()["device_id"], json!(alice.device_id));
    }
}

conformance_test! {
    /// §Login: a wrong password fails with 403 `M_FORBIDDEN`.
    async fn wrong_password_is_forbidden(hs) {
        let alice = hs.user("badpw").await;
        let resp = hs.anonymous().post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": "definitely-wrong"})).await;
        resp.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Login: an unknown user fails with 403 `M_FORBIDDEN` (no account enumeration).
    async fn unknown_user_is_forbidden(hs) {
        let alice = hs.user("known").await;
        let ghost = format!("@nobody-{}:{}", conformance_tests::unique_suffix(), alice.server_name());
        let resp = hs.anonymous().post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": ghost}, "password": "whatever-1"})).await;
        resp.expect_err(403, "M_FORBIDDEN");
    }
}

conformance_test! {
    /// §Login: an unrecognised login `type` fails with HTTP 400.
    async fn unknown_login_type_is_400(hs) {
        let alice = hs.user("ltype").await;
        let resp = hs.anonymous().post(&format!("{V3}/login"), &json!({"type": "org.example.nonexistent",
            "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password})).await;
        assert_eq!(resp.status, 400, "{}", resp.text);
        assert!(resp.errcode().is_some());
    }
}

conformance_test! {
    /// §Login: a client-supplied `device_id` is used for the new session.
    async fn login_with_requested_device_id(hs) {
        let alice = hs.user("logindev").await;
        let resp = hs.anonymous().post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password,
            "device_id": "LOGINDEV1", "initial_device_display_name": "Second laptop"})).await;
        assert_eq!(resp.ok()["device_id"], json!("LOGINDEV1"));
        let token = resp.body["access_token"].as_str().unwrap();
        let second = alice.with_token(Some(token));
        let dev = second.get(&format!("{V3}/devices/LOGINDEV1")).await;
        assert_eq!(dev.ok()["display_name"], json!("Second laptop"));
    }
}

conformance_test! {
    /// §Login: a missing `password` for m.login.password is rejected with HTTP 400 or 403.
    async fn login_without_password_fails(hs) {
        let alice = hs.user("nopw").await;
        let resp = hs.anonymous().post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.user_id}})).await;
        assert!(resp.status == 400 || resp.status == 403, "got {} {}", resp.status, resp.text);
        assert!(resp.errcode().is_some());
    }
}
