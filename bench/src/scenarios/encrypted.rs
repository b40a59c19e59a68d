//! `encrypted`: an end-to-end encrypted room (`hearth-e2ee` devices on vodozemac). Every sender
//! shares its Megolm room key with every receiver's device (Olm to-device messages), then sends
//! Megolm-encrypted messages at a fixed total rate; receivers long-poll /sync and decrypt.
//!
//! The client's cryptography is measured apart from the server: `megolm_encrypt` and
//! `megolm_decrypt` are the devices' CPU time per message; `delivery_latency` runs from just
//! before the PUT (after encryption) to the arrival of the /sync response that carries the event
//! (before decryption), read from a stamp kept outside the ciphertext; `room_key_share` is one
//! sender's /keys/query + /keys/claim + /sendToDevice round for all receiver devices.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hearth_e2ee::http::ReqwestTransport;
use hearth_e2ee::{E2eeClient, Transport};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{Ctx, Start, bounded, finish_process};
use crate::matrix::{User, now_micros};
use crate::report::{Better, Report, ms};

#[derive(Args, Debug, Clone)]
pub struct EncryptedArgs {
    /// Sending users (one device each); messages are spread round-robin over them.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Receiving users (one device each), all in the one encrypted room.
    #[arg(long, default_value_t = 4)]
    pub receivers: usize,
    /// Total messages per second over all senders.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to send, seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// After sending stops, how long to wait for the last deliveries, seconds.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Long-poll timeout of the receivers' /sync, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub poll_timeout_ms: u64,
}

type Device = E2eeClient<ReqwestTransport>;

/// Most encrypted PUTs in flight at once.
const MAX_IN_FLIGHT: usize = 64;

#[derive(Default)]
struct Received {
    delivery_ms: Vec<f64>,
    decrypt_ms: Vec<f64>,
    duplicates: u64,
    undecryptable: u64,
    sync_errors: u64,
    first_error: Option<String>,
}

/// A device for `user` with its keys uploaded.
async fn new_device(ctx: &Ctx, user: &User) -> Result<Device> {
    let transport = ctx.api.e2ee_transport(&user.access_token);
    let mut d = E2eeClient::new(transport, &user.user_id, &user.device_id);
    d.device.set_one_time_key_target(20);
    d.upload_initial_keys()
        .await
        .map_err(|e| anyhow!("{e}"))
        .context("POST /keys/upload")?;
    Ok(d)
}

pub async fn run(ctx: &Ctx, args: &EncryptedArgs, report: &mut Report) -> Result<()> {
    if args.senders == 0 || args.receivers == 0 {
        bail!("--senders and --receivers must be at least 1");
    }
    if !(args.rate > 0.0 && args.rate <= 10_000.0) || args.receivers > 1_000 || args.senders > 100 {
        bail!("--rate must be in (0, 10000], --receivers at most 1000, --senders at most 100");
    }
    let senders = ctx.register_users("es", args.senders).await?;
    let receivers = ctx.register_users("er", args.receivers).await?;
    let room = ctx
        .api
        .create_encrypted_room(&senders[0].access_token, "bench encrypted")
        .await?;
    let joins = senders[1..]
        .iter()
        .chain(&receivers)
        .map(|u| (u.clone(), room.clone()))
        .collect();
    ctx.join_all(joins).await?;

    // Devices: keys uploaded, receivers positioned at the end of their /sync stream.
    let all: Vec<User> = senders.iter().chain(&receivers).cloned().collect();
    let devices = {
        let (c, all) = (ctx.clone(), Arc::new(all));
        bounded(all.len(), ctx.setup_concurrency, move |i| {
            let (c, all) = (c.clone(), all.clone());
            async move {
                let mut d = new_device(&c, &all[i]).await?;
                d.sync_once(0).await.map_err(|e| anyhow!("initial /sync: {e}"))?;
                Ok(d)
            }
        })
        .await?
    };
    let mut devices = devices.into_iter();
    let mut sender_devices: Vec<Device> = devices.by_ref().take(senders.len()).collect();
    let receiver_devices: Vec<Device> = devices.collect();

    let monitor = ctx.monitor()?;
    let cpu0 = Start::now(ctx);

    // Receivers: long-poll, record arrival, then decrypt (timed apart).
    let received = Arc::new(Mutex::new(Received::default()));
    let deliveries = Arc::new(AtomicU64::new(0));
    let mut polls = JoinSet::new();
    for mut d in receiver_devices {
        let (received, deliveries) = (received.clone(), deliveries.clone());
        let (room, run_id, poll_ms) = (room.clone(), ctx.run_id.clone(), args.poll_timeout_ms);
        polls.spawn(async move {
            let mut seen = HashSet::new();
            // Events whose room key has not arrived yet: (event, arrival µs).
            let mut waiting: Vec<(Value, u64)> = Vec::new();
            loop {
                let path = format!(
                    "/_matrix/client/v3/sync?since={}&timeout={poll_ms}",
                    urlencode(d.since.as_deref().unwrap_or_default())
                );
                let resp = d.transport.request("GET", &path, None).await;
                let now = now_micros();
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => {
                        {
                            let mut rx = received.lock().expect("lock");
                            rx.sync_errors += 1;
                            rx.first_error.get_or_insert(e.to_string());
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                d.device.receive_sync(&resp);
                if let Some(next) = resp["next_batch"].as_str() {
                    d.since = Some(next.to_owned());
                }
                if !d.device.stale_users().is_empty() {
                    let _ = d.refresh_devices(&[]).await;
                }
                let events = resp["rooms"]["join"][&room]["timeline"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                waiting.extend(
                    events
                        .into_iter()
                        .filter(|e| e["type"] == "m.room.encrypted")
                        .filter(|e| e["content"]["hearth_bench"]["run"] == json!(run_id))
                        .map(|e| (e, now)),
                );
                let mut rx = received.lock().expect("lock");
                waiting.retain(|(ev, arrived)| {
                    let stamp = &ev["content"]["hearth_bench"];
                    let (Some(seq), Some(sent_at)) = (stamp["seq"].as_u64(), stamp["sent_at_us"].as_u64())
                    else {
                        return false;
                    };
                    let t = Instant::now();
                    match d.device.decrypt_room_event(&room, ev) {
                        Ok(m) => {
                            rx.decrypt_ms.push(ms(t.elapsed()));
                            if m.content["seq"].as_u64() != Some(seq) {
                                rx.undecryptable += 1;
                                rx.first_error
                                    .get_or_insert("decrypted seq differs from the stamp".into());
                            } else if seen.insert(seq) {
                                rx.delivery_ms
                                    .push(arrived.saturating_sub(sent_at) as f64 / 1000.0);
                                deliveries.fetch_add(1, Ordering::Relaxed);
                            } else {
                                rx.duplicates += 1;
                            }
                            false
                        }
                        // The room key may still be on its way (to-device).
                        Err(hearth_e2ee::Error::UnknownMegolmSession { .. }) => true,
                        Err(e) => {
                            rx.undecryptable += 1;
                            rx.first_error.get_or_insert(e.to_string());
                            false
                        }
                    }
                });
            }
        });
    }

    // Room keys: each sender claims Olm sessions with every receiver device and sends m.room_key.
    let mut share_ms = Vec::new();
    for d in sender_devices.iter_mut() {
        let t = Instant::now();
        let refused = d
            .share_room_key(&room)
            .await
            .map_err(|e| anyhow!("sharing the room key: {e}"))?;
        share_ms.push(ms(t.elapsed()));
        if !refused.is_empty() {
            report.note(format!("claimed keys refused: {refused:?}"));
        }
    }

    // Sending at a fixed total rate: each message is encrypted by its sender's device (timed
    // apart), then PUT concurrently (at most `MAX_IN_FLIGHT`; a tick finding none free is
    // skipped and counted).
    let put_ms = Arc::new(Mutex::new(Vec::new()));
    let send_errors = Arc::new(AtomicU64::new(0));
    let first_send_error: Arc<Mutex<Option<String>>> = Arc::default();
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut sends = JoinSet::new();
    let mut encrypt_ms = Vec::new();
    let mut skipped = 0u64;
    let start = Instant::now();
    let total = (args.rate * args.duration as f64).round() as u64;
    let room_path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.encrypted",
        urlencode(&room)
    );
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let n = sender_devices.len();
        let d = &mut sender_devices[seq as usize % n];
        let content =
            json!({"msgtype": "m.text", "body": format!("hearth-bench encrypted #{seq}"), "seq": seq});
        if d.device.encrypt_room_event_would_rotate(&room) {
            // The session reached rotation_period_msgs: share a new one (timed as a share).
            let t = Instant::now();
            d.share_room_key(&room)
                .await
                .map_err(|e| anyhow!("sharing a new room key: {e}"))?;
            share_ms.push(ms(t.elapsed()));
        }
        let t = Instant::now();
        let mut encrypted = d
            .device
            .encrypt_room_event(&room, "m.room.message", &content)
            .map_err(|e| anyhow!("encrypting: {e}"))?;
        encrypt_ms.push(ms(t.elapsed()));
        encrypted["hearth_bench"] = json!({"run": ctx.run_id, "seq": seq, "sent_at_us": now_micros()});
        let transport = d.transport.clone();
        let path = format!("{room_path}/hbe{}-{seq}", ctx.run_id);
        let (lat, errs, first) = (put_ms.clone(), send_errors.clone(), first_send_error.clone());
        sends.spawn(async move {
            let t = Instant::now();
            match transport.request("PUT", &path, Some(&encrypted)).await {
                Ok(_) => lat.lock().expect("lock").push(ms(t.elapsed())),
                Err(e) => {
                    errs.fetch_add(1, Ordering::Relaxed);
                    first.lock().expect("lock").get_or_insert(e.to_string());
                }
            }
            drop(permit);
        });
    }
    while let Some(r) = sends.join_next().await {
        r?;
    }
    let put_ms = std::mem::take(&mut *put_ms.lock().expect("lock"));
    let send_errors = send_errors.load(Ordering::Relaxed);
    let first_send_error = first_send_error.lock().expect("lock").take();
    let send_elapsed = start.elapsed();
    let sent = put_ms.len() as u64;
    let expected = sent * args.receivers as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain);
    while deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    polls.abort_all();
    while polls.join_next().await.is_some() {}

    let rx = std::mem::take(&mut *received.lock().expect("lock"));
    report.push("messages_sent", sent as f64, "msgs", Better::None);
    report.push(
        "send_rate_achieved",
        sent as f64 / send_elapsed.as_secs_f64(),
        "msg/s",
        Better::Higher,
    );
    report.push("ticks_skipped", skipped as f64, "msgs", Better::Lower);
    report.push("send_errors", send_errors as f64, "reqs", Better::Lower);
    report.push("deliveries", rx.delivery_ms.len() as f64, "", Better::None);
    report.push(
        "missing_deliveries",
        expected.saturating_sub(rx.delivery_ms.len() as u64) as f64,
        "",
        Better::Lower,
    );
    report.push("undecryptable", rx.undecryptable as f64, "", Better::Lower);
    report.push("duplicate_deliveries", rx.duplicates as f64, "", Better::Lower);
    report.push("sync_errors", rx.sync_errors as f64, "reqs", Better::Lower);
    report.push_latency("delivery_latency", &rx.delivery_ms);
    report.push_latency("put_latency", &put_ms);
    report.push_latency("room_key_share", &share_ms);
    report.push_latency("megolm_encrypt", &encrypt_ms);
    report.push_latency("megolm_decrypt", &rx.decrypt_ms);
    if let Some(e) = first_send_error {
        report.note(format!("first send error: {e}"));
    }
    if let Some(e) = rx.first_error {
        report.note(format!("first receive error: {e}"));
    }
    report.note("requests_total does not count the e2ee devices' requests (own transport)");
    finish_process(report, ctx, monitor, "server", &cpu0)?;
    Ok(())
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
