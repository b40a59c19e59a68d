//! A small driver that runs a [`Device`] against a homeserver through any [`Transport`]
//! (the caller's HTTP client): upload keys, track device lists, claim keys, share room keys,
//! send and decrypt Megolm messages, sync. With the `http` feature, [`crate::http::ReqwestTransport`]
//! is a ready transport.

use std::future::Future;

use serde_json::{Value, json};

use crate::device::{DecryptedEvent, Device, SyncChanges};

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP {status} from {method} {path}: {body}")]
    Status {
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("transport: {0}")]
    Transport(String),
    #[error(transparent)]
    Device(#[from] crate::device::Error),
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

/// One authenticated JSON request to the homeserver: `path` starts with `/_matrix/`; returns the
/// JSON body of a 2xx answer, or an error.
pub trait Transport {
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> impl Future<Output = Result<Value, ClientError>> + Send;
}

const V3: &str = "/_matrix/client/v3";

/// Percent-encode one path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A [`Device`] and its transport, with the `/sync` position.
pub struct E2eeClient<T> {
    pub transport: T,
    pub device: Device,
    /// `next_batch` of the last sync.
    pub since: Option<String>,
    /// Random per driver, so transaction IDs never repeat across restarts of one device.
    txn_prefix: String,
    txn: u64,
}

/// A few random URL-safe characters (from vodozemac's CSPRNG, which also works on wasm).
fn random_token() -> String {
    let secret = vodozemac::Curve25519SecretKey::new();
    vodozemac::Curve25519PublicKey::from(&secret)
        .to_base64()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect()
}

impl<T: Transport + Sync> E2eeClient<T> {
    /// A new device for a logged-in session (`user_id`, `device_id` from `/login`).
    pub fn new(transport: T, user_id: &str, device_id: &str) -> Self {
        Self::with_device(transport, Device::new(user_id, device_id))
    }

    /// Drive an existing device (e.g. one restored with [`Device::unpickle`]).
    pub fn with_device(transport: T, device: Device) -> Self {
        E2eeClient {
            transport,
            device,
            since: None,
            txn_prefix: random_token(),
            txn: 0,
        }
    }

    fn txn_id(&mut self) -> String {
        self.txn += 1;
        format!("e2ee-{}-{}", self.txn_prefix, self.txn)
    }

    /// Upload the device keys, one-time keys (to the device's target) and a fallback key.
    /// Returns the server's `one_time_key_counts`.
    pub async fn upload_initial_keys(&mut self) -> Result<Value, ClientError> {
        let body = self.device.initial_keys_upload_body();
        self.upload(body).await
    }

    /// Upload `n` new one-time keys (and a new fallback key when `fallback`).
    pub async fn upload_keys(&mut self, n: usize, fallback: bool) -> Result<Value, ClientError> {
        let body = self.device.keys_upload_body(n, fallback);
        self.upload(body).await
    }

    async fn upload(&mut self, body: Value) -> Result<Value, ClientError> {
        let resp = self
            .transport
            .request("POST", &format!("{V3}/keys/upload"), Some(&body))
            .await?;
        self.device.mark_keys_as_published();
        Ok(resp.get("one_time_key_counts").cloned().unwrap_or(json!({})))
    }

    /// Query the device keys of the tracked users whose lists are stale (plus `users`, which
    /// become tracked). Returns what the device refused.
    pub async fn refresh_devices(&mut self, users: &[String]) -> Result<SyncChanges, ClientError> {
        self.device.track_users(users.iter().map(String::as_str));
        let stale = self.device.stale_users();
        if stale.is_empty() {
            return Ok(SyncChanges::default());
        }
        let body = Device::keys_query_body(&stale);
        let resp = self
            .transport
            .request("POST", &format!("{V3}/keys/query"), Some(&body))
            .await?;
        let (changes, _refused) = self.device.receive_keys_query(&resp);
        Ok(changes)
    }

    /// The joined members of a room.
    pub async fn joined_members(&self, room_id: &str) -> Result<Vec<String>, ClientError> {
        let resp = self
            .transport
            .request(
                "GET",
                &format!("{V3}/rooms/{}/joined_members", enc(room_id)),
                None,
            )
            .await?;
        let joined = resp
            .get("joined")
            .and_then(Value::as_object)
            .ok_or_else(|| ClientError::Unexpected("no joined in /joined_members".into()))?;
        Ok(joined.keys().cloned().collect())
    }

    /// Make sure every device of the room's members holds the current room key: refresh stale
    /// device lists, claim keys for devices without an Olm session, send `m.room_key`. Returns
    /// the refusals of the claim step.
    pub async fn share_room_key(&mut self, room_id: &str) -> Result<Vec<String>, ClientError> {
        let members = self.joined_members(room_id).await?;
        self.refresh_devices(&members).await?;
        let mut refused = Vec::new();
        if let Some(claim) = self.device.keys_claim_body(&members) {
            let resp = self
                .transport
                .request("POST", &format!("{V3}/keys/claim"), Some(&claim))
                .await?;
            refused = self.device.receive_keys_claim(&resp);
        }
        if let Some(body) = self.device.share_room_key(room_id, &members)? {
            let path = format!("{V3}/sendToDevice/m.room.encrypted/{}", enc(&self.txn_id()));
            self.transport.request("PUT", &path, Some(&body)).await?;
        }
        Ok(refused)
    }

    /// Share the room key as needed, then send an encrypted event; returns its event ID.
    pub async fn send_encrypted(
        &mut self,
        room_id: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<String, ClientError> {
        self.share_room_key(room_id).await?;
        let encrypted = self.device.encrypt_room_event(room_id, event_type, content)?;
        self.send_raw(room_id, &encrypted).await
    }

    /// Send an already encrypted `m.room.encrypted` content; returns the event ID.
    pub async fn send_raw(&mut self, room_id: &str, encrypted: &Value) -> Result<String, ClientError> {
        let path = format!(
            "{V3}/rooms/{}/send/m.room.encrypted/{}",
            enc(room_id),
            enc(&self.txn_id())
        );
        let resp = self.transport.request("PUT", &path, Some(encrypted)).await?;
        resp.get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Unexpected("no event_id".into()))
    }

    /// One `/sync` (long-poll `timeout_ms` once there is a position): feed it to the device,
    /// refresh stale device lists (which may release waiting room keys) and top up one-time /
    /// fallback keys. Returns the raw response and the merged changes.
    pub async fn sync_once(&mut self, timeout_ms: u64) -> Result<(Value, SyncChanges), ClientError> {
        let path = match &self.since {
            Some(s) => format!("{V3}/sync?since={}&timeout={timeout_ms}", enc(s)),
            None => format!("{V3}/sync?timeout=0"),
        };
        let resp = self.transport.request("GET", &path, None).await?;
        let mut changes = self.device.receive_sync(&resp);
        if let Some(next) = resp.get("next_batch").and_then(Value::as_str) {
            self.since = Some(next.to_owned());
        }
        if !self.device.stale_users().is_empty() {
            let more = self.refresh_devices(&[]).await?;
            changes.room_keys.extend(more.room_keys);
            changes.to_device.extend(more.to_device);
            changes.failures.extend(more.failures);
        }
        if changes.one_time_keys_to_upload > 0 || changes.fallback_key_needed {
            self.upload_keys(changes.one_time_keys_to_upload, changes.fallback_key_needed)
                .await?;
        }
        Ok((resp, changes))
    }

    /// Decrypt an `m.room.encrypted` timeline event of `room_id`.
    pub fn decrypt(&mut self, room_id: &str, event: &Value) -> Result<DecryptedEvent, ClientError> {
        Ok(self.device.decrypt_room_event(room_id, event)?)
    }
}
