//! `search`: builds a corpus through the server's own append path (`PUT /send`, several
//! senders and rooms), then measures `POST /search`: how fast the corpus becomes searchable,
//! P50/P95 of ranked (`order_by: rank`) and `recent` queries for words of the corpus, and the
//! send→searchable lag of fresh messages (send, then search until found).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::Ctx;
use crate::report::{Better, Report, ms};

#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Messages in the corpus.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Sending users (each in one room).
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Rooms.
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    /// Sends each sender keeps in flight while building the corpus.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Queries of each order.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Fresh messages whose send→searchable lag is measured.
    #[arg(long, default_value_t = 50)]
    pub lag_samples: usize,
}

/// Distinct words of the corpus vocabulary.
const VOCABULARY: u64 = 5_000;
/// Words per corpus message.
const WORDS: u64 = 12;

/// A deterministic pseudo-random sequence (SplitMix64): no extra dependency, same corpus in
/// every run.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A vocabulary word, skewed towards small numbers (as real text is towards common words).
fn word(seed: u64) -> String {
    let r = mix(seed) % VOCABULARY;
    let skewed = r * r / VOCABULARY;
    format!("w{skewed}x")
}

fn body(seq: u64) -> String {
    (0..WORDS)
        .map(|i| word(seq * WORDS + i))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn search(ctx: &Ctx, token: &str, term: &str, order: &str) -> Result<Value> {
    let body = json!({"search_categories": {"room_events": {
        "search_term": term, "order_by": order, "filter": {"limit": 10}}}});
    let resp = ctx
        .api
        .call(Method::POST, ctx.api.url(&["search"]), Some(token), Some(&body))
        .await?;
    if !resp.status.is_success() {
        bail!("POST /search: {} {}", resp.status, resp.body);
    }
    Ok(resp.body["search_categories"]["room_events"].clone())
}

fn found(room_events: &Value, event_id: &str) -> bool {
    room_events["results"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["result"]["event_id"] == event_id))
}

pub async fn run(ctx: &Ctx, args: &SearchArgs, report: &mut Report) -> Result<()> {
    if args.senders == 0 || args.rooms == 0 || args.rooms > args.senders || args.in_flight == 0 {
        bail!("need 1 <= --rooms <= --senders and --in-flight >= 1");
    }
    let senders = ctx.register_users("q", args.senders).await?;
    let mut rooms = Vec::new();
    for (r, creator) in senders.iter().take(args.rooms).enumerate() {
        rooms.push(
            ctx.api
                .create_room(&creator.access_token, &format!("bench search {r}"))
                .await?,
        );
    }
    let joins = senders
        .iter()
        .enumerate()
        .skip(args.rooms)
        .map(|(i, u)| (u.clone(), rooms[i % args.rooms].clone()))
        .collect();
    ctx.join_all(joins).await?;
    // The searcher: sender 0, joined to every room.
    let searcher = senders[0].clone();
    ctx.join_all(
        rooms
            .iter()
            .skip(1)
            .map(|r| (searcher.clone(), r.clone()))
            .collect(),
    )
    .await?;

    // The corpus, through /send.
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for (i, sender) in senders.iter().enumerate() {
        for k in 0..args.in_flight {
            let (api, token, room) = (
                ctx.api.clone(),
                sender.access_token.clone(),
                rooms[i % args.rooms].clone(),
            );
            let (issued, max, run_id) = (issued.clone(), args.messages, ctx.run_id.clone());
            workers.spawn(async move {
                let mut n = 0u64;
                loop {
                    let seq = issued.fetch_add(1, Ordering::Relaxed);
                    if seq >= max {
                        return Ok::<u64, anyhow::Error>(n);
                    }
                    let content = json!({"msgtype": "m.text", "body": body(seq)});
                    api.send_message(&token, &room, &format!("hs{run_id}-{k}-{n}"), &content)
                        .await?;
                    n += 1;
                }
            });
        }
    }
    let mut sent = 0;
    while let Some(done) = workers.join_next().await {
        sent += done??;
    }
    let corpus_s = start.elapsed().as_secs_f64();
    // Searchable: a marker sent last is found (Hearth's /search waits for its indexer).
    let marker = format!("marker{}", ctx.run_id);
    let marker_id = ctx
        .api
        .send_message(
            &searcher.access_token,
            &rooms[0],
            &format!("hm{}", ctx.run_id),
            &json!({"msgtype": "m.text", "body": marker}),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !found(
        &search(ctx, &searcher.access_token, &marker, "recent").await?,
        &marker_id,
    ) {
        if Instant::now() > deadline {
            bail!("the corpus did not become searchable within an hour");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let searchable_s = start.elapsed().as_secs_f64();
    report.push("corpus_messages", sent as f64, "msgs", Better::None);
    report.push(
        "corpus_send_rate",
        sent as f64 / corpus_s,
        "msg/s",
        Better::Higher,
    );
    report.push("corpus_searchable_after", searchable_s, "s", Better::Lower);

    // Queries: one or two vocabulary words, ranked and recent.
    for order in ["rank", "recent"] {
        let mut lat = Vec::with_capacity(args.queries);
        let mut hits = 0usize;
        for q in 0..args.queries as u64 {
            let term = if q % 2 == 0 {
                word(q * 7919 + 1)
            } else {
                format!("{} {}", word(q * 7919 + 2), word(q * 7919 + 3))
            };
            let t = Instant::now();
            let events = search(ctx, &searcher.access_token, &term, order).await?;
            lat.push(ms(t.elapsed()));
            hits += events["results"].as_array().map_or(0, Vec::len);
        }
        report.push_latency(&format!("query_{order}"), &lat);
        report.push(
            &format!("query_{order}_results"),
            hits as f64,
            "results",
            Better::None,
        );
    }

    // Lag: send a fresh word, search until found.
    let mut lag = Vec::with_capacity(args.lag_samples);
    for i in 0..args.lag_samples {
        let fresh = format!("fresh{}n{i}", ctx.run_id);
        let t = Instant::now();
        let id = ctx
            .api
            .send_message(
                &searcher.access_token,
                &rooms[i % rooms.len()],
                &format!("hl{}-{i}", ctx.run_id),
                &json!({"msgtype": "m.text", "body": fresh}),
            )
            .await?;
        while !found(&search(ctx, &searcher.access_token, &fresh, "recent").await?, &id) {
            if t.elapsed() > Duration::from_secs(60) {
                bail!("a fresh message was not searchable within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lag.push(ms(t.elapsed()));
    }
    report.push_latency("send_to_searchable", &lag);
    report.params["rooms_created"] = json!(rooms.len());
    Ok(())
}
