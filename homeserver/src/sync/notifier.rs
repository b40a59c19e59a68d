//! Wakes long-polling `/sync` requests and WebSocket streams when something they care about is
//! stored: wake-ups by interest.
//!
//! A notification names what changed: room IDs (a new event, typing, a receipt) and user IDs (an
//! invite, account data, to-device messages, presence of someone sharing a room). A waiter
//! registers the keys it cares about; a notification wakes only the waiters of its keys. Nothing
//! is queued per waiter: every notification takes the next position of a counter, each key
//! remembers the position of its last notification, and a waiter asks "did any of my keys move
//! past the position I computed at?", so a slow waiter misses nothing and costs nothing.
//!
//! Behind the [`Notifier`] trait so that several Hearth processes can later share notifications
//! (through Redis pub/sub: a subscriber task feeds [`Waiters::wake`]).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::{
    rooms::listener::{AppendListener, ListenerFuture},
    services::Services,
    store::{Appending, NewEvent, Placed},
    util::{FastMap, FastSet},
};

/// How long a burst of notifications gathers before the waiters it concerns are woken, so that
/// a burst wakes each of them once.
pub const COALESCE: Duration = Duration::from_millis(3);

/// Stream positions a notification carries. A stream's writer notifies in commit order, so
/// once a notification with position P is recorded, every change of that stream up to P has
/// been notified: a woken sync that computes only the keys that moved may claim positions up
/// to what was notified when it read them, and no further (a change committed but not yet
/// notified is in no moved key: claiming its position would skip it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Covered {
    pub events: i64,
    pub receipts: i64,
    pub typing: i64,
}

impl Covered {
    pub fn events(position: i64) -> Self {
        Self {
            events: position,
            ..Self::default()
        }
    }

    pub fn receipts(position: i64) -> Self {
        Self {
            receipts: position,
            ..Self::default()
        }
    }

    pub fn typing(serial: i64) -> Self {
        Self {
            typing: serial,
            ..Self::default()
        }
    }

    fn absorb(&mut self, other: Covered) {
        self.events = self.events.max(other.events);
        self.receipts = self.receipts.max(other.receipts);
        self.typing = self.typing.max(other.typing);
    }
}

pub trait Notifier: Send + Sync {
    /// Something concerning these keys (room and user IDs) is stored, outside the streams
    /// whose positions notifications carry (account data, to-device messages, presence...).
    fn notify(&self, keys: Vec<String>) {
        self.notify_at(keys, Covered::default());
    }
    /// Changes of these keys up to these stream positions are stored; called in each stream's
    /// commit order (see [`Covered`]).
    fn notify_at(&self, keys: Vec<String>, covered: Covered);
    /// A waiter with no interest yet: see [`Subscription`].
    fn subscribe(&self) -> Subscription;
    /// How many waiters have been woken since start (a debugging and test counter).
    fn wakeups(&self) -> u64;
}

/// The in-process notifier: notifications go straight to the waiters' table.
#[derive(Default)]
pub struct LocalNotifier {
    waiters: Arc<Waiters>,
}

impl Notifier for LocalNotifier {
    fn notify_at(&self, keys: Vec<String>, covered: Covered) {
        self.waiters.wake(&keys, covered);
    }

    fn subscribe(&self) -> Subscription {
        Subscription::new(self.waiters.clone())
    }

    fn wakeups(&self) -> u64 {
        self.waiters.wakeups.load(Ordering::Relaxed)
    }
}

/// Who waits for which key, and the position of each key's last notification.
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<Table>,
    wakeups: AtomicU64,
    /// Waiters to wake when the current burst has gathered (each once: `Shared::queued`).
    burst: Mutex<Burst>,
}

#[derive(Default)]
struct Burst {
    waiters: Vec<Arc<Shared>>,
    /// A task is gathering this burst and will wake its waiters.
    gathering: bool,
}

#[derive(Default)]
struct Table {
    /// Position of the newest notification.
    position: u64,
    /// The stream positions notified so far.
    covered: Covered,
    /// Per key: position of its last notification, and its waiters. A key stays after its
    /// waiters leave (a waiter registering later must see that it moved); one entry per room
    /// and user the server has notified.
    keys: FastMap<Arc<str>, Key>,
    next_waiter: u64,
}

#[derive(Default)]
struct Key {
    last: u64,
    waiters: FastMap<u64, Weak<Shared>>,
}

/// What a notification writes into a waiter.
struct Shared {
    /// Newest position of a notification of one of its keys.
    moved: AtomicU64,
    notify: Notify,
    /// In the burst being gathered.
    queued: AtomicBool,
}

impl Waiters {
    /// Records a notification of `keys` (up to `covered`) and queues their waiters for the
    /// burst being gathered (`Waiters::gather`).
    pub fn wake(self: &Arc<Self>, keys: &[String], covered: Covered) {
        let mut woken: Vec<Arc<Shared>> = Vec::new();
        {
            let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            table.position += 1;
            table.covered.absorb(covered);
            let position = table.position;
            for key in keys {
                let entry = match table.keys.get_mut(key.as_str()) {
                    Some(entry) => entry,
                    None => table.keys.entry(Arc::from(key.as_str())).or_default(),
                };
                entry.last = position;
                for waiter in entry.waiters.values().filter_map(Weak::upgrade) {
                    // A waiter of several of these keys is woken once.
                    if waiter.moved.swap(position, Ordering::AcqRel) != position {
                        woken.push(waiter);
                    }
                }
            }
        }
        self.wakeups.fetch_add(woken.len() as u64, Ordering::Relaxed);
        self.gather(woken);
    }

    /// Wakes `woken` once the burst they belong to has gathered for [`COALESCE`]: one timer
    /// per burst, where a timer per woken waiter cost each of them a second poll (after one
    /// message to a room with thousands of streams, thousands of timers at once). Without a
    /// runtime to gather on, at once.
    fn gather(self: &Arc<Self>, woken: Vec<Arc<Shared>>) {
        let mut burst = self.burst.lock().unwrap_or_else(|e| e.into_inner());
        burst.waiters.extend(
            woken
                .into_iter()
                .filter(|waiter| !waiter.queued.swap(true, Ordering::AcqRel)),
        );
        if burst.gathering || burst.waiters.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let waiters = std::mem::take(&mut burst.waiters);
            drop(burst);
            wake_all(waiters);
            return;
        };
        burst.gathering = true;
        let this = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(COALESCE).await;
            let waiters = {
                let mut burst = this.burst.lock().unwrap_or_else(|e| e.into_inner());
                burst.gathering = false;
                std::mem::take(&mut burst.waiters)
            };
            wake_all(waiters);
        });
    }
}

fn wake_all(waiters: Vec<Arc<Shared>>) {
    for waiter in waiters {
        waiter.queued.store(false, Ordering::Release);
        // Stores a permit when the waiter is not waiting right now: nothing is lost.
        waiter.notify.notify_one();
    }
}

/// One waiter (a long-polling `/sync`, a WebSocket stream): the keys it cares about and the
/// newest position of their notifications. Unregisters itself when dropped.
pub struct Subscription {
    waiters: Arc<Waiters>,
    id: u64,
    shared: Arc<Shared>,
    keys: FastSet<Arc<str>>,
}

impl Subscription {
    fn new(waiters: Arc<Waiters>) -> Self {
        let id = {
            let mut table = waiters.inner.lock().unwrap_or_else(|e| e.into_inner());
            table.next_waiter += 1;
            table.next_waiter
        };
        Self {
            waiters,
            id,
            shared: Arc::new(Shared {
                moved: AtomicU64::new(0),
                notify: Notify::new(),
                queued: AtomicBool::new(false),
            }),
            keys: FastSet::default(),
        }
    }

    /// The position of the newest notification. Take it before reading what a response covers:
    /// anything stored after that read is notified after this position.
    pub fn mark(&self) -> u64 {
        self.waiters
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .position
    }

    /// Sets the keys this waiter cares about. A key that moved earlier counts as moved (see
    /// [`Self::moved_since`]).
    pub fn watch(&mut self, keys: &HashSet<String>) {
        // The keys of the last step, almost always: compared in place (both are sets, so equal
        // sizes and one inside the other is equality), nothing allocated, no lock taken.
        if keys.len() == self.keys.len() && keys.iter().all(|key| self.keys.contains(key.as_str())) {
            return;
        }
        let wanted: FastSet<Arc<str>> = keys.iter().map(|key| Arc::from(key.as_str())).collect();
        let mut table = self.waiters.inner.lock().unwrap_or_else(|e| e.into_inner());
        for gone in self.keys.difference(&wanted) {
            if let Some(entry) = table.keys.get_mut(gone) {
                entry.waiters.remove(&self.id);
            }
        }
        let mut moved = 0;
        for new in wanted.difference(&self.keys) {
            let entry = table.keys.entry(new.clone()).or_default();
            entry.waiters.insert(self.id, Arc::downgrade(&self.shared));
            moved = moved.max(entry.last);
        }
        self.shared.moved.fetch_max(moved, Ordering::AcqRel);
        drop(table);
        self.keys = wanted;
    }

    /// Whether one of the watched keys was notified after `mark`: a comparison of positions,
    /// no I/O.
    pub fn moved_since(&self, mark: u64) -> bool {
        self.shared.moved.load(Ordering::Acquire) > mark
    }

    /// The newest position of a notification of a watched key (what a woken step has heard).
    pub fn moved_position(&self) -> u64 {
        self.shared.moved.load(Ordering::Acquire)
    }

    /// The watched keys notified after `mark`, and the stream positions notified so far, read
    /// together: what a woken sync needs to recompute, and how far that computation may claim
    /// to reach. A lookup per watched key, no I/O.
    pub fn moved_keys(&self, mark: u64) -> (Vec<String>, Covered) {
        let table = self.waiters.inner.lock().unwrap_or_else(|e| e.into_inner());
        let keys = self
            .keys
            .iter()
            .filter(|key| table.keys.get(*key).is_some_and(|entry| entry.last > mark))
            .map(|key| key.to_string())
            .collect();
        (keys, table.covered)
    }

    /// Waits until a watched key moves past `mark`, or until `deadline`. Returns whether
    /// something moved. A waiter is woken once its burst has gathered (`Waiters::gather`);
    /// one that finds a key already moved lets the burst gather for [`COALESCE`] itself.
    pub async fn wait(&self, mark: u64, deadline: Instant) -> bool {
        if self.moved_since(mark) {
            tokio::time::sleep(COALESCE.min(deadline.saturating_duration_since(Instant::now()))).await;
            return true;
        }
        loop {
            if tokio::time::timeout_at(deadline, self.shared.notify.notified())
                .await
                .is_err()
            {
                return self.moved_since(mark);
            }
            // A permit left by a notification already seen is no change.
            if self.moved_since(mark) {
                return true;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut table = self.waiters.inner.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(entry) = table.keys.get_mut(key) {
                entry.waiters.remove(&self.id);
            }
        }
    }
}

/// Wakes the syncs that care about new events: a timeline listener.
pub struct WakeSyncs;

impl AppendListener for WakeSyncs {
    fn committed(&self, svc: &Services, batch: &[Appending], placed: &[Placed]) {
        // The sync engine learns of the events before anyone is woken to look for them.
        svc.sync_engine.appended(
            batch
                .iter()
                .zip(placed)
                .map(|(appending, placed)| (&appending.event, placed.stream_ordering, placed.state_group)),
            svc.server_name(),
        );
        let newest = placed.iter().map(|p| p.stream_ordering).max().unwrap_or_default();
        svc.notifier.notify_at(
            notification_keys(batch.iter().map(|appending| &appending.event)),
            Covered::events(newest),
        );
    }

    fn room_created<'a>(
        &'a self,
        svc: &'a Services,
        events: &'a [NewEvent],
        last: Placed,
    ) -> Option<ListenerFuture<'a>> {
        if let Some(first) = events.first() {
            svc.sync_engine.room_created(&first.room_id, last.stream_ordering);
        }
        svc.notifier
            .notify_at(notification_keys(events), Covered::events(last.stream_ordering));
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
        if let (Some(_), Some(target)) = (&event.membership, &event.state_key)
            && !keys.contains(target)
        {
            keys.push(target.clone());
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys as a waiter watches them (a set) or a notification carries them (a list).
    fn keys<C: FromIterator<String>>(list: &[&str]) -> C {
        list.iter().map(|k| k.to_string()).collect()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn a_waiter_of_room_x_is_not_woken_by_room_y() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        let mark = x.mark();
        x.watch(&keys(&["!x:hs", "@alice:hs"]));
        notifier.notify(keys(&["!y:hs"]));
        notifier.notify(keys(&["@bob:hs"]));
        assert!(!x.wait(mark, soon()).await);
        assert_eq!(notifier.wakeups(), 0);

        notifier.notify(keys(&["!y:hs", "!x:hs"]));
        assert!(x.wait(mark, soon()).await);
        assert_eq!(notifier.wakeups(), 1);
    }

    #[tokio::test]
    async fn a_burst_wakes_a_waiter_once() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        x.watch(&keys(&["!x:hs", "@alice:hs"]));
        let mark = x.mark();
        // One notification naming both keys wakes once.
        notifier.notify(keys(&["!x:hs", "@alice:hs"]));
        assert_eq!(notifier.wakeups(), 1);
        assert!(x.wait(mark, soon()).await);
        // The permit left by a notification already seen does not count as a change.
        let mark = x.mark();
        assert!(!x.wait(mark, soon()).await);
    }

    #[tokio::test]
    async fn a_burst_is_gathered_once_and_wakes_each_waiter_once() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        x.watch(&keys(&["!x:hs"]));
        let mark = x.mark();
        let waiting = tokio::spawn(async move {
            let start = Instant::now();
            let moved = x.wait(mark, start + Duration::from_secs(5)).await;
            (moved, start.elapsed())
        });
        tokio::task::yield_now().await;
        for _ in 0..100 {
            notifier.notify(keys(&["!x:hs"]));
        }
        {
            // One timer for the burst, the waiter in it once.
            let burst = notifier.waiters.burst.lock().unwrap();
            assert!(burst.gathering);
            assert_eq!(burst.waiters.len(), 1);
        }
        let (moved, waited) = waiting.await.unwrap();
        assert!(moved);
        assert!(waited >= COALESCE, "woken before the burst gathered: {waited:?}");
        let burst = notifier.waiters.burst.lock().unwrap();
        assert!(!burst.gathering && burst.waiters.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_kept_across_steps_hears_only_what_is_new() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        x.watch(&keys(&["!x:hs"]));
        let mark = x.mark();
        notifier.notify(keys(&["!x:hs"]));
        assert!(x.wait(mark, soon()).await);
        // The next step, same waiter: the permit the burst left is not a change...
        let mark = x.mark();
        x.watch(&keys(&["!x:hs"]));
        assert!(!x.wait(mark, soon()).await);
        // ...and what comes next is heard.
        notifier.notify(keys(&["!x:hs"]));
        assert!(x.wait(mark, soon()).await);
    }

    #[tokio::test]
    async fn a_key_moved_before_watching_counts() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        // The sync read its positions at `mark`; the event lands before it registers.
        let mark = x.mark();
        notifier.notify(keys(&["!x:hs"]));
        x.watch(&keys(&["!x:hs"]));
        assert!(x.moved_since(mark));
        assert!(x.wait(mark, soon()).await);
        // But not a move older than the mark.
        let mut late = notifier.subscribe();
        let mark = late.mark();
        late.watch(&keys(&["!x:hs"]));
        assert!(!late.moved_since(mark));
    }

    #[tokio::test]
    async fn a_slow_waiter_loses_nothing() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        x.watch(&keys(&["!x:hs"]));
        let mark = x.mark();
        // Many notifications while the waiter is busy elsewhere: no queue to overflow.
        for _ in 0..100_000 {
            notifier.notify(keys(&["!x:hs"]));
        }
        assert!(x.wait(mark, soon()).await);
    }

    #[tokio::test]
    async fn a_waiter_learns_which_keys_moved() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        x.watch(&keys(&["!x:hs", "!y:hs", "@alice:hs"]));
        let mark = x.mark();
        notifier.notify_at(keys(&["!y:hs", "!z:hs"]), Covered::events(7));
        assert_eq!(x.moved_keys(mark), (keys(&["!y:hs"]), Covered::events(7)));
        let later = x.mark();
        assert!(x.moved_keys(later).0.is_empty());
    }

    #[tokio::test]
    async fn the_positions_read_with_the_keys_are_those_notified() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        x.watch(&keys(&["!x:hs"]));
        let mark = x.mark();
        notifier.notify_at(keys(&["!x:hs"]), Covered::events(10));
        notifier.notify_at(keys(&["!y:hs"]), Covered::receipts(4));
        notifier.notify_at(keys(&["!y:hs"]), Covered::typing(2));
        // Notifications without positions (account data, to-device...) move none of them.
        notifier.notify(keys(&["@alice:hs"]));
        let (moved, covered) = x.moved_keys(mark);
        assert_eq!(moved, keys::<Vec<String>>(&["!x:hs"]));
        assert_eq!(
            covered,
            Covered {
                events: 10,
                receipts: 4,
                typing: 2
            }
        );
    }

    #[tokio::test]
    async fn dropped_waiters_are_forgotten() {
        let notifier = LocalNotifier::default();
        let mut x = notifier.subscribe();
        x.watch(&keys(&["!x:hs"]));
        drop(x);
        notifier.notify(keys(&["!x:hs"]));
        assert_eq!(notifier.wakeups(), 0);
        let table = notifier.waiters.inner.lock().unwrap();
        assert!(table.keys["!x:hs"].waiters.is_empty());
    }
}
