//! Encryption at rest for search-enabled rooms (spec/privacy-modes.md, "Encryption at rest").
//!
//! Every such room has a random 256-bit data key; the stored copy of each of its events is
//! XChaCha20-Poly1305 ciphertext under that key (random 192-bit nonce, the room ID as associated
//! data). Data keys are stored wrapped (encrypted) by the server key, which never touches the
//! database: it comes from `privacy.at_rest_key_file` or `privacy.at_rest_key`
//! (`HEARTH_PRIVACY__AT_REST_KEY`). Rotating the server key re-wraps the data keys only.
//!
//! The unwrapped data keys live in one process-wide [`Keyring`], loaded at start-up: the store's
//! row decoders are plain functions called from many queries, and one process serves one
//! database. Nothing here touches a database.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, LazyLock, RwLock},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What starts a sealed `json` value. JSON text never starts with `~`, so this prefix is the
/// marker of an encrypted row: no column needed, and plaintext rows read as before.
pub const SEALED_PREFIX: &str = "~hearth-aead1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    #[error("the at-rest key must be 32 bytes, base64-encoded: {0}")]
    BadKey(String),
    #[error("cannot read the at-rest key file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write the at-rest key file {0}: {1}")]
    Write(String, std::io::Error),
    #[error("decryption failed: wrong key or corrupt data")]
    Decrypt,
}

/// A 256-bit key: the server key or a room's data key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key as written in a key file or the environment: base64 of 32 bytes (whitespace around
    /// it ignored).
    pub fn parse(text: &str) -> Result<Self, AtRestError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| AtRestError::BadKey(e.to_string()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| AtRestError::BadKey(format!("{} bytes", b.len())))?;
        Ok(Self(bytes))
    }

    pub fn encode(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Reads a key file.
    pub fn read_file(path: &Path) -> Result<Self, AtRestError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| AtRestError::Read(path.display().to_string(), e))?;
        Self::parse(&text)
    }

    /// Writes a key file (mode 0600), through a temporary file and a rename.
    pub fn write_file(&self, path: &Path) -> Result<(), AtRestError> {
        use std::io::Write;
        let failed = |e| AtRestError::Write(path.display().to_string(), e);
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(failed)?;
        file.write_all(self.encode().as_bytes()).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&tmp, path).map_err(failed)
    }

    /// What the database keeps to recognise the server key (and refuse a wrong one): a
    /// domain-separated SHA-256 of it, which says nothing about the key itself.
    pub fn check_value(&self) -> String {
        STANDARD.encode(self.derive("hearth at-rest key check", b""))
    }

    /// A key derived from this one for one purpose (`label`) and one object (`context`), e.g.
    /// one file of the search index.
    pub fn derive(&self, label: &str, context: &[u8]) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.0);
        hash.update((label.len() as u64).to_be_bytes());
        hash.update(label.as_bytes());
        hash.update(context);
        hash.finalize().into()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// nonce ‖ ciphertext of `plaintext`, bound to `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad })
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn decrypt(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, AtRestError> {
        if sealed.len() < NONCE_LEN {
            return Err(AtRestError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| AtRestError::Decrypt)?;
        self.cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| AtRestError::Decrypt)
    }

    /// A room's data key wrapped by this (server) key, as stored (base64).
    pub fn wrap(&self, room_id: &str, data_key: &Key) -> String {
        STANDARD.encode(self.encrypt(&data_key.0, &wrap_aad(room_id)))
    }

    pub fn unwrap(&self, room_id: &str, wrapped: &str) -> Result<Key, AtRestError> {
        let sealed = STANDARD.decode(wrapped).map_err(|_| AtRestError::Decrypt)?;
        let bytes = self.decrypt(&sealed, &wrap_aad(room_id))?;
        Ok(Self(bytes.try_into().map_err(|_| AtRestError::Decrypt)?))
    }
}

fn wrap_aad(room_id: &str) -> Vec<u8> {
    format!("hearth room key {room_id}").into_bytes()
}

/// The server key: `privacy.at_rest_key` (the environment's `HEARTH_PRIVACY__AT_REST_KEY`), else
/// `privacy.at_rest_key_file`, else `<data_dir>/at_rest.key`, generated on first start.
pub fn load_server_key(config: &crate::config::Config) -> Result<Key, AtRestError> {
    if let Some(text) = &config.privacy.at_rest_key {
        return Key::parse(text);
    }
    if let Some(path) = &config.privacy.at_rest_key_file {
        return Key::read_file(path);
    }
    let path = config.data_dir.join("at_rest.key");
    if path.exists() {
        return Key::read_file(&path);
    }
    let key = Key::generate();
    key.write_file(&path)?;
    tracing::warn!(
        path = %path.display(),
        "generated an at-rest key beside the data: fine for development; in production keep it \
         elsewhere (privacy.at_rest_key_file) so that a copy of the data directory is not enough"
    );
    Ok(key)
}

/// The unwrapped data keys of the rooms whose events are stored encrypted.
#[derive(Default)]
pub struct Keyring {
    server: Option<Arc<Key>>,
    rooms: HashMap<String, Arc<Key>>,
}

static KEYRING: LazyLock<RwLock<Keyring>> = LazyLock::new(RwLock::default);

/// Replaces the process's keyring (at start-up, after unwrapping every room key).
pub fn install(server: Key, rooms: HashMap<String, Key>) {
    let rooms = rooms
        .into_iter()
        .map(|(room, key)| (room, Arc::new(key)))
        .collect();
    *KEYRING.write().unwrap_or_else(|e| e.into_inner()) = Keyring {
        server: Some(Arc::new(server)),
        rooms,
    };
}

/// The installed server key, which wraps new rooms' data keys.
pub fn server_key() -> Option<Arc<Key>> {
    KEYRING.read().unwrap_or_else(|e| e.into_inner()).server.clone()
}

/// Adds one room's data key (once it is stored).
pub fn add_room_key(room_id: &str, key: Key) {
    KEYRING
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .rooms
        .insert(room_id.to_owned(), Arc::new(key));
}

fn room_key(room_id: &str) -> Option<Arc<Key>> {
    KEYRING
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .rooms
        .get(room_id)
        .cloned()
}

/// The name the search index's data key is kept under, among the rooms' data keys (so that
/// `hearth keys rotate-at-rest` re-wraps it with them); not a room ID, so it meets no room.
pub const SEARCH_INDEX_KEY_ID: &str = "org.hearth.search_index";

/// The search index's data key, once loaded or made (`Store::search_index_key`).
pub fn search_index_key() -> Option<Arc<Key>> {
    room_key(SEARCH_INDEX_KEY_ID)
}

/// Whether the room's events are stored encrypted.
pub fn is_sealed_room(room_id: &str) -> bool {
    room_key(room_id).is_some()
}

/// The stored form of an event's JSON: sealed when its room has a data key, else `None`
/// (stored as it is).
pub fn seal(room_id: &str, json: &str) -> Option<String> {
    let key = room_key(room_id)?;
    let sealed = key.encrypt(json.as_bytes(), room_id.as_bytes());
    Some(format!("{SEALED_PREFIX}{}", STANDARD.encode(sealed)))
}

/// An event's JSON as read from the `json` column: decrypted in memory when sealed. A sealed
/// value that cannot be opened (a room key missing, corrupt data) is logged and returned as it
/// is, which then fails as unreadable JSON where it is used.
pub fn open(room_id: &str, stored: String) -> String {
    let Some(body) = stored.strip_prefix(SEALED_PREFIX) else {
        return stored;
    };
    let opened = room_key(room_id).ok_or(AtRestError::Decrypt).and_then(|key| {
        let sealed = STANDARD.decode(body).map_err(|_| AtRestError::Decrypt)?;
        let plain = key.decrypt(&sealed, room_id.as_bytes())?;
        String::from_utf8(plain).map_err(|_| AtRestError::Decrypt)
    });
    match opened {
        Ok(json) => json,
        Err(error) => {
            tracing::error!(%error, room_id, "cannot decrypt a stored event");
            stored
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_events_open_only_in_their_room() {
        let room = "!sealtest:example.org";
        add_room_key(room, Key::generate());
        let json = r#"{"content":{"body":"zebracorn"}}"#;
        let sealed = seal(room, json).unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("zebracorn"));
        assert_eq!(open(room, sealed.clone()), json);
        // Another room (no key, or another key) cannot open it.
        assert_eq!(open("!other:example.org", sealed.clone()), sealed);
        assert!(seal("!plain:example.org", json).is_none());
        assert_eq!(open("!plain:example.org", json.to_owned()), json);
    }

    #[test]
    fn wrapped_keys_need_the_server_key_and_the_room() {
        let server = Key::generate();
        let data = Key::generate();
        let wrapped = server.wrap("!a:x", &data);
        assert_eq!(server.unwrap("!a:x", &wrapped).unwrap().bytes(), data.bytes());
        assert!(server.unwrap("!b:x", &wrapped).is_err());
        assert!(Key::generate().unwrap("!a:x", &wrapped).is_err());
        assert_ne!(server.check_value(), Key::generate().check_value());
        assert!(Key::parse("c2hvcnQ=").is_err());
        assert_eq!(Key::parse(&server.encode()).unwrap().bytes(), server.bytes());
    }
}
