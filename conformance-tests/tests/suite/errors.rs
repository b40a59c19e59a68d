//! Client-Server API §"API Standards": standard error responses (`M_NOT_JSON`, `M_BAD_JSON`,
//! `M_MISSING_TOKEN`, `M_UNKNOWN_TOKEN`, `M_UNRECOGNIZED`, `M_TOO_LARGE`), access token
//! transport, and §"Web Browser Clients" (CORS).

use conformance_tests::{V3, conformance_test, enc};
use serde_json::json;

const JSON: (&str, &str) = ("content-type", "application/json");

conformance_test! {
    /// §Standard error response: a body that is not JSON fails with 400 `M_NOT_JSON`.
    async fn malformed_json_is_m_not_json(hs) {
        let alice = hs.user("err").await;
        let resp = alice.raw("POST", &format!("{V3}/createRoom"), Some(b"{not json".to_vec()), &[JSON]).await;
        resp.expect_err(400, "M_NOT_JSON");
    }
}

conformance_test! {
    /// §Standard error response: valid JSON that is not an object where one is required fails
    /// with 400 `M_BAD_JSON`.
    async fn json_array_body_is_m_bad_json(hs) {
        let alice = hs.user("err2").await;
        let room = alice.create_room(json!({})).await;
        let path = format!("{V3}/rooms/{}/send/m.room.message/{}", enc(&room), alice.txn_id());
        alice.raw("PUT", &path, Some(b"[1, 2, 3]".to_vec()), &[JSON]).await.expect_err(400, "M_BAD_JSON");
    }
}

conformance_test! {
    /// §Standard error response: a field of the wrong type fails with 400 `M_BAD_JSON`
    /// (`room_version` must be a string).
    async fn wrong_type_room_version_is_m_bad_json(hs) {
        let alice = hs.user("err3").await;
        alice.post(&format!("{V3}/createRoom"), &json!({"room_version": 5})).await.expect_err(400, "M_BAD_JSON");
    }
}

conformance_test! {
    /// §Standard error response: an invalid enum value fails with 400 `M_BAD_JSON`
    /// (`preset` must be one of the presets).
    async fn wrong_type_preset_is_m_bad_json(hs) {
        let alice = hs.user("err4").await;
        alice.post(&format!("{V3}/createRoom"), &json!({"preset": 5})).await.expect_err(400, "M_BAD_JSON");
    }
}

conformance_test! {
    /// §Standard error response: `room_id` of the wrong type when creating an alias fails with
    /// 400 `M_BAD_JSON`.
    async fn wrong_type_alias_room_id_is_m_bad_json(hs) {
        let alice = hs.user("err5").await;
        let alias = format!("#bad-{}:{}", conformance_tests::unique_suffix(), alice.server_name());
        alice.put(&format!("{V3}/directory/room/{}", enc(&alias)), &json!({"room_id": 5})).await.expect_err(400, "M_BAD_JSON");
    }
}

conformance_test! {
    /// §Standard error response: a device `display_name` that is not a string fails with 400
    /// `M_BAD_JSON`.
    async fn wrong_type_device_name_is_m_bad_json(hs) {
        let alice = hs.user("err6").await;
        alice.put(&format!("{V3}/devices/{}", enc(&alice.device_id)), &json!({"display_name": 5}))
            .await
            .expect_err(400, "M_BAD_JSON");
    }
}

conformance_test! {
    /// §Client authentication: a request without a token to an authenticated endpoint fails with
    /// 401 `M_MISSING_TOKEN`.
    async fn missing_token_is_401(hs) {
        hs.anonymous().get(&format!("{V3}/joined_rooms")).await.expect_err(401, "M_MISSING_TOKEN");
    }
}

conformance_test! {
    /// §Client authentication: an unknown token fails with 401 `M_UNKNOWN_TOKEN`.
    async fn unknown_token_is_401(hs) {
        let c = hs.anonymous().with_token(Some("syt_definitely_not_a_real_token"));
        c.get(&format!("{V3}/joined_rooms")).await.expect_err(401, "M_UNKNOWN_TOKEN");
    }
}

conformance_test! {
    /// §Client authentication: the access token may be given as the `access_token` query
    /// parameter (deprecated, still supported).
    async fn token_in_query_parameter(hs) {
        let alice = hs.user("err7").await;
        let token = alice.access_token.clone().unwrap();
        let anon = hs.anonymous();
        let resp = anon.get(&format!("{V3}/account/whoami?access_token={}", enc(&token))).await;
        assert_eq!(resp.ok()["user_id"], json!(alice.user_id));
    }
}

conformance_test! {
    /// §Standard error response: an unknown endpoint fails with 404 `M_UNRECOGNIZED`.
    async fn unknown_endpoint_is_404_unrecognized(hs) {
        let alice = hs.user("err8").await;
        alice.get(&format!("{V3}/org.hearth.conformance/no_such_endpoint")).await.expect_err(404, "M_UNRECOGNIZED");
        hs.anonymous().get("/_matrix/client/v3/no_such_endpoint_either").await.expect_err(404, "M_UNRECOGNIZED");
    }
}

conformance_test! {
    /// §Standard error response: a known endpoint with an unsupported method fails with 405
    /// `M_UNRECOGNIZED`.
    async fn wrong_method_is_405_unrecognized(hs) {
        let alice = hs.user("err9").await;
        alice.request("POST", &format!("{V3}/account/whoami"), Some(&json!({}))).await.expect_err(405, "M_UNRECOGNIZED");
    }
}

conformance_test! {
    /// §Size limits: an event larger than 65536 bytes fails with 413 `M_TOO_LARGE`.
    async fn oversized_event_is_413(hs) {
        let alice = hs.user("err10").await;
        let room = alice.create_room(json!({})).await;
        let content = json!({"msgtype": "m.text", "body": "x".repeat(70_000)});
        alice.send_txn(&room, "m.room.message", &alice.txn_id(), &content).await.expect_err(413, "M_TOO_LARGE");
    }
}

conformance_test! {
    /// §Size limits: an oversized state event is refused with 413 `M_TOO_LARGE` too.
    async fn oversized_state_event_is_413(hs) {
        let alice = hs.user("err11").await;
        let room = alice.create_room(json!({})).await;
        alice.put_state(&room, "org.hearth.conformance.big", "", &json!({"data": "y".repeat(70_000)}))
            .await
            .expect_err(413, "M_TOO_LARGE");
    }
}

conformance_test! {
    /// §Size limits: an event just under the limit is accepted.
    async fn large_event_under_limit_is_accepted(hs) {
        let alice = hs.user("err12").await;
        let room = alice.create_room(json!({})).await;
        let content = json!({"msgtype": "m.text", "body": "z".repeat(60_000)});
        alice.send_txn(&room, "m.room.message", &alice.txn_id(), &content).await.ok();
    }
}

conformance_test! {
    /// §Web Browser Clients: an OPTIONS preflight succeeds with the CORS headers the spec lists
    /// (`Access-Control-Allow-Origin: *`, methods GET/POST/PUT/DELETE/OPTIONS, headers
    /// X-Requested-With/Content-Type/Authorization).
    async fn cors_preflight(hs) {
        let anon = hs.anonymous();
        let resp = anon.raw("OPTIONS", &format!("{V3}/account/whoami"), None, &[
            ("origin", "https://client.example.org"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ]).await;
        assert!(resp.status == 200 || resp.status == 204, "preflight status {}", resp.status);
        assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
        let methods = resp.header("access-control-allow-methods").unwrap_or("").to_uppercase();
        for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "allow-methods lacks {m}: {methods}");
        }
        let headers = resp.header("access-control-allow-headers").unwrap_or("").to_lowercase();
        for h in ["x-requested-with", "content-type", "authorization"] {
            assert!(headers.contains(h), "allow-headers lacks {h}: {headers}");
        }
    }
}

conformance_test! {
    /// §Web Browser Clients: ordinary responses (success and error) carry
    /// `Access-Control-Allow-Origin: *`.
    async fn cors_headers_on_responses(hs) {
        let anon = hs.anonymous();
        let ok = anon.raw("GET", "/_matrix/client/versions", None, &[("origin", "https://client.example.org")]).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("access-control-allow-origin"), Some("*"));
        let err = anon.raw("GET", &format!("{V3}/joined_rooms"), None, &[("origin", "https://client.example.org")]).await;
        assert_eq!(err.status, 401);
        assert_eq!(err.header("access-control-allow-origin"), Some("*"));
    }
}

conformance_test! {
    /// §Standard error response: error bodies are JSON objects with `errcode` and `error`, served
    /// as `application/json`.
    async fn errors_are_json(hs) {
        let resp = hs.anonymous().get(&format!("{V3}/joined_rooms")).await;
        assert_eq!(resp.status, 401);
        assert!(resp.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{:?}", resp.headers);
        assert!(resp.body["errcode"].is_string() && resp.body["error"].is_string(), "{}", resp.text);
    }
}
