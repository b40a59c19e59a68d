//! Wakes long-polling `/sync` requests when something they care about is stored.
//!
//! A notification names what changed: room IDs (a new event) and user IDs (an invite, account
//! data). Waiters keep only the ones that concern them, so one message does not make every
//! syncing user recompute. Behind a trait so that several Hearth processes can later share
//! notifications through Redis pub/sub.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{
    rooms::listener::{AppendListener, ListenerFuture},
    services::Services,
    store::{Appending, NewEvent, Placed},
};

/// What changed: room IDs and user IDs.
pub type Keys = Arc<[String]>;

pub trait Notifier: Send + Sync {
    fn notify(&self, keys: Vec<String>);
    /// A receiver of every notification from now on. A receiver that falls behind gets
    /// `Lagged` and should treat it as "anything may have changed".
    fn subscribe(&self) -> broadcast::Receiver<Keys>;
}

pub struct LocalNotifier {
    sender: broadcast::Sender<Keys>,
}

impl Default for LocalNotifier {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(4096).0,
        }
    }
}

impl Notifier for LocalNotifier {
    fn notify(&self, keys: Vec<String>) {
        // No receivers is fine: nobody is waiting.
        let _ = self.sender.send(keys.into());
    }

    fn subscribe(&self) -> broadcast::Receiver<Keys> {
        self.sender.subscribe()
    }
}

/// Wakes the syncs that care about new events: a timeline listener.
pub struct WakeSyncs;

impl AppendListener for WakeSyncs {
    fn committed(&self, svc: &Services, batch: &[Appending], _placed: &[Placed]) {
        svc.notifier
            .notify(notification_keys(batch.iter().map(|appending| &appending.event)));
    }

    fn room_created<'a>(&'a self, svc: &'a Services, events: &'a [NewEvent]) -> Option<ListenerFuture<'a>> {
        svc.notifier.notify(notification_keys(events));
        None
    }
}

/// Who to wake for new events: their rooms, and the targets of membership changes.
fn notification_keys<'a>(events: impl IntoIterator<Item = &'a NewEvent>) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for event in events {
        if !keys.contains(&event.room_id) {
            keys.push(event.room_id.clone());
        }
        if let (Some(_), Some(target)) = (&event.membership, &event.state_key) {
            keys.push(target.clone());
        }
    }
    keys
}
