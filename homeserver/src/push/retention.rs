//! Stored push outcomes are kept for `push.outcome_retention` (default 30 days), then pruned
//! (`store/push_retention.rs`): they leave `/notifications`, and what each member had not read
//! of them stays in their unread counts as a count summary. Without this, every notifying event
//! kept a row for ever.
//!
//! "Older than the retention" is by when this server stored the outcome, not by the event's
//! `origin_server_ts` (another server may claim any time): once an hour the stream position is
//! marked with the time, and a prune takes what lies at or below the newest mark older than the
//! retention. An outcome therefore goes between the retention and the retention plus an hour
//! after it was stored.

use std::time::Duration;

use crate::{error::Result, services::Services};

/// How often the stream position is marked and old outcomes pruned.
const EVERY: Duration = Duration::from_secs(60 * 60);

/// Outcome rows pruned per transaction: the timeline's appends wait while one runs.
const ROWS_PER_STEP: i64 = 2_000;

/// The shortest retention: what another process remembers of the audiences it stored lapses
/// after an hour (`store/push_outcomes.rs`), so none may be deleted sooner than that after it
/// was last named; a day leaves the hourly marks room.
const MIN_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// `push.outcome_retention` as applied: `None` keeps outcomes for ever; at least a day.
pub fn retention_ms(svc: &Services) -> Option<i64> {
    let configured = svc.config.push.outcome_retention.0?;
    Some(
        i64::try_from(configured)
            .unwrap_or(i64::MAX)
            .max(MIN_RETENTION_MS),
    )
}

/// Marks and prunes once an hour, for ever (spawned at start-up; nothing when outcomes are kept
/// for ever).
pub async fn run(svc: Services) {
    let Some(retention_ms) = retention_ms(&svc) else {
        return;
    };
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = prune(&svc, svc.clock.now_ms(), retention_ms).await {
            tracing::warn!(%error, "pruning push outcomes failed; trying again in an hour");
        }
    }
}

/// Marks where the event stream is at `now_ms`, then prunes the outcomes stored before
/// `now_ms - retention_ms`. Returns how many were pruned.
pub async fn prune(svc: &Services, now_ms: i64, retention_ms: i64) -> Result<u64> {
    svc.store.mark_push_prune(now_ms).await?;
    let cutoff = now_ms.saturating_sub(retention_ms);
    let Some(upto) = svc.store.push_prune_bound(cutoff).await? else {
        return Ok(0);
    };
    let mut pruned = 0;
    loop {
        let step = svc.store.prune_push_outcomes(upto, ROWS_PER_STEP).await?;
        if step == 0 {
            break;
        }
        pruned += step;
        // Appends queued behind this step go first.
        tokio::task::yield_now().await;
    }
    if pruned > 0 {
        tracing::info!(pruned, upto, "old push outcomes pruned");
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use ruma::UserId;
    use serde_json::json;

    use super::prune;
    use crate::{
        rooms::{
            EventSpec,
            receipts::store_receipt,
            timeline::tests::{alice, bob, public_room, send},
        },
        services::{Services, TestServices},
    };

    const DAY: i64 = 24 * 60 * 60 * 1000;
    const RETENTION: i64 = 30 * DAY;

    fn carol() -> &'static UserId {
        ruma::user_id!("@carol:hearth.test")
    }

    async fn join(svc: &Services, room_id: &ruma::RoomId, user: &UserId) {
        let join = EventSpec::state("m.room.member", user.as_str(), json!({ "membership": "join" }));
        svc.timeline
            .append(svc, room_id, user, join, None)
            .await
            .expect("joins");
    }

    /// Counts as `/sync` shows them: through the unread cache, from the database when the
    /// cache is dropped, and by `push_counts` from the user's receipt position.
    async fn counts(svc: &Services, user: &UserId, room_id: &ruma::RoomId, read: i64) -> (u64, u64, u64) {
        svc.push.unread.drop_entry(user.as_str(), room_id.as_str());
        let rooms = [room_id.to_string()];
        let synced = svc
            .push
            .unread
            .counts_in_rooms(svc, user.as_str(), &rooms)
            .await
            .unwrap()
            .remove(room_id.as_str())
            .unwrap_or_default();
        let direct = crate::push::unread_counts(svc, user.as_str(), room_id.as_str(), read)
            .await
            .unwrap();
        assert_eq!(synced, direct, "both count queries agree");
        let thread: u64 = direct.per_thread.values().map(|(n, _)| n).sum();
        (direct.notification_count, direct.highlight_count, thread)
    }

    /// `user`'s `m.read` receipt moves to `event_id`.
    async fn read_up_to(svc: &Services, room_id: &ruma::RoomId, user: &UserId, event_id: &ruma::EventId) {
        store_receipt(
            svc,
            room_id.as_str(),
            user.as_str(),
            "m.read",
            "",
            event_id.as_str(),
            0,
        )
        .await
        .expect("receipt stored");
    }

    /// The answer to a `SELECT COUNT(*)`.
    async fn count(svc: &Services, sql: &'static str) -> i64 {
        let row = sqlx::query(sql).fetch_one(svc.store.pool()).await.unwrap();
        sqlx::Row::get(&row, 0)
    }

    /// Outcomes older than the retention go from `/notifications` and the tables, but every
    /// member's unread counts stay as they were: bob read some, carol none; a mention
    /// highlights and a thread reply counts in its thread. Newer outcomes stay.
    #[tokio::test]
    async fn pruned_outcomes_leave_notifications_but_not_unread_counts() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        join(svc, &room_id, bob()).await;
        join(svc, &room_id, carol()).await;
        let text = |body: &str| json!({ "msgtype": "m.text", "body": body });
        let first = send(svc, &room_id, alice(), text("one")).await.unwrap();
        let read = send(svc, &room_id, alice(), text("two")).await.unwrap();
        let mention = json!({
            "msgtype": "m.text",
            "body": "bob, carol: look",
            "m.mentions": { "user_ids": [bob().as_str(), carol().as_str()] },
        });
        send(svc, &room_id, alice(), mention).await.unwrap();
        let reply = json!({
            "msgtype": "m.text",
            "body": "in a thread",
            "m.relates_to": { "rel_type": "m.thread", "event_id": first.event_id.as_str() },
        });
        send(svc, &room_id, alice(), reply).await.unwrap();
        read_up_to(svc, &room_id, bob(), &read.event_id).await;

        let bob_before = counts(svc, bob(), &room_id, read.stream_ordering).await;
        let carol_before = counts(svc, carol(), &room_id, 0).await;
        assert_eq!(bob_before, (1, 1, 1), "bob read two of four");
        assert_eq!(carol_before, (3, 1, 1));
        let listed = |user: &'static UserId| async move {
            svc.store
                .push_notifications(user.as_str(), i64::MAX, 100, false)
                .await
                .unwrap()
                .len()
        };
        assert_eq!(listed(carol()).await, 4);

        // Marked now; nothing is older than the retention yet.
        let now = svc.clock.now_ms();
        assert_eq!(prune(svc, now, RETENTION).await.unwrap(), 0);
        // A message after the mark stays however late the prune.
        let later = send(svc, &room_id, alice(), text("later")).await.unwrap();
        let pruned = prune(svc, now + RETENTION + DAY, RETENTION).await.unwrap();
        assert!(pruned >= 4, "the four outcomes before the mark went ({pruned})");
        assert_eq!(listed(carol()).await, 1, "only the later notification is listed");
        let rows = svc
            .store
            .push_notifications(carol().as_str(), i64::MAX, 100, false)
            .await
            .unwrap();
        assert_eq!(rows[0].event_id, later.event_id.as_str());

        assert_eq!(
            counts(svc, bob(), &room_id, read.stream_ordering).await,
            (2, 1, 1)
        );
        assert_eq!(counts(svc, carol(), &room_id, 0).await, (4, 1, 1));
        // A prune with nothing left to prune changes nothing.
        assert_eq!(prune(svc, now + RETENTION + 2 * DAY, RETENTION).await.unwrap(), 0);
        assert_eq!(counts(svc, carol(), &room_id, 0).await, (4, 1, 1));

        // Reading the latest event reads the pruned ones too.
        read_up_to(svc, &room_id, carol(), &later.event_id).await;
        assert_eq!(
            counts(svc, carol(), &room_id, later.stream_ordering).await,
            (0, 0, 0)
        );
        assert_eq!(
            counts(svc, bob(), &room_id, read.stream_ordering).await,
            (2, 1, 1)
        );
    }

    /// Outcomes every member had read leave no count behind, an audience whose outcomes all
    /// went is deleted, and the next message to the same members still notifies them (the
    /// audience is written again, not assumed stored).
    #[tokio::test]
    async fn an_audience_pruned_away_is_written_again_when_it_returns() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        join(svc, &room_id, bob()).await;
        let text = json!({ "msgtype": "m.text", "body": "hello" });
        let sent = send(svc, &room_id, alice(), text.clone()).await.unwrap();
        read_up_to(svc, &room_id, bob(), &sent.event_id).await;
        assert!(count(svc, "SELECT COUNT(*) FROM push_audience_members").await > 0);

        let now = svc.clock.now_ms();
        prune(svc, now, RETENTION).await.unwrap();
        assert_eq!(prune(svc, now + RETENTION + DAY, RETENTION).await.unwrap(), 1);
        assert_eq!(count(svc, "SELECT COUNT(*) FROM event_push_outcomes").await, 0);
        assert_eq!(
            count(svc, "SELECT COUNT(*) FROM push_audience_members").await,
            0,
            "the audience went with its last outcome"
        );
        assert_eq!(
            count(svc, "SELECT COUNT(*) FROM push_count_summaries").await,
            0,
            "nothing was unread"
        );

        let again = send(svc, &room_id, alice(), text).await.unwrap();
        assert_eq!(
            counts(svc, bob(), &room_id, sent.stream_ordering).await,
            (1, 0, 0),
            "the same audience notifies again"
        );
        assert_eq!(
            svc.store
                .push_notifications(bob().as_str(), i64::MAX, 10, false)
                .await
                .unwrap()[0]
                .event_id,
            again.event_id.as_str()
        );
    }

    /// A count summary is kept across prunes while the member reads nothing, and replaced when
    /// they read in between: each prune adds only what is unread then.
    #[tokio::test]
    async fn summaries_add_up_across_prunes_until_a_receipt() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        join(svc, &room_id, bob()).await;
        let text = json!({ "msgtype": "m.text", "body": "hello" });
        let day0 = svc.clock.now_ms();
        prune(svc, day0, RETENTION).await.unwrap();
        for _ in 0..3 {
            send(svc, &room_id, alice(), text.clone()).await.unwrap();
        }
        prune(svc, day0 + DAY, RETENTION).await.unwrap();
        let mut last = None;
        for _ in 0..2 {
            last = Some(send(svc, &room_id, alice(), text.clone()).await.unwrap());
        }
        prune(svc, day0 + 2 * DAY, RETENTION).await.unwrap();
        // The first three go, then the next two: bob still has five unread.
        assert_eq!(prune(svc, day0 + RETENTION + DAY, RETENTION).await.unwrap(), 3);
        assert_eq!(counts(svc, bob(), &room_id, 0).await, (5, 0, 0));
        assert_eq!(
            prune(svc, day0 + RETENTION + 2 * DAY, RETENTION).await.unwrap(),
            2
        );
        assert_eq!(counts(svc, bob(), &room_id, 0).await, (5, 0, 0));

        // Bob reads the last; one more arrives and is pruned: one unread, not six.
        let last = last.unwrap();
        read_up_to(svc, &room_id, bob(), &last.event_id).await;
        send(svc, &room_id, alice(), text).await.unwrap();
        prune(svc, day0 + RETENTION + 3 * DAY, RETENTION).await.unwrap();
        assert_eq!(
            prune(svc, day0 + 2 * RETENTION + 4 * DAY, RETENTION)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            counts(svc, bob(), &room_id, last.stream_ordering).await,
            (1, 0, 0)
        );
        assert_eq!(count(svc, "SELECT COUNT(*) FROM event_push_outcomes").await, 0);
    }

    /// A room larger than a statement's chunk of summaries (73 members: chunks of 64, 8 and 1):
    /// every member keeps their own counts, one summary each.
    #[tokio::test]
    async fn every_member_of_a_large_room_keeps_their_counts() {
        let test = TestServices::new().await;
        let svc = &test.svc;
        let room_id = public_room(svc).await;
        let members: Vec<ruma::OwnedUserId> = (0..73)
            .map(|i| UserId::parse(format!("@m{i}:hearth.test")).unwrap())
            .collect();
        for member in &members {
            join(svc, &room_id, member).await;
        }
        let text = |body: &str| json!({ "msgtype": "m.text", "body": body });
        let first = send(svc, &room_id, alice(), text("one")).await.unwrap();
        let mention = json!({
            "msgtype": "m.text",
            "body": "m0: look",
            "m.mentions": { "user_ids": [members[0].as_str()] },
        });
        send(svc, &room_id, alice(), mention).await.unwrap();
        send(svc, &room_id, alice(), text("three")).await.unwrap();
        read_up_to(svc, &room_id, &members[1], &first.event_id).await;
        let read = |i: usize| if i == 1 { first.stream_ordering } else { 0 };
        let mut before = Vec::new();
        for (i, member) in members.iter().enumerate() {
            before.push(counts(svc, member, &room_id, read(i)).await);
        }
        assert_eq!(before[0], (3, 1, 0));
        assert_eq!(before[1], (2, 0, 0));
        assert_eq!(before[2], (3, 0, 0));

        let now = svc.clock.now_ms();
        prune(svc, now, RETENTION).await.unwrap();
        assert!(prune(svc, now + RETENTION + DAY, RETENTION).await.unwrap() >= 3);
        assert_eq!(count(svc, "SELECT COUNT(*) FROM event_push_outcomes").await, 0);
        assert_eq!(
            count(svc, "SELECT COUNT(*) FROM push_count_summaries").await,
            73,
            "one summary per member"
        );
        for (i, member) in members.iter().enumerate() {
            assert_eq!(
                counts(svc, member, &room_id, read(i)).await,
                before[i],
                "{member}"
            );
        }
    }
}
