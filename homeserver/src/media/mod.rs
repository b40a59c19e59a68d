//! The media repository (Client-Server API §Content repository).
//!
//! Bytes live on the local filesystem under `media.path`, named by their SHA-256
//! (`content/ab/cd/<sha256>`), so identical uploads share one file and a file always exists
//! before a database row names it. Every file is written to `tmp/` first and renamed into place.
//! Thumbnails are generated on demand and cached in `thumbnails/ab/<sha256>/<w>x<h>-<method>.<ext>`.
//!
//! Another server's `mxc://` is fetched from it over federation once (`remote.rs`) and kept here
//! like an upload; only local media is served to other servers.

pub mod remote;
pub mod thumbnail;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use axum::body::Body;
use futures_util::StreamExt;
use ruma::{ServerName, UserId};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    error::{Error, Result},
    ratelimit::Action,
    services::Services,
    store::UploadedContent,
    util::{hex, now_ms},
};

pub use thumbnail::{Method, ThumbnailRequest};

/// How long a `/create`d media ID waits for its upload (the spec's recommended 24 hours).
pub const UNUSED_EXPIRY_MS: i64 = 24 * 60 * 60 * 1000;
/// `timeout_ms` when a download does not give one, and the most it may ask for.
pub const DEFAULT_DOWNLOAD_WAIT_MS: u64 = 20_000;
pub const MAX_DOWNLOAD_WAIT_MS: u64 = 120_000;

/// The files of the media repository.
#[derive(Debug, Clone)]
pub struct MediaRepo {
    root: PathBuf,
    /// Permits for image decodes, so thumbnail requests cannot occupy every core and all memory.
    decodes: std::sync::Arc<tokio::sync::Semaphore>,
    /// Permits for fetches of other servers' media, each of which holds up to the size limit in
    /// memory while it is checked.
    remote_fetches: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Fetches of other servers' media running at once; more requests wait.
const MAX_REMOTE_FETCHES: usize = 4;

impl MediaRepo {
    pub fn new(root: PathBuf, max_concurrent_decodes: usize) -> Self {
        Self {
            root,
            decodes: std::sync::Arc::new(tokio::sync::Semaphore::new(max_concurrent_decodes.max(1))),
            remote_fetches: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_REMOTE_FETCHES)),
        }
    }

    /// Creates the directory layout (at start-up, so a bad `media.path` stops the server early)
    /// and removes temp files a crash left behind (older than a day, so that no upload still
    /// streaming into another process sharing the directory loses its file).
    pub fn init(&self) -> std::io::Result<()> {
        for dir in ["content", "thumbnails", "tmp"] {
            std::fs::create_dir_all(self.root.join(dir))?;
        }
        let day = Duration::from_secs(24 * 60 * 60);
        for entry in std::fs::read_dir(self.root.join("tmp"))?.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn content_path(&self, sha256: &str) -> PathBuf {
        self.root
            .join("content")
            .join(&sha256[0..2])
            .join(&sha256[2..4])
            .join(sha256)
    }

    fn thumbnail_path(&self, sha256: &str, file_name: &str) -> PathBuf {
        self.root
            .join("thumbnails")
            .join(&sha256[0..2])
            .join(sha256)
            .join(file_name)
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.part", crate::util::random_string(24)))
    }

    /// Streams `body` to disk, hashing it on the way; refuses bodies over `max_bytes` with
    /// 413 `M_TOO_LARGE` (nothing is kept then). Returns (sha256 hex, size).
    pub async fn store_body(&self, body: Body, max_bytes: u64) -> Result<(String, u64)> {
        let temp = self.temp_path();
        let result = self.write_temp(&temp, body, max_bytes).await;
        let (sha256, size) = match result {
            Ok(done) => done,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        let target = self.content_path(&sha256);
        if let Err(e) = place(&temp, &target).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(Error::internal(format!("storing media file: {e}")));
        }
        Ok((sha256, size))
    }

    /// Stores bytes already in memory (another server's media, checked whole): temp file, then
    /// renamed to its SHA-256. Returns (sha256 hex, size).
    pub async fn store_bytes(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let sha256 = hex(&Sha256::digest(bytes));
        let temp = self.temp_path();
        let written = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            file.write_all(bytes).await?;
            file.sync_all().await?;
            drop(file);
            place(&temp, &self.content_path(&sha256)).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(Error::internal(format!("storing media file: {e}")));
        }
        Ok((sha256, bytes.len() as u64))
    }

    async fn write_temp(&self, temp: &Path, body: Body, max_bytes: u64) -> Result<(String, u64)> {
        let mut file = tokio::fs::File::create(temp)
            .await
            .map_err(|e| Error::internal(format!("creating {}: {e}", temp.display())))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(interrupted)?;
            size += chunk.len() as u64;
            if size > max_bytes {
                drop(file);
                drain(stream, max_bytes, size).await;
                return Err(too_large(max_bytes));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::internal(format!("writing media file: {e}")))?;
        }
        file.sync_all()
            .await
            .map_err(|e| Error::internal(format!("syncing media file: {e}")))?;
        Ok((hex(&hasher.finalize()), size))
    }

    /// The stored bytes of an upload.
    pub async fn open(&self, sha256: &str) -> Result<tokio::fs::File> {
        tokio::fs::File::open(self.content_path(sha256))
            .await
            .map_err(|e| Error::internal(format!("media file {sha256} unreadable: {e}")))
    }

    pub async fn read(&self, sha256: &str) -> Result<Vec<u8>> {
        tokio::fs::read(self.content_path(sha256))
            .await
            .map_err(|e| Error::internal(format!("media file {sha256} unreadable: {e}")))
    }

    async fn read_thumbnail(&self, sha256: &str, file_name: &str) -> Option<Vec<u8>> {
        tokio::fs::read(self.thumbnail_path(sha256, file_name)).await.ok()
    }

    async fn write_thumbnail(&self, sha256: &str, file_name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let temp = self.temp_path();
        tokio::fs::write(&temp, bytes).await?;
        let result = place(&temp, &self.thumbnail_path(sha256, file_name)).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }
}

fn interrupted(e: axum::Error) -> Error {
    Error::unknown(format!("Upload interrupted: {e}"))
}

/// Reads and discards the rest of a refused upload, so the client gets to read the 413 instead
/// of seeing its request cut off mid-send. Bodies that run past twice the limit are not read
/// further: the connection is closed on them.
async fn drain(mut stream: axum::body::BodyDataStream, max_bytes: u64, mut seen: u64) {
    let cap = max_bytes.saturating_mul(2);
    while seen <= cap {
        match stream.next().await {
            Some(Ok(chunk)) => seen += chunk.len() as u64,
            _ => return,
        }
    }
}

/// Renames a finished temp file to its final name, creating the directories on the way.
async fn place(temp: &Path, target: &Path) -> std::io::Result<()> {
    if let Some(dir) = target.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::rename(temp, target).await
}

pub fn too_large(max_bytes: u64) -> Error {
    Error::too_large(format!("Upload is larger than the limit of {max_bytes} bytes"))
}

/// Whether `id` may be a media ID: the spec allows only `A-Za-z0-9`, `_` and `-`.
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn new_media_id() -> String {
    crate::util::random_string(24)
}

fn mxc(server_name: &str, media_id: &str) -> String {
    format!("mxc://{server_name}/{media_id}")
}

/// What a client sent along with an upload's bytes.
pub struct UploadMeta {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    /// The `Content-Length` header, when given: checked before reading the body.
    pub content_length: Option<u64>,
}

impl UploadMeta {
    /// Refuses a body whose `Content-Length` is over the limit before storing any of it
    /// (reading it to its end when that is at most twice the limit: see `drain`).
    async fn check_length(&self, max: u64, body: Body) -> Result<Body, Error> {
        match self.content_length {
            Some(len) if len > max => {
                if len <= max.saturating_mul(2) {
                    drain(body.into_data_stream(), max, 0).await;
                }
                Err(too_large(max))
            }
            _ => Ok(body),
        }
    }

    fn into_content(self, sha256: String, size: u64) -> UploadedContent {
        UploadedContent {
            content_type: self
                .content_type
                .filter(|t| !t.trim().is_empty())
                .unwrap_or_else(|| "application/octet-stream".into()),
            filename: self.filename.filter(|f| !f.is_empty()),
            size: size as i64,
            sha256,
        }
    }
}

/// `POST /_matrix/media/v3/upload`: stores the body under a new media ID; returns its `mxc://`.
pub async fn upload(svc: &Services, uploader: &UserId, meta: UploadMeta, body: Body) -> Result<String> {
    svc.rate_limiter.check(Action::MediaUpload, uploader.as_str())?;
    let max = svc.config.media.max_upload_bytes;
    let body = meta.check_length(max, body).await?;
    let (sha256, size) = svc.media.store_body(body, max).await?;
    let content = meta.into_content(sha256, size);
    let media_id = new_media_id();
    svc.store
        .insert_media(
            svc.server_name(),
            &media_id,
            uploader.as_str(),
            &content,
            now_ms(),
        )
        .await?;
    tracing::info!(%media_id, size, uploader = %uploader, "media uploaded");
    Ok(mxc(svc.server_name(), &media_id))
}

/// `POST /_matrix/media/v1/create`: reserves a media ID; returns its `mxc://` and deadline.
/// Rate limited like an upload; the upload to the reserved ID is then not counted again.
pub async fn create(svc: &Services, uploader: &UserId) -> Result<(String, i64)> {
    svc.rate_limiter.check(Action::MediaUpload, uploader.as_str())?;
    let now = now_ms();
    let pending = svc.store.count_pending_media(uploader.as_str(), now).await?;
    if pending >= svc.config.media.max_pending_uploads as i64 {
        return Err(Error::limit_exceeded(60_000));
    }
    let media_id = new_media_id();
    let expires = now + UNUSED_EXPIRY_MS;
    svc.store
        .insert_pending_media(svc.server_name(), &media_id, uploader.as_str(), now, expires)
        .await?;
    Ok((mxc(svc.server_name(), &media_id), expires))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: the content of a reserved ID, from the
/// user who reserved it, once.
pub async fn upload_to(
    svc: &Services,
    uploader: &UserId,
    server_name: &str,
    media_id: &str,
    meta: UploadMeta,
    body: Body,
) -> Result<()> {
    let max = svc.config.media.max_upload_bytes;
    if let Err(e) = check_reservation(svc, uploader, server_name, media_id).await {
        // Read the body anyway (up to twice the limit), so the client sees this answer and its
        // connection stays usable.
        drain(body.into_data_stream(), max, 0).await;
        return Err(e);
    }
    let body = meta.check_length(max, body).await?;
    let (sha256, size) = svc.media.store_body(body, max).await?;
    let content = meta.into_content(sha256, size);
    // A concurrent upload to the same ID may have won while this body streamed in.
    if !svc
        .store
        .complete_pending_media(server_name, media_id, &content, now_ms())
        .await?
    {
        return Err(cannot_overwrite());
    }
    tracing::info!(%media_id, size, uploader = %uploader, "media uploaded to a created ID");
    Ok(())
}

/// Whether `uploader` may upload to this media ID now: it exists here, was reserved by them,
/// has no content yet and has not expired.
async fn check_reservation(
    svc: &Services,
    uploader: &UserId,
    server_name: &str,
    media_id: &str,
) -> Result<()> {
    let unknown = || Error::not_found("Unknown media ID");
    if server_name != svc.server_name() || !valid_media_id(media_id) {
        return Err(unknown());
    }
    let row = svc
        .store
        .media(server_name, media_id)
        .await?
        .ok_or_else(unknown)?;
    if row.uploader != uploader.as_str() {
        return Err(Error::forbidden(
            "Only the creator of the media ID can upload to it",
        ));
    }
    if row.content.is_some() {
        return Err(cannot_overwrite());
    }
    if row.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
        return Err(unknown());
    }
    Ok(())
}

fn cannot_overwrite() -> Error {
    Error::CannotOverwriteMedia("Media ID already has content".into())
}

/// A stored upload ready to stream: its file and what to serve it as.
pub struct Download {
    pub file: tokio::fs::File,
    pub content_type: String,
    pub size: i64,
    /// The `Content-Disposition` header's value.
    pub disposition: String,
}

/// A download of `mxc://{server_name}/{media_id}` (see `find` for the waiting), served under
/// `file_name` when the client names one, else under the uploaded name.
pub async fn download(
    svc: &Services,
    server_name: &str,
    media_id: &str,
    file_name: Option<String>,
    timeout_ms: Option<u64>,
) -> Result<Download> {
    let content = find(svc, server_name, media_id, timeout_ms).await?;
    open_download(svc, content, file_name).await
}

/// This server's own media as another server downloads it (Server-Server API §Content
/// repository): never media this server fetched from elsewhere.
pub async fn download_local(svc: &Services, media_id: &str, timeout_ms: Option<u64>) -> Result<Download> {
    let content = find_local(svc, svc.server_name(), media_id, timeout_ms).await?;
    open_download(svc, content, None).await
}

async fn open_download(
    svc: &Services,
    content: UploadedContent,
    file_name: Option<String>,
) -> Result<Download> {
    let file = svc.media.open(&content.sha256).await?;
    let filename = file_name.or(content.filename);
    let content_type = if axum::http::HeaderValue::from_str(&content.content_type).is_ok() {
        content.content_type
    } else {
        "application/octet-stream".to_owned()
    };
    let disposition = content_disposition(&content_type, filename.as_deref());
    Ok(Download {
        file,
        content_type,
        size: content.size,
        disposition,
    })
}

/// The content of media: local media waits up to `timeout_ms` for a `/create`d ID's upload (then
/// 504 `M_NOT_YET_UPLOADED`); another server's is fetched from it the first time (`remote.rs`).
/// Unknown and expired media are 404 `M_NOT_FOUND`.
pub async fn find(
    svc: &Services,
    server_name: &str,
    media_id: &str,
    timeout_ms: Option<u64>,
) -> Result<UploadedContent> {
    if server_name != svc.server_name() && ServerName::parse(server_name).is_ok() && valid_media_id(media_id)
    {
        return remote::content(svc, server_name, media_id, wait(timeout_ms)).await;
    }
    find_local(svc, server_name, media_id, timeout_ms).await
}

/// How long a download may wait: the client's `timeout_ms`, bounded.
fn wait(timeout_ms: Option<u64>) -> Duration {
    Duration::from_millis(
        timeout_ms
            .unwrap_or(DEFAULT_DOWNLOAD_WAIT_MS)
            .min(MAX_DOWNLOAD_WAIT_MS),
    )
}

/// The content of this server's own media (what other servers are served: never another
/// server's media cached here).
pub async fn find_local(
    svc: &Services,
    server_name: &str,
    media_id: &str,
    timeout_ms: Option<u64>,
) -> Result<UploadedContent> {
    let not_found = || Error::not_found("Media not found");
    if ServerName::parse(server_name).is_err() || !valid_media_id(media_id) {
        return Err(not_found());
    }
    if server_name != svc.server_name() {
        return Err(not_found());
    }
    let deadline = tokio::time::Instant::now() + wait(timeout_ms);
    loop {
        let row = svc
            .store
            .media(server_name, media_id)
            .await?
            .ok_or_else(not_found)?;
        if let Some(content) = row.content {
            return Ok(content);
        }
        if row.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
            return Err(not_found());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Error::NotYetUploaded("Media has not been uploaded yet".into()));
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(250))).await;
    }
}

/// A thumbnail's bytes and content type.
pub struct Thumbnail {
    pub bytes: Vec<u8>,
    pub content_type: String,
}

/// A thumbnail of local media (from the cache when it was made before).
pub async fn thumbnail(
    svc: &Services,
    server_name: &str,
    media_id: &str,
    request: ThumbnailRequest,
    timeout_ms: Option<u64>,
) -> Result<Thumbnail> {
    // Only configured sizes are made (or fetched), so the cache holds a bounded number of files
    // per image.
    let request = thumbnail::nearest_size(&svc.config.media.thumbnail_sizes, request);
    if server_name != svc.server_name() {
        if ServerName::parse(server_name).is_err() || !valid_media_id(media_id) {
            return Err(Error::not_found("Media not found"));
        }
        return remote::thumbnail(svc, server_name, media_id, &request, wait(timeout_ms)).await;
    }
    let content = find_local(svc, server_name, media_id, timeout_ms).await?;
    let Some(output) = thumbnail::output_format(&content.content_type) else {
        return Err(thumbnail::cannot_thumbnail());
    };
    let cache_name = request.cache_name(output);
    let cached = || svc.media.read_thumbnail(&content.sha256, &cache_name);
    if let Some(bytes) = cached().await {
        return Ok(Thumbnail {
            bytes,
            content_type: output.content_type().into(),
        });
    }
    let _permit = svc.media.decodes.acquire().await.map_err(Error::internal)?;
    // Another request may have made it while this one waited.
    if let Some(bytes) = cached().await {
        return Ok(Thumbnail {
            bytes,
            content_type: output.content_type().into(),
        });
    }
    let original = svc.media.read(&content.sha256).await?;
    let max_pixels = svc.config.media.max_thumbnail_pixels;
    let source_type = content.content_type.clone();
    let made = tokio::task::spawn_blocking(move || {
        thumbnail::generate(&original, &source_type, &request, max_pixels).map(|t| (t, original))
    })
    .await
    .map_err(Error::internal)??;
    match made {
        (thumbnail::Generated::Original, original) => Ok(Thumbnail {
            bytes: original,
            content_type: content.content_type,
        }),
        (thumbnail::Generated::Image(bytes), _) => {
            if let Err(e) = svc
                .media
                .write_thumbnail(&content.sha256, &cache_name, &bytes)
                .await
            {
                tracing::warn!(error = %e, "could not cache a thumbnail");
            }
            Ok(Thumbnail {
                bytes,
                content_type: output.content_type().into(),
            })
        }
    }
}

/// The media types the spec lets servers serve `inline` (§Serving inline content).
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// The `Content-Disposition` for serving `content_type`: `inline` for the safe types, else
/// `attachment`; with the file name when there is one (RFC 6266: `filename="…"` for plain ASCII
/// names, `filename*=utf-8''…` percent-encoded otherwise).
pub fn content_disposition(content_type: &str, filename: Option<&str>) -> String {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) {
        "inline"
    } else {
        "attachment"
    };
    match filename {
        None => kind.to_owned(),
        Some(name)
            if name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"\\%;".contains(&b) || b == b' ') =>
        {
            format!("{kind}; filename=\"{name}\"")
        }
        Some(name) => {
            let mut encoded = String::new();
            for b in name.bytes() {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    encoded.push(b as char);
                } else {
                    encoded.push_str(&format!("%{b:02X}"));
                }
            }
            format!("{kind}; filename*=utf-8''{encoded}")
        }
    }
}

/// The `Content-Security-Policy` the spec recommends for served media.
pub const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_is_inline_only_for_safe_types() {
        assert_eq!(content_disposition("image/png", None), "inline");
        assert_eq!(
            content_disposition("Text/Plain; charset=utf-8", Some("a b.txt")),
            "inline; filename=\"a b.txt\""
        );
        assert_eq!(
            content_disposition("text/html", Some("x.html")),
            "attachment; filename=\"x.html\""
        );
        assert_eq!(content_disposition("image/svg+xml", None), "attachment");
    }

    #[test]
    fn disposition_encodes_unusual_names() {
        assert_eq!(
            content_disposition("application/pdf", Some("wörld \"x\".pdf")),
            "attachment; filename*=utf-8''w%C3%B6rld%20%22x%22.pdf"
        );
        assert_eq!(
            content_disposition("text/plain", Some("a\r\nb")),
            "inline; filename*=utf-8''a%0D%0Ab"
        );
    }

    #[test]
    fn media_ids_are_restricted() {
        assert!(valid_media_id("abcXYZ019_-"));
        assert!(!valid_media_id(""));
        assert!(!valid_media_id("../etc"));
        assert!(!valid_media_id("a.b"));
        assert!(!valid_media_id("a%2e"));
    }
}
