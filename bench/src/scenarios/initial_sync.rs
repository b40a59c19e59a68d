//! `initial-sync`: a user in K rooms of P members with T messages each. Measures an initial
//! /sync (with a client-style lazy-loading filter and with the server's default), and
//! incremental /syncs (one new message, and nothing new).

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;

use super::{Ctx, Start, bounded, finish_process, read_stamp, stamped_content};
use crate::matrix::{self, now_micros};
use crate::report::{Better, Report, Summary, ms};

/// What a client like Element asks for on its first sync: a short timeline, members lazily.
pub const INITIAL_SYNC_FILTER: &str =
    r#"{"room":{"timeline":{"limit":20},"state":{"lazy_load_members":true}}}"#;

#[derive(Args, Debug, Clone)]
pub struct InitialSyncArgs {
    /// Rooms the measured user is in.
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Members per room, the measured user included.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Messages per room.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
    /// Measurements of each kind (each initial sync from a fresh login/device).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

pub async fn run(ctx: &Ctx, args: &InitialSyncArgs, report: &mut Report) -> Result<()> {
    if args.rooms == 0 || args.members == 0 || args.repeat == 0 {
        bail!("--rooms, --members and --repeat must be at least 1");
    }
    if args.rooms * args.members > 1_000_000 || args.rooms * args.messages > 10_000_000 || args.repeat > 1000
    {
        bail!("sizes too large (rooms*members ≤ 1e6, rooms*messages ≤ 1e7, repeat ≤ 1000)");
    }
    let observer = ctx.register_users("o", 1).await?.remove(0);
    let others = ctx.register_users("m", args.members - 1).await?;
    let rooms_start = Instant::now();
    let rooms = {
        let (c, token) = (ctx.clone(), observer.access_token.clone());
        bounded(args.rooms, ctx.setup_concurrency, move |r| {
            let (c, token) = (c.clone(), token.clone());
            async move {
                let name = format!("bench initial-sync {r}");
                c.setup_step(|| c.api.create_room(&token, &name)).await
            }
        })
        .await?
    };
    tracing::info!(rooms = rooms.len(), elapsed = ?rooms_start.elapsed(), "rooms created");
    ctx.join_all(
        others
            .iter()
            .flat_map(|u| rooms.iter().map(move |r| (u.clone(), r.clone())))
            .collect(),
    )
    .await?;

    let seed_start = Instant::now();
    let total = args.rooms * args.messages;
    let senders: Vec<_> = if others.is_empty() {
        vec![observer.clone()]
    } else {
        others.clone()
    };
    {
        let (c, rooms, senders) = (ctx.clone(), rooms.clone(), senders.clone());
        bounded(total, ctx.setup_concurrency, move |i| {
            let c = c.clone();
            let room = rooms[i % rooms.len()].clone();
            let token = senders[i % senders.len()].access_token.clone();
            let content = stamped_content(&c.run_id, i as u64, now_micros());
            async move {
                let txn = format!("hbi{i}");
                c.setup_step(|| c.api.send_message(&token, &room, &txn, &content))
                    .await
            }
        })
        .await?;
    }
    tracing::info!(messages = total, elapsed = ?seed_start.elapsed(), "seeded");
    report.push(
        "seed_messages_per_s",
        total as f64 / seed_start.elapsed().as_secs_f64(),
        "msg/s",
        Better::Higher,
    );

    let monitor = ctx.monitor()?;
    let cpu0 = Start::now(ctx);
    let mut filtered = Vec::new();
    let mut default = Vec::new();
    let mut device = observer.clone();
    let mut since = String::new();
    for rep in 0..args.repeat {
        device = ctx.api.login(&observer.user_id, &ctx.password).await?;
        let t = Instant::now();
        let resp = ctx
            .api
            .sync(&device.access_token, None, 0, Some(INITIAL_SYNC_FILTER))
            .await?;
        filtered.push(ms(t.elapsed()));
        since = matrix::next_batch(&resp.body)?;
        let joined = resp.body["rooms"]["join"]
            .as_object()
            .map(|o| o.len())
            .unwrap_or(0);
        if rep == 0 {
            report.push("initial_sync_bytes", resp.bytes as f64, "B", Better::None);
            report.push("initial_sync_rooms", joined as f64, "", Better::None);
            report.push(
                "initial_sync_timeline_events",
                matrix::timeline_events(&resp.body).count() as f64,
                "",
                Better::None,
            );
        }
        if joined != args.rooms {
            report.note(format!(
                "initial sync (filtered) listed {joined} joined rooms, expected {}",
                args.rooms
            ));
        }

        let t = Instant::now();
        let resp = ctx.api.sync(&device.access_token, None, 0, None).await?;
        default.push(ms(t.elapsed()));
        if rep == 0 {
            report.push("initial_sync_default_bytes", resp.bytes as f64, "B", Better::None);
        }
    }
    report.push("initial_sync_first", filtered[0], "ms", Better::Lower);
    report.push("initial_sync_median", median(&filtered), "ms", Better::Lower);
    report.push("initial_sync_default_first", default[0], "ms", Better::Lower);
    report.push(
        "initial_sync_default_median",
        median(&default),
        "ms",
        Better::Lower,
    );

    let mut incremental = Vec::new();
    let mut empty = Vec::new();
    for rep in 0..args.repeat {
        let seq = (total + rep) as u64;
        let sender = &senders[rep % senders.len()];
        let content = stamped_content(&ctx.run_id, seq, now_micros());
        ctx.api
            .send_message(
                &sender.access_token,
                &rooms[rep % rooms.len()],
                &format!("hbinc{rep}"),
                &content,
            )
            .await?;
        let t = Instant::now();
        let resp = ctx
            .api
            .sync(&device.access_token, Some(&since), 0, Some(INITIAL_SYNC_FILTER))
            .await?;
        incremental.push(ms(t.elapsed()));
        since = matrix::next_batch(&resp.body)?;
        let found = matrix::timeline_events(&resp.body)
            .any(|(_, ev)| read_stamp(ev, &ctx.run_id).is_some_and(|(s, _)| s == seq));
        if !found {
            report.note(format!(
                "incremental sync #{rep} did not contain the message sent just before it"
            ));
        }

        let t = Instant::now();
        let resp = ctx
            .api
            .sync(&device.access_token, Some(&since), 0, Some(INITIAL_SYNC_FILTER))
            .await?;
        empty.push(ms(t.elapsed()));
        since = matrix::next_batch(&resp.body)?;
    }
    report.push(
        "incremental_sync_median",
        median(&incremental),
        "ms",
        Better::Lower,
    );
    report.push(
        "incremental_sync_empty_median",
        median(&empty),
        "ms",
        Better::Lower,
    );
    finish_process(report, ctx, monitor, "server", &cpu0)?;
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    Summary::of(v).map(|s| s.p50).unwrap_or(f64::NAN)
}
