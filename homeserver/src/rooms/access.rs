//! Who may see what of a room: the one place every read path asks.
//!
//! Events: the spec's history visibility algorithm (client-server API §"Room History
//! Visibility", "Server behaviour"), per event, from the room's history visibility and the
//! viewer's membership *at that event*:
//!
//! 1. `world_readable` then: allow;
//! 2. the viewer was joined then: allow;
//! 3. `shared` then, and the viewer joined at some point after the event: allow;
//! 4. the viewer was invited then, and the visibility was `invited`: allow;
//! 5. otherwise deny.
//!
//! An `m.room.history_visibility` event is visible if the visibility before *or* after it allows
//! it; likewise the viewer's own `m.room.member` events, by their membership before *or* after
//! (so a user always sees their own join, and their leave from a join).
//!
//! "At that event" is read from the room's history visibility changes and the viewer's
//! membership changes in the room's topological order (`rooms::topo`): a late event (fetched as
//! a missing prev event) or a backfilled one is judged at its place in the DAG, not at its
//! arrival. (The state at each event, from its state group, would be exact on forks.) The same
//! changes by stream position say how the viewer may read the room now and which stream ranges
//! a `/sync` scan visits: live events sort alike in both orders.
//!
//! Backfilled events (`federation::backfill`) sit at negative stream positions, at their claimed
//! depth below the events that name them. Before the first change of visibility known here
//! (the state this server adopted when it joined counts, at its own depth), a backfilled
//! event's setting is unknown until the room's creation is reached, and unknown reads as
//! `joined` (the strictest for a viewer who was not a member then), never as the spec's
//! default `shared`.
//!
//! Endpoints: the room's events and state may be read by anyone who has been joined to it, or
//! left or was banned after (then up to that point), and by anyone at all while the room is
//! `world_readable` (peeking). Invitees and knockers see the stripped state in `/sync` only.

use std::collections::HashMap;

use ruma::{RoomId, UserId};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    services::Services,
    store::{EventRow, StateMap, Topo},
};

/// The four settings of `m.room.history_visibility`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryVisibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl HistoryVisibility {
    /// The setting of an `m.room.history_visibility` PDU; anything not understood is `shared`
    /// (the spec's default).
    fn of_pdu(json: &str) -> Self {
        let pdu: Value = serde_json::from_str(json).unwrap_or_default();
        match pdu["content"]["history_visibility"].as_str() {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// A place in one of the two orders the changes are kept in: stream positions (what `/sync`
/// scans) and the topological order (what `can_see` judges by, and `/messages` scans).
trait Key: Ord + Copy {
    /// Below every event.
    const LOW: Self;
    /// Above every event.
    const HIGH: Self;
    fn next(self) -> Self;
    fn prev(self) -> Self;
}

impl Key for i64 {
    const LOW: i64 = FLOOR;
    const HIGH: i64 = i64::MAX;
    fn next(self) -> i64 {
        self.saturating_add(1)
    }
    fn prev(self) -> i64 {
        self - 1
    }
}

impl Key for Topo {
    const LOW: Topo = Topo::MIN;
    const HIGH: Topo = Topo::MAX;
    fn next(self) -> Topo {
        Topo::next(self)
    }
    fn prev(self) -> Topo {
        Topo::prev(self)
    }
}

/// The room's history visibility changes and the viewer's membership changes, in one order.
#[derive(Debug, Clone)]
struct Changes<K> {
    visibility: Vec<(K, HistoryVisibility)>,
    membership: Vec<(K, String)>,
}

impl<K: Key> Changes<K> {
    /// The setting after the last change before `at`, if any.
    fn visibility_before(&self, at: K) -> Option<HistoryVisibility> {
        let i = self.visibility.partition_point(|(s, _)| *s < at);
        i.checked_sub(1).map(|i| self.visibility[i].1)
    }

    /// The viewer's membership after their last change before `at`.
    fn membership_before(&self, at: K) -> Option<&str> {
        let i = self.membership.partition_point(|(s, _)| *s < at);
        i.checked_sub(1).map(|i| self.membership[i].1.as_str())
    }

    /// The viewer's membership after their last change at or before `at`.
    fn membership_at(&self, at: K) -> Option<&str> {
        let i = self.membership.partition_point(|(s, _)| *s <= at);
        i.checked_sub(1).map(|i| self.membership[i].1.as_str())
    }

    fn joined_after(&self, at: K) -> bool {
        self.membership.iter().any(|(s, m)| *s > at && m == "join")
    }

    /// Rules 1–5 for an event at `at` under `visibility`, with the viewer's membership then.
    fn allows(&self, visibility: HistoryVisibility, membership: Option<&str>, at: K) -> bool {
        use HistoryVisibility::*;
        visibility == WorldReadable
            || membership == Some("join")
            || (visibility == Shared && self.joined_after(at))
            || (visibility == Invited && membership == Some("invite"))
    }

    /// The ranges `[lo, hi]` (ascending, disjoint) within `(after, upto]` that can hold events
    /// the viewer may see. Between two changes (of visibility or of the viewer's membership)
    /// rules 1–5 give one answer for every event; a change itself is one event, kept as a
    /// range of its own for `can_see` to decide. `visibility_at` gives the setting before a
    /// place (with the fallbacks before the first change); `extra` are further boundaries.
    fn candidate_ranges(
        &self,
        after: K,
        upto: K,
        extra: &[K],
        visibility_at: impl Fn(K) -> HistoryVisibility,
    ) -> Vec<(K, K)> {
        let mut points: Vec<K> = self
            .visibility
            .iter()
            .map(|(s, _)| *s)
            .chain(self.membership.iter().map(|(s, _)| *s))
            .chain(extra.iter().copied())
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut ranges: Vec<(K, K)> = Vec::new();
        let mut push = |lo: K, hi: K| {
            let (lo, hi) = (lo.max(after.next()), hi.min(upto));
            if lo > hi {
                return;
            }
            match ranges.last_mut() {
                Some(last) if last.1.next() >= lo => last.1 = last.1.max(hi),
                _ => ranges.push((lo, hi)),
            }
        };
        // The open segments (start, next): start = LOW before the first change.
        let starts = std::iter::once(K::LOW).chain(points.iter().copied());
        let ends = points.iter().copied().chain(std::iter::once(K::HIGH));
        for (start, end) in starts.zip(ends) {
            if start > K::LOW {
                push(start, start);
            }
            let probe = start.next();
            if probe < end && self.allows(visibility_at(probe), self.membership_before(probe), probe) {
                push(probe, end.prev());
            }
        }
        ranges
    }
}

/// What one viewer's access to one room depends on, read once per request (two small indexed
/// queries), then asked per event without further I/O.
#[derive(Debug, Clone)]
pub struct RoomAccess {
    viewer: Option<String>,
    /// History visibility changes and the viewer's membership changes by stream position:
    /// what the viewer's access now is, and which stream ranges a `/sync` scan visits.
    stream: Changes<i64>,
    /// The same changes in topological order: the visibility and membership at each event.
    topo: Changes<Topo>,
    /// The setting of the state a remote join adopted (an outlier), for backfilled events
    /// older than every change stored in the timeline.
    adopted: Option<HistoryVisibility>,
    /// The room's creation is in the timeline: its history here starts at the beginning.
    complete: bool,
}

impl RoomAccess {
    /// Access of `viewer` (`None`: an unauthenticated or server-side reader) to each of `rooms`.
    pub async fn load_many(
        svc: &Services,
        rooms: &[String],
        viewer: Option<&str>,
    ) -> Result<HashMap<String, RoomAccess>> {
        let mut visibility = svc.store.history_visibility_changes(rooms).await?;
        let mut membership = match viewer {
            Some(user) => svc.store.membership_changes(user, rooms).await?,
            None => HashMap::new(),
        };
        Ok(rooms
            .iter()
            .map(|room| {
                let rows = visibility.remove(room).unwrap_or_default();
                let changes: Vec<_> = rows
                    .iter()
                    .filter(|r| !r.create)
                    .map(|r| (r.at, r.topo, HistoryVisibility::of_pdu(&r.json)))
                    .collect();
                let memberships = membership.remove(room).unwrap_or_default();
                let access = RoomAccess::new(
                    viewer,
                    changes,
                    memberships,
                    rows.iter()
                        .find(|r| !r.create && r.outlier)
                        .map(|r| HistoryVisibility::of_pdu(&r.json)),
                    rows.iter().any(|r| r.create && !r.outlier),
                );
                (room.clone(), access)
            })
            .collect())
    }

    /// From the changes in stream order: (stream position, topological place, what).
    fn new(
        viewer: Option<&str>,
        visibility: Vec<(i64, Topo, HistoryVisibility)>,
        membership: Vec<(i64, Topo, String)>,
        adopted: Option<HistoryVisibility>,
        complete: bool,
    ) -> RoomAccess {
        let mut topo = Changes {
            visibility: visibility.iter().map(|(_, t, v)| (*t, *v)).collect(),
            membership: membership.iter().map(|(_, t, m)| (*t, m.clone())).collect(),
        };
        topo.visibility.sort_by_key(|(t, _)| *t);
        topo.membership.sort_by_key(|(t, _)| *t);
        RoomAccess {
            viewer: viewer.map(ToOwned::to_owned),
            stream: Changes {
                visibility: visibility.into_iter().map(|(s, _, v)| (s, v)).collect(),
                membership: membership.into_iter().map(|(s, _, m)| (s, m)).collect(),
            },
            topo,
            adopted,
            complete,
        }
    }

    pub async fn load(svc: &Services, room_id: &RoomId, viewer: &str) -> Result<RoomAccess> {
        let rooms = [room_id.to_string()];
        let mut all = Self::load_many(svc, &rooms, Some(viewer)).await?;
        all.remove(room_id.as_str())
            .ok_or_else(|| Error::internal("access not loaded"))
    }

    /// The setting in force after the last change before stream position `at` (`shared` when
    /// never set); for a backfilled event (below 0) before every stored change, the adopted
    /// state's setting, or `joined` while the history back to the room's creation is not here.
    fn visibility_before(&self, at: i64) -> HistoryVisibility {
        match self.stream.visibility_before(at) {
            Some(v) => v,
            None if at < 0 => match self.adopted {
                Some(adopted) => adopted,
                None if self.complete => HistoryVisibility::Shared,
                None => HistoryVisibility::Joined,
            },
            None => HistoryVisibility::Shared,
        }
    }

    /// The setting in force at a topological place: after the last change before it. Before
    /// every change known here (the adopted state's setting is among them, at its own depth),
    /// a backfilled event's setting is unknown until the room's creation is here, and unknown
    /// reads as `joined`; any other event's is the spec's default, `shared`.
    fn visibility_at_topo(&self, at: Topo) -> HistoryVisibility {
        match self.topo.visibility_before(at) {
            Some(v) => v,
            None if at.stream < 0 && !self.complete => HistoryVisibility::Joined,
            None => HistoryVisibility::Shared,
        }
    }

    /// Whether the viewer may see this event of the room, judged at its place in the room's
    /// topological order (so a late or backfilled event by the setting and the viewer's
    /// membership at its place in the DAG, not at its arrival).
    pub fn can_see(&self, row: &EventRow) -> bool {
        let at = Topo::of(row);
        let changes = &self.topo;
        let membership = changes.membership_before(at);
        let visibility = self.visibility_at_topo(at);
        if changes.allows(visibility, membership, at) {
            return true;
        }
        match (row.event_type.as_str(), row.state_key.as_deref()) {
            ("m.room.history_visibility", Some("")) => {
                changes.allows(HistoryVisibility::of_pdu(&row.json), membership, at)
            }
            ("m.room.member", Some(target)) if self.viewer.as_deref() == Some(target) => {
                // The membership this event sets is the viewer's change at its place.
                let after = changes.membership_at(at);
                changes.allows(visibility, after, at)
            }
            _ => false,
        }
    }

    /// The stream ranges `[lo, hi]` (ascending, disjoint) within `(after, upto]` that can hold
    /// events the viewer may see, so stream scans (`/sync`) skip the rest. Events that did not
    /// arrive late sort alike by stream and topologically, so these agree with `can_see`; late
    /// events are never in a `/sync` timeline.
    pub fn candidate_ranges(&self, after: i64, upto: i64) -> Vec<(i64, i64)> {
        // 0 too: below it lie backfilled events, whose setting before any change differs.
        self.stream
            .candidate_ranges(after, upto, &[0], |at| self.visibility_before(at))
    }

    /// `candidate_ranges` in topological order, for `/messages` and `/context`. Before the
    /// first change, `shared` (the looser of the two fallbacks: `can_see` decides per event).
    pub fn candidate_topo_ranges(&self, after: Topo, upto: Topo) -> Vec<(Topo, Topo)> {
        self.topo.candidate_ranges(after, upto, &[], |at| {
            self.topo
                .visibility_before(at)
                .unwrap_or(HistoryVisibility::Shared)
        })
    }

    /// Keeps the events the viewer may see.
    pub fn retain_visible(&self, rows: &mut Vec<EventRow>) {
        rows.retain(|row| self.can_see(row));
    }

    /// The viewer's membership now.
    pub fn membership(&self) -> Option<&str> {
        self.stream.membership.last().map(|(_, m)| m.as_str())
    }

    /// Whether the room is `world_readable` now.
    pub fn world_readable(&self) -> bool {
        self.stream.visibility.last().map(|(_, v)| *v) == Some(HistoryVisibility::WorldReadable)
    }

    /// The stream position of the viewer's last join before their current membership, when
    /// they are no longer joined (they left or were banned after being joined).
    fn left_after_joining(&self) -> Option<i64> {
        let (last, rest) = self.stream.membership.split_last()?;
        (last.1 != "join" && rest.iter().any(|(_, m)| m == "join")).then_some(last.0)
    }

    /// How the viewer may read the room's events and state now, or 403 `M_FORBIDDEN`.
    pub fn reading(&self) -> Result<Reading> {
        if self.membership() == Some("join") {
            return Ok(Reading::Member);
        }
        if self.world_readable() {
            return Ok(Reading::Peeking);
        }
        if let Some(left) = self.left_after_joining()
            && matches!(self.membership(), Some("leave" | "ban"))
        {
            // Events after the leave stay hidden unless the room became world-readable.
            let reopened = self
                .stream
                .visibility
                .iter()
                .any(|(s, v)| *s >= left && *v == HistoryVisibility::WorldReadable)
                || self.visibility_before(left) == HistoryVisibility::WorldReadable;
            return Ok(Reading::Former {
                left,
                events_until: (!reopened).then_some(left),
            });
        }
        Err(Error::forbidden("You are not a member of this room"))
    }

    /// The newest stream position whose events the viewer may possibly see (`i64::MAX`: no
    /// bound beyond what `can_see` says).
    pub fn events_until(&self) -> i64 {
        match self.reading() {
            Ok(Reading::Former {
                events_until: Some(left),
                ..
            }) => left,
            _ => i64::MAX,
        }
    }

    /// `events_until` as a topological place: the viewer's leave's (`Topo::MAX`: no bound).
    pub fn events_until_topo(&self) -> Topo {
        let until = self.events_until();
        if until == i64::MAX {
            return Topo::MAX;
        }
        self.topo
            .membership
            .iter()
            .map(|(t, _)| *t)
            .find(|t| t.stream == until)
            .unwrap_or(Topo::MAX)
    }
}

/// Below every stream position (backfilled events count down from 0), with room to subtract.
pub const FLOOR: i64 = i64::MIN / 4;

/// How a viewer may read a room now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Joined: the current state, events by the algorithm.
    Member,
    /// Left or banned after being joined: the state as they left, events by the algorithm
    /// (none after `events_until`, when set).
    Former { left: i64, events_until: Option<i64> },
    /// Not a member of a `world_readable` room: the current state, world-readable events.
    Peeking,
}

/// The room state the viewer may read: the current state for members and peekers, the state
/// as they left for former members; 403 for everyone else.
pub async fn visible_state(svc: &Services, room_id: &RoomId, viewer: &str) -> Result<StateMap> {
    let access = RoomAccess::load(svc, room_id, viewer).await?;
    state_for(svc, room_id, &access).await
}

/// `visible_state` for access already loaded.
pub async fn state_for(svc: &Services, room_id: &RoomId, access: &RoomAccess) -> Result<StateMap> {
    match access.reading()? {
        Reading::Member | Reading::Peeking => Ok(svc.store.current_state(room_id.as_str()).await?),
        Reading::Former { left, .. } => {
            let group = svc
                .store
                .state_group_at(room_id.as_str(), left)
                .await?
                .ok_or_else(|| Error::internal("membership event without state"))?;
            Ok(svc.store.state_of_group(group).await?)
        }
    }
}

/// Requires the viewer to be joined to the room now (for writes and member-only reads).
pub async fn require_joined(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<()> {
    match svc
        .store
        .membership(room_id.as_str(), user.as_str())
        .await?
        .as_deref()
    {
        Some("join") => Ok(()),
        _ => Err(Error::forbidden("You are not joined to this room")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HistoryVisibility::*;

    fn row(at: i64, event_type: &str, state_key: Option<&str>, json: &str) -> EventRow {
        EventRow {
            stream_ordering: at,
            event_id: format!("$e{at}"),
            room_id: "!r:x".into(),
            event_type: event_type.into(),
            state_key: state_key.map(Into::into),
            sender: "@s:x".into(),
            origin_server_ts: 0,
            depth: at,
            state_group: 0,
            replaces_state: None,
            txn_device_id: None,
            txn_id: None,
            redacted_by: None,
            rel_type: None,
            relates_to: None,
            json: json.into(),
            soft_failed: false,
            topo: at,
            late: false,
        }
    }

    fn msg(at: i64) -> EventRow {
        row(at, "m.room.message", None, "{}")
    }

    /// Changes at stream positions whose topological places are in the same order (depth =
    /// stream position, as `row` builds events).
    fn access(visibility: &[(i64, HistoryVisibility)], membership: &[(i64, &str)]) -> RoomAccess {
        let topo = |s: i64| Topo { depth: s, stream: s };
        RoomAccess::new(
            Some("@v:x"),
            visibility.iter().map(|(s, v)| (*s, topo(*s), *v)).collect(),
            membership
                .iter()
                .map(|(s, m)| (*s, topo(*s), m.to_string()))
                .collect(),
            None,
            true,
        )
    }

    #[test]
    fn joined_sees_from_the_join_only() {
        let a = access(&[(2, Joined)], &[(10, "join")]);
        assert!(!a.can_see(&msg(5)));
        assert!(a.can_see(&msg(11)));
    }

    #[test]
    fn shared_shows_earlier_history_to_those_who_joined_later() {
        let a = access(&[(2, Shared)], &[(10, "join"), (20, "leave")]);
        assert!(a.can_see(&msg(5)));
        assert!(a.can_see(&msg(15)));
        assert!(!a.can_see(&msg(25)), "nothing after the leave");
        let never_joined = access(&[(2, Shared)], &[(10, "knock"), (20, "leave")]);
        assert!(!never_joined.can_see(&msg(5)));
        assert!(!never_joined.can_see(&msg(15)));
    }

    #[test]
    fn invited_sees_from_the_invite() {
        let a = access(&[(2, Invited)], &[(10, "invite"), (20, "join")]);
        assert!(!a.can_see(&msg(5)));
        assert!(a.can_see(&msg(15)));
        assert!(a.can_see(&msg(25)));
        let joined_rule = access(&[(2, Joined)], &[(10, "invite"), (20, "join")]);
        assert!(!joined_rule.can_see(&msg(15)));
    }

    #[test]
    fn world_readable_is_per_event() {
        let a = access(&[(2, WorldReadable), (10, Joined)], &[]);
        assert!(a.can_see(&msg(5)));
        assert!(!a.can_see(&msg(15)));
        // The change itself is visible: the setting before it allowed it.
        let change = row(
            10,
            "m.room.history_visibility",
            Some(""),
            r#"{"content":{"history_visibility":"joined"}}"#,
        );
        assert!(a.can_see(&change));
        let opening = access(&[(2, Joined), (10, WorldReadable)], &[]);
        let change = row(
            10,
            "m.room.history_visibility",
            Some(""),
            r#"{"content":{"history_visibility":"world_readable"}}"#,
        );
        assert!(opening.can_see(&change), "the setting after it allows it");
        assert!(!opening.can_see(&msg(5)));
    }

    #[test]
    fn own_membership_events_by_the_membership_before_or_after() {
        let member = |at| row(at, "m.room.member", Some("@v:x"), "{}");
        let a = access(&[(2, Joined)], &[(10, "invite"), (20, "join"), (30, "leave")]);
        assert!(!a.can_see(&member(10)), "an invite under `joined` shows nothing");
        assert!(a.can_see(&member(20)), "the join: joined after");
        assert!(a.can_see(&member(30)), "the leave: joined before");
        let invited = access(&[(2, Invited)], &[(10, "invite")]);
        assert!(
            invited.can_see(&member(10)),
            "an invite under `invited`: invited after"
        );
    }

    #[test]
    fn candidate_ranges_skip_what_no_event_of_can_be_seen() {
        // Joined-only history, viewer joined at 10 and left at 20.
        let a = access(&[(2, Joined)], &[(10, "join"), (20, "leave")]);
        assert_eq!(a.candidate_ranges(0, 100), vec![(1, 2), (10, 20)]);
        assert_eq!(a.candidate_ranges(12, 15), vec![(13, 15)]);
        // Shared: everything up to the leave.
        let a = access(&[(2, Shared)], &[(10, "join"), (20, "leave")]);
        assert_eq!(a.candidate_ranges(0, 100), vec![(1, 20)]);
        // Every event the algorithm shows lies in a range.
        let a = access(
            &[(2, Invited), (30, WorldReadable), (40, Joined)],
            &[(10, "invite"), (20, "join")],
        );
        let ranges = a.candidate_ranges(0, 60);
        for at in 1..=60 {
            if a.can_see(&msg(at)) {
                assert!(
                    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&at)),
                    "{at} in {ranges:?}"
                );
            }
        }
    }

    /// A message at a topological place that differs from its stream position.
    fn placed(depth: i64, stream: i64) -> EventRow {
        EventRow {
            topo: depth,
            ..msg(stream)
        }
    }

    #[test]
    fn backfilled_events_take_the_setting_at_their_place_or_the_strictest() {
        let t = |depth, stream| Topo { depth, stream };
        // The state the join adopted set `shared` (an outlier at depth 2); the join at 10.
        let mut a = RoomAccess::new(
            Some("@v:x"),
            vec![(8, t(2, 8), Shared)],
            vec![(10, t(10, 10), "join".into())],
            Some(Shared),
            false,
        );
        assert!(a.can_see(&placed(3, -3)), "after the adopted setting: shared");
        assert!(
            !a.can_see(&placed(1, -7)),
            "older than every setting known here: unknown, read as joined"
        );
        a.complete = true;
        assert!(
            a.can_see(&placed(1, -7)),
            "the room's creation is here: the default"
        );
        let ranges = a.candidate_topo_ranges(Topo::MIN, Topo::MAX);
        for at in [t(1, -7), t(3, -3), t(12, 12)] {
            assert!(
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&at)),
                "{at:?} in {ranges:?}"
            );
        }
        // Stream ranges keep the adopted setting for what lies below 0.
        let ranges = a.candidate_ranges(FLOOR, 20);
        for at in [-7, -3, 12] {
            assert!(
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&at)),
                "{at} in {ranges:?}"
            );
        }
    }

    #[test]
    fn late_events_are_judged_at_their_place_in_the_dag() {
        let t = |depth, stream| Topo { depth, stream };
        // `joined` history; the viewer joined at depth 10 (stream 10), left at depth 20.
        let a = RoomAccess::new(
            Some("@v:x"),
            vec![(2, t(2, 2), Joined)],
            vec![(10, t(10, 10), "join".into()), (30, t(20, 30), "leave".into())],
            None,
            true,
        );
        // Arrived at stream 25 (while joined by stream order) but sent at depth 5, before
        // the join: hidden. Sent at depth 15 while joined, arriving at 40 after the leave: seen.
        assert!(!a.can_see(&placed(5, 25)));
        assert!(a.can_see(&placed(15, 40)));
        assert!(!a.can_see(&placed(25, 26)), "after the leave in the DAG");
        let ranges = a.candidate_topo_ranges(Topo::MIN, Topo::MAX);
        assert!(ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&t(15, 40))));
        assert!(!ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&t(5, 25))));
    }

    #[test]
    fn unknown_settings_are_shared() {
        assert_eq!(
            HistoryVisibility::of_pdu(r#"{"content":{"history_visibility":"nope"}}"#),
            Shared
        );
        assert_eq!(HistoryVisibility::of_pdu("not json"), Shared);
    }

    #[test]
    fn reading_follows_membership() {
        assert_eq!(access(&[], &[(1, "join")]).reading().unwrap(), Reading::Member);
        assert_eq!(
            access(&[], &[(1, "join"), (5, "leave")]).reading().unwrap(),
            Reading::Former {
                left: 5,
                events_until: Some(5)
            }
        );
        assert!(access(&[], &[(1, "invite"), (5, "leave")]).reading().is_err());
        assert!(access(&[], &[(1, "knock")]).reading().is_err());
        assert!(access(&[], &[]).reading().is_err());
        assert_eq!(
            access(&[(1, WorldReadable)], &[]).reading().unwrap(),
            Reading::Peeking
        );
        assert_eq!(
            access(&[(1, WorldReadable)], &[(2, "invite")]).reading().unwrap(),
            Reading::Peeking
        );
    }
}
