//! Push rules (`/pushrules`), pushers (`/pushers`) and the notification list (`/notifications`).
//!
//! The rule endpoints keep their hand-read paths and bodies: the routes take any `{scope}` (an
//! unknown one is `M_INVALID_PARAM`), and a missing `actions`/`pattern` is `M_MISSING_PARAM`
//! where ruma's requests would say `M_BAD_JSON`.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use ruma::api::client::push::{
    delete_pushrule, get_notifications, set_pusher as set_pusher_api, set_pushrule, set_pushrule_actions,
};
use serde_json::Value;

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::{Auth, JsonBody},
        ruma::{Ruma, RumaResponse},
    },
    push::{notifications, pushers, rules},
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

/// The whole rule set, as `GET /pushrules/` answers.
#[derive(serde::Serialize)]
pub struct AllRules {
    global: Value,
}

/// `GET /pushrules/`
pub async fn get_all(State(svc): State<Services>, auth: Auth) -> ApiResult<Json<AllRules>> {
    let global = rules::client_rules(&svc, &auth.user_id).await?;
    Ok(Json(AllRules { global }))
}

/// `GET /pushrules/{scope}/`
pub async fn get_scope(
    State(svc): State<Services>,
    auth: Auth,
    Path(scope): Path<String>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    Ok(Json(rules::client_rules(&svc, &auth.user_id).await?))
}

/// `GET /pushrules/{scope}/{kind}/{ruleId}`
pub async fn get_rule(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let kind = rules::parse_kind(&kind)?;
    Ok(Json(
        rules::client_rule(&svc, &auth.user_id, kind, &rule_id).await?,
    ))
}

#[derive(Debug, serde::Deserialize)]
pub struct PlacementQuery {
    before: Option<String>,
    after: Option<String>,
}

/// `PUT /pushrules/{scope}/{kind}/{ruleId}`: creates or replaces a user-defined rule.
pub async fn put_rule(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
    Query(placement): Query<PlacementQuery>,
    JsonBody(body): JsonBody<rules::RuleBody>,
) -> ApiResult<RumaResponse<set_pushrule::v3::Response>> {
    check_scope(&scope)?;
    let rule = rules::new_rule(rules::parse_kind(&kind)?, rule_id, body)?;
    let (after, before) = (placement.after.as_deref(), placement.before.as_deref());
    rules::put_rule(&svc, &auth.user_id, rule, after, before).await?;
    Ok(set_pushrule::v3::Response::new().into())
}

/// `DELETE /pushrules/{scope}/{kind}/{ruleId}`
pub async fn delete_rule(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> ApiResult<RumaResponse<delete_pushrule::v3::Response>> {
    check_scope(&scope)?;
    let kind = rules::parse_kind(&kind)?;
    rules::delete_rule(&svc, &auth.user_id, kind, &rule_id).await?;
    Ok(delete_pushrule::v3::Response::new().into())
}

fn check_attribute(attribute: &str) -> ApiResult<()> {
    if attribute == "enabled" || attribute == "actions" {
        Ok(())
    } else {
        Err(ApiError::unrecognized(axum::http::StatusCode::NOT_FOUND))
    }
}

/// `GET /pushrules/{scope}/{kind}/{ruleId}/{attr}` for `enabled` and `actions`.
pub async fn get_attr(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind, rule_id, attr)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let kind = rules::parse_kind(&kind)?;
    check_attribute(&attr)?;
    Ok(Json(
        rules::rule_attribute(&svc, &auth.user_id, kind, &rule_id, &attr).await?,
    ))
}

/// The body of `PUT …/enabled` or `PUT …/actions`: each reads its own field.
#[derive(Debug, serde::Deserialize)]
pub struct AttributeBody {
    enabled: Option<Value>,
    actions: Option<Value>,
}

/// `PUT /pushrules/{scope}/{kind}/{ruleId}/{attr}` for `enabled` and `actions` (both answer `{}`).
pub async fn put_attr(
    State(svc): State<Services>,
    auth: Auth,
    Path((scope, kind, rule_id, attr)): Path<(String, String, String, String)>,
    JsonBody(body): JsonBody<AttributeBody>,
) -> ApiResult<RumaResponse<set_pushrule_actions::v3::Response>> {
    check_scope(&scope)?;
    let kind = rules::parse_kind(&kind)?;
    check_attribute(&attr)?;
    let user_id = &auth.user_id;
    if attr == "enabled" {
        let enabled = body
            .enabled
            .as_ref()
            .and_then(Value::as_bool)
            .ok_or_else(|| ApiError::bad_json("'enabled' must be a boolean"))?;
        rules::set_enabled(&svc, user_id, kind, &rule_id, enabled).await?;
    } else {
        let actions = body
            .actions
            .ok_or_else(|| ApiError::missing_param("Missing 'actions'"))
            .and_then(|a| serde_json::from_value(a).map_err(|e| ApiError::bad_json(e.to_string())))?;
        rules::set_actions(&svc, user_id, kind, &rule_id, actions).await?;
    }
    Ok(set_pushrule_actions::v3::Response::new().into())
}

/// What `GET /pushers` answers.
#[derive(serde::Serialize)]
pub struct Pushers {
    pushers: Vec<Value>,
}

/// `GET /pushers`
pub async fn get_pushers(State(svc): State<Services>, auth: Auth) -> ApiResult<Json<Pushers>> {
    let pushers = pushers::of_user(&svc, &auth.user_id).await?;
    Ok(Json(Pushers { pushers }))
}

/// `POST /pushers/set`
pub async fn set_pusher(
    State(svc): State<Services>,
    auth: Auth,
    JsonBody(body): JsonBody<pushers::SetPusher>,
) -> ApiResult<RumaResponse<set_pusher_api::v3::Response>> {
    pushers::set_pusher(&svc, &auth.user_id, &auth.device_id, body).await?;
    Ok(set_pusher_api::v3::Response::new().into())
}

/// `GET /notifications?from=&limit=&only=highlight`: the user's notified events, newest first.
pub async fn notifications(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(req): Ruma<get_notifications::v3::Request>,
) -> ApiResult<RumaResponse<get_notifications::v3::Response>> {
    let page = notifications::page(
        &svc,
        &auth.user_id,
        req.from.as_deref(),
        req.limit,
        req.only.as_deref(),
    )
    .await?;
    let mut response = get_notifications::v3::Response::new(page.notifications);
    response.next_token = page.next_token;
    Ok(response.into())
}
