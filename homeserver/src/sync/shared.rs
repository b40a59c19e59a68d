//! Identical woken steps share one computation and one serialization.
//!
//! A user with several long-polls or streams open on one device (tabs, a client running several
//! sync loops) sends identical requests: same device, same `since`, same `filter`. One message
//! wakes them all together, and each would compute (and serialize) the same answer. Here the
//! first woken step of such a group computes; the others wait for its answer and send it.
//!
//! What keeps it correct:
//! - The key is everything the answer depends on besides the stored data: user, device (to-device
//!   messages, their acknowledgement through `since`, and `unsigned.transaction_id` are the
//!   device's), `since` and the `filter` parameter as sent. Another user or device never shares.
//! - An answer reflects everything notified up to the notifier position taken before its
//!   positions were read (`mark`). A woken step uses it only when that covers every notification
//!   that woke it (`mark >= moved`): it then gets an answer it could have computed itself, from
//!   its own `since` up to positions read after what woke it.
//! - Only answers with something new are shared (an empty one would send a long-poll back to
//!   waiting with nothing to wait from): after an empty or failed computation, or a leader that
//!   went away, the others compute for themselves.
//! - Only woken steps take part: a request's first computation is its own, so a client that
//!   repeats a request (it lost the answer) gets a fresh one.
//!
//! What is shared is what one computation would have answered, `unsigned.age` included (as of
//! that computation, milliseconds earlier).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::Answer;
use crate::stream::StreamToken;

/// How long an answer stays for the identical steps woken with it: the last of a large group
/// may be scheduled seconds after the first.
const KEEP: Duration = Duration::from_secs(10);
/// How long an answer no other step has joined stays. Most devices hold one request at a time,
/// so most answers are never joined: kept for `KEEP`, the answers of 100 receivers following
/// busy rooms (each serialized response, tens of kilobytes) held ~400 MiB.
const ALONE_KEEP: Duration = Duration::from_secs(1);
/// Groups kept at most (past it, steps compute alone until old ones expire).
const MAX_GROUPS: usize = 100_000;
/// The table is swept of old answers at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct StepKey {
    pub user_id: String,
    pub device_id: String,
    pub since: StreamToken,
    pub filter: Option<String>,
    /// A `full_state` request's answer carries state the others' would not.
    pub full_state: bool,
}

/// A computation of one group, under way or done: `None` until its leader publishes, then its
/// answer (`None` again when it had nothing to share).
struct Group {
    mark: u64,
    answer: watch::Receiver<Option<Option<Arc<Answer>>>>,
    started: Instant,
    /// Whether another step joined (then it may be a large group, whose last members come late).
    joined: bool,
}

impl Group {
    fn kept_at(&self, now: Instant) -> bool {
        let age = now.duration_since(self.started);
        age < KEEP && (self.joined || age < ALONE_KEEP)
    }
}

#[derive(Default)]
pub struct SharedSteps {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    groups: HashMap<StepKey, Group>,
    swept: Option<Instant>,
}

/// What a woken step does: wait for the answer of a computation that covers what woke it, or
/// compute and publish its own.
pub(super) enum Role {
    Join(watch::Receiver<Option<Option<Arc<Answer>>>>),
    Lead(Leader),
    /// Not shared (a full table).
    Alone,
}

/// The computing step's end: publishes its answer; dropped unpublished (the request went
/// away, or failed), it lets the waiting steps compute for themselves.
pub(super) struct Leader {
    answer: watch::Sender<Option<Option<Arc<Answer>>>>,
}

impl Leader {
    pub fn publish(self, answer: &Arc<Answer>) {
        let shared = answer.has_changes.then(|| answer.clone());
        self.answer.send_replace(Some(shared));
    }
}

impl SharedSteps {
    /// A step woken by notifications up to `moved`, about to compute at notifier position
    /// `mark`: joins a group whose computation covers `moved`, or leads a new one.
    pub(super) fn enter(&self, key: StepKey, moved: u64, mark: u64) -> Role {
        self.enter_at(key, moved, mark, Instant::now())
    }

    fn enter_at(&self, key: StepKey, moved: u64, mark: u64, now: Instant) -> Role {
        let mut table = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if table.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
            table.groups.retain(|_, group| group.kept_at(now));
            table.swept = Some(now);
        }
        if let Some(group) = table.groups.get_mut(&key)
            && group.mark >= moved
            && group.kept_at(now)
        {
            group.joined = true;
            return Role::Join(group.answer.clone());
        }
        if table.groups.len() >= MAX_GROUPS && !table.groups.contains_key(&key) {
            return Role::Alone;
        }
        let (sender, receiver) = watch::channel(None);
        table.groups.insert(
            key,
            Group {
                mark,
                answer: receiver,
                started: now,
                joined: false,
            },
        );
        Role::Lead(Leader { answer: sender })
    }
}

/// The leader's answer when it has something to share; `None` when the others must compute.
pub(super) async fn answer_of(
    mut group: watch::Receiver<Option<Option<Arc<Answer>>>>,
) -> Option<Arc<Answer>> {
    match group.wait_for(Option::is_some).await {
        Ok(published) => published.clone().flatten(),
        // The leader went away without an answer.
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str, device: &str) -> StepKey {
        StepKey {
            user_id: user.into(),
            device_id: device.into(),
            since: StreamToken::default(),
            filter: None,
            full_state: false,
        }
    }

    fn answer(has_changes: bool) -> Arc<Answer> {
        Arc::new(Answer::of(
            bytes::Bytes::from_static(b"{}"),
            "s1".into(),
            has_changes,
        ))
    }

    #[tokio::test]
    async fn identical_steps_share_a_published_answer() {
        let steps = SharedSteps::default();
        let Role::Lead(leader) = steps.enter(key("@a:hs", "D"), 5, 6) else {
            panic!("the first step leads");
        };
        let Role::Join(group) = steps.enter(key("@a:hs", "D"), 6, 7) else {
            panic!("an identical step woken by what the leader covers joins");
        };
        leader.publish(&answer(true));
        assert_eq!(answer_of(group).await.expect("shared").next_batch, "s1");
    }

    #[tokio::test]
    async fn other_users_devices_and_later_moves_do_not_join() {
        let steps = SharedSteps::default();
        let Role::Lead(_leader) = steps.enter(key("@a:hs", "D"), 5, 6) else {
            panic!("leads");
        };
        assert!(matches!(steps.enter(key("@b:hs", "D"), 5, 6), Role::Lead(_)));
        assert!(matches!(steps.enter(key("@a:hs", "E"), 5, 6), Role::Lead(_)));
        // Woken by a notification after the leader's mark: its answer may lack it.
        assert!(matches!(steps.enter(key("@a:hs", "D"), 7, 8), Role::Lead(_)));
    }

    #[tokio::test]
    async fn answers_nobody_joined_are_dropped_sooner() {
        let steps = SharedSteps::default();
        let start = Instant::now();
        let later = |ms| start + Duration::from_millis(ms);
        let Role::Lead(alone) = steps.enter_at(key("@a:hs", "D"), 1, 1, start) else {
            panic!("leads");
        };
        alone.publish(&answer(true));
        let Role::Lead(leader) = steps.enter_at(key("@b:hs", "D"), 1, 1, start) else {
            panic!("leads");
        };
        let Role::Join(_) = steps.enter_at(key("@b:hs", "D"), 1, 1, start) else {
            panic!("joins");
        };
        leader.publish(&answer(true));
        // Within a second, a late identical step still finds either answer.
        assert!(matches!(
            steps.enter_at(key("@a:hs", "D"), 1, 1, later(900)),
            Role::Join(_)
        ));
        let Role::Lead(alone) = steps.enter_at(key("@c:hs", "D"), 1, 1, later(900)) else {
            panic!("leads");
        };
        alone.publish(&answer(true));
        // Past `ALONE_KEEP`, only the joined groups are left; past `KEEP`, none.
        assert!(matches!(
            steps.enter_at(key("@c:hs", "D"), 1, 1, later(2_000)),
            Role::Lead(_)
        ));
        assert!(matches!(
            steps.enter_at(key("@b:hs", "D"), 1, 1, later(2_000)),
            Role::Join(_)
        ));
        // @a's was joined late, and stays like any joined group's.
        assert!(matches!(
            steps.enter_at(key("@a:hs", "D"), 1, 1, later(2_000)),
            Role::Join(_)
        ));
        assert!(matches!(
            steps.enter_at(key("@b:hs", "D"), 1, 1, later(10_500)),
            Role::Lead(_)
        ));
        assert!(steps.inner.lock().unwrap().groups.len() <= 2);
    }

    #[tokio::test]
    async fn an_empty_answer_or_a_vanished_leader_shares_nothing() {
        let steps = SharedSteps::default();
        let Role::Lead(leader) = steps.enter(key("@a:hs", "D"), 1, 1) else {
            panic!("leads");
        };
        let Role::Join(group) = steps.enter(key("@a:hs", "D"), 1, 2) else {
            panic!("joins");
        };
        leader.publish(&answer(false));
        assert!(answer_of(group).await.is_none());

        let Role::Lead(leader) = steps.enter(key("@a:hs", "D"), 3, 3) else {
            panic!("leads");
        };
        let Role::Join(group) = steps.enter(key("@a:hs", "D"), 3, 3) else {
            panic!("joins");
        };
        drop(leader);
        assert!(answer_of(group).await.is_none());
    }
}
