//! The outbound federation client: discovery (or the operator's `federation.resolve` table),
//! HTTPS through hyper + rustls, X-Matrix signing, and bounds on everything a remote server
//! controls (connect and total time, response size, no redirects, no non-global addresses
//! unless allowed in `federation.allow_ip_ranges`).

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use hearth_federation::{
    SigningKey,
    discovery::{Destination, Resolver},
    request_auth,
};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode, header};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connect, HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};
use ruma::{OwnedServerName, ServerName};

use super::lookup::NetLookup;
use crate::{config::FederationConfig, push::address::AddressPolicy};

/// How long a connection may take to open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request (connect, send, the full response) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Names pinned to a connect target at once.
const MAX_PINS: usize = 10_000;

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum FedError {
    #[error("{0} is not reachable: {1}")]
    Unreachable(String, String),
    #[error("{0} answered {1}")]
    Status(String, u16),
    #[error("{0} sent more than {1} bytes")]
    TooLarge(String, usize),
    #[error("{0} took too long")]
    Timeout(String),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// The connector's resolver: a name pinned by discovery (an SRV target, a `federation.resolve`
/// entry) resolves to its target; every address is checked against the address policy, so a
/// connection only goes to a permitted address.
#[derive(Clone)]
pub struct FederationDns {
    policy: AddressPolicy,
    pins: Arc<Mutex<HashMap<String, String>>>,
}

impl FederationDns {
    fn new(policy: AddressPolicy) -> Self {
        Self {
            policy,
            pins: Default::default(),
        }
    }
}

type DnsFuture = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower::Service<Name> for FederationDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = DnsFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        let requested = name.as_str().to_owned();
        let host = self
            .pins
            .lock()
            .expect("pins lock")
            .get(&requested)
            .cloned()
            .unwrap_or_else(|| requested.clone());
        Box::pin(async move {
            policy
                .connect_to(
                    &host,
                    &requested,
                    "federation may use (see federation.allow_ip_ranges)",
                )
                .await
        })
    }
}

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector<FederationDns>>, Full<Bytes>>;

/// An HTTPS client over `tls` that resolves through `dns`.
fn https_client(tls: rustls::ClientConfig, dns: FederationDns) -> HttpsClient {
    let mut http = HttpConnector::new_with_resolver(dns);
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // Without it, an HTTP/2 request (HEADERS and DATA written apart) waits for the peer's
    // delayed ACK: ~25 ms more per transaction between two Hearths (scripts/federation-interop.sh).
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// Sends `request` and reads the response, at most `limit` bytes of body, all within
/// `timeout`. Any status is returned.
pub(crate) async fn fetch<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, Full<Bytes>>,
    request: Request<Full<Bytes>>,
    limit: usize,
    who: &str,
    timeout: Duration,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), FedError> {
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| FedError::Unreachable(who.to_owned(), error_chain(&e)))?;
        let (parts, mut body) = response.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(FedError::TooLarge(who.to_owned(), limit));
        }
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FedError::Unreachable(who.to_owned(), error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > limit {
                    return Err(FedError::TooLarge(who.to_owned(), limit));
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok((parts.status, parts.headers, bytes))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FedError::Timeout(who.to_owned()))?
}

/// A whole answer: status, headers and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

pub struct FederationClient {
    origin: OwnedServerName,
    http: HttpsClient,
    dns: FederationDns,
    policy: AddressPolicy,
    resolver: Resolver<NetLookup>,
    overrides: HashMap<String, (String, u16)>,
}

impl FederationClient {
    pub fn new(origin: OwnedServerName, config: &FederationConfig) -> anyhow::Result<Self> {
        let tls = super::tls::client_config(config.verify_tls, &config.ca_files, "federation.ca_files")?;
        let policy = AddressPolicy::from_networks(config.allow_ip_ranges.clone());
        let dns = FederationDns::new(policy.clone());
        let http = https_client(tls.clone(), dns.clone());
        // `.well-known` requests get a client of their own: their hosts are never pinned.
        let well_known = https_client(tls, FederationDns::new(policy.clone()));
        let overrides = config
            .resolve
            .iter()
            .filter_map(|(name, target)| {
                let (host, port) = target.rsplit_once(':')?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Some((name.clone(), (host.to_owned(), port.parse().ok()?)))
            })
            .collect();
        Ok(Self {
            origin,
            http,
            dns,
            policy,
            resolver: Resolver::new(NetLookup::new(well_known)),
            overrides,
        })
    }

    /// Where requests for `server` go: the `federation.resolve` entry, else discovery.
    pub async fn destination(&self, server: &ServerName) -> Destination {
        if let Some((host, port)) = self.overrides.get(server.as_str()) {
            let tls_name = server.host().trim_start_matches('[').trim_end_matches(']');
            return Destination {
                host: host.clone(),
                port: *port,
                host_header: server.to_string(),
                tls_name: tls_name.to_owned(),
            };
        }
        self.resolver.resolve(server).await
    }

    /// The X-Matrix `Authorization` header for a request from this server to `server`.
    pub fn authorization(
        &self,
        key: &SigningKey,
        server: &ServerName,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<String, FedError> {
        let method = request_auth::Method::from_bytes(method.as_bytes())
            .map_err(|e| FedError::Invalid(server.to_string(), e.to_string()))?;
        request_auth::sign(key, &self.origin, server, &method, path, body)
            .map_err(|e| FedError::Invalid(server.to_string(), e.to_string()))
    }

    /// GET `path` (with its query) from `server`, signed with `key` when given: the body of a
    /// successful response, at most `limit` bytes.
    pub async fn get(
        &self,
        server: &ServerName,
        path: &str,
        key: Option<&SigningKey>,
        limit: usize,
    ) -> Result<Vec<u8>, FedError> {
        let authorization = key
            .map(|key| self.authorization(key, server, "GET", path, None))
            .transpose()?;
        self.successful(
            self.request("GET", server, path, None, authorization, limit)
                .await?,
            server,
        )
    }

    /// POST a JSON body to `server`.
    pub async fn post(
        &self,
        server: &ServerName,
        path: &str,
        body: Vec<u8>,
        key: Option<&SigningKey>,
        limit: usize,
    ) -> Result<Vec<u8>, FedError> {
        let authorization = key
            .map(|key| self.authorization(key, server, "POST", path, Some(&body)))
            .transpose()?;
        self.successful(
            self.request("POST", server, path, Some(body), authorization, limit)
                .await?,
            server,
        )
    }

    fn successful(&self, (status, body): (u16, Vec<u8>), server: &ServerName) -> Result<Vec<u8>, FedError> {
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(FedError::Status(server.to_string(), status))
        }
    }

    /// One request to `server` with the given `Authorization` header (or none): the status and
    /// the body, whatever the status.
    pub async fn request(
        &self,
        method: &str,
        server: &ServerName,
        path: &str,
        body: Option<Vec<u8>>,
        authorization: Option<String>,
        limit: usize,
    ) -> Result<(u16, Vec<u8>), FedError> {
        let answer = self
            .request_within(method, server, path, body, authorization, limit, REQUEST_TIMEOUT)
            .await?;
        Ok((answer.status, answer.body))
    }

    /// `request` with its own time bound, answering the headers too (media downloads).
    #[allow(clippy::too_many_arguments)]
    pub async fn request_within(
        &self,
        method: &str,
        server: &ServerName,
        path: &str,
        body: Option<Vec<u8>>,
        authorization: Option<String>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Answer, FedError> {
        let name = server.to_string();
        let dest = self.destination(server).await;
        // The connector does not resolve IP literals, so they are checked here.
        if let Ok(ip) = dest.host.parse::<IpAddr>()
            && !self.policy.permits(ip)
        {
            return Err(FedError::Unreachable(
                name,
                format!("{ip} is not an address federation may use (see federation.allow_ip_ranges)"),
            ));
        }
        if dest.tls_name != dest.host {
            let mut pins = self.dns.pins.lock().expect("pins lock");
            // Bounded: a pin is set again before each request that needs it.
            if pins.len() >= MAX_PINS && !pins.contains_key(&dest.tls_name) {
                pins.clear();
            }
            pins.insert(dest.tls_name.clone(), dest.host.clone());
        }
        let url_host = match dest.tls_name.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => dest.tls_name.clone(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("https://{url_host}:{}{path}", dest.port))
            .header(header::HOST, &dest.host_header)
            .header(header::USER_AGENT, concat!("Hearth/", env!("CARGO_PKG_VERSION")));
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| FedError::Invalid(name.clone(), e.to_string()))?;
        let (status, headers, body) = fetch(&self.http, request, limit, &name, timeout).await?;
        Ok(Answer {
            status: status.as_u16(),
            headers,
            body,
        })
    }

    /// An unsigned GET of an `https` URL another server named (a media `Location`): the same
    /// address policy, bounds and no redirects as every other request.
    pub async fn get_url(&self, url: &str, limit: usize, timeout: Duration) -> Result<Answer, FedError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| FedError::Invalid(url.to_owned(), format!("not a URL: {e}")))?;
        let host = uri.host().unwrap_or_default().to_owned();
        if uri.scheme_str() != Some("https") || host.is_empty() {
            return Err(FedError::Invalid(url.to_owned(), "not an https URL".into()));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>()
            && !self.policy.permits(ip)
        {
            return Err(FedError::Unreachable(
                host,
                format!("{ip} is not an address federation may use (see federation.allow_ip_ranges)"),
            ));
        }
        let request = Request::builder()
            .method("GET")
            .uri(uri)
            .header(header::USER_AGENT, concat!("Hearth/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|e| FedError::Invalid(host.clone(), e.to_string()))?;
        let (status, headers, body) = fetch(&self.http, request, limit, &host, timeout).await?;
        Ok(Answer {
            status: status.as_u16(),
            headers,
            body,
        })
    }
}

/// An error with its causes (the outermost message is often just "client error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
