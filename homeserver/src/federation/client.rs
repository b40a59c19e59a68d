//! The outbound federation client: discovery (or the operator's `federation.resolve` table),
//! HTTPS through rustls, X-Matrix signing, and bounds on everything a remote server controls
//! (connect and total time, response size, no redirects, no non-global addresses unless
//! allowed in `federation.allow_ip_ranges`).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hearth_federation::{
    SigningKey,
    discovery::{Destination, Resolver},
    request_auth,
};
use reqwest::{Method, header};
use ruma::{OwnedServerName, ServerName};

use super::lookup::NetLookup;
use crate::{config::FederationConfig, push::address::AddressPolicy};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request (connect, send, the full response) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The HTTP client's resolver: a name pinned by discovery (an SRV target, a `federation.resolve`
/// entry) resolves to its target; every address is checked against the address policy, so a
/// connection only goes to a permitted address.
pub struct FederationDns {
    policy: AddressPolicy,
    pins: Mutex<HashMap<String, String>>,
}

impl reqwest::dns::Resolve for FederationDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
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
            let permitted = policy.resolve(&host, 0).await?;
            if permitted.is_empty() {
                return Err(format!(
                    "{requested} resolves to no address federation may use (see federation.allow_ip_ranges)"
                )
                .into());
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub struct FederationClient {
    origin: OwnedServerName,
    http: reqwest::Client,
    dns: Arc<FederationDns>,
    policy: AddressPolicy,
    resolver: Resolver<NetLookup>,
    overrides: HashMap<String, (String, u16)>,
}

impl FederationClient {
    pub fn new(origin: OwnedServerName, config: &FederationConfig) -> anyhow::Result<Self> {
        let tls = super::tls::client_config(config.verify_tls, &config.ca_files)?;
        let policy = AddressPolicy::from_networks(config.allow_ip_ranges.clone());
        let dns = Arc::new(FederationDns {
            policy: policy.clone(),
            pins: Mutex::new(HashMap::new()),
        });
        let http = base_builder(tls.clone(), dns.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        // `.well-known` may redirect (a few times); its hosts are never pinned.
        let well_known_dns = Arc::new(FederationDns {
            policy: policy.clone(),
            pins: Mutex::new(HashMap::new()),
        });
        let well_known_http = base_builder(tls, well_known_dns)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
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
            resolver: Resolver::new(NetLookup::new(well_known_http)),
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

    /// GET `path` (with its query) from `server`, signed with `key` when given; the body, at
    /// most `limit` bytes.
    pub async fn get(
        &self,
        server: &ServerName,
        path: &str,
        key: Option<&SigningKey>,
        limit: usize,
    ) -> Result<Vec<u8>, FedError> {
        self.request(Method::GET, server, path, None, key, limit).await
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
        self.request(Method::POST, server, path, Some(body), key, limit).await
    }

    async fn request(
        &self,
        method: Method,
        server: &ServerName,
        path: &str,
        body: Option<Vec<u8>>,
        key: Option<&SigningKey>,
        limit: usize,
    ) -> Result<Vec<u8>, FedError> {
        let name = server.to_string();
        let unreachable = |e: String| FedError::Unreachable(name.clone(), e);
        let dest = self.destination(server).await;
        // The HTTP client does not resolve IP literals, so they are checked here.
        if let Ok(ip) = dest.host.parse::<IpAddr>()
            && !self.policy.permits(ip)
        {
            return Err(unreachable(format!(
                "{ip} is not an address federation may use (see federation.allow_ip_ranges)"
            )));
        }
        if dest.tls_name != dest.host {
            self.dns
                .pins
                .lock()
                .expect("pins lock")
                .insert(dest.tls_name.clone(), dest.host.clone());
        }
        let url_host = match dest.tls_name.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => dest.tls_name.clone(),
        };
        let url = format!("https://{url_host}:{}{path}", dest.port);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header(header::HOST, &dest.host_header);
        if let Some(key) = key {
            let auth = request_auth::sign(
                key,
                &self.origin,
                server,
                &request_auth::Method::from_bytes(method.as_str().as_bytes()).expect("a known method"),
                path,
                body.as_deref(),
            )
                .map_err(|e| FedError::Invalid(name.clone(), e.to_string()))?;
            request = request.header(header::AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            request = request.header(header::CONTENT_TYPE, "application/json").body(body);
        }
        let timed_out = |e: &reqwest::Error| e.is_timeout();
        let mut response = request.send().await.map_err(|e| {
            if timed_out(&e) {
                FedError::Timeout(name.clone())
            } else {
                unreachable(error_chain(&e))
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(FedError::Status(name, status.as_u16()));
        }
        if response.content_length().is_some_and(|len| len > limit as u64) {
            return Err(FedError::TooLarge(name, limit));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(FedError::TooLarge(name, limit));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) if timed_out(&e) => return Err(FedError::Timeout(name)),
                Err(e) => return Err(unreachable(error_chain(&e))),
            }
        }
    }
}

fn base_builder(tls: rustls::ClientConfig, dns: Arc<FederationDns>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .user_agent(concat!("Hearth/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(dns)
}

/// An error with its causes (reqwest's own message is often just "error sending request").
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
