//! Push notifications: each user's push rules, their evaluation against every new event, the
//! unread notification counts that come out of it, and delivery to push gateways.
//!
//! - `rules`: the server-default rule set and the stored form (`m.push_rules` account data).
//! - `eval`: runs on every appended event (a timeline listener) for every local member except
//!   the sender and stores the outcomes per event and audience (`store/push_outcomes.rs`);
//!   `memo` shares the outcomes that do not depend on the member between them.
//! - `pushers`: pusher validation and HTTP delivery (`/_matrix/push/v1/notify`), off the send path.
//! - `address`: which addresses gateways may be on (no loopback or private ones by default).
//! - `retention`: stored outcomes pruned after `push.outcome_retention`, unread counts kept.

pub mod address;
pub mod eval;
pub mod gateway;
pub mod memo;
pub mod notifications;
pub mod pushers;
pub mod retention;
pub mod rules;
pub mod unread;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{UserId, push::Ruleset};

use crate::{
    error::{Error, Result},
    services::Services,
};

pub use eval::PushListener;

/// Push state kept in memory: parsed rule sets (so evaluation does not parse JSON per event) and
/// the HTTP client for push gateways.
pub struct PushState {
    /// User ID → the account data stream position the rule set was stored at (0: never
    /// stored) and the rule set. A newer position always wins, so a slow reader cannot put back
    /// a set that a concurrent change already replaced.
    rulesets: Mutex<HashMap<String, (i64, Arc<memo::Rules>)>>,
    /// Room ID → members and power levels, for evaluation (see `eval`).
    rooms: Mutex<HashMap<String, Arc<eval::RoomContext>>>,
    /// Unread notification counts for `/sync`, kept from the committed outcomes.
    pub unread: unread::UnreadCache,
    pub(crate) gateways: gateway::Gateways,
    /// Where gateways may be; the client's resolver applies it to names, delivery to literals.
    pub(crate) addresses: address::AddressPolicy,
}

impl PushState {
    pub fn new(config: &crate::config::PushConfig) -> Self {
        Self {
            rulesets: Mutex::default(),
            rooms: Mutex::default(),
            unread: unread::UnreadCache::default(),
            gateways: gateway::Gateways::new(config),
            addresses: address::AddressPolicy::new(config),
        }
    }
}

/// A user's push rules: the stored set, or the server defaults when the user never changed them.
pub async fn ruleset(svc: &Services, user_id: &UserId) -> Result<Arc<memo::Rules>> {
    if let Some((_, found)) = svc
        .push
        .rulesets
        .lock()
        .map_err(Error::internal)?
        .get(user_id.as_str())
    {
        return Ok(found.clone());
    }
    let stored = svc
        .store
        .account_data_at(user_id.as_str(), None, rules::ACCOUNT_DATA_TYPE)
        .await?;
    let at = stored.as_ref().map_or(0, |(_, at)| *at);
    let ruleset = Arc::new(memo::Rules::new(
        rules::from_account_data(user_id, stored.as_ref().map(|(content, _)| content.as_str())),
        user_id,
    ));
    cache_ruleset(svc, user_id, at, ruleset)
}

/// Caches a rule set read or written at stream position `at`, unless a newer one is cached;
/// returns the cached one.
fn cache_ruleset(
    svc: &Services,
    user_id: &UserId,
    at: i64,
    ruleset: Arc<memo::Rules>,
) -> Result<Arc<memo::Rules>> {
    let mut cache = svc.push.rulesets.lock().map_err(Error::internal)?;
    let entry = cache
        .entry(user_id.to_string())
        .or_insert_with(|| (at, ruleset.clone()));
    if entry.0 < at {
        *entry = (at, ruleset);
    }
    Ok(entry.1.clone())
}

/// Changes a user's push rules: `change` runs on the current stored set inside the transaction
/// that writes the result as `m.push_rules` account data (so concurrent changes lose nothing and
/// clients see them in `/sync`); then the cache is updated and the user's syncs woken. An error
/// from `change` writes nothing.
pub async fn update_ruleset(
    svc: &Services,
    user_id: &UserId,
    change: impl FnOnce(&mut Ruleset) -> Result<()>,
) -> Result<()> {
    let (at, ruleset) = svc
        .store
        .update_account_data(user_id.as_str(), None, rules::ACCOUNT_DATA_TYPE, |current| {
            let mut ruleset = rules::from_account_data(user_id, current.as_deref());
            change(&mut ruleset)?;
            Ok::<_, Error>((rules::to_account_data(&ruleset)?, ruleset))
        })
        .await??;
    cache_ruleset(svc, user_id, at, Arc::new(memo::Rules::new(ruleset, user_id)))?;
    svc.notifier.notify(vec![user_id.to_string()]);
    Ok(())
}

/// The `m.push_rules` global account data event for a user, for `/sync` to include in an
/// initial sync when the user never changed their rules (nothing is stored then, and clients
/// expect the event): `{"type": "m.push_rules", "content": {"global": …}}`.
pub async fn push_rules_event(svc: &Services, user_id: &UserId) -> Result<serde_json::Value> {
    let ruleset = ruleset(svc, user_id).await?;
    Ok(serde_json::json!({
        "type": rules::ACCOUNT_DATA_TYPE,
        "content": { "global": rules::to_client_json(&ruleset.set)? },
    }))
}

/// Unread notification counts of one user in one room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Notifying events in the main timeline (events not in a thread).
    pub notification_count: u64,
    /// Highlighting events in the main timeline.
    pub highlight_count: u64,
    /// Thread root event ID → (notifications, highlights) of events in that thread.
    pub per_thread: BTreeMap<String, (u64, u64)>,
}

impl Counts {
    /// Notifications in the room, main timeline and threads together (what `/sync` reports in
    /// `unread_notifications` when the filter does not ask for `unread_thread_notifications`).
    pub fn total_notifications(&self) -> u64 {
        self.notification_count + self.per_thread.values().map(|(n, _)| n).sum::<u64>()
    }

    /// Highlights in the room, main timeline and threads together.
    pub fn total_highlights(&self) -> u64 {
        self.highlight_count + self.per_thread.values().map(|(_, h)| h).sum::<u64>()
    }

    /// Counts from stored (thread, notifications, highlights) rows of one room.
    pub fn from_rows(rows: crate::store::ThreadCounts) -> Self {
        let mut counts = Counts::default();
        for (thread, notifications, highlights) in rows {
            let (n, h) = (notifications.max(0) as u64, highlights.max(0) as u64);
            match thread {
                None => {
                    counts.notification_count += n;
                    counts.highlight_count += h;
                }
                Some(thread) => {
                    let entry = counts.per_thread.entry(thread).or_default();
                    entry.0 += n;
                    entry.1 += h;
                }
            }
        }
        counts
    }
}

/// Unread notification counts of `user_id` in `room_id`: the events whose push rule outcome
/// for that user was `notify` (and `highlight`) with a stream position greater than
/// `after_stream`.
///
/// `after_stream` is the stream position of the event the user's read receipt points at (0 when
/// the user has no receipt in the room). Events the user sent are never counted (rules are not
/// evaluated for the sender). Threaded events (`m.relates_to.rel_type = m.thread`) are counted
/// per thread root in `per_thread`, not in `notification_count`/`highlight_count`; use
/// [`Counts::total_notifications`]/[`Counts::total_highlights`] for the room-wide numbers.
///
/// For `/sync`, per joined room:
/// ```ignore
/// let counts = crate::push::unread_counts(&svc, user_id, room_id, receipt_stream).await?;
/// // without `unread_thread_notifications` in the filter:
/// json!({"notification_count": counts.total_notifications(), "highlight_count": counts.total_highlights()})
/// // with it: `unread_notifications` from notification_count/highlight_count and
/// // `unread_thread_notifications` {thread_id: {notification_count, highlight_count}} from per_thread.
/// ```
pub async fn unread_counts(
    svc: &Services,
    user_id: &str,
    room_id: &str,
    after_stream: i64,
) -> Result<Counts> {
    let rows = svc.store.push_counts(user_id, room_id, after_stream).await?;
    Ok(Counts::from_rows(rows))
}

/// The badge a push gateway shows (`counts.unread`, push gateway API): the user's unread
/// notifications across the rooms they are joined to, each room counted after the user's read
/// receipt there, as `/sync` counts them. Left rooms no longer count.
pub async fn unread_badge(svc: &Services, user_id: &str) -> Result<u64> {
    let joined: Vec<String> = svc
        .store
        .rooms_of_user(user_id)
        .await?
        .into_iter()
        .filter(|(_, membership, _)| membership == "join")
        .map(|(room_id, ..)| room_id)
        .collect();
    let counts = svc.push.unread.counts_in_rooms(svc, user_id, &joined).await?;
    Ok(counts.values().map(Counts::total_notifications).sum())
}
