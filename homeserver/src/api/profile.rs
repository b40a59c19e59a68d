//! Profiles. Changing a display name or avatar updates the user's member event in every room
//! they are joined to, as clients show names from member events.

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::{
    api::extract::{Auth, JsonBody},
    error::{ApiError, ApiResult},
    rooms::{EventSpec, membership::member_content},
    services::Services,
};

fn parse_user(user_id: &str) -> ApiResult<ruma::OwnedUserId> {
    UserId::parse(user_id).map_err(|_| ApiError::invalid_param("Invalid user ID"))
}

async fn profile_of(svc: &Services, user_id: &str) -> ApiResult<crate::store::UserRow> {
    parse_user(user_id)?;
    svc.store
        .user(user_id)
        .await?
        .filter(|u| !u.deactivated)
        .ok_or_else(|| ApiError::not_found("Profile not found"))
}

/// `GET /profile/{userId}`
pub async fn get(State(svc): State<Services>, Path(user_id): Path<String>) -> ApiResult<Json<Value>> {
    let user = profile_of(&svc, &user_id).await?;
    let mut out = json!({});
    if let Some(name) = user.displayname {
        out["displayname"] = json!(name);
    }
    if let Some(url) = user.avatar_url {
        out["avatar_url"] = json!(url);
    }
    Ok(Json(out))
}

/// `GET /profile/{userId}/{field}` for `displayname` and `avatar_url`.
pub async fn get_field(
    State(svc): State<Services>,
    Path((user_id, field)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let user = profile_of(&svc, &user_id).await?;
    let value = match field.as_str() {
        "displayname" => user.displayname,
        "avatar_url" => user.avatar_url,
        _ => return Err(ApiError::not_found("Unknown profile field")),
    };
    match value {
        Some(v) => Ok(Json(json!({ field: v }))),
        None => Err(ApiError::not_found("Profile field not set")),
    }
}

/// `PUT /profile/{userId}/{field}` for `displayname` and `avatar_url`.
pub async fn set_field(
    State(svc): State<Services>,
    auth: Auth,
    Path((user_id, field)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    svc.rate_limiter
        .check(crate::ratelimit::Action::Profile, auth.user_id.as_str())?;
    if parse_user(&user_id)? != auth.user_id {
        return Err(ApiError::forbidden("Cannot change another user's profile"));
    }
    let value = match body.get(&field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_json(format!("{field} must be a string"))),
    };
    if value.as_ref().is_some_and(|v| v.len() > 256) {
        return Err(ApiError::bad_json(format!("{field} is too long")));
    }
    match field.as_str() {
        "displayname" => {
            svc.store
                .set_displayname(auth.user_id.as_str(), value.as_deref())
                .await?
        }
        "avatar_url" => {
            svc.store
                .set_avatar_url(auth.user_id.as_str(), value.as_deref())
                .await?
        }
        _ => return Err(ApiError::not_found("Unknown profile field")),
    }
    for (room_id, membership, _) in svc.store.rooms_of_user(auth.user_id.as_str()).await? {
        if membership != "join" {
            continue;
        }
        let room_id = RoomId::parse(room_id.as_str()).map_err(ApiError::internal)?;
        let content = member_content(&svc, &auth.user_id, "join").await?;
        let spec = EventSpec::state("m.room.member", auth.user_id.as_str(), content);
        if let Err(e) = svc
            .timeline
            .append(&svc, &room_id, &auth.user_id, spec, None)
            .await
        {
            tracing::warn!(%room_id, error = %e.message, "could not update member event");
        }
    }
    Ok(Json(json!({})))
}

#[derive(serde::Deserialize)]
pub struct DirectorySearch {
    search_term: String,
    limit: Option<u64>,
}

/// `POST /user_directory/search`: users who share a room with the searcher or are in public rooms.
pub async fn search_users(
    State(svc): State<Services>,
    auth: Auth,
    JsonBody(body): JsonBody<DirectorySearch>,
) -> ApiResult<Json<Value>> {
    let limit = body.limit.unwrap_or(10).clamp(1, 1000) as i64;
    let escaped: String = body
        .search_term
        .to_lowercase()
        .chars()
        .filter(|c| !matches!(c, '%' | '_' | '\\'))
        .collect();
    let pattern = format!("%{escaped}%");
    let mut found = svc
        .store
        .search_user_directory(auth.user_id.as_str(), &pattern, limit + 1)
        .await?;
    let limited = found.len() as i64 > limit;
    found.truncate(limit as usize);
    let results: Vec<Value> = found
        .into_iter()
        .map(|(user_id, name, avatar)| {
            let mut entry = json!({ "user_id": user_id });
            if let Some(name) = name {
                entry["display_name"] = json!(name);
            }
            if let Some(avatar) = avatar {
                entry["avatar_url"] = json!(avatar);
            }
            entry
        })
        .collect();
    Ok(Json(json!({ "results": results, "limited": limited })))
}
