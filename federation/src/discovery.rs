//! Server discovery: where to send requests for a server name, in the spec's order
//! (Server-Server API, "Resolving server names"):
//!
//! 1. an IP literal: that address, its port or 8448;
//! 2. a hostname with an explicit port: that host and port;
//! 3. `https://<hostname>/.well-known/matrix/server` (cached by its cache headers, 24 hours when
//!    it has none, at most 48; errors for up to an hour with exponential back-off) naming
//!    `<delegated_hostname>[:<port>]`: an IP literal; an explicit port; SRV
//!    `_matrix-fed._tcp.<delegated>`, then the deprecated `_matrix._tcp.<delegated>`; else 8448;
//! 4. no valid `.well-known`: SRV `_matrix-fed._tcp.<hostname>`, then `_matrix._tcp.<hostname>`;
//! 5. else `<hostname>:8448`.
//!
//! The network lookups (the `.well-known` request, SRV records) are behind [`Lookup`], so the
//! order and the caching are tested without a network; A/AAAA resolution of the chosen host
//! is the connecting client's.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use ruma::ServerName;

/// The federation port when nothing names another.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a `.well-known` answer without cache headers is kept.
pub const WELL_KNOWN_DEFAULT_CACHE: Duration = Duration::from_secs(24 * 3600);
/// The longest a `.well-known` answer is kept, whatever its headers say.
pub const WELL_KNOWN_MAX_CACHE: Duration = Duration::from_secs(48 * 3600);
/// The longest a failed `.well-known` lookup is remembered.
pub const WELL_KNOWN_MAX_ERROR_CACHE: Duration = Duration::from_secs(3600);
/// The first failure is remembered this long; each repeated failure doubles it.
pub const WELL_KNOWN_FIRST_ERROR_CACHE: Duration = Duration::from_secs(120);
/// Server names whose `.well-known` answer is remembered at once (expired ones go first).
const MAX_CACHED: usize = 10_000;

/// Where and how to send requests for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The host to connect to: an IP address, or a name to resolve with A/AAAA records.
    pub host: String,
    pub port: u16,
    /// The `Host` header.
    pub host_header: String,
    /// The name the server's certificate must be valid for (SNI unless it is an IP address).
    pub tls_name: String,
}

/// One SRV target (the lookup returns them in the order to try: priority, then weight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
}

/// What a `.well-known/matrix/server` request returned.
#[derive(Debug, Clone)]
pub struct WellKnownResponse {
    /// The body of a 200 response (after redirects), or why there is none.
    pub body: Result<Vec<u8>, String>,
    /// How long the response says it may be cached (see [`cache_lifetime`]); None: no headers.
    pub cache_for: Option<Duration>,
}

/// The network lookups discovery needs.
pub trait Lookup: Send + Sync {
    /// GET `https://<hostname>/.well-known/matrix/server`.
    fn well_known(&self, hostname: &str) -> impl Future<Output = WellKnownResponse> + Send;
    /// The SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`); empty when none.
    fn srv(&self, name: &str) -> impl Future<Output = Vec<SrvTarget>> + Send;
}

#[derive(Debug, Clone)]
struct Cached {
    /// The `m.server` value, or None after an error or an invalid response.
    delegated: Option<String>,
    until: Instant,
    failures: u32,
}

/// Resolves server names, remembering `.well-known` answers.
pub struct Resolver<L> {
    lookup: L,
    well_known: Mutex<HashMap<String, Cached>>,
}

impl<L: Lookup> Resolver<L> {
    pub fn new(lookup: L) -> Self {
        Self {
            lookup,
            well_known: Mutex::new(HashMap::new()),
        }
    }

    pub fn lookup(&self) -> &L {
        &self.lookup
    }

    /// Where to send requests for `server_name` now.
    pub async fn resolve(&self, server_name: &ServerName) -> Destination {
        self.resolve_at(server_name, Instant::now()).await
    }

    /// Where to send requests for `server_name` at `now` (the clock, for the cache).
    pub async fn resolve_at(&self, server_name: &ServerName, now: Instant) -> Destination {
        let hostname = server_name.host();
        // 1. An IP literal.
        if let Some(ip) = ip_literal(hostname) {
            return Destination {
                host: ip.to_string(),
                port: server_name.port().unwrap_or(DEFAULT_PORT),
                host_header: server_name.to_string(),
                tls_name: ip.to_string(),
            };
        }
        // 2. An explicit port.
        if let Some(port) = server_name.port() {
            return Destination {
                host: hostname.to_owned(),
                port,
                host_header: server_name.to_string(),
                tls_name: hostname.to_owned(),
            };
        }
        // 3. `.well-known`.
        if let Some(delegated) = self.delegation(hostname, now).await
            && let Ok(delegated) = <&ServerName>::try_from(delegated.as_str())
        {
            let host = delegated.host();
            if let Some(ip) = ip_literal(host) {
                return Destination {
                    host: ip.to_string(),
                    port: delegated.port().unwrap_or(DEFAULT_PORT),
                    host_header: delegated.to_string(),
                    tls_name: ip.to_string(),
                };
            }
            if let Some(port) = delegated.port() {
                return Destination {
                    host: host.to_owned(),
                    port,
                    host_header: delegated.to_string(),
                    tls_name: host.to_owned(),
                };
            }
            return self.srv_or_default(host).await;
        }
        // 4.–6. SRV records of the server name itself, else port 8448.
        self.srv_or_default(hostname).await
    }

    /// SRV `_matrix-fed._tcp`, then `_matrix._tcp`, else port 8448; the certificate and `Host`
    /// stay `hostname`'s.
    async fn srv_or_default(&self, hostname: &str) -> Destination {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let targets = self.lookup.srv(&format!("{service}.{hostname}")).await;
            // A target of "." means the service is decidedly not available there.
            if let Some(target) = targets
                .into_iter()
                .find(|t| !t.host.trim_end_matches('.').is_empty())
            {
                return Destination {
                    host: target.host.trim_end_matches('.').to_owned(),
                    port: target.port,
                    host_header: hostname.to_owned(),
                    tls_name: hostname.to_owned(),
                };
            }
        }
        Destination {
            host: hostname.to_owned(),
            port: DEFAULT_PORT,
            host_header: hostname.to_owned(),
            tls_name: hostname.to_owned(),
        }
    }

    /// The `m.server` of `hostname`'s `.well-known`, from the cache while it is fresh.
    async fn delegation(&self, hostname: &str, now: Instant) -> Option<String> {
        let previous = {
            let cache = self.well_known.lock().expect("well-known cache lock");
            cache.get(hostname).cloned()
        };
        if let Some(hit) = &previous
            && hit.until > now
        {
            return hit.delegated.clone();
        }
        let response = self.lookup.well_known(hostname).await;
        let delegated = response.body.ok().and_then(|body| parse_well_known(&body));
        let entry = match &delegated {
            Some(_) => Cached {
                delegated: delegated.clone(),
                until: now
                    + response
                        .cache_for
                        .unwrap_or(WELL_KNOWN_DEFAULT_CACHE)
                        .min(WELL_KNOWN_MAX_CACHE),
                failures: 0,
            },
            None => {
                let failures = previous.map_or(0, |p| if p.delegated.is_none() { p.failures + 1 } else { 0 });
                let backoff = WELL_KNOWN_FIRST_ERROR_CACHE
                    .saturating_mul(1 << failures.min(16))
                    .min(WELL_KNOWN_MAX_ERROR_CACHE);
                Cached {
                    delegated: None,
                    until: now + backoff,
                    failures,
                }
            }
        };
        let mut cache = self.well_known.lock().expect("well-known cache lock");
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(hostname.to_owned(), entry);
        delegated
    }
}

/// The `m.server` of a `.well-known/matrix/server` body, if the body is valid: a JSON object
/// whose `m.server` is a server name.
pub fn parse_well_known(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let server = value.as_object()?.get("m.server")?.as_str()?;
    ServerName::parse(server).ok()?;
    Some(server.to_owned())
}

/// How long a response may be cached by its `Cache-Control` (`no-store`/`no-cache`: not at all;
/// `max-age`) or else its `Expires` header; None when neither says.
pub fn cache_lifetime(
    cache_control: Option<&str>,
    expires: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(cc) = cache_control {
        for directive in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            if directive == "no-store" || directive == "no-cache" {
                return Some(Duration::ZERO);
            }
            if let Some(age) = directive.strip_prefix("max-age=") {
                return Some(Duration::from_secs(age.trim_matches('"').parse().unwrap_or(0)));
            }
        }
    }
    let expires = httpdate::parse_http_date(expires?.trim()).unwrap_or(SystemTime::UNIX_EPOCH);
    Some(expires.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The address in an IP literal host (`1.2.3.4`, `[::1]`).
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers from tables; counts `.well-known` requests.
    #[derive(Default)]
    struct Fake {
        well_known: HashMap<String, (Result<String, String>, Option<Duration>)>,
        srv: HashMap<String, Vec<SrvTarget>>,
        well_known_requests: AtomicUsize,
    }

    impl Fake {
        fn with_well_known(mut self, host: &str, body: &str, cache: Option<u64>) -> Self {
            self.well_known
                .insert(host.into(), (Ok(body.into()), cache.map(Duration::from_secs)));
            self
        }
        fn with_srv(mut self, name: &str, host: &str, port: u16) -> Self {
            self.srv.entry(name.into()).or_default().push(SrvTarget {
                host: host.into(),
                port,
            });
            self
        }
    }

    impl Lookup for Fake {
        async fn well_known(&self, hostname: &str) -> WellKnownResponse {
            self.well_known_requests.fetch_add(1, Ordering::SeqCst);
            match self.well_known.get(hostname) {
                Some((body, cache_for)) => WellKnownResponse {
                    body: body.clone().map(String::into_bytes),
                    cache_for: *cache_for,
                },
                None => WellKnownResponse {
                    body: Err("404".into()),
                    cache_for: None,
                },
            }
        }
        async fn srv(&self, name: &str) -> Vec<SrvTarget> {
            self.srv.get(name).cloned().unwrap_or_default()
        }
    }

    fn dest(host: &str, port: u16, host_header: &str, tls_name: &str) -> Destination {
        Destination {
            host: host.into(),
            port,
            host_header: host_header.into(),
            tls_name: tls_name.into(),
        }
    }

    async fn resolve(fake: Fake, name: &str) -> Destination {
        Resolver::new(fake)
            .resolve(<&ServerName>::try_from(name).unwrap())
            .await
    }

    fn full() -> Fake {
        // Every mechanism answers, so each test shows which one wins.
        Fake::default()
            .with_well_known("example.org", r#"{"m.server": "matrix.example.org"}"#, None)
            .with_srv("_matrix-fed._tcp.example.org", "fed.example.org", 1111)
            .with_srv("_matrix._tcp.example.org", "legacy.example.org", 2222)
            .with_srv(
                "_matrix-fed._tcp.matrix.example.org",
                "delegated-fed.example.org.",
                3333,
            )
            .with_srv(
                "_matrix._tcp.matrix.example.org",
                "delegated-legacy.example.org",
                4444,
            )
    }

    #[tokio::test]
    async fn an_ip_literal_is_used_as_it_is() {
        let fake = full();
        assert_eq!(
            resolve(fake, "1.2.3.4").await,
            dest("1.2.3.4", 8448, "1.2.3.4", "1.2.3.4")
        );
        assert_eq!(
            resolve(full(), "1.2.3.4:99").await,
            dest("1.2.3.4", 99, "1.2.3.4:99", "1.2.3.4")
        );
        assert_eq!(
            resolve(full(), "[::1]:99").await,
            dest("::1", 99, "[::1]:99", "::1")
        );
    }

    #[tokio::test]
    async fn an_explicit_port_skips_well_known_and_srv() {
        let resolver = Resolver::new(full());
        let d = resolver
            .resolve(<&ServerName>::try_from("example.org:8000").unwrap())
            .await;
        assert_eq!(d, dest("example.org", 8000, "example.org:8000", "example.org"));
        assert_eq!(resolver.lookup().well_known_requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn well_known_with_an_ip_or_a_port() {
        let fake = Fake::default().with_well_known("example.org", r#"{"m.server": "5.6.7.8"}"#, None);
        assert_eq!(
            resolve(fake, "example.org").await,
            dest("5.6.7.8", 8448, "5.6.7.8", "5.6.7.8")
        );
        let fake =
            Fake::default().with_well_known("example.org", r#"{"m.server": "[2001:db8::1]:77"}"#, None);
        assert_eq!(
            resolve(fake, "example.org").await,
            dest("2001:db8::1", 77, "[2001:db8::1]:77", "2001:db8::1")
        );
        let fake = full().with_well_known("example.org", r#"{"m.server": "matrix.example.org:443"}"#, None);
        assert_eq!(
            resolve(fake, "example.org").await,
            dest(
                "matrix.example.org",
                443,
                "matrix.example.org:443",
                "matrix.example.org"
            )
        );
    }

    #[tokio::test]
    async fn well_known_without_a_port_tries_srv_fed_then_legacy_then_8448() {
        // The delegated name's `_matrix-fed._tcp` (trailing dot of the target dropped).
        assert_eq!(
            resolve(full(), "example.org").await,
            dest(
                "delegated-fed.example.org",
                3333,
                "matrix.example.org",
                "matrix.example.org"
            )
        );
        // Then its `_matrix._tcp`.
        let mut fake = full();
        fake.srv.remove("_matrix-fed._tcp.matrix.example.org");
        assert_eq!(
            resolve(fake, "example.org").await,
            dest(
                "delegated-legacy.example.org",
                4444,
                "matrix.example.org",
                "matrix.example.org"
            )
        );
        // Then port 8448; the server name's own SRV records are not consulted.
        let mut fake = full();
        fake.srv.remove("_matrix-fed._tcp.matrix.example.org");
        fake.srv.remove("_matrix._tcp.matrix.example.org");
        assert_eq!(
            resolve(fake, "example.org").await,
            dest(
                "matrix.example.org",
                8448,
                "matrix.example.org",
                "matrix.example.org"
            )
        );
    }

    #[tokio::test]
    async fn without_well_known_srv_fed_then_legacy_then_8448() {
        let mut fake = full();
        fake.well_known.clear();
        assert_eq!(
            resolve(fake, "example.org").await,
            dest("fed.example.org", 1111, "example.org", "example.org")
        );
        let mut fake = full();
        fake.well_known.clear();
        fake.srv.remove("_matrix-fed._tcp.example.org");
        assert_eq!(
            resolve(fake, "example.org").await,
            dest("legacy.example.org", 2222, "example.org", "example.org")
        );
        assert_eq!(
            resolve(Fake::default(), "example.org").await,
            dest("example.org", 8448, "example.org", "example.org")
        );
        // "." means no service: fall through.
        let fake = Fake::default().with_srv("_matrix-fed._tcp.example.org", ".", 0);
        assert_eq!(
            resolve(fake, "example.org").await,
            dest("example.org", 8448, "example.org", "example.org")
        );
    }

    #[tokio::test]
    async fn an_invalid_well_known_counts_as_none() {
        for body in [
            "not json",
            "[]",
            r#"{"m.server": 5}"#,
            r#"{"other": "x"}"#,
            r#"{"m.server": "bad name!"}"#,
        ] {
            let mut fake = full().with_well_known("example.org", body, None);
            fake.srv.remove("_matrix-fed._tcp.example.org");
            assert_eq!(
                resolve(fake, "example.org").await,
                dest("legacy.example.org", 2222, "example.org", "example.org"),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn well_known_is_cached_by_its_headers_with_defaults_and_a_cap() {
        let name = <&ServerName>::try_from("example.org").unwrap();
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let requests = |r: &Resolver<Fake>| r.lookup().well_known_requests.load(Ordering::SeqCst);

        // No headers: 24 hours.
        let r = Resolver::new(full());
        r.resolve_at(name, t0).await;
        r.resolve_at(name, t0 + 23 * hour).await;
        assert_eq!(requests(&r), 1);
        r.resolve_at(name, t0 + 25 * hour).await;
        assert_eq!(requests(&r), 2);

        // max-age of 10 minutes.
        let r = Resolver::new(full().with_well_known(
            "example.org",
            r#"{"m.server": "m.example.org"}"#,
            Some(600),
        ));
        r.resolve_at(name, t0).await;
        r.resolve_at(name, t0 + Duration::from_secs(599)).await;
        assert_eq!(requests(&r), 1);
        r.resolve_at(name, t0 + Duration::from_secs(601)).await;
        assert_eq!(requests(&r), 2);

        // A week asked: 48 hours at most.
        let r = Resolver::new(full().with_well_known(
            "example.org",
            r#"{"m.server": "m.example.org"}"#,
            Some(7 * 24 * 3600),
        ));
        r.resolve_at(name, t0).await;
        r.resolve_at(name, t0 + 47 * hour).await;
        assert_eq!(requests(&r), 1);
        r.resolve_at(name, t0 + 49 * hour).await;
        assert_eq!(requests(&r), 2);
    }

    #[tokio::test]
    async fn errors_are_cached_briefly_with_back_off_up_to_an_hour() {
        let name = <&ServerName>::try_from("example.org").unwrap();
        let t0 = Instant::now();
        let r = Resolver::new(Fake::default());
        let requests = |r: &Resolver<Fake>| r.lookup().well_known_requests.load(Ordering::SeqCst);
        let mut now = t0;
        let mut expected_wait = WELL_KNOWN_FIRST_ERROR_CACHE;
        for round in 1..=8 {
            r.resolve_at(name, now).await;
            assert_eq!(requests(&r), round);
            r.resolve_at(name, now + expected_wait - Duration::from_secs(1))
                .await;
            assert_eq!(requests(&r), round, "round {round}: still cached");
            now += expected_wait + Duration::from_secs(1);
            expected_wait = (expected_wait * 2).min(WELL_KNOWN_MAX_ERROR_CACHE);
        }
        assert_eq!(expected_wait, WELL_KNOWN_MAX_ERROR_CACHE);
    }

    #[test]
    fn cache_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            cache_lifetime(Some("public, max-age=3600"), None, now),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(cache_lifetime(Some("no-store"), None, now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7200));
        assert_eq!(
            cache_lifetime(None, Some(&later), now),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(cache_lifetime(None, Some("garbage"), now), Some(Duration::ZERO));
        assert_eq!(cache_lifetime(Some("public"), None, now), None);
        assert_eq!(cache_lifetime(None, None, now), None);
    }
}
