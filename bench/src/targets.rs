//! The project's performance targets (2-core machine, load generator included) checked against
//! saved results: for each, what was measured and whether it is met. A result measured below the
//! target's size is reported as "not measured", never as met.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::report::{self, Report};

#[derive(Args, Debug, Clone)]
pub struct TargetsArgs {
    /// The server's results from the comparison pass (idle.json, initial-sync.json, …).
    #[arg(long)]
    pub results: PathBuf,
    /// The server's results from the targets pass (send, deliver, connections at target sizes);
    /// scenarios missing there are taken from --results.
    #[arg(long)]
    pub targets: Option<PathBuf>,
    /// Synapse's results on the same backend, for the initial-sync ratio.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    #[arg(long, default_value = "targets")]
    pub title: String,
}

const SEND_MSG_S: f64 = 10_000.0;
const DELIVER_RATE: f64 = 1_000.0;
const DELIVER_RECEIVERS: f64 = 100.0;
const DELIVER_P95_MS: f64 = 50.0;
const CONNECTIONS: f64 = 50_000.0;
const CONNECTIONS_RSS_MIB: f64 = 2048.0;
const INITIAL_SYNC_ROOMS: f64 = 300.0;
const INITIAL_SYNC_SPEEDUP: f64 = 10.0;
const IDLE_RSS_MIB: f64 = 50.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Met,
    NotMet,
    /// No result, or one measured at less than the target's size.
    NotMeasured,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT MET",
            Status::NotMeasured => "not measured",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub target: &'static str,
    pub measured: String,
    pub status: Status,
}

type Reports = BTreeMap<String, Report>;

pub fn run(args: &TargetsArgs) -> Result<()> {
    let results = report::load_dir(&args.results)?;
    let mut at_size = match &args.targets {
        Some(dir) if dir.is_dir() => report::load_dir(dir)?,
        _ => Reports::new(),
    };
    for (scenario, r) in &results {
        at_size.entry(scenario.clone()).or_insert_with(|| r.clone());
    }
    let baseline = match &args.baseline {
        Some(dir) if dir.is_dir() => report::load_dir(dir)?,
        _ => Reports::new(),
    };
    print(&args.title, &evaluate(&at_size, &baseline));
    Ok(())
}

/// Every target, judged from `results` (scenario → report) and, for the initial-sync ratio,
/// `baseline` (Synapse's reports).
pub fn evaluate(results: &Reports, baseline: &Reports) -> Vec<Row> {
    vec![
        send(results.get("send")),
        deliver(results.get("deliver")),
        connections(results.get("connections")),
        initial_sync(results.get("initial-sync"), baseline.get("initial-sync")),
        idle(results.get("idle")),
    ]
}

fn param(r: &Report, name: &str) -> f64 {
    r.params[name].as_f64().unwrap_or(0.0)
}

fn metric(r: &Report, name: &str) -> f64 {
    r.metric(name).unwrap_or(f64::NAN)
}

fn missing(target: &'static str, scenario: &str) -> Row {
    Row {
        target,
        measured: format!("no {scenario} result"),
        status: Status::NotMeasured,
    }
}

fn judge(ok: bool) -> Status {
    if ok { Status::Met } else { Status::NotMet }
}

fn send(r: Option<&Report>) -> Row {
    const T: &str = "send >= 10,000 msg/s";
    let Some(r) = r else { return missing(T, "send") };
    let rate = metric(r, "throughput");
    let errors = metric(r, "send_errors");
    let mut measured = format!(
        "{rate:.0} msg/s ({} senders x {} in flight, {} rooms; server CPU {:.1} s, bench CPU {:.1} s)",
        param(r, "senders"),
        param(r, "in_flight"),
        param(r, "rooms"),
        metric(r, "server_cpu"),
        metric(r, "bench_client_cpu"),
    );
    if errors > 0.0 {
        measured.push_str(&format!(", {errors:.0} errors"));
    }
    Row {
        target: T,
        measured,
        status: judge(rate >= SEND_MSG_S && errors == 0.0),
    }
}

fn deliver(r: Option<&Report>) -> Row {
    const T: &str = "deliver P95 < 50 ms at 1,000 msg/s, 100 receivers";
    let Some(r) = r else { return missing(T, "deliver") };
    let (rate, receivers) = (param(r, "rate"), param(r, "receivers"));
    let p95 = metric(r, "delivery_latency_p95");
    let achieved = metric(r, "send_rate_achieved");
    let lost = metric(r, "missing_deliveries");
    let measured = format!(
        "P95 {p95:.1} ms, P50 {:.1} ms; {achieved:.0} of {rate:.0} msg/s sent, {receivers:.0} receivers, {lost:.0} deliveries missing",
        metric(r, "delivery_latency_p50"),
    );
    let status = if rate < DELIVER_RATE || receivers < DELIVER_RECEIVERS {
        Status::NotMeasured
    } else {
        // The rate must really have been offered (1 % slack for the last tick) and every
        // message delivered: a low P95 over a fraction of the load would not count.
        judge(p95 < DELIVER_P95_MS && achieved >= 0.99 * DELIVER_RATE && lost == 0.0)
    };
    Row {
        target: T,
        measured,
        status,
    }
}

fn connections(r: Option<&Report>) -> Row {
    const T: &str = "connections >= 50,000 held, RSS < 2 GiB";
    let Some(r) = r else {
        return missing(T, "connections");
    };
    // Held as the clients count them, but no more than the server has descriptors open.
    let mut held = metric(r, "long_polls_held");
    let fds = metric(r, "server_open_fds_holding");
    if fds.is_finite() {
        held = held.min(fds);
    }
    let rss = metric(r, "server_rss_holding");
    let mut measured = format!(
        "{held:.0} of {:.0} held, server RSS {rss:.0} MiB holding (peak {:.0} MiB)",
        param(r, "clients"),
        metric(r, "server_rss_peak"),
    );
    let status = if param(r, "clients") < CONNECTIONS {
        let per = metric(r, "server_rss_growth_per_client");
        if per.is_finite() {
            let at_target = metric(r, "server_rss_idle") + per * CONNECTIONS / 1024.0;
            measured.push_str(&format!(
                "; {per:.1} KiB per connection, so about {at_target:.0} MiB at 50,000 (extrapolated)"
            ));
        }
        if let Some(limit) = r.params["server_nofile_limit"].as_f64() {
            measured.push_str(&format!("; server open-file limit {limit:.0}"));
        }
        Status::NotMeasured
    } else {
        judge(held >= CONNECTIONS && rss < CONNECTIONS_RSS_MIB)
    };
    Row {
        target: T,
        measured,
        status,
    }
}

fn initial_sync(r: Option<&Report>, base: Option<&Report>) -> Row {
    const T: &str = "initial sync, 300 rooms, >= 10x faster than Synapse";
    let Some(r) = r else {
        return missing(T, "initial-sync");
    };
    let ours = metric(r, "initial_sync_median");
    let rooms = param(r, "rooms");
    let Some(base) = base else {
        return Row {
            target: T,
            measured: format!("{ours:.0} ms for {rooms:.0} rooms; no Synapse result to compare"),
            status: Status::NotMeasured,
        };
    };
    let theirs = metric(base, "initial_sync_median");
    let speedup = theirs / ours;
    let default_speedup =
        metric(base, "initial_sync_default_median") / metric(r, "initial_sync_default_median");
    let measured = format!(
        "{speedup:.1}x ({ours:.0} ms vs Synapse {theirs:.0} ms, lazy-loading filter, median; \
         server default filter {default_speedup:.1}x), {rooms:.0} rooms"
    );
    let status = if rooms < INITIAL_SYNC_ROOMS || param(base, "rooms") != rooms {
        Status::NotMeasured
    } else {
        judge(speedup >= INITIAL_SYNC_SPEEDUP)
    };
    Row {
        target: T,
        measured,
        status,
    }
}

fn idle(r: Option<&Report>) -> Row {
    const T: &str = "idle RSS < 50 MiB";
    let Some(r) = r else { return missing(T, "idle") };
    let rss = metric(r, "idle_rss_mib");
    Row {
        target: T,
        measured: format!(
            "{rss:.1} MiB, CPU {:.2} s over {:.0} s",
            metric(r, "idle_cpu_s"),
            metric(r, "idle_window"),
        ),
        status: judge(rss < IDLE_RSS_MIB),
    }
}

pub fn print(title: &str, rows: &[Row]) {
    println!();
    println!("== {title}");
    let w = rows.iter().map(|r| r.target.len()).max().unwrap_or(20);
    println!("   {:<w$}  {:<12}  measured", "target", "status");
    for r in rows {
        println!("   {:<w$}  {:<12}  {}", r.target, r.status.label(), r.measured);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::report::Better;

    fn report(scenario: &str, params: serde_json::Value, metrics: &[(&str, f64)]) -> Report {
        let mut r = Report::new(scenario, "x", "http://127.0.0.1:1", params);
        for (name, v) in metrics {
            r.push(name, *v, "", Better::None);
        }
        r
    }

    fn reports(list: Vec<Report>) -> Reports {
        list.into_iter().map(|r| (r.scenario.clone(), r)).collect()
    }

    #[test]
    fn judges_each_target_and_refuses_undersized_runs() {
        let ours = reports(vec![
            report(
                "send",
                json!({"senders": 16, "in_flight": 64, "rooms": 8}),
                &[("throughput", 12_000.0), ("send_errors", 0.0)],
            ),
            report(
                "deliver",
                json!({"rate": 1000.0, "receivers": 100}),
                &[
                    ("delivery_latency_p95", 60.0),
                    ("send_rate_achieved", 999.0),
                    ("missing_deliveries", 0.0),
                ],
            ),
            report(
                "connections",
                json!({"clients": 19_000, "server_nofile_limit": 20_000}),
                &[
                    ("long_polls_held", 19_000.0),
                    ("server_open_fds_holding", 19_050.0),
                    ("server_rss_holding", 200.0),
                    ("server_rss_idle", 10.0),
                    ("server_rss_growth_per_client", 10.24),
                ],
            ),
            report(
                "initial-sync",
                json!({"rooms": 300}),
                &[
                    ("initial_sync_median", 100.0),
                    ("initial_sync_default_median", 100.0),
                ],
            ),
            report("idle", json!({}), &[("idle_rss_mib", 12.0)]),
        ]);
        let synapse = reports(vec![report(
            "initial-sync",
            json!({"rooms": 300}),
            &[
                ("initial_sync_median", 900.0),
                ("initial_sync_default_median", 2000.0),
            ],
        )]);
        let rows = evaluate(&ours, &synapse);
        let status: Vec<_> = rows.iter().map(|r| r.status).collect();
        assert_eq!(
            status,
            [
                Status::Met,
                Status::NotMet,
                Status::NotMeasured,
                Status::NotMet,
                Status::Met
            ]
        );
        assert!(
            rows[2].measured.contains("about 510 MiB at 50,000"),
            "{}",
            rows[2].measured
        );
        assert!(rows[3].measured.starts_with("9.0x"), "{}", rows[3].measured);

        // Without results or at a smaller size nothing is claimed.
        let small = reports(vec![report(
            "deliver",
            json!({"rate": 20.0, "receivers": 8}),
            &[
                ("delivery_latency_p95", 5.0),
                ("send_rate_achieved", 20.0),
                ("missing_deliveries", 0.0),
            ],
        )]);
        let rows = evaluate(&small, &Reports::new());
        assert!(rows.iter().all(|r| r.status == Status::NotMeasured));
    }
}
