//! The indexer: a projection of the event log into the search index, following the stream
//! ordering. It wakes when a batch is appended (`SearchListener`), reads the events after its
//! position, turns each into index operations, commits them and only then stores the new
//! position. Every operation is idempotent (a document is keyed by its event ID and replaced,
//! never added twice), so replaying a batch after a crash between the index commit and the
//! position write changes nothing.

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;
use tantivy::{TantivyDocument, Term};

use super::index::SearchIndex;
use crate::{
    error::{Error, Result},
    rooms::{
        privacy::{self, PRIVACY_EVENT_TYPE},
        relations::valid_edit,
        timeline::pdu_of,
    },
    services::Services,
    store::EventRow,
};

/// Events read and indexed per commit.
const BATCH: i64 = 1000;
/// Most relations read to find a message's latest edit.
const MAX_CHILDREN: i64 = 1000;

/// What one event does to the index.
pub(crate) enum Op {
    /// Index (or re-index) an event's text.
    Put(Doc),
    /// Forget an event (redacted).
    Delete(String),
    /// Forget a whole room (it became strict).
    DeleteRoom(String),
}

/// An indexed event: its text and what results are filtered and ordered by.
pub(crate) struct Doc {
    event_id: String,
    room_id: String,
    sender: String,
    event_type: String,
    thread: Option<String>,
    ts: i64,
    stream: i64,
    body: String,
    name: String,
    topic: String,
}

impl Doc {
    /// The document of `row` with `content` (the original's, or its latest edit's
    /// `m.new_content`), if the event type is indexed and there is text.
    fn of(row: &EventRow, content: &Value, thread: Option<String>) -> Option<Self> {
        let text = |key: &str| {
            content
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (body, name, topic) = match (row.event_type.as_str(), row.state_key.as_deref()) {
            ("m.room.message", None) => {
                let mut body = text("body");
                if let Some(html) = content.get("formatted_body").and_then(Value::as_str) {
                    body.push('\n');
                    body.push_str(&strip_tags(html));
                }
                (body, String::new(), String::new())
            }
            ("m.room.name", Some("")) => (String::new(), text("name"), String::new()),
            ("m.room.topic", Some("")) => (String::new(), String::new(), text("topic")),
            _ => return None,
        };
        if body.trim().is_empty() && name.trim().is_empty() && topic.trim().is_empty() {
            return None;
        }
        Some(Doc {
            event_id: row.event_id.clone(),
            room_id: row.room_id.clone(),
            sender: row.sender.clone(),
            event_type: row.event_type.clone(),
            thread,
            ts: row.origin_server_ts,
            stream: row.stream_ordering,
            body,
            name,
            topic,
        })
    }
}

/// `formatted_body` as text: tags dropped, the common entities decoded.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
}

/// Applies a batch of operations and commits it under `index_id`, then reloads the reader.
pub(crate) fn apply(index: &SearchIndex, index_id: &str, ops: Vec<Op>) -> tantivy::Result<()> {
    let f = index.fields;
    let mut writer = index.writer.lock().unwrap_or_else(|e| e.into_inner());
    for op in ops {
        match op {
            Op::Delete(id) => {
                writer.delete_term(Term::from_field_text(f.event_id, &id));
            }
            Op::DeleteRoom(room) => {
                writer.delete_term(Term::from_field_text(f.room_id, &room));
            }
            Op::Put(doc) => {
                writer.delete_term(Term::from_field_text(f.event_id, &doc.event_id));
                let mut d = TantivyDocument::default();
                d.add_text(f.event_id, &doc.event_id);
                d.add_text(f.room_id, &doc.room_id);
                d.add_text(f.sender, &doc.sender);
                d.add_text(f.event_type, &doc.event_type);
                if let Some(thread) = &doc.thread {
                    d.add_text(f.thread, thread);
                }
                d.add_i64(f.ts, doc.ts);
                d.add_i64(f.stream, doc.stream);
                d.add_text(f.body, &doc.body);
                d.add_text(f.name, &doc.name);
                d.add_text(f.topic, &doc.topic);
                writer.add_document(d)?;
            }
        }
    }
    let mut commit = writer.prepare_commit()?;
    commit.set_payload(index_id);
    commit.commit()?;
    drop(writer);
    index.reader.reload()
}

/// Follows the event log forever (spawned at start-up).
///
/// After a commit that left the indexer caught up, the next one waits `search.commit_interval_ms`
/// (unless a `/search` is waiting): under a steady stream of events, committing per stored batch
/// made tens of small segments a second, and merging them took a third of the server's CPU.
pub async fn run(svc: Services, index: Arc<SearchIndex>, index_id: String, mut position: i64) {
    let interval = std::time::Duration::from_millis(svc.config.search.commit_interval_ms);
    let mut modes: HashMap<String, bool> = HashMap::new();
    loop {
        // Registered before the read, so a batch committed during it still wakes us.
        let woken = svc.search.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match step(&svc, &index, &index_id, position, &mut modes).await {
            Ok(Some(Step { last, more })) => {
                position = last;
                svc.search.indexed.send_replace(position);
                if !more && !interval.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = svc.search.hurry.notified() => {}
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, position, "search indexing failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        woken.await;
    }
}

/// A committed batch: the position it reached, and whether it was full (more may follow at once).
struct Step {
    last: i64,
    more: bool,
}

/// Indexes the next batch after `position`; `None` when caught up.
async fn step(
    svc: &Services,
    index: &Arc<SearchIndex>,
    index_id: &str,
    position: i64,
    modes: &mut HashMap<String, bool>,
) -> Result<Option<Step>> {
    let (rows, last, more) = svc.store.events_after(position, BATCH).await?;
    let Some(last) = last else {
        return Ok(None);
    };
    let mut ops = Vec::new();
    for row in &rows {
        if let Err(error) = plan(svc, row, modes, &mut ops).await {
            // One unreadable event must not stop the index.
            tracing::warn!(%error, event_id = %row.event_id, "event not indexed");
        }
    }
    let (index, id) = (index.clone(), index_id.to_owned());
    tokio::task::spawn_blocking(move || apply(&index, &id, ops))
        .await
        .map_err(Error::internal)?
        .map_err(Error::internal)?;
    svc.store.set_search_position(index_id, last).await?;
    Ok(Some(Step { last, more }))
}

/// Whether the server may index the room: its mode now. Modes only move towards strict, so a
/// room strict now is never indexed, even for events from before it became strict.
async fn indexable(svc: &Services, room_id: &str, modes: &mut HashMap<String, bool>) -> Result<bool> {
    if let Some(known) = modes.get(room_id) {
        return Ok(*known);
    }
    let room = ruma::RoomId::parse(room_id).map_err(Error::internal)?;
    let allowed = privacy::mode(svc, &room).await?.allows_server_read();
    modes.insert(room_id.to_owned(), allowed);
    Ok(allowed)
}

async fn plan(
    svc: &Services,
    row: &EventRow,
    modes: &mut HashMap<String, bool>,
    ops: &mut Vec<Op>,
) -> Result<()> {
    let mode_change = row.state_key.as_deref() == Some("")
        && (row.event_type == PRIVACY_EVENT_TYPE || row.event_type == "m.room.encryption");
    if mode_change {
        modes.remove(&row.room_id);
        if !indexable(svc, &row.room_id, modes).await? {
            ops.push(Op::DeleteRoom(row.room_id.clone()));
        }
        return Ok(());
    }
    if !indexable(svc, &row.room_id, modes).await? {
        return Ok(());
    }
    match row.event_type.as_str() {
        "m.room.redaction" if row.state_key.is_none() => {
            // The store names the target only once the redaction was checked (`redacts`).
            let Some(target) = redacted_target(svc, row).await? else {
                return Ok(());
            };
            ops.push(Op::Delete(target.event_id.clone()));
            // A redacted edit: the original goes back to its latest remaining version.
            if target.rel_type.as_deref() == Some("m.replace")
                && let Some(original) = target.relates_to.as_deref()
            {
                refresh(svc, original, ops).await?;
            }
        }
        _ if row.redacted_by.is_some() => {}
        "m.room.message" if row.rel_type.as_deref() == Some("m.replace") => {
            if let Some(original) = row.relates_to.as_deref() {
                refresh(svc, original, ops).await?;
            }
        }
        _ => {
            let content = pdu_of(row)?.content_value();
            let thread = (row.rel_type.as_deref() == Some("m.thread"))
                .then(|| row.relates_to.clone())
                .flatten();
            if let Some(doc) = Doc::of(row, &content, thread) {
                ops.push(Op::Put(doc));
            }
        }
    }
    Ok(())
}

/// The event a checked redaction applies to.
async fn redacted_target(svc: &Services, redaction: &EventRow) -> Result<Option<EventRow>> {
    let pdu = pdu_of(redaction)?;
    let content = pdu.content_value();
    let json: Value = serde_json::from_str(&redaction.json).map_err(Error::internal)?;
    let Some(target) = json
        .get("redacts")
        .or_else(|| content.get("redacts"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    Ok(svc
        .store
        .event(target)
        .await?
        .filter(|t| t.room_id == redaction.room_id && t.redacted_by.is_some()))
}

/// Re-indexes a message with its latest valid, unredacted edit (as bundled aggregations show
/// it), or its own content when none is left.
async fn refresh(svc: &Services, original_id: &str, ops: &mut Vec<Op>) -> Result<()> {
    let Some(original) = svc.store.event(original_id).await? else {
        return Ok(());
    };
    if original.redacted_by.is_some() || original.rel_type.as_deref() == Some("m.replace") {
        return Ok(());
    }
    let children = svc
        .store
        .aggregation_children(std::slice::from_ref(&original.event_id), MAX_CHILDREN)
        .await?;
    let latest = children
        .iter()
        .filter(|c| c.room_id == original.room_id && c.rel_type.as_deref() == Some("m.replace"))
        .filter(|c| valid_edit(&original, c))
        .max_by(|a, b| (a.origin_server_ts, &a.event_id).cmp(&(b.origin_server_ts, &b.event_id)));
    let content = match latest {
        Some(edit) => pdu_of(edit)?
            .content_value()
            .get("m.new_content")
            .cloned()
            .unwrap_or_default(),
        None => pdu_of(&original)?.content_value(),
    };
    let thread = (original.rel_type.as_deref() == Some("m.thread"))
        .then(|| original.relates_to.clone())
        .flatten();
    match Doc::of(&original, &content, thread) {
        Some(doc) => ops.push(Op::Put(doc)),
        None => ops.push(Op::Delete(original.event_id.clone())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::strip_tags;

    #[test]
    fn formatted_body_is_indexed_as_text() {
        assert_eq!(
            strip_tags("<b>bold</b> &amp; <i>it</i>")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["bold", "&", "it"]
        );
    }
}
