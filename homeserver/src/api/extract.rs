//! Request extractors that fail with the spec's errors: the authenticated user, and JSON bodies.

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request},
    http::{HeaderMap, header, request::Parts},
};
use ruma::OwnedUserId;
use ruma::api::IncomingRequest;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    api::error::ApiError, api::ruma::Ruma, config::Network, services::Services, users::uia::Operation,
};

/// The user and device an access token belongs to.
#[derive(Debug, Clone)]
pub struct Auth {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub token_hash: String,
}

/// The access token of a request: `Authorization: Bearer …`, or the deprecated query parameter.
pub fn access_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("access_token=").map(percent_decode))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The client's address: the connection's peer, unless the peer is a trusted proxy (config
/// `trusted_proxies`); then the address it forwarded, see [`forwarded_client`].
pub fn client_ip(parts: &Parts, trusted_proxies: &[Network]) -> Option<String> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(forwarded_client(peer, &parts.headers, trusted_proxies).to_string())
}

/// Walks `X-Forwarded-For` from the right (each proxy appends the address it received from)
/// while the hops are trusted proxies; the first untrusted hop is the client. A peer that is not
/// a trusted proxy is the client whatever the header says, so clients cannot forge it.
fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[Network]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.into_iter().rev() {
        let hop = hop.trim();
        let Some(ip) = hop
            .parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// The client's IP address, for rate limits keyed by address.
pub struct ClientIp(pub String);

impl FromRequestParts<Services> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, ApiError> {
        Ok(Self(
            client_ip(parts, &svc.config.trusted_proxies).unwrap_or_else(|| "unknown".into()),
        ))
    }
}

impl FromRequestParts<Services> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, ApiError> {
        let token = access_token(parts).ok_or_else(|| ApiError::missing_token("Missing access token"))?;
        let ip = client_ip(parts, &svc.config.trusted_proxies);
        // Boxed: a request's future is as large as its largest step, and a long-poll keeps its
        // future (by the ten thousand) long after this lookup is over.
        let session = Box::pin(crate::users::authenticate(svc, &token, ip.as_deref())).await?;
        let (user_id, device_id, token_hash) = (session.user_id, session.device_id, session.token_hash);
        Ok(Self {
            user_id,
            device_id,
            token_hash,
        })
    }
}

/// An optional `Auth`: endpoints that work with or without a token.
pub struct MaybeAuth(pub Option<Auth>);

impl FromRequestParts<Services> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, ApiError> {
        if access_token(parts).is_none() {
            return Ok(Self(None));
        }
        Auth::from_request_parts(parts, svc).await.map(|a| Self(Some(a)))
    }
}

/// A JSON body: `M_NOT_JSON` when it does not parse, `M_BAD_JSON` when it has the wrong shape,
/// `M_TOO_LARGE` past the body limit. An empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Services> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, svc: &Services) -> Result<Self, ApiError> {
        let value = json_object(req, svc).await?;
        serde_json::from_value(value)
            .map(Self)
            .map_err(|e| ApiError::bad_json(e.to_string()))
    }
}

/// The body as a JSON object, with `JsonBody`'s errors.
async fn json_object(req: Request, svc: &Services) -> Result<Value, ApiError> {
    let bytes = Bytes::from_request(req, svc).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("Request body too large")
        } else {
            ApiError::not_json(rejection.body_text())
        }
    })?;
    let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::not_json(format!("Body is not valid JSON: {e}")))?
    };
    if !value.is_object() {
        return Err(ApiError::bad_json("Body must be a JSON object"));
    }
    Ok(value)
}

/// A typed request behind user-interactive auth: ruma's request read from the body without its
/// `auth` dict, that dict (checked by `users::uia` stage by stage, so a malformed stage is a
/// failed stage, not a malformed request), and the operation (method, path below the API
/// version, body without `auth`) the UIA session is bound to.
pub struct Uia<T> {
    pub request: T,
    pub auth: Option<Value>,
    pub operation: Operation,
}

impl<T: IncomingRequest> FromRequest<Services> for Uia<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, svc: &Services) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let method = parts.method.as_str().to_owned();
        // Inside the `/v3` and `/r0` nests the path is relative to them.
        let path = parts.uri.path().to_owned();
        let mut value = json_object(Request::from_parts(parts.clone(), body), svc).await?;
        let operation = Operation::new(&method, &path, &value);
        let auth = value.as_object_mut().and_then(|o| o.remove("auth"));
        let rest = serde_json::to_vec(&value).map_err(ApiError::internal)?;
        let Ruma(request) = Ruma::from_request(Request::from_parts(parts, rest.into()), svc).await?;
        Ok(Self {
            request,
            auth,
            operation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<Network> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let h = headers(&["203.0.113.9"]);
        assert_eq!(forwarded_client(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
        assert_eq!(
            forwarded_client(ip("198.51.100.1"), &h, &nets(&["127.0.0.1/32"])),
            ip("198.51.100.1")
        );
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), &h, &nets(&["127.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1"]);
        // The client forged its first entry; the proxies appended the rest.
        let h = headers(&["1.1.1.1, 203.0.113.9", "10.0.0.2"]);
        assert_eq!(forwarded_client(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // Only proxies: the leftmost one is as far as is known.
        let h = headers(&["10.0.0.3, 10.0.0.2"]);
        assert_eq!(forwarded_client(ip("127.0.0.1"), &h, &trusted), ip("10.0.0.3"));
        // Garbage stops the walk at the last good hop.
        let h = headers(&["203.0.113.9, nonsense"]);
        assert_eq!(forwarded_client(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.1"));
        assert_eq!(
            forwarded_client(ip("::ffff:127.0.0.1"), &headers(&["[2001:db8::1]:443"]), &trusted),
            ip("2001:db8::1")
        );
    }
}
