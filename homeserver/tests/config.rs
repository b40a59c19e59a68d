//! Start-up with a bad config fails fast and says which key is wrong; a generated config works.

mod common;

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{free_port, hearth_command};

/// Runs a command that should exit by itself within `limit`; kills it and panics otherwise.
fn run_with_limit(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hearth");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "hearth still running after {limit:?}:\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bad configs, each with the key its error must name.
fn bad_configs(dir: &std::path::Path) -> Vec<(&'static str, String, &'static str)> {
    let db = format!("sqlite://{}", dir.join("never.db").display());
    vec![
        (
            "unknown top-level key",
            format!("server_name = \"a.example\"\nlisten_on = \"127.0.0.1:1\"\n[database]\nurl = \"{db}\"\n"),
            "listen_on",
        ),
        (
            "unknown key in a section",
            format!("server_name = \"a.example\"\n[database]\nurl = \"{db}\"\npool_size = 3\n"),
            "pool_size",
        ),
        (
            "wrong type",
            format!(
                "server_name = \"a.example\"\n[database]\nurl = \"{db}\"\n[registration]\nenabled = \"yes\"\n"
            ),
            "enabled",
        ),
        (
            "wrong type for listen",
            format!("server_name = \"a.example\"\nlisten = 8008\n[database]\nurl = \"{db}\"\n"),
            "listen",
        ),
        (
            "invalid server_name",
            format!("server_name = \"not a server name\"\n[database]\nurl = \"{db}\"\n"),
            "server_name",
        ),
        (
            "missing server_name",
            format!("listen = \"127.0.0.1:1\"\n[database]\nurl = \"{db}\"\n"),
            "server_name",
        ),
    ]
}

fn run_bad_config(dir: &std::path::Path, name: &str, text: &str) -> (Output, Duration) {
    let path = dir.join(format!("{}.toml", name.replace(' ', "_")));
    std::fs::write(&path, text).expect("write config");
    let mut cmd = hearth_command();
    cmd.arg("serve").arg("--config").arg(&path).current_dir(dir);
    let start = Instant::now();
    let out = run_with_limit(cmd, Duration::from_secs(10));
    (out, start.elapsed())
}

/// The contract: a bad config stops start-up with a non-zero exit, and stderr names the key.
#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text, key) in bad_configs(dir.path()) {
        let (out, took) = run_bad_config(dir.path(), name, &text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: hearth accepted\n{text}");
        assert!(took < Duration::from_secs(5), "{name}: took {took:?} to fail");
        assert!(
            stderr.contains(key),
            "{name}: stderr does not name `{key}`:\n{stderr}"
        );
        assert!(
            !dir.path().join("never.db").exists(),
            "{name}: a database was created"
        );
    }
}

/// The same errors, looking at everything the process printed (stdout and stderr), so the
/// naming of keys stays covered while the stream is wrong.
#[test]
fn config_errors_name_the_key_in_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text, key) in bad_configs(dir.path()) {
        let (out, took) = run_bad_config(dir.path(), name, &text);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{name}: hearth accepted\n{text}");
        assert!(took < Duration::from_secs(5), "{name}: took {took:?} to fail");
        assert!(
            printed.contains(key),
            "{name}: the output does not name `{key}`:\n{printed}"
        );
        assert!(
            !dir.path().join("never.db").exists(),
            "{name}: a database was created"
        );
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = hearth_command();
    cmd.args(["serve", "--config", "does-not-exist.toml"])
        .current_dir(dir.path());
    let out = run_with_limit(cmd, Duration::from_secs(10));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(printed.contains("does-not-exist.toml"), "{printed}");
}

async fn wait_for_versions(base: &str, child: &mut std::process::Child) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("hearth exited ({status}) with the generated config");
        }
        if let Ok(resp) = http.get(format!("{base}/_matrix/client/versions")).send().await
            && resp.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "no answer from {base}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `generate-config` prints a config that `serve` accepts as it is (only the listen address and
/// database moved into a temporary directory through the documented environment overrides),
/// with the server name given and registration closed by default.
#[tokio::test]
async fn generated_config_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_with_limit(
        {
            let mut cmd = hearth_command();
            cmd.args(["generate-config", "--server-name", "example.org"]);
            cmd
        },
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "generate-config failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8 config");
    assert!(text.contains("server_name = \"example.org\""), "{text}");
    let path = dir.path().join("generated.toml");
    std::fs::write(&path, &text).expect("write config");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = hearth_command()
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env("HEARTH_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "HEARTH_DATABASE__URL",
            format!("sqlite://{}", dir.path().join("gen.db").display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hearth");
    wait_for_versions(&base, &mut child).await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(&serde_json::json!({ "username": "x", "password": "y" }))
        .send()
        .await
        .expect("register");
    let status = resp.status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        status,
        reqwest::StatusCode::FORBIDDEN,
        "registration is closed in a generated config"
    );
    assert!(
        dir.path().join("gen.db").exists(),
        "the database override was not used"
    );

    let bad = run_with_limit(
        {
            let mut cmd = hearth_command();
            cmd.args(["generate-config", "--server-name", "not a name"]);
            cmd
        },
        Duration::from_secs(10),
    );
    assert!(
        !bad.status.success(),
        "generate-config accepted an invalid server name"
    );
}

/// The config shape in the shared contract: `[rate_limits]` with only `enabled = false`, relative
/// paths under the working directory. (Hearth at commit abf6f49 refused it: "missing field
/// `messages_per_second` in `rate_limits`".)
#[tokio::test]
async fn contract_config_with_only_rate_limits_enabled_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let path = dir.path().join("contract.toml");
    std::fs::write(
        &path,
        format!(
            "server_name = \"localhost:{port}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"./hearth-data\"\n\
             [database]\nurl = \"sqlite://./hearth-data/hearth.db\"\n[registration]\nenabled = true\n\
             [rate_limits]\nenabled = false\n"
        ),
    )
    .expect("write config");
    let mut child = hearth_command()
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hearth");
    wait_for_versions(&format!("http://127.0.0.1:{port}"), &mut child).await;
    let _ = child.kill();
    let _ = child.wait();
}

/// An environment override with a value of the wrong type is refused and named like a file key.
#[test]
fn a_bad_environment_override_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!(
            "server_name = \"a.example\"\n[database]\nurl = \"sqlite://{}\"\n",
            dir.path().join("never.db").display()
        ),
    )
    .expect("write config");
    for (var, value, key) in [
        ("HEARTH_RATE_LIMITS__ENABLED", "maybe", "enabled"),
        ("HEARTH_LISTEN", "not-an-address", "listen"),
        ("HEARTH_REGISTRATION__TOKNE", "x", "tokne"),
    ] {
        let mut cmd = hearth_command();
        cmd.args(["serve", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .env(var, value);
        let out = run_with_limit(cmd, Duration::from_secs(10));
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{var}={value} accepted");
        assert!(
            printed.contains(key),
            "{var}={value}: output does not name `{key}`:\n{printed}"
        );
        assert!(
            !dir.path().join("never.db").exists(),
            "{var}: a database was created"
        );
    }
}

/// Without `database.url`, the SQLite database lives in `data_dir`.
#[tokio::test]
async fn the_database_defaults_to_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let path = dir.path().join("min.toml");
    std::fs::write(
        &path,
        format!("server_name = \"min.example\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"store\"\n"),
    )
    .expect("write config");
    let mut child = hearth_command()
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hearth");
    wait_for_versions(&format!("http://127.0.0.1:{port}"), &mut child).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        dir.path().join("store").join("hearth.db").exists(),
        "no store/hearth.db"
    );
}

/// The generated config says the server name "cannot change later": starting on data made under
/// another name must be refused, naming `server_name`, instead of serving users it does not own.
#[tokio::test]
async fn a_changed_server_name_is_refused() {
    let mut server = common::Server::start().await;
    server.register("alice").await;
    server.stop().await;
    let config = server.dir().join("hearth.toml");
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(&config, text.replace(common::SERVER_NAME, "renamed.test")).expect("write config");
    let mut cmd = hearth_command();
    cmd.args(["serve", "--config"])
        .arg(&config)
        .current_dir(server.dir());
    let out = run_with_limit(cmd, Duration::from_secs(10));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "started under a new server_name");
    assert!(printed.contains("server_name"), "{printed}");
}
