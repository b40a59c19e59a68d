//! `/keys/upload`, `/keys/query`, `/keys/claim`: device keys, one-time and fallback keys.

use std::collections::{BTreeMap, HashSet};

use hearth_e2ee::verify::verify_signed_json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    MAX_ONE_TIME_KEYS_PER_UPLOAD, MAX_ONE_TIME_KEYS_STORED, MAX_QUERIED, cross_signing, is_local,
    split_key_id,
};
use crate::{
    error::{Error, Result},
    services::Services,
    store::{KeyUpload, KeysUpload, UploadRefusal},
};

/// The body of `POST /keys/upload`.
#[derive(Debug, Deserialize)]
pub struct UploadRequest {
    #[serde(default)]
    pub device_keys: Option<Value>,
    #[serde(default)]
    pub one_time_keys: Option<Map<String, Value>>,
    #[serde(default)]
    pub fallback_keys: Option<Map<String, Value>>,
    /// The unstable name some clients still send.
    #[serde(default, rename = "org.matrix.msc2732.fallback_keys")]
    pub fallback_keys_unstable: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct UploadResponse {
    pub one_time_key_counts: BTreeMap<String, u64>,
}

/// Checks a device's self-signed keys: its own user and device, well-formed key IDs, an
/// ed25519 key for the device and a valid signature with it. Returns that ed25519 key.
pub fn check_device_keys(keys: &Value, user_id: &str, device_id: &str) -> Result<String> {
    let object = keys
        .as_object()
        .ok_or_else(|| Error::invalid_param("device_keys must be an object"))?;
    if object.get("user_id").and_then(Value::as_str) != Some(user_id) {
        return Err(Error::invalid_param(
            "device_keys.user_id must be the user's own ID",
        ));
    }
    if object.get("device_id").and_then(Value::as_str) != Some(device_id) {
        return Err(Error::invalid_param(
            "device_keys.device_id must be the ID of the device uploading them",
        ));
    }
    let algorithms = object
        .get("algorithms")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::invalid_param("device_keys.algorithms must be a list"))?;
    if algorithms.len() > 64 || !algorithms.iter().all(Value::is_string) {
        return Err(Error::invalid_param(
            "device_keys.algorithms must be at most 64 strings",
        ));
    }
    let key_map = object
        .get("keys")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::invalid_param("device_keys.keys must be an object"))?;
    if key_map.len() > 64 {
        return Err(Error::invalid_param("device_keys.keys has too many keys"));
    }
    for (id, key) in key_map {
        split_key_id(id)?;
        if !key.is_string() {
            return Err(Error::invalid_param(format!(
                "device_keys.keys.{id} must be a string"
            )));
        }
    }
    let signing_id = format!("ed25519:{device_id}");
    let ed25519 = key_map
        .get(&signing_id)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid_param(format!("device_keys.keys has no {signing_id}")))?;
    verify_signed_json(keys, user_id, &signing_id, ed25519)
        .map_err(|e| Error::invalid_param(format!("device_keys: {e}")))?;
    Ok(ed25519.to_owned())
}

/// Checks one-time or fallback keys: well-formed IDs, a string key or an object with a `key`;
/// a signed object's signature when the device's ed25519 key is known.
fn check_keys(
    keys: &Map<String, Value>,
    field: &str,
    user_id: &str,
    device_id: &str,
    ed25519: Option<&str>,
) -> Result<Vec<KeyUpload>> {
    let mut out = Vec::with_capacity(keys.len());
    let signing_id = format!("ed25519:{device_id}");
    for (id, key) in keys {
        let (algorithm, key_id) = split_key_id(id)?;
        match key {
            Value::String(_) => {}
            Value::Object(object) => {
                if !object.get("key").is_some_and(Value::is_string) {
                    return Err(Error::invalid_param(format!("{field}.{id}.key must be a string")));
                }
                if let Some(ed25519) = ed25519
                    && (object.contains_key("signatures") || algorithm.starts_with("signed_"))
                {
                    verify_signed_json(key, user_id, &signing_id, ed25519)
                        .map_err(|e| Error::invalid_param(format!("{field}.{id}: {e}")))?;
                }
            }
            _ => {
                return Err(Error::invalid_param(format!(
                    "{field}.{id} must be a string or an object"
                )));
            }
        }
        out.push(KeyUpload {
            algorithm: algorithm.to_owned(),
            key_id: key_id.to_owned(),
            json: key.to_string(),
        });
    }
    Ok(out)
}

/// `POST /keys/upload`: all or nothing.
pub async fn upload(
    svc: &Services,
    user_id: &str,
    device_id: &str,
    req: UploadRequest,
) -> Result<UploadResponse> {
    let ed25519 = match &req.device_keys {
        Some(keys) => Some(check_device_keys(keys, user_id, device_id)?),
        None => svc
            .store
            .device_keys(user_id, device_id)
            .await?
            .and_then(|json| serde_json::from_str::<Value>(&json).ok())
            .and_then(|keys| {
                keys["keys"][format!("ed25519:{device_id}")]
                    .as_str()
                    .map(ToOwned::to_owned)
            }),
    };
    let one_time = req.one_time_keys.unwrap_or_default();
    if one_time.len() > MAX_ONE_TIME_KEYS_PER_UPLOAD {
        return Err(Error::invalid_param(format!(
            "At most {MAX_ONE_TIME_KEYS_PER_UPLOAD} one-time keys per upload"
        )));
    }
    let fallback = req
        .fallback_keys
        .or(req.fallback_keys_unstable)
        .unwrap_or_default();
    if fallback.len() > 16 {
        return Err(Error::invalid_param("At most 16 fallback keys per upload"));
    }
    let upload = KeysUpload {
        device_keys: req.device_keys.as_ref().map(Value::to_string),
        one_time_keys: check_keys(&one_time, "one_time_keys", user_id, device_id, ed25519.as_deref())?,
        fallback_keys: check_keys(&fallback, "fallback_keys", user_id, device_id, ed25519.as_deref())?,
    };
    let mut algorithms = HashSet::new();
    if !upload
        .fallback_keys
        .iter()
        .all(|k| algorithms.insert(k.algorithm.as_str()))
    {
        return Err(Error::invalid_param("At most one fallback key per algorithm"));
    }
    let (counts, changed) = match svc
        .store
        .upload_keys(user_id, device_id, &upload, MAX_ONE_TIME_KEYS_STORED)
        .await?
    {
        Ok(done) => done,
        Err(UploadRefusal::KeyIdReused(id)) => {
            return Err(Error::invalid_param(format!(
                "One-time key {id} already exists with different content"
            )));
        }
        Err(UploadRefusal::TooManyStored(algorithm)) => {
            return Err(Error::invalid_param(format!(
                "A device may hold at most {MAX_ONE_TIME_KEYS_STORED} unclaimed one-time keys of \
                 {algorithm}"
            )));
        }
    };
    if changed {
        super::device_lists::announce(svc, user_id).await?;
    }
    // The device's key counts in `/sync` changed: its next step must not reuse old ones.
    svc.notifier.notify(vec![user_id.to_owned()]);
    Ok(UploadResponse {
        one_time_key_counts: with_default_count(counts),
    })
}

/// Counts with `signed_curve25519` always present, as clients expect.
pub fn with_default_count(mut counts: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts.entry("signed_curve25519".to_owned()).or_insert(0);
    counts
}

/// The body of `POST /keys/query`.
#[derive(Debug, Deserialize)]
pub struct QueryRequest {
    pub device_keys: BTreeMap<String, Vec<String>>,
    /// Only matters for remote users, which are not fetched yet.
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Serialize, Default)]
pub struct QueryResponse {
    pub device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    pub failures: BTreeMap<String, Value>,
    pub master_keys: BTreeMap<String, Value>,
    pub self_signing_keys: BTreeMap<String, Value>,
    pub user_signing_keys: BTreeMap<String, Value>,
}

/// Refuses a malformed user ID; for a remote user, their server (asked over federation).
fn remote_server(svc: &Services, user_id: &str) -> Result<Option<ruma::OwnedServerName>> {
    let parsed = ruma::UserId::parse(user_id)
        .map_err(|_| Error::invalid_param(format!("Invalid user ID {user_id}")))?;
    if is_local(svc, user_id) {
        return Ok(None);
    }
    Ok(Some(parsed.server_name().to_owned()))
}

/// `POST /keys/query`: local users' device and cross-signing keys, with the signatures
/// uploaded on them. Remote users are answered in `failures` (the seam where federation will
/// fetch them).
pub async fn query(svc: &Services, requester: &str, req: QueryRequest) -> Result<QueryResponse> {
    let asked: usize = req.device_keys.values().map(|d| d.len().max(1)).sum();
    if req.device_keys.len() > MAX_QUERIED || asked > MAX_QUERIED * 10 {
        return Err(Error::invalid_param(format!(
            "At most {MAX_QUERIED} users per key query"
        )));
    }
    let mut response = QueryResponse::default();
    let mut remote: BTreeMap<ruma::OwnedServerName, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut local = BTreeMap::new();
    for (user_id, wanted) in req.device_keys {
        match remote_server(svc, &user_id)? {
            Some(server) => {
                remote.entry(server).or_default().insert(user_id, wanted);
            }
            None => {
                local.insert(user_id, wanted);
            }
        }
    }
    if !remote.is_empty() {
        let found = crate::federation::remote::query_keys(svc, remote, req.timeout).await;
        response.device_keys.extend(found.device_keys);
        response.master_keys.extend(found.master_keys);
        response.self_signing_keys.extend(found.self_signing_keys);
        response.failures.extend(found.failures);
    }
    query_local(svc, requester, &local, &mut response).await?;
    Ok(response)
}

/// Local users' keys, into `response` (remote users asking through federation come here too,
/// with an empty `requester`).
pub async fn query_local(
    svc: &Services,
    requester: &str,
    users: &BTreeMap<String, Vec<String>>,
    response: &mut QueryResponse,
) -> Result<()> {
    for (user_id, wanted) in users {
        if !is_local(svc, user_id) {
            continue;
        }
        let signatures = svc.store.signatures_on(user_id).await?;
        let mut devices = BTreeMap::new();
        for (device_id, json, display_name) in svc.store.user_device_keys(user_id).await? {
            if !wanted.is_empty() && !wanted.contains(&device_id) {
                continue;
            }
            let mut keys: Value = serde_json::from_str(&json).map_err(Error::internal)?;
            merge_signatures(&mut keys, &device_id, &signatures, |_| true);
            if let Some(object) = keys.as_object_mut() {
                let mut unsigned = Map::new();
                if let Some(name) = display_name {
                    unsigned.insert("device_display_name".into(), name.into());
                }
                object.insert("unsigned".into(), Value::Object(unsigned));
            }
            devices.insert(device_id, keys);
        }
        response.device_keys.insert(user_id.clone(), devices);
        let cross = svc.store.cross_signing_keys(user_id).await?;
        for (key_type, json) in cross {
            let mut key: Value = serde_json::from_str(&json).map_err(Error::internal)?;
            let target = cross_signing::public_key(&key).unwrap_or_default();
            // Signatures by another user's user-signing key are that user's business only.
            merge_signatures(&mut key, &target, &signatures, |signer| {
                signer == user_id || signer == requester
            });
            match key_type.as_str() {
                "master" => {
                    response.master_keys.insert(user_id.clone(), key);
                }
                "self_signing" => {
                    response.self_signing_keys.insert(user_id.clone(), key);
                }
                "user_signing" if user_id == requester => {
                    response.user_signing_keys.insert(user_id.clone(), key);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Adds the uploaded signatures on `target_key` into `object.signatures`.
fn merge_signatures(
    object: &mut Value,
    target_key: &str,
    signatures: &[(String, String, String, String)],
    show: impl Fn(&str) -> bool,
) {
    for (target, signer, key_id, signature) in signatures {
        if target != target_key || !show(signer) {
            continue;
        }
        let Some(map) = object.as_object_mut() else {
            return;
        };
        let all = map
            .entry("signatures")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(all) = all.as_object_mut() {
            let by_signer = all
                .entry(signer.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(by_signer) = by_signer.as_object_mut() {
                by_signer.insert(key_id.clone(), Value::String(signature.clone()));
            }
        }
    }
}

/// The body of `POST /keys/claim`.
#[derive(Debug, Deserialize)]
pub struct ClaimRequest {
    pub one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Serialize, Default)]
pub struct ClaimResponse {
    pub one_time_keys: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>,
    pub failures: BTreeMap<String, Value>,
}

/// `POST /keys/claim`: one key per (user, device, algorithm), each handed out once; the
/// fallback key when no one-time key is left.
pub async fn claim(svc: &Services, req: ClaimRequest) -> Result<ClaimResponse> {
    let asked: usize = req.one_time_keys.values().map(BTreeMap::len).sum();
    if asked > MAX_QUERIED {
        return Err(Error::invalid_param(format!(
            "At most {MAX_QUERIED} devices per key claim"
        )));
    }
    let mut response = ClaimResponse::default();
    let mut remote: BTreeMap<ruma::OwnedServerName, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    let mut local = BTreeMap::new();
    for (user_id, devices) in req.one_time_keys {
        match remote_server(svc, &user_id)? {
            Some(server) => {
                remote.entry(server).or_default().insert(user_id, devices);
            }
            None => {
                local.insert(user_id, devices);
            }
        }
    }
    if !remote.is_empty() {
        let (keys, failures) = crate::federation::remote::claim_keys(svc, remote, req.timeout).await;
        response.one_time_keys.extend(keys);
        response.failures.extend(failures);
    }
    claim_local(svc, &local, &mut response).await?;
    Ok(response)
}

/// Claims local users' keys into `response` (remote servers' claims come here too).
pub async fn claim_local(
    svc: &Services,
    users: &BTreeMap<String, BTreeMap<String, String>>,
    response: &mut ClaimResponse,
) -> Result<()> {
    let mut claimed_from = Vec::new();
    for (user_id, devices) in users {
        if !is_local(svc, user_id) {
            continue;
        }
        for (device_id, algorithm) in devices {
            let claimed = match svc
                .store
                .claim_one_time_key(user_id, device_id, algorithm)
                .await?
            {
                Some(key) => Some(key),
                None => {
                    svc.store
                        .claim_fallback_key(user_id, device_id, algorithm)
                        .await?
                }
            };
            if let Some((key_id, json)) = claimed {
                if !claimed_from.contains(user_id) {
                    claimed_from.push(user_id.clone());
                }
                let key: Value = serde_json::from_str(&json).map_err(Error::internal)?;
                response
                    .one_time_keys
                    .entry(user_id.clone())
                    .or_default()
                    .entry(device_id.clone())
                    .or_default()
                    .insert(format!("{algorithm}:{key_id}"), key);
            }
        }
    }
    // Their devices' key counts in `/sync` went down (they may need to upload more).
    if !claimed_from.is_empty() {
        svc.notifier.notify(claimed_from);
    }
    Ok(())
}
