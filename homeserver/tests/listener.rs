//! The Client-Server listener at the byte level: keep-alive, request bodies framed every way
//! HTTP/1.1 allows, malformed requests, a client that speaks HTTP/2 without asking, and a
//! long-poll whose client goes away.

mod common;

use std::time::Duration;

use common::Server;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const VERSIONS: &[u8] = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Reads one response (head and `Content-Length` body) from `stream`; returns its status line
/// and body, or None when the server closed the connection first.
async fn read_response(stream: &mut TcpStream) -> Option<(String, String)> {
    read_response_with_head(stream)
        .await
        .map(|(status, _, body)| (status, body))
}

/// As `read_response`, with the head's lines (lowercased) too. A `100 Continue` is skipped.
async fn read_response_with_head(stream: &mut TcpStream) -> Option<(String, Vec<String>, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let status = head.lines().next().unwrap_or_default().to_owned();
            if status.contains(" 100 ") {
                buf.drain(..end + 4);
                continue;
            }
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                let lines = head.lines().skip(1).map(str::to_ascii_lowercase).collect();
                return Some((status, lines, body));
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the server answers within 10 s")
            .expect("read");
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect")
}

#[tokio::test]
async fn one_connection_carries_many_requests() {
    let server = Server::start().await;
    let mut stream = connect(&server).await;
    for _ in 0..3 {
        stream.write_all(VERSIONS).await.expect("write");
        let (status, body) = read_response(&mut stream).await.expect("a response, not a close");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(body.contains("\"versions\""), "{body}");
    }
    // Two requests written at once (pipelined) are answered in order.
    let two = [
        VERSIONS,
        b"GET /_matrix/client/v3/nope HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    .concat();
    stream.write_all(&two).await.expect("write");
    let (first, _) = read_response(&mut stream).await.expect("first");
    let (second, body) = read_response(&mut stream).await.expect("second");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(second.starts_with("HTTP/1.1 404"), "{second}");
    assert!(body.contains("M_UNRECOGNIZED"), "{body}");
}

#[tokio::test]
async fn malformed_and_http2_requests_leave_the_server_serving() {
    let server = Server::start().await;
    // Not HTTP: refused with 400 (or a close), never a crash.
    let mut garbage = connect(&server).await;
    garbage
        .write_all(b"\x00\x01 NOT HTTP\r\n\r\n")
        .await
        .expect("write");
    if let Some((status, _)) = read_response(&mut garbage).await {
        assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    }
    // A client speaking HTTP/2 without negotiating it: this listener is HTTP/1.1 only, so the
    // connection is refused rather than served.
    let mut h2 = connect(&server).await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    if let Some((status, _)) = read_response(&mut h2).await {
        assert!(
            !status.starts_with("HTTP/1.1 2"),
            "HTTP/2 preface answered as a request: {status}"
        );
    }
    // A head larger than the parser takes is refused without harm.
    let mut huge = connect(&server).await;
    let long = format!(
        "GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let _ = huge.write_all(long.as_bytes()).await;
    if let Some((status, _)) = read_response(&mut huge).await {
        assert!(
            status.starts_with("HTTP/1.1 431") || status.starts_with("HTTP/1.1 400"),
            "{status}"
        );
    }
    let mut fine = connect(&server).await;
    fine.write_all(VERSIONS).await.expect("write");
    let (status, _) = read_response(&mut fine).await.expect("still serving");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// A login request for a user that does not exist, its body framed by `framing` (header lines
/// ending in CRLF) and written as `body`.
fn login(framing: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n"
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

const LOGIN: &str = r#"{"type":"m.login.password","identifier":{"type":"m.id.user","user":"nobody"},"password":"wrong-password"}"#;

/// Every framing of a request body reaches the handler whole: the handler answers the login
/// itself (403 `M_FORBIDDEN`), which it can only do after reading the JSON (a body lost or cut
/// short is `M_NOT_JSON`).
#[tokio::test]
async fn request_bodies_arrive_whole_however_they_are_framed() {
    let server = Server::start().await;
    let chunked = {
        let (a, b) = LOGIN.split_at(20);
        format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len())
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "content-length",
            login(&format!("Content-Length: {}\r\n", LOGIN.len()), LOGIN.as_bytes()),
        ),
        (
            "chunked",
            login("Transfer-Encoding: chunked\r\n", chunked.as_bytes()),
        ),
        (
            "expect 100-continue",
            login(
                &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", LOGIN.len()),
                LOGIN.as_bytes(),
            ),
        ),
    ];
    // One connection for all of them: the listener hands the connection over to its fallback
    // for the unusual framings and must still answer in order.
    let mut stream = connect(&server).await;
    for (name, request) in &cases {
        stream.write_all(request).await.expect("write");
        let (status, body) = read_response(&mut stream).await.expect("an answer");
        assert!(status.starts_with("HTTP/1.1 403"), "{name}: {status} {body}");
        assert!(body.contains("M_FORBIDDEN"), "{name}: {body}");
    }
    // A body sent in pieces, the head first.
    let mut slow = connect(&server).await;
    let request = login(&format!("Content-Length: {}\r\n", LOGIN.len()), LOGIN.as_bytes());
    let (first, rest) = request.split_at(request.len() - LOGIN.len() + 10);
    slow.write_all(first).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    slow.write_all(rest).await.expect("write");
    let (status, body) = read_response(&mut slow).await.expect("an answer");
    assert!(status.starts_with("HTTP/1.1 403"), "{status} {body}");

    // A body larger than the listener reads at once is streamed (and refused by the login
    // handler as the JSON it is not, rather than lost).
    let big = format!(
        r#"{{"type":"m.login.password","pad":"{}"}}"#,
        "a".repeat(200 * 1024)
    );
    let mut large = connect(&server).await;
    large
        .write_all(&login(
            &format!("Content-Length: {}\r\n", big.len()),
            big.as_bytes(),
        ))
        .await
        .expect("write");
    let (status, body) = read_response(&mut large).await.expect("an answer");
    assert!(status.starts_with("HTTP/1.1 4"), "{status} {body}");
    assert!(body.contains("\"errcode\""), "{body}");
}

/// The framings an attacker uses to smuggle a second request: two different lengths, a length
/// and chunking together. Refused with 400, and the connection is not reused.
#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let server = Server::start().await;
    for framing in [
        format!("Content-Length: {}\r\nContent-Length: 5\r\n", LOGIN.len()),
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            LOGIN.len()
        ),
        "Content-Length: -1\r\n".to_owned(),
        "Content-Length: 1e3\r\n".to_owned(),
    ] {
        let mut stream = connect(&server).await;
        stream
            .write_all(&login(&framing, LOGIN.as_bytes()))
            .await
            .expect("write");
        // Closed without an answer is also a refusal.
        if let Some((status, _)) = read_response(&mut stream).await {
            assert!(status.starts_with("HTTP/1.1 400"), "{framing:?}: {status}");
        }
    }
    let mut fine = connect(&server).await;
    fine.write_all(VERSIONS).await.expect("write");
    let (status, _) = read_response(&mut fine).await.expect("still serving");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// `Connection: close` is honoured and said back; `HEAD` and HTTP/1.0 are answered.
#[tokio::test]
async fn close_head_and_http_1_0() {
    let server = Server::start().await;
    let mut stream = connect(&server).await;
    stream
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (status, head, body) = read_response_with_head(&mut stream).await.expect("an answer");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(head.iter().any(|l| l == "connection: close"), "{head:?}");
    assert!(head.iter().any(|l| l.starts_with("date: ")), "{head:?}");
    assert!(body.contains("\"versions\""), "{body}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the server closes")
        .expect("read");
    assert_eq!(n, 0, "nothing after the answer");

    let mut head_request = connect(&server).await;
    head_request
        .write_all(b"HEAD /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), head_request.read(&mut chunk))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before answering HEAD");
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a HEAD answer has no body: {text}");

    let mut old = connect(&server).await;
    old.write_all(b"GET /_matrix/client/versions HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), old.read_to_end(&mut all))
        .await
        .expect("HTTP/1.0: answered, then closed")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1."), "{text}");
    assert!(text.contains(" 200 ") && text.contains("\"versions\""), "{text}");
}

/// A client that sends a long-poll and goes away gives the request up: the server closes the
/// connection at once rather than holding the request until its timeout.
#[tokio::test]
async fn a_long_poll_whose_client_leaves_is_given_up() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let since = alice.sync(None, 0, 1).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let mut stream = connect(&server).await;
    let request = format!(
        "GET /_matrix/client/v3/sync?timeout=60000&since={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        common::encode(&since),
        alice.token.as_deref().expect("token"),
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    // Held: no answer yet.
    let mut chunk = [0u8; 256];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut chunk))
            .await
            .is_err(),
        "a long-poll with nothing new is held"
    );
    stream.shutdown().await.expect("shutdown");
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
        .await
        .expect("the server closes the given-up request's connection within 5 s, not after 60")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer to a request given up: {:?}", &chunk[..n]);
}
