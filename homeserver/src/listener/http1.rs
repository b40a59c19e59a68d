//! The plain HTTP/1.1 exchanges of a connection, served here rather than by hyper.
//!
//! Why: hyper keeps two 8 KiB buffers per connection for its whole life (the write buffer is
//! allocated when the connection is, the read buffer by the first read and again by the read
//! that watches for the client going away), so each held `/sync` long-poll cost ~30 KiB. Here a
//! connection keeps no buffer while its request is answered unless the client sent more, and a
//! held long-poll costs what its request's future holds.
//!
//! Only the common, simple exchange is served here: an HTTP/1.1 request without upgrade,
//! `Expect` or `Transfer-Encoding`, not `HEAD` or `CONNECT`, with at most
//! [`MAX_HEADERS`] headers, a head under [`MAX_HEAD`] bytes and a body under [`MAX_BODY`] bytes.
//! Anything else, malformed requests included, is handed over to hyper with the bytes read so
//! far ([`Served::HandOver`]), and hyper serves the rest of that connection: its answers to
//! the unusual cases (400 and 431, chunked and large bodies, `100 Continue`, WebSocket upgrades)
//! stay exactly what they were.

use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    time::SystemTime,
};

use axum::{
    Router,
    body::{Body, HttpBody},
    extract::ConnectInfo,
    http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header},
};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
};
use tower::ServiceExt;

/// Headers a request served here may have (hyper takes up to 100).
pub const MAX_HEADERS: usize = 64;
/// The largest request head read here; a longer one goes to hyper (which refuses past ~400 KiB).
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest request body read here, whole, before the request is handled; a larger one is
/// streamed by hyper (media uploads).
pub const MAX_BODY: usize = 64 * 1024;
/// How much a client may send ahead (pipelined) while its request is answered; past this the
/// connection is no longer read until the answer is written.
const MAX_AHEAD: usize = MAX_HEAD + MAX_BODY;
/// A response body frame up to this size is sent in one write with the head.
const COALESCE: usize = 16 * 1024;

/// How serving a connection here ended.
pub enum Served {
    /// The connection is finished: closed by the client, by an error, by `Connection: close`
    /// or by shutdown.
    Closed,
    /// A request this module does not serve: hyper takes the connection, starting with these
    /// bytes (the request's head, and whatever followed it).
    HandOver(Vec<u8>),
}

/// Serves requests on `stream` until the connection ends or a request needs hyper.
pub async fn serve(
    stream: &mut TcpStream,
    app: &Router,
    peer: SocketAddr,
    stop: &mut watch::Receiver<bool>,
) -> Served {
    // Bytes read and not yet used; empty (no allocation) between requests.
    let mut read = Vec::new();
    loop {
        let head = match read_head(stream, &mut read, stop).await {
            Ok(Some(head)) => head,
            Ok(None) => return Served::Closed,
            Err(Unserved) => return Served::HandOver(read),
        };
        read.drain(..head.len);
        if read.len() < head.body_len && !read_body(stream, &mut read, head.body_len).await {
            return Served::Closed;
        }
        // The body is the buffer itself (not a copy), and what follows it (rarely anything) the
        // new buffer: a held long-poll keeps no read buffer.
        let rest = read.split_off(head.body_len);
        let body = std::mem::replace(&mut read, rest);
        let body = if body.is_empty() {
            Body::empty()
        } else {
            Body::from(Bytes::from(body))
        };
        let close = head.close;
        let mut request = Request::new(body);
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.headers_mut() = head.headers;
        request.extensions_mut().insert(ConnectInfo(peer));
        let Some(response) = answer(stream, &mut read, app.clone().oneshot(request)).await else {
            return Served::Closed;
        };
        let stopping = *stop.borrow();
        if write_response(stream, response, close || stopping).await.is_err() || close || stopping {
            let _ = stream.shutdown().await;
            return Served::Closed;
        }
    }
}

/// A request head this module serves.
struct Head {
    /// Bytes of the head in the read buffer.
    len: usize,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body_len: usize,
    /// `Connection: close`: the connection ends after the answer.
    close: bool,
}

/// The request is not one this module serves (or is malformed): hyper's to answer.
struct Unserved;

/// Reads until `read` holds a whole request head. `Ok(None)`: the client closed the connection
/// (or the server is stopping) between requests.
async fn read_head(
    stream: &mut TcpStream,
    read: &mut Vec<u8>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Head>, Unserved> {
    loop {
        if !read.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(read) {
                Ok(httparse::Status::Complete(len)) => return head(&request, len).map(Some),
                Ok(httparse::Status::Partial) if read.len() < MAX_HEAD => {}
                _ => return Err(Unserved),
            }
        }
        if *stop.borrow() && read.is_empty() {
            return Ok(None);
        }
        if read.capacity() - read.len() < 512 {
            read.reserve(if read.is_empty() { 1024 } else { read.len() });
        }
        let got = tokio::select! {
            got = stream.read_buf(read) => got,
            _ = stop.changed(), if read.is_empty() => return Ok(None),
        };
        match got {
            Ok(0) if read.is_empty() => return Ok(None),
            // A partial head, then the end: hyper answers it as it did (an incomplete message).
            Ok(0) => return Err(Unserved),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// The head of a request this module serves, or `Unserved`.
fn head(request: &httparse::Request<'_, '_>, len: usize) -> Result<Head, Unserved> {
    if request.version != Some(1) {
        return Err(Unserved);
    }
    let method = Method::from_bytes(request.method.ok_or(Unserved)?.as_bytes()).map_err(|_| Unserved)?;
    if method == Method::HEAD || method == Method::CONNECT {
        return Err(Unserved);
    }
    let uri = Uri::try_from(request.path.ok_or(Unserved)?).map_err(|_| Unserved)?;
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    let mut body_len: Option<usize> = None;
    let mut close = false;
    for h in request.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Unserved)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| Unserved)?;
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Err(Unserved);
        }
        if name == header::CONTENT_LENGTH {
            // One length, said once or repeated identically; anything else is hyper's 400.
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(Unserved)?;
            if body_len.is_some_and(|known| known != n) || n > MAX_BODY {
                return Err(Unserved);
            }
            body_len = Some(n);
        }
        if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Err(Unserved);
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        }
        headers.append(name, value);
    }
    Ok(Head {
        len,
        method,
        uri,
        headers,
        body_len: body_len.unwrap_or(0),
        close,
    })
}

/// Reads until `read` holds `len` bytes; false if the client went away first.
async fn read_body(stream: &mut TcpStream, read: &mut Vec<u8>, len: usize) -> bool {
    while read.len() < len {
        // Grown as the body arrives: a head announcing 64 KiB and sending nothing gets no
        // 64 KiB buffer (by the connection, from a client that spends nothing).
        if read.capacity() == read.len() {
            read.reserve((len - read.len()).min(8 * 1024));
        }
        match stream.read_buf(read).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// Awaits the app's response while watching the connection: a client that closes it gives up
/// its request (the future is dropped, as hyper did); bytes it sends ahead are kept for the
/// next request. None: the client went away.
async fn answer<F>(stream: &mut TcpStream, read: &mut Vec<u8>, response: F) -> Option<Response<Body>>
where
    F: Future<Output = Result<Response<Body>, std::convert::Infallible>>,
{
    tokio::pin!(response);
    loop {
        let watching = read.len() < MAX_AHEAD;
        tokio::select! {
            response = &mut response => return Some(response.unwrap_or_else(|never| match never {})),
            ready = stream.readable(), if watching => {
                ready.ok()?;
                match take_ready(stream, read) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
        }
    }
}

/// Appends what the socket has ready to `read`, through a small stack buffer so that nothing is
/// allocated for a read that finds nothing.
fn take_ready(stream: &TcpStream, read: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 1024];
    let n = stream.try_read(&mut chunk)?;
    read.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Writes `response`: `Content-Length` when the body's size is known, chunked otherwise, no body
/// for statuses that have none. `close` adds `Connection: close`.
async fn write_response(stream: &mut TcpStream, response: Response<Body>, close: bool) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let length = declared_length(&parts.headers).or(body.size_hint().exact());

    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        _ if bodiless => {}
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        return stream.write_all(&out).await;
    }

    // The body, checked against the length announced: a body that runs long or short would
    // desynchronise the client's framing, so the connection ends instead.
    let mut remaining = length;
    let mut head = Some(out);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| io::Error::other("response body failed"))?;
        // Trailers are not sent (no handler here has any).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        match &mut remaining {
            Some(left) => {
                let len = data.len() as u64;
                if len > *left {
                    return Err(io::Error::other("response body longer than its length"));
                }
                *left -= len;
                match head.take() {
                    Some(mut out) if data.len() <= COALESCE => {
                        out.extend_from_slice(&data);
                        stream.write_all(&out).await?;
                    }
                    Some(out) => write_all_vectored(stream, &[&out, &data]).await?,
                    None => stream.write_all(&data).await?,
                }
            }
            None => {
                let size = format!("{:x}\r\n", data.len());
                let mut parts: Vec<&[u8]> = Vec::with_capacity(4);
                let out = head.take();
                if let Some(out) = &out {
                    parts.push(out);
                }
                parts.extend([size.as_bytes(), &data, b"\r\n"]);
                write_all_vectored(stream, &parts).await?;
            }
        }
    }
    if let Some(out) = head.take() {
        stream.write_all(&out).await?;
    }
    match remaining {
        Some(0) => Ok(()),
        Some(_) => Err(io::Error::other("response body shorter than its length")),
        None => stream.write_all(b"0\r\n\r\n").await,
    }
}

/// A `Content-Length` the handler set itself (media downloads), if it is one number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Writes every byte of `parts`, in as few system calls as the socket allows.
async fn write_all_vectored(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let mut skip = written;
        let mut slices = Vec::with_capacity(parts.len());
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices.push(IoSlice::new(&part[skip..]));
            skip = 0;
        }
        let n = stream.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}
