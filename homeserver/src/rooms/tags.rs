//! Room tags: a user's `m.tag` room account data (`{"tags": {name: {"order": …}}}`), changed one
//! tag at a time by read-modify-write inside one transaction, so concurrent changes to
//! different tags all survive.

use serde_json::{Value, json};

use crate::{
    error::{ApiError, ApiResult},
    services::Services,
};

const TAG_TYPE: &str = "m.tag";

/// Longest tag name, in bytes.
pub const MAX_TAG_BYTES: usize = 255;

/// The stored content, or an empty tag set when there is none (or it is not a tag set).
fn tags_of(content: Option<&str>) -> ApiResult<Value> {
    let content: Value = match content {
        Some(c) => serde_json::from_str(c).map_err(ApiError::internal)?,
        None => return Ok(json!({ "tags": {} })),
    };
    Ok(if content.get("tags").is_some_and(Value::is_object) {
        content
    } else {
        json!({ "tags": {} })
    })
}

/// A user's tags on a room, as `GET …/tags` answers.
pub async fn tags(svc: &Services, user_id: &str, room_id: &str) -> ApiResult<Value> {
    let stored = svc.store.account_data(user_id, Some(room_id), TAG_TYPE).await?;
    tags_of(stored.as_deref())
}

/// Sets a tag (`Some(content)`) or removes it (`None`), and wakes the user's syncs.
pub async fn set_tag(
    svc: &Services,
    user_id: &str,
    room_id: &str,
    tag: &str,
    value: Option<Value>,
) -> ApiResult<()> {
    if tag.len() > MAX_TAG_BYTES {
        return Err(ApiError::invalid_param("Tag is too long"));
    }
    if value
        .as_ref()
        .and_then(|v| v.get("order"))
        .is_some_and(|o| !o.is_number())
    {
        return Err(ApiError::bad_json("order must be a number"));
    }
    svc.store
        .update_account_data(user_id, Some(room_id), TAG_TYPE, |current| {
            let mut content = tags_of(current.as_deref())?;
            match value {
                Some(v) => content["tags"][tag] = v,
                None => {
                    content["tags"].as_object_mut().map(|t| t.remove(tag));
                }
            }
            let text = serde_json::to_string(&content).map_err(ApiError::internal)?;
            Ok::<_, ApiError>((text, ()))
        })
        .await??;
    svc.notifier.notify(vec![user_id.to_owned()]);
    Ok(())
}
