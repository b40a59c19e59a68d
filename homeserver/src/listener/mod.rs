//! The Client-Server API's listener: HTTP/1.1 connections, each on its own task. The plain
//! exchanges that make up nearly all of a client's traffic (and every held `/sync` long-poll)
//! are served by `http1.rs`, which keeps no buffer while a request waits; a request it does not
//! serve hands the connection to hyper for the rest of its life (`prefixed.rs` replays the bytes
//! already read).
//!
//! Not `axum::serve`: that one serves HTTP/1.1 and cleartext HTTP/2 alike, and tells them apart by
//! reading the first 24 bytes of each connection on their own. HTTP/1.1's parser then finds a
//! partial request in its 8 KiB read buffer and doubles it, so every held `/sync` long-poll kept
//! 16 KiB for a request of a few hundred bytes. Clients and reverse proxies speak HTTP/1.1 to a
//! homeserver (Synapse serves nothing else); HTTP/2 belongs to the TLS terminator in front.

mod http1;
mod prefixed;

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
/// the connections to finish what they are answering (the caller bounds that wait).
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    // Sent once at shutdown; each connection holds a receiver until it has finished.
    let (stopping, _) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let mut stop = stopping.subscribe();
        tokio::spawn(async move {
            let mut stream = stream;
            let http1::Served::HandOver(read) = http1::serve(&mut stream, &app, peer, &mut stop).await else {
                return;
            };
            let io = TokioIo::new(prefixed::Prefixed::new(read, stream));
            // Boxed: a held long-poll's task is not sized for hyper's connection state.
            Box::pin(serve_with_hyper(io, app, peer, stop)).await;
        });
    }
    drop(listener);
    stopping.send_replace(true);
    stopping.closed().await;
}

/// Serves the rest of a connection with hyper, until it ends or the server stops (then after
/// answering the request in flight).
async fn serve_with_hyper(
    io: TokioIo<prefixed::Prefixed>,
    app: Router,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    // The peer's address, for `ConnectInfo` (rate limits, trusted proxies).
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    // No timer, so no header read timeout: an idle keep-alive connection stays open, as before
    // (a 30 s timeout would also close pooled connections between a client's requests).
    let mut connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut connection = std::pin::Pin::new(&mut connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = stop.changed() => {
            // Answers the request in flight, then closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Accepting fails for the connection at hand (reset before it was accepted: go on) or for the
/// process (out of file descriptors: retrying at once would spin, so wait a moment).
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
