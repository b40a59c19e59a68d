//! Questions this server asks other servers for its clients, and answers for theirs: device
//! keys (`/user/keys/query`), one-time key claims (`/user/keys/claim`), device lists
//! (`/user/devices`), profiles (`/query/profile`) and room aliases (`/query/directory`).
//!
//! Requests to several servers run in parallel, each bounded in time; what a server answers is
//! kept only for that server's own users and what was asked.

use std::{collections::BTreeMap, time::Duration};

use futures_util::future::join_all;
use ruma::{OwnedServerName, ServerName, UserId};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    services::Services,
};

/// Largest answer read from another server for a key query or claim.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Longest a client's key request waits for other servers, whatever its `timeout`.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// A failure as listed in `failures`.
fn failure(error: impl std::fmt::Display) -> Value {
    json!({ "errcode": "M_UNKNOWN", "error": error.to_string() })
}

/// POST `body` to `path` on each server, in parallel, within `wait`: each server's parsed
/// answer or why it failed.
async fn ask_each(
    svc: &Services,
    path: &'static str,
    bodies: BTreeMap<OwnedServerName, Value>,
    wait: Duration,
) -> Vec<(OwnedServerName, std::result::Result<Value, String>)> {
    let client = match svc.federation.client() {
        Ok(client) => client,
        Err(e) => {
            return bodies.into_keys().map(|s| (s, Err(e.to_string()))).collect();
        }
    };
    let asks = bodies.into_iter().map(|(server, body)| async move {
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let answer = tokio::time::timeout(
            wait,
            client.post(&server, path, body, Some(&svc.signing_key), MAX_ANSWER_BYTES),
        )
        .await;
        let result = match answer {
            Err(_) => Err(format!("{server} took too long")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(bytes)) => serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| format!("{server} sent invalid JSON: {e}")),
        };
        (server, result)
    });
    join_all(asks).await
}

/// How long to wait for other servers: the client's `timeout` (ms), at most `MAX_WAIT`.
fn wait_for(timeout_ms: Option<u64>) -> Duration {
    timeout_ms.map_or(MAX_WAIT, Duration::from_millis).min(MAX_WAIT)
}

/// The object of `answer[field][user_id]`, when `user_id` was asked of that server.
fn owned_by<'a>(
    answer: &'a Value,
    field: &str,
    server: &ServerName,
) -> impl Iterator<Item = (&'a String, &'a Value)> {
    answer
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(move |(user, _)| UserId::parse(user.as_str()).is_ok_and(|u| u.server_name() == server))
}

/// What remote servers answered to a key query, merged into a client's response.
#[derive(Default)]
pub struct RemoteKeys {
    pub device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    pub master_keys: BTreeMap<String, Value>,
    pub self_signing_keys: BTreeMap<String, Value>,
    pub failures: BTreeMap<String, Value>,
}

/// `/keys/query` for remote users: `POST /user/keys/query` on each of their servers.
pub async fn query_keys(
    svc: &Services,
    users: BTreeMap<OwnedServerName, BTreeMap<String, Vec<String>>>,
    timeout_ms: Option<u64>,
) -> RemoteKeys {
    let mut asked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let bodies = users
        .into_iter()
        .map(|(server, users)| {
            asked.extend(users.clone());
            (server, json!({ "device_keys": users }))
        })
        .collect();
    let mut out = RemoteKeys::default();
    for (server, result) in ask_each(
        svc,
        "/_matrix/federation/v1/user/keys/query",
        bodies,
        wait_for(timeout_ms),
    )
    .await
    {
        let answer = match result {
            Ok(answer) => answer,
            Err(error) => {
                tracing::info!(%server, %error, "remote key query failed");
                out.failures.insert(server.to_string(), failure(error));
                continue;
            }
        };
        for (user, devices) in owned_by(&answer, "device_keys", &server) {
            let Some(wanted) = asked.get(user) else { continue };
            let devices = devices
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(device, keys)| {
                    (wanted.is_empty() || wanted.contains(device))
                        && keys.get("user_id").and_then(Value::as_str) == Some(user.as_str())
                        && keys.get("device_id").and_then(Value::as_str) == Some(device.as_str())
                })
                .map(|(d, k)| (d.clone(), k.clone()))
                .collect();
            out.device_keys.insert(user.clone(), devices);
        }
        for (field, into) in [
            ("master_keys", &mut out.master_keys),
            ("self_signing_keys", &mut out.self_signing_keys),
        ] {
            for (user, key) in owned_by(&answer, field, &server) {
                if asked.contains_key(user) {
                    into.insert(user.clone(), key.clone());
                }
            }
        }
    }
    out
}

/// `/keys/claim` for remote users: `POST /user/keys/claim` on each of their servers. Returns
/// the claimed keys (user → device → key ID → key) and the servers that failed.
#[allow(clippy::type_complexity)]
pub async fn claim_keys(
    svc: &Services,
    users: BTreeMap<OwnedServerName, BTreeMap<String, BTreeMap<String, String>>>,
    timeout_ms: Option<u64>,
) -> (
    BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>,
    BTreeMap<String, Value>,
) {
    let mut asked: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let bodies = users
        .into_iter()
        .map(|(server, users)| {
            asked.extend(users.clone());
            (server, json!({ "one_time_keys": users }))
        })
        .collect();
    let (mut keys, mut failures) = (BTreeMap::new(), BTreeMap::new());
    for (server, result) in ask_each(
        svc,
        "/_matrix/federation/v1/user/keys/claim",
        bodies,
        wait_for(timeout_ms),
    )
    .await
    {
        let answer = match result {
            Ok(answer) => answer,
            Err(error) => {
                tracing::info!(%server, %error, "remote key claim failed");
                failures.insert(server.to_string(), failure(error));
                continue;
            }
        };
        for (user, devices) in owned_by(&answer, "one_time_keys", &server) {
            let Some(wanted) = asked.get(user) else { continue };
            let devices: BTreeMap<String, BTreeMap<String, Value>> = devices
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(device, _)| wanted.contains_key(*device))
                .filter_map(|(device, claimed)| {
                    let claimed: BTreeMap<String, Value> = serde_json::from_value(claimed.clone()).ok()?;
                    // One key, of the algorithm asked for.
                    let algorithm = &wanted[device];
                    let key = claimed
                        .into_iter()
                        .find(|(id, _)| id.split_once(':').is_some_and(|(a, _)| a == algorithm))?;
                    Some((device.clone(), BTreeMap::from([key])))
                })
                .collect();
            if !devices.is_empty() {
                keys.insert(user.clone(), devices);
            }
        }
    }
    (keys, failures)
}

/// A remote user's profile (or one field of it), from `GET /query/profile`.
pub async fn profile(svc: &Services, user_id: &UserId, field: Option<&str>) -> Result<Value> {
    let client = svc.federation.client()?;
    let mut path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        urlencoding(user_id.as_str())
    );
    if let Some(field) = field {
        path.push_str("&field=");
        path.push_str(&urlencoding(field));
    }
    let bytes = client
        .get(user_id.server_name(), &path, Some(&svc.signing_key), 64 << 10)
        .await
        .map_err(|e| {
            tracing::info!(%user_id, error = %e, "remote profile lookup failed");
            Error::not_found("Profile not found")
        })?;
    let answer: Value = serde_json::from_slice(&bytes).map_err(|_| Error::not_found("Profile not found"))?;
    let mut profile = serde_json::Map::new();
    for key in ["displayname", "avatar_url"] {
        if field.is_none_or(|f| f == key)
            && let Some(value) = answer.get(key).and_then(Value::as_str)
        {
            profile.insert(key.to_owned(), json!(value));
        }
    }
    Ok(Value::Object(profile))
}

/// A remote room alias, from `GET /query/directory` on the alias's server: (room ID, servers).
pub async fn resolve_alias(svc: &Services, alias: &ruma::RoomAliasId) -> Result<(String, Vec<String>)> {
    let client = svc.federation.client()?;
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        urlencoding(alias.as_str())
    );
    let bytes = client
        .get(alias.server_name(), &path, Some(&svc.signing_key), 64 << 10)
        .await
        .map_err(|e| {
            tracing::info!(%alias, error = %e, "remote alias lookup failed");
            Error::not_found("Room alias not found")
        })?;
    let answer: Value =
        serde_json::from_slice(&bytes).map_err(|_| Error::not_found("Room alias not found"))?;
    let room_id = answer
        .get("room_id")
        .and_then(Value::as_str)
        .filter(|r| ruma::RoomId::parse(*r).is_ok())
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let servers = answer
        .get("servers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|s| ServerName::parse(*s).is_ok())
        .take(20)
        .map(str::to_owned)
        .collect();
    Ok((room_id.to_owned(), servers))
}

/// Percent-encodes a query parameter's value.
fn urlencoding(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
