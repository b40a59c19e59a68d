//! The content repository over real HTTP: uploads, downloads with their headers, the
//! create-then-upload flow, size limits, thumbnails, the frozen legacy endpoints.

mod common;

use std::{io::Cursor, path::Path, time::Duration};

use common::{Backend, Client, SERVER_NAME, Server, count};
use image::{DynamicImage, ImageFormat, RgbImage};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; object-src 'self';";

/// A raw response: status, headers, body bytes.
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

async fn raw(
    client: &Client,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: Option<&str>,
) -> Raw {
    let mut req = client.http.request(method, format!("{}{path}", client.base_url));
    if let Some(token) = &client.token {
        req = req.bearer_auth(token);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    Raw {
        status,
        headers,
        body,
    }
}

/// Uploads `bytes`; returns `server/mediaId` from the `mxc://` URI.
async fn upload(client: &Client, bytes: &[u8], content_type: &str, filename: Option<&str>) -> String {
    let path = match filename {
        Some(name) => format!("/_matrix/media/v3/upload?filename={}", common::encode(name)),
        None => "/_matrix/media/v3/upload".to_owned(),
    };
    let resp = raw(
        client,
        Method::POST,
        &path,
        Some(bytes.to_vec()),
        Some(content_type),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "upload: {}", resp.json());
    let uri = resp.json()["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    let rest = uri.strip_prefix("mxc://").expect("an mxc:// URI");
    let (server, media_id) = rest.split_once('/').expect("mxc://server/id");
    assert_eq!(server, SERVER_NAME);
    assert!(
        !media_id.is_empty()
            && media_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "media ID {media_id:?} uses only the characters the spec allows"
    );
    rest.to_owned()
}

async fn download(client: &Client, mxc: &str) -> Raw {
    raw(
        client,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{mxc}"),
        None,
        None,
    )
    .await
}

async fn thumbnail(client: &Client, mxc: &str, query: &str) -> Raw {
    raw(
        client,
        Method::GET,
        &format!("/_matrix/client/v1/media/thumbnail/{mxc}?{query}"),
        None,
        None,
    )
    .await
}

fn png(width: u32, height: u32) -> Vec<u8> {
    encode_image(width, height, ImageFormat::Png)
}

fn encode_image(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 7) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .expect("encode test image");
    out.into_inner()
}

fn decoded_size(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("the thumbnail decodes as an image");
    (img.width(), img.height())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn media_dir(server: &Server) -> std::path::PathBuf {
    server.dir().join("data").join("media")
}

#[tokio::test]
async fn upload_and_download_round_trip_with_exact_bytes_and_headers() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    // Every byte value, and more than one read chunk of the server's file streaming.
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mxc = upload(&alice, &bytes, "application/pdf", Some("report 1.pdf")).await;

    // Any authenticated user may download it.
    let resp = download(&bob, &mxc).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.body == bytes, "downloaded bytes differ from the upload");
    assert_eq!(resp.header("content-type"), Some("application/pdf"));
    assert_eq!(resp.header("content-length"), Some("200000"));
    assert_eq!(
        resp.header("content-disposition"),
        Some("attachment; filename=\"report 1.pdf\"")
    );
    assert_eq!(resp.header("content-security-policy"), Some(CSP));
    assert_eq!(resp.header("cross-origin-resource-policy"), Some("cross-origin"));

    // The file-name variant replaces the name.
    let resp = raw(
        &bob,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{mxc}/other.pdf"),
        None,
        None,
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.body == bytes);
    assert_eq!(
        resp.header("content-disposition"),
        Some("attachment; filename=\"other.pdf\"")
    );

    // Safe types are inline; non-ASCII names use RFC 5987 encoding; no name, no filename.
    let text = upload(
        &alice,
        "héllo".as_bytes(),
        "text/plain; charset=utf-8",
        Some("wörld.txt"),
    )
    .await;
    let resp = download(&alice, &text).await;
    assert_eq!(resp.body, "héllo".as_bytes());
    assert_eq!(resp.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        resp.header("content-disposition"),
        Some("inline; filename*=utf-8''w%C3%B6rld.txt")
    );
    let html = upload(&alice, b"<script>alert(1)</script>", "text/html", None).await;
    let resp = download(&alice, &html).await;
    assert_eq!(resp.header("content-disposition"), Some("attachment"));
    assert_eq!(resp.header("content-type"), Some("text/html"));

    // An upload without Content-Type is served as application/octet-stream; an empty one works.
    let resp = raw(
        &alice,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some(Vec::new()),
        None,
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.json());
    let empty = resp.json()["content_uri"].as_str().unwrap()["mxc://".len()..].to_owned();
    let resp = download(&alice, &empty).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("content-type"), Some("application/octet-stream"));

    // The metadata row and the file on disk agree with what was sent.
    let media_id = mxc.split_once('/').unwrap().1;
    let db = server.db().await;
    let row =
        sqlx::query("SELECT uploader, content_type, filename, size, sha256 FROM media WHERE media_id = $1")
            .bind(media_id)
            .fetch_one(&db)
            .await
            .expect("media row");
    use sqlx::Row;
    assert_eq!(row.get::<String, _>(0), alice.user_id);
    assert_eq!(row.get::<String, _>(1), "application/pdf");
    assert_eq!(row.get::<String, _>(2), "report 1.pdf");
    assert_eq!(row.get::<i64, _>(3), bytes.len() as i64);
    let sha = row.get::<String, _>(4);
    assert_eq!(sha, sha256_hex(&bytes));
    let on_disk: Vec<_> = files_under(&media_dir(&server))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == sha.as_str()))
        .collect();
    assert_eq!(on_disk.len(), 1, "exactly one file named by the content hash");
    assert!(std::fs::read(&on_disk[0]).unwrap() == bytes);
    assert!(
        files_under(&media_dir(&server).join("tmp")).is_empty(),
        "no temp files are left behind"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM media", &[]).await, 4);
    db.close().await;
}

#[tokio::test]
async fn create_then_upload_by_the_creator_once() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let resp = raw(&alice, Method::POST, "/_matrix/media/v1/create", None, None).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.json());
    let body = resp.json();
    let mxc = body["content_uri"].as_str().expect("content_uri")["mxc://".len()..].to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let expires = body["unused_expires_at"].as_i64().expect("unused_expires_at");
    assert!(expires > now, "unused_expires_at {expires} is in the future");

    // Not uploaded yet: a download that will not wait answers 504 M_NOT_YET_UPLOADED.
    raw(
        &alice,
        Method::GET,
        &format!("/_matrix/client/v1/media/download/{mxc}?timeout_ms=0"),
        None,
        None,
    )
    .await
    .expect_err(StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED");

    // A download that waits sees the upload that arrives meanwhile.
    let waiter = {
        let bob = bob.clone();
        let mxc = mxc.clone();
        tokio::spawn(async move {
            raw(
                &bob,
                Method::GET,
                &format!("/_matrix/client/v1/media/download/{mxc}?timeout_ms=10000"),
                None,
                None,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let put_path = format!("/_matrix/media/v3/upload/{mxc}?filename=late.txt");
    raw(
        &bob,
        Method::PUT,
        &put_path,
        Some(b"bob's".to_vec()),
        Some("text/plain"),
    )
    .await
    .expect_err(StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let resp = raw(
        &alice,
        Method::PUT,
        &put_path,
        Some(b"first".to_vec()),
        Some("text/plain"),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.json());
    assert_eq!(resp.json(), serde_json::json!({}));
    raw(
        &alice,
        Method::PUT,
        &put_path,
        Some(b"second".to_vec()),
        Some("text/plain"),
    )
    .await
    .expect_err(StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA");

    let waited = waiter.await.expect("waiting download");
    assert_eq!(waited.status, StatusCode::OK);
    assert_eq!(waited.body, b"first");
    let resp = download(&alice, &mxc).await;
    assert_eq!(resp.body, b"first");
    assert_eq!(
        resp.header("content-disposition"),
        Some("inline; filename=\"late.txt\"")
    );

    // IDs that were never created, or belong to another server, are 404 M_NOT_FOUND.
    raw(
        &alice,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{SERVER_NAME}/neverCreated123"),
        Some(b"x".to_vec()),
        Some("text/plain"),
    )
    .await
    .expect_err(StatusCode::NOT_FOUND, "M_NOT_FOUND");
    // A plain upload's ID cannot be written either.
    let uploaded = upload(&alice, b"done", "text/plain", None).await;
    raw(
        &alice,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{uploaded}"),
        Some(b"again".to_vec()),
        Some("text/plain"),
    )
    .await
    .expect_err(StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA");
    assert_eq!(download(&alice, &uploaded).await.body, b"done");
}

#[tokio::test]
async fn racing_uploads_to_one_created_id_store_exactly_one() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let created = raw(&alice, Method::POST, "/_matrix/media/v1/create", None, None)
        .await
        .json();
    let mxc = created["content_uri"].as_str().unwrap()["mxc://".len()..].to_owned();
    let mut racers = Vec::new();
    for i in 0..8u8 {
        let alice = alice.clone();
        let mxc = mxc.clone();
        racers.push(tokio::spawn(async move {
            let body = vec![i; 300_000];
            let resp = raw(
                &alice,
                Method::PUT,
                &format!("/_matrix/media/v3/upload/{mxc}"),
                Some(body),
                Some("application/octet-stream"),
            )
            .await;
            (i, resp)
        }));
    }
    let mut winners = Vec::new();
    for racer in racers {
        let (i, resp) = racer.await.expect("racer");
        if resp.status == StatusCode::OK {
            winners.push(i);
        } else {
            resp.expect_err(StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA");
        }
    }
    assert_eq!(winners.len(), 1, "exactly one upload wins: {winners:?}");
    let resp = download(&alice, &mxc).await;
    assert!(
        resp.body == vec![winners[0]; 300_000],
        "the stored content is the winner's"
    );
}

#[tokio::test]
async fn uploads_over_the_limit_are_refused_and_leave_nothing() {
    let server =
        Server::start_with_config(Backend::from_env(), "[media]\nmax_upload_bytes = 2000000\n").await;
    let alice = server.register("alice").await;

    let resp = raw(&alice, Method::GET, "/_matrix/client/v1/media/config", None, None).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["m.upload.size"], 2_000_000);

    // Above the global 1 MiB request limit but within the media limit: accepted.
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    let mxc = upload(&alice, &big, "application/octet-stream", None).await;
    assert!(download(&alice, &mxc).await.body == big);

    // One byte more: 413 M_TOO_LARGE, on both upload endpoints.
    let mut over = big.clone();
    over.push(0);
    raw(
        &alice,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some(over.clone()),
        Some("application/octet-stream"),
    )
    .await
    .expect_err(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    let created = raw(&alice, Method::POST, "/_matrix/media/v1/create", None, None)
        .await
        .json();
    let created = created["content_uri"].as_str().unwrap()["mxc://".len()..].to_owned();
    raw(
        &alice,
        Method::PUT,
        &format!("/_matrix/media/v3/upload/{created}"),
        Some(over),
        Some("application/octet-stream"),
    )
    .await
    .expect_err(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");

    // Without a Content-Length (chunked), the limit holds while the body streams in.
    let token = alice.token.clone().unwrap();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // Read while writing: the answer may come before the body is finished.
    let answer = tokio::spawn(async move {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        answer
    });
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 100_000];
    for _ in 0..25 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if writer.write_all(&frame).await.is_err() {
            break; // the server may stop reading once it has refused the body
        }
    }
    let _ = writer.write_all(b"0\r\n\r\n").await;
    let answer = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("an answer within 20 s")
        .expect("reader task");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("M_TOO_LARGE"),
        "chunked oversize upload: {answer}"
    );

    let db = server.db().await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM media WHERE size IS NOT NULL", &[]).await,
        1,
        "only the upload within the limit is stored"
    );
    db.close().await;
    assert!(files_under(&media_dir(&server).join("tmp")).is_empty());
    assert_eq!(files_under(&media_dir(&server).join("content")).len(), 1);
}

#[tokio::test]
async fn thumbnails_have_the_requested_bounds_and_are_cached() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mxc = upload(&alice, &png(640, 320), "image/png", Some("wide.png")).await;

    // Only the configured sizes are made (Synapse's defaults: 32x32 and 96x96 crop, 320x240,
    // 640x480 and 800x600 scale): a request gets the smallest of its method that covers the
    // asked box, or the largest. (These expectations used to be the exact requested sizes.)
    // crop: exactly the chosen box.
    for ((w, h), (cw, ch)) in [
        ((32, 32), (32, 32)),
        ((96, 96), (96, 96)),
        ((20, 50), (96, 96)),
        ((100, 30), (96, 96)),
        ((60, 200), (96, 96)),
    ] {
        let resp = thumbnail(&alice, &mxc, &format!("width={w}&height={h}&method=crop")).await;
        assert_eq!(resp.status, StatusCode::OK, "crop {w}x{h}: {}", resp.json());
        assert_eq!(resp.header("content-type"), Some("image/png"));
        assert!(
            resp.header("content-disposition")
                .is_some_and(|d| d.starts_with("inline")),
            "thumbnails are inline"
        );
        assert_eq!(resp.header("content-security-policy"), Some(CSP));
        assert_eq!(decoded_size(&resp.body), (cw, ch), "crop {w}x{h}");
    }
    // scale: the aspect ratio (2:1) is kept and the image fits the chosen box, touching one
    // side; 640x480 and larger boxes hold the whole 640x320 image.
    for ((w, h), want) in [
        ((320, 240), (320, 160)),
        ((100, 100), (320, 160)),
        ((400, 100), (640, 320)),
    ] {
        let resp = thumbnail(&alice, &mxc, &format!("width={w}&height={h}&method=scale")).await;
        assert_eq!(resp.status, StatusCode::OK, "scale {w}x{h}: {}", resp.json());
        assert_eq!(decoded_size(&resp.body), want, "scale {w}x{h}");
    }
    // No method means scale.
    let resp = thumbnail(&alice, &mxc, "width=320&height=240").await;
    assert_eq!(decoded_size(&resp.body), (320, 160));
    // Never scaled up: a box larger than the image gives the image's own size; larger than
    // every configured size, the largest of the method.
    let resp = thumbnail(&alice, &mxc, "width=2000&height=2000&method=scale").await;
    assert_eq!(decoded_size(&resp.body), (640, 320), "scale into a larger box");
    let resp = thumbnail(&alice, &mxc, "width=2000&height=2000&method=crop").await;
    assert_eq!(
        decoded_size(&resp.body),
        (96, 96),
        "crop larger than every crop size"
    );

    // Each (size, method) is generated once, then served from the disk cache.
    let thumbs = files_under(&media_dir(&server).join("thumbnails"));
    assert!(
        thumbs
            .iter()
            .any(|p| p.file_name().is_some_and(|n| n == "32x32-crop.png")),
        "cached thumbnails: {thumbs:?}"
    );
    let again = thumbnail(&alice, &mxc, "width=32&height=32&method=crop").await;
    let cached = std::fs::read(
        thumbs
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == "32x32-crop.png"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        again.body == cached,
        "the second request is answered from the cache"
    );
    assert_eq!(
        files_under(&media_dir(&server).join("thumbnails")).len(),
        thumbs.len(),
        "no new file for a repeated request"
    );

    // A JPEG gives a JPEG thumbnail.
    let jpeg = upload(
        &alice,
        &encode_image(300, 300, ImageFormat::Jpeg),
        "image/jpeg",
        None,
    )
    .await;
    let resp = thumbnail(&alice, &jpeg, "width=96&height=96&method=crop").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("content-type"), Some("image/jpeg"));
    assert_eq!(decoded_size(&resp.body), (96, 96));
}

#[tokio::test]
async fn thumbnail_errors() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let image = upload(&alice, &png(50, 50), "image/png", None).await;
    let text = upload(&alice, b"just text", "text/plain", None).await;
    let broken = upload(&alice, b"\x89PNG but not really", "image/png", None).await;

    thumbnail(&alice, &text, "width=32&height=32")
        .await
        .expect_err(StatusCode::BAD_REQUEST, "M_UNKNOWN");
    thumbnail(&alice, &broken, "width=32&height=32")
        .await
        .expect_err(StatusCode::BAD_REQUEST, "M_UNKNOWN");
    thumbnail(&alice, &image, "height=32")
        .await
        .expect_err(StatusCode::BAD_REQUEST, "M_MISSING_PARAM");
    thumbnail(&alice, &image, "width=abc&height=32")
        .await
        .expect_err(StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    thumbnail(&alice, &image, "width=-3&height=32")
        .await
        .expect_err(StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    thumbnail(&alice, &image, "width=32&height=32&method=zoom")
        .await
        .expect_err(StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    thumbnail(
        &alice,
        &format!("{SERVER_NAME}/doesNotExist"),
        "width=32&height=32",
    )
    .await
    .expect_err(StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

#[tokio::test]
async fn unknown_remote_and_malformed_media_are_not_found() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    for mxc in [
        format!("{SERVER_NAME}/doesNotExist"),
        "other.example/abcdef".to_owned(),
        format!("{SERVER_NAME}/bad.id"),
        format!("{SERVER_NAME}/..%2F..%2Fetc"),
    ] {
        download(&alice, &mxc)
            .await
            .expect_err(StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
}

#[tokio::test]
async fn media_needs_an_access_token() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mxc = upload(&alice, &png(40, 40), "image/png", None).await;
    let anon = server.anon();
    download(&anon, &mxc)
        .await
        .expect_err(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    thumbnail(&anon, &mxc, "width=32&height=32")
        .await
        .expect_err(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    raw(&anon, Method::GET, "/_matrix/client/v1/media/config", None, None)
        .await
        .expect_err(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    raw(
        &anon,
        Method::POST,
        "/_matrix/media/v3/upload",
        Some(b"x".to_vec()),
        Some("text/plain"),
    )
    .await
    .expect_err(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    raw(&anon, Method::POST, "/_matrix/media/v1/create", None, None)
        .await
        .expect_err(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    let stranger = server.client_with_token("@x:hearth.test", "D", "not-a-token");
    download(&stranger, &mxc)
        .await
        .expect_err(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn legacy_endpoints_are_frozen_and_previews_disabled() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mxc = upload(&alice, &png(40, 40), "image/png", Some("a.png")).await;
    // Frozen for everything uploaded here, with or without a token.
    for client in [&alice, &server.anon()] {
        for path in [
            format!("/_matrix/media/v3/download/{mxc}"),
            format!("/_matrix/media/v3/download/{mxc}/a.png"),
            format!("/_matrix/media/v3/thumbnail/{mxc}?width=32&height=32"),
            format!("/_matrix/media/r0/download/{mxc}"),
        ] {
            raw(client, Method::GET, &path, None, None)
                .await
                .expect_err(StatusCode::NOT_FOUND, "M_NOT_FOUND");
        }
    }
    // The authenticated endpoint still serves it.
    assert_eq!(download(&alice, &mxc).await.status, StatusCode::OK);
    // The deprecated config endpoint is not frozen.
    let resp = raw(&alice, Method::GET, "/_matrix/media/v3/config", None, None).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["m.upload.size"], 50 * 1024 * 1024);
    // URL previews are off by default, as on Synapse.
    for path in [
        "/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org",
        "/_matrix/media/v3/preview_url?url=https%3A%2F%2Fexample.org",
    ] {
        raw(&alice, Method::GET, path, None, None)
            .await
            .expect_err(StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    }
}

#[tokio::test]
async fn media_survives_a_restart() {
    let mut server = Server::start().await;
    let alice = server.register("alice").await;
    let bytes = png(120, 80);
    let mxc = upload(&alice, &bytes, "image/png", Some("keep.png")).await;
    server.restart().await;
    let resp = download(&alice, &mxc).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.body == bytes);
    assert_eq!(
        resp.header("content-disposition"),
        Some("inline; filename=\"keep.png\"")
    );
}

fn cached_names(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = files_under(&media_dir(server).join("thumbnails"))
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// A client cannot make the server produce and cache a thumbnail per size it makes up: odd sizes
/// map to the configured ones and share their cache file.
#[tokio::test]
async fn odd_sizes_share_the_configured_thumbnails() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let mxc = upload(&alice, &png(640, 320), "image/png", None).await;

    let a = thumbnail(&alice, &mxc, "width=33&height=33&method=crop").await;
    let b = thumbnail(&alice, &mxc, "width=50&height=70&method=crop").await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(decoded_size(&a.body), (96, 96));
    assert!(a.body == b.body, "both are the 96x96 crop");
    assert_eq!(cached_names(&server), ["96x96-crop.png"]);

    // Many distinct sizes: never more files than configured sizes.
    for i in 1..=60u32 {
        let method = if i % 2 == 0 { "crop" } else { "scale" };
        let resp = thumbnail(
            &alice,
            &mxc,
            &format!("width={}&height={}&method={method}", i * 13, i * 7 + 1),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{i}: {}", resp.json());
    }
    let names = cached_names(&server);
    assert!(
        names.len() <= 5,
        "one file per configured size at most: {names:?}"
    );
    for name in &names {
        assert!(
            [
                "32x32-crop.png",
                "96x96-crop.png",
                "320x240-scale.png",
                "640x480-scale.png",
                "800x600-scale.png"
            ]
            .contains(&name.as_str()),
            "{name} is not a configured size"
        );
    }
}

/// The operator's sizes are used; a method without sizes of its own gets the nearest of others.
#[tokio::test]
async fn configured_thumbnail_sizes_are_used() {
    let server = Server::start_with_config(
        Backend::from_env(),
        "[media]\nthumbnail_sizes = [{ width = 50, height = 50, method = \"scale\" }]\n",
    )
    .await;
    let alice = server.register("alice").await;
    let mxc = upload(&alice, &png(640, 320), "image/png", None).await;
    for query in [
        "width=10&height=10&method=crop",
        "width=400&height=400&method=scale",
    ] {
        let resp = thumbnail(&alice, &mxc, query).await;
        assert_eq!(resp.status, StatusCode::OK, "{query}");
        assert_eq!(decoded_size(&resp.body), (50, 25), "{query}");
    }
    assert_eq!(cached_names(&server), ["50x50-scale.png"]);
}

/// With one decode at a time, many concurrent requests (several images and sizes) wait their
/// turn and all answer correctly.
#[tokio::test]
async fn concurrent_thumbnail_requests_all_answer() {
    let server =
        Server::start_with_config(Backend::from_env(), "[media]\nmax_concurrent_thumbnails = 1\n").await;
    let alice = server.register("alice").await;
    let mut images = Vec::new();
    for (w, h) in [(640, 320), (300, 600), (1000, 1000)] {
        images.push(((w, h), upload(&alice, &png(w, h), "image/png", None).await));
    }
    let mut tasks = Vec::new();
    for round in 0..4 {
        for ((w, h), mxc) in &images {
            for (query, bounds) in [
                ("width=32&height=32&method=crop", (32, 32)),
                ("width=90&height=90&method=crop", (96, 96)),
                ("width=300&height=200&method=scale", (320, 240)),
                ("width=700&height=500&method=scale", (800, 600)),
            ] {
                let (alice, mxc, w, h) = (alice.clone(), mxc.clone(), *w, *h);
                tasks.push(tokio::spawn(async move {
                    let resp = thumbnail(&alice, &mxc, query).await;
                    assert_eq!(
                        resp.status,
                        StatusCode::OK,
                        "round {round} {query}: {}",
                        resp.json()
                    );
                    let (tw, th) = decoded_size(&resp.body);
                    if query.ends_with("crop") {
                        assert_eq!((tw, th), bounds, "{w}x{h} {query}");
                    } else {
                        // Scaled to fit the box, aspect kept, never enlarged.
                        let fits = tw <= bounds.0 && th <= bounds.1;
                        let touches = tw == bounds.0.min(w) || th == bounds.1.min(h);
                        assert!(fits && touches, "{w}x{h} {query}: {tw}x{th}");
                    }
                }));
            }
        }
    }
    for task in tasks {
        task.await.expect("thumbnail task");
    }
}
