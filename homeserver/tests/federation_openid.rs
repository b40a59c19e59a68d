//! OpenID over the real binary: a user requests a token on the Client-Server API, a third party
//! learns who it belongs to from `GET /_matrix/federation/v1/openid/userinfo` (unsigned), and
//! unknown, missing, expired and access tokens are 401 `M_UNKNOWN_TOKEN`. The server runs with
//! `testing.adjustable_clock`, so expiry is tested by moving the clock, not by waiting an hour.

mod common;

use common::federation::dev_cert;
use common::{Backend, Client, RATE_LIMIT_FIELDS, Server, count, encode, free_port};
use hearth::{config::FederationConfig, federation::FederationClient};
use reqwest::{Method, StatusCode};
use ruma::ServerName;
use serde_json::{Value, json};

struct Fed {
    server: Server,
    port: u16,
    certs: tempfile::TempDir,
}

async fn start() -> Fed {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = dev_cert(certs.path(), "hs-a.test");
    let port = free_port();
    let server = Server::start_named(
        Backend::from_env(),
        "hs-a.test",
        "",
        &format!("enabled = false\n{RATE_LIMIT_FIELDS}"),
        &format!(
            "[testing]\nadjustable_clock = true\n[federation]\nenabled = true\n\
             listen = \"127.0.0.1:{port}\"\ntls_certificate = \"{}\"\ntls_private_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    Fed { server, port, certs }
}

impl Fed {
    /// `GET /_matrix/federation/v1/openid/userinfo` with `query`, unsigned, as a third party.
    async fn userinfo(&self, query: &str) -> (StatusCode, Value) {
        let mut config = FederationConfig {
            ca_files: vec![self.certs.path().join("hs-a.test.crt")],
            allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
            ..Default::default()
        };
        config
            .resolve
            .insert("hs-a.test".into(), format!("127.0.0.1:{}", self.port));
        let client = FederationClient::new("third.party".try_into().unwrap(), &config).unwrap();
        let server = <&ServerName>::try_from("hs-a.test").unwrap();
        let uri = format!("/_matrix/federation/v1/openid/userinfo{query}");
        let (status, body) = client
            .request("GET", server, &uri, None, None, 1 << 20)
            .await
            .unwrap();
        (
            StatusCode::from_u16(status).unwrap(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }
}

async fn request_token(client: &Client, user_id: &str) -> (StatusCode, Value) {
    client
        .request(
            Method::POST,
            &format!("/user/{}/openid/request_token", encode(user_id)),
            Some(&json!({})),
        )
        .await
}

async fn advance(client: &Client, ms: i64) {
    let resp = client
        .http
        .post(format!("{}/_hearth/testing/v1/clock/advance", client.base_url))
        .bearer_auth(client.token.as_deref().unwrap())
        .json(&json!({ "ms": ms }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn openid_tokens_identify_their_user_until_they_expire() {
    let fed = start().await;
    let alice = fed.server.register("alice").await;
    let bob = fed.server.register("bob").await;

    let (status, answer) = request_token(&alice, &alice.user_id).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["matrix_server_name"], "hs-a.test");
    assert_eq!(answer["expires_in"], 3600);
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let (status, info) = fed.userinfo(&format!("?access_token={}", encode(&token))).await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info, json!({ "sub": alice.user_id }));
    // Stored as a hash only.
    let db = fed.server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM openid_tokens WHERE token_hash = $1",
            &[&token]
        )
        .await,
        0
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM openid_tokens", &[]).await, 1);

    // Someone else's user ID, or no access token: refused.
    let (status, body) = request_token(&alice, &bob.user_id).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
    );
    let (status, body) = request_token(&fed.server.anon(), &alice.user_id).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("M_MISSING_TOKEN"))
    );

    // Unknown, missing, and an access token (which is not an OpenID token): 401.
    let access = alice.token.clone().unwrap();
    for query in [
        "?access_token=nope".to_owned(),
        String::new(),
        "?access_token=".to_owned(),
        format!("?access_token={}", encode(&access)),
    ] {
        let (status, body) = fed.userinfo(&query).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")),
            "{query}: {body}"
        );
    }

    // Still valid just before the hour is up; not after.
    advance(&alice, 3_600_000 - 60_000).await;
    let (status, _) = fed.userinfo(&format!("?access_token={}", encode(&token))).await;
    assert_eq!(status, StatusCode::OK);
    advance(&alice, 61_000).await;
    let (status, body) = fed.userinfo(&format!("?access_token={}", encode(&token))).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN"))
    );
    // A new token works, and making it removed the expired one.
    let (_, answer) = request_token(&bob, &bob.user_id).await;
    let (status, info) = fed
        .userinfo(&format!(
            "?access_token={}",
            encode(answer["access_token"].as_str().unwrap())
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["sub"], bob.user_id.as_str());
    assert_eq!(count(&db, "SELECT COUNT(*) FROM openid_tokens", &[]).await, 1);
}
