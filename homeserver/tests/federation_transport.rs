//! Federation identity and transport, on the real binary: the TLS 1.3-only listener, the
//! server's key response and key rotation, X-Matrix authentication of incoming requests, two
//! Hearth servers fetching each other's keys (directly and through the notary), a misbehaving
//! server refused with bounded time and memory, and outbound requests kept off loopback unless
//! the operator allows it.

mod common;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::federation::{dev_cert, tls_front};
use common::{Backend, RATE_LIMIT_FIELDS, Server, free_port, hearth_command};
use hearth::{config::FederationConfig, federation::FederationClient};
use hearth_federation::{SigningKey, request_auth, server_keys};
use reqwest::{Method, StatusCode};
use ruma::{CanonicalJsonObject, ServerName};
use rustls::{
    ClientConfig, RootCertStore,
    crypto::ring,
    pki_types::{CertificateDer, pem::PemObject},
};
use serde_json::{Value, json};
use sqlx::Row;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header as header_is, method, path},
};

const LOOPBACK: &str = "allow_ip_ranges = [\"127.0.0.1/32\"]\n";

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).unwrap()
}

/// The `[federation]` section of a server listening on `port`.
fn federation_section(port: u16, cert: &Path, key: &Path, more: &str) -> String {
    format!(
        "[federation]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntls_certificate = \"{}\"\n\
         tls_private_key = \"{}\"\n{more}",
        cert.display(),
        key.display()
    )
}

/// A federation server: the Hearth process, its name and its federation port.
struct Fed {
    server: Server,
    name: String,
    port: u16,
}

async fn start(server_name: &str, port: u16, cert: &Path, key: &Path, more: &str, tail: &str) -> Fed {
    let extra = format!("{}\n{tail}", federation_section(port, cert, key, more));
    let server = Server::start_named(
        Backend::from_env(),
        server_name,
        "",
        &format!("enabled = false\n{RATE_LIMIT_FIELDS}"),
        &extra,
    )
    .await;
    Fed {
        server,
        name: server_name.to_owned(),
        port,
    }
}

/// Starts one federating server with its own dev certificate.
async fn start_one(server_name: &str, more: &str) -> (Fed, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = dev_cert(certs.path(), server_name);
    let fed = start(server_name, free_port(), &cert, &key, more, "").await;
    (fed, certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn roots(ca: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A federation client (Hearth's own) that trusts `ca` and finds `server_name` on
/// 127.0.0.1:`port`.
fn https_client(ca: &Path, server_name: &str, port: u16) -> FederationClient {
    let mut config = FederationConfig {
        ca_files: vec![ca.to_owned()],
        allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    config
        .resolve
        .insert(server_name.to_owned(), format!("127.0.0.1:{port}"));
    FederationClient::new("tester.invalid".try_into().unwrap(), &config).unwrap()
}

impl Fed {
    /// Where a request goes: (server name, path).
    fn url(&self, path: &str) -> (String, String) {
        (self.name.clone(), path.to_owned())
    }

    fn client(&self, certs: &Path) -> FederationClient {
        https_client(&certs.join(format!("{}.crt", self.name)), &self.name, self.port)
    }

    /// The server's current signing key, read from its database.
    async fn signing_key(&self) -> SigningKey {
        let db = self.server.db().await;
        let row = sqlx::query(
            "SELECT key_id, pkcs8 FROM server_signing_keys WHERE expired_ts IS NULL \
             ORDER BY created_ts DESC LIMIT 1",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let key_id: String = row.get(0);
        let pkcs8: String = row.get(1);
        SigningKey::from_pkcs8(
            &STANDARD.decode(pkcs8).unwrap(),
            key_id.strip_prefix("ed25519:").unwrap(),
        )
        .unwrap()
    }

    async fn remote_key_count(&self, server: &str) -> i64 {
        let db = self.server.db().await;
        sqlx::query("SELECT COUNT(*) FROM remote_server_keys WHERE server_name = $1")
            .bind(server.to_owned())
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0)
    }
}

async fn send(
    http: &FederationClient,
    method: &str,
    (server, path): &(String, String),
    body: Option<Value>,
    auth: Option<String>,
) -> (StatusCode, Value) {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    let (status, body) = http
        .request(method, name(server), path, body, auth, 16 << 20)
        .await
        .unwrap_or_else(|e| panic!("{method} {server}{path}: {e}"));
    (
        StatusCode::from_u16(status).unwrap(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

async fn get_json(
    http: &FederationClient,
    url: &(String, String),
    auth: Option<String>,
) -> (StatusCode, Value) {
    send(http, "GET", url, None, auth).await
}

fn canonical(value: &Value) -> CanonicalJsonObject {
    serde_json::from_value(value.clone()).unwrap()
}

#[tokio::test]
async fn the_listener_speaks_tls_1_3_only() {
    let (a, certs) = start_one("hs-a.test", "").await;
    let ca = certs.path().join("hs-a.test.crt");
    let connect = |version: &'static rustls::SupportedProtocolVersion| {
        let ca = ca.clone();
        let port = a.port;
        async move {
            let config = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots(&ca))
                .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect("hs-a.test".try_into().unwrap(), tcp)
                .await
        }
    };
    assert!(
        connect(&rustls::version::TLS12).await.is_err(),
        "a TLS 1.2 handshake must be refused"
    );
    assert!(connect(&rustls::version::TLS13).await.is_ok());

    let (status, body) = get_json(
        &a.client(certs.path()),
        &a.url("/_matrix/federation/v1/version"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["server"]["name"], "Hearth");
    // Unknown federation endpoints are the spec's 404 M_UNRECOGNIZED.
    let (status, body) = get_json(
        &a.client(certs.path()),
        &a.url("/_matrix/federation/v1/nothing"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

#[tokio::test]
async fn the_key_response_verifies_and_a_rotation_keeps_the_old_key() {
    let (mut a, certs) = start_one("hs-a.test", "").await;
    let http = a.client(certs.path());
    let (status, first) = get_json(&http, &a.url("/_matrix/key/v2/server"), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let keys = server_keys::verify(&canonical(&first), name("hs-a.test")).expect("self-signed key response");
    let now = common_now();
    assert!(keys.valid_until_ts > now, "valid_until_ts in the future: {first}");
    assert_eq!(keys.verify_keys.len(), 1);
    let old_id = keys.verify_keys.keys().next().unwrap().clone();
    assert!(keys.old_verify_keys.is_empty());
    // Another server's name is refused by the same check.
    assert!(server_keys::verify(&canonical(&first), name("hs-b.test")).is_err());

    a.server.stop().await;
    let output = hearth_command()
        .arg("keys")
        .arg("rotate")
        .arg("--config")
        .arg(a.server.config_path())
        .output()
        .expect("run hearth keys rotate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    a.server.restart().await;

    let (_, second) = get_json(&http, &a.url("/_matrix/key/v2/server"), None).await;
    let keys = server_keys::verify(&canonical(&second), name("hs-a.test")).expect("signed by the new key");
    assert!(!keys.verify_keys.contains_key(&old_id), "{second}");
    let (old_key, expired_ts) = &keys.old_verify_keys[&old_id];
    assert_eq!(
        old_key.encode(),
        first["verify_keys"][&old_id]["key"].as_str().unwrap()
    );
    assert!(*expired_ts >= now && *expired_ts <= common_now(), "{second}");
    assert_eq!(second["signatures"]["hs-a.test"].as_object().unwrap().len(), 1);
}

fn common_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn signed_requests_pass_and_unsigned_forged_or_misaddressed_ones_get_401() {
    let (a, certs) = start_one("hs-a.test", "").await;
    let alice = a.server.register("alice").await;
    alice
        .ok(
            Method::PUT,
            &format!("/profile/{}/displayname", alice.user_id),
            Some(&json!({ "displayname": "Alice" })),
        )
        .await;
    let http = a.client(certs.path());
    let uri = format!(
        "/_matrix/federation/v1/query/profile?user_id={}&field=displayname",
        "%40alice%3Ahs-a.test"
    );
    let url = a.url(&uri);
    let key = a.signing_key().await;
    let sign = |key: &SigningKey, origin: &str, destination: &str, uri: &str| {
        request_auth::sign(
            key,
            name(origin),
            name(destination),
            &request_auth::Method::GET,
            uri,
            None,
        )
        .unwrap()
    };

    // Signed by the server itself (its own key needs no fetch).
    let (status, body) = get_json(&http, &url, Some(sign(&key, "hs-a.test", "hs-a.test", &uri))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["displayname"], "Alice");

    let refused = |(status, body): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    };
    // No header, another scheme, garbage.
    refused(get_json(&http, &url, None).await);
    refused(get_json(&http, &url, Some("Bearer abc".into())).await);
    refused(
        get_json(
            &http,
            &url,
            Some("X-Matrix origin=\"hs-a.test\",key=\"nope\",sig=\"!\"".into()),
        )
        .await,
    );
    // Forged: another key under the server's key ID.
    let forger = SigningKey::from_pkcs8(SigningKey::generate("x").unwrap().pkcs8(), key.version()).unwrap();
    refused(get_json(&http, &url, Some(sign(&forger, "hs-a.test", "hs-a.test", &uri))).await);
    // Signed for another target, another destination.
    refused(
        get_json(
            &http,
            &url,
            Some(sign(
                &key,
                "hs-a.test",
                "hs-a.test",
                "/_matrix/federation/v1/version",
            )),
        )
        .await,
    );
    refused(get_json(&http, &url, Some(sign(&key, "hs-a.test", "other.test", &uri))).await);
    // An unknown key ID, and an origin whose keys cannot be fetched.
    let unknown = SigningKey::generate("unknown").unwrap();
    refused(get_json(&http, &url, Some(sign(&unknown, "hs-a.test", "hs-a.test", &uri))).await);
    refused(
        get_json(
            &http,
            &url,
            Some(sign(&unknown, "nowhere.invalid", "hs-a.test", &uri)),
        )
        .await,
    );
}

#[tokio::test]
async fn two_servers_fetch_each_others_keys_and_accept_each_others_requests() {
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = dev_cert(certs.path(), "hs-a.test");
    let (b_cert, b_key) = dev_cert(certs.path(), "hs-b.test");
    let (a_port, b_port) = (free_port(), free_port());
    let both = format!(
        "{LOOPBACK}ca_files = [\"{}\", \"{}\"]\n",
        a_cert.display(),
        b_cert.display()
    );
    let resolve = format!(
        "[federation.resolve]\n\"hs-a.test\" = \"127.0.0.1:{a_port}\"\n\"hs-b.test\" = \"127.0.0.1:{b_port}\"\n"
    );
    let a = start("hs-a.test", a_port, &a_cert, &a_key, &both, &resolve).await;
    let b = start("hs-b.test", b_port, &b_cert, &b_key, &both, &resolve).await;
    let a_http = a.client(certs.path());

    // A as a notary for B: B's own response, signed by B and by A.
    let (status, answer) = get_json(&a_http, &a.url("/_matrix/key/v2/query/hs-b.test"), None).await;
    assert_eq!(status, StatusCode::OK, "{answer}\n{}", a.server.log_tail());
    let responses = answer["server_keys"].as_array().unwrap();
    assert_eq!(responses.len(), 1, "{answer}\n{}", a.server.log_tail());
    let b_response = canonical(&responses[0]);
    let b_keys = server_keys::verify(&b_response, name("hs-b.test")).unwrap();
    assert_eq!(
        b_keys.verify_keys.keys().next().unwrap(),
        &b.signing_key().await.key_id()
    );
    let (_, a_own) = get_json(&a_http, &a.url("/_matrix/key/v2/server"), None).await;
    let a_keys = server_keys::verify(&canonical(&a_own), name("hs-a.test")).unwrap();
    server_keys::check_signature(&b_response, "hs-a.test", &a_keys.verify_keys)
        .expect("the notary's signature");
    assert_eq!(a.remote_key_count("hs-b.test").await, 1);

    // The batch form, for both servers and one nobody knows.
    let (status, batch) = send(
        &a_http,
        "POST",
        &a.url("/_matrix/key/v2/query"),
        Some(json!({ "server_keys": { "hs-a.test": {}, "hs-b.test": { "ed25519:x": {} } } })),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let mut names: Vec<&str> = batch["server_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["server_name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["hs-a.test", "hs-b.test"]);

    // B signs a request to A: A fetches B's key... already cached; to B, A's key is fetched.
    let bob = b.server.register("bob").await;
    bob.ok(
        Method::PUT,
        &format!("/profile/{}/displayname", bob.user_id),
        Some(&json!({ "displayname": "Bob" })),
    )
    .await;
    let uri = "/_matrix/federation/v1/query/profile?user_id=%40bob%3Ahs-b.test";
    let a_key = a.signing_key().await;
    let auth = request_auth::sign(
        &a_key,
        name("hs-a.test"),
        name("hs-b.test"),
        &request_auth::Method::GET,
        uri,
        None,
    )
    .unwrap();
    let (status, body) = get_json(&b.client(certs.path()), &b.url(uri), Some(auth)).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", b.server.log_tail());
    assert_eq!(body["displayname"], "Bob");
    assert_eq!(b.remote_key_count("hs-a.test").await, 1, "B cached A's key");
    // B's signature checked by A, with B's key from A's cache.
    let b_key = b.signing_key().await;
    let uri = "/_matrix/federation/v1/query/profile?user_id=%40nobody%3Ahs-a.test";
    let auth = request_auth::sign(
        &b_key,
        name("hs-b.test"),
        name("hs-a.test"),
        &request_auth::Method::GET,
        uri,
        None,
    )
    .unwrap();
    let (status, body) = get_json(&a_http, &a.url(uri), Some(auth)).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "authenticated, then no such user: {body}"
    );
}

#[tokio::test]
async fn outbound_requests_to_loopback_are_refused_unless_allowed() {
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = dev_cert(certs.path(), "hs-a.test");
    let (b_cert, b_key) = dev_cert(certs.path(), "hs-b.test");
    let (a_port, b_port) = (free_port(), free_port());
    let trust = format!("ca_files = [\"{}\"]\n", b_cert.display());
    let resolve = format!("[federation.resolve]\n\"hs-b.test\" = \"127.0.0.1:{b_port}\"\n");
    // No allow_ip_ranges: B on 127.0.0.1 is out of reach, by its name and as an IP literal.
    let a = start("hs-a.test", a_port, &a_cert, &a_key, &trust, &resolve).await;
    let _b = start("hs-b.test", b_port, &b_cert, &b_key, LOOPBACK, "").await;
    let http = a.client(certs.path());
    for server in ["hs-b.test".to_owned(), format!("127.0.0.1:{b_port}")] {
        let (status, answer) =
            get_json(&http, &a.url(&format!("/_matrix/key/v2/query/{server}")), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["server_keys"], json!([]), "{server}: {answer}");
    }
    assert!(
        a.server.log_tail().contains("federation may use"),
        "{}",
        a.server.log_tail()
    );
    assert_eq!(a.remote_key_count("hs-b.test").await, 0);
}

#[tokio::test]
async fn a_misbehaving_server_is_refused_in_bounded_time_and_memory() {
    let mock = MockServer::start().await;
    let certs = tempfile::tempdir().unwrap();
    let names = [
        "good.test",
        "slow.test",
        "garbage.test",
        "huge.test",
        "forged.test",
        "other.test",
    ];
    let (front, front_ca) = tls_front(*mock.address(), &names, certs.path()).await;
    let keys_path = "/_matrix/key/v2/server";
    let serve = |host: &str, response: ResponseTemplate| {
        Mock::given(method("GET"))
            .and(path(keys_path))
            .and(header_is("host", host))
            .respond_with(response)
    };
    let valid_until = common_now() + 3_600_000;
    let good_key = SigningKey::generate("good").unwrap();
    let good = server_keys::build(name("good.test"), &good_key, &[], valid_until);
    serve("good.test", ResponseTemplate::new(200).set_body_json(&good))
        .mount(&mock)
        .await;
    serve(
        "slow.test",
        ResponseTemplate::new(200)
            .set_body_json(&good)
            .set_delay(Duration::from_secs(120)),
    )
    .mount(&mock)
    .await;
    serve(
        "garbage.test",
        ResponseTemplate::new(200).set_body_string("{\"server_name\": \"garb"),
    )
    .mount(&mock)
    .await;
    serve(
        "huge.test",
        ResponseTemplate::new(200).set_body_string(" ".repeat(8 << 20)),
    )
    .mount(&mock)
    .await;
    // A valid response of good.test, served as forged.test's: wrong server; and one with its
    // name changed after signing: a bad signature.
    let mut forged = server_keys::build(name("forged.test"), &good_key, &[], valid_until);
    forged.insert(
        "valid_until_ts".into(),
        ruma::CanonicalJsonValue::Integer((valid_until + 1).try_into().unwrap()),
    );
    serve("forged.test", ResponseTemplate::new(200).set_body_json(&forged))
        .mount(&mock)
        .await;
    serve("other.test", ResponseTemplate::new(200).set_body_json(&good))
        .mount(&mock)
        .await;

    let resolve: String = names
        .iter()
        .map(|n| format!("\"{n}\" = \"127.0.0.1:{front}\"\n"))
        .collect();
    let (a_cert, a_key) = dev_cert(certs.path(), "hs-a.test");
    let a = start(
        "hs-a.test",
        free_port(),
        &a_cert,
        &a_key,
        &format!("{LOOPBACK}ca_files = [\"{}\"]\n", front_ca.display()),
        &format!("[federation.resolve]\n{resolve}"),
    )
    .await;
    let http = a.client(certs.path());
    let query = |server: &str| {
        let url = a.url(&format!("/_matrix/key/v2/query/{server}"));
        let http = &http;
        async move {
            let started = Instant::now();
            let (status, answer) = get_json(http, &url, None).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            (answer["server_keys"].as_array().unwrap().len(), started.elapsed())
        }
    };

    // The control: a well-behaved server's keys come through the same front.
    let (found, _) = query("good.test").await;
    assert_eq!(found, 1, "{}", a.server.log_tail());
    for (server, limit) in [
        ("slow.test", Duration::from_secs(20)),
        ("garbage.test", Duration::from_secs(5)),
        ("huge.test", Duration::from_secs(5)),
        ("forged.test", Duration::from_secs(5)),
        ("other.test", Duration::from_secs(5)),
    ] {
        let (found, took) = query(server).await;
        assert_eq!(
            found,
            0,
            "{server}'s keys must be refused:\n{}",
            a.server.log_tail()
        );
        assert!(took < limit, "{server} took {took:?}");
        assert_eq!(a.remote_key_count(server).await, 0, "{server}");
    }
    let log = a.server.log_tail();
    assert!(log.contains("took too long"), "{log}");
    assert!(log.contains("more than"), "{log}");
    assert!(log.contains("not valid") || log.contains("signed"), "{log}");
    assert!(
        log.contains("not good.test") || log.contains("is for good.test"),
        "{log}"
    );
}

#[tokio::test]
async fn keys_of_an_unreachable_server_come_through_a_trusted_key_server() {
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = dev_cert(certs.path(), "hs-a.test");
    let (b_cert, b_key) = dev_cert(certs.path(), "hs-b.test");
    let (c_cert, c_key) = dev_cert(certs.path(), "hs-c.test");
    let (a_port, b_port, c_port, closed) = (free_port(), free_port(), free_port(), free_port());
    let c = start("hs-c.test", c_port, &c_cert, &c_key, "", "").await;
    // B, the notary, reaches C.
    let b = start(
        "hs-b.test",
        b_port,
        &b_cert,
        &b_key,
        &format!("{LOOPBACK}ca_files = [\"{}\"]\n", c_cert.display()),
        &format!("[federation.resolve]\n\"hs-c.test\" = \"127.0.0.1:{c_port}\"\n"),
    )
    .await;
    let b_signing = b.signing_key().await;
    // A cannot reach C (nothing listens where it looks), but trusts B with B's key.
    let a = start(
        "hs-a.test",
        a_port,
        &a_cert,
        &a_key,
        &format!("{LOOPBACK}ca_files = [\"{}\"]\n", b_cert.display()),
        &format!(
            "[federation.resolve]\n\"hs-b.test\" = \"127.0.0.1:{b_port}\"\n\"hs-c.test\" = \"127.0.0.1:{closed}\"\n\
             [[trusted_key_servers]]\nserver_name = \"hs-b.test\"\nverify_keys = {{ \"{}\" = \"{}\" }}\n",
            b_signing.key_id(),
            b_signing.public_key_base64()
        ),
    )
    .await;
    let (status, answer) = get_json(
        &a.client(certs.path()),
        &a.url("/_matrix/key/v2/query/hs-c.test"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let responses = answer["server_keys"].as_array().unwrap();
    assert_eq!(responses.len(), 1, "{answer}\n{}", a.server.log_tail());
    let response = canonical(&responses[0]);
    let keys = server_keys::verify(&response, name("hs-c.test")).unwrap();
    assert_eq!(
        keys.verify_keys.keys().next().unwrap(),
        &c.signing_key().await.key_id()
    );
    // Handed out with A's signature beside C's; B's was checked and dropped.
    let signers: Vec<&String> = responses[0]["signatures"].as_object().unwrap().keys().collect();
    assert_eq!(signers, ["hs-a.test", "hs-c.test"]);
    assert_eq!(a.remote_key_count("hs-c.test").await, 1);
    assert!(
        a.server.log_tail().contains("direct key fetch failed"),
        "{}",
        a.server.log_tail()
    );

    // A server that has the notary's key wrong refuses the notary's answer.
    let wrong = SigningKey::generate("wrong").unwrap();
    let a2 = start(
        "hs-a.test",
        free_port(),
        &a_cert,
        &a_key,
        &format!("{LOOPBACK}ca_files = [\"{}\"]\n", b_cert.display()),
        &format!(
            "[federation.resolve]\n\"hs-b.test\" = \"127.0.0.1:{b_port}\"\n\"hs-c.test\" = \"127.0.0.1:{closed}\"\n\
             [[trusted_key_servers]]\nserver_name = \"hs-b.test\"\nverify_keys = {{ \"{}\" = \"{}\" }}\n",
            b_signing.key_id(),
            wrong.public_key_base64()
        ),
    )
    .await;
    let (_, answer) = get_json(
        &a2.client(certs.path()),
        &a2.url("/_matrix/key/v2/query/hs-c.test"),
        None,
    )
    .await;
    assert_eq!(answer["server_keys"], json!([]), "{answer}");
    assert_eq!(a2.remote_key_count("hs-c.test").await, 0);
    assert!(
        a2.server.log_tail().contains("notary key fetch failed"),
        "{}",
        a2.server.log_tail()
    );
}
