//! What a `deliver` receiver reads of a `/sync` body (or a stream's `sync` frame): the next
//! token, the benchmark stamps of its joined rooms' timeline events, and how many of those
//! timelines were limited. Deserialized into borrowed, typed views that skip everything else:
//! the load generator shares the machine with the server it measures, and parsing every
//! response whole into `serde_json::Value` (then dropping it) was about half of its CPU.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// One receiver's reading of one sync step.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncDigest {
    pub next_batch: String,
    /// (sequence number, send time in µs since the epoch) of this run's messages, in order.
    pub stamps: Vec<(u64, u64)>,
    /// Joined rooms whose timeline was `limited`.
    pub limited_rooms: u64,
}

#[derive(Deserialize)]
struct SyncWire<'a> {
    #[serde(borrow)]
    next_batch: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    rooms: RoomsWire<'a>,
}

#[derive(Deserialize, Default)]
struct RoomsWire<'a> {
    #[serde(default, borrow)]
    join: HashMap<Cow<'a, str>, JoinedWire<'a>>,
}

#[derive(Deserialize, Default)]
struct JoinedWire<'a> {
    #[serde(default, borrow)]
    timeline: TimelineWire<'a>,
}

#[derive(Deserialize, Default)]
struct TimelineWire<'a> {
    #[serde(default, borrow)]
    events: Vec<EventWire<'a>>,
    #[serde(default)]
    limited: bool,
}

#[derive(Deserialize)]
struct EventWire<'a> {
    #[serde(default, borrow)]
    content: ContentWire<'a>,
}

#[derive(Deserialize, Default)]
struct ContentWire<'a> {
    #[serde(default, borrow)]
    hearth_bench: Option<StampWire<'a>>,
}

#[derive(Deserialize)]
struct StampWire<'a> {
    #[serde(borrow)]
    run: Option<Cow<'a, str>>,
    seq: Option<u64>,
    sent_at_us: Option<u64>,
}

/// A stream frame: `{"type": "sync", "body": {…}}` (other types carry no body we read).
#[derive(Deserialize)]
struct FrameWire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    body: Option<SyncWire<'a>>,
}

impl SyncWire<'_> {
    fn digest(self, run_id: &str) -> Result<SyncDigest> {
        let Some(next_batch) = self.next_batch else {
            bail!("sync response has no next_batch");
        };
        let mut digest = SyncDigest {
            next_batch: next_batch.into_owned(),
            ..SyncDigest::default()
        };
        for room in self.rooms.join.into_values() {
            digest.limited_rooms += u64::from(room.timeline.limited);
            digest
                .stamps
                .extend(room.timeline.events.into_iter().filter_map(|event| {
                    let stamp = event.content.hearth_bench?;
                    (stamp.run.as_deref() == Some(run_id)).then_some((stamp.seq?, stamp.sent_at_us?))
                }));
        }
        Ok(digest)
    }
}

/// Reads a `/sync` response body.
pub fn sync_body(bytes: &[u8], run_id: &str) -> Result<SyncDigest> {
    serde_json::from_slice::<SyncWire>(bytes)
        .context("parsing a sync response")?
        .digest(run_id)
}

/// Reads a stream frame: `None` for frames that are not `sync` steps.
pub fn stream_frame(text: &str, run_id: &str) -> Result<Option<SyncDigest>> {
    let frame: FrameWire = serde_json::from_str(text).context("parsing a stream frame")?;
    match (frame.kind.as_ref(), frame.body) {
        ("sync", Some(body)) => body.digest(run_id).map(Some),
        ("sync", None) => bail!("sync frame without a body"),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stamped(run: &str, seq: u64) -> serde_json::Value {
        json!({"type": "m.room.message", "event_id": format!("$e{seq}"),
               "content": {"msgtype": "m.text", "body": "x\"y",
                           "hearth_bench": {"run": run, "seq": seq, "sent_at_us": 1000 + seq}}})
    }

    #[test]
    fn reads_this_runs_stamps_the_token_and_limited_rooms() {
        let body = json!({
            "next_batch": "s12_3",
            "account_data": {"events": [{"type": "x", "content": {"deep": [1, {"a": null}]}}]},
            "rooms": {
                "join": {
                    "!a:hs": {"timeline": {"events": [stamped("run1", 1), stamped("other", 2),
                                                       {"type": "m.room.redaction", "redacts": "$x"}],
                                           "limited": true, "prev_batch": "p"},
                              "ephemeral": {"events": []}},
                    "!b:hs": {"timeline": {"events": [stamped("run1", 3)]}},
                    "!c:hs": {"summary": {}}
                },
                "leave": {"!d:hs": {"timeline": {"events": [stamped("run1", 4)]}}}
            }
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let mut digest = sync_body(&bytes, "run1").unwrap();
        digest.stamps.sort_unstable();
        assert_eq!(
            digest,
            SyncDigest {
                next_batch: "s12_3".into(),
                stamps: vec![(1, 1001), (3, 1003)],
                limited_rooms: 1
            }
        );
        assert!(sync_body(br#"{"rooms": {}}"#, "run1").is_err(), "no next_batch");
        assert!(sync_body(b"<html>", "run1").is_err());
    }

    #[test]
    fn reads_sync_frames_and_passes_over_others() {
        let frame = json!({"type": "sync", "body": {"next_batch": "t", "rooms": {"join": {
            "!a:hs": {"timeline": {"events": [stamped("r", 7)]}}}}}});
        let digest = stream_frame(&frame.to_string(), "r").unwrap().unwrap();
        assert_eq!(digest.stamps, [(7, 1007)]);
        assert_eq!(digest.next_batch, "t");
        let other = json!({"type": "send_result", "txn_id": "1", "event_id": "$e"});
        assert_eq!(stream_frame(&other.to_string(), "r").unwrap(), None);
    }
}
