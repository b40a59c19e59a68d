//! Media over federation, on the real binary: A serves its uploads on
//! `/_matrix/federation/v1/media/{download,thumbnail}` (signed requests only, its own media
//! only); B's clients download and thumbnail A's media through B, which fetches it once and
//! serves it from its store after (A stopped). A fake server (wiremock behind a TLS front)
//! misbehaves — garbage multipart, oversized files, a slow answer, 404, 500, a `Location` — and
//! B answers its client with the spec's error, keeps nothing of a failed fetch, and stays up.

mod common;

use std::{
    io::Cursor,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use common::federation::{dev_cert, tls_front};
use common::{Backend, Client, RATE_LIMIT_FIELDS, Server, count, free_port};
use hearth::{config::FederationConfig, federation::FederationClient};
use hearth_federation::{SigningKey, request_auth};
use image::{DynamicImage, ImageFormat, RgbImage};
use reqwest::{Method, StatusCode, header::HeaderMap};
use ruma::{
    ServerName,
    api::{
        IncomingResponseExt,
        federation::authenticated_media::{FileOrLocation, get_content, get_content_thumbnail},
    },
};
use serde_json::Value;
use sqlx::Row;
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header as header_is, header_exists, method, path, path_regex},
};

/// B's upload limit (and so the most it takes from another server).
const MAX_BYTES: usize = 256 * 1024;

fn name(s: &str) -> &ServerName {
    <&ServerName>::try_from(s).unwrap()
}

struct Fed {
    server: Server,
    name: String,
    port: u16,
}

/// Starts a federating Hearth trusting `cas`, finding servers at `resolve` (name → port).
async fn start(server_name: &str, certs: &Path, cas: &[PathBuf], resolve: &[(&str, u16)], port: u16) -> Fed {
    let (cert, key) = (
        certs.join(format!("{server_name}.crt")),
        certs.join(format!("{server_name}.key")),
    );
    let cas: Vec<String> = cas.iter().map(|c| format!("\"{}\"", c.display())).collect();
    let entries: String = resolve
        .iter()
        .map(|(n, p)| format!("\"{n}\" = \"127.0.0.1:{p}\"\n"))
        .collect();
    let extra = format!(
        "[media]\nmax_upload_bytes = {MAX_BYTES}\n\
         [federation]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntls_certificate = \"{}\"\n\
         tls_private_key = \"{}\"\nallow_ip_ranges = [\"127.0.0.1/32\"]\nca_files = [{}]\n\
         [federation.resolve]\n{entries}",
        cert.display(),
        key.display(),
        cas.join(", ")
    );
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

impl Fed {
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

    /// `media` rows held for `server_name`'s media.
    async fn media_rows(&self, server_name: &str) -> i64 {
        let db = self.server.db().await;
        count(
            &db,
            "SELECT COUNT(*) FROM media WHERE server_name = $1",
            &[server_name],
        )
        .await
    }

    fn media_dir(&self) -> PathBuf {
        self.server.dir().join("data").join("media")
    }
}

/// A raw client response.
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    fn expect_err(&self, status: StatusCode, errcode: &str) {
        let body = self.json();
        assert_eq!(
            (self.status, body["errcode"].as_str()),
            (status, Some(errcode)),
            "body: {body}"
        );
    }
}

async fn get(client: &Client, path: &str) -> Raw {
    let resp = client
        .http
        .get(format!("{}{path}", client.base_url))
        .bearer_auth(client.token.as_deref().unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    Raw {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

async fn download(client: &Client, mxc: &str) -> Raw {
    get(client, &format!("/_matrix/client/v1/media/download/{mxc}")).await
}

async fn upload(client: &Client, bytes: &[u8], content_type: &str, filename: &str) -> String {
    let resp = client
        .http
        .post(format!(
            "{}/_matrix/media/v3/upload?filename={filename}",
            client.base_url
        ))
        .bearer_auth(client.token.as_deref().unwrap())
        .header("content-type", content_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["content_uri"]
        .as_str()
        .unwrap()
        .strip_prefix("mxc://")
        .unwrap()
        .to_owned()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 7) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A federation request to `to` signed as `from` with `key`: the whole answer.
async fn signed_get(
    certs: &Path,
    to: &Fed,
    from: &str,
    key: Option<&SigningKey>,
    uri: &str,
) -> hearth::federation::client::Answer {
    let mut config = FederationConfig {
        ca_files: vec![certs.join(format!("{}.crt", to.name))],
        allow_ip_ranges: vec!["127.0.0.1/32".parse().unwrap()],
        ..Default::default()
    };
    config
        .resolve
        .insert(to.name.clone(), format!("127.0.0.1:{}", to.port));
    let client = FederationClient::new(from.try_into().unwrap(), &config).unwrap();
    let auth = key.map(|key| {
        request_auth::sign(
            key,
            name(from),
            name(&to.name),
            &request_auth::Method::GET,
            uri,
            None,
        )
        .unwrap()
    });
    client
        .request_within(
            "GET",
            name(&to.name),
            uri,
            None,
            auth,
            16 << 20,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("GET {uri}: {e}"))
}

fn as_http(answer: &hearth::federation::client::Answer) -> axum::http::Response<&[u8]> {
    let mut response = axum::http::Response::new(answer.body.as_slice());
    *response.status_mut() = axum::http::StatusCode::from_u16(answer.status).unwrap();
    *response.headers_mut() = answer.headers.clone();
    response
}

#[tokio::test]
async fn media_uploaded_on_a_is_served_to_b_and_cached_there() {
    let certs = tempfile::tempdir().unwrap();
    dev_cert(certs.path(), "hs-a.test");
    dev_cert(certs.path(), "hs-b.test");
    let cas = [
        certs.path().join("hs-a.test.crt"),
        certs.path().join("hs-b.test.crt"),
    ];
    let (a_port, b_port) = (free_port(), free_port());
    let resolve = [("hs-a.test", a_port), ("hs-b.test", b_port)];
    let mut a = start("hs-a.test", certs.path(), &cas, &resolve, a_port).await;
    let b = start("hs-b.test", certs.path(), &cas, &resolve, b_port).await;
    let alice = a.server.register("alice").await;
    let bob = b.server.register("bob").await;

    let text = "a file from A, \r\n--with a line like a boundary\r\n".repeat(100);
    let text_mxc = upload(&alice, text.as_bytes(), "text/plain; charset=utf-8", "notes.txt").await;
    let image = png(300, 200);
    let image_mxc = upload(&alice, &image, "image/png", "photo.png").await;
    let (_, image_id) = image_mxc.split_once('/').unwrap();

    // A's federation endpoint: signed requests get a multipart answer with the exact bytes.
    let b_key = b.signing_key().await;
    let uri = format!("/_matrix/federation/v1/media/download/{image_id}");
    let answer = signed_get(certs.path(), &a, "hs-b.test", Some(&b_key), &uri).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("multipart/mixed; boundary=")
    );
    let parsed = get_content::v1::Response::try_from_http_response(as_http(&answer)).unwrap();
    let FileOrLocation::File(file) = parsed.content else {
        panic!("A serves the bytes, not a Location");
    };
    assert_eq!(file.file, image);
    assert_eq!(file.content_type.as_deref(), Some("image/png"));
    assert_eq!(
        file.content_disposition.and_then(|d| d.filename).as_deref(),
        Some("photo.png")
    );
    let thumb_uri =
        format!("/_matrix/federation/v1/media/thumbnail/{image_id}?width=32&height=32&method=crop");
    let answer = signed_get(certs.path(), &a, "hs-b.test", Some(&b_key), &thumb_uri).await;
    assert_eq!(answer.status, 200);
    let parsed = get_content_thumbnail::v1::Response::try_from_http_response(as_http(&answer)).unwrap();
    let FileOrLocation::File(file) = parsed.content else {
        panic!("a thumbnail file");
    };
    assert_eq!(image::load_from_memory(&file.file).unwrap().width(), 32);

    // Unsigned, forged, unknown: refused with the spec's errors.
    let answer = signed_get(certs.path(), &a, "hs-b.test", None, &uri).await;
    assert_eq!(answer.status, 401, "{}", String::from_utf8_lossy(&answer.body));
    let forged = SigningKey::generate(b_key.version()).unwrap();
    let answer = signed_get(certs.path(), &a, "hs-b.test", Some(&forged), &uri).await;
    assert_eq!(answer.status, 401);
    let answer = signed_get(
        certs.path(),
        &a,
        "hs-b.test",
        Some(&b_key),
        "/_matrix/federation/v1/media/download/doesNotExist",
    )
    .await;
    assert_eq!(answer.status, 404);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["errcode"], "M_NOT_FOUND");
    let answer = signed_get(
        certs.path(),
        &a,
        "hs-b.test",
        Some(&b_key),
        &format!("/_matrix/federation/v1/media/thumbnail/{image_id}?width=0&height=32"),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", String::from_utf8_lossy(&answer.body));

    // Through B: the same bytes, type and name.
    let got = download(&bob, &text_mxc).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.json());
    assert_eq!(got.body, text.as_bytes());
    assert_eq!(got.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        got.header("content-disposition"),
        Some("inline; filename=\"notes.txt\"")
    );
    let got = download(&bob, &image_mxc).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, image);
    assert_eq!(got.header("content-type"), Some("image/png"));
    let thumb_path = format!("/_matrix/client/v1/media/thumbnail/{image_mxc}?width=32&height=32&method=crop");
    let thumb = get(&bob, &thumb_path).await;
    assert_eq!(thumb.status, StatusCode::OK, "{}", thumb.json());
    assert_eq!(thumb.header("content-type"), Some("image/png"));
    let decoded = image::load_from_memory(&thumb.body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (32, 32));
    let unknown = download(&bob, "hs-a.test/doesNotExist").await;
    unknown.expect_err(StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_eq!(b.media_rows("hs-a.test").await, 2);

    // B never serves A's media to other servers: only its own.
    let a_key = a.signing_key().await;
    let answer = signed_get(certs.path(), &b, "hs-a.test", Some(&a_key), &uri).await;
    assert_eq!(answer.status, 404);

    // With A gone, B still has both files and the thumbnail: no second remote call.
    a.server.stop().await;
    let again = download(&bob, &image_mxc).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.json());
    assert_eq!(again.body, image);
    let again = download(&bob, &text_mxc).await;
    assert_eq!(again.body, text.as_bytes());
    let thumb_again = get(&bob, &thumb_path).await;
    assert_eq!(thumb_again.status, StatusCode::OK);
    assert_eq!(thumb_again.body, thumb.body);
    // An uncached size now needs A, which is down: the client hears 502, not 500.
    let other_size = get(
        &bob,
        &format!("/_matrix/client/v1/media/thumbnail/{image_mxc}?width=640&height=480&method=scale"),
    )
    .await;
    other_size.expect_err(StatusCode::BAD_GATEWAY, "M_UNKNOWN");
}

/// A `multipart/mixed` answer as the spec frames it: metadata, then `part` (headers + body).
fn multipart(part_headers: &str, file: &[u8]) -> ResponseTemplate {
    let mut body = b"\r\n--BOUNDARY\r\nContent-Type: application/json\r\n\r\n{}\r\n--BOUNDARY\r\n".to_vec();
    body.extend_from_slice(part_headers.as_bytes());
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(file);
    body.extend_from_slice(b"\r\n--BOUNDARY--\r\n");
    ResponseTemplate::new(200)
        .set_body_bytes(body)
        .insert_header("content-type", "multipart/mixed; boundary=BOUNDARY")
}

#[tokio::test]
async fn misbehaving_media_servers_get_the_spec_errors_and_nothing_is_cached() {
    let mock = MockServer::start().await;
    let certs = tempfile::tempdir().unwrap();
    let names = [
        "good.test",
        "located.test",
        "garbage.test",
        "notmultipart.test",
        "huge.test",
        "justover.test",
        "slow.test",
        "gone.test",
        "broken.test",
        "htmlthumb.test",
        "127.0.0.1",
    ];
    let (front, front_ca) = tls_front(*mock.address(), &names, certs.path()).await;
    let serve = |host: &str, response: ResponseTemplate| {
        Mock::given(method("GET"))
            .and(path_regex("^/_matrix/federation/v1/media/download/"))
            .and(header_is("host", host))
            .and(header_exists("authorization"))
            .respond_with(response)
    };
    let good_bytes = b"good bytes \x00\xff from a fake server".to_vec();
    serve(
        "good.test",
        multipart(
            "Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"doc.pdf\"\r\n",
            &good_bytes,
        ),
    )
    .mount(&mock)
    .await;
    let thumb = png(32, 32);
    Mock::given(method("GET"))
        .and(path_regex("^/_matrix/federation/v1/media/thumbnail/"))
        .and(header_is("host", "good.test"))
        .respond_with(multipart("Content-Type: image/png\r\n", &thumb))
        .mount(&mock)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("^/_matrix/federation/v1/media/thumbnail/"))
        .and(header_is("host", "htmlthumb.test"))
        .respond_with(multipart(
            "Content-Type: text/html\r\n",
            b"<script>alert(1)</script>",
        ))
        .mount(&mock)
        .await;
    // located.test answers with a Location; the file is elsewhere (the same front, by IP).
    let located_bytes = b"the located file".to_vec();
    serve(
        "located.test",
        multipart(
            &format!("Location: https://127.0.0.1:{front}/files/located\r\n"),
            b"",
        ),
    )
    .mount(&mock)
    .await;
    Mock::given(method("GET"))
        .and(path("/files/located"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_bytes(located_bytes.clone())
                .insert_header("content-type", "text/plain"),
        )
        .mount(&mock)
        .await;
    serve(
        "garbage.test",
        ResponseTemplate::new(200)
            .set_body_bytes(b"this is not multipart at all".to_vec())
            .insert_header("content-type", "multipart/mixed; boundary=BOUNDARY"),
    )
    .mount(&mock)
    .await;
    serve(
        "notmultipart.test",
        ResponseTemplate::new(200)
            .set_body_bytes(b"{}".to_vec())
            .insert_header("content-type", "application/json"),
    )
    .mount(&mock)
    .await;
    serve(
        "huge.test",
        multipart("Content-Type: text/plain\r\n", &vec![b'x'; 4 * MAX_BYTES]),
    )
    .mount(&mock)
    .await;
    serve(
        "justover.test",
        multipart("Content-Type: text/plain\r\n", &vec![b'x'; MAX_BYTES + 1]),
    )
    .mount(&mock)
    .await;
    serve(
        "slow.test",
        multipart("Content-Type: text/plain\r\n", b"late").set_delay(Duration::from_secs(60)),
    )
    .mount(&mock)
    .await;
    serve(
        "gone.test",
        ResponseTemplate::new(404).set_body_json(serde_json::json!({
            "errcode": "M_NOT_FOUND", "error": "no such media"
        })),
    )
    .mount(&mock)
    .await;
    serve("broken.test", ResponseTemplate::new(500).set_body_string("oops"))
        .mount(&mock)
        .await;

    dev_cert(certs.path(), "hs-b.test");
    let resolve: Vec<(&str, u16)> = names
        .iter()
        .filter(|n| n.ends_with(".test"))
        .map(|n| (*n, front))
        .collect();
    let b_port = free_port();
    let b = start(
        "hs-b.test",
        certs.path(),
        &[front_ca, certs.path().join("hs-b.test.crt")],
        &resolve,
        b_port,
    )
    .await;
    let bob = b.server.register("bob").await;

    // The control: a well-behaved fake server's file comes through, once.
    let got = download(&bob, "good.test/goodMedia").await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "{}\n{}",
        got.json(),
        b.server.log_tail()
    );
    assert_eq!(got.body, good_bytes);
    assert_eq!(got.header("content-type"), Some("application/pdf"));
    assert_eq!(
        got.header("content-disposition"),
        Some("attachment; filename=\"doc.pdf\"")
    );
    let again = download(&bob, "good.test/goodMedia").await;
    assert_eq!(again.body, good_bytes);
    let thumb_path = "/_matrix/client/v1/media/thumbnail/good.test/goodMedia?width=32&height=32&method=crop";
    for _ in 0..2 {
        let got = get(&bob, thumb_path).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.json());
        assert_eq!(got.body, thumb);
        assert_eq!(got.header("content-type"), Some("image/png"));
    }
    let requests = mock.received_requests().await.unwrap();
    let calls = |prefix: &str| {
        requests
            .iter()
            .filter(|r| r.url.path().starts_with(prefix))
            .count()
    };
    assert_eq!(calls("/_matrix/federation/v1/media/download/goodMedia"), 1);
    assert_eq!(calls("/_matrix/federation/v1/media/thumbnail/goodMedia"), 1);

    let got = download(&bob, "located.test/there").await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "{}\n{}",
        got.json(),
        b.server.log_tail()
    );
    assert_eq!(got.body, located_bytes);
    assert_eq!(got.header("content-type"), Some("text/plain"));

    let content_files = files_under(&b.media_dir().join("content")).len();
    for (mxc, status, errcode, within) in [
        ("garbage.test/x", StatusCode::BAD_GATEWAY, "M_UNKNOWN", 5),
        ("notmultipart.test/x", StatusCode::BAD_GATEWAY, "M_UNKNOWN", 5),
        ("huge.test/x", StatusCode::BAD_GATEWAY, "M_TOO_LARGE", 5),
        ("justover.test/x", StatusCode::BAD_GATEWAY, "M_TOO_LARGE", 5),
        ("gone.test/x", StatusCode::NOT_FOUND, "M_NOT_FOUND", 5),
        ("broken.test/x", StatusCode::BAD_GATEWAY, "M_UNKNOWN", 5),
    ] {
        let started = Instant::now();
        let got = download(&bob, mxc).await;
        got.expect_err(status, errcode);
        assert!(started.elapsed() < Duration::from_secs(within), "{mxc}");
        let server = mxc.split('/').next().unwrap();
        assert_eq!(b.media_rows(server).await, 0, "{mxc}");
    }
    let started = Instant::now();
    let got = download(&bob, "slow.test/x?timeout_ms=1500").await;
    got.expect_err(StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED");
    assert!(started.elapsed() < Duration::from_secs(5));
    let got = get(
        &bob,
        "/_matrix/client/v1/media/thumbnail/htmlthumb.test/x?width=32&height=32",
    )
    .await;
    got.expect_err(StatusCode::BAD_GATEWAY, "M_UNKNOWN");
    assert_eq!(b.media_rows("slow.test").await, 0);
    let db = b.server.db().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM remote_thumbnails WHERE server_name = $1",
            &["htmlthumb.test"]
        )
        .await,
        0
    );
    // Nothing of a failed fetch was written: no new content, no temp file left.
    assert_eq!(files_under(&b.media_dir().join("content")).len(), content_files);
    assert!(files_under(&b.media_dir().join("tmp")).is_empty());
    // And B still answers.
    let (status, _) = bob.request(Method::GET, "/account/whoami", None).await;
    assert_eq!(status, StatusCode::OK);
}
