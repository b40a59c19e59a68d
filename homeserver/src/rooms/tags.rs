//! Room tags: a user's `m.tag` room account data (`{"tags": {name: {"order": …}}}`), changed one
//! tag at a time by read-modify-write inside one transaction, so concurrent changes to
//! different tags all survive.

use ruma::{
    RoomId, UserId,
    events::tag::{TagInfo, Tags},
};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    services::Services,
};

const TAG_TYPE: &str = "m.tag";

/// Longest tag name, in bytes.
pub const MAX_TAG_BYTES: usize = 255;

/// The stored content, or an empty tag set when there is none (or it is not a tag set).
fn tags_of(content: Option<&str>) -> Result<Value> {
    let content: Value = match content {
        Some(c) => serde_json::from_str(c).map_err(Error::internal)?,
        None => return Ok(json!({ "tags": {} })),
    };
    Ok(if content.get("tags").is_some_and(Value::is_object) {
        content
    } else {
        json!({ "tags": {} })
    })
}

fn require_owner(viewer: &UserId, owner: &UserId) -> Result<()> {
    if viewer == owner {
        Ok(())
    } else {
        Err(Error::forbidden("Cannot access another user's account data"))
    }
}

/// `owner`'s tags on a room. Entries that are not tags (stored through the generic account
/// data endpoint) are left out.
pub async fn tags(svc: &Services, viewer: &UserId, owner: &UserId, room_id: &RoomId) -> Result<Tags> {
    require_owner(viewer, owner)?;
    let stored = svc
        .store
        .account_data(owner.as_str(), Some(room_id.as_str()), TAG_TYPE)
        .await?;
    let content = tags_of(stored.as_deref())?;
    let entries = content["tags"].as_object().cloned().unwrap_or_default();
    Ok(entries
        .into_iter()
        .filter_map(|(name, info)| Some((name.into(), serde_json::from_value::<TagInfo>(info).ok()?)))
        .collect())
}

/// Sets a tag (`Some(info)`) or removes it (`None`), and wakes the user's syncs.
pub async fn set_tag(
    svc: &Services,
    viewer: &UserId,
    owner: &UserId,
    room_id: &RoomId,
    tag: &str,
    info: Option<TagInfo>,
) -> Result<()> {
    require_owner(viewer, owner)?;
    if tag.len() > MAX_TAG_BYTES {
        return Err(Error::invalid_param("Tag is too long"));
    }
    let value = info
        .map(|info| serde_json::to_value(info).map_err(Error::internal))
        .transpose()?;
    svc.store
        .update_account_data(owner.as_str(), Some(room_id.as_str()), TAG_TYPE, |current| {
            let mut content = tags_of(current.as_deref())?;
            if let Some(tags) = content["tags"].as_object_mut() {
                match value {
                    Some(v) => tags.insert(tag.to_owned(), v),
                    None => tags.remove(tag),
                };
            }
            let text = serde_json::to_string(&content).map_err(Error::internal)?;
            Ok::<_, Error>((text, ()))
        })
        .await??;
    svc.notifier.notify(vec![owner.to_string()]);
    Ok(())
}
