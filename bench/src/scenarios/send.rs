//! `send`: N senders in M rooms send m.room.message as fast as the server accepts them, each
//! keeping K requests in flight. Measures accepted messages/s and PUT latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::{Ctx, Start, finish_process, stamped_content};
use crate::matrix::now_micros;
use crate::report::{Better, Report, ms};

#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Sending users.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Rooms; sender i sends into room i % rooms.
    #[arg(long, default_value_t = 2)]
    pub rooms: usize,
    /// Requests each sender keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// How long to send, seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Stop after this many messages even if time remains.
    #[arg(long, default_value_t = 200_000)]
    pub max_messages: u64,
}

pub async fn run(ctx: &Ctx, args: &SendArgs, report: &mut Report) -> Result<()> {
    if args.senders == 0 || args.rooms == 0 || args.in_flight == 0 {
        bail!("--senders, --rooms and --in-flight must be at least 1");
    }
    if args.rooms > args.senders {
        bail!("--rooms must not exceed --senders (every room needs a sender)");
    }
    if args.senders > 10_000 || args.in_flight > 1_000 {
        bail!("--senders is capped at 10000 and --in-flight at 1000");
    }
    let senders = ctx.register_users("s", args.senders).await?;
    let mut rooms = Vec::new();
    for (r, creator) in senders.iter().take(args.rooms).enumerate() {
        rooms.push(
            ctx.api
                .create_room(&creator.access_token, &format!("bench send {r}"))
                .await?,
        );
    }
    // Room r is created by sender r, so senders 0..rooms are already in their room.
    let joins = senders
        .iter()
        .enumerate()
        .skip(args.rooms)
        .map(|(i, u)| (u.clone(), rooms[i % args.rooms].clone()))
        .collect();
    ctx.join_all(joins).await?;

    let monitor = ctx.monitor()?;
    let cpu0 = Start::now(ctx);
    let rate_limited0 = ctx.api.counters.rate_limited.load(Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut workers = tokio::task::JoinSet::new();
    for (i, sender) in senders.iter().enumerate() {
        for k in 0..args.in_flight {
            let api = ctx.api.clone();
            let token = sender.access_token.clone();
            let room = rooms[i % args.rooms].clone();
            let run_id = ctx.run_id.clone();
            let (stop, issued) = (stop.clone(), issued.clone());
            let max = args.max_messages;
            workers.spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut first_error = None;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let seq = issued.fetch_add(1, Ordering::Relaxed);
                    if seq >= max {
                        break;
                    }
                    let content = stamped_content(&run_id, seq, now_micros());
                    let t = Instant::now();
                    match api
                        .send_message(&token, &room, &format!("hb{k}-{n}"), &content)
                        .await
                    {
                        Ok(_) => lat.push(ms(t.elapsed())),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                            if errors > 100 {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    n += 1;
                }
                (lat, errors, first_error, Instant::now())
            });
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut last_done = start;
    while let Some(done) = workers.join_next().await {
        let (lat, errs, first_error, finished) = done?;
        latencies.extend(lat);
        errors += errs;
        last_done = last_done.max(finished);
        if let Some(e) = first_error.filter(|_| report.notes.len() < 5) {
            report.note(format!("send error: {e}"));
        }
    }
    let elapsed = last_done - start;
    let ok = latencies.len() as f64;
    report.push("messages_sent", ok, "msgs", Better::None);
    report.push("send_errors", errors as f64, "reqs", Better::Lower);
    report.push(
        "rate_limited_429",
        (ctx.api.counters.rate_limited.load(Ordering::Relaxed) - rate_limited0) as f64,
        "reqs",
        Better::Lower,
    );
    report.push("elapsed", elapsed.as_secs_f64(), "s", Better::None);
    report.push("throughput", ok / elapsed.as_secs_f64(), "msg/s", Better::Higher);
    report.push_latency("put_latency", &latencies);
    let cpu_before = monitor.as_ref().map(|m| m.before.cpu_s);
    let db_cpu = cpu0.db_cpu_since(ctx);
    let after = finish_process(report, ctx, monitor, "server", &cpu0)?;
    if let (Some(after), Some(before)) = (after, cpu_before.filter(|_| ok > 0.0)) {
        let server = after.cpu_s - before;
        report.push("server_cpu_per_msg", server * 1000.0 / ok, "ms", Better::Lower);
        if let Some(db) = db_cpu {
            let total = (server + db) * 1000.0 / ok;
            report.push("server_and_db_cpu_per_msg", total, "ms", Better::Lower);
        }
    }
    report.params["rooms_created"] = json!(rooms.len());
    Ok(())
}
