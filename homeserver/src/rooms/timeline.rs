//! Creating local events: build the PDU, check it against the room version's authorization
//! rules, then `persist` it: store it with what the listeners add (`rooms::listener`) and hand
//! the committed batch to them (push, `/sync` wake-ups). `persist` takes built events, so
//! events that arrive already built (remote PDUs) can share it.
//!
//! Appends are serialized by one lock so that stream positions are handed out in commit order
//! (a reader that has seen position N has seen everything before N). Under that lock each room's
//! draft — version, the state entries read so far, forward extremities, state group — stays in
//! memory between appends, so a message costs no reads: this process is the only writer of its
//! rooms (several processes will need the lock and the cache to move; see ARCHITECTURE.md).

use std::collections::{HashMap, HashSet, VecDeque};

use hearth_federation::{
    Pdu, PduError,
    pdu::{PduTemplate, room_id_from_create_event},
    rules_for,
};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt,
    UserId,
    events::TimelineEventType,
    room_version_rules::RoomVersionRules,
    state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules},
};
use serde_json::{Value, value::to_raw_value};
use tokio::sync::{Mutex, oneshot};

use crate::{
    error::{Error, Result},
    rooms::{checks, listener, privacy, relations},
    services::Services,
    store::{Appending, EventRow, NewEvent, Placed, RoomRow, StoreResult, Txn, TxnKey},
    util::now_ms,
};

/// What a caller wants in a new event.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub event_type: String,
    pub state_key: Option<String>,
    pub content: Value,
    /// For `m.room.redaction` in room versions before 11 (later ones use `content.redacts`).
    pub redacts: Option<OwnedEventId>,
}

impl EventSpec {
    pub fn state(event_type: &str, state_key: &str, content: Value) -> Self {
        Self {
            event_type: event_type.into(),
            state_key: Some(state_key.into()),
            content,
            redacts: None,
        }
    }

    /// An `m.room.redaction` of `target`: `redacts` in the content from room version 11 on, at
    /// the top level of the event before.
    pub fn redaction(rules: &RoomVersionRules, target: OwnedEventId, mut content: Value) -> Self {
        let in_content = rules.redaction.content_field_redacts;
        if let Some(object) = content.as_object_mut() {
            if in_content {
                object.insert("redacts".into(), Value::String(target.to_string()));
            } else {
                object.remove("redacts");
            }
        }
        Self {
            event_type: "m.room.redaction".into(),
            state_key: None,
            content,
            redacts: (!in_content).then_some(target),
        }
    }

    pub fn message(event_type: &str, content: Value) -> Self {
        Self {
            event_type: event_type.into(),
            state_key: None,
            content,
            redacts: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Appended {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub stream_ordering: i64,
}

#[derive(Default)]
pub struct Timeline {
    /// The append lock, and the rooms as the last append left them.
    write_lock: Mutex<HashMap<OwnedRoomId, Draft>>,
    /// Appends waiting for the lock's holder to write them.
    queue: std::sync::Mutex<Queue>,
}

/// The appends waiting, and whether a writer task is already on its way to write them.
#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Set by the append that spawns a writer, cleared by that writer when it finds the queue
    /// empty (under this same mutex, so no append is left without a writer).
    writer: bool,
}

/// Most events written in one transaction.
const MAX_BATCH: usize = 256;

/// An append waiting in the queue.
struct Pending {
    room_id: OwnedRoomId,
    sender: OwnedUserId,
    spec: EventSpec,
    txn: Option<Txn>,
    reply: oneshot::Sender<Result<Appended>>,
}

/// A queued append built and authorized, ready to store.
struct Prepared {
    appending: Box<Appending>,
    event_id: OwnedEventId,
}

/// A built event's callers (the first, and retries of its transaction in the same batch).
struct BuiltFor {
    event_id: OwnedEventId,
    waiting: Vec<Pending>,
}

/// Rooms whose drafts are kept; past this the cache starts again empty (a crude bound on memory).
const MAX_CACHED_ROOMS: usize = 10_000;

/// Most prev_events a new event references.
const MAX_PREV_EVENTS: usize = 20;

/// The room as the next event sees it: what is stored, plus events built in this batch but not
/// stored yet. State entries read from the database are kept, so a room reads each once.
struct Draft {
    room_id: Option<OwnedRoomId>,
    version: RoomVersionId,
    stored: bool,
    /// Entries of the current state read or built so far (not all of it).
    state: HashMap<(String, String), Pdu>,
    /// prev_events, their greatest depth and their greatest topological depth, once known.
    extremities: Option<(Vec<OwnedEventId>, u64, i64)>,
    /// The state group after the newest stored event (`None` before the first).
    state_group: Option<i64>,
    /// Whether `state` holds the room's privacy mode and encryption events (when it has them):
    /// read once with the first event built, kept current by the events built since.
    privacy_read: bool,
    /// Annotations built in the batch being written, not stored yet (`rooms::relations`).
    annotations: HashSet<relations::AnnotationKey>,
}

impl Draft {
    fn stored(room_id: &RoomId, version: RoomVersionId, state_group: Option<i64>) -> Self {
        Self {
            room_id: Some(room_id.to_owned()),
            version,
            stored: true,
            state: HashMap::new(),
            extremities: None,
            state_group,
            privacy_read: false,
            annotations: HashSet::new(),
        }
    }

    fn new_room(room_id: Option<OwnedRoomId>, version: RoomVersionId) -> Self {
        Self {
            room_id,
            version,
            stored: false,
            state: HashMap::new(),
            extremities: Some((Vec::new(), 0, 0)),
            state_group: None,
            privacy_read: true,
            annotations: HashSet::new(),
        }
    }
}

/// What a new room starts with.
pub struct NewRoom<'a> {
    pub version: &'a RoomVersionId,
    pub creator: &'a UserId,
    /// Content of the `m.room.create` event.
    pub content: Value,
    /// Events the creator sends right after, in order.
    pub initial: Vec<EventSpec>,
    pub alias: Option<&'a str>,
    pub is_public: bool,
}

/// An event built and authorized, ready to store.
struct Built {
    new: NewEvent,
    event_id: OwnedEventId,
}

impl Timeline {
    /// Appends a local event to an existing room.
    ///
    /// Appends queue up and are written in batches (group commit): whoever holds the append lock
    /// builds every queued event in turn and stores them in one transaction. The writing runs in
    /// a task of its own, so a caller that goes away (a client hanging up) cannot abandon a batch
    /// that carries other callers' events.
    pub async fn append(
        &self,
        svc: &Services,
        room_id: &RoomId,
        sender: &UserId,
        spec: EventSpec,
        txn: Option<Txn>,
    ) -> Result<Appended> {
        // Refused here, before it can share a batch (and its transaction) with other events.
        checks::check_event(&spec)?;
        if let Some(txn) = &txn {
            checks::check_txn(txn)?;
        }
        let (reply, answer) = oneshot::channel();
        let spawn_writer = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.pending.push_back(Pending {
                room_id: room_id.to_owned(),
                sender: sender.to_owned(),
                spec,
                txn,
                reply,
            });
            !std::mem::replace(&mut queue.writer, true)
        };
        // One writer at a time: appends queued while it works go in its next batch.
        if spawn_writer {
            let writer = svc.clone();
            super::writer_thread::spawn(&tokio::runtime::Handle::current(), async move {
                writer.timeline.write_queued(&writer).await
            });
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Error::internal("the append was abandoned")))
    }

    /// Runs `work` under the append lock with the room's draft dropped before and after: the
    /// path of events built elsewhere (remote PDUs, a remote join), which check the room's state
    /// and `persist` while no local append can change it.
    pub(crate) async fn with_append_lock<T>(&self, room_id: &RoomId, work: impl Future<Output = T>) -> T {
        let mut drafts = self.write_lock.lock().await;
        drafts.remove(room_id);
        let out = work.await;
        drafts.remove(room_id);
        out
    }

    /// Writes queued appends, batch after batch, until the queue is empty (then the next
    /// append spawns a writer again).
    async fn write_queued(&self, svc: &Services) {
        // Should this task end early (a panic), the queue gets a new writer.
        let mut guard = WriterGuard { svc, done: false };
        let mut drafts = self.write_lock.lock().await;
        loop {
            let batch = self.next_batch();
            if batch.is_empty() {
                guard.done = true;
                return;
            }
            self.write_batch(svc, &mut drafts, batch).await;
        }
    }

    /// The next queued appends to write together: messages up to `MAX_BATCH`, or one state event
    /// alone (the events after it need the state group it creates). Empty: the writer is done.
    fn next_batch(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Vec::new();
        while let Some(next) = queue.pending.front() {
            let is_state = next.spec.state_key.is_some();
            if batch.len() >= MAX_BATCH || (is_state && !batch.is_empty()) {
                break;
            }
            batch.extend(queue.pending.pop_front());
            if is_state {
                break;
            }
        }
        if batch.is_empty() {
            queue.writer = false;
        }
        batch
    }

    /// Writes a batch (group commit) and answers every caller. When the batch's transaction
    /// fails, no event of it is stored and every draft it touched is dropped; its halves are then
    /// built and stored again, each on its own, down to single events, so one event the database
    /// refuses fails only its own callers (at the cost of a few transactions per bad event).
    async fn write_batch(
        &self,
        svc: &Services,
        drafts: &mut HashMap<OwnedRoomId, Draft>,
        batch: Vec<Pending>,
    ) {
        let mut work = vec![batch];
        while let Some(batch) = work.pop() {
            let Err(mut failed) = self.store_batch(svc, drafts, batch).await else {
                continue;
            };
            if failed.len() == 1 {
                for pending in failed.into_iter().flatten() {
                    let _ = pending
                        .reply
                        .send(Err(Error::internal("storing the event failed")));
                }
                continue;
            }
            // Rebuilt from the start: the stored events' IDs, prev_events and depths must not
            // name events of the failed transaction. The first half goes first, keeping order.
            let second = failed.split_off(failed.len() / 2);
            work.push(second.into_iter().flatten().collect());
            work.push(failed.into_iter().flatten().collect());
        }
    }

    /// Builds a batch's events against their rooms' drafts, stores those that passed in one
    /// transaction, and answers every caller. When storing fails, nobody is answered: the built
    /// events' callers come back, one group per event (the first caller and retries of its
    /// transaction), for `write_batch` to try again.
    async fn store_batch(
        &self,
        svc: &Services,
        drafts: &mut HashMap<OwnedRoomId, Draft>,
        batch: Vec<Pending>,
    ) -> Result<(), Vec<Vec<Pending>>> {
        // Drafts taken out for this batch: they go back only if the batch is stored.
        let mut touched: HashMap<OwnedRoomId, Draft> = HashMap::new();
        let mut appendings: Vec<Appending> = Vec::new();
        let mut built: Vec<BuiltFor> = Vec::new();
        let mut txns: HashMap<TxnKey, usize> = HashMap::new();
        let keys: Vec<Option<TxnKey>> = batch
            .iter()
            .map(|p| {
                p.txn
                    .as_ref()
                    .map(|t| (p.sender.to_string(), t.device_id.clone(), t.key()))
            })
            .collect();
        // The transactions that already produced an event (before this batch, or before a
        // restart): one lookup for the whole batch.
        let lookup: Vec<TxnKey> = keys.iter().flatten().cloned().collect();
        let stored = if lookup.is_empty() {
            Ok(HashMap::new())
        } else {
            svc.store.events_for_txns(&lookup).await.map_err(Error::from)
        };
        for (pending, txn_key) in batch.into_iter().zip(keys) {
            // A retry queued in the same batch as its first attempt gets the same answer.
            if let Some(first) = txn_key.as_ref().and_then(|k| txns.get(k)) {
                built[*first].waiting.push(pending);
                continue;
            }
            let existing = match (&txn_key, &stored) {
                (Some(key), Ok(stored)) => stored.get(key).cloned(),
                (Some(_), Err(error)) => {
                    let _ = pending.reply.send(Err(Error::internal(error.to_string())));
                    continue;
                }
                (None, _) => None,
            };
            if let Some((event_id, stream_ordering)) = existing {
                let _ = pending
                    .reply
                    .send(parse_event_id(&event_id).map(|event_id| Appended {
                        event_id,
                        room_id: pending.room_id.clone(),
                        stream_ordering,
                    }));
                continue;
            }
            match self.prepare(svc, drafts, &mut touched, &pending).await {
                Ok(Prepared { appending, event_id }) => {
                    if let Some(key) = txn_key {
                        txns.insert(key, built.len());
                    }
                    appendings.push(*appending);
                    built.push(BuiltFor {
                        event_id,
                        waiting: vec![pending],
                    });
                }
                Err(error) => {
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
        if appendings.is_empty() {
            for (room_id, draft) in touched {
                keep_as(drafts, room_id, draft);
            }
            return Ok(());
        }
        let placed = match persist(svc, &mut appendings).await {
            Ok(placed) => placed,
            Err(error) => {
                // `touched` is dropped: those rooms are read again from the database.
                tracing::error!(%error, events = appendings.len(), "storing a batch of events failed");
                return Err(built.into_iter().map(|b| b.waiting).collect());
            }
        };
        for (appending, at) in appendings.iter().zip(&placed) {
            if let Some(draft) = touched.get_mut(appending.event.room_id.as_str()) {
                draft.state_group = Some(at.state_group);
                draft.annotations.clear();
            }
        }
        for (room_id, draft) in touched {
            keep_as(drafts, room_id, draft);
        }
        for ((appending, at), done) in appendings.iter().zip(placed).zip(built) {
            let answer = parse_room_id(&appending.event.room_id).map(|room_id| Appended {
                event_id: done.event_id,
                room_id,
                stream_ordering: at.stream_ordering,
            });
            for pending in done.waiting {
                let _ = pending.reply.send(match &answer {
                    Ok(appended) => Ok(appended.clone()),
                    Err(e) => Err(Error::Internal(e.to_string())),
                });
            }
        }
        Ok(())
    }

    /// One queued append (its transaction new): the event built and authorized against the
    /// room's draft (taken into `touched`).
    async fn prepare(
        &self,
        svc: &Services,
        drafts: &mut HashMap<OwnedRoomId, Draft>,
        touched: &mut HashMap<OwnedRoomId, Draft>,
        pending: &Pending,
    ) -> Result<Prepared> {
        let Pending {
            room_id,
            sender,
            spec,
            txn,
            ..
        } = pending;
        if !touched.contains_key(room_id) {
            let draft = match drafts.remove(room_id) {
                Some(draft) => draft,
                None => {
                    let room = svc
                        .store
                        .room(room_id.as_str())
                        .await?
                        .ok_or_else(|| Error::not_found("Unknown room"))?;
                    let version =
                        RoomVersionId::try_from(room.room_version.as_str()).map_err(Error::internal)?;
                    Draft::stored(
                        room_id,
                        version,
                        svc.store.current_state_group(room_id.as_str()).await?,
                    )
                }
            };
            touched.insert(room_id.clone(), draft);
        }
        let draft = touched
            .get_mut(room_id)
            .ok_or_else(|| Error::internal("draft vanished"))?;
        let previous_group = draft.state_group;
        // A refused event leaves the draft as it was (build changes it only on success).
        let built = self.build(svc, draft, sender, spec, txn.clone()).await?;
        Ok(Prepared {
            appending: Box::new(Appending {
                event: built.new,
                previous_group,
                push: Vec::new(),
                outbound: Vec::new(),
            }),
            event_id: built.event_id,
        })
    }

    /// Creates a room: its `m.room.create` event with `content`, then `initial` events sent by
    /// `creator`, all authorized in turn and stored in one transaction — a failure leaves no
    /// half-made room. Events after the create event that the rules refuse are the request's
    /// fault: `400 M_INVALID_ROOM_STATE`.
    pub async fn create_room(&self, svc: &Services, room: NewRoom<'_>) -> Result<OwnedRoomId> {
        let NewRoom {
            version,
            creator,
            content,
            initial,
            alias,
            is_public,
        } = room;
        let mut drafts = self.write_lock.lock().await;
        let rules =
            rules_for(version).ok_or_else(|| Error::unsupported_room_version("Unsupported room version"))?;
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(new_room_id(svc.server_name())?)
        };
        let mut draft = Draft::new_room(room_id, version.clone());
        let create = EventSpec::state("m.room.create", "", content);
        let mut events = vec![self.build(svc, &mut draft, creator, &create, None).await?.new];
        for spec in initial {
            checks::check_event(&spec)?;
            let built = self
                .build(svc, &mut draft, creator, &spec, None)
                .await
                .map_err(|e| {
                    if let Error::Forbidden(reason) = e {
                        Error::InvalidRoomState(reason)
                    } else {
                        e
                    }
                })?;
            events.push(built.new);
        }
        let room_id = draft.room_id.clone().expect("set by the create event");
        let row = RoomRow {
            room_id: room_id.to_string(),
            room_version: version.to_string(),
            creator: creator.to_string(),
            is_public,
        };
        let mut batch: Vec<Appending> = events
            .into_iter()
            .map(|event| Appending {
                event,
                previous_group: None,
                push: Vec::new(),
                outbound: Vec::new(),
            })
            .collect();
        listener::prepare_new_room(svc, &mut batch).await;
        let Some(placed) = svc
            .store
            .create_room_with_events(&row, alias, &batch, now_ms())
            .await?
        else {
            return Err(Error::room_in_use("Room alias already taken"));
        };
        if is_public {
            svc.directory.invalidate();
        }
        draft.stored = true;
        draft.state_group = Some(placed.state_group);
        keep(&mut drafts, draft);
        let events: Vec<NewEvent> = batch.into_iter().map(|a| a.event).collect();
        listener::room_created(svc, &events, placed).await;
        Ok(room_id)
    }

    /// Builds the next event of a draft room: PDU, hashes, signature, ID, and the checks of the
    /// room version's authorization rules; the draft then includes it.
    async fn build(
        &self,
        svc: &Services,
        draft: &mut Draft,
        sender: &UserId,
        spec: &EventSpec,
        txn: Option<Txn>,
    ) -> Result<Built> {
        let rules = rules_for(&draft.version)
            .ok_or_else(|| Error::unsupported_room_version("Unsupported room version"))?;
        let event_type = TimelineEventType::from(spec.event_type.as_str());
        let raw_content = to_raw_value(&spec.content).map_err(|e| Error::bad_json(e.to_string()))?;
        let auth_types = auth_types_for_event(
            &event_type,
            sender,
            spec.state_key.as_deref(),
            &raw_content,
            &rules.authorization,
        )
        .map_err(Error::bad_json)?;

        // The state the rules read: the auth event types, plus the create event (which
        // room version 12 leaves out of auth_events but the rules still consult).
        // The room's privacy state too, the first time (rooms::privacy).
        let privacy_keys = [
            (privacy::PRIVACY_EVENT_TYPE.to_owned(), String::new()),
            ("m.room.encryption".to_owned(), String::new()),
        ];
        let privacy_wanted = if draft.privacy_read {
            &[][..]
        } else {
            &privacy_keys[..]
        };
        let mut wanted: Vec<(String, String)> = auth_types
            .iter()
            .map(|(t, k)| (t.to_string(), k.clone()))
            .chain([("m.room.create".to_owned(), String::new())])
            .chain(privacy_wanted.iter().cloned())
            .filter(|key| !draft.state.contains_key(key))
            .collect();
        wanted.sort();
        wanted.dedup();
        if draft.stored
            && let Some(room_id) = &draft.room_id
            && !wanted.is_empty()
        {
            for (key, event_id, json) in svc.store.current_state_entries(room_id.as_str(), &wanted).await? {
                let pdu = Pdu::from_stored(parse_event_id(&event_id)?, &json).map_err(Error::internal)?;
                draft.state.insert(key, pdu);
            }
        }
        draft.privacy_read = true;
        check_privacy(svc, draft, spec)?;
        let auth_events: Vec<OwnedEventId> = auth_types
            .iter()
            .filter_map(|(t, k)| draft.state.get(&(t.to_string(), k.clone())))
            .map(|pdu| pdu.event_id.clone())
            .collect();

        if draft.extremities.is_none()
            && let Some(room_id) = &draft.room_id
        {
            let stored = svc.store.forward_extremities(room_id.as_str()).await?;
            let depth = stored.iter().map(|(_, d)| *d).max().unwrap_or(0) as u64;
            let topo = svc.store.max_extremity_topo(room_id.as_str()).await?.unwrap_or(0);
            let prev = stored
                .into_iter()
                .take(MAX_PREV_EVENTS)
                .map(|(id, _)| parse_event_id(&id))
                .collect::<Result<Vec<_>>>()?;
            draft.extremities = Some((prev, depth, topo));
        }
        let (prev_events, max_depth, max_topo) = draft.extremities.clone().unwrap_or_default();

        let pdu = PduTemplate {
            room_id: draft.room_id.clone(),
            sender: sender.to_owned(),
            event_type: spec.event_type.clone(),
            state_key: spec.state_key.clone(),
            content: spec.content.clone(),
            prev_events,
            auth_events,
            // The spec's depth, held at its limit (a remote event may claim the largest).
            depth: (max_depth + 1).min(crate::rooms::topo::MAX_DEPTH as u64),
            origin_server_ts: MilliSecondsSinceUnixEpoch(
                UInt::new(svc.clock.now_ms() as u64).unwrap_or_default(),
            ),
            redacts: spec.redacts.clone(),
        }
        .finish(&rules, svc.server_name(), &svc.signing_key)
        .map_err(|e| match e {
            PduError::TooLarge => Error::too_large("Event is larger than 65536 bytes"),
            e => Error::bad_json(e.to_string()),
        })?;

        // What the checks fetch by ID: the new event's auth events and the create event. Found
        // by their state keys rather than by indexing the whole state (a large room's members)
        // for every event; anything else is looked for in the whole state.
        let fetchable: Vec<&Pdu> = auth_types
            .iter()
            .map(|(t, k)| (t.to_string(), k.clone()))
            .chain([("m.room.create".to_owned(), String::new())])
            .filter_map(|key| draft.state.get(&key))
            .collect();
        let by_id = |id: &EventId| {
            fetchable
                .iter()
                .copied()
                .find(|p| *p.event_id == *id)
                .or_else(|| draft.state.values().find(|p| *p.event_id == *id))
        };
        check_state_independent_auth_rules(&rules.authorization, &pdu, by_id)
            .map_err(|reason| Error::forbidden(format!("Event is not allowed: {reason}")))?;
        check_state_dependent_auth_rules(&rules.authorization, &pdu, |t, k: &str| {
            draft.state.get(&(t.to_string(), k.to_owned()))
        })
        .map_err(|reason| Error::forbidden(format!("Event is not allowed: {reason}")))?;

        let redacts = match (&spec.state_key, &pdu.redacts) {
            (None, Some(target)) => {
                check_redaction(svc, draft, &rules, sender, target).await?;
                Some(target.to_string())
            }
            _ => None,
        };
        let room_id = draft
            .room_id
            .get_or_insert_with(|| room_id_from_create_event(&pdu.event_id))
            .clone();
        let annotation =
            relations::check_new_relation(svc, room_id.as_str(), sender, spec, &draft.annotations).await?;
        let relation = spec.content.get("m.relates_to");
        let relation_field = |key: &str| {
            relation
                .and_then(|r| r.get(key))
                .and_then(Value::as_str)
                .map(ToOwned::to_owned)
        };
        let new = NewEvent {
            event_id: pdu.event_id.to_string(),
            room_id: room_id.to_string(),
            event_type: spec.event_type.clone(),
            state_key: spec.state_key.clone(),
            sender: sender.to_string(),
            depth: pdu.depth as i64,
            // Local events follow every extremity, so they sort above all the room has.
            topo: crate::rooms::topo::after(max_topo),
            late: false,
            origin_server_ts: u64::from(pdu.origin_server_ts.0) as i64,
            redacts,
            rel_type: relation_field("rel_type"),
            relates_to: relation_field("event_id"),
            relation_key: relation_field("key")
                .filter(|_| relation_field("rel_type").as_deref() == Some("m.annotation")),
            prev_events: pdu.prev_events.iter().map(ToString::to_string).collect(),
            membership: (spec.event_type == "m.room.member")
                .then(|| {
                    spec.content
                        .get("membership")
                        .and_then(Value::as_str)
                        .map(ToOwned::to_owned)
                })
                .flatten(),
            txn,
            json: pdu.to_canonical_string(),
        };
        draft.extremities = Some((vec![pdu.event_id.clone()], pdu.depth, new.topo));
        draft.annotations.extend(annotation);
        let event_id = pdu.event_id.clone();
        if let Some(state_key) = &spec.state_key {
            draft
                .state
                .insert((spec.event_type.clone(), state_key.clone()), pdu);
        }
        // A search-enabled room's events are stored encrypted (crate::at_rest): its data key
        // is committed before its first event is written.
        if !crate::at_rest::is_sealed_room(room_id.as_str())
            && privacy_state(draft)?.mode(&svc.config.privacy) == privacy::PrivacyMode::SearchEnabled
        {
            svc.store
                .ensure_room_data_key(room_id.as_str(), crate::util::now_ms())
                .await?;
        }
        Ok(Built { new, event_id })
    }
}

/// Stores built events (each with the room's state group before it) in one transaction, with
/// what the listeners add to them, then hands the committed batch to the listeners. On error
/// nothing is stored and no listener hears of the batch.
///
/// The caller serializes appends (stream positions are handed out in commit order): local
/// events come through `Timeline`'s append lock.
pub(crate) async fn persist(svc: &Services, batch: &mut [Appending]) -> StoreResult<Vec<Placed>> {
    listener::prepare(svc, batch).await;
    let placed = svc.store.append_events(batch).await?;
    listener::committed(svc, batch, &placed);
    Ok(placed)
}

/// Checks a redaction before it is stored as one (its `redacts` column set, which is what makes
/// it apply when its target is served): the target must be an event of the same room, sent by
/// the redaction's sender, or the sender must have the `redact` power level (client-server API
/// §"Redactions"; the auth rules leave this to the server from room version 3 on).
async fn check_redaction(
    svc: &Services,
    draft: &Draft,
    rules: &RoomVersionRules,
    sender: &UserId,
    target: &EventId,
) -> Result<()> {
    let room_id = draft
        .room_id
        .as_ref()
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let original = svc
        .store
        .event(target.as_str())
        .await?
        .filter(|e| e.room_id == room_id.as_str())
        .ok_or_else(|| Error::not_found("Event not found"))?;
    if original.sender == sender.as_str() {
        return Ok(());
    }
    let state = |event_type: &str| draft.state.get(&(event_type.to_owned(), String::new()));
    let content = |pdu: &Pdu| serde_json::from_str::<Value>(pdu.content.get()).unwrap_or_default();
    let create = state("m.room.create").ok_or_else(|| Error::internal("room without a create event"))?;
    let levels = state("m.room.power_levels").map(content);
    let level = crate::rooms::power::user_level(
        &rules.authorization,
        create.sender.as_str(),
        &content(create),
        levels.as_ref(),
        sender.as_str(),
    );
    if level < crate::rooms::power::action_level(levels.as_ref(), "redact", 50) {
        return Err(Error::forbidden("You may not redact this event"));
    }
    Ok(())
}

/// The room's privacy rules (`rooms::privacy`) against the draft's current state.
fn check_privacy(svc: &Services, draft: &Draft, spec: &EventSpec) -> Result<()> {
    privacy::check_local_event(&svc.config.privacy, &privacy_state(draft)?, spec)
}

/// The draft's `org.hearth.room.privacy` and `m.room.encryption` events.
fn privacy_state(draft: &Draft) -> Result<privacy::PrivacyState<'_>> {
    let entry = |event_type: &str| {
        draft
            .state
            .get(&(event_type.to_owned(), String::new()))
            .map(|pdu| {
                serde_json::from_str::<Value>(pdu.content.get())
                    .map(|content| (&*pdu.event_id, content))
                    .map_err(Error::internal)
            })
            .transpose()
    };
    Ok(privacy::PrivacyState {
        mode_event: entry(privacy::PRIVACY_EVENT_TYPE)?,
        encryption: entry("m.room.encryption")?,
    })
}

/// Hands the queue to a new writer when one ends before emptying it.
struct WriterGuard<'a> {
    svc: &'a Services,
    done: bool,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.svc.timeline.queue.lock().unwrap_or_else(|e| e.into_inner());
        let runtime = tokio::runtime::Handle::try_current();
        queue.writer = !queue.pending.is_empty() && runtime.is_ok();
        if queue.writer
            && let Ok(runtime) = runtime
        {
            let writer = self.svc.clone();
            super::writer_thread::spawn(
                &runtime,
                async move { writer.timeline.write_queued(&writer).await },
            );
        }
    }
}

/// Puts a room's draft back for the next append.
fn keep(drafts: &mut HashMap<OwnedRoomId, Draft>, draft: Draft) {
    if let Some(room_id) = draft.room_id.clone() {
        keep_as(drafts, room_id, draft);
    }
}

fn keep_as(drafts: &mut HashMap<OwnedRoomId, Draft>, room_id: OwnedRoomId, draft: Draft) {
    if drafts.len() >= MAX_CACHED_ROOMS {
        drafts.clear();
    }
    drafts.insert(room_id, draft);
}

/// Reads a stored event as a PDU.
pub fn pdu_of(row: &EventRow) -> Result<Pdu> {
    Pdu::from_stored(parse_event_id(&row.event_id)?, &row.json).map_err(Error::internal)
}

fn parse_event_id(id: &str) -> Result<OwnedEventId> {
    EventId::parse(id).map_err(Error::internal)
}

fn parse_room_id(id: &str) -> Result<OwnedRoomId> {
    RoomId::parse(id).map_err(Error::internal)
}

/// A random room ID for room versions before 12: `!` + 18 random letters + `:server`.
fn new_room_id(server_name: &str) -> Result<OwnedRoomId> {
    RoomId::parse(format!("!{}:{server_name}", crate::util::random_string(18))).map_err(Error::internal)
}

#[cfg(test)]
pub(crate) mod tests {
    use ruma::{UserId, user_id};
    use serde_json::json;

    use super::*;
    use crate::services::TestServices;

    pub(crate) fn alice() -> &'static UserId {
        user_id!("@alice:hearth.test")
    }

    pub(crate) fn bob() -> &'static UserId {
        user_id!("@bob:hearth.test")
    }

    /// A version 11 room that anyone may join, with alice (its creator) in it.
    pub(crate) async fn public_room(svc: &Services) -> OwnedRoomId {
        let alice = alice();
        let room = NewRoom {
            version: &RoomVersionId::V11,
            creator: alice,
            content: json!({ "room_version": "11" }),
            initial: vec![
                EventSpec::state("m.room.member", alice.as_str(), json!({ "membership": "join" })),
                EventSpec::state(
                    "m.room.power_levels",
                    "",
                    json!({ "users": { alice.as_str(): 100 } }),
                ),
                EventSpec::state("m.room.join_rules", "", json!({ "join_rule": "public" })),
            ],
            alias: None,
            is_public: false,
        };
        svc.timeline.create_room(svc, room).await.expect("room created")
    }

    pub(crate) async fn send(
        svc: &Services,
        room_id: &RoomId,
        sender: &UserId,
        content: Value,
    ) -> Result<Appended> {
        let spec = EventSpec::message("m.room.message", content);
        svc.timeline.append(svc, room_id, sender, spec, None).await
    }

    #[tokio::test]
    async fn an_appended_message_reads_back() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        let body = json!({ "msgtype": "m.text", "body": "hello" });
        let appended = send(svc, &room_id, alice(), body.clone()).await.expect("sent");

        assert_eq!(appended.room_id, room_id);
        let row = svc
            .store
            .event(appended.event_id.as_str())
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(row.stream_ordering, appended.stream_ordering);
        assert_eq!(row.sender, alice().as_str());
        assert_eq!(row.event_type, "m.room.message");
        let pdu = pdu_of(&row).expect("a PDU");
        assert_eq!(serde_json::from_str::<Value>(pdu.content.get()).unwrap(), body);
        // It is the room's only forward extremity now: the next event follows it.
        let extremities = svc.store.forward_extremities(room_id.as_str()).await.unwrap();
        assert_eq!(extremities.len(), 1);
        assert_eq!(extremities[0].0, appended.event_id.as_str());
    }

    #[tokio::test]
    async fn a_refused_event_leaves_nothing() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        let before = svc.store.max_stream_ordering().await.unwrap();
        let extremities = svc.store.forward_extremities(room_id.as_str()).await.unwrap();

        // Bob never joined: the auth rules refuse his message.
        let error = send(svc, &room_id, bob(), json!({ "msgtype": "m.text", "body": "hi" }))
            .await
            .expect_err("refused");
        assert_eq!(error.errcode(), "M_FORBIDDEN");
        assert_eq!(svc.store.max_stream_ordering().await.unwrap(), before);
        assert_eq!(
            svc.store.forward_extremities(room_id.as_str()).await.unwrap(),
            extremities
        );

        // The room's draft is intact: the next allowed event follows the stored ones.
        let next = send(
            svc,
            &room_id,
            alice(),
            json!({ "msgtype": "m.text", "body": "still here" }),
        )
        .await
        .expect("sent");
        let row = svc.store.event(next.event_id.as_str()).await.unwrap().unwrap();
        let prev: Vec<String> = pdu_of(&row)
            .unwrap()
            .prev_events
            .iter()
            .map(ToString::to_string)
            .collect();
        let stored: Vec<String> = extremities.into_iter().map(|(id, _)| id).collect();
        assert_eq!(prev, stored);
    }

    #[tokio::test]
    async fn an_unknown_room_is_not_found() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = RoomId::parse("!nowhere:hearth.test").unwrap();
        let error = send(svc, &room_id, alice(), json!({ "body": "x" }))
            .await
            .expect_err("refused");
        assert_eq!(error.errcode(), "M_NOT_FOUND");
        assert_eq!(svc.store.max_stream_ordering().await.unwrap(), 0);
    }
}
