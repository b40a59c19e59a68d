//! A client-side Matrix device on vodozemac, sans-IO.
//!
//! [`Device`] produces request bodies (`/keys/upload`, `/keys/query`, `/keys/claim`,
//! `/sendToDevice`, the content of `m.room.encrypted` room events) as [`serde_json::Value`] and
//! consumes the server's answers and `/sync` sections. It never does I/O itself: the caller owns
//! the transport (see [`crate::client`] for a transport-generic driver).
//!
//! Trust rules it follows (spec §"End-to-End Encryption"):
//! * device keys are used only when self-signed by the device, for the user and device ID they
//!   claim, and a device ID whose ed25519 key changes is ignored;
//! * claimed one-time and fallback keys (`signed_curve25519`) are used only when signed by the
//!   device's verified ed25519 key;
//! * a decrypted Olm payload must name this device (`recipient`, `recipient_keys.ed25519`), and
//!   its `sender` / `keys.ed25519` must match the to-device event's sender and the device that
//!   owns `sender_key`; payloads from a device not yet known wait until its keys are queried;
//! * a Megolm plaintext whose `room_id` differs from the event's room is refused, as is a
//!   message index replayed under another event ID;
//! * the outbound Megolm session of a room is replaced when a device it was shared with is
//!   deleted or its user is no longer a member.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::CanonicalJsonObject;
use ruma::signatures::to_canonical_json_string_for_signing;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle, MegolmMessage,
    SessionConfig as MegolmConfig, SessionKey,
};
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

use crate::verify::verify_signed_json;

/// The Olm algorithm name.
pub const OLM_ALGORITHM: &str = "m.olm.v1.curve25519-aes-sha2";
/// The Megolm algorithm name.
pub const MEGOLM_ALGORITHM: &str = "m.megolm.v1.aes-sha2";
/// The one-time key algorithm clients upload and claim.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// The spec's default `rotation_period_msgs` of `m.room.encryption`.
pub const DEFAULT_ROTATION_PERIOD_MSGS: u64 = 100;

/// Olm sessions kept per peer identity key (older ones are dropped).
const MAX_SESSIONS_PER_PEER: usize = 8;
/// Olm payloads waiting for their sender's device keys.
const MAX_PENDING: usize = 256;
/// Size of the per-session replay table (message index -> event ID).
const MAX_REPLAY_ENTRIES: usize = 10_000;

/// Why the device refused something.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("malformed input: {0}")]
    Malformed(String),
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error("the Olm message is not addressed to this device")]
    NotForThisDevice,
    #[error("no Olm session decrypts the message: {0}")]
    OlmDecryption(String),
    #[error("the Olm payload does not match its envelope: {0}")]
    PayloadMismatch(String),
    #[error("no Megolm session {session_id} for this room and sender")]
    UnknownMegolmSession { session_id: String },
    #[error("Megolm decryption failed: {0}")]
    MegolmDecryption(String),
    #[error("the Megolm plaintext names room {found}, the event is in {expected}")]
    RoomMismatch { expected: String, found: String },
    #[error("message index {0} was already used by another event (replay)")]
    Replay(u32),
    #[error("no outbound Megolm session for room {0}: share the room key first")]
    NoOutboundSession(String),
    #[error("pickle: {0}")]
    Pickle(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// Canonical JSON of `value` without `signatures` and `unsigned`: what gets signed.
fn signable(value: &Value) -> Result<String> {
    let object: CanonicalJsonObject =
        serde_json::from_value(value.clone()).map_err(|e| malformed(e.to_string()))?;
    to_canonical_json_string_for_signing(&object).map_err(|e| malformed(e.to_string()))
}

/// Another device's verified public keys (from `/keys/query`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    pub user_id: String,
    pub device_id: String,
    /// Unpadded base64.
    pub curve25519: String,
    /// Unpadded base64.
    pub ed25519: String,
}

/// A Megolm-decrypted room event.
#[derive(Debug, Clone, PartialEq)]
pub struct DecryptedEvent {
    /// The plaintext `type`.
    pub event_type: String,
    /// The plaintext `content`.
    pub content: Value,
    /// The sender's device, as named by the room key's verified Olm payload.
    pub sender_device: String,
    /// The Megolm message index.
    pub message_index: u32,
}

/// A decrypted to-device event other than `m.room_key` (which the device consumes).
#[derive(Debug, Clone, PartialEq)]
pub struct DecryptedToDevice {
    pub sender: String,
    pub sender_device: String,
    pub event_type: String,
    pub content: Value,
}

/// What one `/sync` response changed for the device.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SyncChanges {
    /// Room keys received: (room ID, session ID).
    pub room_keys: Vec<(String, String)>,
    /// Other decrypted to-device events.
    pub to_device: Vec<DecryptedToDevice>,
    /// Encrypted to-device events that could not be used, with the reason.
    pub failures: Vec<String>,
    /// One-time keys to generate and upload now to get back to the target count.
    pub one_time_keys_to_upload: usize,
    /// The server has no unused fallback key of ours: upload a new one.
    pub fallback_key_needed: bool,
}

struct OutboundGroup {
    session: GroupSession,
    /// Messages encrypted with it.
    messages: u64,
    /// (user, device, curve25519) the current session was shared with.
    shared_with: BTreeSet<(String, String, String)>,
}

struct InboundGroup {
    session: InboundGroupSession,
    room_id: String,
    sender: String,
    sender_device: String,
    sender_key: String,
    /// message index -> event ID, for replay detection.
    seen: BTreeMap<u32, String>,
}

/// An Olm payload decrypted but waiting for the sender's device keys.
#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    sender: String,
    sender_key: String,
    payload: Value,
}

/// A Matrix end-to-end encryption device: Olm account, Olm sessions, Megolm sessions and the
/// verified device keys of others.
pub struct Device {
    user_id: String,
    device_id: String,
    account: Account,
    device_keys_uploaded: bool,
    /// One-time keys the device keeps on the server.
    one_time_key_target: usize,
    /// Messages after which an outbound Megolm session is replaced.
    rotation_period_msgs: u64,
    /// Peer curve25519 key -> sessions, most recently used first.
    olm_sessions: HashMap<String, Vec<Session>>,
    /// user -> device -> verified keys.
    devices: BTreeMap<String, BTreeMap<String, DeviceKeys>>,
    /// Users whose device lists we track, and those whose lists are stale.
    tracked: BTreeSet<String>,
    stale: BTreeSet<String>,
    outbound: HashMap<String, OutboundGroup>,
    /// (room, sender curve25519, session ID) -> session.
    inbound: HashMap<(String, String, String), InboundGroup>,
    pending: Vec<Pending>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("curve25519", &self.curve25519_key())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A new device with fresh identity keys, for the user and device ID the homeserver gave
    /// at login.
    pub fn new(user_id: &str, device_id: &str) -> Device {
        Device {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            account: Account::new(),
            device_keys_uploaded: false,
            one_time_key_target: 50,
            rotation_period_msgs: DEFAULT_ROTATION_PERIOD_MSGS,
            olm_sessions: HashMap::new(),
            devices: BTreeMap::new(),
            tracked: BTreeSet::new(),
            stale: BTreeSet::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            pending: Vec::new(),
        }
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }
    pub fn device_id(&self) -> &str {
        &self.device_id
    }
    /// This device's curve25519 identity key (unpadded base64).
    pub fn curve25519_key(&self) -> String {
        self.account.curve25519_key().to_base64()
    }
    /// This device's ed25519 fingerprint key (unpadded base64).
    pub fn ed25519_key(&self) -> String {
        self.account.ed25519_key().to_base64()
    }

    /// How many one-time keys to keep on the server (default 50; at most what vodozemac
    /// keeps, `Account::max_number_of_one_time_keys`).
    pub fn set_one_time_key_target(&mut self, n: usize) {
        self.one_time_key_target = n.min(self.account.max_number_of_one_time_keys());
    }

    /// Replace outbound Megolm sessions after `n` messages (the room's
    /// `m.room.encryption` `rotation_period_msgs`; default 100). Time-based rotation
    /// (`rotation_period_ms`) is the caller's: it owns the clock ([`Device::rotate_room_key`]).
    pub fn set_rotation_period_msgs(&mut self, n: u64) {
        self.rotation_period_msgs = n.max(1);
    }

    fn sign_json(&self, value: &mut Value) -> Result<()> {
        let canonical = signable(value)?;
        let signature = self.account.sign(canonical.as_bytes()).to_base64();
        let key_id = format!("ed25519:{}", self.device_id);
        let obj = value
            .as_object_mut()
            .ok_or_else(|| malformed("only objects can be signed"))?;
        let sigs = obj.entry("signatures").or_insert_with(|| json!({}));
        sigs.as_object_mut()
            .ok_or_else(|| malformed("signatures is not an object"))?
            .entry(self.user_id.clone())
            .or_insert_with(|| json!({}))[&key_id] = json!(signature);
        Ok(())
    }

    /// This device's self-signed `device_keys` object.
    pub fn device_keys(&self) -> Value {
        let mut keys = json!({
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": [OLM_ALGORITHM, MEGOLM_ALGORITHM],
            "keys": {
                format!("curve25519:{}", self.device_id): self.curve25519_key(),
                format!("ed25519:{}", self.device_id): self.ed25519_key(),
            },
        });
        self.sign_json(&mut keys)
            .expect("a JSON object of strings is signable");
        keys
    }

    /// The body of `POST /keys/upload`: the device keys (until uploaded once), `one_time_keys`
    /// new signed one-time keys, and a new signed fallback key when `fallback_key` is set. Call
    /// [`Device::mark_keys_as_published`] once the server accepted it.
    pub fn keys_upload_body(&mut self, one_time_keys: usize, fallback_key: bool) -> Value {
        let mut body = json!({});
        if !self.device_keys_uploaded {
            body["device_keys"] = self.device_keys();
        }
        if one_time_keys > 0 {
            self.account.generate_one_time_keys(one_time_keys);
        }
        let mut otks = serde_json::Map::new();
        for (id, key) in self.account.one_time_keys() {
            let mut signed = json!({"key": key.to_base64()});
            self.sign_json(&mut signed).expect("signable");
            otks.insert(format!("{SIGNED_CURVE25519}:{}", id.to_base64()), signed);
        }
        if !otks.is_empty() {
            body["one_time_keys"] = Value::Object(otks);
        }
        if fallback_key {
            self.account.generate_fallback_key();
        }
        let mut fallback = serde_json::Map::new();
        for (id, key) in self.account.fallback_key() {
            let mut signed = json!({"key": key.to_base64(), "fallback": true});
            self.sign_json(&mut signed).expect("signable");
            fallback.insert(format!("{SIGNED_CURVE25519}:{}", id.to_base64()), signed);
        }
        if !fallback.is_empty() {
            body["fallback_keys"] = Value::Object(fallback);
        }
        body
    }

    /// The first upload: device keys, the one-time key target and a fallback key.
    pub fn initial_keys_upload_body(&mut self) -> Value {
        let n = self.one_time_key_target;
        self.keys_upload_body(n, true)
    }

    /// The server accepted the last upload body.
    pub fn mark_keys_as_published(&mut self) {
        self.device_keys_uploaded = true;
        self.account.mark_keys_as_published();
    }

    // ---- device lists ------------------------------------------------------------------------

    /// Start tracking `users`' device lists (they become stale until queried).
    pub fn track_users<'a>(&mut self, users: impl IntoIterator<Item = &'a str>) {
        for u in users {
            if self.tracked.insert(u.to_owned()) {
                self.stale.insert(u.to_owned());
            }
        }
    }

    /// Tracked users whose device lists must be (re)queried.
    pub fn stale_users(&self) -> Vec<String> {
        self.stale.iter().cloned().collect()
    }

    /// The body of `POST /keys/query` for `users` (all their devices).
    pub fn keys_query_body<S: AsRef<str>>(users: &[S]) -> Value {
        let map: serde_json::Map<String, Value> =
            users.iter().map(|u| (u.as_ref().to_owned(), json!([]))).collect();
        json!({"device_keys": map, "timeout": 10000})
    }

    /// The verified devices of `user`.
    pub fn devices_of(&self, user: &str) -> Vec<DeviceKeys> {
        self.devices
            .get(user)
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Consume a `/keys/query` response. Every listed device whose self-signature verifies (and
    /// whose `user_id`/`device_id` match where it is listed) is stored; a user's devices missing
    /// from the answer are forgotten (rotating the Megolm sessions shared with them). A device
    /// whose ed25519 key differs from the one known is ignored. Returns the reasons for every
    /// device that was refused. Olm payloads waiting for these devices are then processed.
    pub fn receive_keys_query(&mut self, response: &Value) -> (SyncChanges, Vec<String>) {
        let mut refused = Vec::new();
        let Some(users) = response.get("device_keys").and_then(Value::as_object) else {
            return (
                SyncChanges::default(),
                vec!["no device_keys in the response".into()],
            );
        };
        for (user, devices) in users {
            let Some(devices) = devices.as_object() else {
                refused.push(format!("{user}: devices is not an object"));
                continue;
            };
            let mut fresh = BTreeMap::new();
            for (device_id, keys) in devices {
                match self.verify_device_keys(user, device_id, keys) {
                    Ok(k) => {
                        fresh.insert(device_id.clone(), k);
                    }
                    Err(e) => refused.push(format!("{user} {device_id}: {e}")),
                }
            }
            let known = self.devices.entry(user.clone()).or_default();
            // A device ID keeps its keys: a changed ed25519 key is an attack or a bug.
            for (id, k) in fresh.iter_mut() {
                if let Some(old) = known.get(id)
                    && (old.ed25519 != k.ed25519 || old.curve25519 != k.curve25519)
                {
                    refused.push(format!("{user} {id}: device keys changed; keeping the old ones"));
                    *k = old.clone();
                }
            }
            let removed: Vec<DeviceKeys> = known
                .iter()
                .filter(|(id, _)| !fresh.contains_key(*id))
                .map(|(_, k)| k.clone())
                .collect();
            *known = fresh;
            if *user == self.user_id {
                known.remove(&self.device_id);
            }
            for gone in removed {
                self.forget_device(&gone);
            }
            self.stale.remove(user);
            self.tracked.insert(user.clone());
        }
        let changes = self.retry_pending();
        (changes, refused)
    }

    fn verify_device_keys(&self, user: &str, device_id: &str, keys: &Value) -> Result<DeviceKeys> {
        if keys.get("user_id").and_then(Value::as_str) != Some(user)
            || keys.get("device_id").and_then(Value::as_str) != Some(device_id)
        {
            return Err(malformed(
                "user_id/device_id differ from where the keys are listed",
            ));
        }
        let key = |alg: &str| {
            keys.get("keys")
                .and_then(|k| k.get(format!("{alg}:{device_id}")))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| malformed(format!("no {alg} key")))
        };
        let ed25519 = key("ed25519")?;
        let curve25519 = key("curve25519")?;
        Curve25519PublicKey::from_base64(&curve25519).map_err(|e| malformed(e.to_string()))?;
        verify_signed_json(keys, user, &format!("ed25519:{device_id}"), &ed25519)
            .map_err(|e| Error::Signature(e.to_string()))?;
        Ok(DeviceKeys {
            user_id: user.to_owned(),
            device_id: device_id.to_owned(),
            curve25519,
            ed25519,
        })
    }

    /// Forget a device: outbound Megolm sessions shared with it are discarded, so the next
    /// message in those rooms uses a new session it never received.
    fn forget_device(&mut self, gone: &DeviceKeys) {
        self.outbound.retain(|_, g| {
            !g.shared_with
                .iter()
                .any(|(u, d, _)| *u == gone.user_id && *d == gone.device_id)
        });
    }

    /// Discard the outbound Megolm session of `room_id` (the next message starts a new one).
    pub fn rotate_room_key(&mut self, room_id: &str) {
        self.outbound.remove(room_id);
    }

    /// The current outbound Megolm session ID of `room_id`, if any.
    pub fn outbound_session_id(&self, room_id: &str) -> Option<String> {
        self.outbound.get(room_id).map(|g| g.session.session_id())
    }

    // ---- Olm sessions ------------------------------------------------------------------------

    fn has_olm_session(&self, curve25519: &str) -> bool {
        self.olm_sessions.get(curve25519).is_some_and(|s| !s.is_empty())
    }

    /// Known devices of `users` (other than this one) with no Olm session yet.
    fn devices_without_session(&self, users: &[String]) -> Vec<DeviceKeys> {
        users
            .iter()
            .flat_map(|u| self.devices_of(u))
            .filter(|d| !(d.user_id == self.user_id && d.device_id == self.device_id))
            .filter(|d| !self.has_olm_session(&d.curve25519))
            .collect()
    }

    /// The body of `POST /keys/claim` for the known devices of `users` that have no Olm session
    /// with this device, or `None` when every device has one.
    pub fn keys_claim_body(&self, users: &[String]) -> Option<Value> {
        let missing = self.devices_without_session(users);
        if missing.is_empty() {
            return None;
        }
        let mut map = serde_json::Map::new();
        for d in missing {
            map.entry(d.user_id.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object")
                .insert(d.device_id.clone(), json!(SIGNED_CURVE25519));
        }
        Some(json!({"one_time_keys": map, "timeout": 10000}))
    }

    /// Consume a `/keys/claim` response: for every claimed key signed by its (known, verified)
    /// device, create an outbound Olm session. Returns the reasons for keys that were refused.
    pub fn receive_keys_claim(&mut self, response: &Value) -> Vec<String> {
        let mut refused = Vec::new();
        let Some(users) = response.get("one_time_keys").and_then(Value::as_object) else {
            return vec!["no one_time_keys in the response".into()];
        };
        for (user, devices) in users {
            for (device_id, keys) in devices.as_object().into_iter().flatten() {
                if let Err(e) = self.session_from_claimed_keys(user, device_id, keys) {
                    refused.push(format!("{user} {device_id}: {e}"));
                }
            }
        }
        refused
    }

    fn session_from_claimed_keys(&mut self, user: &str, device_id: &str, keys: &Value) -> Result<()> {
        let device = self
            .devices
            .get(user)
            .and_then(|d| d.get(device_id))
            .cloned()
            .ok_or_else(|| malformed("claimed a key for a device whose keys are unknown"))?;
        let (key_id, signed) = keys
            .as_object()
            .and_then(|m| m.iter().find(|(id, _)| id.starts_with("signed_curve25519:")))
            .ok_or_else(|| malformed("no signed_curve25519 key"))?;
        verify_signed_json(signed, user, &format!("ed25519:{device_id}"), &device.ed25519)
            .map_err(|e| Error::Signature(format!("{key_id}: {e}")))?;
        let otk = signed
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("no key"))
            .and_then(|k| Curve25519PublicKey::from_base64(k).map_err(|e| malformed(e.to_string())))?;
        let identity =
            Curve25519PublicKey::from_base64(&device.curve25519).map_err(|e| malformed(e.to_string()))?;
        let session = self
            .account
            .create_outbound_session(SessionConfig::version_1(), identity, otk)
            .map_err(|e| malformed(e.to_string()))?;
        let list = self.olm_sessions.entry(device.curve25519).or_default();
        list.insert(0, session);
        list.truncate(MAX_SESSIONS_PER_PEER);
        Ok(())
    }

    /// Olm-encrypt a to-device event for `to`: the `m.room.encrypted` content with the spec's
    /// payload (sender, sender_device, keys, recipient, recipient_keys, type, content, and
    /// this device's signed `sender_device_keys`).
    pub fn olm_encrypt(&mut self, to: &DeviceKeys, event_type: &str, content: &Value) -> Result<Value> {
        let payload = json!({
            "type": event_type,
            "content": content,
            "sender": self.user_id,
            "sender_device": self.device_id,
            "keys": {"ed25519": self.ed25519_key()},
            "recipient": to.user_id,
            "recipient_keys": {"ed25519": to.ed25519},
            "sender_device_keys": self.device_keys(),
        });
        let session = self
            .olm_sessions
            .get_mut(&to.curve25519)
            .and_then(|s| s.first_mut())
            .ok_or_else(|| malformed(format!("no Olm session with {} {}", to.user_id, to.device_id)))?;
        let message = session
            .encrypt(payload.to_string())
            .map_err(|e| malformed(e.to_string()))?;
        let (message_type, body) = message.to_parts();
        Ok(json!({
            "algorithm": OLM_ALGORITHM,
            "sender_key": self.curve25519_key(),
            "ciphertext": {
                to.curve25519.clone(): {"type": message_type, "body": vodozemac::base64_encode(body)}
            },
        }))
    }

    /// Decrypt the content of an Olm `m.room.encrypted` to-device event from `sender`; returns
    /// the checked payload, or `Ok(None)` when the sender's device is not known yet (the payload
    /// waits for [`Device::receive_keys_query`]; the sender is marked stale).
    fn olm_decrypt(&mut self, sender: &str, content: &Value) -> Result<Option<Value>> {
        let sender_key = content
            .get("sender_key")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("no sender_key"))?
            .to_owned();
        let sender_curve =
            Curve25519PublicKey::from_base64(&sender_key).map_err(|e| malformed(e.to_string()))?;
        let mine = content
            .get("ciphertext")
            .and_then(|c| c.get(self.curve25519_key()))
            .ok_or(Error::NotForThisDevice)?;
        let message: OlmMessage =
            serde_json::from_value(mine.clone()).map_err(|e| malformed(e.to_string()))?;
        let plaintext = self.olm_decrypt_message(&sender_key, sender_curve, &message)?;
        let payload: Value =
            serde_json::from_slice(&plaintext).map_err(|e| malformed(format!("payload: {e}")))?;
        self.check_payload_recipient(sender, &payload)?;
        Self::check_sender_device_keys(sender, &sender_key, &payload)?;
        self.check_payload_sender(sender, &sender_key, payload)
    }

    fn olm_decrypt_message(
        &mut self,
        sender_key: &str,
        sender_curve: Curve25519PublicKey,
        message: &OlmMessage,
    ) -> Result<Vec<u8>> {
        if let Some(sessions) = self.olm_sessions.get_mut(sender_key) {
            for i in 0..sessions.len() {
                if let Ok(plain) = sessions[i].decrypt(message) {
                    let s = sessions.remove(i);
                    sessions.insert(0, s);
                    return Ok(plain);
                }
            }
        }
        match message {
            OlmMessage::PreKey(pre_key) => {
                let created = self
                    .account
                    .create_inbound_session(SessionConfig::version_1(), sender_curve, pre_key)
                    .map_err(|e| Error::OlmDecryption(e.to_string()))?;
                let list = self.olm_sessions.entry(sender_key.to_owned()).or_default();
                list.insert(0, created.session);
                list.truncate(MAX_SESSIONS_PER_PEER);
                Ok(created.plaintext)
            }
            OlmMessage::Normal(_) => Err(Error::OlmDecryption(
                "a normal message and no session decrypts it".into(),
            )),
        }
    }

    fn check_payload_recipient(&self, sender: &str, payload: &Value) -> Result<()> {
        if payload.get("recipient").and_then(Value::as_str) != Some(self.user_id.as_str()) {
            return Err(Error::PayloadMismatch("recipient is not this user".into()));
        }
        if payload.pointer("/recipient_keys/ed25519").and_then(Value::as_str)
            != Some(self.ed25519_key().as_str())
        {
            return Err(Error::PayloadMismatch(
                "recipient_keys.ed25519 is not this device's".into(),
            ));
        }
        if payload.get("sender").and_then(Value::as_str) != Some(sender) {
            return Err(Error::PayloadMismatch(
                "sender differs from the event's sender".into(),
            ));
        }
        Ok(())
    }

    /// Spec checks 5.1–5.4 on `sender_device_keys`, when the payload carries them.
    fn check_sender_device_keys(sender: &str, sender_key: &str, payload: &Value) -> Result<()> {
        let Some(keys) = payload.get("sender_device_keys") else {
            return Ok(());
        };
        let device_id = keys
            .get("device_id")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("sender_device_keys without device_id"))?;
        if keys.get("user_id").and_then(Value::as_str) != Some(sender) {
            return Err(Error::PayloadMismatch(
                "sender_device_keys.user_id is not the sender".into(),
            ));
        }
        let key = |alg: &str| {
            keys.pointer(&format!("/keys/{alg}:{device_id}"))
                .and_then(Value::as_str)
        };
        if key("curve25519") != Some(sender_key) {
            return Err(Error::PayloadMismatch(
                "sender_device_keys curve25519 is not sender_key".into(),
            ));
        }
        let ed25519 = key("ed25519").ok_or_else(|| malformed("sender_device_keys without ed25519"))?;
        if payload.pointer("/keys/ed25519").and_then(Value::as_str) != Some(ed25519) {
            return Err(Error::PayloadMismatch(
                "sender_device_keys ed25519 is not keys.ed25519".into(),
            ));
        }
        verify_signed_json(keys, sender, &format!("ed25519:{device_id}"), ed25519)
            .map_err(|e| Error::Signature(format!("sender_device_keys: {e}")))
    }

    /// The payload's `sender_device` and `keys.ed25519` must be those of the verified device
    /// owning `sender_key`.
    fn check_payload_sender(
        &mut self,
        sender: &str,
        sender_key: &str,
        payload: Value,
    ) -> Result<Option<Value>> {
        let sender_device = payload
            .get("sender_device")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("no sender_device in the payload"))?;
        let claimed_ed = payload
            .pointer("/keys/ed25519")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("no keys.ed25519 in the payload"))?;
        match self.devices.get(sender).and_then(|d| d.get(sender_device)) {
            Some(known) => {
                if known.curve25519 != sender_key || known.ed25519 != claimed_ed {
                    return Err(Error::PayloadMismatch(
                        "sender_key / keys.ed25519 are not those of the sender's device".into(),
                    ));
                }
                Ok(Some(payload))
            }
            None => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.remove(0);
                }
                self.pending.push(Pending {
                    sender: sender.to_owned(),
                    sender_key: sender_key.to_owned(),
                    payload,
                });
                self.tracked.insert(sender.to_owned());
                self.stale.insert(sender.to_owned());
                Ok(None)
            }
        }
    }

    fn retry_pending(&mut self) -> SyncChanges {
        let mut changes = SyncChanges::default();
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            if self.stale.contains(&p.sender) {
                self.pending.push(p);
                continue;
            }
            let known = p
                .payload
                .get("sender_device")
                .and_then(Value::as_str)
                .and_then(|d| self.devices.get(&p.sender).and_then(|m| m.get(d)))
                .is_some();
            if !known {
                changes.failures.push(format!(
                    "{}: Olm payload from a device the server does not list",
                    p.sender
                ));
                continue;
            }
            match self.check_payload_sender(&p.sender, &p.sender_key, p.payload) {
                Ok(Some(payload)) => self.use_payload(&p.sender, &p.sender_key, payload, &mut changes),
                Ok(None) => {}
                Err(e) => changes.failures.push(e.to_string()),
            }
        }
        changes
    }

    /// A checked Olm payload: store `m.room_key`, report anything else.
    fn use_payload(&mut self, sender: &str, sender_key: &str, payload: Value, changes: &mut SyncChanges) {
        let event_type = payload.get("type").and_then(Value::as_str).unwrap_or("");
        let sender_device = payload
            .get("sender_device")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let content = payload.get("content").cloned().unwrap_or(Value::Null);
        if event_type == "m.room_key" {
            match self.add_room_key(sender, &sender_device, sender_key, &content) {
                Ok(ids) => changes.room_keys.push(ids),
                Err(e) => changes.failures.push(format!("m.room_key from {sender}: {e}")),
            }
        } else {
            changes.to_device.push(DecryptedToDevice {
                sender: sender.to_owned(),
                sender_device,
                event_type: event_type.to_owned(),
                content,
            });
        }
    }

    fn add_room_key(
        &mut self,
        sender: &str,
        sender_device: &str,
        sender_key: &str,
        content: &Value,
    ) -> Result<(String, String)> {
        let field = |name: &str| {
            content
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(format!("m.room_key without {name}")))
        };
        let algorithm = field("algorithm")?;
        if algorithm != MEGOLM_ALGORITHM {
            return Err(Error::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        let room_id = field("room_id")?.to_owned();
        let session_id = field("session_id")?.to_owned();
        let key = SessionKey::from_base64(field("session_key")?).map_err(|e| malformed(e.to_string()))?;
        let session = InboundGroupSession::new(&key, MegolmConfig::version_1());
        if session.session_id() != session_id {
            return Err(malformed("session_id does not match the session key"));
        }
        let id = (room_id.clone(), sender_key.to_owned(), session_id.clone());
        // Keep an existing session (it may know earlier indices than a re-share).
        self.inbound.entry(id).or_insert(InboundGroup {
            session,
            room_id: room_id.clone(),
            sender: sender.to_owned(),
            sender_device: sender_device.to_owned(),
            sender_key: sender_key.to_owned(),
            seen: BTreeMap::new(),
        });
        Ok((room_id, session_id))
    }

    /// Consume a `/sync` response: decrypt `to_device` events (storing room keys), note
    /// `device_lists` changes for tracked users, and work out the key uploads needed from
    /// `device_one_time_keys_count` / `device_unused_fallback_key_types`.
    pub fn receive_sync(&mut self, sync: &Value) -> SyncChanges {
        let mut changes = SyncChanges::default();
        if let Some(lists) = sync.get("device_lists") {
            for u in lists
                .get("changed")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(u) = u.as_str()
                    && self.tracked.contains(u)
                {
                    self.stale.insert(u.to_owned());
                }
            }
            for u in lists.get("left").and_then(Value::as_array).into_iter().flatten() {
                if let Some(u) = u.as_str() {
                    self.untrack(u);
                }
            }
        }
        let events = sync
            .pointer("/to_device/events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for event in events {
            if event.get("type").and_then(Value::as_str) != Some("m.room.encrypted") {
                continue;
            }
            let sender = event.get("sender").and_then(Value::as_str).unwrap_or("");
            let content = event.get("content").cloned().unwrap_or(Value::Null);
            match self.receive_to_device_encrypted(sender, &content) {
                Ok(Some(payload)) => {
                    let sender_key = content["sender_key"].as_str().unwrap_or("").to_owned();
                    self.use_payload(sender, &sender_key, payload, &mut changes);
                }
                Ok(None) => {}
                Err(e) => changes.failures.push(format!("to-device from {sender}: {e}")),
            }
        }
        if let Some(n) = sync
            .pointer("/device_one_time_keys_count/signed_curve25519")
            .and_then(Value::as_u64)
        {
            changes.one_time_keys_to_upload = self.one_time_key_target.saturating_sub(n as usize);
        } else if sync.get("device_one_time_keys_count").is_some() && self.device_keys_uploaded {
            changes.one_time_keys_to_upload = self.one_time_key_target;
        }
        if let Some(types) = sync
            .get("device_unused_fallback_key_types")
            .and_then(Value::as_array)
        {
            changes.fallback_key_needed =
                self.device_keys_uploaded && !types.iter().any(|t| t.as_str() == Some(SIGNED_CURVE25519));
        }
        changes
    }

    /// Decrypt one `m.room.encrypted` to-device content (Olm), checked; see
    /// [`Device::receive_sync`] for the usual entry point.
    pub fn receive_to_device_encrypted(&mut self, sender: &str, content: &Value) -> Result<Option<Value>> {
        let algorithm = content.get("algorithm").and_then(Value::as_str).unwrap_or("");
        if algorithm != OLM_ALGORITHM {
            return Err(Error::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        self.olm_decrypt(sender, content)
    }

    fn untrack(&mut self, user: &str) {
        self.tracked.remove(user);
        self.stale.remove(user);
        if let Some(devices) = self.devices.remove(user) {
            for d in devices.values() {
                self.forget_device(d);
            }
        }
    }

    // ---- Megolm ------------------------------------------------------------------------------

    /// Prepare the room key of `room_id` for `members` (the room's joined users): rotates the
    /// outbound session if it was shared with a device that is gone (deleted, or its user left),
    /// creates one if needed, and returns the `PUT /sendToDevice/m.room.encrypted/{txn}` body
    /// carrying `m.room_key` to every known device of the members that lacks it and has an Olm
    /// session (`None` when there is nobody to send to). Devices without an Olm session are
    /// skipped: claim keys first ([`Device::keys_claim_body`]).
    pub fn share_room_key(&mut self, room_id: &str, members: &[String]) -> Result<Option<Value>> {
        let targets: BTreeSet<(String, String, String)> = members
            .iter()
            .flat_map(|u| self.devices_of(u))
            .filter(|d| !(d.user_id == self.user_id && d.device_id == self.device_id))
            .map(|d| (d.user_id, d.device_id, d.curve25519))
            .collect();
        if let Some(g) = self.outbound.get(room_id)
            && (g.shared_with.iter().any(|t| !targets.contains(t)) || g.messages >= self.rotation_period_msgs)
        {
            self.outbound.remove(room_id);
        }
        if !self.outbound.contains_key(room_id) {
            let session = GroupSession::new(MegolmConfig::version_1());
            // Our own inbound copy, so this device can read its own messages.
            let key = session.session_key();
            let own_key = self.curve25519_key();
            self.inbound.insert(
                (room_id.to_owned(), own_key.clone(), session.session_id()),
                InboundGroup {
                    session: InboundGroupSession::new(&key, MegolmConfig::version_1()),
                    room_id: room_id.to_owned(),
                    sender: self.user_id.clone(),
                    sender_device: self.device_id.clone(),
                    sender_key: own_key,
                    seen: BTreeMap::new(),
                },
            );
            self.outbound.insert(
                room_id.to_owned(),
                OutboundGroup {
                    session,
                    messages: 0,
                    shared_with: BTreeSet::new(),
                },
            );
        }
        let (session_id, session_key, already) = {
            let g = &self.outbound[room_id];
            (
                g.session.session_id(),
                g.session.session_key().to_base64(),
                g.shared_with.clone(),
            )
        };
        let room_key = json!({
            "algorithm": MEGOLM_ALGORITHM,
            "room_id": room_id,
            "session_id": session_id,
            "session_key": session_key,
        });
        let mut messages = serde_json::Map::new();
        let mut shared = Vec::new();
        for t in targets.difference(&already) {
            if !self.has_olm_session(&t.2) {
                continue;
            }
            let device = self.devices[&t.0][&t.1].clone();
            let content = self.olm_encrypt(&device, "m.room_key", &room_key)?;
            messages
                .entry(t.0.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object")
                .insert(t.1.clone(), content);
            shared.push(t.clone());
        }
        if let Some(g) = self.outbound.get_mut(room_id) {
            g.shared_with.extend(shared);
        }
        if messages.is_empty() {
            return Ok(None);
        }
        Ok(Some(json!({"messages": messages})))
    }

    /// Whether [`Device::encrypt_room_event`] would refuse for lack of a usable outbound session
    /// (none yet, or it reached the rotation period): call [`Device::share_room_key`] first.
    pub fn encrypt_room_event_would_rotate(&self, room_id: &str) -> bool {
        self.outbound
            .get(room_id)
            .is_none_or(|g| g.messages >= self.rotation_period_msgs)
    }

    /// The devices the current outbound session of `room_id` was shared with (user, device).
    pub fn room_key_recipients(&self, room_id: &str) -> Vec<(String, String)> {
        self.outbound
            .get(room_id)
            .map(|g| {
                g.shared_with
                    .iter()
                    .map(|(u, d, _)| (u.clone(), d.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Megolm-encrypt a room event: the `m.room.encrypted` content (algorithm, sender_key,
    /// ciphertext, session_id, device_id) of plaintext `{type, content, room_id}`.
    pub fn encrypt_room_event(&mut self, room_id: &str, event_type: &str, content: &Value) -> Result<Value> {
        let sender_key = self.curve25519_key();
        let device_id = self.device_id.clone();
        let g = self
            .outbound
            .get_mut(room_id)
            .ok_or_else(|| Error::NoOutboundSession(room_id.to_owned()))?;
        if g.messages >= self.rotation_period_msgs {
            return Err(Error::NoOutboundSession(room_id.to_owned()));
        }
        let plaintext = json!({"type": event_type, "content": content, "room_id": room_id});
        let message = g.session.encrypt(plaintext.to_string());
        g.messages += 1;
        Ok(json!({
            "algorithm": MEGOLM_ALGORITHM,
            "sender_key": sender_key,
            "ciphertext": message.to_base64(),
            "session_id": g.session.session_id(),
            "device_id": device_id,
        }))
    }

    /// Decrypt an `m.room.encrypted` room event (`sender`, `event_id`, `content`) received in
    /// `room_id`. Refuses a plaintext naming another room, a sender other than the one that
    /// shared the room key, and a message index seen before under another event ID.
    pub fn decrypt_room_event(&mut self, room_id: &str, event: &Value) -> Result<DecryptedEvent> {
        let content = event.get("content").ok_or_else(|| malformed("no content"))?;
        let field = |name: &str| {
            content
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| malformed(format!("no {name}")))
        };
        let algorithm = field("algorithm")?;
        if algorithm != MEGOLM_ALGORITHM {
            return Err(Error::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        let session_id = field("session_id")?.to_owned();
        let sender_key = field("sender_key")?.to_owned();
        let message =
            MegolmMessage::from_base64(field("ciphertext")?).map_err(|e| malformed(e.to_string()))?;
        let sender = event.get("sender").and_then(Value::as_str).unwrap_or("");
        let event_id = event.get("event_id").and_then(Value::as_str).unwrap_or("");
        let g = self
            .inbound
            .get_mut(&(room_id.to_owned(), sender_key, session_id.clone()))
            .ok_or(Error::UnknownMegolmSession { session_id })?;
        if g.sender != sender {
            return Err(Error::PayloadMismatch(format!(
                "the room key came from {}, the event from {sender}",
                g.sender
            )));
        }
        let decrypted = g
            .session
            .decrypt(&message)
            .map_err(|e| Error::MegolmDecryption(e.to_string()))?;
        let plaintext: Value =
            serde_json::from_slice(&decrypted.plaintext).map_err(|e| malformed(format!("plaintext: {e}")))?;
        let found = plaintext.get("room_id").and_then(Value::as_str).unwrap_or("");
        if found != room_id || g.room_id != room_id {
            return Err(Error::RoomMismatch {
                expected: room_id.to_owned(),
                found: found.to_owned(),
            });
        }
        match g.seen.get(&decrypted.message_index) {
            Some(prev) if prev != event_id => return Err(Error::Replay(decrypted.message_index)),
            Some(_) => {}
            None => {
                if g.seen.len() >= MAX_REPLAY_ENTRIES {
                    g.seen.pop_first();
                }
                g.seen.insert(decrypted.message_index, event_id.to_owned());
            }
        }
        Ok(DecryptedEvent {
            event_type: plaintext
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("plaintext without type"))?
                .to_owned(),
            content: plaintext.get("content").cloned().unwrap_or(Value::Null),
            sender_device: g.sender_device.clone(),
            message_index: decrypted.message_index,
        })
    }

    /// Whether this device holds an inbound Megolm session for (room, session ID).
    pub fn has_room_key(&self, room_id: &str, session_id: &str) -> bool {
        self.inbound
            .keys()
            .any(|(r, _, s)| r == room_id && s == session_id)
    }

    // ---- pickling ----------------------------------------------------------------------------

    /// Serialize the whole device (account, Olm and Megolm sessions, known devices) to a string.
    /// Every secret is encrypted with vodozemac's pickle encryption under `key`, and the whole
    /// document is signed with the account's ed25519 key, so it cannot be altered or recombined
    /// without the key.
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        let doc = PickleDoc {
            version: 1,
            user_id: self.user_id.clone(),
            device_id: self.device_id.clone(),
            account: self.account.pickle().encrypt(key),
            device_keys_uploaded: self.device_keys_uploaded,
            one_time_key_target: self.one_time_key_target,
            rotation_period_msgs: self.rotation_period_msgs,
            olm_sessions: self
                .olm_sessions
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|s| s.pickle().encrypt(key)).collect()))
                .collect(),
            devices: self.devices.clone(),
            tracked: self.tracked.clone(),
            stale: self.stale.clone(),
            outbound: self
                .outbound
                .iter()
                .map(|(room, g)| {
                    (
                        room.clone(),
                        OutboundPickle {
                            session: g.session.pickle().encrypt(key),
                            messages: g.messages,
                            shared_with: g.shared_with.iter().cloned().collect(),
                        },
                    )
                })
                .collect(),
            inbound: self
                .inbound
                .values()
                .map(|g| InboundPickle {
                    session: g.session.pickle().encrypt(key),
                    room_id: g.room_id.clone(),
                    sender: g.sender.clone(),
                    sender_device: g.sender_device.clone(),
                    sender_key: g.sender_key.clone(),
                    seen: g.seen.iter().map(|(i, e)| (*i, e.clone())).collect(),
                })
                .collect(),
            pending: self.pending.clone(),
        };
        let body = serde_json::to_value(&doc).expect("serializable");
        let signature = self
            .account
            .sign(signable(&body).expect("signable").as_bytes())
            .to_base64();
        json!({"device": body, "signature": signature}).to_string()
    }

    /// Restore a device from [`Device::pickle`] output under the same `key`.
    pub fn unpickle(pickle: &str, key: &[u8; 32]) -> Result<Device> {
        let outer: Value = serde_json::from_str(pickle).map_err(|e| Error::Pickle(e.to_string()))?;
        let body = outer
            .get("device")
            .ok_or_else(|| Error::Pickle("no device".into()))?;
        let doc: PickleDoc =
            serde_json::from_value(body.clone()).map_err(|e| Error::Pickle(e.to_string()))?;
        if doc.version != 1 {
            return Err(Error::Pickle(format!("unknown pickle version {}", doc.version)));
        }
        let perr = |e: vodozemac::PickleError| Error::Pickle(e.to_string());
        let account = Account::from_pickle(AccountPickle::from_encrypted(&doc.account, key).map_err(perr)?);
        let signature = outer
            .get("signature")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Pickle("no signature".into()))
            .and_then(|s| Ed25519Signature::from_base64(s).map_err(|e| Error::Pickle(e.to_string())))?;
        let canonical = signable(body).map_err(|e| Error::Pickle(e.to_string()))?;
        let public: Ed25519PublicKey = account.ed25519_key();
        public
            .verify(canonical.as_bytes(), &signature)
            .map_err(|_| Error::Pickle("the pickle was altered".into()))?;
        let mut olm_sessions = HashMap::new();
        for (peer, list) in doc.olm_sessions {
            let mut sessions = Vec::new();
            for s in list {
                sessions.push(Session::from_pickle(
                    SessionPickle::from_encrypted(&s, key).map_err(perr)?,
                ));
            }
            olm_sessions.insert(peer, sessions);
        }
        let mut outbound = HashMap::new();
        for (room, g) in doc.outbound {
            outbound.insert(
                room,
                OutboundGroup {
                    session: GroupSession::from_pickle(
                        GroupSessionPickle::from_encrypted(&g.session, key).map_err(perr)?,
                    ),
                    messages: g.messages,
                    shared_with: g.shared_with.into_iter().collect(),
                },
            );
        }
        let mut inbound = HashMap::new();
        for g in doc.inbound {
            let session = InboundGroupSession::from_pickle(
                InboundGroupSessionPickle::from_encrypted(&g.session, key).map_err(perr)?,
            );
            inbound.insert(
                (g.room_id.clone(), g.sender_key.clone(), session.session_id()),
                InboundGroup {
                    session,
                    room_id: g.room_id,
                    sender: g.sender,
                    sender_device: g.sender_device,
                    sender_key: g.sender_key,
                    seen: g.seen.into_iter().collect(),
                },
            );
        }
        Ok(Device {
            user_id: doc.user_id,
            device_id: doc.device_id,
            account,
            device_keys_uploaded: doc.device_keys_uploaded,
            one_time_key_target: doc.one_time_key_target,
            rotation_period_msgs: doc.rotation_period_msgs,
            olm_sessions,
            devices: doc.devices,
            tracked: doc.tracked,
            stale: doc.stale,
            outbound,
            inbound,
            pending: doc.pending,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct PickleDoc {
    version: u32,
    user_id: String,
    device_id: String,
    account: String,
    device_keys_uploaded: bool,
    one_time_key_target: usize,
    rotation_period_msgs: u64,
    olm_sessions: BTreeMap<String, Vec<String>>,
    devices: BTreeMap<String, BTreeMap<String, DeviceKeys>>,
    tracked: BTreeSet<String>,
    stale: BTreeSet<String>,
    outbound: BTreeMap<String, OutboundPickle>,
    inbound: Vec<InboundPickle>,
    pending: Vec<Pending>,
}

#[derive(Serialize, Deserialize)]
struct OutboundPickle {
    session: String,
    messages: u64,
    shared_with: Vec<(String, String, String)>,
}

#[derive(Serialize, Deserialize)]
struct InboundPickle {
    session: String,
    room_id: String,
    sender: String,
    sender_device: String,
    sender_key: String,
    seen: Vec<(u32, String)>,
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
