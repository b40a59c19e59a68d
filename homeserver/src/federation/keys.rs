//! Server keys: this server's response (`/_matrix/key/v2/server`), other servers' keys fetched
//! directly or through the operator's `trusted_key_servers` and cached in the database, and
//! the notary (`/_matrix/key/v2/query`), which hands out cached or fresh responses with its own
//! signature added.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use hearth_federation::server_keys::{self, ServerKeys};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName, serde::Base64};

use crate::{Error, error::Result, services::Services, util::now_ms};

/// How long this server's key response says its keys are valid.
pub const KEY_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The largest `/_matrix/key/v2/server` response read from another server.
const KEY_RESPONSE_LIMIT: usize = 64 * 1024;
/// The largest notary response read.
const NOTARY_RESPONSE_LIMIT: usize = 1024 * 1024;
/// One server's keys are fetched at most this often (a flood of requests naming unknown keys
/// cannot turn into a flood of fetches).
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// How long one key fetch (direct, or from one notary) may take: well below a caller's request
/// timeout, so a notary answers its own callers even when the server asked about hangs.
const KEY_FETCH_TIMEOUT: Duration = Duration::from_secs(6);
/// Servers one notary query may name.
pub const MAX_NOTARY_SERVERS: usize = 50;

/// This server's signed key response.
pub fn own_response(svc: &Services) -> CanonicalJsonObject {
    let name = <&ServerName>::try_from(svc.server_name()).expect("the configured server name is valid");
    let valid_until = now_ms() + KEY_VALIDITY.as_millis() as i64;
    server_keys::build(name, &svc.signing_key, &svc.federation.old_keys(), valid_until)
}

/// The public key `key_id` of `server`, valid for requests now: this server's own, a cached
/// one, or one fetched (at most once per `REFETCH_INTERVAL` per server). None when unknown.
pub async fn request_key(svc: &Services, server: &ServerName, key_id: &str) -> Result<Option<Base64>> {
    if server.as_str() == svc.server_name() {
        return Ok((key_id == svc.signing_key.key_id())
            .then(|| Base64::parse(svc.signing_key.public_key_base64()).ok())
            .flatten());
    }
    let usable =
        |row: &crate::store::RemoteKeyRow| row.expired_ts.is_none() && row.valid_until_ts >= now_ms();
    if let Some(row) = svc.store.remote_server_key(server.as_str(), key_id).await?
        && usable(&row)
    {
        return Ok(Base64::parse(&row.public_key).ok());
    }
    if let Err(error) = fetch(svc, server, Some(key_id)).await {
        tracing::info!(%server, %error, "cannot fetch server keys");
    }
    Ok(svc
        .store
        .remote_server_key(server.as_str(), key_id)
        .await?
        .filter(usable)
        .and_then(|row| Base64::parse(&row.public_key).ok()))
}

/// Fetches `server`'s keys, directly, else from each trusted key server in turn; stores and
/// returns the verified response (as its origin signed it). Spaced out per server. `key_id`,
/// when known, is named in the notary query (Synapse as a notary fetches uncached keys only
/// for named key IDs, and requires `minimum_valid_until_ts` with each).
pub async fn fetch(svc: &Services, server: &ServerName, key_id: Option<&str>) -> Result<CanonicalJsonObject> {
    {
        let mut last = svc.federation.last_fetch.lock().expect("last fetch lock");
        let now = Instant::now();
        if let Some(at) = last.get(server.as_str())
            && now.duration_since(*at) < REFETCH_INTERVAL
        {
            return Err(Error::unknown(format!(
                "{server}'s keys were fetched moments ago"
            )));
        }
        if last.len() > 10_000 {
            last.retain(|_, at| now.duration_since(*at) < REFETCH_INTERVAL);
        }
        last.insert(server.to_string(), now);
    }
    let client = svc.federation.client()?;
    let direct = async {
        let body = client
            .get(server, "/_matrix/key/v2/server", None, KEY_RESPONSE_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
        let response = server_keys::parse(&body).map_err(|e| e.to_string())?;
        let keys = server_keys::verify(&response, server).map_err(|e| e.to_string())?;
        Ok::<_, String>((response, keys))
    };
    let direct = async {
        tokio::time::timeout(KEY_FETCH_TIMEOUT, direct)
            .await
            .unwrap_or_else(|_| Err(format!("{server} took too long")))
    };
    let found = match direct.await {
        Ok(found) => Some(found),
        Err(error) => {
            tracing::info!(%server, %error, "direct key fetch failed");
            let mut found = None;
            for notary in &svc.config.trusted_key_servers {
                let attempt =
                    tokio::time::timeout(KEY_FETCH_TIMEOUT, via_notary(svc, notary, server, key_id));
                match attempt
                    .await
                    .unwrap_or_else(|_| Err("the notary took too long".into()))
                {
                    Ok(result) => {
                        found = Some(result);
                        break;
                    }
                    Err(error) => {
                        tracing::info!(%server, notary = %notary.server_name, %error, "notary key fetch failed")
                    }
                }
            }
            found
        }
    };
    let Some((mut response, keys)) = found else {
        return Err(Error::unknown(format!("cannot fetch the keys of {server}")));
    };
    // Keep only the origin's signature: a notary adds its own when handing it out.
    if let Some(CanonicalJsonValue::Object(signatures)) = response.get_mut("signatures") {
        signatures.retain(|name, _| name == server.as_str());
    }
    store(svc, server, &response, &keys).await?;
    Ok(response)
}

async fn via_notary(
    svc: &Services,
    notary: &crate::config::TrustedKeyServer,
    server: &ServerName,
    key_id: Option<&str>,
) -> std::result::Result<(CanonicalJsonObject, ServerKeys), String> {
    let client = svc.federation.client().map_err(|e| e.to_string())?;
    let notary_name = <&ServerName>::try_from(notary.server_name.as_str()).map_err(|e| e.to_string())?;
    let notary_keys: BTreeMap<String, Base64> = notary
        .verify_keys
        .iter()
        .filter_map(|(id, key)| Some((id.clone(), Base64::parse(key).ok()?)))
        .collect();
    let criteria = match key_id {
        Some(key_id) => serde_json::json!({ key_id: { "minimum_valid_until_ts": now_ms() } }),
        None => serde_json::json!({}),
    };
    let body = serde_json::to_vec(&serde_json::json!({ "server_keys": { server.as_str(): criteria } }))
        .map_err(|e| e.to_string())?;
    let answer = client
        .post(
            notary_name,
            "/_matrix/key/v2/query",
            body,
            Some(&svc.signing_key),
            NOTARY_RESPONSE_LIMIT,
        )
        .await
        .map_err(|e| e.to_string())?;
    let answer = server_keys::parse(&answer).map_err(|e| e.to_string())?;
    let Some(CanonicalJsonValue::Array(responses)) = answer.get("server_keys") else {
        return Err("the notary's answer has no server_keys".into());
    };
    let mut last_error = format!("the notary has no keys of {server}");
    for response in responses {
        let CanonicalJsonValue::Object(response) = response else {
            continue;
        };
        let checked = server_keys::check_signature(response, notary_name.as_str(), &notary_keys)
            .and_then(|()| server_keys::verify(response, server));
        match checked {
            Ok(keys) => return Ok((response.clone(), keys)),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(last_error)
}

async fn store(
    svc: &Services,
    server: &ServerName,
    response: &CanonicalJsonObject,
    keys: &ServerKeys,
) -> Result<()> {
    let json = serde_json::to_string(response).map_err(|e| Error::Internal(e.to_string()))?;
    let verify: Vec<(String, String)> = keys
        .verify_keys
        .iter()
        .map(|(id, key)| (id.clone(), key.encode()))
        .collect();
    let old: Vec<(String, String, i64)> = keys
        .old_verify_keys
        .iter()
        .map(|(id, (key, ts))| (id.clone(), key.encode(), *ts))
        .collect();
    svc.store
        .store_remote_key_response(
            server.as_str(),
            &json,
            keys.valid_until_ts,
            now_ms(),
            &verify,
            &old,
        )
        .await?;
    Ok(())
}

/// The notary: for each server asked about, its key response valid until at least the asked
/// time (default: now), from the cache or fetched; a stale cached one when a fetch fails; none
/// when nothing is known. Each carries this server's signature too.
pub async fn notary_query(
    svc: &Services,
    queries: Vec<(OwnedServerName, Option<i64>)>,
) -> Result<Vec<CanonicalJsonObject>> {
    if queries.len() > MAX_NOTARY_SERVERS {
        return Err(Error::invalid_param(format!(
            "at most {MAX_NOTARY_SERVERS} servers per key query"
        )));
    }
    let answers = join_all(queries.iter().map(|(server, min_valid)| async move {
        let min_valid = min_valid.unwrap_or_else(now_ms);
        if server.as_str() == svc.server_name() {
            return Ok(Some(own_response(svc)));
        }
        let cached = svc.store.remote_key_response(server.as_str()).await?;
        let cached = cached.and_then(|(json, valid_until)| {
            Some((
                serde_json::from_str::<CanonicalJsonObject>(&json).ok()?,
                valid_until,
            ))
        });
        if let Some((response, valid_until)) = &cached
            && *valid_until >= min_valid
        {
            return Ok(Some(response.clone()));
        }
        if svc.federation.client().is_ok() {
            match fetch(svc, server, None).await {
                Ok(response) => return Ok(Some(response)),
                Err(error) => tracing::info!(%server, %error, "notary: no fresh keys"),
            }
        }
        Ok::<_, Error>(cached.map(|(response, _)| response))
    }))
    .await;
    let name = <&ServerName>::try_from(svc.server_name()).expect("the configured server name is valid");
    let mut out = Vec::new();
    for answer in answers {
        if let Some(mut response) = answer? {
            server_keys::add_notary_signature(&mut response, name, &svc.signing_key);
            out.push(response);
        }
    }
    Ok(out)
}
