//! Incoming request authentication: the `Authorization: X-Matrix` header checked against the
//! origin's keys (fetched and cached as needed).

use hearth_federation::request_auth;
use ruma::{OwnedServerName, ServerName};

use crate::{Error, error::Result, services::Services};

/// The origin of a request whose X-Matrix signature verifies; `401 M_UNAUTHORIZED` otherwise
/// (no or a malformed header, another destination, an unknown key, a bad signature).
pub async fn verify_request(
    svc: &Services,
    method: &str,
    uri: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<OwnedServerName> {
    let refuse = |e: request_auth::AuthError| Error::unauthorized(e.to_string());
    let header = request_auth::parse(
        authorization
            .ok_or(request_auth::AuthError::Missing)
            .map_err(refuse)?,
    )
    .map_err(refuse)?;
    let method = request_auth::Method::from_bytes(method.as_bytes())
        .map_err(|_| Error::unauthorized("unknown request method"))?;
    let us = <&ServerName>::try_from(svc.server_name()).expect("the configured server name is valid");
    // Refused before any key fetch: a request for another server costs nothing.
    if let Some(destination) = &header.destination
        && destination != us
    {
        return Err(refuse(request_auth::AuthError::WrongDestination(
            destination.to_string(),
        )));
    }
    let key = super::keys::request_key(svc, &header.origin, header.key.as_str()).await?;
    let body = (!body.is_empty()).then_some(body);
    request_auth::verify(&header, us, &method, uri, body, key.as_ref()).map_err(refuse)?;
    Ok(header.origin)
}
