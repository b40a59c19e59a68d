//! The reading half of a stream: the client's frames (`send`, `ping`) and their answers.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{StreamExt, stream::SplitStream};
use ruma::RoomId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::writer::{CLOSE_BAD_REQUEST, Out, Outbox, Stop};
use crate::{
    api::error::ApiError,
    error::{Error, Result},
    rooms::send::{self, Sender},
    services::Services,
    users::Session,
};

/// A client from which nothing (no frame, no pong) arrived for this long is closed.
const IDLE: Duration = Duration::from_secs(90);

/// A client frame (other than the first frame's `auth`).
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

/// Answers the client's frames one at a time (so a client's cost is bounded by one send in
/// flight), and notices when it goes away or stays silent.
pub async fn read(svc: Services, session: Session, mut incoming: SplitStream<WebSocket>, outbox: Outbox) {
    loop {
        let message = match tokio::time::timeout(IDLE, incoming.next()).await {
            Err(_) => {
                outbox.stop(Stop::Error(
                    CLOSE_BAD_REQUEST,
                    "M_UNKNOWN",
                    "Idle: no pong".into(),
                ));
                return;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                outbox.stop(Stop::Gone);
                return;
            }
            Ok(Some(Ok(message))) => message,
        };
        let answer = match message {
            // Boxed: a send's future is kilobytes that an idle reader (by the ten thousand)
            // should not carry.
            Message::Text(text) => Box::pin(answer(&svc, &session, text.as_str())).await,
            Message::Binary(_) => error_frame(None, "M_NOT_JSON", "Frames are JSON text"),
            // Pings are answered by the socket; pongs only prove the client is alive.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        let frame = Out {
            text: answer.to_string().into(),
            next_batch: None,
        };
        if !outbox.queue(frame) {
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
    let txn_id = value.get("txn_id").filter(|v| v.is_string()).cloned();
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

/// A `send` frame: what `PUT /rooms/{roomId}/send/{eventType}/{txnId}` does, through the same
/// send service and transaction scope, so a retry with the same `txn_id` (on either path)
/// gives the same event.
async fn send_frame(
    svc: &Services,
    session: &Session,
    room_id: &str,
    event_type: &str,
    txn_id: &str,
    content: Value,
) -> Result<String> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("room_id is not a room ID"))?;
    if event_type.is_empty() || txn_id.is_empty() {
        return Err(Error::invalid_param("event_type and txn_id must not be empty"));
    }
    if !content.is_object() {
        return Err(Error::bad_json("content must be a JSON object"));
    }
    let sender = Sender {
        user_id: &session.user_id,
        device_id: &session.device_id,
    };
    let event_id = send::send_message(svc, sender, &room_id, event_type, txn_id, content).await?;
    Ok(event_id.to_string())
}

/// `{"type":"error","errcode","error"}`, with the frame's `txn_id` when it had one.
fn error_frame(txn_id: Option<Value>, errcode: &str, error: &str) -> Value {
    let mut frame = json!({ "type": "error", "errcode": errcode, "error": error });
    if let Some(txn_id) = txn_id {
        frame["txn_id"] = txn_id;
    }
    frame
}
