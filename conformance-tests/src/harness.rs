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
//! Federation tests (`federation_test!`, `two_server_test!`) need more of the target:
//!
//! * one server's federation listener: a spawned Hearth gets one (TLS with a certificate from
//!   `hearth generate-dev-cert`, server name `127.0.0.1:PORT`, loopback allowed, other servers'
//!   certificates not checked); with `HS_URL`, `HS_FEDERATION_URL` names it (`https://…`), else
//!   the test is skipped with a message;
//! * two servers that federate: two spawned Hearths (IP-literal names, so they reach each other
//!   without DNS); with `HS_URL`, `HS2_URL` names the second, else the test is skipped.
//!
//! Known gaps: tests listed in `conformance-tests/known-gaps.txt` are skipped (with a message)
//! when the target is Hearth, unless `CONFORMANCE_RUN_KNOWN_GAPS=1`.
//!
//! Skipped tests pass as far as libtest is concerned; their names are also appended to the file
//! `$CONFORMANCE_SKIP_LOG` when set (`conformance-report` sets it and counts them as skipped).

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

/// Whether test `name` is to be skipped as a known gap of Hearth.
fn is_known_gap(name: &str) -> bool {
    std::env::var("CONFORMANCE_RUN_KNOWN_GAPS")
        .map(|v| v != "1")
        .unwrap_or(true)
        && known_gaps().iter().any(|g| g == name)
}

/// Skip test `name` (printed, and appended to `$CONFORMANCE_SKIP_LOG` when set).
pub fn skip(name: &str, why: &str) {
    eprintln!("SKIPPED {name}: {why}");
    if let Ok(path) = std::env::var("CONFORMANCE_SKIP_LOG")
        && !path.is_empty()
    {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{name}");
        }
    }
}

/// What a test needs of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Client,
    /// A Hearth-only extension.
    Hearth,
    /// The client API and the federation listener.
    Federation,
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

/// `module::test` from `suite::module::test`.
fn short_name(name: &str) -> &str {
    name.split_once("::").map(|(_, rest)| rest).unwrap_or(name)
}

/// The `[federation]` section of a spawned Hearth: a TLS listener on `port` with a certificate
/// from `hearth generate-dev-cert`; other servers on loopback with self-signed certificates are
/// reached (IP-literal names need no resolution), and failed transactions retried quickly.
fn federation_section(bin: &Path, dir: &Path, port: u16) -> String {
    let cert = dir.join("federation.crt");
    let key = dir.join("federation.key");
    let status = Command::new(bin)
        .args(["generate-dev-cert", "--server-name", "127.0.0.1", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} generate-dev-cert: {e}", bin.display()));
    assert!(status.success(), "hearth generate-dev-cert failed");
    format!(
        "\n[federation]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ntls_certificate = \"{}\"\n\
         tls_private_key = \"{}\"\nverify_tls = false\nallow_ip_ranges = [\"127.0.0.1/32\"]\n\
         retry_initial_ms = 200\nretry_max_ms = 2000\n",
        cert.display(),
        key.display()
    )
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
    /// Base URL of its federation listener (`https://…`), when the test asked for one.
    pub federation_url: Option<String>,
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
        Self::for_test_inner(name, Needs::Client).await
    }

    /// Like [`TestServer::for_test`] for a test of a Hearth-only `org.hearth.*` extension: skipped
    /// against any other server.
    pub async fn for_extension_test(name: &str) -> Option<TestServer> {
        Self::for_test_inner(name, Needs::Hearth).await
    }

    /// Like [`TestServer::for_test`] for a test that also talks to the server's federation
    /// listener ([`TestServer::federation_url`] is set).
    pub async fn for_federation_test(name: &str) -> Option<TestServer> {
        Self::for_test_inner(name, Needs::Federation).await
    }

    /// Two servers that federate with each other, for test `name`: two spawned Hearths, or
    /// `HS_URL` and `HS2_URL` (skipped without `HS2_URL`).
    pub async fn pair_for_test(name: &str) -> Option<(TestServer, TestServer)> {
        let targets_running_server = std::env::var("HS_URL").is_ok_and(|u| !u.is_empty());
        if !targets_running_server {
            if is_known_gap(short_name(name)) {
                eprintln!(
                    "SKIPPED {}: listed in conformance-tests/known-gaps.txt",
                    short_name(name)
                );
                return None;
            }
            crate::client::set_lenient_nulls(false);
            let (a, b) = tokio::join!(Self::spawn_hearth(true), Self::spawn_hearth(true));
            return Some((a, b));
        }
        let first = Self::for_test_inner(name, Needs::Client).await?;
        let name = short_name(name);
        let Some(url) = std::env::var("HS2_URL").ok().filter(|u| !u.is_empty()) else {
            skip(name, "needs a second server federating with HS_URL: set HS2_URL");
            return None;
        };
        let url = url.trim_end_matches('/').to_string();
        let kind = detect_kind(&url).await;
        let second = TestServer {
            base_url: url,
            federation_url: None,
            kind,
            spawned: false,
            child: None,
            log_path: None,
            pg: None,
            _dir: None,
        };
        Some((first, second))
    }

    async fn for_test_inner(name: &str, needs: Needs) -> Option<TestServer> {
        let name = short_name(name);
        let (base_url, kind, spawned) = match std::env::var("HS_URL") {
            Ok(url) if !url.is_empty() => {
                let url = url.trim_end_matches('/').to_string();
                let kind = detect_kind(&url).await;
                (url, kind, false)
            }
            _ => (String::new(), ServerKind::Hearth, true),
        };
        crate::client::set_lenient_nulls(kind != ServerKind::Hearth);
        if needs == Needs::Hearth && kind != ServerKind::Hearth {
            skip(name, &format!("Hearth extension test, target is {}", kind.name()));
            return None;
        }
        if kind == ServerKind::Hearth && is_known_gap(name) {
            eprintln!("SKIPPED {name}: listed in conformance-tests/known-gaps.txt");
            return None;
        }
        if spawned {
            return Some(Self::spawn_hearth(needs == Needs::Federation).await);
        }
        let federation_url = std::env::var("HS_FEDERATION_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(|u| u.trim_end_matches('/').to_string());
        if needs == Needs::Federation && federation_url.is_none() {
            skip(
                name,
                "needs the federation listener of HS_URL: set HS_FEDERATION_URL (https://host:port)",
            );
            return None;
        }
        Some(TestServer {
            base_url,
            federation_url,
            kind,
            spawned,
            child: None,
            log_path: None,
            pg: None,
            _dir: None,
        })
    }

    /// Start a Hearth; with `federation`, with a federation listener too (server name
    /// `127.0.0.1:<federation port>`).
    async fn spawn_hearth(federation: bool) -> TestServer {
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
            let fed_port = free_port();
            let server_name = if federation {
                format!("127.0.0.1:{fed_port}")
            } else {
                format!("localhost:{port}")
            };
            // The suite's pushers name gateways on 127.0.0.1 (Synapse accepts them when set).
            let mut config = format!(
                "server_name = \"{server_name}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n\
                 [database]\nurl = \"{db_url}\"\n\n[registration]\nenabled = true\n\n[rate_limits]\nenabled = false\n\n\
                 [push]\nallow_private_addresses = true\n",
                data_dir.display()
            );
            if federation {
                config.push_str(&federation_section(&bin, dir.path(), fed_port));
            }
            let config_path = dir.path().join("hearth.toml");
            std::fs::write(&config_path, config).unwrap();
            let log_path = dir.path().join("hearth.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut command = Command::new(&bin);
            // Hearth's default filter logs the "listening" line `wait_ready` reads; a caller's
            // own filter gets it added.
            if let Some(filter) = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty()) {
                command.env("RUST_LOG", format!("{filter},hearth::listening=info"));
            }
            let child = command
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
                federation_url: federation.then(|| format!("https://127.0.0.1:{fed_port}")),
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
            if self.log_says_listening()
                && let Ok(resp) = http.get(&url).timeout(Duration::from_secs(2)).send().await
                && resp.status().is_success()
                && self.federation_listening().await
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!("no answer from {url} within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True without a federation listener, or when something accepts connections on it. The
    /// two ports come from `free_port`, so another test's server can take one of them before
    /// this one binds it: this server then exits, yet another one may answer on `base_url`.
    /// Its federation listener, bound before the client one, is then gone, and the wait goes
    /// on until the exit is seen (and the start is tried again on other ports).
    async fn federation_listening(&self) -> bool {
        let Some(address) = self
            .federation_url
            .as_deref()
            .and_then(|url| url.strip_prefix("https://"))
        else {
            return true;
        };
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(address))
            .await
            .is_ok_and(|connected| connected.is_ok())
    }

    /// True for a server not spawned here, or once the spawned one's log says its client
    /// listener is bound to `base_url`'s port: only then is an answer there surely its own. The
    /// port comes from `free_port`, so another test's server may hold it meanwhile and answer
    /// `/versions` while this one fails to bind and exits (a failure seen in CI).
    fn log_says_listening(&self) -> bool {
        let Some(path) = &self.log_path else {
            return true;
        };
        let Some(address) = self.base_url.strip_prefix("http://") else {
            return true;
        };
        let Ok(log) = std::fs::read_to_string(path) else {
            return false;
        };
        let wanted = format!("address={address}");
        strip_ansi(&log)
            .lines()
            .any(|line| line.contains(" listening") && line.trim_end().ends_with(&wanted))
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

    /// The target's federation side (base URL and server name, from its key response).
    /// Panics when the test did not ask for the federation listener.
    pub async fn federation(&self) -> crate::federation::Target {
        let url = self
            .federation_url
            .as_deref()
            .expect("federation tests get a TestServer from for_federation_test");
        crate::federation::target(url).await
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

/// Like [`conformance_test!`] for a test that also talks to the server's federation listener
/// (skipped with a message when the target's is unknown: `HS_URL` without `HS_FEDERATION_URL`).
#[macro_export]
macro_rules! federation_test {
    ($(#[$meta:meta])* async fn $name:ident($hs:ident) $body:block) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some($hs) =
                $crate::harness::TestServer::for_federation_test(concat!(module_path!(), "::", stringify!($name)))
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

/// A test of two servers that federate (two spawned Hearths, or `HS_URL` and `HS2_URL`;
/// skipped with a message without `HS2_URL`).
#[macro_export]
macro_rules! two_server_test {
    ($(#[$meta:meta])* async fn $name:ident($hs1:ident, $hs2:ident) $body:block) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(($hs1, $hs2)) =
                $crate::harness::TestServer::pair_for_test(concat!(module_path!(), "::", stringify!($name))).await
            else {
                return;
            };
            #[allow(unused_variables)]
            let ($hs1, $hs2) = (&$hs1, &$hs2);
            $body
        }
    };
}

/// `text` without its terminal colour sequences (`ESC [ ... m`), as a log written for a terminal
/// has them around field names.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    /// A line as a spawned Hearth writes it to its log (colours on).
    #[test]
    fn colour_sequences_are_stripped_from_log_lines() {
        let line = "\u{1b}[2m2026-12-05T16:26:36.917016Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                    \u{1b}[2mhearth::listening\u{1b}[0m\u{1b}[2m:\u{1b}[0m listening \
                    \u{1b}[3maddress\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:42595";
        assert_eq!(
            strip_ansi(line),
            "2026-12-05T16:26:36.917016Z  INFO hearth::listening: listening address=127.0.0.1:42595"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
