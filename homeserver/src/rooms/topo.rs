//! The room's topological order, what `/messages` and `/context` page by: (depth, stream
//! position), with the depth computed here rather than taken from the PDU.
//!
//! - **Depth.** A PDU's `depth` is a claim (the spec: its prev events' greatest depth, plus
//!   one, at most 2^53 − 1 in canonical JSON). This server orders by its own:
//!   `events.topological_ordering`, the prev events' greatest plus one. A received event that
//!   arrives live (not late) is also placed at or above every forward extremity's, so it sorts
//!   after everything the room already shows, where it arrived; a late event keeps the depth of
//!   its place in the DAG. A backfilled event takes its claimed depth, held below its children
//!   here. So a lying depth moves an event neither above what the room showed when it arrived
//!   nor below its parents, and this server's own events never claim more than the limit.
//! - **Live events sort alike in both orders.** Events that are not late get non-decreasing
//!   depths in the order they are stored (each is at or above every extremity), so among them
//!   the topological order is the stream order: `/sync`'s timeline (stream positions) and
//!   `/messages` (topological) agree, and a stream token maps to one place.
//! - **Tokens.** `/messages` answers `t<depth>_<stream>` tokens. A stream token
//!   (`s…`, what `/sync` answers) names the place just before the first live event after its
//!   position: backwards from a `/sync` `prev_batch`, `/messages` gives exactly the live events
//!   before that sync's timeline, and, in their places, the late events stored since.

use crate::{
    error::{Error, Result},
    services::Services,
    store::Topo,
    stream::StreamToken,
};

/// The largest depth a PDU may carry (canonical JSON integers stop at 2^53 − 1).
pub const MAX_DEPTH: i64 = (1 << 53) - 1;

/// The depth of an event whose prev events' greatest depth (here) is `max_prev`.
pub fn after(max_prev: i64) -> i64 {
    max_prev.saturating_add(1).clamp(0, MAX_DEPTH)
}

/// Where a received event sorts: after its prev events (`max_prev`; its claimed depth when
/// none of them is here, as for the first events after a remote join) and, unless it is late,
/// at or above the room's forward extremities (`extremities`).
pub fn of_received(claimed: i64, max_prev: Option<i64>, extremities: Option<i64>, late: bool) -> i64 {
    let own = max_prev.map_or(claimed.clamp(0, MAX_DEPTH), after);
    match extremities {
        Some(top) if !late => own.max(top.clamp(0, MAX_DEPTH)),
        _ => own,
    }
}

/// A pagination token as a client passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageToken {
    /// From `/sync` (or an older `/messages`): a stream position.
    Stream(StreamToken),
    /// From `/messages` or `/context`: a place in the topological order.
    Topo(Topo),
}

impl PageToken {
    /// `400 M_INVALID_PARAM` for anything that is not a token of ours.
    pub fn parse(token: &str) -> Result<Self> {
        let Some(rest) = token.strip_prefix('t') else {
            return StreamToken::parse(token).map(PageToken::Stream);
        };
        let invalid = || Error::invalid_param("Invalid pagination token");
        let (depth, stream) = rest.split_once('_').ok_or_else(invalid)?;
        let depth: i64 = depth.parse().map_err(|_| invalid())?;
        let stream: i64 = stream.parse().map_err(|_| invalid())?;
        // Within the bounds the scans step from (`Topo::MIN`, `Topo::MAX`, one off).
        let bounds = i64::MIN / 2..=i64::MAX / 2;
        if !bounds.contains(&depth) || !bounds.contains(&stream) {
            return Err(invalid());
        }
        Ok(PageToken::Topo(Topo { depth, stream }))
    }

    /// The place this token names in the room: a stream position's is just before the first
    /// event after it that is not late (`Topo::MAX` when there is none yet).
    pub async fn place(self, svc: &Services, room_id: &str) -> Result<Topo> {
        match self {
            PageToken::Topo(topo) => Ok(topo),
            PageToken::Stream(token) => Ok(svc
                .store
                .first_live_after(room_id, token.events)
                .await?
                .map_or(Topo::MAX, Topo::prev)),
        }
    }
}

/// The stream position of a token, for reads that page by stream position (`/relations`): a
/// topological place's own (live events sort alike in both orders).
pub fn stream_position(token: &str) -> Result<i64> {
    Ok(match PageToken::parse(token)? {
        PageToken::Stream(token) => token.events,
        PageToken::Topo(topo) => topo.stream,
    })
}

impl std::fmt::Display for PageToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageToken::Stream(token) => token.fmt(f),
            PageToken::Topo(topo) => write!(f, "t{}_{}", topo.depth, topo.stream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_events_sort_after_their_parents_and_live_ones_after_the_room() {
        // A claimed depth is not believed when the prev events are here.
        assert_eq!(of_received(MAX_DEPTH, Some(4), Some(9), true), 5);
        assert_eq!(of_received(1, Some(7), Some(9), true), 8);
        // Live: at or above the extremities.
        assert_eq!(of_received(MAX_DEPTH, Some(4), Some(9), false), 9);
        assert_eq!(of_received(3, Some(12), Some(9), false), 13);
        // No prev event here: the claim, within bounds.
        assert_eq!(of_received(i64::MAX, None, None, false), MAX_DEPTH);
        assert_eq!(of_received(-5, None, None, false), 0);
        assert_eq!(after(MAX_DEPTH), MAX_DEPTH);
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = PageToken::Topo(Topo {
            depth: 12,
            stream: -40,
        });
        assert_eq!(PageToken::parse(&t.to_string()).unwrap(), t);
        let s = PageToken::parse("s5_1_2").unwrap();
        assert!(matches!(s, PageToken::Stream(StreamToken { events: 5, .. })));
        for bad in [
            "",
            "t",
            "t1",
            "t1_",
            "t_1",
            "tx_1",
            "t1_2_3",
            "t99999999999999999999_1",
            "garbage",
            "t1_-9223372036854775808",
        ] {
            assert_eq!(
                PageToken::parse(bad).unwrap_err().errcode(),
                "M_INVALID_PARAM",
                "{bad}"
            );
        }
    }
}
