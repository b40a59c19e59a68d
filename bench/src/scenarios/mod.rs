//! The load scenarios and what they share: users, rooms, bounded concurrency, message stamps.

pub mod connections;
pub mod deliver;
pub mod encrypted;
pub mod idle;
pub mod initial_sync;
pub mod reaction;
pub mod search;
pub mod send;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::matrix::{Api, User};
use crate::procstat::{self, Monitor, Sample};
use crate::report::Report;

/// Everything a scenario needs to reach the server and name its users.
#[derive(Clone)]
pub struct Ctx {
    pub api: Api,
    /// Unique per invocation, so repeated runs against one server never collide.
    pub run_id: String,
    pub password: String,
    pub registration_token: Option<String>,
    /// Requests in flight while registering users, joining rooms and seeding messages.
    pub setup_concurrency: usize,
    pub pid: Option<u32>,
    /// PostgreSQL database of the server, to add its backends' CPU time.
    pub db_name: Option<String>,
    /// Inline JSON filter for /sync, or None to use the server's default.
    pub sync_filter: Option<String>,
    pub request_timeout: Duration,
    /// Setup requests (registration, joins, seeding) that failed and were retried.
    pub setup_retries: Arc<AtomicU64>,
    pub setup_first_error: Arc<Mutex<Option<String>>>,
}

/// Attempts of one setup request before the scenario gives up.
const SETUP_ATTEMPTS: u32 = 5;

/// The filter benchmark receivers use: room timelines only, members lazily loaded, a timeline
/// limit big enough that a burst of messages between two polls is never truncated.
pub const DEFAULT_SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":200},"state":{"lazy_load_members":true}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}"#;

/// Filter of an initial /sync made only to get a `since` token to long-poll from (not
/// measured): one timeline event, members lazily. With the receivers' filter every such sync
/// would carry each room's whole recent timeline (all its join events), and bringing up many
/// clients would measure that instead.
pub const TOKEN_SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}"#;

impl Ctx {
    /// Runs a setup step, retrying it (after a short pause) when it fails: setup is not what is
    /// measured, but every retry is counted and reported.
    pub async fn setup_step<T, F, Fut>(&self, mut step: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match step().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < SETUP_ATTEMPTS => {
                    self.setup_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("setup request failed (attempt {attempt}), retrying: {e:#}");
                    self.setup_first_error
                        .lock()
                        .expect("error lock")
                        .get_or_insert_with(|| format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn username(&self, tag: &str, i: usize) -> String {
        format!("hb{}{}{}", self.run_id, tag, i)
    }

    /// Registers `n` users `hb{run}{tag}{i}`.
    pub async fn register_users(&self, tag: &str, n: usize) -> Result<Vec<User>> {
        let start = Instant::now();
        let ctx = self.clone();
        let tag = tag.to_owned();
        let users = bounded(n, self.setup_concurrency, move |i| {
            let ctx = ctx.clone();
            let name = ctx.username(&tag, i);
            async move {
                ctx.setup_step(|| {
                    ctx.api
                        .register(&name, &ctx.password, ctx.registration_token.as_deref())
                })
                .await
            }
        })
        .await?;
        tracing::info!(n, elapsed = ?start.elapsed(), "registered users");
        Ok(users)
    }

    /// Makes each (user, room) pair join, `setup_concurrency` at a time.
    pub async fn join_all(&self, pairs: Vec<(User, String)>) -> Result<()> {
        let start = Instant::now();
        let n = pairs.len();
        let pairs = Arc::new(pairs);
        let ctx = self.clone();
        bounded(n, self.setup_concurrency, move |i| {
            let ctx = ctx.clone();
            let pairs = pairs.clone();
            async move {
                let (user, room) = &pairs[i];
                ctx.setup_step(|| ctx.api.join(&user.access_token, room)).await
            }
        })
        .await?;
        tracing::info!(n, elapsed = ?start.elapsed(), "joins done");
        Ok(())
    }

    pub fn monitor(&self) -> Result<Option<Monitor>> {
        self.pid
            .map(|pid| Monitor::start(pid, Duration::from_millis(200)))
            .transpose()
    }
}

/// Runs `f(0..n)` with at most `concurrency` at once; results in index order. Stops at the
/// first error.
pub async fn bounded<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut store = |done: Result<(usize, Result<T>), tokio::task::JoinError>| -> Result<()> {
        let (i, out) = done?;
        results[i] = Some(out.map_err(|e| anyhow!("item {i}: {e:#}"))?);
        Ok(())
    };
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let fut = f(i);
        set.spawn(async move {
            let out = fut.await;
            drop(permit);
            (i, out)
        });
        // Surface failures early instead of after spawning everything.
        while let Some(done) = set.try_join_next() {
            store(done)?;
        }
    }
    while let Some(done) = set.join_next().await {
        store(done)?;
    }
    Ok(results.into_iter().map(|r| r.expect("every index ran")).collect())
}

/// Content of a benchmark message: a visible body plus a stamp the receivers read back.
pub fn stamped_content(run_id: &str, seq: u64, sent_at_us: u64) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("hearth-bench {run_id} #{seq}"),
        "hearth_bench": {"run": run_id, "seq": seq, "sent_at_us": sent_at_us},
    })
}

/// (seq, sent_at_us) of a benchmark message of this run, if the event is one.
pub fn read_stamp(event: &Value, run_id: &str) -> Option<(u64, u64)> {
    let stamp = &event["content"]["hearth_bench"];
    if stamp["run"].as_str()? != run_id {
        return None;
    }
    Some((stamp["seq"].as_u64()?, stamp["sent_at_us"].as_u64()?))
}

/// CPU seconds the benchmark itself used (to show whether the client, not the server, was the
/// limit on this shared machine).
pub fn self_cpu() -> f64 {
    procstat::sample(None).map(|s| s.cpu_s).unwrap_or(0.0)
}

/// Adds server process metrics (when a PID was given), the server's PostgreSQL backends' CPU
/// (when a database name was given) and the benchmark's own CPU.
pub fn finish_process(
    report: &mut Report,
    ctx: &Ctx,
    monitor: Option<Monitor>,
    prefix: &str,
    start: &Start,
) -> Result<Option<Sample>> {
    report.push(
        "bench_client_cpu",
        self_cpu() - start.self_cpu,
        "s",
        crate::report::Better::None,
    );
    if let (Some(db), Some(before)) = (&ctx.db_name, start.db_cpu) {
        let db_cpu = procstat::postgres_db_cpu(db) - before;
        report.push(
            &format!("{prefix}_db_cpu"),
            db_cpu,
            "s",
            crate::report::Better::Lower,
        );
    }
    let Some(m) = monitor else {
        return Ok(None);
    };
    let before = m.before;
    let peak = m.peak_rss_kib();
    let after = m.finish()?;
    report.push_process(prefix, &before, &after, peak);
    Ok(Some(after))
}

/// CPU readings at the start of a measured phase.
pub struct Start {
    self_cpu: f64,
    db_cpu: Option<f64>,
}

impl Start {
    pub fn now(ctx: &Ctx) -> Start {
        Start {
            self_cpu: self_cpu(),
            db_cpu: ctx.db_name.as_deref().map(procstat::postgres_db_cpu),
        }
    }

    /// CPU of the server's database backends since the start, when measured.
    pub fn db_cpu_since(&self, ctx: &Ctx) -> Option<f64> {
        Some(procstat::postgres_db_cpu(ctx.db_name.as_deref()?) - self.db_cpu?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_ignore_other_runs() {
        let content = stamped_content("abc", 7, 1234);
        let event = json!({"type": "m.room.message", "content": content});
        assert_eq!(read_stamp(&event, "abc"), Some((7, 1234)));
        assert_eq!(read_stamp(&event, "xyz"), None);
        assert_eq!(read_stamp(&json!({"content": {"body": "hi"}}), "abc"), None);
    }

    #[tokio::test]
    async fn bounded_keeps_order_limits_concurrency_and_fails() {
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (l, p) = (live.clone(), peak.clone());
        let out = bounded(20, 3, move |i| {
            let (l, p) = (l.clone(), p.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                let now = l.fetch_add(1, SeqCst) + 1;
                p.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                l.fetch_sub(1, SeqCst);
                Ok(i * 2)
            }
        })
        .await
        .unwrap();
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);

        let err = bounded(5, 2, |i| async move {
            if i == 3 { Err(anyhow!("boom")) } else { Ok(i) }
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("boom"));
    }
}
