//! The writing half of a stream: frames in queue order, keepalive pings, and the closing frame
//! (whose reason names the last `sync` frame written, for a slow reader to resume from).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, stream::SplitSink};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// Keepalive: a WebSocket ping this often.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long one frame (the closing frame too) may take to reach a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest close reason a WebSocket allows, in bytes.
const MAX_CLOSE_REASON: usize = 123;

/// Close codes (4000–4999 are the application's).
pub const CLOSE_BAD_REQUEST: u16 = 4400;
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
pub const CLOSE_SLOW_READER: u16 = 4408;
pub const CLOSE_TOO_MANY: u16 = 4429;
pub const CLOSE_INTERNAL: u16 = 1011;

/// Why the writer stops.
#[derive(Clone, Debug)]
pub enum Stop {
    /// The client closed or went away: nothing more to write.
    Gone,
    /// Close with this code and the spec's error object (`errcode`, `error`) as the reason.
    Error(u16, &'static str, String),
    /// The outbound queue is full: close with the last written token.
    Slow,
}

/// A frame queued for the writer.
pub struct Out {
    /// Shared with the other streams sending the same step (`Answer::stream_frame`).
    pub text: Utf8Bytes,
    /// The `next_batch` of a `sync` frame.
    pub next_batch: Option<String>,
}

/// Where the producer and the reader queue frames, and how either stops the connection.
#[derive(Clone)]
pub struct Outbox {
    /// Boxed: the channel allocates its slots 32 at a time whatever its bound, so every
    /// stream, idle or not, keeps 32 slots (1.8 KiB of `Out`s, 256 bytes of boxes).
    frames: mpsc::Sender<Box<Out>>,
    stop: watch::Sender<Option<Stop>>,
}

/// The writer's end of an [`Outbox`].
pub struct Inbox {
    frames: mpsc::Receiver<Box<Out>>,
    stop: watch::Receiver<Option<Stop>>,
}

/// An outbox holding at most `frames` frames.
pub fn outbox(frames: usize) -> (Outbox, Inbox) {
    let (frames_tx, frames_rx) = mpsc::channel(frames);
    let (stop_tx, stop_rx) = watch::channel(None);
    (
        Outbox {
            frames: frames_tx,
            stop: stop_tx,
        },
        Inbox {
            frames: frames_rx,
            stop: stop_rx,
        },
    )
}

impl Outbox {
    /// Queues a frame; a full queue means the client is not reading: it is stopped as a slow
    /// reader. Returns whether the frame was queued.
    pub fn queue(&self, frame: Out) -> bool {
        match self.frames.try_send(Box::new(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stop(Stop::Slow);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the connection (the first reason given wins).
    pub fn stop(&self, stop: Stop) {
        self.stop.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(stop);
            true
        });
    }
}

/// Writes frames in queue order, pings, and the closing frame. A frame is written to the end
/// (never abandoned half-way, so that the closing frame can follow it); one that cannot be
/// written within `WRITE_TIMEOUT` drops the connection without a closing frame.
pub async fn write(mut sink: SplitSink<WebSocket, Message>, mut inbox: Inbox) {
    let mut written: Option<String> = None;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let reason = loop {
        let out = tokio::select! {
            biased;
            _ = inbox.stop.changed() => break inbox.stop.borrow().clone(),
            frame = inbox.frames.recv() => match frame {
                Some(frame) => Some(frame),
                None => break inbox.stop.borrow().clone(),
            },
            _ = ping.tick() => None,
        };
        // Stopped while this frame waited (a slow reader): it is not written.
        if inbox.stop.borrow().is_some() {
            break inbox.stop.borrow().clone();
        }
        let (message, next_batch) = match out {
            Some(out) => (Message::Text(out.text), out.next_batch),
            None => (Message::Ping(Default::default()), None),
        };
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "stream write failed");
                return;
            }
            Err(_) => {
                tracing::info!("stream dropped: a frame could not be written in time");
                return;
            }
        }
        if next_batch.is_some() {
            written = next_batch;
        }
    };
    if let Some(stop) = reason {
        tracing::debug!(?stop, next_batch = written.as_deref(), "closing a stream");
        // Boxed, as the connection's other one-off steps (`Connection::run`).
        Box::pin(close(&mut sink, &stop, written.as_deref())).await;
    }
}

/// Sends the closing frame for `stop` (bounded in time: the client may not be reading).
pub async fn close(sink: &mut SplitSink<WebSocket, Message>, stop: &Stop, written: Option<&str>) {
    let (code, reason) = match stop {
        Stop::Gone => return,
        Stop::Error(code, errcode, error) => (*code, close_reason(errcode, error)),
        Stop::Slow => (
            CLOSE_SLOW_READER,
            json!({ "errcode": "ORG.HEARTH.SLOW_READER", "next_batch": written }).to_string(),
        ),
    };
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(frame)).await;
}

/// `{"errcode","error"}` within a close reason's 123 bytes: the error text is cut to fit.
fn close_reason(errcode: &str, error: &str) -> String {
    let mut error: String = error.chars().take(MAX_CLOSE_REASON).collect();
    loop {
        let reason = json!({ "errcode": errcode, "error": error }).to_string();
        if reason.len() <= MAX_CLOSE_REASON || error.is_empty() {
            return reason;
        }
        error.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_in_a_close_frame() {
        let long = "é\"\\".repeat(200);
        let reason = close_reason("M_UNKNOWN_TOKEN", &long);
        assert!(reason.len() <= MAX_CLOSE_REASON, "{reason}");
        let value: serde_json::Value = serde_json::from_str(&reason).unwrap();
        assert_eq!(value["errcode"], "M_UNKNOWN_TOKEN");
        assert_eq!(
            close_reason("M_X", "short"),
            r#"{"errcode":"M_X","error":"short"}"#
        );
    }

    #[test]
    fn a_full_outbox_stops_a_slow_reader_and_the_first_stop_wins() {
        let (outbox, inbox) = outbox(1);
        let frame = || Out {
            text: "{}".into(),
            next_batch: None,
        };
        assert!(outbox.queue(frame()));
        assert!(!outbox.queue(frame()));
        assert!(matches!(*inbox.stop.borrow(), Some(Stop::Slow)));
        outbox.stop(Stop::Gone);
        assert!(matches!(*inbox.stop.borrow(), Some(Stop::Slow)));
    }
}
