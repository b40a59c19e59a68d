//! Other servers' media for local clients: fetched over federation (`federation::media`) the
//! first time, then kept in the content store like an upload — the original as a `media` row
//! under its server's name, each thumbnail size as a `remote_thumbnails` row — so a second
//! request makes no remote call. A file is written whole (temp file, rename) before its row,
//! and only after the remote's answer was checked whole: a failed fetch leaves nothing behind.

use std::time::Duration;

use ruma::{OwnedServerName, ServerName};

use super::{INLINE_TYPES, Thumbnail, ThumbnailRequest};
use crate::{
    error::{Error, Result},
    federation::media::{self as fed_media, RemoteFile, Wanted},
    services::Services,
    store::{RemoteThumbnail, RemoteThumbnailKey, UploadedContent},
    util::now_ms,
};

/// The content of `mxc://{server_name}/{media_id}`, another server's media.
pub async fn content(
    svc: &Services,
    server_name: &str,
    media_id: &str,
    wait: Duration,
) -> Result<UploadedContent> {
    if let Some(content) = cached(svc, server_name, media_id).await? {
        return Ok(content);
    }
    let server = remote_server(svc, server_name)?;
    let started = tokio::time::Instant::now();
    let _permit = fetch_permit(svc, wait).await?;
    // Another request may have fetched it while this one waited.
    if let Some(content) = cached(svc, server_name, media_id).await? {
        return Ok(content);
    }
    let max = svc.config.media.max_upload_bytes;
    let left = wait.saturating_sub(started.elapsed());
    let file = fed_media::fetch(svc, &server, media_id, Wanted::Download, max, left).await?;
    let RemoteFile {
        bytes,
        content_type,
        filename,
    } = file;
    let (sha256, size) = svc.media.store_bytes(&bytes).await?;
    let content = UploadedContent {
        content_type: content_type
            .filter(|t| !t.trim().is_empty() && axum::http::HeaderValue::from_str(t).is_ok())
            .unwrap_or_else(|| "application/octet-stream".into()),
        filename: filename.filter(|f| !f.is_empty()),
        size: size as i64,
        sha256,
    };
    svc.store
        .insert_remote_media(server_name, media_id, &content, now_ms())
        .await?;
    tracing::info!(%server_name, %media_id, size, "remote media cached");
    Ok(content)
}

/// A thumbnail of another server's media, of a configured size (`request` is one already).
pub async fn thumbnail(
    svc: &Services,
    server_name: &str,
    media_id: &str,
    request: &ThumbnailRequest,
    wait: Duration,
) -> Result<Thumbnail> {
    let key = RemoteThumbnailKey {
        server_name,
        media_id,
        width: request.width,
        height: request.height,
        method: request.method.as_str(),
        animated: request.animated,
    };
    if let Some(found) = cached_thumbnail(svc, &key).await? {
        return Ok(found);
    }
    let server = remote_server(svc, server_name)?;
    let started = tokio::time::Instant::now();
    let _permit = fetch_permit(svc, wait).await?;
    if let Some(found) = cached_thumbnail(svc, &key).await? {
        return Ok(found);
    }
    let query = format!(
        "width={}&height={}&method={}&animated={}",
        request.width,
        request.height,
        request.method.as_str(),
        request.animated
    );
    let max = svc.config.media.max_upload_bytes;
    let left = wait.saturating_sub(started.elapsed());
    let file = fed_media::fetch(svc, &server, media_id, Wanted::Thumbnail(&query), max, left).await?;
    // Thumbnails are served inline: only the image types that are safe so.
    let content_type = file
        .content_type
        .filter(|t| is_inline_image(t))
        .ok_or_else(|| Error::BadGateway(format!("{server} sent a thumbnail that is not an image")))?;
    let (sha256, size) = svc.media.store_bytes(&file.bytes).await?;
    let stored = RemoteThumbnail {
        content_type: content_type.clone(),
        size: size as i64,
        sha256,
    };
    svc.store.insert_remote_thumbnail(&key, &stored, now_ms()).await?;
    Ok(Thumbnail {
        bytes: file.bytes,
        content_type,
    })
}

async fn cached(svc: &Services, server_name: &str, media_id: &str) -> Result<Option<UploadedContent>> {
    Ok(svc
        .store
        .media(server_name, media_id)
        .await?
        .and_then(|row| row.content))
}

async fn cached_thumbnail(svc: &Services, key: &RemoteThumbnailKey<'_>) -> Result<Option<Thumbnail>> {
    let Some(row) = svc.store.remote_thumbnail(key).await? else {
        return Ok(None);
    };
    Ok(Some(Thumbnail {
        bytes: svc.media.read(&row.sha256).await?,
        content_type: row.content_type,
    }))
}

/// The server to fetch from: only when federation is on (else the media is unknown here).
fn remote_server(svc: &Services, server_name: &str) -> Result<OwnedServerName> {
    let not_found = || Error::not_found("Media not found");
    if !svc.config.federation.enabled {
        return Err(not_found());
    }
    ServerName::parse(server_name).map_err(|_| not_found())
}

/// A permit to fetch, waited for no longer than the client waits.
async fn fetch_permit(svc: &Services, wait: Duration) -> Result<tokio::sync::OwnedSemaphorePermit> {
    let permits = svc.media.remote_fetches.clone();
    match tokio::time::timeout(wait, permits.acquire_owned()).await {
        Ok(permit) => permit.map_err(Error::internal),
        Err(_) => Err(Error::NotYetUploaded(
            "Too many remote media fetches are running; try again".into(),
        )),
    }
}

fn is_inline_image(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("image/") && INLINE_TYPES.contains(&essence.as_str())
}
