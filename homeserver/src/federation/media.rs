//! Other servers' media (Server-Server API §Content repository): the signed GET of
//! `/_matrix/federation/v1/media/{download,thumbnail}/{mediaId}`, its `multipart/mixed` answer
//! read by ruma's parser, a `Location` part followed once (unsigned, same bounds). Every failure
//! of the remote is one of the client's spec errors: 404 for unknown media, 502 `M_TOO_LARGE`
//! past the size limit, 504 when it takes too long, 502 for anything else.

use std::time::Duration;

use axum::http::{self, header};
use ruma::{
    ServerName,
    api::{
        IncomingResponseExt,
        federation::authenticated_media::{Content, FileOrLocation, get_content, get_content_thumbnail},
    },
};

use super::{FedError, client::Answer};
use crate::{
    error::{Error, Result},
    services::Services,
};

/// Room for the multipart framing (boundaries, part headers, metadata) around the file.
const FRAMING_BYTES: usize = 64 * 1024;

/// A file another server sent.
pub struct RemoteFile {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

/// Which of the two media endpoints.
#[derive(Clone, Copy)]
pub enum Wanted<'a> {
    Download,
    /// Query string of the thumbnail request (width, height, method, animated).
    Thumbnail(&'a str),
}

/// Fetches `media_id` from `server` within `wait`, at most `max_bytes` of file.
pub async fn fetch(
    svc: &Services,
    server: &ServerName,
    media_id: &str,
    wanted: Wanted<'_>,
    max_bytes: u64,
    wait: Duration,
) -> Result<RemoteFile> {
    let client = svc
        .federation
        .client()
        .map_err(|_| Error::not_found("Media not found"))?;
    let timeout_ms = wait.as_millis();
    let path = match wanted {
        Wanted::Download => {
            format!("/_matrix/federation/v1/media/download/{media_id}?timeout_ms={timeout_ms}")
        }
        Wanted::Thumbnail(query) => {
            format!("/_matrix/federation/v1/media/thumbnail/{media_id}?{query}&timeout_ms={timeout_ms}")
        }
    };
    let limit = usize::try_from(max_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(FRAMING_BYTES);
    let started = tokio::time::Instant::now();
    let authorization = client
        .authorization(&svc.signing_key, server, "GET", &path, None)
        .map_err(|e| remote_failure(server, e, max_bytes))?;
    let answer = client
        .request_within("GET", server, &path, None, Some(authorization), limit, wait)
        .await
        .map_err(|e| remote_failure(server, e, max_bytes))?;
    check_status(server, &answer)?;
    let content = match wanted {
        Wanted::Download => {
            get_content::v1::Response::try_from_http_response(as_http(&answer)?).map(|r| r.content)
        }
        Wanted::Thumbnail(_) => {
            get_content_thumbnail::v1::Response::try_from_http_response(as_http(&answer)?).map(|r| r.content)
        }
    }
    .map_err(|e| Error::BadGateway(format!("{server} sent a malformed media answer: {e}")))?;
    let file = match content {
        FileOrLocation::File(content) => from_part(content),
        FileOrLocation::Location(url) => {
            let left = wait.saturating_sub(started.elapsed());
            let answer = client
                .get_url(&url, limit, left)
                .await
                .map_err(|e| remote_failure(server, e, max_bytes))?;
            check_status(server, &answer)?;
            from_location(answer)
        }
        _ => {
            return Err(Error::BadGateway(format!(
                "{server} sent a media answer of an unknown kind"
            )));
        }
    };
    if file.bytes.len() as u64 > max_bytes {
        return Err(too_large(server, max_bytes));
    }
    Ok(file)
}

fn from_part(content: Content) -> RemoteFile {
    RemoteFile {
        bytes: content.file,
        content_type: content.content_type,
        filename: content.content_disposition.and_then(|d| d.filename),
    }
}

fn from_location(answer: Answer) -> RemoteFile {
    let text = |name: header::HeaderName| {
        answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let filename = answer
        .headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| ruma::http_headers::ContentDisposition::try_from(v.as_bytes()).ok())
        .and_then(|d| d.filename);
    RemoteFile {
        content_type: text(header::CONTENT_TYPE),
        filename,
        bytes: answer.body,
    }
}

/// A non-2xx answer as the client's error: the remote's 404 is ours, its 504 too (the media
/// is not uploaded yet there), everything else is the remote's failure.
fn check_status(server: &ServerName, answer: &Answer) -> Result<()> {
    match answer.status {
        200..=299 => Ok(()),
        404 => Err(Error::not_found("Media not found")),
        504 => Err(Error::NotYetUploaded(format!(
            "{server} has not received the media's content yet"
        ))),
        status => Err(Error::BadGateway(format!(
            "{server} answered {status} for the media"
        ))),
    }
}

/// The answer as ruma's parser takes it (which copies the file out of the body).
fn as_http(answer: &Answer) -> Result<http::Response<&[u8]>> {
    let mut response = http::Response::new(answer.body.as_slice());
    *response.status_mut() =
        http::StatusCode::from_u16(answer.status).map_err(|e| Error::BadGateway(e.to_string()))?;
    *response.headers_mut() = answer.headers.clone();
    Ok(response)
}

fn too_large(server: &ServerName, max_bytes: u64) -> Error {
    Error::RemoteTooLarge(format!(
        "{server}'s media is larger than this server's limit of {max_bytes} bytes"
    ))
}

fn remote_failure(server: &ServerName, e: FedError, max_bytes: u64) -> Error {
    tracing::info!(%server, error = %e, "remote media fetch failed");
    match e {
        FedError::TooLarge(..) => too_large(server, max_bytes),
        FedError::Timeout(_) => Error::NotYetUploaded(format!("{server} did not send the media in time")),
        e => Error::BadGateway(format!("Could not fetch the media: {e}")),
    }
}
