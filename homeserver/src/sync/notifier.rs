//! Wakes long-polling `/sync` requests when something they care about is stored.
//!
//! A notification names what changed: room IDs (a new event) and user IDs (an invite, account
//! data). Waiters keep only the ones that concern them, so one message does not make every
//! syncing user recompute. Behind a trait so that several Hearth processes can later share
//! notifications through Redis pub/sub.

use std::sync::Arc;

use tokio::sync::broadcast;

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
