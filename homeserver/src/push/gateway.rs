//! The HTTP client for push gateways (Push Gateway API): `https://` with the system's
//! certificate authorities plus `push.ca_files` (TLS 1.2 or 1.3: gateways sit behind ordinary
//! web servers), or plain `http://`. Names resolve through the address policy, so a connection
//! only goes to an address that was checked; no redirects (one could point anywhere), no proxy
//! from the environment, and the time and the answer's size are bounded.

use std::sync::OnceLock;

use axum::body::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode, header};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};
use serde_json::Value;

use super::address::AddressPolicy;
use crate::{
    config::PushConfig,
    federation::{client::fetch, tls},
};

/// How long one notification may take, connection included.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most a gateway's answer may hold (it lists rejected pushkeys).
const MAX_ANSWER: usize = 64 * 1024;

type GatewayClient = Client<hyper_rustls::HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>;

/// Push gateways as the server reaches them; the client is built on first use (reading the
/// system's certificate authorities takes a while, and most servers of the tests never push).
pub struct Gateways {
    policy: AddressPolicy,
    ca_files: Vec<std::path::PathBuf>,
    client: OnceLock<GatewayClient>,
}

impl Gateways {
    pub fn new(config: &PushConfig) -> Self {
        Self {
            policy: AddressPolicy::new(config),
            ca_files: config.ca_files.clone(),
            client: OnceLock::new(),
        }
    }

    /// POSTs `body` to `url`: the answer's status and JSON body (`Null` when it is not JSON).
    pub async fn post_json(&self, url: &str, body: &Value) -> Result<(StatusCode, Value), String> {
        let client = self.client()?;
        let request = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let (status, _, answer) = fetch(client, request, MAX_ANSWER, url, TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_slice(&answer).unwrap_or_default()))
    }

    fn client(&self) -> Result<&GatewayClient, String> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let tls = tls::client_config(true, &self.ca_files, "push.ca_files").map_err(|e| format!("{e:#}"))?;
        let mut http = HttpConnector::new_with_resolver(PolicyResolver(self.policy.clone()));
        http.enforce_http(false);
        http.set_connect_timeout(Some(crate::federation::client::CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(self
            .client
            .get_or_init(|| Client::builder(TokioExecutor::new()).build(https)))
    }
}

/// The connector's resolver: hands out only permitted addresses (a name that resolves
/// differently later is checked again).
#[derive(Clone)]
pub struct PolicyResolver(AddressPolicy);

type Resolving =
    std::pin::Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<std::net::SocketAddr>>> + Send>>;

impl tower::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move { policy.connect_to(&host, &host, "push gateways may use").await })
    }
}
