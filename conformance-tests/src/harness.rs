//! Starting (or finding) the homeserver under test.
//!
//! * `HS_URL` set: the tests target that running server; nothing is spawned.
//! * otherwise: each test starts its own `hearth serve --config FILE` (binary from `HEARTH_BIN`, else
//!   the `hearth` in the test executable's profile directory, e.g. `target/debug/`, else
//!   `<workspace>/target/debug/hearth`) on a free port of 127.0.0.1 with a fresh temp directory and
//!   a fresh database (`HEARTH_TEST_DB=sqlite|postgres`, default sqlite; PostgreSQL at
//!   `HEARTH_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`). The process is
//!   killed, and the database dropped, when the [`TestServer`] is dropped.
//!
//! Known gaps: tests listed in `conformance-tests/known-gaps.txt` are skipped (with a message)
//! when the target is Hearth, unless `CONFORMANCE_RUN_KNOWN_GAPS=1`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::Client;

/// Which implementation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Hearth,
    Synapse,
    Other,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Hearth => "hearth",
            ServerKind::Synapse => "synapse",
            ServerKind::Other => "other",
        }
    }
}

/// Identify a running server from `GET /_matrix/federation/v1/version` (`server.name`).
pub async fn detect_kind(base_url: &str) -> ServerKind {
    if let Ok(kind) = std::env::var("HS_KIND") {
        return match kind.to_lowercase().as_str() {
            "hearth" => ServerKind::Hearth,
            "synapse" => ServerKind::Synapse,
            _ => ServerKind::Other,
        };
    }
    let url = format!("{base_url}/_matrix/federation/v1/version");
    let name = async {
        let resp = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        let body: Value = resp.json().await.ok()?;
        body.pointer("/server/name")
            .and_then(Value::as_str)
            .map(str::to_lowercase)
    }
    .await
    .unwrap_or_default();
    if name.contains("hearth") {
        ServerKind::Hearth
    } else if name.contains("synapse") {
        ServerKind::Synapse
    } else {
        ServerKind::Other
    }
}

/// Names of the tests listed in `known-gaps.txt` (comments with `#`, blank lines ignored).
pub fn known_gaps() -> &'static Vec<String> {
    static GAPS: OnceLock<Vec<String>> = OnceLock::new();
    GAPS.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("known-gaps.txt");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn hearth_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("HEARTH_BIN") {
        return PathBuf::from(bin);
    }
    // The test executable lives in <target>/<profile>/deps/: the hearth binary of the same build
    // is <target>/<profile>/hearth.
    if let Some(profile_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.to_path_buf()))
        && profile_dir.join("hearth").is_file()
    {
        return profile_dir.join("hearth");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    target.join("debug/hearth")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL database created for one spawned server, dropped afterwards.
struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    async fn create() -> (PgDatabase, String) {
        use sqlx::Connection;
        let admin_url = std::env::var("HEARTH_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("hearth_ct_{}", crate::unique_suffix().replace('-', "_"));
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {admin_url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let _ = conn.close().await;
        let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin_url);
        let url = format!("{base}/{name}");
        (PgDatabase { admin_url, name }, url)
    }

    fn drop_blocking(&self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // A separate thread with its own runtime: Drop may run inside (or outside) a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut last_error = String::new();
                // Retried: the server may briefly be out of connection slots.
                for _ in 0..10 {
                    match sqlx::PgConnection::connect(&admin_url).await {
                        Ok(mut conn) => {
                            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                            let res = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await;
                            let _ = conn.close().await;
                            match res {
                                Ok(_) => return Some(()),
                                Err(e) => last_error = e.to_string(),
                            }
                        }
                        Err(e) => last_error = e.to_string(),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                eprintln!("warning: could not drop test database {name}: {last_error}");
                None
            })
        })
        .join();
    }
}

/// The homeserver one test talks to.
pub struct TestServer {
    pub base_url: String,
    pub kind: ServerKind,
    /// Whether this server was started by the harness (then it is Hearth).
    pub spawned: bool,
    child: Option<Child>,
    log_path: Option<PathBuf>,
    pg: Option<PgDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// The server for test `name` (`module::test`), or `None` when the test is to be skipped.
    pub async fn for_test(name: &str) -> Option<TestServer> {
        Self::for_test_inner(name, false).await
    }

    /// Like [`TestServer::for_test`] for a test of a Hearth-only `org.hearth.*` extension: skipped
    /// against any other server.
    pub async fn for_extension_test(name: &str) -> Option<TestServer> {
        Self::for_test_inner(name, true).await
    }

    async fn for_test_inner(name: &str, hearth_only: bool) -> Option<TestServer> {
        // `suite::module::test` -> `module::test`
        let name = name.split_once("::").map(|(_, rest)| rest).unwrap_or(name);
        let (base_url, kind, spawned) = match std::env::var("HS_URL") {
            Ok(url) if !url.is_empty() => {
                let url = url.trim_end_matches('/').to_string();
                let kind = detect_kind(&url).await;
                (url, kind, false)
            }
            _ => (String::new(), ServerKind::Hearth, true),
        };
        crate::client::set_lenient_nulls(kind != ServerKind::Hearth);
        if hearth_only && kind != ServerKind::Hearth {
            eprintln!("SKIPPED {name}: Hearth extension test, target is {}", kind.name());
            return None;
        }
        if kind == ServerKind::Hearth
            && std::env::var("CONFORMANCE_RUN_KNOWN_GAPS")
                .map(|v| v != "1")
                .unwrap_or(true)
            && known_gaps().iter().any(|g| g == name)
        {
            eprintln!("SKIPPED {name}: listed in conformance-tests/known-gaps.txt");
            return None;
        }
        if spawned {
            Some(Self::spawn_hearth().await)
        } else {
            Some(TestServer {
                base_url,
                kind,
                spawned,
                child: None,
                log_path: None,
                pg: None,
                _dir: None,
            })
        }
    }

    async fn spawn_hearth() -> TestServer {
        let bin = hearth_bin();
        assert!(
            bin.is_file(),
            "hearth binary not found at {} (build it with `cargo build -p hearth`, set HEARTH_BIN, \
             or set HS_URL to test a running server)",
            bin.display()
        );
        let backend = std::env::var("HEARTH_TEST_DB").unwrap_or_else(|_| "sqlite".into());
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("hearth-ct-")
                .tempdir()
                .expect("temp dir");
            let data_dir = dir.path().join("data");
            std::fs::create_dir_all(&data_dir).unwrap();
            let (pg, db_url) = match backend.as_str() {
                "postgres" => {
                    let (pg, url) = PgDatabase::create().await;
                    (Some(pg), url)
                }
                "sqlite" => (None, format!("sqlite://{}/hearth.db", data_dir.display())),
                other => panic!("HEARTH_TEST_DB must be sqlite or postgres, not {other}"),
            };
            let port = free_port();
            // The suite's pushers name gateways on 127.0.0.1 (Synapse accepts them when set).
            let config = format!(
                "server_name = \"localhost:{port}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n\
                 [database]\nurl = \"{db_url}\"\n\n[registration]\nenabled = true\n\n[rate_limits]\nenabled = false\n\n\
                 [push]\nallow_private_addresses = true\n",
                data_dir.display()
            );
            let config_path = dir.path().join("hearth.toml");
            std::fs::write(&config_path, config).unwrap();
            let log_path = dir.path().join("hearth.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(&bin)
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .current_dir(dir.path())
                .env_remove("HEARTH_SERVER_NAME")
                .env_remove("HEARTH_LISTEN")
                .env_remove("HEARTH_DATA_DIR")
                .env_remove("HEARTH_DATABASE__URL")
                .env("HEARTH_RATE_LIMITS__ENABLED", "false")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = TestServer {
                base_url: format!("http://127.0.0.1:{port}"),
                kind: ServerKind::Hearth,
                spawned: true,
                child: Some(child),
                log_path: Some(log_path),
                pg,
                _dir: Some(dir),
            };
            match server.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return server,
                Err(e) => {
                    last_error = format!("{e}\n--- hearth log ---\n{}", server.log_tail(40));
                    drop(server);
                }
            }
        }
        panic!("hearth did not start: {last_error}");
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let http = reqwest::Client::new();
        let url = format!("{}/_matrix/client/versions", self.base_url);
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("hearth exited during startup with {status}"));
            }
            if let Ok(resp) = http.get(&url).timeout(Duration::from_secs(2)).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!("no answer from {url} within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let Some(path) = &self.log_path else {
            return String::new();
        };
        let Ok(file) = std::fs::File::open(path) else {
            return String::new();
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_synapse(&self) -> bool {
        self.kind == ServerKind::Synapse
    }

    /// The value a test expects: `spec` normally, `synapse` when the target is Synapse and
    /// Synapse knowingly deviates from the spec there (the caller says how in a comment).
    pub fn spec_or_synapse<T>(&self, spec: T, synapse: T) -> T {
        if self.is_synapse() { synapse } else { spec }
    }

    /// Whether the rest of a test is to be skipped because the target is Synapse and Synapse
    /// knowingly deviates from the spec there (`why` names the spec section); prints why. The
    /// test keeps asserting the spec's rule against every other server.
    pub fn skip_on_synapse(&self, why: &str) -> bool {
        if self.is_synapse() {
            eprintln!("skipped: Synapse deviates from spec {why}");
        }
        self.is_synapse()
    }

    /// A client without an access token.
    pub fn anonymous(&self) -> Client {
        Client::new(&self.base_url)
    }

    /// Register a fresh user (unique localpart starting with `prefix`) and return its client.
    pub async fn user(&self, prefix: &str) -> Client {
        Client::register_new(&self.base_url, prefix).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- last lines of the hearth log ---\n{}", self.log_tail(60));
            }
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_blocking();
        }
    }
}

/// Define a conformance test: a `#[tokio::test]` that gets a [`TestServer`] (or is skipped).
///
/// ```ignore
/// conformance_test! {
///     /// Spec: Client-Server API, "Account registration".
///     async fn registers(hs) { let alice = hs.user("alice").await; ... }
/// }
/// ```
#[macro_export]
macro_rules! conformance_test {
    ($(#[$meta:meta])* async fn $name:ident($hs:ident) $body:block) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some($hs) =
                $crate::harness::TestServer::for_test(concat!(module_path!(), "::", stringify!($name))).await
            else {
                return;
            };
            #[allow(unused_variables)]
            let $hs = &$hs;
            $body
        }
    };
}

/// Like [`conformance_test!`] for Hearth-only `org.hearth.*` behaviour: skipped (with a message)
/// when the target is not Hearth.
#[macro_export]
macro_rules! extension_test {
    ($(#[$meta:meta])* async fn $name:ident($hs:ident) $body:block) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some($hs) =
                $crate::harness::TestServer::for_extension_test(concat!(module_path!(), "::", stringify!($name)))
                    .await
            else {
                return;
            };
            #[allow(unused_variables)]
            let $hs = &$hs;
            $body
        }
    };
}
