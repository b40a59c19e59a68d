//! Media metadata: who uploaded what, its type, name, size and content hash.

use sqlx::{Row, any::AnyRow};

use super::{Store, StoreResult, q};

/// One media ID. `content` is `None` while a `/create`d ID waits for its upload.
#[derive(Debug, Clone)]
pub struct MediaRow {
    pub server_name: String,
    pub media_id: String,
    pub uploader: String,
    pub created_ts: i64,
    pub unused_expires_ts: Option<i64>,
    pub content: Option<UploadedContent>,
}

/// What an upload stored.
#[derive(Debug, Clone)]
pub struct UploadedContent {
    pub content_type: String,
    pub filename: Option<String>,
    pub size: i64,
    /// Hex SHA-256 of the bytes; names the file on disk.
    pub sha256: String,
}

fn media_row(r: &AnyRow) -> MediaRow {
    let size: Option<i64> = r.get(7);
    let sha256: Option<String> = r.get(8);
    let content = match (size, sha256) {
        (Some(size), Some(sha256)) => Some(UploadedContent {
            content_type: r
                .get::<Option<String>, _>(5)
                .unwrap_or_else(|| "application/octet-stream".into()),
            filename: r.get(6),
            size,
            sha256,
        }),
        _ => None,
    };
    MediaRow {
        server_name: r.get(0),
        media_id: r.get(1),
        uploader: r.get(2),
        created_ts: r.get(3),
        unused_expires_ts: r.get(4),
        content,
    }
}

impl Store {
    /// Records a completed upload under a new media ID.
    pub async fn insert_media(
        &self,
        server_name: &str,
        media_id: &str,
        uploader: &str,
        content: &UploadedContent,
        now: i64,
    ) -> StoreResult<()> {
        q(
            "INSERT INTO media (server_name, media_id, uploader, created_ts, content_type, filename, \
           size, sha256, uploaded_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $4)",
        )
        .bind(server_name.to_owned())
        .bind(media_id.to_owned())
        .bind(uploader.to_owned())
        .bind(now)
        .bind(content.content_type.clone())
        .bind(content.filename.clone())
        .bind(content.size)
        .bind(content.sha256.clone())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Reserves a media ID for a later upload (`POST /_matrix/media/v1/create`).
    pub async fn insert_pending_media(
        &self,
        server_name: &str,
        media_id: &str,
        uploader: &str,
        now: i64,
        expires_ts: i64,
    ) -> StoreResult<()> {
        q(
            "INSERT INTO media (server_name, media_id, uploader, created_ts, unused_expires_ts) \
           VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(server_name.to_owned())
        .bind(media_id.to_owned())
        .bind(uploader.to_owned())
        .bind(now)
        .bind(expires_ts)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// How many reserved, not yet uploaded, not yet expired media IDs `uploader` holds.
    pub async fn count_pending_media(&self, uploader: &str, now: i64) -> StoreResult<i64> {
        let row = q("SELECT COUNT(*) FROM media WHERE uploader = $1 AND size IS NULL \
                     AND unused_expires_ts > $2")
        .bind(uploader.to_owned())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<i64, _>(0))
    }

    pub async fn media(&self, server_name: &str, media_id: &str) -> StoreResult<Option<MediaRow>> {
        let row = q(
            "SELECT server_name, media_id, uploader, created_ts, unused_expires_ts, \
                     content_type, filename, size, sha256 \
                     FROM media WHERE server_name = $1 AND media_id = $2",
        )
        .bind(server_name.to_owned())
        .bind(media_id.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(media_row))
    }

    /// Fills a reserved media ID with its content. Only the first upload wins: returns `false`
    /// when the ID already has content (or does not exist).
    pub async fn complete_pending_media(
        &self,
        server_name: &str,
        media_id: &str,
        content: &UploadedContent,
        now: i64,
    ) -> StoreResult<bool> {
        let done = q(
            "UPDATE media SET content_type = $3, filename = $4, size = $5, sha256 = $6, \
                      uploaded_ts = $7, unused_expires_ts = NULL \
                      WHERE server_name = $1 AND media_id = $2 AND size IS NULL",
        )
        .bind(server_name.to_owned())
        .bind(media_id.to_owned())
        .bind(content.content_type.clone())
        .bind(content.filename.clone())
        .bind(content.size)
        .bind(content.sha256.clone())
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Which cached thumbnail of another server's media.
#[derive(Debug, Clone)]
pub struct RemoteThumbnailKey<'a> {
    pub server_name: &'a str,
    pub media_id: &'a str,
    pub width: u32,
    pub height: u32,
    pub method: &'a str,
    pub animated: bool,
}

/// A cached thumbnail of another server's media.
#[derive(Debug, Clone)]
pub struct RemoteThumbnail {
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
}

impl Store {
    /// Records another server's media fetched here. A concurrent fetch of the same media may
    /// have recorded it first; both stored the same kind of content, so the first row stays.
    pub async fn insert_remote_media(
        &self,
        server_name: &str,
        media_id: &str,
        content: &UploadedContent,
        now: i64,
    ) -> StoreResult<()> {
        q(
            "INSERT INTO media (server_name, media_id, uploader, created_ts, content_type, filename, \
             size, sha256, uploaded_ts) VALUES ($1, $2, $1, $3, $4, $5, $6, $7, $3) \
             ON CONFLICT (server_name, media_id) DO NOTHING",
        )
        .bind(server_name.to_owned())
        .bind(media_id.to_owned())
        .bind(now)
        .bind(content.content_type.clone())
        .bind(content.filename.clone())
        .bind(content.size)
        .bind(content.sha256.clone())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn remote_thumbnail(
        &self,
        key: &RemoteThumbnailKey<'_>,
    ) -> StoreResult<Option<RemoteThumbnail>> {
        let row = q(
            "SELECT content_type, size, sha256 FROM remote_thumbnails WHERE server_name = $1 \
             AND media_id = $2 AND width = $3 AND height = $4 AND method = $5 AND animated = $6",
        )
        .bind(key.server_name.to_owned())
        .bind(key.media_id.to_owned())
        .bind(i64::from(key.width))
        .bind(i64::from(key.height))
        .bind(key.method.to_owned())
        .bind(i64::from(key.animated))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| RemoteThumbnail {
            content_type: r.get(0),
            size: r.get(1),
            sha256: r.get(2),
        }))
    }

    pub async fn insert_remote_thumbnail(
        &self,
        key: &RemoteThumbnailKey<'_>,
        thumbnail: &RemoteThumbnail,
        now: i64,
    ) -> StoreResult<()> {
        q(
            "INSERT INTO remote_thumbnails (server_name, media_id, width, height, method, animated, \
             content_type, size, sha256, created_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (server_name, media_id, width, height, method, animated) DO NOTHING",
        )
        .bind(key.server_name.to_owned())
        .bind(key.media_id.to_owned())
        .bind(i64::from(key.width))
        .bind(i64::from(key.height))
        .bind(key.method.to_owned())
        .bind(i64::from(key.animated))
        .bind(thumbnail.content_type.clone())
        .bind(thumbnail.size)
        .bind(thumbnail.sha256.clone())
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
