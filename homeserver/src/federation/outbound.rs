//! Local events into the outbound queue. Before a batch is stored, this append listener works
//! out which other servers each event of a local sender goes to (`Appending::outbound`), and
//! the store writes those `federation_outbound` rows in the batch's own transaction: an event
//! is committed with its queue rows or not at all, so no stop of the process between a commit
//! and a hand-over can lose it. After the commit it only wakes the destinations' senders.
//!
//! The destinations are those at the event: the servers with a user joined before it (the
//! batch is under the append lock, and a batch holds messages or one state event alone), plus
//! the server of a user a membership change is about (a kick, a ban, a leave: that server
//! hears of it even when none of its users is left; invites go through `/invite`), less the
//! servers the room's server ACL denies — the ACL the event sets, for an ACL change.

use std::collections::{BTreeSet, HashMap};

use ruma::{OwnedServerName, events::room::server_acl::RoomServerAclEventContent};

use super::{acl, sender};
use crate::{
    error::Result,
    rooms::listener::{AppendListener, ListenerFuture},
    services::Services,
    store::{Appending, NewEvent, Placed},
};

/// The append listener that queues local events for the other servers in their rooms.
pub struct FederationSender;

impl AppendListener for FederationSender {
    fn prepare<'a>(&'a self, svc: &'a Services, batch: &'a mut [Appending]) -> Option<ListenerFuture<'a>> {
        if !queues_any(svc, batch) {
            return None;
        }
        Some(Box::pin(fill(svc, batch)))
    }

    fn prepare_new_room<'a>(
        &'a self,
        svc: &'a Services,
        batch: &'a mut [Appending],
    ) -> Option<ListenerFuture<'a>> {
        // The room has no members in the database yet: only membership targets can be named.
        self.prepare(svc, batch)
    }

    fn committed(&self, svc: &Services, batch: &[Appending], _placed: &[Placed]) {
        let destinations: BTreeSet<&str> = batch
            .iter()
            .flat_map(|a| a.outbound.iter().map(String::as_str))
            .collect();
        for destination in destinations {
            sender::wake(svc, destination);
        }
    }

    fn room_created<'a>(
        &'a self,
        svc: &'a Services,
        events: &'a [NewEvent],
        _last: Placed,
    ) -> Option<ListenerFuture<'a>> {
        // The rows went in with the events; a new room's only possible destinations are the
        // servers its membership events are about (waking one with nothing queued is harmless).
        let destinations: BTreeSet<OwnedServerName> =
            events.iter().filter_map(|e| membership_target(svc, e)).collect();
        for destination in destinations {
            sender::wake(svc, destination.as_str());
        }
        None
    }
}

/// Whether the batch has an event of a local sender to queue (federation on).
fn queues_any(svc: &Services, batch: &[Appending]) -> bool {
    svc.config.federation.enabled && batch.iter().any(|a| is_local(svc, &a.event))
}

fn is_local(svc: &Services, event: &NewEvent) -> bool {
    crate::util::is_user_of(&event.sender, svc.server_name())
}

/// Sets each local event's destinations. A failure leaves the event unqueued (a listener
/// cannot refuse an event) and is logged.
async fn fill(svc: &Services, batch: &mut [Appending]) {
    let mut rooms: HashMap<String, RoomServers> = HashMap::new();
    for appending in batch.iter_mut() {
        if !is_local(svc, &appending.event) {
            continue;
        }
        match destinations(svc, &appending.event, &mut rooms).await {
            Ok(destinations) => appending.outbound = destinations,
            Err(error) => tracing::error!(
                event_id = %appending.event.event_id, %error,
                "cannot work out the servers an event goes to; it is not sent"
            ),
        }
    }
}

/// A room's servers with a user joined, and its ACL, as the batch found them.
struct RoomServers {
    joined: BTreeSet<OwnedServerName>,
    acl: Option<RoomServerAclEventContent>,
}

async fn destinations(
    svc: &Services,
    event: &NewEvent,
    rooms: &mut HashMap<String, RoomServers>,
) -> Result<Vec<String>> {
    if !rooms.contains_key(&event.room_id) {
        let room = RoomServers {
            joined: sender::joined_servers(svc, &event.room_id).await?,
            acl: acl::current(svc, &event.room_id).await?,
        };
        rooms.insert(event.room_id.clone(), room);
    }
    let room = &rooms[&event.room_id];
    let mut servers = room.joined.clone();
    servers.extend(membership_target(svc, event));
    let own_acl = (event.event_type == "m.room.server_acl" && event.state_key.as_deref() == Some(""))
        .then(|| acl::of_pdu(&event.json))
        .flatten();
    let acl = own_acl.as_ref().or(room.acl.as_ref());
    Ok(servers
        .into_iter()
        .filter(|server| {
            let allowed = acl.is_none_or(|acl| acl.is_allowed(server));
            if !allowed {
                tracing::debug!(room_id = %event.room_id, %server, "not sent: denied by the room's server ACL");
            }
            allowed
        })
        .map(|server| server.to_string())
        .collect())
}

/// The other server a membership change (not an invite) is about, if any.
fn membership_target(svc: &Services, event: &NewEvent) -> Option<OwnedServerName> {
    event
        .membership
        .as_deref()
        .filter(|m| *m != "invite")
        .and(event.state_key.as_deref())
        .and_then(sender::server_of)
        .filter(|server| server.as_str() != svc.server_name())
}
