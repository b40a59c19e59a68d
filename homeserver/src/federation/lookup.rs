//! The network half of server discovery: `.well-known/matrix/server` over HTTPS and SRV records
//! through hickory-resolver (the order and caching are `hearth_federation::discovery`'s).

use std::time::{Duration, SystemTime};

use hearth_federation::discovery::{Lookup, SrvTarget, WellKnownResponse, cache_lifetime};
use hickory_resolver::{TokioResolver, proto::rr::RData};

/// The largest `.well-known/matrix/server` body read.
const WELL_KNOWN_LIMIT: usize = 64 * 1024;
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
const SRV_TIMEOUT: Duration = Duration::from_secs(5);

pub struct NetLookup {
    http: reqwest::Client,
    dns: Option<TokioResolver>,
}

impl NetLookup {
    pub fn new(http: reqwest::Client) -> Self {
        let dns = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(dns) => Some(dns),
            Err(error) => {
                tracing::warn!(%error, "no DNS resolver for SRV records; federation discovery skips them");
                None
            }
        };
        Self { http, dns }
    }

    async fn fetch_well_known(&self, hostname: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        let url = format!("https://{hostname}/.well-known/matrix/server");
        let mut response = self
            .http
            .get(&url)
            .timeout(WELL_KNOWN_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let cache_for = cache_lifetime(
            header(reqwest::header::CACHE_CONTROL).as_deref(),
            header(reqwest::header::EXPIRES).as_deref(),
            SystemTime::now(),
        );
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > WELL_KNOWN_LIMIT {
                return Err("response too large".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, cache_for))
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
