//! `reaction`: one member reacts (`m.reaction`, an `m.annotation` with a fresh key each time) to
//! a message at a fixed rate while R other members long-poll /sync; measures the send→arrival
//! latency of every reaction at every receiver (the send time is embedded in the content).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;

use super::{Ctx, Start, TOKEN_SYNC_FILTER, bounded, finish_process, read_stamp, stamped_content};
use crate::matrix::{self, now_micros};
use crate::report::{Better, Report, ms};

#[derive(Args, Debug, Clone)]
pub struct ReactionArgs {
    /// Members long-polling /sync besides the reacting one.
    #[arg(long, default_value_t = 4)]
    pub receivers: usize,
    /// Reactions per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to react, seconds.
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// After the last reaction, how long to wait for the last arrivals, seconds.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Long-poll timeout of the receivers' /sync, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub poll_timeout_ms: u64,
}

#[derive(Default)]
struct Received {
    latencies_ms: Vec<f64>,
    sync_errors: u64,
    first_error: Option<String>,
}

pub async fn run(ctx: &Ctx, args: &ReactionArgs, report: &mut Report) -> Result<()> {
    if args.receivers == 0 || args.receivers > 10_000 || !(args.rate > 0.0 && args.rate <= 1000.0) {
        bail!("--receivers must be in [1, 10000] and --rate in (0, 1000]");
    }
    let reactor = ctx.register_users("ra", 1).await?.remove(0);
    let receivers = ctx.register_users("rr", args.receivers).await?;
    let room = ctx
        .api
        .create_room(&reactor.access_token, "bench reaction")
        .await?;
    ctx.join_all(receivers.iter().map(|u| (u.clone(), room.clone())).collect())
        .await?;
    let target = ctx
        .api
        .send_message(
            &reactor.access_token,
            &room,
            "hbr-target",
            &json!({"msgtype": "m.text", "body": "react to me"}),
        )
        .await?;

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

    let monitor = ctx.monitor()?;
    let cpu0 = Start::now(ctx);
    let received = Arc::new(Mutex::new(Received::default()));
    let mut polls = JoinSet::new();
    for (u, since) in receivers.iter().zip(since) {
        let api = ctx.api.clone();
        let token = u.access_token.clone();
        let filter = ctx.sync_filter.clone();
        let run_id = ctx.run_id.clone();
        let received = received.clone();
        let poll_ms = args.poll_timeout_ms;
        polls.spawn(async move {
            let mut since = since;
            let mut seen = HashSet::new();
            loop {
                let resp = api.sync(&token, Some(&since), poll_ms, filter.as_deref()).await;
                let now = now_micros();
                let next = match resp {
                    Ok(resp) => {
                        let mut rx = received.lock().expect("received lock");
                        for (_, ev) in matrix::timeline_events(&resp.body) {
                            if ev["type"] == "m.reaction"
                                && let Some((seq, sent_at)) = read_stamp(ev, &run_id)
                                && seen.insert(seq)
                            {
                                rx.latencies_ms.push(now.saturating_sub(sent_at) as f64 / 1000.0);
                            }
                        }
                        matrix::next_batch(&resp.body).map_err(|e| {
                            rx.sync_errors += 1;
                            rx.first_error.get_or_insert(format!("{e:#}"));
                        })
                    }
                    Err(e) => {
                        let mut rx = received.lock().expect("received lock");
                        rx.sync_errors += 1;
                        rx.first_error.get_or_insert(format!("{e:#}"));
                        Err(())
                    }
                };
                match next {
                    Ok(next) => since = next,
                    Err(()) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    }

    let mut put_latencies = Vec::new();
    let mut send_errors = 0u64;
    let mut first_send_error = None;
    let start = Instant::now();
    let total = (args.rate * args.duration as f64).round() as u64;
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let mut content = stamped_content(&ctx.run_id, seq, now_micros());
        // A fresh key each time: a second identical annotation would be refused.
        content["m.relates_to"] = json!({
            "rel_type": "m.annotation",
            "event_id": target,
            "key": format!("r{seq}"),
        });
        let t = Instant::now();
        match ctx
            .api
            .send_event(
                &reactor.access_token,
                &room,
                "m.reaction",
                &format!("hbr{seq}"),
                &content,
            )
            .await
        {
            Ok(_) => put_latencies.push(ms(t.elapsed())),
            Err(e) => {
                send_errors += 1;
                first_send_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let expected = put_latencies.len() * receivers.len();
    let deadline = Instant::now() + Duration::from_secs(args.drain);
    while received.lock().expect("received lock").latencies_ms.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    polls.abort_all();
    while polls.join_next().await.is_some() {}

    let rx = std::mem::take(&mut *received.lock().expect("received lock"));
    report.push("reactions_sent", put_latencies.len() as f64, "", Better::None);
    report.push("send_errors", send_errors as f64, "reqs", Better::Lower);
    report.push("arrivals", rx.latencies_ms.len() as f64, "", Better::None);
    report.push(
        "missing_arrivals",
        expected.saturating_sub(rx.latencies_ms.len()) as f64,
        "",
        Better::Lower,
    );
    report.push("sync_errors", rx.sync_errors as f64, "reqs", Better::Lower);
    report.push_latency("reaction_arrival_latency", &rx.latencies_ms);
    report.push_latency("reaction_put_latency", &put_latencies);
    if let Some(e) = first_send_error {
        report.note(format!("first send error: {e}"));
    }
    if let Some(e) = rx.first_error {
        report.note(format!("first sync error: {e}"));
    }
    finish_process(report, ctx, monitor, "server", &cpu0)?;
    Ok(())
}
