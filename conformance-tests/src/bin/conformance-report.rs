//! Run the conformance suite and summarise it per spec module.
//!
//! ```text
//! cargo run -p conformance-tests --bin conformance-report -- [--server NAME] [--log FILE]
//!     [--threads N] [--write-known-gaps] [-- EXTRA LIBTEST ARGS]
//! ```
//!
//! Runs `cargo test -p conformance-tests --test suite` (against `HS_URL` when set, else against a
//! Hearth spawned per test), parses libtest's `test <name> ... ok|FAILED|ignored` lines, prints a
//! per-module table and writes `target/conformance-summary-<server>.json`. With `--log FILE` it
//! parses an existing libtest log instead of running anything. Tests skipped as known gaps
//! (Hearth only, `known-gaps.txt`) are counted as skipped, and so are tests the harness skipped
//! because the target lacks what they need (it names them in `$CONFORMANCE_SKIP_LOG`, which this
//! sets: e.g. federation tests without `HS_FEDERATION_URL`). `--write-known-gaps` runs every test
//! (known gaps included) and rewrites `known-gaps.txt` with the tests that failed.
//! Exit status: 0 when no test failed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use conformance_tests::harness::{ServerKind, detect_kind, known_gaps};
use serde_json::json;

#[derive(Default, Clone, Copy)]
struct Counts {
    passed: usize,
    failed: usize,
    skipped: usize,
}

struct Args {
    server: Option<String>,
    log: Option<PathBuf>,
    threads: usize,
    write_known_gaps: bool,
    extra: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        server: None,
        log: None,
        threads: std::env::var("CONFORMANCE_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4),
        write_known_gaps: false,
        extra: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--server" => args.server = it.next(),
            "--log" => args.log = it.next().map(PathBuf::from),
            "--threads" => args.threads = it.next().and_then(|v| v.parse().ok()).expect("--threads N"),
            "--write-known-gaps" => args.write_known_gaps = true,
            "--" => {
                args.extra = it.by_ref().collect();
            }
            "-h" | "--help" => {
                println!(
                    "usage: conformance-report [--server NAME] [--log FILE] [--threads N] [--write-known-gaps] [-- LIBTEST ARGS]"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("conformance-report: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    args
}

/// One libtest result line: `test module::name ... ok`.
fn parse_line(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.split_once(" ... ")?;
    let result = result.trim();
    let result = if result.starts_with("ok") {
        "ok"
    } else if result.starts_with("FAILED") {
        "failed"
    } else if result.starts_with("ignored") {
        "ignored"
    } else {
        return None;
    };
    name.contains("::")
        .then(|| (name.trim().to_string(), result.to_string()))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn main() {
    let args = parse_args();
    let hs_url = std::env::var("HS_URL").ok().filter(|u| !u.is_empty());
    let kind = match &hs_url {
        Some(url) => tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(detect_kind(url.trim_end_matches('/'))),
        None => ServerKind::Hearth,
    };
    let server = args.server.clone().unwrap_or_else(|| kind.name().to_string());
    let gaps_apply = kind == ServerKind::Hearth
        && !args.write_known_gaps
        && std::env::var("CONFORMANCE_RUN_KNOWN_GAPS").as_deref() != Ok("1");

    let mut results: Vec<(String, String)> = Vec::new();
    let mut harness_skipped: Vec<String> = Vec::new();
    let mut exit_ok = true;
    if let Some(log) = &args.log {
        let text =
            std::fs::read_to_string(log).unwrap_or_else(|e| panic!("cannot read {}: {e}", log.display()));
        results.extend(text.lines().filter_map(parse_line));
    } else {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["test", "-p", "conformance-tests", "--test", "suite", "--"])
            .arg(format!("--test-threads={}", args.threads))
            .args(&args.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if args.write_known_gaps {
            cmd.env("CONFORMANCE_RUN_KNOWN_GAPS", "1");
        }
        let skip_log = std::env::temp_dir().join(format!("conformance-skipped-{}.txt", std::process::id()));
        let _ = std::fs::remove_file(&skip_log);
        cmd.env("CONFORMANCE_SKIP_LOG", &skip_log);
        println!(
            "conformance-report: running the suite against {} ({server})",
            hs_url.as_deref().unwrap_or("a Hearth spawned per test")
        );
        let mut child = cmd.spawn().expect("cannot run cargo test");
        let stdout = child.stdout.take().unwrap();
        let out = std::io::stdout();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut lock = out.lock();
            let _ = writeln!(lock, "{line}");
            if let Some(r) = parse_line(&line) {
                results.push(r);
            }
        }
        let status = child.wait().expect("cargo test");
        harness_skipped = std::fs::read_to_string(&skip_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let _ = std::fs::remove_file(&skip_log);
        if !status.success() && results.iter().all(|(_, r)| r != "failed") {
            eprintln!(
                "conformance-report: cargo test failed ({status}) without a failing test: build error?"
            );
            exit_ok = false;
        }
    }

    let gaps = known_gaps();
    let mut modules: BTreeMap<String, Counts> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for (name, result) in &results {
        let module = name.split("::").next().unwrap_or("?").to_string();
        let c = modules.entry(module).or_default();
        let skipped_gap =
            (gaps_apply && gaps.iter().any(|g| g == name)) || harness_skipped.iter().any(|g| g == name);
        match (result.as_str(), skipped_gap) {
            ("failed", _) => {
                c.failed += 1;
                failed.push(name.clone());
            }
            ("ignored", _) | (_, true) => {
                c.skipped += 1;
                skipped.push(name.clone());
            }
            _ => c.passed += 1,
        }
    }
    failed.sort();
    skipped.sort();

    let total = modules.values().fold(Counts::default(), |a, c| Counts {
        passed: a.passed + c.passed,
        failed: a.failed + c.failed,
        skipped: a.skipped + c.skipped,
    });
    println!();
    println!("Conformance summary against {server}");
    println!(
        "{:<16} {:>7} {:>7} {:>8} {:>6}",
        "module", "passed", "failed", "skipped", "total"
    );
    for (m, c) in &modules {
        println!(
            "{:<16} {:>7} {:>7} {:>8} {:>6}",
            m,
            c.passed,
            c.failed,
            c.skipped,
            c.passed + c.failed + c.skipped
        );
    }
    println!(
        "{:<16} {:>7} {:>7} {:>8} {:>6}",
        "TOTAL",
        total.passed,
        total.failed,
        total.skipped,
        total.passed + total.failed + total.skipped
    );
    if !skipped.is_empty() {
        println!(
            "\n{} test(s) skipped (known gaps of Hearth in conformance-tests/known-gaps.txt, or the \
             target lacks what they need)",
            skipped.len()
        );
    }
    if !failed.is_empty() {
        println!("\nFailed:");
        for f in &failed {
            println!("  {f}");
        }
    }

    let summary = json!({
        "server": server,
        "base_url": hs_url,
        "generated_at_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "modules": modules.iter().map(|(m, c)| (m.clone(), json!({
            "passed": c.passed, "failed": c.failed, "skipped": c.skipped, "total": c.passed + c.failed + c.skipped
        }))).collect::<serde_json::Map<_, _>>(),
        "total": {"passed": total.passed, "failed": total.failed, "skipped": total.skipped,
                  "total": total.passed + total.failed + total.skipped},
        "failed": failed,
        "skipped": skipped,
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let _ = std::fs::create_dir_all(&target);
    let path = target.join(format!("conformance-summary-{server}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap()).expect("write summary");
    println!("\nSummary written to {}", path.display());

    if args.write_known_gaps {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("known-gaps.txt");
        let mut text = String::from(
            "# Conformance tests that currently fail against Hearth; they are skipped (and reported as\n\
             # skipped) when the suite targets Hearth. Regenerate with\n\
             #   cargo run -p conformance-tests --bin conformance-report -- --write-known-gaps\n\
             # and shrink this list as Hearth catches up. Never list a test that Synapse fails.\n",
        );
        for f in &failed {
            text.push_str(f);
            text.push('\n');
        }
        std::fs::write(&path, text).expect("write known-gaps.txt");
        println!("known-gaps.txt rewritten with {} test(s)", failed.len());
        return;
    }
    if total.failed > 0 || !exit_ok || results.is_empty() {
        std::process::exit(1);
    }
}
