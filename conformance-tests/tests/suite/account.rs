//! Client-Server API §"Account management": `GET /account/whoami`, `POST /account/password`,
//! `POST /account/deactivate`, `GET /account/3pid`.

use conformance_tests::{V3, conformance_test};
use serde_json::json;

conformance_test! {
    /// §whoami: returns the token owner's `user_id` and `device_id`.
    async fn whoami_returns_user_and_device(hs) {
        let alice = hs.user("who").await;
        let body = alice.whoami().await.ok().clone();
        assert_eq!(body["user_id"], json!(alice.user_id));
        assert_eq!(body["device_id"], json!(alice.device_id));
        assert_ne!(body["is_guest"], json!(true));
    }
}

conformance_test! {
    /// §whoami: without an access token the server answers 401 `M_MISSING_TOKEN`.
    async fn whoami_without_token_is_missing_token(hs) {
        hs.anonymous().get(&format!("{V3}/account/whoami")).await.expect_err(401, "M_MISSING_TOKEN");
    }
}

conformance_test! {
    /// §Changing password: `POST /account/password` is protected by user-interactive auth
    /// (401 with `flows` and a `session` when no `auth` is given).
    async fn password_change_requires_uia(hs) {
        let alice = hs.user("pwuia").await;
        let resp = alice.post(&format!("{V3}/account/password"), &json!({"new_password": "new-pw-1234"})).await;
        let body = resp.expect(401);
        assert!(body["flows"].is_array() && body["session"].is_string(), "{body}");
    }
}

conformance_test! {
    /// §Changing password: after a change the new password logs in and the old one is refused.
    async fn password_change_takes_effect(hs) {
        let alice = hs.user("pwchange").await;
        alice.with_password_auth("POST", &format!("{V3}/account/password"), json!({"new_password": "new-pw-1234"})).await.ok();
        let anon = hs.anonymous();
        let old = anon.post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password})).await;
        old.expect_err(403, "M_FORBIDDEN");
        let new = anon.post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": "new-pw-1234"})).await;
        new.ok();
        alice.whoami().await.ok();
    }
}

conformance_test! {
    /// §Changing password: `logout_devices` defaults to true: the user's other sessions are
    /// revoked, the session that changed the password keeps working.
    async fn password_change_logs_out_other_devices(hs) {
        let alice = hs.user("pwlogout").await;
        let other = alice.login_again().await;
        alice.with_password_auth("POST", &format!("{V3}/account/password"), json!({"new_password": "new-pw-5678"})).await.ok();
        other.whoami().await.expect_err(401, "M_UNKNOWN_TOKEN");
        alice.whoami().await.ok();
    }
}

conformance_test! {
    /// §Changing password: with `logout_devices: false` other sessions stay valid.
    async fn password_change_can_keep_other_devices(hs) {
        let alice = hs.user("pwkeep").await;
        let other = alice.login_again().await;
        alice.with_password_auth("POST", &format!("{V3}/account/password"),
            json!({"new_password": "new-pw-9012", "logout_devices": false})).await.ok();
        other.whoami().await.ok();
    }
}

conformance_test! {
    /// §User-Interactive Authentication: a wrong password in the `auth` dict is refused with 401
    /// (the UIA response again, carrying an `errcode`), and the password is unchanged.
    async fn password_change_with_wrong_password_is_refused(hs) {
        let mut alice = hs.user("pwwrong").await;
        let real = alice.password.clone();
        alice.password = "not-my-password".into();
        let resp = alice.with_password_auth("POST", &format!("{V3}/account/password"), json!({"new_password": "x-pw-3456"})).await;
        assert_eq!(resp.status, 401, "{}", resp.text);
        assert!(resp.errcode().is_some(), "{}", resp.text);
        alice.password = real;
        alice.login_again().await;
    }
}

conformance_test! {
    /// §Account deactivation: after `POST /account/deactivate` (with UIA) the token is invalid and
    /// login is refused.
    async fn deactivate_disables_account(hs) {
        let alice = hs.user("deact").await;
        let resp = alice.with_password_auth("POST", &format!("{V3}/account/deactivate"), json!({})).await;
        assert!(resp.ok()["id_server_unbind_result"].is_string());
        alice.whoami().await.expect_err(401, "M_UNKNOWN_TOKEN");
        let login = hs.anonymous().post(&format!("{V3}/login"), &json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password})).await;
        assert!(login.status == 401 || login.status == 403, "{} {}", login.status, login.text);
    }
}

conformance_test! {
    /// §Account deactivation: the user ID of a deactivated account cannot be registered again.
    async fn deactivated_user_id_is_not_reusable(hs) {
        let alice = hs.user("deact2").await;
        alice.with_password_auth("POST", &format!("{V3}/account/deactivate"), json!({})).await.ok();
        let resp = hs.anonymous().register_raw(alice.localpart(), "pw-123456", json!({})).await;
        resp.expect_err(400, "M_USER_IN_USE");
    }
}

conformance_test! {
    /// §Account deactivation: deactivating requires user-interactive auth.
    async fn deactivate_requires_uia(hs) {
        let alice = hs.user("deact3").await;
        let resp = alice.post(&format!("{V3}/account/deactivate"), &json!({})).await;
        assert!(resp.expect(401)["flows"].is_array());
        alice.whoami().await.ok();
    }
}

conformance_test! {
    /// §Adding Account Administrative Contact Information: a fresh account has no third-party IDs.
    async fn fresh_account_has_no_threepids(hs) {
        let alice = hs.user("3pid").await;
        let resp = alice.get(&format!("{V3}/account/3pid")).await;
        assert_eq!(resp.ok()["threepids"], json!([]));
    }
}
