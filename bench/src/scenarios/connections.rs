//! `connections`: C idle clients each hold an open /sync long-poll. Measures how many the server
//! holds, its memory, file descriptors and CPU while holding them, and the latency of one message
//! to all of them (they share one room).
//!
//! A client is one TCP connection with its own /sync long-poll. With `--polls-per-user N`, N of
//! them share one user and access token (as a user with several open tabs or a client running
//! several sync loops would), so tens of thousands of connections need only C/N registrations,
//! each of which costs the server a password hash. Each user makes one initial /sync and all its
//! clients long-poll from there, each on its own connection: the server holds C connections and
//! C long-polls either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Ctx, Start, TOKEN_SYNC_FILTER, bounded, finish_process, stamped_content};
use crate::matrix::{self, Api, now_micros};
use crate::procstat;
use crate::report::{Better, Report, ms};
use crate::target;
use crate::ws::Transport;

#[derive(Args, Debug, Clone)]
pub struct ConnectionsArgs {
    /// Idle clients, each its own TCP connection with its own /sync long-poll.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Clients sharing one user (and access token); users registered = clients / this, rounded up.
    #[arg(long, default_value_t = 1)]
    pub polls_per_user: usize,
    /// How long to hold them all before sending, seconds (CPU and memory are measured over it).
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Loopback source addresses to spread connections over (127.0.0.1, .2, …); 0 = one per
    /// 20000 clients.
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Longest pause between the last client entering its long-poll and the start of the hold,
    /// seconds. With --pid the hold starts as soon as the server has been quiet (under 5 % of a
    /// core) for a second; without it the pause is this long, at most 5 s.
    #[arg(long, default_value_t = 60)]
    pub settle: u64,
    /// Initial /syncs in flight, and connections being opened, while bringing the clients up.
    #[arg(long, default_value_t = 32)]
    pub ramp_concurrency: usize,
    /// Long-poll timeout, milliseconds; must outlast the ramp and the hold.
    #[arg(long, default_value_t = 300_000)]
    pub poll_timeout_ms: u64,
    /// After the message is sent, how long to wait for it to reach every client, seconds.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// How clients wait: `/sync` long-polls, or one `org.hearth.ws` stream each.
    #[arg(long, value_enum, default_value_t = Transport::LongPoll)]
    pub transport: Transport,
}

/// How long a client's first long-poll keeps its ramp slot: ample for a loopback connect and
/// the request to be written.
const RAMP_GRACE: Duration = Duration::from_millis(20);

#[derive(Default)]
struct State {
    latencies_ms: Vec<f64>,
    first_error: Option<String>,
}

pub async fn run(ctx: &Ctx, args: &ConnectionsArgs, report: &mut Report) -> Result<()> {
    if args.clients == 0 || args.clients > 200_000 {
        bail!("--clients must be in 1..=200000");
    }
    if args.polls_per_user == 0 || args.polls_per_user > 10_000 {
        bail!("--polls-per-user must be in 1..=10000");
    }
    note_fd_limits(ctx, args.clients, report);
    let sources = if !target::is_ipv4_loopback(&ctx.api.url(&[])) {
        Vec::new()
    } else if args.sources == 0 {
        target::loopback_sources(args.clients.div_ceil(20_000))
    } else {
        target::loopback_sources(args.sources)
    };
    let timeout = Duration::from_millis(args.poll_timeout_ms) + ctx.request_timeout;
    let apis: Vec<Api> = if sources.is_empty() {
        vec![ctx.api.with_local_address(None, timeout)?]
    } else {
        sources
            .iter()
            .map(|ip| ctx.api.with_local_address(Some(*ip), timeout))
            .collect::<Result<_>>()?
    };
    report.params["source_addresses"] = serde_json::json!(apis.len());

    let sender = ctx.register_users("cs", 1).await?.remove(0);
    let users = ctx
        .register_users("c", args.clients.div_ceil(args.polls_per_user))
        .await?;
    report.params["users"] = serde_json::json!(users.len());
    let room = ctx
        .api
        .create_room(&sender.access_token, "bench connections")
        .await?;
    ctx.join_all(users.iter().map(|u| (u.clone(), room.clone())).collect())
        .await?;

    // The idle reading waits for the server to be quiet, and then for what it freed to be
    // returned: registering the users hashed their passwords (19 MiB of argon2 memory a hash),
    // and a server that hands freed memory back to the system a second later would otherwise
    // see it subtracted from what the connections cost.
    if let Some(pid) = ctx.pid {
        settle(pid, Duration::from_secs(args.settle)).await?;
        tokio::time::sleep(RETURN_FREED).await;
    }
    let monitor = ctx.monitor()?;
    let cpu0 = Start::now(ctx);
    let started = Arc::new(AtomicU64::new(0));
    let in_poll = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let early_returns = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let state = Arc::new(Mutex::new(State::default()));
    let ramp = Arc::new(Semaphore::new(args.ramp_concurrency.max(1)));
    let ramp_start = Instant::now();
    // One initial /sync per user: the `since` every one of its clients long-polls from.
    let first_since = {
        let (apis, users) = (apis.clone(), users.clone());
        bounded(users.len(), args.ramp_concurrency, move |u| {
            let api = apis[u % apis.len()].clone();
            let token = users[u].access_token.clone();
            async move {
                let resp = api.sync(&token, None, 0, Some(TOKEN_SYNC_FILTER)).await?;
                matrix::next_batch(&resp.body)
            }
        })
        .await?
    };
    let initial_syncs_time = ramp_start.elapsed();
    let mut tasks = JoinSet::new();
    for i in 0..args.clients {
        let u = &users[i / args.polls_per_user];
        let since = first_since[i / args.polls_per_user].clone();
        let api = apis[i % apis.len()].clone();
        let token = u.access_token.clone();
        let filter = ctx.sync_filter.clone();
        let run_id = ctx.run_id.clone();
        let ramp = ramp.clone();
        let (started, in_poll, failed, early, delivered, state) = (
            started.clone(),
            in_poll.clone(),
            failed.clone(),
            early_returns.clone(),
            delivered.clone(),
            state.clone(),
        );
        let poll_ms = args.poll_timeout_ms;
        let transport = args.transport;
        tasks.spawn(async move {
            let fail = |e: anyhow::Error| {
                failed.fetch_add(1, Ordering::Relaxed);
                state
                    .lock()
                    .expect("state")
                    .first_error
                    .get_or_insert(format!("{e:#}"));
            };
            let mut since = since;
            let mut permit = Some(ramp.acquire().await.expect("semaphore open"));
            if transport == Transport::Ws {
                // One stream per client, opened under a ramp slot; it stays open and silent
                // until the message comes.
                let opened = api.stream(&token, Some(&since), filter.as_deref()).await;
                drop(permit.take());
                started.fetch_add(1, Ordering::Relaxed);
                let mut stream = match opened {
                    Ok(stream) => stream,
                    Err(e) => return fail(e),
                };
                in_poll.fetch_add(1, Ordering::Relaxed);
                loop {
                    let digest = stream.next_digest(&run_id).await;
                    let now = now_micros();
                    let digest = match digest {
                        Ok(digest) => digest,
                        Err(e) => {
                            in_poll.fetch_sub(1, Ordering::Relaxed);
                            return fail(e);
                        }
                    };
                    if let Some(&(_, sent_at)) = digest.stamps.first() {
                        let latency = now.saturating_sub(sent_at) as f64 / 1000.0;
                        state.lock().expect("state").latencies_ms.push(latency);
                        delivered.fetch_add(1, Ordering::Relaxed);
                        // The stream stays open, as a client keeps it (and as a long-poll's
                        // connection stays in its client's pool): closing it here would put
                        // the server's teardown of each connection inside the fan-out being
                        // measured. The scenario aborts the task at its end.
                        while stream.next_digest(&run_id).await.is_ok() {}
                        return;
                    }
                    early.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Bounded: the poll timeout is long, and the scenario aborts these tasks at its end.
            for _ in 0..10_000 {
                in_poll.fetch_add(1, Ordering::Relaxed);
                let resp = {
                    let poll = api.sync_digest(&token, &since, poll_ms, filter.as_deref(), &run_id);
                    tokio::pin!(poll);
                    // The first poll holds a ramp slot only until its connection is surely open and
                    // the request sent (a long-poll never answers by itself), so that connections
                    // are opened `ramp_concurrency` at a time rather than all at once.
                    match permit.take() {
                        Some(p) => {
                            let quick = tokio::select! {
                                r = &mut poll => Some(r),
                                () = tokio::time::sleep(RAMP_GRACE) => None,
                            };
                            drop(p);
                            started.fetch_add(1, Ordering::Relaxed);
                            match quick {
                                Some(r) => r,
                                None => poll.await,
                            }
                        }
                        None => poll.await,
                    }
                };
                let now = now_micros();
                in_poll.fetch_sub(1, Ordering::Relaxed);
                let digest = match resp {
                    Ok(digest) => digest,
                    Err(e) => return fail(e),
                };
                if let Some(&(_, sent_at)) = digest.stamps.first() {
                    let latency = now.saturating_sub(sent_at) as f64 / 1000.0;
                    state.lock().expect("state").latencies_ms.push(latency);
                    delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                early.fetch_add(1, Ordering::Relaxed);
                since = digest.next_batch;
            }
        });
    }

    // Wait for every client to have sent its long-poll.
    let n = args.clients as u64;
    let ramp_deadline = ramp_start + Duration::from_secs(900);
    while started.load(Ordering::Relaxed) < n {
        if Instant::now() > ramp_deadline {
            bail!("clients did not all reach their long-poll within 900 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp_time = ramp_start.elapsed();
    let settle_start = Instant::now();
    match ctx.pid {
        Some(pid) => settle(pid, Duration::from_secs(args.settle)).await?,
        None => tokio::time::sleep(Duration::from_secs(args.settle.min(5))).await,
    }
    let settle_time = settle_start.elapsed();
    let hold_start = monitor.as_ref().map(|m| m.now()).transpose()?;
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let hold_end = monitor.as_ref().map(|m| m.now()).transpose()?;
    let held = in_poll.load(Ordering::Relaxed);
    let early_before_send = early_returns.load(Ordering::Relaxed);

    let t_send = Instant::now();
    let content = stamped_content(&ctx.run_id, 0, now_micros());
    ctx.api
        .send_message(&sender.access_token, &room, "hbc0", &content)
        .await?;
    let put_ms = ms(t_send.elapsed());
    let deadline = Instant::now() + Duration::from_secs(args.drain);
    while delivered.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fanout = monitor.as_ref().map(|m| m.now()).transpose()?;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}

    let st = std::mem::take(&mut *state.lock().expect("state"));
    let failed = failed.load(Ordering::Relaxed);
    report.push("clients", n as f64, "", Better::None);
    report.push("clients_failed", failed as f64, "", Better::Lower);
    report.push("long_polls_held", held as f64, "", Better::Higher);
    report.push(
        "early_returns_before_send",
        early_before_send as f64,
        "",
        Better::None,
    );
    report.push(
        "ramp_initial_syncs_time",
        initial_syncs_time.as_secs_f64(),
        "s",
        Better::Lower,
    );
    report.push("ramp_time", ramp_time.as_secs_f64(), "s", Better::Lower);
    report.push("settle_time", settle_time.as_secs_f64(), "s", Better::Lower);
    report.push("send_put_latency", put_ms, "ms", Better::Lower);
    report.push("delivered", st.latencies_ms.len() as f64, "", Better::Higher);
    report.push(
        "missing",
        n.saturating_sub(st.latencies_ms.len() as u64) as f64,
        "",
        Better::Lower,
    );
    report.push_latency("fanout_latency", &st.latencies_ms);
    if let Some(e) = st.first_error {
        report.note(format!("first client error: {e}"));
    }
    if let (Some(m), Some(hs), Some(he), Some(fo)) = (&monitor, hold_start, hold_end, fanout) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let base = m.before;
        report.push("server_rss_idle", mib(base.rss_kib), "MiB", Better::None);
        report.push("server_rss_holding", mib(he.rss_kib), "MiB", Better::Lower);
        if held > 0 && he.rss_kib > base.rss_kib {
            let per = (he.rss_kib - base.rss_kib) as f64 / held as f64;
            report.push("server_rss_growth_per_client", per, "KiB", Better::Lower);
        } else if held > 0 {
            report.note(format!(
                "server RSS fell from {} to {} MiB while the clients connected (the allocator \
                 returned memory), so the per-client cost is not measurable here",
                base.rss_kib / 1024,
                he.rss_kib / 1024
            ));
        }
        report.push("server_open_fds_holding", he.open_fds as f64, "", Better::None);
        // Initial syncs, long-polls starting, and whatever work they trigger until quiet.
        report.push("server_cpu_ramp", hs.cpu_s - base.cpu_s, "s", Better::Lower);
        report.push(
            "server_cpu_while_holding",
            he.cpu_s - hs.cpu_s,
            "s",
            Better::Lower,
        );
        report.push("server_cpu_fanout", fo.cpu_s - he.cpu_s, "s", Better::Lower);
    }
    finish_process(report, ctx, monitor, "server", &cpu0)?;
    Ok(())
}

/// Records the open-file limits of the server and of the benchmark, and says so when one of them
/// is below the number of clients (every held connection is a socket on both sides).
fn note_fd_limits(ctx: &Ctx, clients: usize, report: &mut Report) {
    let server = ctx.pid.and_then(|pid| procstat::nofile_limit(Some(pid)));
    let bench = procstat::nofile_limit(None);
    report.params["server_nofile_limit"] = serde_json::json!(server);
    report.params["bench_nofile_limit"] = serde_json::json!(bench);
    for (who, limit) in [("server", server), ("benchmark", bench)] {
        if let Some(limit) = limit.filter(|&l| l < clients as u64 + 16) {
            report.note(format!(
                "the {who}'s open-file limit ({limit}) is below --clients {clients} plus a few \
                 descriptors of its own: not every client can be held"
            ));
        }
    }
}

/// How long a server may take to hand back memory it has freed (Hearth: about two seconds).
const RETURN_FREED: Duration = Duration::from_secs(3);

/// Waits until the server process has used under 5 % of a core for a second, at most `limit`.
async fn settle(pid: u32, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = procstat::sample(Some(pid))?.cpu_s;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu = procstat::sample(Some(pid))?.cpu_s;
        if cpu - last < 0.05 {
            break;
        }
        last = cpu;
    }
    Ok(())
}
