//! Wakes long-polling `/sync` requests when something new is stored.
//!
//! Behind a trait so that several Hearth processes can later share wake-ups through Redis
//! pub/sub; the in-process implementation is a `watch` channel carrying a change counter.

use tokio::sync::watch;

pub trait Notifier: Send + Sync {
    /// Something changed (an event, account data, …): wake every waiter.
    fn notify(&self);
    /// A receiver that changes whenever `notify` is called.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

pub struct LocalNotifier {
    sender: watch::Sender<u64>,
}

impl Default for LocalNotifier {
    fn default() -> Self {
        Self {
            sender: watch::channel(0).0,
        }
    }
}

impl Notifier for LocalNotifier {
    fn notify(&self) {
        self.sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }
}
