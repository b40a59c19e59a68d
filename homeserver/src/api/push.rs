//! Push rules (`/pushrules`), pushers (`/pushers`) and the notification list (`/notifications`).

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::{
    RoomId, UserId,
    push::{
        Action, NewConditionalPushRule, NewPatternedPushRule, NewPushRule, NewSimplePushRule, PushCondition,
        RuleKind, Ruleset,
    },
};
use serde_json::{Value, json};

use crate::{
    api::extract::{Auth, JsonBody},
    error::{ApiError, ApiResult},
    push::{self, pushers},
    rooms::{access::RoomAccess, client_event::client_event},
    services::Services,
};

fn check_scope(scope: &str) -> ApiResult<()> {
    if scope == "global" {
        Ok(())
    } else {
        Err(ApiError::invalid_param(format!(
            "Unknown push rule scope {scope}"
        )))
    }
}

fn parse_kind(kind: &str) -> ApiResult<RuleKind> {
    Ok(match kind {
        "override" => RuleKind::Override,
        "content" => RuleKind::Content,
        "room" => RuleKind::Room,
        "sender" => RuleKind::Sender,
        "underride" => RuleKind::Underride,
        _ => return Err(ApiError::invalid_param(format!("Unknown push rule kind {kind}"))),
    })
}

fn ruleset_json(ruleset: &Ruleset) -> ApiResult<Value> {
    push::rules::to_client_json(ruleset)
}

/// One rule as JSON, or 404 `M_NOT_FOUND`.
fn rule_json(ruleset: &Ruleset, kind: &str, rule_id: &str) -> ApiResult<Value> {
    ruleset_json(ruleset)?
        .get(kind)
        .and_then(Value::as_array)
        .and_then(|rules| {
            rules
                .iter()
                .find(|r| r.get("rule_id").and_then(Value::as_str) == Some(rule_id))
                .cloned()
        })
        .ok_or_else(|| ApiError::not_found("The push rule was not found"))
}

/// `GET /pushrules/`
pub async fn get_all(State(svc): State<Services>, auth: Auth) -> ApiResult<Json<Value>> {
    let ruleset = push::ruleset(&svc, &auth.user_id).await?;
    Ok(Json(json!({ "global": ruleset_json(&ruleset)? })))
}

/// `GET /pushrules/{scope}/`
pub async fn get_scope(
    State(svc): State<Services>,
    auth: Auth,
    Path(scope): Path<String>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let ruleset = push::ruleset(&svc, &auth.user_id).await?;
    Ok(Json(ruleset_json(&ruleset)?))
}

/// `GET /pushrules/{scope}/{kind}/{ruleId}`
pub async fn get_rule(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    parse_kind(&kind)?;
    let ruleset = push::ruleset(&svc, &auth.user_id).await?;
    Ok(Json(rule_json(&ruleset, &kind, &rule_id)?))
}

#[derive(Debug, serde::Deserialize)]
pub struct PlacementQuery {
    before: Option<String>,
    after: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
pub struct RuleBody {
    actions: Option<Vec<Action>>,
    conditions: Option<Vec<PushCondition>>,
    pattern: Option<String>,
}

/// `PUT /pushrules/{scope}/{kind}/{ruleId}`: creates or replaces a user-defined rule.
pub async fn put_rule(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind_name, rule_id)): Path<(String, String, String)>,
    Query(placement): Query<PlacementQuery>,
    JsonBody(body): JsonBody<RuleBody>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let kind = parse_kind(&kind_name)?;
    let actions = body
        .actions
        .ok_or_else(|| ApiError::missing_param("Missing 'actions'"))?;
    let rule = match kind {
        RuleKind::Override | RuleKind::Underride => {
            let rule =
                NewConditionalPushRule::new(rule_id.clone(), body.conditions.unwrap_or_default(), actions);
            if kind == RuleKind::Override {
                NewPushRule::Override(rule)
            } else {
                NewPushRule::Underride(rule)
            }
        }
        RuleKind::Content => {
            let pattern = body
                .pattern
                .ok_or_else(|| ApiError::missing_param("Content rule missing 'pattern'"))?;
            NewPushRule::Content(NewPatternedPushRule::new(rule_id.clone(), pattern, actions))
        }
        RuleKind::Room => {
            let room_id = RoomId::parse(&rule_id)
                .map_err(|_| ApiError::invalid_param("A room rule's ID must be a room ID"))?;
            NewPushRule::Room(NewSimplePushRule::new(room_id, actions))
        }
        RuleKind::Sender => {
            let user_id = UserId::parse(&rule_id)
                .map_err(|_| ApiError::invalid_param("A sender rule's ID must be a user ID"))?;
            NewPushRule::Sender(NewSimplePushRule::new(user_id, actions))
        }
        _ => return Err(ApiError::invalid_param("Unknown push rule kind")),
    };
    push::rules::put_rule(
        &svc,
        &auth.user_id,
        rule,
        placement.after.as_deref(),
        placement.before.as_deref(),
    )
    .await?;
    Ok(Json(json!({})))
}

/// `DELETE /pushrules/{scope}/{kind}/{ruleId}`
pub async fn delete_rule(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let kind = parse_kind(&kind)?;
    push::rules::delete_rule(&svc, &auth.user_id, kind, &rule_id).await?;
    Ok(Json(json!({})))
}

/// `GET /pushrules/{scope}/{kind}/{ruleId}/{attr}` for `enabled` and `actions`.
pub async fn get_attr(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind, rule_id, attr)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    parse_kind(&kind)?;
    if attr != "enabled" && attr != "actions" {
        return Err(ApiError::unrecognized(axum::http::StatusCode::NOT_FOUND));
    }
    let ruleset = push::ruleset(&svc, &auth.user_id).await?;
    let rule = rule_json(&ruleset, &kind, &rule_id)?;
    let value = rule.get(attr.as_str()).cloned().unwrap_or(Value::Null);
    Ok(Json(json!({ attr: value })))
}

/// `PUT /pushrules/{scope}/{kind}/{ruleId}/{attr}` for `enabled` and `actions`.
pub async fn put_attr(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind_name, rule_id, attr)): Path<(String, String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let kind = parse_kind(&kind_name)?;
    match attr.as_str() {
        "enabled" => {
            let enabled = body
                .get("enabled")
                .and_then(Value::as_bool)
                .ok_or_else(|| ApiError::bad_json("'enabled' must be a boolean"))?;
            push::rules::set_enabled(&svc, &auth.user_id, kind, &rule_id, enabled).await?;
        }
        "actions" => {
            let actions: Vec<Action> = body
                .get("actions")
                .cloned()
                .ok_or_else(|| ApiError::missing_param("Missing 'actions'"))
                .and_then(|a| serde_json::from_value(a).map_err(|e| ApiError::bad_json(e.to_string())))?;
            push::rules::set_actions(&svc, &auth.user_id, kind, &rule_id, actions).await?;
        }
        _ => return Err(ApiError::unrecognized(axum::http::StatusCode::NOT_FOUND)),
    }
    Ok(Json(json!({})))
}

/// `GET /pushers`
pub async fn get_pushers(State(svc): State<Services>, auth: Auth) -> ApiResult<Json<Value>> {
    let rows = svc.store.pushers(auth.user_id.as_str()).await?;
    let list: Vec<Value> = rows.iter().map(pushers::pusher_json).collect();
    Ok(Json(json!({ "pushers": list })))
}

/// `POST /pushers/set`
pub async fn set_pusher(
    State(svc): State<Services>,
    auth: Auth,
    JsonBody(body): JsonBody<pushers::SetPusher>,
) -> ApiResult<Json<Value>> {
    pushers::set_pusher(&svc, auth.user_id.as_str(), &auth.device_id, body).await?;
    Ok(Json(json!({})))
}

/// `GET /notifications?from=&limit=&only=highlight`: the user's notified events, newest first.
pub async fn notifications(
    State(svc): State<Services>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let before = match query.get("from") {
        Some(from) => from
            .parse::<i64>()
            .map_err(|_| ApiError::invalid_param("Invalid 'from' token"))?,
        None => i64::MAX,
    };
    let limit = match query.get("limit") {
        Some(limit) => limit
            .parse::<i64>()
            .ok()
            .filter(|l| *l >= 0)
            .ok_or_else(|| ApiError::invalid_param("Invalid 'limit'"))?
            .min(1000),
        None => 50,
    };
    let only_highlight = query.get("only").is_some_and(|o| o.contains("highlight"));
    let rows = svc
        .store
        .push_notifications(auth.user_id.as_str(), before, limit, only_highlight)
        .await?;
    let rooms: Vec<String> = rows
        .iter()
        .map(|r| r.room_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let access = RoomAccess::load_many(&svc, &rooms, Some(auth.user_id.as_str())).await?;
    let mut versions: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(event) = svc.store.event(&row.event_id).await? else {
            continue;
        };
        if !access.get(&row.room_id).is_some_and(|a| a.can_see(&event)) {
            continue;
        }
        let version = match versions.get(&row.room_id) {
            Some(v) => v.clone(),
            None => {
                let Some(room) = svc.store.room(&row.room_id).await? else {
                    continue;
                };
                versions.insert(row.room_id.clone(), room.room_version.clone());
                room.room_version
            }
        };
        let actions: Value = serde_json::from_str(&row.actions).unwrap_or_else(|_| json!([]));
        out.push(json!({
            "actions": actions,
            "event": client_event(&svc, &event, &version, None).await?,
            "read": false,
            "room_id": row.room_id,
            "ts": event.origin_server_ts,
        }));
    }
    let mut body = json!({ "notifications": out });
    if limit > 0
        && rows.len() as i64 == limit
        && let Some(last) = rows.last()
    {
        body["next_token"] = json!(last.stream_ordering.to_string());
    }
    Ok(Json(body))
}
