//! `deliver`: senders send at a fixed total rate while R receivers long-poll /sync; measures
//! the send→delivery latency of every message at every receiver (the send time is embedded in
//! the message content).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Ctx, Start, TOKEN_SYNC_FILTER, bounded, finish_process, stamped_content};
use crate::matrix::{self, now_micros};
use crate::report::{Better, Report, ms};
use crate::ws::{Transport, next_streamed_digest};

#[derive(Args, Debug, Clone)]
pub struct DeliverArgs {
    /// Sending users (messages are spread round-robin over them).
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Receiving users, each long-polling /sync; every receiver is in every room.
    #[arg(long, default_value_t = 8)]
    pub receivers: usize,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Total messages per second over all senders.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// How long to send, seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// After sending stops, how long to wait for the last deliveries, seconds.
    #[arg(long, default_value_t = 15)]
    pub drain: u64,
    /// Most sends in flight at once; a tick finding none free is skipped (and counted).
    #[arg(long, default_value_t = 64)]
    pub max_in_flight: usize,
    /// Long-poll timeout of the receivers' /sync, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub poll_timeout_ms: u64,
    /// How receivers follow the rooms: `/sync` long-polls, or the `org.hearth.ws` stream.
    #[arg(long, value_enum, default_value_t = Transport::LongPoll)]
    pub transport: Transport,
}

#[derive(Default)]
struct Received {
    latencies_ms: Vec<f64>,
    duplicates: u64,
    sync_errors: u64,
    limited: u64,
    first_error: Option<String>,
}

pub async fn run(ctx: &Ctx, args: &DeliverArgs, report: &mut Report) -> Result<()> {
    if args.senders == 0 || args.receivers == 0 || args.rooms == 0 {
        bail!("--senders, --receivers and --rooms must be at least 1");
    }
    if !(args.rate > 0.0 && args.rate <= 100_000.0) || args.receivers > 10_000 {
        bail!("--rate must be in (0, 100000] and --receivers at most 10000");
    }
    let senders = ctx.register_users("d", args.senders).await?;
    let receivers = ctx.register_users("r", args.receivers).await?;
    let mut rooms = Vec::new();
    for r in 0..args.rooms {
        rooms.push(
            ctx.api
                .create_room(&senders[0].access_token, &format!("bench deliver {r}"))
                .await?,
        );
    }
    let joins = senders[1..]
        .iter()
        .chain(&receivers)
        .flat_map(|u| rooms.iter().map(move |r| (u.clone(), r.clone())))
        .collect();
    ctx.join_all(joins).await?;

    // Receivers catch up first, so that their long-polls only see the benchmark's messages.
    let catch_up = Instant::now();
    let since = {
        let (c, tokens) = (
            ctx.clone(),
            receivers
                .iter()
                .map(|u| u.access_token.clone())
                .collect::<Vec<_>>(),
        );
        bounded(tokens.len(), ctx.setup_concurrency, move |i| {
            let (c, token) = (c.clone(), tokens[i].clone());
            async move {
                let resp = c
                    .setup_step(|| c.api.sync(&token, None, 0, Some(TOKEN_SYNC_FILTER)))
                    .await?;
                matrix::next_batch(&resp.body)
            }
        })
        .await?
    };
    tracing::info!(receivers = since.len(), elapsed = ?catch_up.elapsed(), "receivers caught up");

    let monitor = ctx.monitor()?;
    let cpu0 = Start::now(ctx);
    let received = Arc::new(Mutex::new(Received::default()));
    let deliveries = Arc::new(AtomicU64::new(0));
    let mut polls = JoinSet::new();
    for (u, since) in receivers.iter().zip(since) {
        let api = ctx.api.clone();
        let token = u.access_token.clone();
        let filter = ctx.sync_filter.clone();
        let run_id = ctx.run_id.clone();
        let (received, deliveries) = (received.clone(), deliveries.clone());
        let poll_ms = args.poll_timeout_ms;
        let transport = args.transport;
        polls.spawn(async move {
            let mut since = since;
            let mut seen = HashSet::new();
            let mut stream = None;
            loop {
                let resp = match transport {
                    Transport::LongPoll => {
                        api.sync_digest(&token, &since, poll_ms, filter.as_deref(), &run_id)
                            .await
                    }
                    Transport::Ws => {
                        next_streamed_digest(&api, &mut stream, &token, &since, filter.as_deref(), &run_id)
                            .await
                    }
                };
                let now = now_micros();
                let failed = {
                    let mut rx = received.lock().expect("received lock");
                    match resp {
                        Ok(digest) => {
                            for (seq, sent_at) in digest.stamps {
                                if seen.insert(seq) {
                                    rx.latencies_ms.push(now.saturating_sub(sent_at) as f64 / 1000.0);
                                    deliveries.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    rx.duplicates += 1;
                                }
                            }
                            rx.limited += digest.limited_rooms;
                            since = digest.next_batch;
                            false
                        }
                        Err(e) => {
                            rx.sync_errors += 1;
                            rx.first_error.get_or_insert(format!("{e:#}"));
                            true
                        }
                    }
                };
                if failed {
                    // Back off so a broken server does not turn this into a busy loop.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }

    // Sending at a fixed rate.
    let put_latencies = Arc::new(Mutex::new(Vec::new()));
    let send_errors = Arc::new(AtomicU64::new(0));
    let first_send_error: Arc<Mutex<Option<String>>> = Arc::default();
    let sem = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let mut sends = JoinSet::new();
    let mut skipped = 0u64;
    let start = Instant::now();
    let total = (args.rate * args.duration as f64).round() as u64;
    for seq in 0..total {
        // Message `seq` is due at start + seq/rate. Scheduling against the start (not the previous
        // tick) keeps the offered rate exact when the timer, whose resolution is a millisecond,
        // wakes late: the messages that fell due meanwhile go out at once.
        let due = start + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let sender = &senders[seq as usize % senders.len()];
        let (api, token) = (ctx.api.clone(), sender.access_token.clone());
        let room = rooms[seq as usize % rooms.len()].clone();
        let run_id = ctx.run_id.clone();
        let (lat, errs, first) = (
            put_latencies.clone(),
            send_errors.clone(),
            first_send_error.clone(),
        );
        sends.spawn(async move {
            let content = stamped_content(&run_id, seq, now_micros());
            let t = Instant::now();
            match api
                .send_message(&token, &room, &format!("hbd{seq}"), &content)
                .await
            {
                Ok(_) => lat.lock().expect("lat lock").push(ms(t.elapsed())),
                Err(e) => {
                    errs.fetch_add(1, Ordering::Relaxed);
                    first.lock().expect("err lock").get_or_insert(format!("{e:#}"));
                }
            }
            drop(permit);
        });
    }
    while let Some(r) = sends.join_next().await {
        r?;
    }
    let send_elapsed = start.elapsed();
    let sent = put_latencies.lock().expect("lat lock").len() as u64;
    let expected = sent * receivers.len() as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain);
    while deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    polls.abort_all();
    while polls.join_next().await.is_some() {}

    let rx = std::mem::take(&mut *received.lock().expect("received lock"));
    let delivered = rx.latencies_ms.len() as u64;
    report.push("messages_sent", sent as f64, "msgs", Better::None);
    report.push(
        "send_rate_achieved",
        sent as f64 / send_elapsed.as_secs_f64(),
        "msg/s",
        Better::Higher,
    );
    report.push("ticks_skipped", skipped as f64, "msgs", Better::Lower);
    report.push(
        "send_errors",
        send_errors.load(Ordering::Relaxed) as f64,
        "reqs",
        Better::Lower,
    );
    report.push("deliveries", delivered as f64, "", Better::None);
    report.push(
        "missing_deliveries",
        expected.saturating_sub(delivered) as f64,
        "",
        Better::Lower,
    );
    report.push("duplicate_deliveries", rx.duplicates as f64, "", Better::Lower);
    report.push("limited_timelines", rx.limited as f64, "", Better::None);
    report.push("sync_errors", rx.sync_errors as f64, "reqs", Better::Lower);
    report.push_latency("delivery_latency", &rx.latencies_ms);
    report.push_latency("put_latency", &put_latencies.lock().expect("lat lock"));
    if let Some(e) = first_send_error.lock().expect("err lock").take() {
        report.note(format!("first send error: {e}"));
    }
    if let Some(e) = rx.first_error {
        report.note(format!("first sync error: {e}"));
    }
    finish_process(report, ctx, monitor, "server", &cpu0)?;
    Ok(())
}
