//! What else happens when events are stored. Listeners are registered once, at start-up
//! (`Services::new`: push rule evaluation and delivery, the `/sync` wake-ups, the federation
//! queue, the search indexer; later story expiry), and the timeline hands every batch to each
//! in turn, so it names none of them.
//!
//! Dispatch costs nothing per event: a listener sees the whole batch, and only one that writes
//! into the batch's transaction (`prepare`) returns a future, boxed once per batch.

use std::{future::Future, pin::Pin};

use crate::{
    services::Services,
    store::{Appending, NewEvent, Placed},
};

/// A listener's asynchronous part.
pub type ListenerFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

pub trait AppendListener: Send + Sync {
    /// Before a batch is stored: adds to each event what must be written in the event's own
    /// transaction (its push rule outcomes, so unread counts never lag behind the event). It
    /// cannot refuse an event: failures are logged, not returned.
    fn prepare<'a>(&'a self, _svc: &'a Services, _batch: &'a mut [Appending]) -> Option<ListenerFuture<'a>> {
        None
    }

    /// Before a new room's first events are stored together (the room does not exist yet, so
    /// it has no members or state in the database): adds to each event what must be written in
    /// their transaction. Failures are logged, not returned.
    fn prepare_new_room<'a>(
        &'a self,
        _svc: &'a Services,
        _batch: &'a mut [Appending],
    ) -> Option<ListenerFuture<'a>> {
        None
    }

    /// After a batch is committed; `placed[i]` is where `batch[i]` landed. Must not wait on
    /// anything slow (spawn it): the callers are answered after every listener returns.
    fn committed(&self, svc: &Services, batch: &[Appending], placed: &[Placed]);

    /// After a new room's first events are committed together (nothing was prepared for them:
    /// the room did not exist yet); `last` is where the last of them landed.
    fn room_created<'a>(
        &'a self,
        svc: &'a Services,
        events: &'a [NewEvent],
        last: Placed,
    ) -> Option<ListenerFuture<'a>>;
}

/// Runs every listener's `prepare` on a batch about to be stored.
pub(crate) async fn prepare(svc: &Services, batch: &mut [Appending]) {
    for listener in svc.listeners.iter() {
        if let Some(work) = listener.prepare(svc, batch) {
            work.await;
        }
    }
}

/// Runs every listener's `prepare_new_room` on a new room's first events.
pub(crate) async fn prepare_new_room(svc: &Services, batch: &mut [Appending]) {
    for listener in svc.listeners.iter() {
        if let Some(work) = listener.prepare_new_room(svc, batch) {
            work.await;
        }
    }
}

/// Tells every listener about a committed batch.
pub(crate) fn committed(svc: &Services, batch: &[Appending], placed: &[Placed]) {
    for listener in svc.listeners.iter() {
        listener.committed(svc, batch, placed);
    }
}

/// Tells every listener about a new room's committed first events.
pub(crate) async fn room_created(svc: &Services, events: &[NewEvent], last: Placed) {
    for listener in svc.listeners.iter() {
        if let Some(work) = listener.room_created(svc, events, last) {
            work.await;
        }
    }
}
