//! `e2ee-interop`: an end-to-end encrypted conversation between a user on one homeserver and a
//! user on another, driven over their Client-Server APIs with `hearth-e2ee` devices, for
//! federation interop runs (`scripts/federation-interop.sh`).
//!
//! ```text
//! e2ee-interop --a http://127.0.0.1:8008 --b http://127.0.0.1:8009 [--room-version 12] [--prefix run1]
//! ```
//!
//! Alice registers on A and creates a Megolm room of the given version; Bob registers on B and
//! joins it over federation. Then, each a step: keys uploaded; a message each way (device keys
//! queried and one-time keys claimed across servers, the room key sent by Olm to-device); Bob
//! logs in a second device, Alice's `/sync` names him in `device_lists.changed`, her next room key
//! reaches that device; the same for a second device of Alice's; each deletes the second device
//! and the other side's view drops it (the next message goes out under a new session); Bob logs
//! out his last device and Alice's view of him empties. The run stops at the first failing step.
//! Prints one JSON object on stdout: `{"ok", "room_version", "room_id", "steps": [{"name", "ok",
//! "ms", "error"?}]}`; logs (`tracing`, `RUST_LOG`) go to stderr. Exit status 0 when every step
//! passed, 1 otherwise, 2 on bad arguments.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use hearth_e2ee::{
    ClientError, DecryptedEvent, E2eeClient, MEGOLM_ALGORITHM, Transport, http::ReqwestTransport,
};
use serde_json::{Value, json};

const PASSWORD: &str = "e2ee-interop-password-1";
/// How long one step waits for the other server (device-list resyncs, to-device delivery).
const STEP_WAIT: Duration = Duration::from_secs(30);

type Dev = E2eeClient<ReqwestTransport>;
type Res<T> = Result<T, String>;

/// A logged-in session: one user's device on one server.
#[derive(Clone)]
struct Session {
    user_id: String,
    device_id: String,
    transport: ReqwestTransport,
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An unauthenticated request: (status, JSON body).
async fn call(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> Res<(u16, Value)> {
    let resp = http
        .request(method, format!("{base}/_matrix/client/v3{path}"))
        .json(body)
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn session_from(http: &reqwest::Client, base: &str, login: &Value) -> Res<Session> {
    let field = |name: &str| {
        login[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no {name} in {login}"))
    };
    let token = field("access_token")?;
    Ok(Session {
        user_id: field("user_id")?,
        device_id: field("device_id")?,
        transport: ReqwestTransport::new(http.clone(), base, &token),
    })
}

/// Registers `localpart` with the dummy flow (answering the UIA session when the server asks).
async fn register(http: &reqwest::Client, base: &str, localpart: &str) -> Res<Session> {
    let mut body =
        json!({ "username": localpart, "password": PASSWORD, "auth": { "type": "m.login.dummy" } });
    let (mut status, mut out) = call(http, base, reqwest::Method::POST, "/register", &body).await?;
    if status == 401
        && let Some(session) = out["session"].as_str()
    {
        body["auth"]["session"] = json!(session);
        (status, out) = call(http, base, reqwest::Method::POST, "/register", &body).await?;
    }
    if status != 200 {
        return Err(format!("register {localpart} on {base}: {status} {out}"));
    }
    session_from(http, base, &out)
}

/// A new device of `user` (password login).
async fn login(http: &reqwest::Client, base: &str, user_id: &str) -> Res<Session> {
    let body = json!({ "type": "m.login.password", "password": PASSWORD,
                       "identifier": { "type": "m.id.user", "user": user_id } });
    let (status, out) = call(http, base, reqwest::Method::POST, "/login", &body).await?;
    if status != 200 {
        return Err(format!("login {user_id}: {status} {out}"));
    }
    session_from(http, base, &out)
}

impl Session {
    async fn req(&self, method: &str, path: &str, body: Option<&Value>) -> Res<Value> {
        self.transport
            .request(method, &format!("/_matrix/client/v3{path}"), body)
            .await
            .map_err(|e| e.to_string())
    }

    /// Deletes `device_id` of this user, answering the password challenge.
    async fn delete_device(&self, device_id: &str) -> Res<()> {
        let path = format!("/_matrix/client/v3/devices/{}", enc(device_id));
        let session = match self.transport.request("DELETE", &path, Some(&json!({}))).await {
            Ok(_) => return Ok(()),
            // The 401 carries the user-interactive auth session.
            Err(ClientError::Status {
                status: 401, body, ..
            }) => serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|c| c["session"].as_str().map(str::to_owned))
                .ok_or_else(|| format!("no UIA session in the device deletion's 401: {body}"))?,
            Err(e) => return Err(e.to_string()),
        };
        let auth = json!({ "auth": { "type": "m.login.password", "password": PASSWORD, "session": session,
                                     "identifier": { "type": "m.id.user", "user": self.user_id } } });
        self.transport
            .request("DELETE", &path, Some(&auth))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn joined(&self, room_id: &str) -> Res<Vec<String>> {
        let out = self
            .req("GET", &format!("/rooms/{}/joined_members", enc(room_id)), None)
            .await?;
        Ok(out["joined"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }
}

/// A device for `s`: keys uploaded, positioned in `/sync`.
async fn device(s: &Session) -> Res<Dev> {
    let mut d = E2eeClient::new(s.transport.clone(), &s.user_id, &s.device_id);
    d.device.set_one_time_key_target(5);
    d.upload_initial_keys().await.map_err(|e| e.to_string())?;
    d.sync_once(0).await.map_err(|e| e.to_string())?;
    Ok(d)
}

async fn sync(d: &mut Dev) -> Res<(Value, hearth_e2ee::SyncChanges)> {
    d.sync_once(1000).await.map_err(|e: ClientError| e.to_string())
}

/// Shares the room key (reporting refused claims) and sends an encrypted text; checks that
/// every device in `expect` got the room key. Returns the event ID.
async fn send(d: &mut Dev, room_id: &str, body: &str, expect: &[(&str, &str)]) -> Res<String> {
    let refused = d.share_room_key(room_id).await.map_err(|e| e.to_string())?;
    let recipients = d.device.room_key_recipients(room_id);
    for (user, device) in expect {
        if !recipients.iter().any(|(u, dv)| u == user && dv == device) {
            return Err(format!(
                "the room key did not go to {user} {device} (recipients {recipients:?}, refused claims {refused:?})"
            ));
        }
    }
    d.send_encrypted(
        room_id,
        "m.room.message",
        &json!({ "msgtype": "m.text", "body": body }),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Syncs `d` until `event_id` shows in the room's timeline and decrypts to `body`.
async fn receive(d: &mut Dev, room_id: &str, event_id: &str, body: &str) -> Res<DecryptedEvent> {
    let deadline = Instant::now() + STEP_WAIT;
    let mut event: Option<Value> = None;
    let mut last = String::from("the event never came");
    while Instant::now() < deadline {
        let (resp, changes) = sync(d).await?;
        if event.is_none() {
            event = resp["rooms"]["join"][room_id]["timeline"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["event_id"] == event_id)
                .cloned();
        }
        if let Some(e) = &event {
            match d.decrypt(room_id, e) {
                Ok(got) if got.content["body"] == body => return Ok(got),
                Ok(got) => return Err(format!("decrypted to {}, expected {body:?}", got.content)),
                Err(error) => last = format!("{error} (to-device failures: {:?})", changes.failures),
            }
        }
    }
    Err(format!(
        "{} did not decrypt {event_id}: {last}",
        d.device.user_id()
    ))
}

/// Syncs `d` until `device_lists.changed` named `user` and `d` knows exactly `expected` as
/// `user`'s devices (the driver queries stale lists itself).
async fn until_devices(d: &mut Dev, user: &str, expected: &[&str]) -> Res<()> {
    let deadline = Instant::now() + STEP_WAIT;
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    let mut told = false;
    let mut known = Vec::new();
    while Instant::now() < deadline {
        let (resp, _) = sync(d).await?;
        told |= resp["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == user));
        known = d
            .device
            .devices_of(user)
            .into_iter()
            .map(|k| k.device_id)
            .collect();
        known.sort();
        if told && known == expected {
            return Ok(());
        }
    }
    Err(format!(
        "{}: {user}'s devices never became {expected:?} (named in device_lists.changed: {told}; known {known:?})",
        d.device.user_id()
    ))
}

/// The steps run so far.
#[derive(Default)]
struct Report {
    steps: Vec<Value>,
    failed: bool,
}

impl Report {
    /// Runs one step unless an earlier one failed; records its outcome.
    async fn step<T>(&mut self, name: &str, fut: impl Future<Output = Res<T>>) -> Option<T> {
        if self.failed {
            return None;
        }
        let started = Instant::now();
        let outcome = fut.await;
        let ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(v) => {
                tracing::info!(step = name, ms, "passed");
                self.steps.push(json!({ "name": name, "ok": true, "ms": ms }));
                Some(v)
            }
            Err(error) => {
                tracing::warn!(step = name, ms, %error, "failed");
                self.steps
                    .push(json!({ "name": name, "ok": false, "ms": ms, "error": error }));
                self.failed = true;
                None
            }
        }
    }
}

struct Args {
    a: String,
    b: String,
    room_version: String,
    prefix: String,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut a, mut b, mut room_version, mut prefix) = (None, None, "12".to_owned(), None);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--a" => a = Some(value()?),
            "--b" => b = Some(value()?),
            "--room-version" => room_version = value()?,
            "--prefix" => prefix = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let trim = |s: String| s.trim_end_matches('/').to_owned();
    Ok(Args {
        a: trim(a.ok_or("--a URL is required")?),
        b: trim(b.ok_or("--b URL is required")?),
        room_version,
        prefix: prefix.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            format!("{:x}{nanos:x}", std::process::id())
        }),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "e2ee-interop: {e}\nusage: e2ee-interop --a URL --b URL [--room-version V] [--prefix P]"
            );
            return ExitCode::from(2);
        }
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");
    let mut r = Report::default();
    let room_id = run(&http, &args, &mut r).await;
    let out = json!({
        "ok": !r.failed,
        "room_version": args.room_version,
        "room_id": room_id,
        "steps": r.steps,
    });
    println!("{out}");
    if r.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The whole exchange; returns the room ID once there is one.
async fn run(http: &reqwest::Client, args: &Args, r: &mut Report) -> Option<String> {
    let (p, v) = (&args.prefix, &args.room_version);
    let (alice, bob) = r
        .step("register alice on A and bob on B", async {
            let alice = register(http, &args.a, &format!("e2ee-alice-{p}-v{v}")).await?;
            let bob = register(http, &args.b, &format!("e2ee-bob-{p}-v{v}")).await?;
            Ok((alice, bob))
        })
        .await?;
    let a_server = alice.user_id.split_once(':').map(|(_, s)| s.to_owned())?;
    let room_id = r
        .step(
            &format!("alice creates a v{v} Megolm room, bob joins over federation"),
            async {
                let created = alice
                    .req(
                        "POST",
                        "/createRoom",
                        Some(&json!({
                            "room_version": v, "preset": "public_chat", "name": format!("e2ee interop v{v}"),
                            "initial_state": [{ "type": "m.room.encryption", "state_key": "",
                                                "content": { "algorithm": MEGOLM_ALGORITHM } }],
                        })),
                    )
                    .await?;
                let room_id = created["room_id"].as_str().ok_or("no room_id")?.to_owned();
                let via = enc(&a_server);
                bob.req(
                    "POST",
                    &format!("/join/{}?server_name={via}&via={via}", enc(&room_id)),
                    Some(&json!({})),
                )
                .await?;
                let deadline = Instant::now() + STEP_WAIT;
                while !alice.joined(&room_id).await?.contains(&bob.user_id) {
                    if Instant::now() > deadline {
                        return Err("alice's server never saw bob join".into());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(room_id)
            },
        )
        .await?;
    let room = room_id.as_str();
    let result = conversation(http, args, r, &alice, &bob, room).await;
    if result.is_none() {
        tracing::warn!(room, "stopped at the first failing step");
    }
    Some(room_id)
}

async fn conversation(
    http: &reqwest::Client,
    args: &Args,
    r: &mut Report,
    alice: &Session,
    bob: &Session,
    room: &str,
) -> Option<()> {
    let (mut a1, mut b1) = r
        .step("device keys and one-time keys uploaded", async {
            Ok((device(alice).await?, device(bob).await?))
        })
        .await?;
    let (au, bu) = (alice.user_id.as_str(), bob.user_id.as_str());
    let (ad, bd) = (alice.device_id.as_str(), bob.device_id.as_str());

    r.step(
        "megolm alice → bob (keys queried and claimed over federation)",
        async {
            let id = send(&mut a1, room, "hello bob", &[(bu, bd)]).await?;
            let got = receive(&mut b1, room, &id, "hello bob").await?;
            (got.sender_device == ad)
                .then_some(())
                .ok_or_else(|| format!("sender device {}", got.sender_device))
        },
    )
    .await?;
    r.step("megolm bob → alice", async {
        let id = send(&mut b1, room, "hello alice", &[(au, ad)]).await?;
        receive(&mut a1, room, &id, "hello alice").await.map(|_| ())
    })
    .await?;

    // Bob's second device: a device-list update from B to A.
    let (bob2, mut b2) = r
        .step(
            "bob's new device shows in alice's device_lists and key query",
            async {
                let bob2 = login(http, &args.b, bu).await?;
                let b2 = device(&bob2).await?;
                until_devices(&mut a1, bu, &[bd, &bob2.device_id]).await?;
                Ok((bob2, b2))
            },
        )
        .await?;
    let b2d = bob2.device_id.clone();
    r.step("alice's next room key reaches bob's new device", async {
        let id = send(&mut a1, room, "hello both of you", &[(bu, bd), (bu, &b2d)]).await?;
        receive(&mut b2, room, &id, "hello both of you").await?;
        receive(&mut b1, room, &id, "hello both of you").await.map(|_| ())
    })
    .await?;

    // Alice's second device: a device-list update from A to B.
    let (alice2, mut a2) = r
        .step(
            "alice's new device shows in bob's device_lists and key query",
            async {
                let alice2 = login(http, &args.a, au).await?;
                let a2 = device(&alice2).await?;
                until_devices(&mut b1, au, &[ad, &alice2.device_id]).await?;
                Ok((alice2, a2))
            },
        )
        .await?;
    let a2d = alice2.device_id.clone();
    r.step("bob's next room key reaches alice's new device", async {
        let id = send(&mut b1, room, "hello alice's devices", &[(au, ad), (au, &a2d)]).await?;
        receive(&mut a2, room, &id, "hello alice's devices").await?;
        receive(&mut a1, room, &id, "hello alice's devices")
            .await
            .map(|_| ())
    })
    .await?;

    r.step("bob deletes his new device: alice drops it and rotates", async {
        let before = a1.device.outbound_session_id(room);
        bob.delete_device(&b2d).await?;
        until_devices(&mut a1, bu, &[bd]).await?;
        let id = send(&mut a1, room, "only your first device", &[(bu, bd)]).await?;
        if a1.device.outbound_session_id(room) == before {
            return Err("the session shared with the deleted device was kept".into());
        }
        if a1.device.room_key_recipients(room).iter().any(|(_, d)| *d == b2d) {
            return Err("the deleted device got the new room key".into());
        }
        receive(&mut b1, room, &id, "only your first device")
            .await
            .map(|_| ())
    })
    .await?;
    r.step("alice deletes her new device: bob drops it and rotates", async {
        let before = b1.device.outbound_session_id(room);
        alice.delete_device(&a2d).await?;
        until_devices(&mut b1, au, &[ad]).await?;
        let id = send(&mut b1, room, "only your first device either", &[(au, ad)]).await?;
        if b1.device.outbound_session_id(room) == before {
            return Err("the session shared with the deleted device was kept".into());
        }
        receive(&mut a1, room, &id, "only your first device either")
            .await
            .map(|_| ())
    })
    .await?;
    r.step(
        "bob logs out his last device: alice's view of him empties",
        async {
            bob.req("POST", "/logout", Some(&json!({}))).await?;
            until_devices(&mut a1, bu, &[]).await
        },
    )
    .await?;
    Some(())
}
