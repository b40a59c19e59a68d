//! Cross-signing: `POST /keys/device_signing/upload` and `POST /keys/signatures/upload`.

use std::collections::BTreeMap;

use hearth_e2ee::verify::verify_signed_json;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{MAX_SIGNATURE_UPLOADS, signed_part};
use crate::{
    error::{Error, Result},
    services::Services,
    users::uia::{self, Operation},
};

/// The keys of `/keys/device_signing/upload`, as JSON.
#[derive(Debug, Default)]
pub struct SigningKeys {
    pub master: Option<Value>,
    pub self_signing: Option<Value>,
    pub user_signing: Option<Value>,
}

/// The public key of a cross-signing key: the one `ed25519:<key>` entry of `keys`.
pub fn public_key(key: &Value) -> Option<String> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, value) = keys.iter().next()?;
    let public = id.strip_prefix("ed25519:")?;
    (value.as_str() == Some(public)).then(|| public.to_owned())
}

/// Checks a cross-signing key's shape: the user's own, the usage, one ed25519 key; when
/// `signed_by` is given (the master key), a valid signature by it. Returns the public key.
fn check_key(key: &Value, user_id: &str, usage: &str, signed_by: Option<&str>) -> Result<String> {
    let field = format!("{usage}_key");
    if key.get("user_id").and_then(Value::as_str) != Some(user_id) {
        return Err(Error::invalid_param(format!(
            "{field}.user_id must be the user's own ID"
        )));
    }
    let usages = key
        .get("usage")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::invalid_param(format!("{field}.usage must be a list")))?;
    if !usages.iter().any(|u| u.as_str() == Some(usage)) || usages.len() > 8 {
        return Err(Error::invalid_param(format!(
            "{field}.usage must contain {usage}"
        )));
    }
    let public = public_key(key).ok_or_else(|| {
        Error::invalid_param(format!("{field}.keys must hold exactly one ed25519:<key>: <key>"))
    })?;
    if let Some(master) = signed_by {
        verify_signed_json(key, user_id, &format!("ed25519:{master}"), master)
            .map_err(|e| Error::invalid_param(format!("{field} is not signed by the master key: {e}")))?;
    }
    Ok(public)
}

/// `POST /keys/device_signing/upload`. User-interactive auth is skipped, as the spec says,
/// when the user has no master key yet, or when the request holds the same master key and
/// nothing that differs from what is stored (a retried upload).
pub async fn upload_signing_keys(
    svc: &Services,
    user: &ruma::UserId,
    keys: SigningKeys,
    operation: &Operation,
    auth: Option<&Value>,
) -> Result<()> {
    let user_id = user.as_str();
    let stored: BTreeMap<String, Value> = svc
        .store
        .cross_signing_keys(user_id)
        .await?
        .into_iter()
        .filter_map(|(t, json)| serde_json::from_str(&json).ok().map(|v| (t, v)))
        .collect();
    let provided = [
        ("master", &keys.master),
        ("self_signing", &keys.self_signing),
        ("user_signing", &keys.user_signing),
    ];
    let nothing_new = keys.master.is_some()
        && provided
            .iter()
            .all(|(t, k)| k.as_ref().is_none_or(|k| stored.get(*t) == Some(k)));
    if stored.contains_key("master") && !nothing_new {
        uia::confirm_password(svc, operation, auth, user).await?;
    }
    if provided.iter().all(|(_, k)| k.is_none()) {
        return Ok(());
    }
    let master = match &keys.master {
        Some(key) => check_key(key, user_id, "master", None)?,
        None => stored
            .get("master")
            .and_then(public_key)
            .ok_or_else(|| Error::invalid_param("No master key: upload one first"))?,
    };
    let mut new = Vec::new();
    if let Some(key) = &keys.master {
        new.push(("master".to_owned(), key.to_string()));
    }
    if let Some(key) = &keys.self_signing {
        check_key(key, user_id, "self_signing", Some(&master))?;
        new.push(("self_signing".to_owned(), key.to_string()));
    }
    if let Some(key) = &keys.user_signing {
        check_key(key, user_id, "user_signing", Some(&master))?;
        new.push(("user_signing".to_owned(), key.to_string()));
    }
    if nothing_new {
        return Ok(());
    }
    svc.store.set_cross_signing_keys(user_id, &new).await?;
    crate::federation::sender::signing_key_update(svc, user_id).await?;
    super::device_lists::announce(svc, user_id).await
}

#[derive(Debug, Serialize, Default)]
pub struct SignaturesResponse {
    pub failures: BTreeMap<String, BTreeMap<String, Value>>,
}

fn failure(errcode: &str, error: impl Into<String>) -> Value {
    json!({ "errcode": errcode, "error": error.into() })
}

/// `POST /keys/signatures/upload`: signatures by the user's self-signing key on their devices,
/// by their devices on their master key, and by their user-signing key on other users' master
/// keys. Each signed object must be the stored key plus signatures; each bad one is reported in
/// `failures`, the good ones stored.
pub async fn upload_signatures(
    svc: &Services,
    user_id: &str,
    body: BTreeMap<String, Map<String, Value>>,
) -> Result<SignaturesResponse> {
    let count: usize = body.values().map(Map::len).sum();
    if count > MAX_SIGNATURE_UPLOADS {
        return Err(Error::invalid_param(format!(
            "At most {MAX_SIGNATURE_UPLOADS} signed keys per request"
        )));
    }
    let own = svc.store.cross_signing_keys(user_id).await?;
    let own_key = |t: &str| {
        own.get(t)
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .as_ref()
            .and_then(public_key)
    };
    let self_signing = own_key("self_signing");
    let user_signing = own_key("user_signing");
    let mut response = SignaturesResponse::default();
    let mut accepted = Vec::new();
    let mut changed: Vec<String> = Vec::new();
    for (target_user, objects) in body {
        for (key_id, object) in objects {
            match check_signed(
                svc,
                user_id,
                &target_user,
                &key_id,
                &object,
                self_signing.as_deref(),
                user_signing.as_deref(),
            )
            .await?
            {
                Ok(signatures) => {
                    let notify = if target_user == user_id {
                        &target_user
                    } else {
                        user_id
                    };
                    if !changed.iter().any(|u| u == notify) {
                        changed.push(notify.to_owned());
                    }
                    for (signer_key_id, signature) in signatures {
                        accepted.push((
                            target_user.clone(),
                            key_id.clone(),
                            user_id.to_owned(),
                            signer_key_id,
                            signature,
                        ));
                    }
                }
                Err(error) => {
                    response
                        .failures
                        .entry(target_user.clone())
                        .or_default()
                        .insert(key_id, error);
                }
            }
        }
    }
    if !accepted.is_empty() {
        svc.store.add_signatures(&accepted, &changed).await?;
        for user in &changed {
            super::device_lists::announce(svc, user).await?;
        }
    }
    Ok(response)
}

/// The new signatures (signer key ID, signature) by `user_id` on one signed object, or the
/// failure to report for it.
async fn check_signed(
    svc: &Services,
    user_id: &str,
    target_user: &str,
    key_id: &str,
    object: &Value,
    self_signing: Option<&str>,
    user_signing: Option<&str>,
) -> Result<Result<Vec<(String, String)>, Value>> {
    if object.get("user_id").and_then(Value::as_str) != Some(target_user) {
        return Ok(Err(failure("M_INVALID_PARAM", "user_id does not match")));
    }
    // The stored key the object must be, and who may sign it with which key.
    let (stored, signer): (Option<Value>, Option<(String, String)>) = if target_user == user_id {
        if let Some(device) = svc.store.device_keys(user_id, key_id).await? {
            let stored = serde_json::from_str(&device).ok();
            (
                stored,
                self_signing.map(|k| (format!("ed25519:{k}"), k.to_owned())),
            )
        } else {
            let master = svc
                .store
                .cross_signing_keys(user_id)
                .await?
                .get("master")
                .and_then(|j| serde_json::from_str::<Value>(j).ok())
                .filter(|m| public_key(m).as_deref() == Some(key_id));
            // Signed by one of the user's devices: the signature's key ID names it.
            let device_signer = match object["signatures"][user_id].as_object() {
                Some(sigs) => {
                    let mut found = None;
                    for id in sigs.keys() {
                        let Some(device) = id.strip_prefix("ed25519:") else {
                            continue;
                        };
                        if let Some(keys) = svc.store.device_keys(user_id, device).await?
                            && let Ok(keys) = serde_json::from_str::<Value>(&keys)
                            && let Some(public) = keys["keys"][id].as_str()
                        {
                            found = Some((id.clone(), public.to_owned()));
                            break;
                        }
                    }
                    found
                }
                None => None,
            };
            (master, device_signer)
        }
    } else {
        if !super::is_local(svc, target_user) {
            return Ok(Err(failure("M_UNKNOWN", "Federation is not available")));
        }
        let master = svc
            .store
            .cross_signing_keys(target_user)
            .await?
            .get("master")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .filter(|m| public_key(m).as_deref() == Some(key_id));
        (
            master,
            user_signing.map(|k| (format!("ed25519:{k}"), k.to_owned())),
        )
    };
    let Some(stored) = stored else {
        return Ok(Err(failure("M_NOT_FOUND", "Unknown key")));
    };
    if signed_part(&stored) != signed_part(object) {
        return Ok(Err(failure(
            "M_INVALID_PARAM",
            "The signed object does not match the stored key",
        )));
    }
    let Some((signer_key_id, signer_public)) = signer else {
        return Ok(Err(failure(
            "M_INVALID_SIGNATURE",
            "No key of yours may sign this",
        )));
    };
    let Some(signature) = object["signatures"][user_id][&signer_key_id].as_str() else {
        return Ok(Err(failure("M_INVALID_SIGNATURE", "Missing signature")));
    };
    if verify_signed_json(object, user_id, &signer_key_id, &signer_public).is_err() {
        return Ok(Err(failure("M_INVALID_SIGNATURE", "Invalid signature")));
    }
    Ok(Ok(vec![(signer_key_id, signature.to_owned())]))
}
