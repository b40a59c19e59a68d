//! Which addresses push gateways may be on. A pusher URL is chosen by any user, so without a
//! check the server would POST to its own loopback, the private network it runs in, or a cloud
//! metadata service on the user's behalf (a blind server-side request forgery). Only global
//! unicast addresses are reachable unless the operator allows more (`[push]` config).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{Network, PushConfig};

/// The operator's allowance for gateway addresses.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private: bool,
    allowed: Vec<Network>,
}

impl AddressPolicy {
    pub fn new(config: &PushConfig) -> Self {
        Self {
            allow_private: config.allow_private_addresses,
            allowed: config.allowed_networks.clone(),
        }
    }

    /// Only global addresses and `allowed` (federation's `allow_ip_ranges`).
    pub fn from_networks(allowed: Vec<Network>) -> Self {
        Self {
            allow_private: false,
            allowed,
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_private || is_global(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// The permitted addresses of `host` (a name or an IP literal) on `port`; an error when it
    /// does not resolve. Empty when every address is refused.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
        };
        Ok(found.into_iter().filter(|a| self.permits(a.ip())).collect())
    }

    /// What a connector's resolver hands out for `host`: its permitted addresses, or the error
    /// "`requested` resolves to no address `refused`" when none is.
    pub async fn connect_to(
        &self,
        host: &str,
        requested: &str,
        refused: &str,
    ) -> std::io::Result<std::vec::IntoIter<SocketAddr>> {
        let permitted = self.resolve(host, 0).await?;
        if permitted.is_empty() {
            return Err(std::io::Error::other(format!(
                "{requested} resolves to no address {refused}"
            )));
        }
        Ok(permitted.into_iter())
    }
}

/// Global unicast: not loopback, private, shared, link-local, unspecified, documentation,
/// benchmarking, multicast, reserved, or an IPv6 form of a non-global IPv4 address.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network", 0.0.0.0
        || a == 10                             // RFC 1918
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)              // link-local (cloud metadata lives here)
        || (a == 172 && (16..32).contains(&b)) // RFC 1918
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // RFC 1918
        || (a == 198 && (b == 18 || b == 19))  // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64 (64:ff9b::/96 reaches the embedded IPv4 address; 64:ff9b:1::/48 is local use).
        return s[2] == 0 && is_global_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4: the IPv4 address follows the prefix.
        return is_global_v4(embedded_v4(s[1], s[2]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[..6] == [0; 6]                      // IPv4-compatible (deprecated) ::/96
        || (s[0] & 0xfe00) == 0xfc00             // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80             // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0             // site-local (deprecated) fec0::/10
        || (s[0] & 0xff00) == 0xff00             // multicast
        || (s[0] == 0x100 && s[1..4] == [0; 3])  // discard-only 100::/64
        || (s[0] == 0x2001 && s[1] < 0x200)      // IETF protocol assignments 2001::/23 (Teredo, ...)
        || (s[0] == 0x2001 && s[1] == 0xdb8)     // documentation
        || s[0] == 0x3fff) // documentation 3fff::/20 (covers it: 3fff:0000..3fff:0fff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(s: &str) -> bool {
        is_global(s.parse().unwrap())
    }

    #[test]
    fn non_global_addresses_are_recognised() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::1",
            "2001:db8::1",
            "::127.0.0.1",
        ] {
            assert!(!global(s), "{s} must not count as global");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(global(s), "{s} is global");
        }
    }

    #[test]
    fn the_operator_can_allow_networks() {
        let strict = AddressPolicy::default();
        assert!(!strict.permits("10.1.2.3".parse().unwrap()));
        let some = AddressPolicy::new(&PushConfig {
            allow_private_addresses: false,
            allowed_networks: vec!["10.1.2.0/24".parse().unwrap()],
            ..PushConfig::default()
        });
        assert!(some.permits("10.1.2.3".parse().unwrap()));
        assert!(!some.permits("10.1.3.3".parse().unwrap()));
        let all = AddressPolicy::new(&PushConfig {
            allow_private_addresses: true,
            ..PushConfig::default()
        });
        assert!(all.permits("127.0.0.1".parse().unwrap()));
    }
}
