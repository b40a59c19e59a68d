//! Reading a room's history for a viewer: `/messages`, `/context`, `/event` and the timelines of
//! `/sync`. Every read goes through the viewer's `RoomAccess`, and every scan is bounded: it
//! walks only the ranges that can hold visible events and at most `MAX_SCANNED` events per
//! request, then answers with what it found and a position to continue from — a filter or a
//! history that matches nothing costs the server little (the spec lets a page be short).

use std::{collections::HashSet, sync::Arc};

use ruma::{
    EventId, RoomId,
    api::{
        Direction as ClientDirection,
        client::{context::get_context, message::get_message_events},
    },
    serde::Raw,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    error::{Error, Result},
    filter::RoomEventFilter,
    rooms::{
        self,
        access::{Reading, RoomAccess},
        client_event::{Viewer, client_events},
        relations::format_with_bundles,
        topo::PageToken,
    },
    services::Services,
    store::{Direction, EventRow, Topo},
    stream::StreamToken,
};

/// Most events one request examines.
pub const MAX_SCANNED: usize = 1000;

/// Most events read from the database at once. A scan starts with a page just large enough
/// for its limit and doubles it while invisible or filtered events leave it short: every row
/// read may cost a decryption (search-enabled rooms), so a search result's context of five
/// events must not read two hundred.
const PAGE: usize = 200;

/// What a scan found.
#[derive(Debug)]
pub struct Scanned<K = i64> {
    /// The kept events, in scan order (newest first when scanning backwards).
    /// Shared: rows from the sync engine's rings are the ring's own, not copies.
    pub rows: Vec<Arc<EventRow>>,
    /// The scan stopped before the end of its range: more events may match.
    pub more: bool,
    /// Where a next scan in the same direction continues: backwards, the events at or before
    /// this position remain; forwards, the events after it.
    pub next: K,
    /// A late event the viewer may see lay in the range: left out of a stream scan (`/sync`
    /// never delivers late events as new), which tells the timeline is not whole.
    pub late: bool,
}

/// Which order a scan walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Stream positions, late events left out: `/sync` timelines. Positions are `Topo`s of
    /// depth 0 inside the scan.
    Stream,
    /// The topological order: `/messages`, `/context`.
    Topo,
}

/// Up to `limit` events of stream positions `(after, upto]` that the viewer may see and the
/// filter allows, scanning in `direction`; late events are left out (and noted in `late`).
pub async fn scan(
    svc: &Services,
    room_id: &str,
    access: &RoomAccess,
    (after, upto): (i64, i64),
    direction: Direction,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Scanned> {
    let at = |stream| Topo { depth: 0, stream };
    let scanned = scan_in(
        svc,
        room_id,
        access,
        Order::Stream,
        (at(after), at(upto)),
        direction,
        limit,
        filter,
    )
    .await?;
    Ok(Scanned {
        rows: scanned.rows,
        more: scanned.more,
        next: scanned.next.stream,
        late: scanned.late,
    })
}

/// Up to `limit` events of `(after, upto]` in the room's topological order that the viewer
/// may see and the filter allows, scanning in `direction`.
pub async fn scan_topo(
    svc: &Services,
    room_id: &str,
    access: &RoomAccess,
    range: (Topo, Topo),
    direction: Direction,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Scanned<Topo>> {
    scan_in(svc, room_id, access, Order::Topo, range, direction, limit, filter).await
}

#[allow(clippy::too_many_arguments)]
async fn scan_in(
    svc: &Services,
    room_id: &str,
    access: &RoomAccess,
    order: Order,
    (after, upto): (Topo, Topo),
    direction: Direction,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Scanned<Topo>> {
    let key = |row: &EventRow| match order {
        Order::Stream => Topo {
            depth: 0,
            stream: row.stream_ordering,
        },
        Order::Topo => Topo::of(row),
    };
    let mut ranges: Vec<(Topo, Topo)> = match order {
        Order::Stream => access
            .candidate_ranges(after.stream, upto.stream)
            .into_iter()
            .map(|(lo, hi)| (Topo { depth: 0, stream: lo }, Topo { depth: 0, stream: hi }))
            .collect(),
        Order::Topo => access.candidate_topo_ranges(after, upto),
    };
    if direction == Direction::Backwards {
        ranges.reverse();
    }
    let mut kept = Vec::new();
    let mut late = false;
    let mut examined = 0;
    let mut pos = match direction {
        Direction::Backwards => upto,
        Direction::Forwards => after,
    };
    // One more than the limit: the extra visible event tells that more follow.
    let mut want = limit.saturating_add(1).min(PAGE);
    for (lo, hi) in ranges {
        // The part of the range still to read: (from, to].
        let (mut from, mut to) = (lo.prev(), hi);
        loop {
            let budget = MAX_SCANNED - examined;
            if budget == 0 {
                return Ok(Scanned {
                    rows: kept,
                    more: true,
                    next: pos,
                    late,
                });
            }
            let page = budget.min(want);
            want = want.saturating_mul(2).min(PAGE);
            let rows = match order {
                // Recent events come from the sync engine's rings when they hold the whole
                // range (the same rows, checked below like any other).
                Order::Stream => {
                    match svc
                        .sync_engine
                        .recent_events(room_id, (from.stream, to.stream), page, direction)
                    {
                        Some(rows) => rows,
                        None => svc
                            .store
                            .room_events(room_id, from.stream, to.stream, page as i64, direction)
                            .await?
                            .into_iter()
                            .map(Arc::new)
                            .collect(),
                    }
                }
                Order::Topo => svc
                    .store
                    .room_events_topo(room_id, from, to, page as i64, direction)
                    .await?
                    .into_iter()
                    .map(Arc::new)
                    .collect(),
            };
            let exhausted = rows.len() < page;
            // `related_by_*`: which events of the page have such children, in one query.
            let related: Option<HashSet<String>> = if filter.filters_by_relations() {
                let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
                Some(
                    svc.store
                        .events_with_children(
                            room_id,
                            &ids,
                            filter.related_by_rel_types.as_deref(),
                            filter.related_by_senders.as_deref(),
                        )
                        .await?
                        .into_iter()
                        .collect(),
                )
            } else {
                None
            };
            for row in rows {
                examined += 1;
                let at = key(&row);
                if access.can_see(&row)
                    && filter.allows_event(&row)
                    && related.as_ref().is_none_or(|r| r.contains(&row.event_id))
                {
                    if order == Order::Stream && row.late {
                        late = true;
                    } else {
                        if kept.len() == limit {
                            return Ok(Scanned {
                                rows: kept,
                                more: true,
                                next: pos,
                                late,
                            });
                        }
                        kept.push(row);
                    }
                }
                match direction {
                    Direction::Backwards => to = at.prev(),
                    Direction::Forwards => from = at,
                }
                pos = match direction {
                    Direction::Backwards => to,
                    Direction::Forwards => from,
                };
            }
            if exhausted {
                break;
            }
        }
        pos = match direction {
            Direction::Backwards => lo.prev(),
            Direction::Forwards => hi,
        };
    }
    Ok(Scanned {
        rows: kept,
        more: false,
        next: pos,
        late,
    })
}

/// A `/messages` request, parsed.
pub struct MessagesRequest {
    pub from: Option<PageToken>,
    pub to: Option<PageToken>,
    pub direction: Direction,
    pub limit: usize,
    pub filter: RoomEventFilter,
}

/// A `/messages` page: events in the order asked, the tokens, and (lazy loading) the member
/// events of the chunk's senders.
pub struct Messages {
    pub start: PageToken,
    pub end: Option<PageToken>,
    pub chunk: Vec<Arc<EventRow>>,
    pub state: Vec<EventRow>,
    /// The viewer's access, for the bundled aggregations.
    pub access: RoomAccess,
}

/// `GET /rooms/{roomId}/messages`: pages in the room's topological order (`rooms::topo`).
pub async fn messages(
    svc: &Services,
    room_id: &RoomId,
    viewer: &str,
    req: MessagesRequest,
) -> Result<Messages> {
    let mut access = RoomAccess::load(svc, room_id, viewer).await?;
    access.reading()?;
    let upper = access.events_until_topo();
    let (from_token, from) = match req.from {
        Some(token) => (token, token.place(svc, room_id.as_str()).await?),
        // Backwards from now (a stream token: the live events after it come later); forwards
        // from the start of the room.
        None => match req.direction {
            Direction::Backwards => (PageToken::Stream(StreamToken::current(svc).await?), Topo::MAX),
            Direction::Forwards => (PageToken::Topo(Topo::MIN), Topo::MIN),
        },
    };
    let to = match req.to {
        Some(token) => Some(token.place(svc, room_id.as_str()).await?),
        None => None,
    };
    let range = match req.direction {
        Direction::Backwards => (to.unwrap_or(Topo::MIN), from.min(upper)),
        Direction::Forwards => (from, to.unwrap_or(Topo::MAX).min(upper)),
    };
    let read = |access: &RoomAccess| {
        let access = access.clone();
        let filter = &req.filter;
        async move {
            scan_topo(
                svc,
                room_id.as_str(),
                &access,
                range,
                req.direction,
                req.limit,
                filter,
            )
            .await
        }
    };
    let mut scanned = read(&access).await?;
    // The start of the history here, but not of the room: fill it from the room's other
    // servers, then read again (the access too: visibility changes may have come with it).
    if req.direction == Direction::Backwards
        && req.to.is_none()
        && !scanned.more
        && crate::federation::backfill::fill(svc, room_id).await
    {
        access = RoomAccess::load(svc, room_id, viewer).await?;
        scanned = read(&access).await?;
    }
    let state = if req.filter.lazy_load_members == Some(true) {
        members_of_senders(svc, room_id, &access, &scanned.rows).await?
    } else {
        Vec::new()
    };
    Ok(Messages {
        start: from_token,
        end: scanned.more.then_some(PageToken::Topo(scanned.next)),
        chunk: scanned.rows,
        state,
        access,
    })
}

/// The member events (in the state the viewer may read) of the senders of `rows`.
async fn members_of_senders(
    svc: &Services,
    room_id: &RoomId,
    access: &RoomAccess,
    rows: &[Arc<EventRow>],
) -> Result<Vec<EventRow>> {
    let senders: std::collections::BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| ("m.room.member".to_owned(), r.sender.clone()))
        .collect();
    let ids: Vec<String> = match access.reading()? {
        Reading::Member | Reading::Peeking => {
            let keys: Vec<(String, String)> = senders.into_iter().collect();
            svc.store
                .current_state_entries(room_id.as_str(), &keys)
                .await?
                .into_iter()
                .map(|(_, id, _)| id)
                .collect()
        }
        Reading::Former { .. } => crate::rooms::access::state_for(svc, room_id, access)
            .await?
            .into_iter()
            .filter(|(key, _)| senders.contains(key))
            .map(|(_, id)| id)
            .collect(),
    };
    Ok(svc.store.events(&ids).await?)
}

/// One event of a room, if the viewer may see it by the history visibility algorithm, whatever
/// their membership now (an invitee sees what was sent while invited under `invited`); 404
/// otherwise: whether an event exists is itself not shown to those who may not see it.
pub async fn event(svc: &Services, room_id: &RoomId, viewer: &str, event_id: &EventId) -> Result<EventRow> {
    let access = RoomAccess::load(svc, room_id, viewer).await?;
    visible_event(svc, room_id, &access, event_id).await
}

async fn visible_event(
    svc: &Services,
    room_id: &RoomId,
    access: &RoomAccess,
    event_id: &EventId,
) -> Result<EventRow> {
    svc.store
        .event(event_id.as_str())
        .await?
        .filter(|e| e.room_id == room_id.as_str() && !e.soft_failed && access.can_see(e))
        .ok_or_else(|| Error::not_found("Event not found"))
}

/// `GET /rooms/{roomId}/context/{eventId}`: the event, visible events around it, the state at it.
pub struct Context {
    pub event: EventRow,
    /// Newest first.
    pub before: Vec<Arc<EventRow>>,
    pub after: Vec<Arc<EventRow>>,
    pub start: PageToken,
    pub end: PageToken,
    pub state: Vec<EventRow>,
    pub access: RoomAccess,
}

/// The visible events around `event` in the room's topological order: up to `before_n`
/// before it (newest first) and `after_n` after it, with the tokens to page on from each end.
pub async fn around(
    svc: &Services,
    room_id: &str,
    access: &RoomAccess,
    event: &EventRow,
    (before_n, after_n): (usize, usize),
    filter: &RoomEventFilter,
) -> Result<(Scanned<Topo>, Scanned<Topo>)> {
    let at = Topo::of(event);
    let before = scan_topo(
        svc,
        room_id,
        access,
        (Topo::MIN, at.prev()),
        Direction::Backwards,
        before_n,
        filter,
    )
    .await?;
    let after = scan_topo(
        svc,
        room_id,
        access,
        (at, access.events_until_topo().max(at)),
        Direction::Forwards,
        after_n,
        filter,
    )
    .await?;
    Ok((before, after))
}

pub async fn context(
    svc: &Services,
    room_id: &RoomId,
    viewer: &str,
    event_id: &EventId,
    limit: usize,
) -> Result<Context> {
    let access = RoomAccess::load(svc, room_id, viewer).await?;
    let event = visible_event(svc, room_id, &access, event_id).await?;
    let now = StreamToken::current(svc).await?;
    let before_n = limit / 2;
    let everything = RoomEventFilter::default();
    let (before, after) = around(
        svc,
        room_id.as_str(),
        &access,
        &event,
        (before_n, limit - before_n),
        &everything,
    )
    .await?;
    let state_ids: Vec<String> = svc
        .store
        .state_of_group(event.state_group)
        .await?
        .into_values()
        .collect();
    let mut state = svc.store.events(&state_ids).await?;
    state.sort_by_key(|r| r.stream_ordering);
    Ok(Context {
        start: PageToken::Topo(before.next),
        // Read to the end: forwards from now on, so events sent later are found.
        end: if after.more {
            PageToken::Topo(after.next)
        } else {
            PageToken::Stream(now)
        },
        event,
        before: before.rows,
        after: after.rows,
        state,
        access,
    })
}

/// `GET /rooms/{roomId}/messages` as the client sees it. Our own shape rather than ruma's: ruma
/// leaves out an empty `state`, which a lazy-loading client is sent as `[]`.
#[derive(Serialize)]
pub struct MessagesResponse {
    pub start: String,
    pub chunk: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Present exactly when members are lazy-loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Vec<Value>>,
}

/// Most events a `/messages` page holds.
const MAX_MESSAGES_LIMIT: u64 = 1000;

/// Most events `/context` returns around its event.
const MAX_CONTEXT_LIMIT: u64 = 100;

/// Parses a `/messages` request, reads the page, formats it for `viewer`.
pub async fn messages_for_client(
    svc: &Services,
    viewer: Viewer<'_>,
    req: get_message_events::v3::Request,
    raw_filter: Option<&str>,
) -> Result<MessagesResponse> {
    let room = rooms::room(svc, &req.room_id).await?;
    let direction = match req.dir {
        ClientDirection::Backward => Direction::Backwards,
        ClientDirection::Forward => Direction::Forwards,
    };
    // The filter arrives parsed by ruma; ours is read from the same JSON and keeps its limits.
    let filter = if let Some(raw) = raw_filter.filter(|f| f.trim_start().starts_with('{')) {
        RoomEventFilter::parse(raw)?
    } else if req.filter.is_empty() {
        RoomEventFilter::default()
    } else {
        RoomEventFilter::parse(&serde_json::to_string(&req.filter).map_err(Error::internal)?)?
    };
    let lazy_load = filter.lazy_load_members == Some(true);
    let parsed = MessagesRequest {
        from: req.from.as_deref().map(PageToken::parse).transpose()?,
        to: req.to.as_deref().map(PageToken::parse).transpose()?,
        direction,
        limit: u64::from(req.limit).clamp(1, MAX_MESSAGES_LIMIT) as usize,
        filter,
    };
    let page = messages(svc, &req.room_id, viewer.user_id, parsed).await?;
    let version = &room.row.room_version;
    let state = if lazy_load {
        Some(client_events(svc, &page.state, version, Some(viewer)).await?)
    } else {
        None
    };
    Ok(MessagesResponse {
        start: page.start.to_string(),
        chunk: format_with_bundles(svc, viewer, &page.access, version, &page.chunk).await?,
        end: page.end.map(|end| end.to_string()),
        state,
    })
}

/// `GET /rooms/{roomId}/event/{eventId}` as the client sees it.
pub async fn event_for_client(
    svc: &Services,
    viewer: Viewer<'_>,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Raw<ruma::events::AnyTimelineEvent>> {
    let room = rooms::room(svc, room_id).await?;
    let access = RoomAccess::load(svc, room_id, viewer.user_id).await?;
    let row = visible_event(svc, room_id, &access, event_id).await?;
    let mut formatted = format_with_bundles(
        svc,
        viewer,
        &access,
        &room.row.room_version,
        std::slice::from_ref(&row),
    )
    .await?;
    raw(&formatted
        .pop()
        .ok_or_else(|| Error::internal("event not formatted"))?)
}

/// A formatted event as ruma's raw JSON.
pub fn raw<T>(value: &Value) -> Result<Raw<T>> {
    let json = serde_json::value::to_raw_value(value).map_err(Error::internal)?;
    Ok(Raw::from_json(json))
}

/// `GET /rooms/{roomId}/context/{eventId}` as the client sees it. Our own shape: ruma leaves out
/// empty lists, which clients are sent as `[]`.
#[derive(Serialize)]
pub struct ContextResponse {
    pub event: Value,
    pub events_before: Vec<Value>,
    pub events_after: Vec<Value>,
    pub start: String,
    pub end: String,
    pub state: Vec<Value>,
}

pub async fn context_for_client(
    svc: &Services,
    viewer: Viewer<'_>,
    req: get_context::v3::Request,
) -> Result<ContextResponse> {
    let room = rooms::room(svc, &req.room_id).await?;
    let limit = u64::from(req.limit).min(MAX_CONTEXT_LIMIT) as usize;
    let context = context(svc, &req.room_id, viewer.user_id, &req.event_id, limit).await?;
    let version = &room.row.room_version;
    // One bundle query for the event and those around it.
    let mut rows = vec![&context.event];
    rows.extend(context.before.iter().map(|row| &**row));
    rows.extend(context.after.iter().map(|row| &**row));
    let mut formatted = format_with_bundles(svc, viewer, &context.access, version, &rows).await?;
    let events_after = formatted.split_off(1 + context.before.len());
    let events_before = formatted.split_off(1);
    let event = formatted
        .pop()
        .ok_or_else(|| Error::internal("event not formatted"))?;
    let viewer = Some(viewer);
    Ok(ContextResponse {
        event,
        events_before,
        events_after,
        start: context.start.to_string(),
        end: context.end.to_string(),
        state: client_events(svc, &context.state, version, viewer).await?,
    })
}
