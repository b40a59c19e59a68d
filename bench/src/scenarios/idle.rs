//! `idle`: the server with no load at all. Waits for it to settle after start-up, then samples
//! its resident memory and CPU time over a short window in which the benchmark sends nothing.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;

use super::Ctx;
use crate::procstat::{self, Sample};
use crate::report::{Better, Report};

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Pause before measuring, seconds (start-up work such as migrations and caches finishing).
    #[arg(long, default_value_t = 3)]
    pub settle: u64,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 5)]
    pub window: u64,
}

/// Interval between readings inside the window.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

pub async fn run(ctx: &Ctx, args: &IdleArgs, report: &mut Report) -> Result<()> {
    let Some(pid) = ctx.pid else {
        bail!("idle needs --pid (it only measures the server process)");
    };
    if args.window == 0 || args.settle > 600 || args.window > 600 {
        bail!("--window must be in 1..=600 and --settle at most 600");
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    let first = procstat::sample(Some(pid))?;
    let end = Instant::now() + Duration::from_secs(args.window);
    let mut readings = vec![first];
    let t0 = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(SAMPLE_EVERY).await;
        readings.push(procstat::sample(Some(pid))?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let last = *readings.last().expect("at least one reading");
    let summary = IdleSummary::of(&readings, elapsed);

    report.push("idle_rss_mib", summary.rss_mib, "MiB", Better::Lower);
    report.push("idle_rss_max_mib", summary.rss_max_mib, "MiB", Better::Lower);
    report.push(
        "idle_vmhwm_mib",
        last.hwm_kib as f64 / 1024.0,
        "MiB",
        Better::None,
    );
    report.push("idle_cpu_s", summary.cpu_s, "s", Better::Lower);
    report.push("idle_cpu_percent", summary.cpu_percent, "%", Better::Lower);
    report.push("idle_open_fds", last.open_fds as f64, "", Better::None);
    report.push("idle_window", elapsed, "s", Better::None);
    Ok(())
}

/// What the readings of an idle window add up to.
#[derive(Debug, PartialEq)]
struct IdleSummary {
    /// RSS at the end of the window.
    rss_mib: f64,
    rss_max_mib: f64,
    /// CPU seconds used over the window.
    cpu_s: f64,
    /// The same as a share of one core.
    cpu_percent: f64,
}

impl IdleSummary {
    fn of(readings: &[Sample], elapsed_s: f64) -> IdleSummary {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let (first, last) = (readings[0], readings[readings.len() - 1]);
        let cpu_s = (last.cpu_s - first.cpu_s).max(0.0);
        IdleSummary {
            rss_mib: mib(last.rss_kib),
            rss_max_mib: mib(readings.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
            cpu_s,
            cpu_percent: if elapsed_s > 0.0 {
                cpu_s * 100.0 / elapsed_s
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_a_window() {
        let s = |rss_kib, cpu_s| Sample {
            rss_kib,
            hwm_kib: 0,
            cpu_s,
            open_fds: 0,
        };
        let got = IdleSummary::of(&[s(10240, 1.0), s(20480, 1.1), s(15360, 1.5)], 5.0);
        assert_eq!(got.rss_mib, 15.0);
        assert_eq!(got.rss_max_mib, 20.0);
        assert!((got.cpu_s - 0.5).abs() < 1e-9);
        assert!((got.cpu_percent - 10.0).abs() < 1e-9);
    }
}
