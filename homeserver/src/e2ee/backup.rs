//! Server-side key backups (spec v1.19, "Server-side key backups"): a user's backup versions,
//! each with an algorithm and its `auth_data`, and the encrypted Megolm session keys uploaded to
//! them. The server reads neither `auth_data`'s meaning nor `session_data`; it keeps, for each
//! session, the better of two uploads by the spec's rule ([`replaces`]).
//!
//! Keys are written only to the user's latest version (`M_WRONG_ROOM_KEYS_VERSION` with
//! `current_version` otherwise); versions are numbered per user and never reused; deleting a
//! version deletes its keys. Everything is per user: another user's version is `M_NOT_FOUND`.

use std::collections::BTreeMap;

use ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::backup::{BackupAlgorithm, KeyBackupData, RoomKeyBackup},
    serde::Raw,
};
use serde::Deserialize;
use serde_json::{Map, Value, value::RawValue};

use crate::{
    error::{Error, Result},
    services::Services,
    store::{BackupSessionRow, BackupVersionRow, BackupWrite},
};

/// The one backup algorithm the spec defines, and the only one accepted.
pub const MEGOLM_BACKUP_V1: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
/// Most session keys one upload may carry (clients upload in batches of a few hundred).
pub const MAX_SESSIONS_PER_REQUEST: usize = 1000;
/// Largest `session_data` of one key, as JSON text (a real one is about 1 KiB).
pub const MAX_SESSION_DATA_BYTES: usize = 16 * 1024;
/// Largest `auth_data`, as JSON text.
pub const MAX_AUTH_DATA_BYTES: usize = 64 * 1024;
/// Longest session ID (a real one is 43 characters of base64).
pub const MAX_SESSION_ID_BYTES: usize = 255;
/// The largest integer JSON carries exactly (the spec's integers).
const MAX_JSON_INT: u64 = (1 << 53) - 1;

/// A backup version as `GET /room_keys/version` answers it.
pub struct BackupInfo {
    pub version: String,
    /// `{"algorithm": …, "auth_data": …}`.
    pub algorithm: Raw<BackupAlgorithm>,
    pub count: u64,
    pub etag: String,
}

/// The state of a version's keys after a change: `etag` and `count`.
pub struct KeysUpdated {
    pub etag: String,
    pub count: u64,
}

/// The spec's rule for an upload of a session the backup holds already: true when `new`
/// replaces `stored`. A verified key beats an unverified one; then the lower
/// `first_message_index` wins (it decrypts more); then the lower `forwarded_count`. On a full
/// tie the stored key stays.
pub fn replaces(stored: &BackupSessionRow, new: &BackupSessionRow) -> bool {
    if stored.is_verified != new.is_verified {
        return new.is_verified;
    }
    if stored.first_message_index != new.first_message_index {
        return new.first_message_index < stored.first_message_index;
    }
    new.forwarded_count < stored.forwarded_count
}

/// A version as clients name it: the decimal number we handed out. Anything else names no
/// version.
fn parse_version(version: &str) -> Result<i64> {
    let not_found = || Error::not_found(format!("Unknown backup version {version:?}"));
    if version.is_empty()
        || version.len() > 18
        || !version.bytes().all(|b| b.is_ascii_digit())
        || version.starts_with('0')
    {
        return Err(not_found());
    }
    version.parse().map_err(|_| not_found())
}

#[derive(Deserialize)]
struct AlgorithmBody {
    algorithm: Value,
    auth_data: Box<RawValue>,
    #[serde(default)]
    version: Option<Value>,
}

/// Reads `{"algorithm", "auth_data"[, "version"]}`: the algorithm must be the spec's, and its
/// `auth_data` an object with a `public_key` string (and `signatures`, when present, an object).
fn parse_algorithm(body: &RawValue) -> Result<(String, String, Option<Value>)> {
    let body: AlgorithmBody = serde_json::from_str(body.get())
        .map_err(|e| Error::bad_json(format!("Invalid backup algorithm: {e}")))?;
    let algorithm = body
        .algorithm
        .as_str()
        .ok_or_else(|| Error::bad_json("algorithm must be a string"))?
        .to_owned();
    if algorithm != MEGOLM_BACKUP_V1 {
        return Err(Error::invalid_param(format!(
            "Unsupported backup algorithm {algorithm:?}; only {MEGOLM_BACKUP_V1} is supported"
        )));
    }
    if body.auth_data.get().len() > MAX_AUTH_DATA_BYTES {
        return Err(Error::too_large(format!(
            "auth_data is larger than {MAX_AUTH_DATA_BYTES} bytes"
        )));
    }
    let auth_data: Map<String, Value> = serde_json::from_str(body.auth_data.get())
        .map_err(|_| Error::bad_json("auth_data must be an object"))?;
    let public_key = auth_data.get("public_key").and_then(Value::as_str);
    if public_key.is_none_or(str::is_empty) {
        return Err(Error::bad_json("auth_data.public_key must be a non-empty string"));
    }
    if auth_data.get("signatures").is_some_and(|s| !s.is_object()) {
        return Err(Error::bad_json("auth_data.signatures must be an object"));
    }
    Ok((algorithm, body.auth_data.get().to_owned(), body.version))
}

fn info(row: BackupVersionRow) -> Result<BackupInfo> {
    let auth_data = RawValue::from_string(row.auth_data).map_err(Error::internal)?;
    let algorithm = serde_json::value::to_raw_value(&serde_json::json!({
        "algorithm": row.algorithm,
        "auth_data": auth_data,
    }))
    .map_err(Error::internal)?;
    Ok(BackupInfo {
        version: row.version.to_string(),
        algorithm: Raw::from_json(algorithm),
        count: row.count as u64,
        etag: row.etag.to_string(),
    })
}

/// `POST /room_keys/version`: a new version, which becomes the latest.
pub async fn create_version(svc: &Services, user: &UserId, body: &RawValue) -> Result<String> {
    let (algorithm, auth_data, _) = parse_algorithm(body)?;
    let version = svc
        .store
        .create_backup_version(user.as_str(), &algorithm, &auth_data)
        .await?;
    Ok(version.to_string())
}

/// `GET /room_keys/version`: the latest version; 404 when the user has none.
pub async fn latest_version(svc: &Services, user: &UserId) -> Result<BackupInfo> {
    let row = svc
        .store
        .latest_backup_version(user.as_str())
        .await?
        .ok_or_else(|| Error::not_found("No current backup version"))?;
    info(row)
}

/// `GET /room_keys/version/{version}`.
pub async fn version_info(svc: &Services, user: &UserId, version: &str) -> Result<BackupInfo> {
    info(live_version(svc, user, version).await?)
}

async fn live_version(svc: &Services, user: &UserId, version: &str) -> Result<BackupVersionRow> {
    let number = parse_version(version)?;
    svc.store
        .backup_version(user.as_str(), number)
        .await?
        .ok_or_else(|| Error::not_found(format!("Unknown backup version {version:?}")))
}

/// `PUT /room_keys/version/{version}`: only `auth_data` changes; the algorithm must stay and a
/// `version` in the body must be the path's.
pub async fn update_version(svc: &Services, user: &UserId, version: &str, body: &RawValue) -> Result<()> {
    let (algorithm, auth_data, body_version) = parse_algorithm(body)?;
    if let Some(body_version) = body_version
        && body_version.as_str() != Some(version)
    {
        return Err(Error::invalid_param(
            "version in the body does not match the path",
        ));
    }
    let current = live_version(svc, user, version).await?;
    if current.algorithm != algorithm {
        return Err(Error::invalid_param("Algorithm does not match the backup's"));
    }
    if !svc
        .store
        .update_backup_auth_data(user.as_str(), current.version, &auth_data)
        .await?
    {
        return Err(Error::not_found(format!("Unknown backup version {version:?}")));
    }
    Ok(())
}

/// `DELETE /room_keys/version/{version}`: the version and all its keys. Deleting a version
/// deleted before succeeds, as the spec asks; one that never existed is 404.
pub async fn delete_version(svc: &Services, user: &UserId, version: &str) -> Result<()> {
    let number = parse_version(version)?;
    match svc.store.delete_backup_version(user.as_str(), number).await? {
        Some(_) => Ok(()),
        None => Err(Error::not_found(format!("Unknown backup version {version:?}"))),
    }
}

#[derive(Deserialize)]
struct UploadedKey {
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    session_data: Box<RawValue>,
}

/// Checks one uploaded key and makes it a row.
fn session_row(room_id: &RoomId, session_id: &str, data: &RawValue) -> Result<BackupSessionRow> {
    if session_id.is_empty() || session_id.len() > MAX_SESSION_ID_BYTES || session_id.contains('\0') {
        return Err(Error::invalid_param(format!(
            "A session ID must have 1 to {MAX_SESSION_ID_BYTES} bytes and no U+0000"
        )));
    }
    if data.get().len() > MAX_SESSION_DATA_BYTES + 1024 {
        return Err(Error::too_large(format!(
            "session_data is larger than {MAX_SESSION_DATA_BYTES} bytes"
        )));
    }
    let key: UploadedKey = serde_json::from_str(data.get())
        .map_err(|e| Error::bad_json(format!("Invalid key data for session {session_id}: {e}")))?;
    if key.session_data.get().len() > MAX_SESSION_DATA_BYTES {
        return Err(Error::too_large(format!(
            "session_data is larger than {MAX_SESSION_DATA_BYTES} bytes"
        )));
    }
    if !key.session_data.get().trim_start().starts_with('{') {
        return Err(Error::bad_json("session_data must be an object"));
    }
    if key.first_message_index > MAX_JSON_INT || key.forwarded_count > MAX_JSON_INT {
        return Err(Error::bad_json(
            "first_message_index and forwarded_count must be at most 2^53-1",
        ));
    }
    Ok(BackupSessionRow {
        room_id: room_id.to_string(),
        session_id: session_id.to_owned(),
        first_message_index: key.first_message_index as i64,
        forwarded_count: key.forwarded_count as i64,
        is_verified: key.is_verified,
        session_data: key.session_data.get().to_owned(),
    })
}

/// `PUT /room_keys/keys[/{roomId}[/{sessionId}]]`: stores the uploaded keys in `version`, which
/// must be the latest, keeping per session the better key ([`replaces`]). At most
/// [`MAX_SESSIONS_PER_REQUEST`] keys per request; one bad key refuses the whole upload.
pub async fn put_keys(
    svc: &Services,
    user: &UserId,
    version: &str,
    keys: &[(&RoomId, &str, &RawValue)],
) -> Result<KeysUpdated> {
    let number = parse_version(version)?;
    let mut rows = Vec::new();
    for &(room_id, session_id, data) in keys {
        if rows.len() == MAX_SESSIONS_PER_REQUEST {
            return Err(Error::too_large(format!(
                "At most {MAX_SESSIONS_PER_REQUEST} session keys per request"
            )));
        }
        rows.push(session_row(room_id, session_id, data)?);
    }
    match svc
        .store
        .put_backup_sessions(user.as_str(), number, &rows, replaces)
        .await?
    {
        BackupWrite::Done { etag, count } => Ok(KeysUpdated {
            etag: etag.to_string(),
            count: count as u64,
        }),
        BackupWrite::NotLatest { current } => Err(Error::WrongRoomKeysVersion {
            current_version: current.to_string(),
        }),
        BackupWrite::NotFound => Err(Error::not_found(format!("Unknown backup version {version:?}"))),
    }
}

/// The stored form of a key as clients read it.
fn key_data(row: &BackupSessionRow) -> Result<Raw<KeyBackupData>> {
    let session_data = RawValue::from_string(row.session_data.clone()).map_err(Error::internal)?;
    let json = serde_json::value::to_raw_value(&serde_json::json!({
        "first_message_index": row.first_message_index,
        "forwarded_count": row.forwarded_count,
        "is_verified": row.is_verified,
        "session_data": session_data,
    }))
    .map_err(Error::internal)?;
    Ok(Raw::from_json(json))
}

/// `GET /room_keys/keys`: every key of `version` (any live version, not only the latest), by
/// room and session.
pub async fn all_keys(
    svc: &Services,
    user: &UserId,
    version: &str,
) -> Result<BTreeMap<OwnedRoomId, RoomKeyBackup>> {
    let rows = keys(svc, user, version, None, None).await?;
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>> = BTreeMap::new();
    for row in &rows {
        let room_id = RoomId::parse(&row.room_id).map_err(Error::internal)?;
        rooms
            .entry(room_id)
            .or_default()
            .insert(row.session_id.clone(), key_data(row)?);
    }
    Ok(rooms
        .into_iter()
        .map(|(room, sessions)| (room, RoomKeyBackup::new(sessions)))
        .collect())
}

/// `GET /room_keys/keys/{roomId}`: the room's keys; none is `{}`, not an error.
pub async fn room_keys(
    svc: &Services,
    user: &UserId,
    version: &str,
    room_id: &RoomId,
) -> Result<BTreeMap<String, Raw<KeyBackupData>>> {
    keys(svc, user, version, Some(room_id), None)
        .await?
        .iter()
        .map(|row| Ok((row.session_id.clone(), key_data(row)?)))
        .collect()
}

/// `GET /room_keys/keys/{roomId}/{sessionId}`: 404 when the backup holds no such key.
pub async fn session_key(
    svc: &Services,
    user: &UserId,
    version: &str,
    room_id: &RoomId,
    session_id: &str,
) -> Result<Raw<KeyBackupData>> {
    let rows = keys(svc, user, version, Some(room_id), Some(session_id)).await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::not_found("No key for this session in the backup"))?;
    key_data(row)
}

async fn keys(
    svc: &Services,
    user: &UserId,
    version: &str,
    room_id: Option<&RoomId>,
    session_id: Option<&str>,
) -> Result<Vec<BackupSessionRow>> {
    let row = live_version(svc, user, version).await?;
    if session_id.is_some_and(str::is_empty) {
        return Ok(Vec::new());
    }
    Ok(svc
        .store
        .backup_sessions(
            user.as_str(),
            row.version,
            room_id.map(RoomId::as_str),
            session_id,
        )
        .await?)
}

/// `DELETE /room_keys/keys[/{roomId}[/{sessionId}]]`: deletes keys of `version` (any live
/// version); deleting keys that are not there is not an error.
pub async fn delete_keys(
    svc: &Services,
    user: &UserId,
    version: &str,
    room_id: Option<&RoomId>,
    session_id: Option<&str>,
) -> Result<KeysUpdated> {
    let number = parse_version(version)?;
    if session_id.is_some_and(str::is_empty) {
        return Err(Error::not_found("Empty session ID"));
    }
    let (etag, count) = svc
        .store
        .delete_backup_sessions(user.as_str(), number, room_id.map(RoomId::as_str), session_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Unknown backup version {version:?}")))?;
    Ok(KeysUpdated {
        etag: etag.to_string(),
        count: count as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(is_verified: bool, first_message_index: i64, forwarded_count: i64) -> BackupSessionRow {
        BackupSessionRow {
            room_id: "!r:hs".into(),
            session_id: "s".into(),
            first_message_index,
            forwarded_count,
            is_verified,
            session_data: "{}".into(),
        }
    }

    #[test]
    fn the_spec_replacement_rule() {
        // is_verified first, whatever the other fields say.
        assert!(replaces(&row(false, 0, 0), &row(true, 9, 9)));
        assert!(!replaces(&row(true, 9, 9), &row(false, 0, 0)));
        // Then the lower first_message_index.
        assert!(replaces(&row(true, 5, 0), &row(true, 4, 9)));
        assert!(!replaces(&row(true, 4, 0), &row(true, 5, 0)));
        // Then the lower forwarded_count.
        assert!(replaces(&row(false, 4, 2), &row(false, 4, 1)));
        assert!(!replaces(&row(false, 4, 1), &row(false, 4, 2)));
        // A full tie keeps what is stored.
        assert!(!replaces(&row(false, 4, 1), &row(false, 4, 1)));
    }

    #[test]
    fn versions_are_the_numbers_handed_out() {
        assert_eq!(parse_version("1").ok(), Some(1));
        assert_eq!(parse_version("42").ok(), Some(42));
        for bad in ["", "0", "01", "-1", "1.0", "abc", "99999999999999999999", " 1"] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
    }
}
