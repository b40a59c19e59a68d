//! The network half of server discovery: `.well-known/matrix/server` over HTTPS and SRV records
//! through hickory-resolver (the order and caching are `hearth_federation::discovery`'s).

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use hearth_federation::discovery::{Lookup, SrvTarget, WellKnownResponse, cache_lifetime};
use hickory_resolver::{TokioResolver, proto::rr::RData};
use http_body_util::Full;
use hyper::{Request, header};

use super::client::{HttpsClient, fetch};

/// The largest `.well-known/matrix/server` body read.
const WELL_KNOWN_LIMIT: usize = 64 * 1024;
const MAX_REDIRECTS: usize = 3;
const SRV_TIMEOUT: Duration = Duration::from_secs(5);

pub struct NetLookup {
    http: HttpsClient,
    dns: Option<TokioResolver>,
}

impl NetLookup {
    pub fn new(http: HttpsClient) -> Self {
        let dns = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(dns) => Some(dns),
            Err(error) => {
                tracing::warn!(%error, "no DNS resolver for SRV records; federation discovery skips them");
                None
            }
        };
        Self { http, dns }
    }

    /// GET the `.well-known` document, following up to `MAX_REDIRECTS` redirects to other
    /// `https` URLs.
    async fn fetch_well_known(&self, hostname: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        let mut url = format!("https://{hostname}/.well-known/matrix/server");
        for _ in 0..=MAX_REDIRECTS {
            let request = Request::get(&url)
                .header(header::USER_AGENT, concat!("Hearth/", env!("CARGO_PKG_VERSION")))
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let (status, headers, body) = fetch(
                &self.http,
                request,
                WELL_KNOWN_LIMIT,
                hostname,
                super::client::REQUEST_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
            if status.is_redirection() {
                let next = headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .filter(|l| l.starts_with("https://"))
                    .ok_or("a redirect without an https Location")?;
                url = next.to_owned();
                continue;
            }
            let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
            let cache_for = cache_lifetime(
                header(header::CACHE_CONTROL),
                header(header::EXPIRES),
                SystemTime::now(),
            );
            if !status.is_success() {
                return Err(format!("status {status}"));
            }
            return Ok((body, cache_for));
        }
        Err("too many redirects".into())
    }
}

impl Lookup for NetLookup {
    async fn well_known(&self, hostname: &str) -> WellKnownResponse {
        match self.fetch_well_known(hostname).await {
            Ok((body, cache_for)) => WellKnownResponse {
                body: Ok(body),
                cache_for,
            },
            Err(e) => {
                tracing::debug!(hostname, error = %e, "no .well-known/matrix/server");
                WellKnownResponse {
                    body: Err(e),
                    cache_for: None,
                }
            }
        }
    }

    async fn srv(&self, name: &str) -> Vec<SrvTarget> {
        let Some(dns) = &self.dns else {
            return Vec::new();
        };
        let lookup = match tokio::time::timeout(SRV_TIMEOUT, dns.srv_lookup(name)).await {
            Ok(Ok(lookup)) => lookup,
            Ok(Err(error)) => {
                tracing::debug!(name, %error, "no SRV record");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        let mut records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        // Lowest priority first; among equals, the heaviest first (a deterministic reading of
        // the weights).
        records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
        records
            .into_iter()
            .map(|srv| SrvTarget {
                host: srv.target.to_utf8(),
                port: srv.port,
            })
            .collect()
    }
}
