//! `GET /_matrix/client/unstable/org.hearth.ws/v1/stream`: `/sync` steps and sends over one
//! WebSocket (spec/websocket.md).
//!
//! Three tasks per connection: the producer (here) runs `sync::sync_step` in a loop and queues
//! each step that has something as a `sync` frame; the reader (`frames`) answers the client's
//! frames; the writer (`writer`) owns the sending half of the socket and writes what the two
//! queue, plus keepalive pings. The queue is bounded: a client that does not read is closed
//! with the token of the last frame written, so that it resumes from there with nothing lost
//! or doubled. Reading a `send` never waits for a slow writer: the socket is split.

mod frames;
mod writer;

use std::time::Duration;

use axum::{
    extract::{
        Query, State,
        ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::request::Parts,
    response::Response,
};
use futures_util::{StreamExt, stream::SplitStream};
use serde::Deserialize;
use serde_json::Value;

use self::writer::{
    CLOSE_BAD_REQUEST, CLOSE_INTERNAL, CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED, Out, Outbox, Stop,
};
use crate::{
    api::{
        error::{ApiError, ApiResult},
        extract::{access_token, client_ip},
    },
    error::Error,
    filter::Filter,
    services::Services,
    stream::StreamToken,
    sync::{SyncRequest, stream_filter, sync_step_with},
    users::{HeldToken, Session, presence::mark_active},
    util::Slot,
};

/// Frames queued for a client beyond what the socket holds, before it counts as a slow reader.
const OUTBOUND_FRAMES: usize = 32;
/// How long one `sync_step` long-polls before it starts again (and checks the token).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// A socket's read buffer. The library fills the whole buffer with zeroes before each read, so
/// every stream, idle ones included, keeps all of it resident: its default (128 KiB) made an
/// idle stream cost several times a long-poll, 8 KiB was still a quarter of a stream's memory,
/// and 2 KiB the largest single piece of one. Client frames are small (a `send`); a larger one
/// is read in several calls.
const READ_BUFFER: usize = 1024;
/// How much the library gathers before writing to the socket (128 KiB by default); each frame
/// is flushed when queued anyway.
const WRITE_BUFFER: usize = 8 * 1024;
/// How long a client has to authenticate with its first frame.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub struct StreamQuery {
    since: Option<String>,
    filter: Option<String>,
}

/// An authenticated stream: who, with which token, filter and stream slot.
struct Authed {
    token: HeldToken,
    session: Session,
    filter: std::sync::Arc<Filter>,
    _slot: Slot,
}

/// `GET /_matrix/client/unstable/org.hearth.ws/v1/stream`. A token in the request (header or
/// `access_token` parameter) is checked before the upgrade (401 when bad), and so are `since`
/// and, for an authenticated request, `filter` and the user's stream count; otherwise the
/// first frame authenticates.
pub async fn stream(
    State(svc): State<Services>,
    parts: Parts,
    Query(q): Query<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let upgrade = upgrade.map_err(|r| ApiError::new(r.status(), "M_UNRECOGNIZED", r.body_text()))?;
    let since = q.since.as_deref().map(StreamToken::parse).transpose()?;
    let ip = client_ip(&parts, &svc.config.trusted_proxies);
    let authed = match access_token(&parts) {
        Some(token) => Some(authenticate_stream(&svc, token, ip.as_deref(), q.filter.as_deref()).await?),
        None => None,
    };
    let limit = svc.config.limits.max_request_bytes;
    Ok(upgrade
        .max_message_size(limit)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let connection = Connection {
                svc,
                since,
                filter: q.filter,
                ip,
            };
            connection.run(socket, authed).await;
        }))
}

/// The session of `token`, the stream's filter, and a stream slot of the user.
async fn authenticate_stream(
    svc: &Services,
    token: String,
    ip: Option<&str>,
    filter: Option<&str>,
) -> crate::error::Result<Authed> {
    let (token, session) = HeldToken::authenticate(svc, token, ip).await?;
    let filter = stream_filter(svc, &session.user_id, filter).await?;
    let slot = svc
        .streams
        .take(session.user_id.as_str(), svc.config.limits.max_streams_per_user)
        .ok_or_else(|| Error::limit_exceeded(1000))?;
    Ok(Authed {
        token,
        session,
        filter,
        _slot: slot,
    })
}

struct Connection {
    svc: Services,
    since: Option<StreamToken>,
    filter: Option<String>,
    ip: Option<String>,
}

impl Connection {
    /// The steps taken once (authenticating, marking the user active) and per frame (checking
    /// the token) are boxed: their futures are kilobytes, and inline they would be part of the
    /// connection's tasks, which a held stream keeps for as long as it lives.
    async fn run(self, socket: WebSocket, authed: Option<Authed>) {
        let (mut sink, mut incoming) = socket.split();
        let authed = match authed {
            Some(authed) => authed,
            None => match Box::pin(self.first_frame_auth(&mut incoming)).await {
                Ok(authed) => authed,
                Err(stop) => {
                    writer::close(&mut sink, &stop, None).await;
                    return;
                }
            },
        };
        if let Err(e) = Box::pin(mark_active(&self.svc, &authed.session.user_id, "online")).await {
            tracing::warn!(error = %e, "marking a stream's user active");
        }
        let (outbox, inbox) = writer::outbox(OUTBOUND_FRAMES);
        let reader = tokio::spawn(frames::read(
            self.svc.clone(),
            authed.session.clone(),
            incoming,
            outbox.clone(),
        ));
        let producer = tokio::spawn(self.produce(authed, outbox));
        writer::write(sink, inbox).await;
        producer.abort();
        reader.abort();
    }

    /// `{"type":"auth","access_token":…}` as the first frame.
    async fn first_frame_auth(&self, incoming: &mut SplitStream<WebSocket>) -> Result<Authed, Stop> {
        let missing = || {
            Stop::Error(
                CLOSE_UNAUTHORIZED,
                "M_MISSING_TOKEN",
                "Send {\"type\":\"auth\",\"access_token\":…} first".into(),
            )
        };
        let text = match tokio::time::timeout(AUTH_TIMEOUT, incoming.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) | Err(_) => return Err(missing()),
            Ok(Some(Err(_)) | None) => return Err(Stop::Gone),
        };
        let token = serde_json::from_str::<Value>(text.as_str())
            .ok()
            .filter(|v| v["type"] == "auth")
            .and_then(|v| v["access_token"].as_str().map(str::to_owned))
            .ok_or_else(missing)?;
        authenticate_stream(&self.svc, token, self.ip.as_deref(), self.filter.as_deref())
            .await
            .map_err(stop_for)
    }

    /// The sync loop: one `sync` frame per step that has something. Each frame's body is what
    /// an incremental `/sync` from the previous frame's `next_batch` returns.
    async fn produce(self, authed: Authed, outbox: Outbox) {
        let Authed {
            mut token,
            session,
            filter,
            _slot,
        } = authed;
        let mut req = SyncRequest {
            since: self.since,
            timeout: STEP_TIMEOUT,
            full_state: false,
            filter,
            filter_param: self.filter.clone(),
        };
        // One waiter for the stream's life: its keys stay registered between steps.
        let mut waiter = self.svc.notifier.subscribe();
        loop {
            let step = sync_step_with(
                &self.svc,
                session.user_id.as_str(),
                &session.device_id,
                &req,
                &mut waiter,
            )
            .await;
            let answer = match step {
                Ok(answer) => answer,
                Err(e) => return outbox.stop(stop_for(e)),
            };
            // A token revoked (logout, deactivation) or expired since the last step ends the
            // stream.
            if !token.unchanged(&self.svc)
                && let Err(e) = Box::pin(token.check(&self.svc, self.ip.as_deref())).await
            {
                return outbox.stop(stop_for(e));
            }
            let next = match StreamToken::parse(&answer.next_batch) {
                Ok(next) => next,
                Err(e) => return outbox.stop(stop_for(Error::internal(e))),
            };
            if !answer.has_changes {
                // As a long-polling client does with an empty answer: the next step starts from
                // its `next_batch` (nothing for this user lies before it), which the device's
                // kept step continues; from the old token every quiet step computed in full.
                req.since = Some(next);
                continue;
            }
            // Serialized by serde_json: UTF-8 (checked, not copied).
            let text = match Utf8Bytes::try_from(answer.stream_frame()) {
                Ok(text) => text,
                Err(e) => return outbox.stop(stop_for(Error::internal(e))),
            };
            let frame = Out {
                text,
                next_batch: Some(answer.next_batch.clone()),
            };
            if !outbox.queue(frame) {
                return;
            }
            req.since = Some(next);
        }
    }
}

/// The close for a domain error: 4401 for tokens, 4429 for limits, 4400 for other client
/// mistakes, 1011 for the server's failures.
fn stop_for(error: Error) -> Stop {
    let api = ApiError::from(error);
    let code = match api.status.as_u16() {
        401 => CLOSE_UNAUTHORIZED,
        429 => CLOSE_TOO_MANY,
        400..=499 => CLOSE_BAD_REQUEST,
        _ => CLOSE_INTERNAL,
    };
    Stop::Error(code, api.errcode, api.message)
}
