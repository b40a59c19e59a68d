//! Client-Server API §"Device management": `GET /devices`, `GET/PUT/DELETE /devices/{deviceId}`,
//! `POST /delete_devices`.

use conformance_tests::{V3, conformance_test, enc};
use serde_json::{Value, json};

fn device_ids(body: &Value) -> Vec<String> {
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["device_id"].as_str().map(String::from))
        .collect()
}

conformance_test! {
    /// §Device management: `GET /devices` lists the current device.
    async fn list_contains_current_device(hs) {
        let alice = hs.user("dev").await;
        let resp = alice.get(&format!("{V3}/devices")).await;
        assert!(device_ids(resp.ok()).contains(&alice.device_id));
    }
}

conformance_test! {
    /// §Device management: `GET /devices` lists every device of the user (one per login).
    async fn list_contains_all_logins(hs) {
        let alice = hs.user("dev2").await;
        let second = alice.login_again().await;
        let ids = device_ids(alice.get(&format!("{V3}/devices")).await.ok());
        assert!(ids.contains(&alice.device_id) && ids.contains(&second.device_id), "{ids:?}");
    }
}

conformance_test! {
    /// §Device management: `GET /devices/{deviceId}` returns that device.
    async fn get_single_device(hs) {
        let alice = hs.user("dev3").await;
        let resp = alice.get(&format!("{V3}/devices/{}", enc(&alice.device_id))).await;
        assert_eq!(resp.ok()["device_id"], json!(alice.device_id));
    }
}

conformance_test! {
    /// §Device management: an unknown device ID answers 404 `M_NOT_FOUND`.
    async fn get_unknown_device_is_404(hs) {
        let alice = hs.user("dev4").await;
        alice.get(&format!("{V3}/devices/NOSUCHDEVICE")).await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §Device management: `PUT /devices/{deviceId}` updates the display name.
    async fn rename_device(hs) {
        let alice = hs.user("dev5").await;
        let path = format!("{V3}/devices/{}", enc(&alice.device_id));
        alice.put(&path, &json!({"display_name": "Renamed by conformance"})).await.ok();
        assert_eq!(alice.get(&path).await.ok()["display_name"], json!("Renamed by conformance"));
    }
}

conformance_test! {
    /// §Device management: another user's devices are not visible (404 for their device ID).
    async fn cannot_see_other_users_device(hs) {
        let alice = hs.user("dev6").await;
        let bob = hs.user("dev6b").await;
        bob.get(&format!("{V3}/devices/{}", enc(&alice.device_id))).await.expect_err(404, "M_NOT_FOUND");
    }
}

conformance_test! {
    /// §Device management: `DELETE /devices/{deviceId}` requires user-interactive auth; once
    /// completed the device is gone and its token is invalid.
    async fn delete_device_with_uia(hs) {
        let alice = hs.user("dev7").await;
        let second = alice.login_again().await;
        let path = format!("{V3}/devices/{}", enc(&second.device_id));
        let first = alice.delete(&path).await;
        assert!(first.expect(401)["flows"].is_array());
        alice.with_password_auth("DELETE", &path, json!({})).await.ok();
        second.whoami().await.expect_err(401, "M_UNKNOWN_TOKEN");
        assert!(!device_ids(alice.get(&format!("{V3}/devices")).await.ok()).contains(&second.device_id));
    }
}

conformance_test! {
    /// §Device management: `POST /delete_devices` removes several devices at once (with UIA).
    async fn delete_devices_bulk(hs) {
        let alice = hs.user("dev8").await;
        let d2 = alice.login_again().await;
        let d3 = alice.login_again().await;
        alice.with_password_auth("POST", &format!("{V3}/delete_devices"),
            json!({"devices": [d2.device_id, d3.device_id]})).await.ok();
        let ids = device_ids(alice.get(&format!("{V3}/devices")).await.ok());
        assert!(!ids.contains(&d2.device_id) && !ids.contains(&d3.device_id), "{ids:?}");
        assert!(ids.contains(&alice.device_id));
        d2.whoami().await.expect_err(401, "M_UNKNOWN_TOKEN");
    }
}
