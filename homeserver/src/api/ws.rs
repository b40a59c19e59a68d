//! `GET /_matrix/client/unstable/org.hearth.ws/v1/stream`: `/sync` steps and sends over one
//! WebSocket (spec/websocket.md).
//!
//! Three parts per connection: the producer runs `sync::sync_step` in a loop and queues each
//! step that has something as a `sync` frame; the reader answers the client's frames (`send`,
//! `ping`); the writer owns the socket and writes what the two queue, plus keepalive pings. The
//! queue is bounded: a client that does not read is closed with the token of the last frame
//! written, so that it resumes from there with nothing lost or doubled. The socket is split in
//! a sending and a receiving half so that reading a `send` never waits for a slow writer.

use std::time::Duration;

use axum::{
    extract::{
        Query, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::request::Parts,
    response::Response,
};
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use ruma::{RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::{
    api::{
        error::{ApiError, ApiResult},
        extract::{access_token, client_ip},
    },
    error::Error,
    filter::Filter,
    rooms::send::{self, Sender},
    services::Services,
    stream::StreamToken,
    sync::{SyncRequest, stream_filter, sync_step},
    users::{Session, authenticate, presence::mark_active},
};

/// Frames queued for a client before it counts as a slow reader.
const OUTBOUND_FRAMES: usize = 32;
/// How long one `sync_step` long-polls before it starts again.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Keepalive: a ping this often; a client silent (not even a pong) for `IDLE` is closed.
const PING_EVERY: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_secs(90);
/// How long a client has to authenticate with its first message.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing frame may take to reach a client that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Close codes (4000–4999 are the application's).
pub const CLOSE_BAD_REQUEST: u16 = 4400;
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
pub const CLOSE_SLOW_READER: u16 = 4408;
pub const CLOSE_INTERNAL: u16 = 1011;

#[derive(Deserialize)]
pub struct StreamQuery {
    since: Option<String>,
    filter: Option<String>,
}

/// `GET /_matrix/client/unstable/org.hearth.ws/v1/stream`. A token in the request (header or
/// `access_token` parameter) is checked before the upgrade (401 when bad), and so are `since`
/// and, for an authenticated request, `filter`; otherwise the first message authenticates.
pub async fn stream(
    State(svc): State<Services>,
    parts: Parts,
    Query(q): Query<StreamQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let upgrade = upgrade.map_err(|r| ApiError::new(r.status(), "M_UNRECOGNIZED", r.body_text()))?;
    let since = q.since.as_deref().map(StreamToken::parse).transpose()?;
    let ip = client_ip(&parts, &svc.config.trusted_proxies);
    let token = access_token(&parts);
    let pre = match &token {
        Some(token) => {
            let session = authenticate(&svc, token, ip.as_deref()).await?;
            let filter = stream_filter(&svc, &session.user_id, q.filter.as_deref()).await?;
            Some((session, filter))
        }
        None => None,
    };
    let limit = usize::try_from(svc.config.limits.max_request_bytes).unwrap_or(usize::MAX);
    Ok(upgrade
        .max_message_size(limit)
        .on_upgrade(move |socket| async move {
            let connection = Connection {
                svc,
                since,
                filter: q.filter,
                ip,
            };
            connection.run(socket, token, pre).await;
        }))
}

/// Why the writer stops.
#[derive(Clone, Debug)]
enum Stop {
    /// The client closed or went away: nothing more to write.
    Gone,
    /// Close with this code and the spec's error object as the reason.
    Error(u16, &'static str, String),
    /// The outbound queue is full: close with the last written token.
    Slow,
}

/// What the producer and the reader queue for the writer.
struct Out {
    text: String,
    /// The `next_batch` of a `sync` frame.
    next_batch: Option<String>,
}

struct Connection {
    svc: Services,
    since: Option<StreamToken>,
    filter: Option<String>,
    ip: Option<String>,
}

impl Connection {
    async fn run(self, socket: WebSocket, token: Option<String>, pre: Option<(Session, Filter)>) {
        let (mut sink, mut incoming) = socket.split();
        let (token, session, filter) = match (token, pre) {
            (Some(token), Some((session, filter))) => (token, session, filter),
            _ => match self.first_message_auth(&mut incoming).await {
                Ok(found) => found,
                Err(stop) => {
                    close(&mut sink, &stop, None).await;
                    return;
                }
            },
        };
        if let Err(e) = mark_active(&self.svc, &session.user_id, "online").await {
            tracing::warn!(error = %e, "marking a stream's user active");
        }
        let (out_tx, out_rx) = mpsc::channel::<Out>(OUTBOUND_FRAMES);
        let (stop_tx, stop_rx) = watch::channel::<Option<Stop>>(None);
        let producer = tokio::spawn(produce(
            self.svc.clone(),
            session.clone(),
            token,
            self.ip.clone(),
            self.since,
            filter,
            out_tx.clone(),
            stop_tx.clone(),
        ));
        let reader = tokio::spawn(read(self.svc.clone(), session, incoming, out_tx, stop_tx));
        write(sink, out_rx, stop_rx).await;
        producer.abort();
        reader.abort();
    }

    /// `{"type":"auth","access_token":…}` as the first message: the session and the filter.
    async fn first_message_auth(
        &self,
        incoming: &mut SplitStream<WebSocket>,
    ) -> Result<(String, Session, Filter), Stop> {
        let missing = || Stop::Error(CLOSE_UNAUTHORIZED, "M_MISSING_TOKEN", "Send {\"type\":\"auth\"} first".into());
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
        let session = authenticate(&self.svc, &token, self.ip.as_deref())
            .await
            .map_err(stop_for)?;
        let filter = stream_filter(&self.svc, &session.user_id, self.filter.as_deref())
            .await
            .map_err(stop_for)?;
        Ok((token, session, filter))
    }
}

/// The close for a domain error: 4401 for tokens, 4400 for other client mistakes, 1011 else.
fn stop_for(error: Error) -> Stop {
    let api = ApiError::from(error);
    let code = match api.status.as_u16() {
        401 => CLOSE_UNAUTHORIZED,
        400..=499 => CLOSE_BAD_REQUEST,
        _ => CLOSE_INTERNAL,
    };
    Stop::Error(code, api.errcode, api.message)
}

/// Queues a frame; a full queue means the client is not reading: stop it.
fn queue(out: &mpsc::Sender<Out>, stop: &watch::Sender<Option<Stop>>, frame: Out) -> bool {
    match out.try_send(frame) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            stop.send_replace(Some(Stop::Slow));
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// The sync loop: one `sync` frame per step that has something.
#[allow(clippy::too_many_arguments)]
async fn produce(
    svc: Services,
    session: Session,
    token: String,
    ip: Option<String>,
    since: Option<StreamToken>,
    filter: Filter,
    out: mpsc::Sender<Out>,
    stop: watch::Sender<Option<Stop>>,
) {
    let mut req = SyncRequest {
        since,
        timeout: STEP_TIMEOUT,
        full_state: false,
        filter,
    };
    let user_id = session.user_id.as_str();
    loop {
        let (response, has_changes) = match sync_step(&svc, user_id, &session.device_id, &req).await {
            Ok(step) => step,
            Err(e) => {
                stop.send_replace(Some(stop_for(e)));
                return;
            }
        };
        // A token revoked (logout, deactivation) since the last step ends the stream.
        if let Err(e) = authenticate(&svc, &token, ip.as_deref()).await {
            stop.send_replace(Some(stop_for(e)));
            return;
        }
        if !has_changes {
            continue;
        }
        let next = match StreamToken::parse(&response.next_batch) {
            Ok(next) => next,
            Err(e) => {
                stop.send_replace(Some(stop_for(Error::internal(e))));
                return;
            }
        };
        let frame = Out {
            text: json!({ "type": "sync", "body": response }).to_string(),
            next_batch: Some(response.next_batch),
        };
        if !queue(&out, &stop, frame) {
            return;
        }
        req.since = Some(next);
    }
}

/// A client frame.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Send {
        room_id: String,
        event_type: String,
        txn_id: String,
        content: Value,
    },
    Ping {
        #[serde(default)]
        id: Option<Value>,
    },
}

/// The reader: answers the client's frames one at a time (so a client's cost is bounded by one
/// send in flight), and notices when it goes away or stays silent.
async fn read(
    svc: Services,
    session: Session,
    mut incoming: SplitStream<WebSocket>,
    out: mpsc::Sender<Out>,
    stop: watch::Sender<Option<Stop>>,
) {
    loop {
        let message = match tokio::time::timeout(IDLE, incoming.next()).await {
            Err(_) => {
                stop.send_replace(Some(Stop::Error(CLOSE_BAD_REQUEST, "M_UNKNOWN", "Idle: no pong".into())));
                return;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                stop.send_replace(Some(Stop::Gone));
                return;
            }
            Ok(Some(Ok(message))) => message,
        };
        let answer = match message {
            Message::Text(text) => answer(&svc, &session, text.as_str()).await,
            Message::Binary(_) => error_frame(None, "M_NOT_JSON", "Frames are JSON text"),
            // Pings are answered by the socket; pongs only prove the client is alive.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        let frame = Out {
            text: answer.to_string(),
            next_batch: None,
        };
        if !queue(&out, &stop, frame) {
            return;
        }
    }
}

/// The answer to one client text frame.
async fn answer(svc: &Services, session: &Session, text: &str) -> Value {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return error_frame(None, "M_NOT_JSON", &format!("Frame is not JSON: {e}")),
    };
    let txn_id = value.get("txn_id").cloned();
    let frame: ClientFrame = match serde_json::from_value(value) {
        Ok(frame) => frame,
        Err(e) => return error_frame(txn_id, "M_BAD_JSON", &e.to_string()),
    };
    match frame {
        ClientFrame::Ping { id } => json!({ "type": "pong", "id": id }),
        ClientFrame::Send {
            room_id,
            event_type,
            txn_id,
            content,
        } => match send_frame(svc, session, &room_id, &event_type, &txn_id, content).await {
            Ok(event_id) => json!({ "type": "send_result", "txn_id": txn_id, "event_id": event_id }),
            Err(e) => {
                let api = ApiError::from(e);
                let mut frame = error_frame(Some(Value::String(txn_id)), api.errcode, &api.message);
                if let Some(object) = frame.as_object_mut() {
                    object.extend(api.extra);
                }
                frame
            }
        },
    }
}

/// A `send` frame: what `PUT /rooms/{roomId}/send/{eventType}/{txnId}` does, with the same
/// transaction scope, so a retry with the same `txn_id` (on either path) gives the same event.
async fn send_frame(
    svc: &Services,
    session: &Session,
    room_id: &str,
    event_type: &str,
    txn_id: &str,
    content: Value,
) -> crate::error::Result<String> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("room_id is not a room ID"))?;
    if event_type.is_empty() || txn_id.is_empty() {
        return Err(Error::invalid_param("event_type and txn_id must not be empty"));
    }
    if !content.is_object() {
        return Err(Error::bad_json("content must be a JSON object"));
    }
    let user_id: &UserId = &session.user_id;
    let sender = Sender {
        user_id,
        device_id: &session.device_id,
    };
    let event_id = send::send_message(svc, sender, &room_id, event_type, txn_id, content).await?;
    Ok(event_id.to_string())
}

fn error_frame(txn_id: Option<Value>, errcode: &str, error: &str) -> Value {
    let mut frame = json!({ "type": "error", "errcode": errcode, "error": error });
    if let Some(txn_id) = txn_id {
        frame["txn_id"] = txn_id;
    }
    frame
}

/// The writer: frames in queue order, pings, and the closing frame. A frame is written to the
/// end (never abandoned half-way, so the closing frame can follow it); one that cannot be
/// written within `CLOSE_TIMEOUT` drops the connection without a closing frame.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut out: mpsc::Receiver<Out>,
    mut stop: watch::Receiver<Option<Stop>>,
) {
    let mut written: Option<String> = None;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let reason = loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break stop.borrow().clone(),
            frame = out.recv() => match frame {
                Some(frame) => frame,
                None => break stop.borrow().clone(),
            },
            _ = ping.tick() => Out { text: String::new(), next_batch: None },
        };
        // Stopped while this frame waited (a slow reader): it is not written.
        if stop.borrow().is_some() {
            break stop.borrow().clone();
        }
        let frame = if message.text.is_empty() {
            Message::Ping(Default::default())
        } else {
            Message::Text(Utf8Bytes::from(message.text))
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "stream write failed");
                return;
            }
            Err(_) => {
                tracing::info!("stream dropped: a frame could not be written within the close timeout");
                return;
            }
        }
        if let Some(next) = message.next_batch {
            written = Some(next);
        }
    };
    if let Some(stop) = reason {
        tracing::info!(?stop, next_batch = written.as_deref(), "closing a stream");
        close(&mut sink, &stop, written.as_deref()).await;
    }
}

/// Sends the closing frame for `stop` (bounded in time: the client may not be reading).
async fn close(sink: &mut SplitSink<WebSocket, Message>, stop: &Stop, written: Option<&str>) {
    let (code, reason) = match stop {
        Stop::Gone => return,
        Stop::Error(code, errcode, error) => {
            // A close reason holds 123 bytes: the error text is cut to fit.
            let mut error = error.clone();
            let room = 123usize.saturating_sub(json!({ "errcode": errcode, "error": "" }).to_string().len());
            while error.len() > room {
                error.pop();
            }
            (*code, json!({ "errcode": errcode, "error": error }).to_string())
        }
        Stop::Slow => (
            CLOSE_SLOW_READER,
            json!({ "errcode": "ORG.HEARTH.SLOW_READER", "next_batch": written }).to_string(),
        ),
    };
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(frame)).await;
}
