//! Results: named metrics, latency summaries, the human table, the JSON file, and the
//! side-by-side comparison of two sets of results.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::procstat::Sample;

/// Which direction of a metric is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// Informational (counts, sizes that are not a goal in themselves).
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
}

/// The outcome of one scenario run against one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub server_url: String,
    pub server_versions: Value,
    pub started_at_unix_s: u64,
    pub params: Value,
    pub metrics: Vec<Metric>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, label: &str, server_url: &str, params: Value) -> Report {
        Report {
            scenario: scenario.to_owned(),
            label: label.to_owned(),
            server_url: server_url.to_owned(),
            server_versions: Value::Null,
            started_at_unix_s: crate::matrix::now_micros() / 1_000_000,
            params,
            metrics: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn push(&mut self, name: &str, value: f64, unit: &str, better: Better) {
        self.metrics.push(Metric {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            better,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        tracing::warn!("{note}");
        self.notes.push(note);
    }

    /// `{prefix}_p50_ms`, `_p95_ms`, `_p99_ms`, `_max_ms` (lower is better) and the sample
    /// count, from latencies in milliseconds.
    pub fn push_latency(&mut self, prefix: &str, latencies_ms: &[f64]) {
        match Summary::of(latencies_ms) {
            Some(s) => {
                self.push(&format!("{prefix}_p50"), s.p50, "ms", Better::Lower);
                self.push(&format!("{prefix}_p95"), s.p95, "ms", Better::Lower);
                self.push(&format!("{prefix}_p99"), s.p99, "ms", Better::Lower);
                self.push(&format!("{prefix}_max"), s.max, "ms", Better::Lower);
                self.push(&format!("{prefix}_mean"), s.mean, "ms", Better::Lower);
            }
            None => self.note(format!("{prefix}: no samples")),
        }
    }

    /// Server memory and CPU between two readings: RSS before/after/peak and CPU seconds.
    pub fn push_process(&mut self, prefix: &str, before: &Sample, after: &Sample, peak_kib: u64) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        self.push(
            &format!("{prefix}_rss_before"),
            mib(before.rss_kib),
            "MiB",
            Better::None,
        );
        self.push(
            &format!("{prefix}_rss_after"),
            mib(after.rss_kib),
            "MiB",
            Better::Lower,
        );
        self.push(
            &format!("{prefix}_rss_peak"),
            mib(peak_kib.max(after.rss_kib)),
            "MiB",
            Better::Lower,
        );
        self.push(
            &format!("{prefix}_vmhwm"),
            mib(after.hwm_kib),
            "MiB",
            Better::Lower,
        );
        self.push(
            &format!("{prefix}_cpu"),
            after.cpu_s - before.cpu_s,
            "s",
            Better::Lower,
        );
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.name == name).map(|m| m.value)
    }

    /// The human table on stdout.
    pub fn print(&self) {
        println!();
        println!(
            "== {} [{}] against {}",
            self.scenario, self.label, self.server_url
        );
        println!("   params: {}", self.params);
        let width = self.metrics.iter().map(|m| m.name.len()).max().unwrap_or(10);
        for m in &self.metrics {
            println!("   {:<width$}  {:>14}  {}", m.name, fmt_value(m.value), m.unit);
        }
        for n in &self.notes {
            println!("   note: {n}");
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Nearest-rank percentiles of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let idx = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[idx.clamp(1, v.len()) - 1]
        };
        Some(Summary {
            count: v.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Loads every `*.json` report in a directory, keyed by scenario.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Report>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let report: Report = serde_json::from_slice(&std::fs::read(&path)?)
                .with_context(|| format!("parsing {}", path.display()))?;
            out.insert(report.scenario.clone(), report);
        }
    }
    Ok(out)
}

/// One row of a comparison: candidate / baseline for a metric both runs have.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub candidate: f64,
    pub baseline: f64,
    pub ratio: Option<f64>,
    pub better: Better,
    /// Whether the candidate is better (None for informational metrics or equal values).
    pub candidate_better: Option<bool>,
}

pub fn compare(candidate: &BTreeMap<String, Report>, baseline: &BTreeMap<String, Report>) -> Vec<Ratio> {
    let mut rows = Vec::new();
    for (scenario, cand) in candidate {
        let Some(base) = baseline.get(scenario) else {
            continue;
        };
        for m in &cand.metrics {
            let Some(b) = base.metric(&m.name) else {
                continue;
            };
            let ratio = (b != 0.0).then(|| m.value / b);
            let candidate_better = match m.better {
                _ if m.value == b => None,
                Better::Higher => Some(m.value > b),
                Better::Lower => Some(m.value < b),
                Better::None => None,
            };
            rows.push(Ratio {
                scenario: scenario.clone(),
                metric: m.name.clone(),
                unit: m.unit.clone(),
                candidate: m.value,
                baseline: b,
                ratio,
                better: m.better,
                candidate_better,
            });
        }
    }
    rows
}

pub fn print_comparison(title: &str, cand_label: &str, base_label: &str, rows: &[Ratio]) {
    println!();
    println!("== {title}: ratio = {cand_label} / {base_label}");
    let w = rows
        .iter()
        .map(|r| r.scenario.len() + r.metric.len() + 1)
        .max()
        .unwrap_or(20);
    println!(
        "   {:<w$}  {:>12}  {:>12}  {:>9}  {:<5} better",
        "scenario.metric", cand_label, base_label, "ratio", "unit"
    );
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
        let better = match r.candidate_better {
            Some(true) => cand_label,
            Some(false) => base_label,
            None => "",
        };
        println!(
            "   {:<w$}  {:>12}  {:>12}  {:>9}  {:<5} {}",
            format!("{}.{}", r.scenario, r.metric),
            fmt_value(r.candidate),
            fmt_value(r.baseline),
            ratio,
            r.unit,
            better
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.p50, s.p95, s.p99, s.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(s.mean, 50.5);
        let one = Summary::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn comparison_direction() {
        let mut cand = Report::new("send", "hearth", "http://127.0.0.1:1", Value::Null);
        cand.push("rate", 200.0, "msg/s", Better::Higher);
        cand.push("lat", 5.0, "ms", Better::Lower);
        cand.push("count", 10.0, "", Better::None);
        cand.push("only_here", 1.0, "", Better::None);
        let mut base = Report::new("send", "synapse", "http://127.0.0.1:2", Value::Null);
        base.push("rate", 50.0, "msg/s", Better::Higher);
        base.push("lat", 2.0, "ms", Better::Lower);
        base.push("count", 10.0, "", Better::None);
        let c = BTreeMap::from([("send".to_string(), cand)]);
        let b = BTreeMap::from([("send".to_string(), base)]);
        let rows = compare(&c, &b);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].ratio, Some(4.0));
        assert_eq!(rows[0].candidate_better, Some(true));
        assert_eq!(rows[1].ratio, Some(2.5));
        assert_eq!(rows[1].candidate_better, Some(false));
        assert_eq!(rows[2].candidate_better, None);
    }
}
