//! Content repository (Client-Server API §Content repository): uploads under `/_matrix/media/…`,
//! authenticated downloads, thumbnails and config under `/_matrix/client/v1/media/…`, and the
//! frozen unauthenticated `/_matrix/media/v3/download|thumbnail` endpoints.

use std::collections::HashMap;

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::{
        authenticated_media::get_media_config,
        media::{create_content, create_mxc_uri},
    },
};
use tokio::io::AsyncReadExt;

use crate::{
    api::error::{ApiError, ApiResult},
    api::{
        extract::Auth,
        ruma::{Ruma, RumaResponse},
    },
    media::{self, Method, ThumbnailRequest, UploadMeta},
    services::Services,
};

type Params = Query<HashMap<String, String>>;

fn upload_meta(headers: &HeaderMap, params: &HashMap<String, String>) -> UploadMeta {
    UploadMeta {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        filename: params.get("filename").cloned(),
        content_length: headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    }
}

/// An upload's answer. A refused body may be partly unread, so a 413 also closes the
/// connection (`Connection: close`): the client must not send its next request on it.
fn upload_response(result: Result<impl IntoResponse, crate::Error>) -> Response {
    match result.map_err(ApiError::from) {
        Ok(body) => body.into_response(),
        Err(e) => {
            let close = e.status == StatusCode::PAYLOAD_TOO_LARGE;
            let mut response = e.into_response();
            if close {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

/// `POST /_matrix/media/v3/upload`: the body streams to disk (ruma's request would hold it in
/// memory, past the size limit), so it is read by hand.
pub async fn upload(
    State(svc): State<Services>,
    auth: Auth,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let meta = upload_meta(&headers, &params);
    upload_response(
        media::upload(&svc, &auth.user_id, meta, body)
            .await
            .map(|uri| RumaResponse(create_content::v3::Response::new(uri.into()))),
    )
}

/// `POST /_matrix/media/v1/create`
pub async fn create(
    State(svc): State<Services>,
    auth: Auth,
    Ruma(_): Ruma<create_mxc_uri::v1::Request>,
) -> ApiResult<RumaResponse<create_mxc_uri::v1::Response>> {
    let (uri, expires) = media::create(&svc, &auth.user_id).await?;
    let mut response = create_mxc_uri::v1::Response::new(uri.into());
    response.unused_expires_at = UInt::new(expires as u64).map(MilliSecondsSinceUnixEpoch);
    Ok(response.into())
}

/// The `{}` a `PUT` upload answers (ruma's empty response cannot be built outside ruma).
#[derive(serde::Serialize)]
struct Uploaded {}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
pub async fn upload_to(
    State(svc): State<Services>,
    auth: Auth,
    Path((server_name, media_id)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let meta = upload_meta(&headers, &params);
    upload_response(
        media::upload_to(&svc, &auth.user_id, &server_name, &media_id, meta, body)
            .await
            .map(|()| axum::Json(Uploaded {})),
    )
}

fn timeout_ms(params: &HashMap<String, String>) -> ApiResult<Option<u64>> {
    params
        .get("timeout_ms")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::invalid_param("timeout_ms must be a non-negative integer"))
        })
        .transpose()
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
pub async fn download(
    State(svc): State<Services>,
    _auth: Auth,
    Path((server_name, media_id)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult<Response> {
    serve_download(&svc, &server_name, &media_id, None, &params).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub async fn download_named(
    State(svc): State<Services>,
    _auth: Auth,
    Path((server_name, media_id, file_name)): Path<(String, String, String)>,
    Query(params): Params,
) -> ApiResult<Response> {
    serve_download(&svc, &server_name, &media_id, Some(file_name), &params).await
}

async fn serve_download(
    svc: &Services,
    server_name: &str,
    media_id: &str,
    file_name: Option<String>,
    params: &HashMap<String, String>,
) -> ApiResult<Response> {
    let download = media::download(svc, server_name, media_id, file_name, timeout_ms(params)?).await?;
    let content_type = HeaderValue::from_str(&download.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut response = Response::new(file_body(download.file));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(download.size));
    insert_media_headers(headers, &download.disposition);
    Ok(response)
}

/// The headers every served file carries: disposition, the spec's CSP, CORP.
fn insert_media_headers(headers: &mut HeaderMap, disposition: &str) {
    if let Ok(value) = HeaderValue::from_str(disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(media::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
}

/// A file streamed in 64 KiB chunks.
pub(crate) fn file_body(file: tokio::fs::File) -> Body {
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Body::from_stream(chunks)
}

fn dimension(params: &HashMap<String, String>, name: &str) -> ApiResult<u32> {
    let value = params
        .get(name)
        .ok_or_else(|| ApiError::missing_param(format!("Missing required integer query parameter {name}")))?;
    let n: i64 = value
        .parse()
        .map_err(|_| ApiError::invalid_param(format!("Query parameter {name} must be an integer")))?;
    u32::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid_param(format!("Query parameter {name} must be a positive integer")))
}

fn thumbnail_request(params: &HashMap<String, String>) -> ApiResult<ThumbnailRequest> {
    let width = dimension(params, "width")?;
    let height = dimension(params, "height")?;
    let method = match params.get("method") {
        None => Method::Scale,
        Some(m) => Method::parse(m).ok_or_else(|| ApiError::invalid_param("method must be crop or scale"))?,
    };
    let animated = match params.get("animated").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid_param("animated must be true or false")),
    };
    Ok(ThumbnailRequest {
        width,
        height,
        method,
        animated,
    })
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`
pub async fn thumbnail(
    State(svc): State<Services>,
    _auth: Auth,
    Path((server_name, media_id)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult<Response> {
    let request = thumbnail_request(&params)?;
    let thumb = media::thumbnail(&svc, &server_name, &media_id, request, timeout_ms(&params)?).await?;
    let extension = thumb.content_type.rsplit('/').next().unwrap_or("bin").to_owned();
    let content_type = HeaderValue::from_str(&thumb.content_type)
        .map_err(|e| ApiError::internal(format!("thumbnail type: {e}")))?;
    let mut response = thumb.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    // The spec requires `inline` for thumbnails; they are always one of the inline-safe types.
    insert_media_headers(headers, &format!("inline; filename=\"thumbnail.{extension}\""));
    Ok(response)
}

/// `GET /_matrix/client/v1/media/config` (and the deprecated `/_matrix/media/v3/config`)
pub async fn config(
    State(svc): State<Services>,
    _auth: Auth,
) -> RumaResponse<get_media_config::v1::Response> {
    let upload_size = UInt::new(svc.config.media.max_upload_bytes).unwrap_or(UInt::MAX);
    get_media_config::v1::Response::new(upload_size).into()
}

/// `GET …/preview_url`: URL previews are off (`media.url_preview = false`); like Synapse with
/// previews disabled, the endpoint answers as if it did not exist.
pub async fn preview_url_disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "URL previews are disabled on this server",
    )
}

/// The deprecated unauthenticated `GET /_matrix/media/v3/download|thumbnail/…`, frozen as the
/// spec asks since v1.11: media uploaded after the freeze is only served by the authenticated
/// endpoints, and Hearth has no media from before it.
pub async fn frozen() -> ApiError {
    ApiError::not_found("Not found")
}
