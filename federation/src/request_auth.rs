//! X-Matrix request authentication: the `Authorization` header a server signs every federation
//! request with, and its verification on the receiving side.
//!
//! ruma's `XMatrix` does the parsing, the canonical request object and the signing; this module
//! fixes how Hearth uses it (the destination is always sent, and always checked when present)
//! and turns every failure into one [`AuthError`] the receiving side maps to `401`.

use std::collections::BTreeMap;

use ruma::{
    ServerName,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    serde::Base64,
    signatures::PublicKeyMap,
};

use crate::SigningKey;

/// Why a request's X-Matrix authentication was refused (all of them are `401 M_UNAUTHORIZED`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing Authorization header")]
    Missing,
    #[error("malformed X-Matrix Authorization header: {0}")]
    Malformed(String),
    #[error("the request is addressed to {0}, not to this server")]
    WrongDestination(String),
    #[error("unknown signing key {key} of {origin}")]
    UnknownKey { origin: String, key: String },
    #[error("the request body is not JSON")]
    BadBody,
    #[error("invalid signature: {0}")]
    BadSignature(String),
}

pub use http::Method;

/// A parsed `Authorization: X-Matrix …` header.
pub type Header = XMatrix;

/// Parses an `Authorization` header value.
pub fn parse(value: &str) -> Result<Header, AuthError> {
    XMatrix::parse(value).map_err(|e| AuthError::Malformed(e.to_string()))
}

/// The `Authorization` header value for a request from `origin` to `destination`: `uri` is the
/// path with its query (`/_matrix/...?...`), `body` the JSON body (None or empty: no content).
pub fn sign(
    key: &SigningKey,
    origin: &ServerName,
    destination: &ServerName,
    method: &http::Method,
    uri: &str,
    body: Option<&[u8]>,
) -> Result<String, AuthError> {
    let request = http_request(method, uri, body)?;
    let header = XMatrix::sign_http_request(
        &request,
        XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key.ed25519()),
    )
    .map_err(|e| AuthError::Malformed(e.to_string()))?;
    Ok(header.to_string())
}

/// Checks a parsed header against the request it came with: the destination (when the header
/// names one) must be `us`, and the signature must verify with `origin_key`, the public key the
/// origin published under `header.key` (the caller looks it up; None: [`AuthError::UnknownKey`]).
pub fn verify(
    header: &Header,
    us: &ServerName,
    method: &http::Method,
    uri: &str,
    body: Option<&[u8]>,
    origin_key: Option<&Base64>,
) -> Result<(), AuthError> {
    if let Some(destination) = &header.destination
        && destination != us
    {
        return Err(AuthError::WrongDestination(destination.to_string()));
    }
    let Some(public_key) = origin_key else {
        return Err(AuthError::UnknownKey {
            origin: header.origin.to_string(),
            key: header.key.to_string(),
        });
    };
    let request = http_request(method, uri, body)?;
    let keys: PublicKeyMap = BTreeMap::from([(
        header.origin.to_string(),
        BTreeMap::from([(header.key.to_string(), public_key.clone())]),
    )]);
    header
        .verify_http_request(&request, us, &keys)
        .map_err(|e| AuthError::BadSignature(e.to_string()))
}

fn http_request(
    method: &http::Method,
    uri: &str,
    body: Option<&[u8]>,
) -> Result<http::Request<Vec<u8>>, AuthError> {
    let body = body.unwrap_or_default();
    if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(body).is_err() {
        return Err(AuthError::BadBody);
    }
    http::Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(body.to_vec())
        .map_err(|e| AuthError::Malformed(format!("request target {uri:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &ServerName {
        <&ServerName>::try_from(s).unwrap()
    }

    fn public(key: &SigningKey) -> Base64 {
        Base64::parse(key.public_key_base64()).unwrap()
    }

    const URI: &str = "/_matrix/federation/v1/query/profile?user_id=%40a%3Ab.example&field=displayname";

    #[test]
    fn a_signed_request_verifies() {
        let key = SigningKey::generate("k1").unwrap();
        let value = sign(
            &key,
            name("a.example"),
            name("b.example"),
            &http::Method::GET,
            URI,
            None,
        )
        .unwrap();
        assert!(value.starts_with("X-Matrix "), "{value}");
        let header = parse(&value).unwrap();
        assert_eq!(header.origin.as_str(), "a.example");
        assert_eq!(
            header.destination.as_deref().map(|d| d.as_str()),
            Some("b.example")
        );
        assert_eq!(header.key.as_str(), "ed25519:k1");
        verify(
            &header,
            name("b.example"),
            &http::Method::GET,
            URI,
            None,
            Some(&public(&key)),
        )
        .unwrap();
    }

    #[test]
    fn a_body_is_part_of_the_signature() {
        let key = SigningKey::generate("k1").unwrap();
        let body = br#"{"server_keys":{"c.example":{}}}"#;
        let value = sign(
            &key,
            name("a.example"),
            name("b.example"),
            &http::Method::POST,
            "/_matrix/key/v2/query",
            Some(body),
        )
        .unwrap();
        let header = parse(&value).unwrap();
        let post = http::Method::POST;
        verify(
            &header,
            name("b.example"),
            &post,
            "/_matrix/key/v2/query",
            Some(body),
            Some(&public(&key)),
        )
        .unwrap();
        let other = br#"{"server_keys":{"d.example":{}}}"#;
        let err = verify(
            &header,
            name("b.example"),
            &post,
            "/_matrix/key/v2/query",
            Some(other),
            Some(&public(&key)),
        );
        assert!(matches!(err, Err(AuthError::BadSignature(_))), "{err:?}");
        let err = verify(
            &header,
            name("b.example"),
            &post,
            "/_matrix/key/v2/query",
            Some(b"{no"),
            Some(&public(&key)),
        );
        assert_eq!(err, Err(AuthError::BadBody));
    }

    #[test]
    fn a_request_for_another_destination_is_refused() {
        let key = SigningKey::generate("k1").unwrap();
        let value = sign(
            &key,
            name("a.example"),
            name("b.example"),
            &http::Method::GET,
            URI,
            None,
        )
        .unwrap();
        let header = parse(&value).unwrap();
        let err = verify(
            &header,
            name("c.example"),
            &http::Method::GET,
            URI,
            None,
            Some(&public(&key)),
        );
        assert_eq!(err, Err(AuthError::WrongDestination("b.example".into())));
    }

    #[test]
    fn a_changed_request_or_another_key_is_a_bad_signature() {
        let key = SigningKey::generate("k1").unwrap();
        let value = sign(
            &key,
            name("a.example"),
            name("b.example"),
            &http::Method::GET,
            URI,
            None,
        )
        .unwrap();
        let header = parse(&value).unwrap();
        // Another method, another target.
        let err = verify(
            &header,
            name("b.example"),
            &http::Method::PUT,
            URI,
            None,
            Some(&public(&key)),
        );
        assert!(matches!(err, Err(AuthError::BadSignature(_))), "{err:?}");
        let err = verify(
            &header,
            name("b.example"),
            &http::Method::GET,
            "/_matrix/federation/v1/version",
            None,
            Some(&public(&key)),
        );
        assert!(matches!(err, Err(AuthError::BadSignature(_))), "{err:?}");
        // Another server's key under the same ID.
        let forger = SigningKey::generate("k1").unwrap();
        let err = verify(
            &header,
            name("b.example"),
            &http::Method::GET,
            URI,
            None,
            Some(&public(&forger)),
        );
        assert!(matches!(err, Err(AuthError::BadSignature(_))), "{err:?}");
        // A forged origin: the signature was made over another origin.
        let forged = value.replace("origin=a.example", "origin=evil.example");
        let header = parse(&forged).unwrap();
        let err = verify(
            &header,
            name("b.example"),
            &http::Method::GET,
            URI,
            None,
            Some(&public(&key)),
        );
        assert!(matches!(err, Err(AuthError::BadSignature(_))), "{err:?}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let key = SigningKey::generate("k1").unwrap();
        let value = sign(
            &key,
            name("a.example"),
            name("b.example"),
            &http::Method::GET,
            URI,
            None,
        )
        .unwrap();
        let header = parse(&value).unwrap();
        let err = verify(&header, name("b.example"), &http::Method::GET, URI, None, None);
        assert_eq!(
            err,
            Err(AuthError::UnknownKey {
                origin: "a.example".into(),
                key: "ed25519:k1".into()
            })
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for value in [
            "",
            "Bearer abc",
            "X-Matrix key=\"ed25519:1\",sig=\"abc\"",
            "X-Matrix origin=a.example,sig=\"abc\"",
            "X-Matrix origin=a.example,key=\"ed25519:1\"",
            "X-Matrix origin=\"not a name\",key=\"ed25519:1\",sig=\"abc\"",
            "X-Matrix origin=a.example,origin=b.example,key=\"ed25519:1\",sig=\"abc\"",
            "X-Matrix origin=a.example,key=\"ed25519:1\",sig=\"!!!\"",
        ] {
            assert!(
                matches!(parse(value), Err(AuthError::Malformed(_))),
                "{value:?} parsed"
            );
        }
        // Quoted values and no destination (older servers) parse.
        let header = parse("X-Matrix origin=\"a.example\",key=\"ed25519:1\",sig=\"ABCD\"").unwrap();
        assert!(header.destination.is_none());
    }
}
