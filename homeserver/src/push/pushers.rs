//! Pushers: where a user's notifications go, and delivery to HTTP push gateways
//! (Push Gateway API, `POST /_matrix/push/v1/notify`).
//!
//! Delivery runs in a spawned task so that a slow or unreachable gateway never delays sending;
//! the client is `gateway`'s (`https://` and `http://`).
//!
//! Gateway addresses are checked twice (see `address`): when the pusher is set, for an early
//! 400, and when delivering, where the client connects only to addresses it checked.

use ruma::{
    UserId,
    push::{Action, Tweak},
};
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    services::Services,
    store::{NewEvent, PushActionRow, PusherRow},
    util::now_ms,
};

/// The path every HTTP pusher URL must have.
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// The body of `POST /pushers/set`.
#[derive(Debug, serde::Deserialize)]
pub struct SetPusher {
    pub pushkey: String,
    /// `None` (JSON `null`) deletes the pusher.
    pub kind: Option<String>,
    pub app_id: String,
    pub app_display_name: Option<String>,
    pub device_display_name: Option<String>,
    pub profile_tag: Option<String>,
    pub lang: Option<String>,
    pub data: Option<Map<String, Value>>,
    #[serde(default)]
    pub append: bool,
}

/// Adds, replaces or (with `kind: null`) deletes a pusher of `user_id`, set from `device_id`
/// (the pusher is deleted with that device).
pub async fn set_pusher(
    svc: &Services,
    user_id_typed: &UserId,
    device_id: &str,
    body: SetPusher,
) -> Result<()> {
    let user_id = user_id_typed.as_str();
    svc.rate_limiter
        .check(crate::ratelimit::Action::Pusher, user_id)?;
    if body.pushkey.len() > 512 {
        return Err(Error::invalid_param("pushkey is longer than 512 bytes"));
    }
    if body.app_id.chars().count() > 64 {
        return Err(Error::invalid_param("app_id is longer than 64 characters"));
    }
    let Some(kind) = body.kind else {
        svc.store
            .delete_pusher(user_id, &body.app_id, &body.pushkey)
            .await?;
        return Ok(());
    };
    let mut missing = Vec::new();
    if body.app_display_name.is_none() {
        missing.push("app_display_name");
    }
    if body.device_display_name.is_none() {
        missing.push("device_display_name");
    }
    if body.lang.is_none() {
        missing.push("lang");
    }
    if body.data.is_none() {
        missing.push("data");
    }
    if !missing.is_empty() {
        return Err(Error::missing_param(format!(
            "Missing parameters: {}",
            missing.join(", ")
        )));
    }
    let data = body.data.unwrap_or_default();
    match kind.as_str() {
        "http" => {
            check_url(data.get("url"))?;
            check_destination(svc, data.get("url").and_then(Value::as_str).unwrap_or_default()).await?;
        }
        _ => return Err(Error::invalid_param(format!("Unsupported pusher kind {kind}"))),
    }
    let row = PusherRow {
        user_id: user_id.to_owned(),
        app_id: body.app_id,
        pushkey: body.pushkey,
        kind,
        app_display_name: body.app_display_name.unwrap_or_default(),
        device_display_name: body.device_display_name.unwrap_or_default(),
        profile_tag: body.profile_tag,
        lang: body.lang.unwrap_or_default(),
        data: serde_json::to_string(&data).map_err(Error::internal)?,
        pushkey_ts: now_ms() / 1000,
        device_id: Some(device_id.to_owned()),
    };
    svc.store.upsert_pusher(&row, body.append).await?;
    Ok(())
}

/// An HTTP pusher needs `data.url`: an http(s) URL whose path is `/_matrix/push/v1/notify`.
fn check_url(url: Option<&Value>) -> Result<()> {
    let url = url
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid_param("data.url is required for http pushers"))?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| Error::invalid_param("data.url must be an http(s) URL"))?;
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if rest.starts_with('/') || path != NOTIFY_PATH {
        return Err(Error::invalid_param(format!(
            "data.url must have the path {NOTIFY_PATH}"
        )));
    }
    Ok(())
}

/// Refuses a gateway URL whose host is, or resolves only to, addresses gateways may not use.
/// A name that does not resolve (now) is accepted: delivery checks again.
async fn check_destination(svc: &Services, url: &str) -> Result<()> {
    let parsed: hyper::Uri = url
        .parse()
        .map_err(|_| Error::invalid_param("data.url is not a valid URL"))?;
    let Some(host) = parsed.host() else {
        return Err(Error::invalid_param("data.url has no host"));
    };
    let port = parsed
        .port_u16()
        .unwrap_or(if parsed.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let lookup = svc.push.addresses.resolve(host, port);
    match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
        Ok(Ok(permitted)) if permitted.is_empty() => Err(Error::invalid_param(
            "data.url is on a loopback, private or otherwise non-public address, which this server does not push to",
        )),
        _ => Ok(()),
    }
}

/// True when `url` names an IP address gateways may not use. (Names are checked by the
/// client's resolver as it connects; literals never reach a resolver.) Parsed as the client
/// parses it, so the two cannot read another host out of one URL.
fn refused_literal(svc: &Services, url: &str) -> bool {
    let Ok(parsed) = url.parse::<hyper::Uri>() else {
        return true;
    };
    let Some(host) = parsed.host() else {
        return true;
    };
    match host.trim_start_matches('[').trim_end_matches(']').parse() {
        Ok(ip) => !svc.push.addresses.permits(ip),
        Err(_) => false,
    }
}

/// A pusher as `GET /pushers` lists it.
pub fn pusher_json(row: &PusherRow) -> Value {
    let data: Value = serde_json::from_str(&row.data).unwrap_or_else(|_| json!({}));
    let mut out = json!({
        "pushkey": row.pushkey,
        "kind": row.kind,
        "app_id": row.app_id,
        "app_display_name": row.app_display_name,
        "device_display_name": row.device_display_name,
        "lang": row.lang,
        "data": data,
    });
    if let Some(tag) = &row.profile_tag {
        out["profile_tag"] = json!(tag);
    }
    out
}

/// A user's pushers as `GET /pushers` lists them.
pub async fn of_user(svc: &Services, user_id: &UserId) -> Result<Vec<Value>> {
    let rows = svc.store.pushers(user_id.as_str()).await?;
    Ok(rows.iter().map(pusher_json).collect())
}

/// Sends the notifications of a batch of stored events (each with the stored push rule
/// outcomes of the users it notified) to those users' pushers, in order, in the background.
/// One lookup finds the batch's pushers: most users have none, and a batch to large rooms
/// notifies thousands of them.
pub fn spawn_delivery(svc: Services, batch: Vec<(NewEvent, Vec<PushActionRow>)>) {
    tokio::spawn(async move {
        let mut users: Vec<String> = batch
            .iter()
            .flat_map(|(_, rows)| rows.iter().map(|row| row.user_id.clone()))
            .collect();
        users.sort_unstable();
        users.dedup();
        let pushers = match svc.store.pushers_of(&users).await {
            Ok(pushers) => pushers,
            Err(error) => {
                tracing::warn!(error = %error, "push delivery failed: pushers not read");
                return;
            }
        };
        if pushers.is_empty() {
            return;
        }
        let with_pushers: std::collections::HashSet<&str> =
            pushers.iter().map(|p| p.user_id.as_str()).collect();
        for (event, rows) in batch {
            let notified: Vec<(String, Vec<Action>)> = rows
                .into_iter()
                .filter(|row| with_pushers.contains(row.user_id.as_str()))
                .map(|row| {
                    (
                        row.user_id,
                        serde_json::from_str(&row.actions).unwrap_or_default(),
                    )
                })
                .collect();
            if notified.is_empty() {
                continue;
            }
            if let Err(error) = deliver(&svc, &event, &notified, &pushers).await {
                tracing::warn!(event_id = %event.event_id, error = %error, "push delivery failed");
            }
        }
    });
}

/// The `tweaks` of a rule's actions, as the gateway expects them.
fn tweaks(actions: &[Action]) -> Value {
    let mut out = Map::new();
    for action in actions {
        if let Action::SetTweak(tweak) = action {
            let value = match tweak {
                Tweak::Highlight(_) => json!(action.is_highlight()),
                other => other
                    .value()
                    .and_then(|raw| serde_json::from_str(raw.get()).ok())
                    .unwrap_or(json!(true)),
            };
            out.insert(tweak.set_tweak().to_owned(), value);
        }
    }
    Value::Object(out)
}

async fn deliver(
    svc: &Services,
    event: &NewEvent,
    notified: &[(String, Vec<Action>)],
    pushers: &[PusherRow],
) -> Result<()> {
    let pdu: Value = serde_json::from_str(&event.json).map_err(Error::internal)?;
    let content = pdu.get("content").cloned().unwrap_or_else(|| json!({}));
    let sender_display_name = state_content(svc, &event.room_id, "m.room.member", &event.sender)
        .await?
        .and_then(|c| {
            c.get("displayname")
                .and_then(Value::as_str)
                .map(ToOwned::to_owned)
        });
    let room_name = state_content(svc, &event.room_id, "m.room.name", "")
        .await?
        .and_then(|c| c.get("name").and_then(Value::as_str).map(ToOwned::to_owned));
    let room_alias = state_content(svc, &event.room_id, "m.room.canonical_alias", "")
        .await?
        .and_then(|c| c.get("alias").and_then(Value::as_str).map(ToOwned::to_owned));

    for (user, actions) in notified {
        let unread = super::unread_badge(svc, user).await?;
        let tweaks = tweaks(actions);
        let high = tweaks.get("highlight") == Some(&json!(true))
            || tweaks.get("sound").is_some()
            || event.event_type == "m.room.encrypted";
        for pusher in pushers.iter().filter(|p| &p.user_id == user && p.kind == "http") {
            let mut data: Map<String, Value> = serde_json::from_str(&pusher.data).unwrap_or_default();
            let Some(url) = data.remove("url").and_then(|u| u.as_str().map(ToOwned::to_owned)) else {
                continue;
            };
            let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
            let device = json!({
                "app_id": pusher.app_id,
                "pushkey": pusher.pushkey,
                "pushkey_ts": pusher.pushkey_ts,
                "data": data,
                "tweaks": tweaks,
            });
            let mut notification = json!({
                "event_id": event.event_id,
                "room_id": event.room_id,
                "prio": if high { "high" } else { "low" },
                "counts": {"unread": unread},
                "devices": [device],
            });
            if !event_id_only {
                notification["type"] = json!(event.event_type);
                notification["sender"] = json!(event.sender);
                notification["content"] = content.clone();
                if let Some(name) = &sender_display_name {
                    notification["sender_display_name"] = json!(name);
                }
                if let Some(name) = &room_name {
                    notification["room_name"] = json!(name);
                }
                if let Some(alias) = &room_alias {
                    notification["room_alias"] = json!(alias);
                }
                if event.event_type == "m.room.member" {
                    notification["user_is_target"] = json!(event.state_key.as_deref() == Some(user.as_str()));
                }
            }
            post(svc, pusher, &url, json!({ "notification": notification })).await;
        }
    }
    Ok(())
}

/// POSTs one notification; a pushkey the gateway rejects is removed, as the spec asks.
async fn post(svc: &Services, pusher: &PusherRow, url: &str, body: Value) {
    if refused_literal(svc, url) {
        tracing::warn!(%url, "push gateway address refused (not a public address)");
        return;
    }
    let (status, answer) = match svc.push.gateways.post_json(url, &body).await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(%url, %error, "push gateway unreachable");
            return;
        }
    };
    if !status.is_success() {
        tracing::warn!(%url, %status, "push gateway refused the notification");
        return;
    }
    let rejected = answer
        .get("rejected")
        .and_then(Value::as_array)
        .is_some_and(|keys| keys.iter().any(|k| k.as_str() == Some(pusher.pushkey.as_str())));
    if rejected {
        tracing::info!(user_id = %pusher.user_id, app_id = %pusher.app_id, "push gateway rejected the pushkey; removing the pusher");
        if let Err(error) = svc
            .store
            .delete_pusher(&pusher.user_id, &pusher.app_id, &pusher.pushkey)
            .await
        {
            tracing::warn!(%error, "could not remove a rejected pusher");
        }
    }
}

/// The content of a current state event of the room, if present.
async fn state_content(
    svc: &Services,
    room_id: &str,
    event_type: &str,
    state_key: &str,
) -> Result<Option<Value>> {
    let wanted = [(event_type.to_owned(), state_key.to_owned())];
    let found = svc.store.current_state_entries(room_id, &wanted).await?;
    Ok(found.into_iter().next().and_then(|(_, _, json)| {
        serde_json::from_str::<Value>(&json)
            .ok()
            .and_then(|pdu| pdu.get("content").cloned())
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pusher_urls_need_the_notify_path() {
        assert!(check_url(Some(&json!("http://127.0.0.1:9/_matrix/push/v1/notify"))).is_ok());
        assert!(check_url(Some(&json!("https://push.example.org/_matrix/push/v1/notify"))).is_ok());
        assert!(check_url(Some(&json!("https://push.example.org/notify"))).is_err());
        assert!(check_url(Some(&json!("https://push.example.org"))).is_err());
        assert!(check_url(Some(&json!("ftp://push.example.org/_matrix/push/v1/notify"))).is_err());
        assert!(check_url(Some(&json!(5))).is_err());
        assert!(check_url(None).is_err());
    }
}
