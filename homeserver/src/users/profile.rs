//! Profiles: display name and avatar. A change updates the user's member event in every room
//! they are joined to, as clients show names from member events.

use ruma::{
    OwnedMxcUri, OwnedUserId, RoomId, UserId, api::client::user_directory::search_users,
    profile::ProfileFieldName,
};
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    rooms::{EventSpec, membership::member_content},
    services::Services,
    store::UserRow,
};

/// Longest display name or avatar URL, in bytes.
const MAX_FIELD_BYTES: usize = 256;

/// The fields Hearth keeps; the unset ones are left out.
#[derive(Debug, Default, Serialize)]
pub struct Profile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// The body of `PUT /profile/{userId}/{field}`: the field named in the path is set, or cleared
/// when it is absent or `null`. Our own type: ruma's refuses a clearing body.
#[derive(Debug, Default, Deserialize)]
pub struct ProfileUpdate {
    displayname: Option<String>,
    avatar_url: Option<String>,
}

/// The profile fields `PUT` can change.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    DisplayName,
    AvatarUrl,
}

impl Field {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "displayname" => Ok(Self::DisplayName),
            "avatar_url" => Ok(Self::AvatarUrl),
            _ => Err(Error::not_found("Unknown profile field")),
        }
    }
}

/// A remote user's profile, asked of their server (`query/profile`).
async fn remote_profile(svc: &Services, user_id: &UserId, field: Option<&str>) -> Result<Profile> {
    let found = crate::federation::remote::profile(svc, user_id, field).await?;
    let text = |key: &str| found.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Profile {
        displayname: text("displayname"),
        avatar_url: text("avatar_url"),
    })
}

async fn active_user(svc: &Services, user_id: &UserId) -> Result<UserRow> {
    svc.store
        .user(user_id.as_str())
        .await?
        .filter(|u| !u.deactivated)
        .ok_or_else(|| Error::not_found("Profile not found"))
}

/// A user's whole profile; 404 for unknown and deactivated users.
pub async fn profile(svc: &Services, user_id: &UserId) -> Result<Profile> {
    if user_id.server_name().as_str() != svc.server_name() {
        return remote_profile(svc, user_id, None).await;
    }
    let user = active_user(svc, user_id).await?;
    Ok(Profile {
        displayname: user.displayname,
        avatar_url: user.avatar_url,
    })
}

/// One field of a profile, as a profile with only that field; 404 when it is not set.
pub async fn field(svc: &Services, user_id: &UserId, field: &ProfileFieldName) -> Result<Profile> {
    if user_id.server_name().as_str() != svc.server_name() {
        let only = remote_profile(svc, user_id, Some(field.as_str())).await?;
        if only.displayname.is_none() && only.avatar_url.is_none() {
            return Err(Error::not_found("Profile field not set"));
        }
        return Ok(only);
    }
    let user = active_user(svc, user_id).await?;
    let only = match field {
        ProfileFieldName::DisplayName => Profile {
            displayname: user.displayname,
            avatar_url: None,
        },
        ProfileFieldName::AvatarUrl => Profile {
            displayname: None,
            avatar_url: user.avatar_url,
        },
        _ => return Err(Error::not_found("Unknown profile field")),
    };
    if only.displayname.is_none() && only.avatar_url.is_none() {
        return Err(Error::not_found("Profile field not set"));
    }
    Ok(only)
}

/// Sets (or clears) one of `sender`'s own profile fields and updates their member events.
pub async fn set_field(
    svc: &Services,
    sender: &UserId,
    target: &UserId,
    field: Field,
    update: ProfileUpdate,
) -> Result<()> {
    svc.rate_limiter.check(Action::Profile, sender.as_str())?;
    if target != sender {
        return Err(Error::forbidden("Cannot change another user's profile"));
    }
    let (name, value) = match field {
        Field::DisplayName => ("displayname", update.displayname),
        Field::AvatarUrl => ("avatar_url", update.avatar_url),
    };
    if value.as_ref().is_some_and(|v| v.len() > MAX_FIELD_BYTES) {
        return Err(Error::bad_json(format!("{name} is too long")));
    }
    match field {
        Field::DisplayName => {
            svc.store
                .set_displayname(sender.as_str(), value.as_deref())
                .await?
        }
        Field::AvatarUrl => {
            svc.store
                .set_avatar_url(sender.as_str(), value.as_deref())
                .await?
        }
    }
    update_member_events(svc, sender).await
}

/// Sends a fresh member event (with the new profile) to every room the user is joined to.
async fn update_member_events(svc: &Services, user_id: &UserId) -> Result<()> {
    for (room_id, membership, _) in svc.store.rooms_of_user(user_id.as_str()).await? {
        if membership != "join" {
            continue;
        }
        let room_id = RoomId::parse(room_id.as_str()).map_err(Error::internal)?;
        let content = member_content(svc, user_id, "join").await?;
        let spec = EventSpec::state("m.room.member", user_id.as_str(), content);
        if let Err(e) = svc.timeline.append(svc, &room_id, user_id, spec, None).await {
            tracing::warn!(%room_id, error = %e, "could not update member event");
        }
    }
    Ok(())
}

/// Users who share a room with the searcher or are in public rooms, matching `term` in their
/// ID or display name; `limited` when there were more than `limit`.
pub async fn search(
    svc: &Services,
    searcher: &UserId,
    term: &str,
    limit: u64,
) -> Result<(Vec<search_users::v3::User>, bool)> {
    let limit = limit.clamp(1, 1000) as i64;
    let escaped: String = term
        .to_lowercase()
        .chars()
        .filter(|c| !matches!(c, '%' | '_' | '\\'))
        .collect();
    let pattern = format!("%{escaped}%");
    let mut found = svc
        .store
        .search_user_directory(searcher.as_str(), &pattern, limit + 1)
        .await?;
    let limited = found.len() as i64 > limit;
    found.truncate(limit as usize);
    let users = found
        .into_iter()
        .filter_map(|(user_id, name, avatar)| {
            let user_id = OwnedUserId::try_from(user_id).ok()?;
            let mut user = search_users::v3::User::new(user_id);
            user.display_name = name;
            user.avatar_url = avatar.map(OwnedMxcUri::from);
            Some(user)
        })
        .collect();
    Ok((users, limited))
}
