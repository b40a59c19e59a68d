//! Which servers the benchmark may talk to: plain HTTP on loopback only.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, bail};
use reqwest::Url;

/// Parses a homeserver base URL and refuses anything that is not plain HTTP on a loopback
/// address (127.0.0.0/8, ::1 or the name `localhost`).
pub fn parse_loopback_url(raw: &str) -> Result<Url> {
    let url = Url::parse(raw)?;
    if url.scheme() != "http" {
        bail!(
            "only plain http:// URLs are supported (got scheme {:?})",
            url.scheme()
        );
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if !loopback {
        bail!(
            "refusing non-loopback homeserver URL {url}: the benchmark only drives servers on 127.0.0.0/8 or ::1"
        );
    }
    Ok(url)
}

/// Source addresses for many client connections: 127.0.0.1, 127.0.0.2, … (`count` of them), so
/// that each source address gets its own range of ephemeral ports. Only meaningful when the
/// server listens on IPv4 loopback.
pub fn loopback_sources(count: usize) -> Vec<IpAddr> {
    (0..count.clamp(1, 250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, (i + 1) as u8)))
        .collect()
}

/// Whether the URL's host is an IPv4 loopback address (or `localhost`), i.e. whether extra
/// 127.0.0.x source addresses can reach it.
pub fn is_ipv4_loopback(url: &Url) -> bool {
    matches!(url.host(), Some(url::Host::Ipv4(_)))
        || matches!(url.host(), Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback() {
        assert!(parse_loopback_url("http://127.0.0.1:8008").is_ok());
        assert!(parse_loopback_url("http://127.3.4.5:8008/").is_ok());
        assert!(parse_loopback_url("http://[::1]:8008").is_ok());
        assert!(parse_loopback_url("http://localhost:8008").is_ok());
    }

    #[test]
    fn refuses_other_hosts_and_schemes() {
        assert!(parse_loopback_url("http://10.0.0.1:8008").is_err());
        assert!(parse_loopback_url("http://matrix.org").is_err());
        assert!(parse_loopback_url("http://[2001:db8::1]:8008").is_err());
        assert!(parse_loopback_url("https://127.0.0.1:8448").is_err());
        assert!(parse_loopback_url("not a url").is_err());
    }

    #[test]
    fn sources_are_distinct_loopback_addresses() {
        let s = loopback_sources(3);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|ip| ip.is_loopback()));
        assert_eq!(s[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(loopback_sources(1000).len(), 250);
    }
}
