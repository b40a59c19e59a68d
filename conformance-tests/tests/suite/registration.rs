//! Client-Server API §"Account registration and management" (`POST /register`,
//! `GET /register/available`) and §"User-Interactive Authentication API" (m.login.dummy).

use conformance_tests::{V3, conformance_test, enc, unique_suffix};
use serde_json::{Value, json};

fn fresh_localpart(prefix: &str) -> String {
    format!("{prefix}-{}", unique_suffix())
}

conformance_test! {
    /// §Account registration: the first `POST /register` without `auth` answers 401 with a UIA
    /// `session` and `flows` that include an `m.login.dummy` stage.
    async fn first_register_call_returns_uia_flows(hs) {
        let anon = hs.anonymous();
        let resp = anon
            .post(&format!("{V3}/register"), &json!({"username": fresh_localpart("uia"), "password": "pw-123456"}))
            .await;
        let body = resp.expect(401);
        assert!(body["session"].is_string(), "UIA response has a session: {body}");
        let flows = body["flows"].as_array().expect("flows");
        assert!(
            flows.iter().any(|f| f["stages"].as_array().is_some_and(|s| s.iter().any(|x| x == "m.login.dummy"))),
            "no m.login.dummy flow in {body}"
        );
    }
}

conformance_test! {
    /// §Account registration: completing the m.login.dummy stage registers the user and returns
    /// `user_id`, `access_token` and `device_id`; the user ID carries the requested localpart.
    async fn register_with_dummy_auth_returns_credentials(hs) {
        let anon = hs.anonymous();
        let localpart = fresh_localpart("reg");
        let resp = anon.register_raw(&localpart, "pw-123456", json!({})).await;
        let body = resp.ok();
        let user_id = body["user_id"].as_str().unwrap();
        assert!(user_id.starts_with(&format!("@{localpart}:")), "{user_id}");
        assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(body["device_id"].as_str().is_some_and(|t| !t.is_empty()));
    }
}

conformance_test! {
    /// §Account registration: the returned access token is immediately usable
    /// (`GET /account/whoami` answers with the new user and device).
    async fn registered_token_works_for_whoami(hs) {
        let alice = hs.user("alice").await;
        let who = alice.whoami().await;
        let body = who.ok();
        assert_eq!(body["user_id"], json!(alice.user_id));
        assert_eq!(body["device_id"], json!(alice.device_id));
    }
}

conformance_test! {
    /// §Account registration: registering a taken username fails with 400 `M_USER_IN_USE`.
    async fn duplicate_username_is_m_user_in_use(hs) {
        let alice = hs.user("dup").await;
        let resp = hs.anonymous().register_raw(alice.localpart(), "another-pw-1", json!({})).await;
        resp.expect_err(400, "M_USER_IN_USE");
    }
}

conformance_test! {
    /// §Account registration: an invalid localpart fails with 400 `M_INVALID_USERNAME`.
    async fn invalid_username_is_m_invalid_username(hs) {
        let resp = hs.anonymous().register_raw("Not A Valid Name!", "pw-123456", json!({})).await;
        resp.expect_err(400, "M_INVALID_USERNAME");
    }
}

conformance_test! {
    /// §`GET /register/available`: a free username reports `available: true`.
    async fn available_reports_free_username(hs) {
        let resp = hs.anonymous().get(&format!("{V3}/register/available?username={}", enc(&fresh_localpart("free")))).await;
        assert_eq!(resp.ok()["available"], json!(true));
    }
}

conformance_test! {
    /// §`GET /register/available`: a taken username fails with 400 `M_USER_IN_USE`.
    async fn available_reports_taken_username(hs) {
        let alice = hs.user("taken").await;
        let resp = hs.anonymous().get(&format!("{V3}/register/available?username={}", enc(alice.localpart()))).await;
        resp.expect_err(400, "M_USER_IN_USE");
    }
}

conformance_test! {
    /// §`GET /register/available`: an invalid username fails with 400 `M_INVALID_USERNAME`.
    async fn available_rejects_invalid_username(hs) {
        let resp = hs.anonymous().get(&format!("{V3}/register/available?username={}", enc("in valid!"))).await;
        resp.expect_err(400, "M_INVALID_USERNAME");
    }
}

conformance_test! {
    /// §Account registration: with `inhibit_login: true` the response has no access token
    /// and no device ID, but the account exists (logging in works).
    async fn inhibit_login_returns_no_token(hs) {
        let anon = hs.anonymous();
        let localpart = fresh_localpart("inhibit");
        let resp = anon.register_raw(&localpart, "pw-123456", json!({"inhibit_login": true})).await;
        let body = resp.ok();
        assert!(body["user_id"].is_string());
        assert!(body.get("access_token").is_none(), "access_token must be absent: {body}");
        let login = anon
            .post(&format!("{V3}/login"), &json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart}, "password": "pw-123456"}))
            .await;
        login.ok();
    }
}

conformance_test! {
    /// §Account registration: a client-chosen `device_id` is used for the new device.
    async fn register_uses_requested_device_id(hs) {
        let anon = hs.anonymous();
        let resp = anon
            .register_raw(&fresh_localpart("devreg"), "pw-123456", json!({"device_id": "CONFDEVICE"}))
            .await;
        assert_eq!(resp.ok()["device_id"], json!("CONFDEVICE"));
    }
}

conformance_test! {
    /// §Account registration: `initial_device_display_name` becomes the device's display name.
    async fn register_sets_initial_device_display_name(hs) {
        let anon = hs.anonymous();
        let resp = anon
            .register_raw(&fresh_localpart("devname"), "pw-123456", json!({"initial_device_display_name": "Conformance phone"}))
            .await;
        let body = resp.ok().clone();
        let client = anon.with_token(body["access_token"].as_str());
        let dev = client.get(&format!("{V3}/devices/{}", enc(body["device_id"].as_str().unwrap()))).await;
        assert_eq!(dev.ok()["display_name"], json!("Conformance phone"));
    }
}

conformance_test! {
    /// §Account registration: the UIA session does not let a second, different registration
    /// reuse a completed session for a taken name; each successful registration yields a
    /// distinct user and token.
    async fn two_registrations_give_distinct_users(hs) {
        let a = hs.user("pair").await;
        let b = hs.user("pair").await;
        assert_ne!(a.user_id, b.user_id);
        assert_ne!(a.access_token, b.access_token);
        let who: Value = b.whoami().await.ok().clone();
        assert_eq!(who["user_id"], json!(b.user_id));
    }
}
