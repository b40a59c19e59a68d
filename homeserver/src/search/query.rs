//! `POST /search`: the spec's `room_events` category over the index, results checked against
//! the viewer's access to each event (`rooms::access`), formatted with bundled aggregations.
//!
//! The query is built here from the analyzed search term (no query parser, so no syntax a
//! client could get wrong): every term must match one of the requested keys, BM25 ranks.
//! `next_batch` is `h1.<order>.<offset>.<upto>`: hits already passed, and the stream position
//! the first page was computed at, so later events never shift the pages that follow.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Bound,
    sync::Arc,
};

use ruma::{
    OwnedUserId, RoomId,
    api::client::search::search_events::v3::{GroupingKey, OrderBy, Request, SearchKeys},
};
use serde_json::{Map, Value, json};
use tantivy::{
    DocAddress, Order, Term,
    collector::{Count, TopDocs},
    query::{BooleanQuery, ConstScoreQuery, Occur, Query, RangeQuery, TermQuery, TermSetQuery},
    schema::{IndexRecordOption, Value as _},
};

use super::{index::SearchIndex, tokenizer};
use crate::{
    error::{Error, Result},
    filter::{RoomEventFilter, type_matches},
    rooms::{
        self, access::RoomAccess, client_event::Viewer, history, relations::format_with_bundles,
        topo::PageToken,
    },
    services::Services,
    store::{Direction, EventRow, Topo},
    stream::StreamToken,
};

/// Longest search term, in bytes.
pub const MAX_TERM_BYTES: usize = 1024;
/// Most terms a search term is analyzed into that are searched for.
const MAX_TERMS: usize = 32;
/// Results per page when the filter sets no limit, and the most a filter may ask for.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 50;
/// Index hits examined per request (hits the viewer may not see are skipped, not counted).
const MAX_HITS_EXAMINED: usize = 500;
/// Deepest page a `next_batch` may reach.
const MAX_OFFSET: usize = 10_000;
/// Most events of context on each side of a result.
const MAX_CONTEXT: usize = 20;
/// The event types that are indexed.
const INDEXED_TYPES: [&str; 3] = ["m.room.message", "m.room.name", "m.room.topic"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ordering {
    Rank,
    Recent,
}

/// Where a page starts.
struct Page {
    order: Ordering,
    offset: usize,
    upto: i64,
}

impl Page {
    fn parse(token: &str) -> Result<Self> {
        let bad = || Error::invalid_param("Invalid next_batch");
        let mut parts = token.split('.');
        if parts.next() != Some("h1") {
            return Err(bad());
        }
        let order = match parts.next() {
            Some("r") => Ordering::Rank,
            Some("t") => Ordering::Recent,
            _ => return Err(bad()),
        };
        let offset: usize = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let upto: i64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        if parts.next().is_some() || offset > MAX_OFFSET || upto < 0 {
            return Err(bad());
        }
        Ok(Page { order, offset, upto })
    }

    fn token(&self) -> String {
        let order = match self.order {
            Ordering::Rank => "r",
            Ordering::Recent => "t",
        };
        format!("h1.{order}.{}.{}", self.offset, self.upto)
    }
}

/// One index hit.
struct Hit {
    score: f32,
    event_id: String,
}

/// What the index is asked.
struct IndexQuery {
    query: BooleanQuery,
    order: Ordering,
}

/// Runs the query for `limit` hits after `offset`; also counts all hits.
fn run(
    index: &SearchIndex,
    q: &IndexQuery,
    offset: usize,
    limit: usize,
) -> tantivy::Result<(Vec<Hit>, usize)> {
    let searcher = index.reader.searcher();
    let top = TopDocs::with_limit(limit.max(1)).and_offset(offset);
    let (addresses, count): (Vec<(f32, DocAddress)>, usize) = match q.order {
        Ordering::Rank => searcher.search(&q.query, &(top.order_by_score(), Count))?,
        Ordering::Recent => {
            let (docs, count) = searcher.search(
                &q.query,
                &(top.order_by_fast_field::<i64>("stream", Order::Desc), Count),
            )?;
            (docs.into_iter().map(|(_, a)| (0.0, a)).collect(), count)
        }
    };
    let mut hits = Vec::with_capacity(addresses.len());
    for (score, address) in addresses {
        let doc: tantivy::TantivyDocument = searcher.doc(address)?;
        if let Some(id) = doc.get_first(index.fields.event_id).and_then(|v| v.as_str()) {
            hits.push(Hit {
                score,
                event_id: id.to_owned(),
            });
        }
    }
    Ok((hits, count))
}

/// `POST /search`.
pub async fn search(svc: &Services, viewer: Viewer<'_>, req: Request) -> Result<Value> {
    let Some(criteria) = req.search_categories.room_events else {
        return Ok(json!({ "search_categories": {} }));
    };
    let term = criteria.search_term.trim();
    if term.is_empty() {
        return Err(Error::invalid_param("search_term is empty"));
    }
    if criteria.search_term.len() > MAX_TERM_BYTES {
        return Err(Error::invalid_param(format!(
            "search_term is longer than {MAX_TERM_BYTES} bytes"
        )));
    }
    let mut keys = Vec::new();
    for key in criteria.keys.unwrap_or_else(|| {
        vec![
            SearchKeys::ContentBody,
            SearchKeys::ContentName,
            SearchKeys::ContentTopic,
        ]
    }) {
        keys.push(match key {
            SearchKeys::ContentBody => "body",
            SearchKeys::ContentName => "name",
            SearchKeys::ContentTopic => "topic",
            other => {
                return Err(Error::invalid_param(format!(
                    "Unknown search key {:?}; keys are content.body, content.name, content.topic",
                    other.as_str()
                )));
            }
        });
    }
    if keys.is_empty() {
        return Err(Error::invalid_param("keys is empty"));
    }
    let order = match criteria.order_by {
        None | Some(OrderBy::Rank) => Ordering::Rank,
        Some(OrderBy::Recent) => Ordering::Recent,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown order_by {:?}: rank or recent",
                other.as_str()
            )));
        }
    };
    let mut group_by = Vec::new();
    for grouping in &criteria.groupings.group_by {
        match &grouping.key {
            Some(GroupingKey::RoomId) => group_by.push("room_id"),
            Some(GroupingKey::Sender) => group_by.push("sender"),
            None => {}
            Some(other) => {
                return Err(Error::invalid_param(format!(
                    "Unknown grouping key {:?}: room_id or sender",
                    other.as_str()
                )));
            }
        }
    }
    let filter_json = serde_json::to_string(&criteria.filter).map_err(Error::internal)?;
    let filter = RoomEventFilter::parse(&filter_json)?;
    let limit = filter
        .base
        .limit
        .map_or(DEFAULT_LIMIT, |l| (l as usize).clamp(1, MAX_LIMIT));
    let page = match req.next_batch.as_deref() {
        Some(token) => {
            let page = Page::parse(token)?;
            if page.order != order {
                return Err(Error::invalid_param("next_batch belongs to another order_by"));
            }
            page
        }
        None => Page {
            order,
            offset: 0,
            upto: svc.store.max_stream_ordering().await?,
        },
    };
    let terms: Vec<String> = {
        let mut seen = HashSet::new();
        tokenizer::tokens(term)
            .into_iter()
            .filter(|t| seen.insert(t.clone()))
            .take(MAX_TERMS)
            .collect()
    };
    let highlights: Vec<String> = highlights(term, &terms);

    // The rooms the viewer has ever been in, as the filter allows; each hit is then checked
    // against the viewer's access to that very event.
    let rooms: Vec<String> = svc
        .store
        .rooms_of_user(viewer.user_id)
        .await?
        .into_iter()
        .map(|(room, _, _)| room)
        .filter(|room| filter.allows_room(room))
        .collect();
    let types: Vec<&str> = INDEXED_TYPES
        .into_iter()
        .filter(|t| type_allowed(&filter, t))
        .collect();
    let empty = || {
        json!({ "search_categories": { "room_events": {
            "results": [], "count": 0, "highlights": highlights, "groups": {}, "state": {}
        }}})
    };
    if rooms.is_empty() || terms.is_empty() || types.is_empty() {
        return Ok(empty());
    }
    let index = svc.search.caught_up(svc).await?;
    let query = Arc::new(IndexQuery {
        query: build_query(&index, &terms, &keys, &rooms, &types, &filter, page.upto),
        order,
    });
    let accesses = RoomAccess::load_many(svc, &rooms, Some(viewer.user_id)).await?;

    // Hits in pages, the invisible ones skipped, until a page of results or the budget is spent.
    let mut kept: Vec<(f32, EventRow)> = Vec::new();
    let mut offset = page.offset;
    let mut examined = 0;
    let mut exhausted = false;
    let mut count = 0;
    while kept.len() < limit && examined < MAX_HITS_EXAMINED && offset < MAX_OFFSET {
        let want = (limit - kept.len()).max(limit).min(MAX_HITS_EXAMINED - examined);
        let (index, query) = (index.clone(), query.clone());
        let at = offset;
        let (hits, total) = tokio::task::spawn_blocking(move || run(&index, &query, at, want))
            .await
            .map_err(Error::internal)?
            .map_err(Error::internal)?;
        count = total;
        let ids: Vec<String> = hits.iter().map(|h| h.event_id.clone()).collect();
        let rows: HashMap<String, EventRow> = svc
            .store
            .events(&ids)
            .await?
            .into_iter()
            .map(|r| (r.event_id.clone(), r))
            .collect();
        let got = hits.len();
        for hit in hits {
            offset += 1;
            examined += 1;
            let Some(row) = rows.get(&hit.event_id) else {
                continue;
            };
            let visible = row.redacted_by.is_none()
                && row.stream_ordering <= page.upto
                && filter.allows_event(row)
                && accesses.get(&row.room_id).is_some_and(|a| a.can_see(row));
            if visible {
                kept.push((hit.score, row.clone()));
                if kept.len() == limit {
                    break;
                }
            }
        }
        if got < want {
            // Every hit of the last page was looked at: nothing follows.
            exhausted = offset == at + got;
            break;
        }
    }
    let next_batch = (!exhausted && offset < MAX_OFFSET && !kept.is_empty()).then(|| {
        Page {
            order,
            offset,
            upto: page.upto,
        }
        .token()
    });

    let context = &criteria.event_context;
    let before = (u64::from(context.before_limit) as usize).min(MAX_CONTEXT);
    let after = (u64::from(context.after_limit) as usize).min(MAX_CONTEXT);
    let now = StreamToken::current(svc).await?;
    let mut results = Vec::with_capacity(kept.len());
    let mut versions: HashMap<String, String> = HashMap::new();
    for (score, row) in &kept {
        let access = &accesses[&row.room_id];
        let version = match versions.get(&row.room_id) {
            Some(v) => v.clone(),
            None => {
                let room_id = RoomId::parse(&row.room_id).map_err(Error::internal)?;
                let v = rooms::room(svc, &room_id).await?.row.room_version;
                versions.insert(row.room_id.clone(), v.clone());
                v
            }
        };
        let mut formatted =
            format_with_bundles(svc, viewer, access, &version, std::slice::from_ref(row)).await?;
        let event = formatted
            .pop()
            .ok_or_else(|| Error::internal("result not formatted"))?;
        let mut result = Map::new();
        if order == Ordering::Rank {
            result.insert("rank".into(), json!(score));
        }
        result.insert("result".into(), event);
        if before > 0 || after > 0 || context.include_profile {
            result.insert(
                "context".into(),
                event_context(
                    svc,
                    viewer,
                    access,
                    &version,
                    row,
                    (before, after),
                    context.include_profile,
                    now,
                )
                .await?,
            );
        }
        results.push(Value::Object(result));
    }

    let mut groups = Map::new();
    for key in group_by {
        let mut by: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
        for (i, (_, row)) in kept.iter().enumerate() {
            let value = if key == "room_id" {
                &row.room_id
            } else {
                &row.sender
            };
            by.entry(value.clone())
                .or_insert_with(|| (i, Vec::new()))
                .1
                .push(row.event_id.clone());
        }
        let map: Map<String, Value> = by
            .into_iter()
            .map(|(value, (order, ids))| {
                let mut group = json!({ "order": order, "results": ids });
                if let Some(next) = &next_batch {
                    group["next_batch"] = json!(next);
                }
                (value, group)
            })
            .collect();
        groups.insert(key.into(), Value::Object(map));
    }

    let mut state = Map::new();
    if criteria.include_state == Some(true) {
        let result_rooms: BTreeMap<&str, ()> = kept.iter().map(|(_, r)| (r.room_id.as_str(), ())).collect();
        for room in result_rooms.keys() {
            let room_id = RoomId::parse(*room).map_err(Error::internal)?;
            let events = rooms::state::all_for_client(svc, viewer, &room_id).await?;
            state.insert(
                (*room).to_owned(),
                serde_json::to_value(events).map_err(Error::internal)?,
            );
        }
    }

    let mut room_events = json!({
        "results": results,
        "count": count,
        "highlights": highlights,
        "groups": groups,
        "state": state,
    });
    if let Some(next) = next_batch {
        room_events["next_batch"] = json!(next);
    }
    Ok(json!({ "search_categories": { "room_events": room_events } }))
}

/// Whether the filter's type patterns allow an indexed type (senders are checked per hit).
fn type_allowed(filter: &RoomEventFilter, event_type: &str) -> bool {
    let base = &filter.base;
    !base
        .not_types
        .as_ref()
        .is_some_and(|n| n.iter().any(|p| type_matches(p, event_type)))
        && base
            .types
            .as_ref()
            .is_none_or(|t| t.iter().any(|p| type_matches(p, event_type)))
}

/// The words a client should highlight: the term's own words (lower-cased) and the index's
/// terms they were analyzed into (stems, CJK bigrams).
fn highlights(term: &str, terms: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let words = term
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase);
    for word in words.chain(terms.iter().cloned()) {
        if !out.contains(&word) && out.len() < 2 * MAX_TERMS {
            out.push(word);
        }
    }
    out
}

fn build_query(
    index: &SearchIndex,
    terms: &[String],
    keys: &[&str],
    rooms: &[String],
    types: &[&str],
    filter: &RoomEventFilter,
    upto: i64,
) -> BooleanQuery {
    let f = index.fields;
    let fields: Vec<_> = keys
        .iter()
        .map(|k| match *k {
            "body" => f.body,
            "name" => f.name,
            _ => f.topic,
        })
        .collect();
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = terms
        .iter()
        .map(|t| {
            let any_field: Vec<(Occur, Box<dyn Query>)> = fields
                .iter()
                .map(|field| {
                    let q: Box<dyn Query> = Box::new(TermQuery::new(
                        Term::from_field_text(*field, t),
                        IndexRecordOption::WithFreqs,
                    ));
                    (Occur::Should, q)
                })
                .collect();
            let q: Box<dyn Query> = Box::new(BooleanQuery::new(any_field));
            (Occur::Must, q)
        })
        .collect();
    // Filters score nothing, so they never change the ranking.
    let mut must = |q: Box<dyn Query>| {
        clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(q, 0.0))));
    };
    must(Box::new(TermSetQuery::new(
        rooms.iter().map(|r| Term::from_field_text(f.room_id, r)),
    )));
    must(Box::new(TermSetQuery::new(
        types.iter().map(|t| Term::from_field_text(f.event_type, t)),
    )));
    if let Some(senders) = &filter.base.senders {
        must(Box::new(TermSetQuery::new(
            senders.iter().map(|s| Term::from_field_text(f.sender, s)),
        )));
    }
    must(Box::new(RangeQuery::new(
        Bound::Unbounded,
        Bound::Included(Term::from_field_i64(f.stream, upto)),
    )));
    if let Some(not_senders) = &filter.base.not_senders
        && !not_senders.is_empty()
    {
        clauses.push((
            Occur::MustNot,
            Box::new(TermSetQuery::new(
                not_senders.iter().map(|s| Term::from_field_text(f.sender, s)),
            )),
        ));
    }
    BooleanQuery::new(clauses)
}

/// A result's `context`: visible events around it and, when asked, the senders' profiles.
#[allow(clippy::too_many_arguments)]
async fn event_context(
    svc: &Services,
    viewer: Viewer<'_>,
    access: &RoomAccess,
    version: &str,
    row: &EventRow,
    (before, after): (usize, usize),
    include_profile: bool,
    now: StreamToken,
) -> Result<Value> {
    let everything = RoomEventFilter::default();
    // The same events around it as `/context` gives, in the room's topological order.
    let at = Topo::of(row);
    let before_rows = if before > 0 {
        history::scan_topo(
            svc,
            &row.room_id,
            access,
            (Topo::MIN, at.prev()),
            Direction::Backwards,
            before,
            &everything,
        )
        .await?
    } else {
        history::Scanned {
            rows: Vec::new(),
            more: true,
            next: at.prev(),
            late: false,
        }
    };
    let after_rows = if after > 0 {
        history::scan_topo(
            svc,
            &row.room_id,
            access,
            (at, access.events_until_topo().max(at)),
            Direction::Forwards,
            after,
            &everything,
        )
        .await?
    } else {
        history::Scanned {
            rows: Vec::new(),
            more: true,
            next: at,
            late: false,
        }
    };
    let events_before = format_with_bundles(svc, viewer, access, version, &before_rows.rows).await?;
    let events_after = format_with_bundles(svc, viewer, access, version, &after_rows.rows).await?;
    let end = if after_rows.more {
        PageToken::Topo(after_rows.next)
    } else {
        PageToken::Stream(now)
    };
    let mut context = json!({
        "start": PageToken::Topo(before_rows.next).to_string(),
        "end": end.to_string(),
        "events_before": events_before,
        "events_after": events_after,
    });
    if include_profile {
        let mut senders: Vec<String> = vec![row.sender.clone()];
        for r in before_rows.rows.iter().chain(after_rows.rows.iter()) {
            if !senders.contains(&r.sender) {
                senders.push(r.sender.clone());
            }
        }
        let keys: Vec<(String, String)> = senders
            .iter()
            .map(|s| ("m.room.member".to_owned(), s.clone()))
            .collect();
        let mut profiles = Map::new();
        for ((_, user), _, json) in svc.store.current_state_entries(&row.room_id, &keys).await? {
            let pdu: Value = serde_json::from_str(&json).unwrap_or_default();
            let content = pdu.get("content").cloned().unwrap_or_default();
            let mut profile = Map::new();
            for field in ["displayname", "avatar_url"] {
                if let Some(v) = content.get(field).filter(|v| v.is_string()) {
                    profile.insert(field.into(), v.clone());
                }
            }
            if OwnedUserId::try_from(user.as_str()).is_ok() {
                profiles.insert(user, Value::Object(profile));
            }
        }
        context["profile_info"] = Value::Object(profiles);
    }
    Ok(context)
}
