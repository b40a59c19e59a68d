//! Test harness: runs the real `hearth` binary on a free loopback port with its own database,
//! talks to it over HTTP, and opens its database for inspection.
//!
//! The backend comes from `HEARTH_TEST_DB` (`sqlite`, the default, or `postgres`). For
//! PostgreSQL every server gets a fresh database on the server named by `HEARTH_TEST_PG_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), dropped again when the server is dropped.

#![allow(dead_code)]

pub mod federation;

use std::{
    collections::HashMap,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{
    AnyPool, Executor, Row,
    any::{AnyPoolOptions, install_default_drivers},
};
use tempfile::TempDir;

pub const SERVER_NAME: &str = "hearth.test";
pub const PASSWORD: &str = "correct horse battery staple";

/// The rate limit numbers, spelled out: Hearth at abf6f49 refused a `[rate_limits]` table that
/// only sets `enabled` (the config tests check that the contract's short form loads).
pub const RATE_LIMIT_FIELDS: &str = "messages_per_second = 1000.0\nmessages_burst = 10000.0\n\
     login_per_second = 1000.0\nlogin_burst = 10000.0\nregister_per_second = 1000.0\n\
     register_burst = 10000.0\n";

/// Which database the servers under test use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_env() -> Self {
        match std::env::var("HEARTH_TEST_DB").as_deref() {
            Ok("postgres") | Ok("postgresql") | Ok("pg") => Backend::Postgres,
            Ok("sqlite") | Ok("") | Err(_) => Backend::Sqlite,
            Ok(other) => panic!("HEARTH_TEST_DB must be sqlite or postgres, not {other:?}"),
        }
    }
}

fn pg_admin_url() -> String {
    std::env::var("HEARTH_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `base` with its database name replaced by `db`.
fn pg_url_with_db(base: &str, db: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (base, None),
    };
    let scheme_end = without_query.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match without_query[scheme_end..].find('/') {
        Some(slash) => &without_query[..scheme_end + slash],
        None => without_query,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port nothing listens on right now, for a `hearth` to bind later. Taken below the kernel's
/// ephemeral range: a port `bind(0)` hands out comes from that range, which is also where every
/// outgoing connection's local port comes from, so once released it could be taken by any
/// connection on the machine before `hearth` binds it. Below the range only a process picking
/// ports this way can collide: each test process starts at its own place (by process ID and
/// time) and holds a lock on every port it hands out (`reserve`) until it exits, so two test
/// processes never get the same port. A server whose client port was taken anyway starts again
/// on another (`Server::spawn`); a federation port cannot move (its peers were told it), which
/// is why the lock matters.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    const LOW: u64 = 10_000;
    let high = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32_768);
    if high > LOW + 1_000 {
        let span = high - LOW;
        let start = *START.get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u64);
            (std::process::id() as u64 * 7_919 + nanos) % span
        });
        for _ in 0..span {
            let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if reserve(port as u16) && TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Takes `port` for this test process: an exclusive advisory lock on a file named after it,
/// held (the file stays open) until the process exits, when the kernel releases it; false when
/// another test process holds it.
fn reserve(port: u16) -> bool {
    static HELD: std::sync::Mutex<Vec<fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("hearth-test-ports");
    let Ok(file) = fs::create_dir_all(&dir).and_then(|()| {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
    }) else {
        return true;
    };
    if file.try_lock().is_err() {
        return false;
    }
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
    true
}

/// The binary under test: `HEARTH_BIN` when set, else the one cargo built for these tests,
/// pinned for this test process: a hard link (or copy) under cargo's test temp directory, so
/// that a rebuild of `target/debug/hearth` by someone else mid-run cannot swap the binary
/// between a test's start and its restart.
pub fn hearth_bin() -> String {
    static PINNED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Ok(bin) = std::env::var("HEARTH_BIN") {
        return bin;
    }
    PINNED
        .get_or_init(|| {
            let built = env!("CARGO_BIN_EXE_hearth");
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            // Links left by earlier runs keep old binaries alive; drop those whose test process
            // has ended.
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(pid) = name.strip_prefix("hearth-bin-")
                        && !Path::new("/proc").join(pid).exists()
                    {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
            let pinned = dir.join(format!("hearth-bin-{}", std::process::id()));
            let _ = fs::remove_file(&pinned);
            if fs::hard_link(built, &pinned).is_ok() || fs::copy(built, &pinned).is_ok() {
                pinned.display().to_string()
            } else {
                built.to_owned()
            }
        })
        .clone()
}

/// A `Command` for the hearth binary with no `HEARTH_*` variables inherited from the test's
/// environment (they would override the generated config).
pub fn hearth_command() -> Command {
    let mut cmd = Command::new(hearth_bin());
    for (name, _) in std::env::vars() {
        if name.starts_with("HEARTH_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_LOG", "info,tower_http=warn");
    cmd
}

/// A running (or stopped) Hearth with its data directory and database.
pub struct Server {
    pub backend: Backend,
    pub base_url: String,
    pub port: u16,
    pub db_url: String,
    pub http: reqwest::Client,
    dir: TempDir,
    config_path: PathBuf,
    child: Option<Child>,
    pg_db: Option<String>,
    starts: u32,
}

impl Server {
    /// Starts a server on the backend chosen by `HEARTH_TEST_DB`.
    pub async fn start() -> Server {
        Self::start_on(Backend::from_env()).await
    }

    /// A server whose rooms stay plain unless they name a mode, for tests that read stored PDUs
    /// from the database (the default mode, search-enabled, stores them sealed).
    pub async fn start_with_plain_rooms() -> Server {
        Self::start_with_config(Backend::from_env(), "[privacy]\ndefault_mode = \"none\"\n").await
    }

    pub async fn start_on(backend: Backend) -> Server {
        Self::start_with_config(backend, "").await
    }

    /// Starts a server whose config file ends with `extra` (TOML sections of its own, e.g.
    /// `[media]\nmax_upload_bytes = 1000\n`).
    pub async fn start_with_config(backend: Backend, extra: &str) -> Server {
        Self::start_with_limits(
            backend,
            "",
            &format!("enabled = false\n{RATE_LIMIT_FIELDS}"),
            extra,
        )
        .await
    }

    /// Starts a server with `top` among the top-level keys (e.g. `trusted_proxies = […]`), the
    /// body of `[rate_limits]` given in full, and `extra` sections at the end.
    pub async fn start_with_limits(backend: Backend, top: &str, rate_limits: &str, extra: &str) -> Server {
        Self::start_named(backend, SERVER_NAME, top, rate_limits, extra).await
    }

    /// `start_with_limits` for a server named `server_name` (several servers side by side).
    pub async fn start_named(
        backend: Backend,
        server_name: &str,
        top: &str,
        rate_limits: &str,
        extra: &str,
    ) -> Server {
        install_default_drivers();
        let dir = tempfile::Builder::new()
            .prefix("hearth-it-")
            .tempdir()
            .expect("tempdir");
        let (db_url, pg_db) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("hearth.db").display()),
                None,
            ),
            Backend::Postgres => {
                let name = unique("hearth_it");
                let admin = pg_admin_url();
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin}: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&pool)
                    .await
                    .expect("create test database");
                pool.close().await;
                (pg_url_with_db(&admin, &name), Some(name))
            }
        };
        let port = free_port();
        let config_path = dir.path().join("hearth.toml");
        let config = format!(
            "server_name = \"{server_name}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\n{top}\n\
             [database]\nurl = \"{db_url}\"\n[registration]\nenabled = true\n\
             [rate_limits]\n{rate_limits}\n{extra}",
            data = dir.path().join("data").display(),
        );
        fs::write(&config_path, config).expect("write config");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let mut server = Server {
            backend,
            base_url: format!("http://127.0.0.1:{port}"),
            port,
            db_url,
            http,
            dir,
            config_path,
            child: None,
            pg_db,
            starts: 0,
        };
        server.spawn().await;
        server
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("hearth-{}.log", self.starts))
    }

    /// The server's output so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        // A first start whose client port another process took in the meantime (see
        // `free_port`) tries again on another; later starts keep the port clients know.
        for attempt in 1.. {
            let log = fs::File::create(self.log_path()).expect("log file");
            let child = hearth_command()
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("spawn hearth");
            self.child = Some(child);
            let Err(status) = self.wait_ready().await else {
                return;
            };
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            let port_taken = log.contains("Address already in use") && !log.contains("federation.listen");
            if !(port_taken && self.starts == 1 && attempt < 5) {
                panic!("hearth exited during start-up ({status}):\n{}", self.log_tail());
            }
            let port = free_port();
            let config = fs::read_to_string(&self.config_path).expect("read config");
            let config = config.replacen(
                &format!("listen = \"127.0.0.1:{}\"", self.port),
                &format!("listen = \"127.0.0.1:{port}\""),
                1,
            );
            fs::write(&self.config_path, config).expect("write config");
            self.port = port;
            self.base_url = format!("http://127.0.0.1:{port}");
        }
    }

    /// Waits until the server answers; the exit status if it stopped during start-up.
    async fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/_matrix/client/versions", self.base_url);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(status);
            }
            if let Ok(resp) = self.http.get(&url).timeout(Duration::from_secs(2)).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!("hearth did not answer {url} within 20 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL if it has not exited after 5 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Stops the server and starts it again on the same config, port and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Kills the process with SIGKILL (no chance to clean up) and starts it again.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL hearth");
            let _ = child.wait();
        }
        self.spawn().await;
    }

    /// Kills the process with SIGKILL and leaves it down (`start_again` brings it back).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL hearth");
            let _ = child.wait();
        }
    }

    /// Starts a stopped or killed server again, on its config file (which a test may have
    /// edited), port and data.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// A read-only connection pool on the server's database.
    pub async fn db(&self) -> AnyPool {
        install_default_drivers();
        let (url, backend) = match self.backend {
            Backend::Sqlite => (format!("{}?mode=ro", self.db_url), Backend::Sqlite),
            Backend::Postgres => (self.db_url.clone(), Backend::Postgres),
        };
        AnyPoolOptions::new()
            .max_connections(2)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA query_only = ON").await?;
                        }
                        Backend::Postgres => {
                            conn.execute("SET default_transaction_read_only = on").await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    /// A client with no access token.
    pub fn anon(&self) -> Client {
        Client {
            http: self.http.clone(),
            base_url: self.base_url.clone(),
            token: None,
            user_id: String::new(),
            device_id: String::new(),
        }
    }

    /// A client authenticated with a known access token.
    pub fn client_with_token(&self, user_id: &str, device_id: &str, token: &str) -> Client {
        Client {
            http: self.http.clone(),
            base_url: self.base_url.clone(),
            token: Some(token.to_owned()),
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
        }
    }

    /// Registers `localpart` through the two-step `m.login.dummy` flow.
    pub async fn register(&self, localpart: &str) -> Client {
        let anon = self.anon();
        let body = json!({ "username": localpart, "password": PASSWORD });
        let (status, first) = anon.request(Method::POST, "/register", Some(&body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "first /register step: {first}");
        let session = first["session"]
            .as_str()
            .unwrap_or_else(|| panic!("no UIA session in {first}"))
            .to_owned();
        let body = json!({
            "username": localpart,
            "password": PASSWORD,
            "auth": { "type": "m.login.dummy", "session": session },
        });
        let (status, done) = anon.request(Method::POST, "/register", Some(&body)).await;
        assert_eq!(status, StatusCode::OK, "second /register step: {done}");
        let token = done["access_token"].as_str().expect("access_token");
        self.client_with_token(
            done["user_id"].as_str().expect("user_id"),
            done["device_id"].as_str().expect("device_id"),
            token,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(name) = self.pg_db.take() {
            let admin = pg_admin_url();
            // Drop runs inside the test's runtime; a fresh thread with its own runtime avoids
            // blocking it.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let pool = AnyPoolOptions::new()
                        .max_connections(1)
                        .connect(&admin)
                        .await
                        .ok()?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&pool)
                    .await
                    .ok()?;
                    pool.close().await;
                    Some(())
                })
            })
            .join();
        }
    }
}

static TXN: AtomicU64 = AtomicU64::new(0);

/// A new transaction ID, unique within this test process.
pub fn txn_id() -> String {
    format!("t{}", TXN.fetch_add(1, Ordering::Relaxed))
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Client-Server API client for one user (or none).
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base_url: String,
    pub token: Option<String>,
    pub user_id: String,
    pub device_id: String,
}

impl Client {
    /// Sends a request to `/_matrix/client/v3{path}`; returns the status and the JSON body
    /// (`Value::Null` when the body is not JSON).
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let url = format!("{}/_matrix/client/v3{path}", self.base_url);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like `request`, but a transport error (server gone) is returned, not a panic.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let url = format!("{}/_matrix/client/v3{path}", self.base_url);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Sends a request to `/_matrix/client/v1{path}` (endpoints that exist only under v1).
    pub async fn request_v1(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let url = format!("{}/_matrix/client/v1{path}", self.base_url);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like `request`, but panics unless the status is 200.
    pub async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.request(method.clone(), path, body).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{method} {path} as {}: {value}",
            self.user_id
        );
        value
    }

    pub async fn create_room(&self, body: Value) -> String {
        let resp = self.ok(Method::POST, "/createRoom", Some(&body)).await;
        resp["room_id"].as_str().expect("room_id").to_owned()
    }

    pub async fn invite(&self, room_id: &str, user_id: &str) {
        self.ok(
            Method::POST,
            &format!("/rooms/{}/invite", encode(room_id)),
            Some(&json!({ "user_id": user_id })),
        )
        .await;
    }

    pub async fn join(&self, room_id: &str) {
        self.ok(
            Method::POST,
            &format!("/rooms/{}/join", encode(room_id)),
            Some(&json!({})),
        )
        .await;
    }

    pub async fn leave(&self, room_id: &str) {
        self.ok(
            Method::POST,
            &format!("/rooms/{}/leave", encode(room_id)),
            Some(&json!({})),
        )
        .await;
    }

    /// Sends an `m.room.message` text; returns its event ID.
    pub async fn send_text(&self, room_id: &str, text: &str) -> String {
        self.send(
            room_id,
            "m.room.message",
            json!({ "msgtype": "m.text", "body": text }),
        )
        .await
    }

    pub async fn send(&self, room_id: &str, event_type: &str, content: Value) -> String {
        let resp = self
            .ok(Method::PUT, &self.send_path(room_id, event_type), Some(&content))
            .await;
        resp["event_id"].as_str().expect("event_id").to_owned()
    }

    pub fn send_path(&self, room_id: &str, event_type: &str) -> String {
        format!(
            "/rooms/{}/send/{}/{}",
            encode(room_id),
            encode(event_type),
            txn_id()
        )
    }

    pub fn state_path(room_id: &str, event_type: &str, state_key: &str) -> String {
        format!(
            "/rooms/{}/state/{}/{}",
            encode(room_id),
            encode(event_type),
            encode(state_key)
        )
    }

    /// Sets a state event; returns its event ID.
    pub async fn set_state(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> String {
        let resp = self
            .ok(
                Method::PUT,
                &Self::state_path(room_id, event_type, state_key),
                Some(&content),
            )
            .await;
        resp["event_id"].as_str().expect("event_id").to_owned()
    }

    pub async fn get_state_content(&self, room_id: &str, event_type: &str, state_key: &str) -> Value {
        self.ok(
            Method::GET,
            &Self::state_path(room_id, event_type, state_key),
            None,
        )
        .await
    }

    /// Redacts an event; returns the redaction's event ID.
    pub async fn redact(&self, room_id: &str, event_id: &str) -> String {
        let resp = self
            .ok(
                Method::PUT,
                &format!(
                    "/rooms/{}/redact/{}/{}",
                    encode(room_id),
                    encode(event_id),
                    txn_id()
                ),
                Some(&json!({ "reason": "test" })),
            )
            .await;
        resp["event_id"].as_str().expect("event_id").to_owned()
    }

    /// The room's current state as (type, state_key) → event ID, from `GET /rooms/{id}/state`.
    pub async fn room_state_ids(&self, room_id: &str) -> HashMap<(String, String), String> {
        let resp = self
            .ok(Method::GET, &format!("/rooms/{}/state", encode(room_id)), None)
            .await;
        resp.as_array()
            .expect("state is an array")
            .iter()
            .map(|e| {
                (
                    (
                        e["type"].as_str().expect("type").to_owned(),
                        e["state_key"].as_str().expect("state_key").to_owned(),
                    ),
                    e["event_id"].as_str().expect("event_id").to_owned(),
                )
            })
            .collect()
    }

    /// `/sync` with an inline filter that lets `timeline_limit` events through per room.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64, timeline_limit: u32) -> Value {
        let filter = json!({ "room": { "timeline": { "limit": timeline_limit } } }).to_string();
        let mut path = format!("/sync?timeout={timeout_ms}&filter={}", encode(&filter));
        if let Some(since) = since {
            path.push_str(&format!("&since={}", encode(since)));
        }
        self.ok(Method::GET, &path, None).await
    }
}

/// One row of a state group: ((type, state key), event ID).
pub type StateEntry = ((String, String), String);

/// A room's state groups, read once from `state_groups` / `state_group_entries`; state is
/// rebuilt by walking the delta chain here, independently of Hearth's own query.
pub struct StateGroups {
    pub prev: HashMap<i64, Option<i64>>,
    pub entries: HashMap<i64, Vec<StateEntry>>,
}

impl StateGroups {
    pub async fn load(db: &AnyPool, room_id: &str) -> StateGroups {
        let prev = sqlx::query("SELECT id, prev_group FROM state_groups WHERE room_id = $1")
            .bind(room_id.to_owned())
            .fetch_all(db)
            .await
            .expect("read state_groups")
            .into_iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<Option<i64>, _>(1)))
            .collect();
        let mut entries: HashMap<i64, Vec<StateEntry>> = HashMap::new();
        for r in sqlx::query(
            "SELECT e.state_group, e.type, e.state_key, e.event_id FROM state_group_entries e \
             JOIN state_groups g ON g.id = e.state_group WHERE g.room_id = $1",
        )
        .bind(room_id.to_owned())
        .fetch_all(db)
        .await
        .expect("read state_group_entries")
        {
            entries
                .entry(r.get(0))
                .or_default()
                .push(((r.get(1), r.get(2)), r.get(3)));
        }
        StateGroups { prev, entries }
    }

    /// The groups from `group` back to its snapshot, newest first.
    pub fn chain(&self, group: i64) -> Vec<i64> {
        let mut chain = Vec::new();
        let mut next = Some(group);
        while let Some(id) = next {
            assert!(
                chain.len() < 100_000,
                "state group chain does not end (cycle at {id}?)"
            );
            chain.push(id);
            next = *self
                .prev
                .get(&id)
                .unwrap_or_else(|| panic!("state group {id} does not exist in this room"));
        }
        chain
    }

    /// The full state of a group: (type, state key) → event ID.
    pub fn state_of(&self, group: i64) -> HashMap<(String, String), String> {
        let mut state = HashMap::new();
        for id in self.chain(group).into_iter().rev() {
            for (key, event_id) in self.entries.get(&id).into_iter().flatten() {
                state.insert(key.clone(), event_id.clone());
            }
        }
        state
    }
}

/// Row count of a query returning one integer.
pub async fn count(pool: &AnyPool, sql: &str, binds: &[&str]) -> i64 {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
    for b in binds {
        query = query.bind(b.to_string());
    }
    let row = query
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.try_get::<i64, _>(0)
        .unwrap_or_else(|_| row.get::<i32, _>(0) as i64)
}

/// Event IDs of a joined room's timeline in a sync response.
pub fn timeline_ids(sync: &Value, room_id: &str) -> Vec<String> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["event_id"].as_str().map(ToOwned::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A mock push gateway answering every notification with `{"rejected": rejected}`.
pub async fn push_gateway(rejected: &[&str]) -> wiremock::MockServer {
    let gateway = wiremock::MockServer::start().await;
    accept_notifications(&gateway, rejected).await;
    gateway
}

/// Makes `gateway` answer notifications (`POST /_matrix/push/v1/notify`) with
/// `{"rejected": rejected}`.
pub async fn accept_notifications(gateway: &wiremock::MockServer, rejected: &[&str]) {
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/_matrix/push/v1/notify"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({"rejected": rejected})))
        .mount(gateway)
        .await;
}
