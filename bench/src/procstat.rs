//! Server process sampling from /proc: resident memory (VmRSS, peak VmHWM), CPU time
//! (utime + stime) and open file descriptors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::task::JoinHandle;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
    pub open_fds: u64,
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Parses `VmRSS` and `VmHWM` (kB) from /proc/PID/status text.
pub fn parse_status(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Parses utime + stime (clock ticks) from /proc/PID/stat text. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_stat_ticks(text: &str) -> Result<u64> {
    let rest = &text[text.rfind(')').ok_or_else(|| anyhow!("malformed stat"))? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("stat has too few fields"))?
            .parse()
            .context("stat field is not a number")
    };
    Ok(get(11)? + get(12)?)
}

/// Reads one sample of process `pid` (or of this process when `pid` is None).
pub fn sample(pid: Option<u32>) -> Result<Sample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .with_context(|| format!("reading {dir}/status (is the process running?)"))?;
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let (rss_kib, hwm_kib) = parse_status(&status);
    let cpu_s = parse_stat_ticks(&stat)? as f64 / clock_ticks_per_second();
    let open_fds = std::fs::read_dir(format!("{dir}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Ok(Sample {
        rss_kib,
        hwm_kib,
        cpu_s,
        open_fds,
    })
}

/// Soft limit on open files ("Max open files" in /proc/PID/limits) of process `pid` (or of this
/// process): each held connection costs the server one, so it caps the `connections` scenario.
pub fn nofile_limit(pid: Option<u32>) -> Option<u64> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    parse_nofile_limit(&std::fs::read_to_string(format!("{dir}/limits")).ok()?)
}

/// The soft "Max open files" limit from /proc/PID/limits text (None when unlimited).
pub fn parse_nofile_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU seconds (utime + stime) of the PostgreSQL backends currently serving database `db`:
/// processes whose command line is `postgres: USER DB …`. Backends that exited are not
/// counted, so this suits servers with a persistent connection pool.
pub fn postgres_db_cpu(db: &str) -> f64 {
    let ticks = clock_ticks_per_second();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            (backend_database(&String::from_utf8_lossy(&cmdline))? == db).then_some(())?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            parse_stat_ticks(&stat).ok()
        })
        .map(|t| t as f64 / ticks)
        .sum()
}

/// The database a PostgreSQL backend serves, from its process title
/// `postgres: [CLUSTER: ]USER DB HOST …` (Debian prefixes the cluster name, e.g. `15/main:`).
pub fn backend_database(cmdline: &str) -> Option<&str> {
    let mut words = cmdline.strip_prefix("postgres: ")?.split_whitespace().peekable();
    if words.peek()?.ends_with(':') {
        words.next();
    }
    let _user = words.next()?;
    words.next()
}

/// Samples a server process in the background (every `interval`) to catch peak RSS between the
/// explicit readings a scenario takes.
pub struct Monitor {
    pid: u32,
    peak_rss_kib: Arc<Mutex<u64>>,
    task: JoinHandle<()>,
    pub before: Sample,
}

impl Monitor {
    pub fn start(pid: u32, interval: Duration) -> Result<Monitor> {
        let before = sample(Some(pid))?;
        let peak = Arc::new(Mutex::new(before.rss_kib));
        let peak_task = peak.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                match sample(Some(pid)) {
                    Ok(s) => {
                        let mut p = peak_task.lock().expect("peak lock");
                        *p = (*p).max(s.rss_kib);
                    }
                    Err(e) => {
                        tracing::warn!("server process {pid} no longer readable: {e:#}");
                        return;
                    }
                }
            }
        });
        Ok(Monitor {
            pid,
            peak_rss_kib: peak,
            task,
            before,
        })
    }

    /// A reading now (also folded into the peak).
    pub fn now(&self) -> Result<Sample> {
        let s = sample(Some(self.pid))?;
        let mut p = self.peak_rss_kib.lock().expect("peak lock");
        *p = (*p).max(s.rss_kib);
        Ok(s)
    }

    pub fn peak_rss_kib(&self) -> u64 {
        *self.peak_rss_kib.lock().expect("peak lock")
    }

    /// Stops sampling and returns the final reading.
    pub fn finish(self) -> Result<Sample> {
        let after = self.now();
        self.task.abort();
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tpython\nVmPeak:\t  999 kB\nVmHWM:\t  131072 kB\nVmRSS:\t  120000 kB\n";
        assert_eq!(parse_status(text), (120000, 131072));
    }

    #[test]
    fn parses_stat_with_awkward_name() {
        let text = "1234 (we ird) (name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 200 300";
        assert_eq!(parse_stat_ticks(text).unwrap(), 300);
        assert!(parse_stat_ticks("1234 (x) S 1").is_err());
    }

    #[test]
    fn parses_nofile_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             unlimited            unlimited            processes \n\
                    Max open files            20000                20000                files     \n";
        assert_eq!(parse_nofile_limit(text), Some(20000));
        assert_eq!(
            parse_nofile_limit("Max open files unlimited unlimited files"),
            None
        );
        assert!(nofile_limit(None).is_some());
    }

    #[test]
    fn reads_backend_database_from_title() {
        let title = "postgres: postgres hearth_bench 127.0.0.1(51234) idle";
        assert_eq!(backend_database(title), Some("hearth_bench"));
        let debian = "postgres: 15/main: postgres synapse 127.0.0.1(40000) idle";
        assert_eq!(backend_database(debian), Some("synapse"));
        assert_eq!(backend_database("postgres: 15/main: checkpointer "), None);
        assert_eq!(backend_database("/usr/lib/postgresql/15/bin/postgres -D x"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
        assert!(s.open_fds > 0);
    }
}
