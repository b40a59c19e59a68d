//! `GET /_matrix/federation/v1/media/{download,thumbnail}/{mediaId}` (Server-Server API
//! §Content repository): this server's own media, answered as `multipart/mixed` — a JSON
//! metadata part (`{}`), then the bytes. The file streams from disk between the two framing
//! pieces, so serving a large file holds no more than a chunk of it in memory.

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};

use super::Signed;
use crate::{
    api::{
        error::{ApiError, ApiResult},
        media::file_body,
    },
    media::{self, Method, ThumbnailRequest},
    services::Services,
};

/// `GET /_matrix/federation/v1/media/download/{mediaId}`
pub async fn download(
    State(svc): State<Services>,
    signed: Signed<get_content::v1::Request>,
) -> ApiResult<Response> {
    let request = signed.request;
    let timeout = Some(request.timeout_ms.as_millis() as u64);
    let download = media::download_local(&svc, &request.media_id, timeout).await?;
    let (head, tail, content_type) = framing(&download.content_type, Some(&download.disposition));
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(
            file_body(download.file)
                .into_data_stream()
                .map(|chunk| chunk.map_err(std::io::Error::other)),
        )
        .chain(futures_util::stream::once(async move { Ok(tail) }));
    Ok(multipart(Body::from_stream(body), content_type))
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
pub async fn thumbnail(
    State(svc): State<Services>,
    signed: Signed<get_content_thumbnail::v1::Request>,
) -> ApiResult<Response> {
    let request = signed.request;
    let dimension = |n: ruma::UInt, name: &str| {
        u32::try_from(u64::from(n))
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::invalid_param(format!("{name} must be a positive integer")))
    };
    let wanted = ThumbnailRequest {
        width: dimension(request.width, "width")?,
        height: dimension(request.height, "height")?,
        method: match request.method.as_ref().map(|m| m.as_str()) {
            None | Some("scale") => Method::Scale,
            Some("crop") => Method::Crop,
            Some(_) => return Err(ApiError::invalid_param("method must be crop or scale")),
        },
        animated: request.animated.unwrap_or(false),
    };
    let timeout = Some(request.timeout_ms.as_millis() as u64);
    let server_name = svc.server_name().to_owned();
    let thumb = media::thumbnail(&svc, &server_name, &request.media_id, wanted, timeout).await?;
    let (head, tail, content_type) = framing(&thumb.content_type, None);
    let mut bytes = Vec::with_capacity(head.len() + thumb.bytes.len() + tail.len());
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(&thumb.bytes);
    bytes.extend_from_slice(&tail);
    Ok(multipart(Body::from(bytes), content_type))
}

fn multipart(body: Body, content_type: HeaderValue) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response
}

/// What goes before and after the file in a `multipart/mixed` answer, and the answer's
/// `Content-Type`: the metadata part, the file part's headers; the closing delimiter.
fn framing(content_type: &str, disposition: Option<&str>) -> (Bytes, Bytes, HeaderValue) {
    let boundary = crate::util::random_string(32);
    let mut head = format!(
        "\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: {content_type}\r\n"
    );
    if let Some(disposition) = disposition {
        head.push_str(&format!("Content-Disposition: {disposition}\r\n"));
    }
    head.push_str("\r\n");
    let tail = format!("\r\n--{boundary}--\r\n");
    let header = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}"))
        .expect("an alphanumeric boundary is a valid header value");
    (Bytes::from(head), Bytes::from(tail), header)
}

#[cfg(test)]
mod tests {
    use ruma::api::{
        IncomingResponseExt,
        federation::authenticated_media::{FileOrLocation, get_content},
    };

    use super::framing;

    /// What this server sends is what ruma (the parser other Rust servers use) reads back.
    #[test]
    fn framing_round_trips_through_ruma() {
        let (head, tail, content_type) = framing("text/plain", Some("inline; filename=\"a.txt\""));
        let mut body = head.to_vec();
        body.extend_from_slice(b"hello\r\n--not-the-boundary");
        body.extend_from_slice(&tail);
        let response = axum::http::Response::builder()
            .header("content-type", content_type)
            .body(body.as_slice())
            .unwrap();
        let parsed = get_content::v1::Response::try_from_http_response(response).unwrap();
        let FileOrLocation::File(content) = parsed.content else {
            panic!("a file part");
        };
        assert_eq!(content.file, b"hello\r\n--not-the-boundary");
        assert_eq!(content.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            content.content_disposition.and_then(|d| d.filename).as_deref(),
            Some("a.txt")
        );
    }
}
