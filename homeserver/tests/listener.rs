//! The Client-Server listener at the byte level: keep-alive, malformed requests, a client that
//! speaks HTTP/2 without asking, and a long-poll held across shutdown.

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
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                let status = head.lines().next().unwrap_or_default().to_owned();
                return Some((status, body));
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
