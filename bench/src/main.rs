//! hearth-bench: load scenarios for any Matrix homeserver on loopback, through the public
//! Client-Server API only, so Hearth and Synapse can be measured side by side.

mod digest;
mod matrix;
mod procstat;
mod report;
mod scenarios;
mod target;
mod targets;
mod ws;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::report::Report;
use crate::scenarios::{Ctx, DEFAULT_SYNC_FILTER};

#[derive(Parser, Debug)]
#[command(name = "hearth-bench", version, about)]
struct Cli {
    /// Homeserver base URL; must be plain HTTP on loopback.
    #[arg(
        long,
        global = true,
        env = "HEARTH_BENCH_URL",
        default_value = "http://127.0.0.1:8008"
    )]
    url: String,
    /// Server process to sample (VmRSS/VmHWM and utime+stime from /proc/PID).
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// The server's PostgreSQL database: also measure the CPU of its backends
    /// (processes `postgres: USER DB …`).
    #[arg(long, global = true)]
    db_name: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Name of the server/configuration in the output (e.g. hearth-sqlite).
    #[arg(long, global = true, default_value = "server")]
    label: String,
    /// Password of every benchmark user.
    #[arg(long, global = true, default_value = "hearth-bench-password")]
    password: String,
    /// Registration token, for servers that require m.login.registration_token.
    #[arg(long, global = true, env = "HEARTH_BENCH_REGISTRATION_TOKEN")]
    registration_token: Option<String>,
    /// Requests in flight during setup (registration, joins, seeding).
    #[arg(long, global = true, default_value_t = 8)]
    setup_concurrency: usize,
    /// Use the server's default /sync filter instead of the benchmark's inline filter.
    #[arg(long, global = true)]
    no_sync_filter: bool,
    /// `set_presence` for every /sync (online, offline, unavailable); default: not sent.
    #[arg(long, global = true)]
    sync_set_presence: Option<String>,
    /// Hard limit on the whole run, seconds.
    #[arg(long, global = true, default_value_t = 900)]
    max_time: u64,
    /// Timeout of each ordinary request, seconds.
    #[arg(long, global = true, default_value_t = 60)]
    request_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The server with no load: resident memory and CPU over a quiet window (needs --pid).
    Idle(scenarios::idle::IdleArgs),
    /// Message send throughput and PUT latency.
    Send(scenarios::send::SendArgs),
    /// Send→/sync delivery latency at a fixed send rate.
    Deliver(scenarios::deliver::DeliverArgs),
    /// Many idle /sync long-polls: how many are held, their cost, and fan-out latency.
    Connections(scenarios::connections::ConnectionsArgs),
    /// Initial and incremental /sync time for a user in many rooms.
    InitialSync(scenarios::initial_sync::InitialSyncArgs),
    /// An end-to-end encrypted room: Megolm send→delivery latency, with the client's
    /// encryption/decryption cost reported apart.
    Encrypted(scenarios::encrypted::EncryptedArgs),
    /// Reaction (m.annotation) send→arrival latency in other members' /sync long-polls.
    Reaction(scenarios::reaction::ReactionArgs),
    /// Server-side search: a corpus sent through /send, then ranked and recent query latency
    /// and send→searchable lag.
    Search(scenarios::search::SearchArgs),
    /// Compare two directories of JSON results (candidate / baseline ratios).
    Compare {
        #[arg(long)]
        candidate: PathBuf,
        #[arg(long)]
        baseline: PathBuf,
        #[arg(long, default_value = "hearth")]
        candidate_label: String,
        #[arg(long, default_value = "synapse")]
        baseline_label: String,
        #[arg(long, default_value = "comparison")]
        title: String,
        /// Also list informational metrics (counts, sizes) that have no better direction.
        #[arg(long)]
        all: bool,
    },
    /// The project's performance targets against a directory of results: target, measured,
    /// met or not.
    Targets(targets::TargetsArgs),
}

/// Raises the soft open-file limit to the hard limit (each held long-poll is a socket).
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim = wanted;
            }
        }
    }
    lim.rlim_cur
}

/// The server's allocator (see homeserver/src/main.rs): under `deliver` the receivers allocate
/// for every response they read, and glibc's malloc was a fifth of this process's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hearth_bench=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();

    if let Command::Compare {
        candidate,
        baseline,
        candidate_label,
        baseline_label,
        title,
        all,
    } = &cli.command
    {
        let mut rows = report::compare(&report::load_dir(candidate)?, &report::load_dir(baseline)?);
        if !all {
            rows.retain(|r| r.better != report::Better::None);
        }
        if rows.is_empty() {
            bail!(
                "no scenario/metric present in both {} and {}",
                candidate.display(),
                baseline.display()
            );
        }
        report::print_comparison(title, candidate_label, baseline_label, &rows);
        return Ok(());
    }

    if let Command::Targets(a) = &cli.command {
        return targets::run(a);
    }

    let base = target::parse_loopback_url(&cli.url)?;
    let nofile = raise_nofile_limit();
    tracing::debug!(nofile, "open-file limit");
    let request_timeout = Duration::from_secs(cli.request_timeout);
    let mut api = matrix::Api::new(base.clone(), None, request_timeout)?;
    api.sync_set_presence = cli.sync_set_presence.clone();
    let versions = api
        .versions()
        .await
        .with_context(|| format!("homeserver at {base} does not answer /_matrix/client/versions"))?;
    let run_id = format!(
        "{:08x}",
        (matrix::now_micros() as u32) ^ std::process::id().rotate_left(16)
    );
    let ctx = Ctx {
        api,
        run_id,
        password: cli.password.clone(),
        registration_token: cli.registration_token.clone(),
        setup_concurrency: cli.setup_concurrency,
        pid: cli.pid,
        db_name: cli.db_name.clone(),
        sync_filter: (!cli.no_sync_filter).then(|| DEFAULT_SYNC_FILTER.to_owned()),
        request_timeout,
        setup_retries: Default::default(),
        setup_first_error: Default::default(),
    };
    if let Some(pid) = cli.pid {
        procstat::sample(Some(pid)).with_context(|| format!("cannot read /proc/{pid}"))?;
    }

    let (name, params) = match &cli.command {
        Command::Idle(a) => ("idle", json!({"settle_s": a.settle, "window_s": a.window})),
        Command::Send(a) => (
            "send",
            json!({"senders": a.senders, "rooms": a.rooms, "in_flight": a.in_flight, "duration_s": a.duration, "max_messages": a.max_messages}),
        ),
        Command::Deliver(a) => (
            "deliver",
            json!({"senders": a.senders, "receivers": a.receivers, "rooms": a.rooms, "rate": a.rate, "duration_s": a.duration, "transport": a.transport.name()}),
        ),
        Command::Connections(a) => (
            "connections",
            json!({"clients": a.clients, "polls_per_user": a.polls_per_user, "hold_s": a.hold, "transport": a.transport.name()}),
        ),
        Command::InitialSync(a) => (
            "initial-sync",
            json!({"rooms": a.rooms, "members": a.members, "messages": a.messages, "repeat": a.repeat}),
        ),
        Command::Encrypted(a) => (
            "encrypted",
            json!({"senders": a.senders, "receivers": a.receivers, "rate": a.rate, "duration_s": a.duration}),
        ),
        Command::Reaction(a) => (
            "reaction",
            json!({"receivers": a.receivers, "rate": a.rate, "duration_s": a.duration}),
        ),
        Command::Search(a) => (
            "search",
            json!({"messages": a.messages, "senders": a.senders, "rooms": a.rooms, "queries": a.queries, "lag_samples": a.lag_samples}),
        ),
        Command::Compare { .. } | Command::Targets(_) => unreachable!("handled above"),
    };
    let mut report = Report::new(name, &cli.label, base.as_str(), params);
    report.server_versions = versions;
    report.params["run_id"] = json!(ctx.run_id);
    report.params["sync_filter"] = json!(ctx.sync_filter.is_some());
    if let Some(p) = &cli.sync_set_presence {
        report.params["sync_set_presence"] = json!(p);
    }
    tracing::info!(scenario = name, url = %base, run = %ctx.run_id, "starting");

    let work = async {
        match &cli.command {
            Command::Idle(a) => scenarios::idle::run(&ctx, a, &mut report).await,
            Command::Send(a) => scenarios::send::run(&ctx, a, &mut report).await,
            Command::Deliver(a) => scenarios::deliver::run(&ctx, a, &mut report).await,
            Command::Connections(a) => scenarios::connections::run(&ctx, a, &mut report).await,
            Command::InitialSync(a) => scenarios::initial_sync::run(&ctx, a, &mut report).await,
            Command::Encrypted(a) => scenarios::encrypted::run(&ctx, a, &mut report).await,
            Command::Reaction(a) => scenarios::reaction::run(&ctx, a, &mut report).await,
            Command::Search(a) => scenarios::search::run(&ctx, a, &mut report).await,
            Command::Compare { .. } | Command::Targets(_) => unreachable!("handled above"),
        }
    };
    tokio::time::timeout(Duration::from_secs(cli.max_time), work)
        .await
        .map_err(|_| anyhow::anyhow!("scenario {name} exceeded --max-time {} s", cli.max_time))??;

    let retries = ctx.setup_retries.load(std::sync::atomic::Ordering::Relaxed);
    report.push("setup_retries", retries as f64, "reqs", report::Better::Lower);
    if let Some(e) = ctx.setup_first_error.lock().expect("error lock").take() {
        report.note(format!("{retries} setup request(s) retried; first failure: {e}"));
    }

    report.push(
        "requests_total",
        ctx.api
            .counters
            .requests
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
        "reqs",
        report::Better::None,
    );
    report.print();
    if let Some(path) = &cli.json {
        report.write_json(path)?;
    }
    Ok(())
}
