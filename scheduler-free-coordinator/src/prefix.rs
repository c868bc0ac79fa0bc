//! Network prefixes, so that a quorum needs distinct networks and not just distinct keys: by
//! default a coordinator gives no two replicas of one task to peers whose connections come from
//! one /24 (IPv4) or /48 (IPv6); a job may ask for /16 and /32 ([`Diversity::Wide`]) or for
//! none ([`Diversity::Off`]). Keys cost nothing to make; addresses in many networks do.
//!
//! Loopback, private (RFC 1918, IPv6 unique-local) and link-local addresses have no prefix: a
//! coordinator reached over such a network is on one its operator runs (a lab cluster, the
//! tests' namespaces, one machine), where every peer counts as its own network. On the open
//! internet a peer behind a NAT connects from the NAT's public address.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// How far apart the replicas of one task must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Diversity {
    /// Distinct /24 (IPv4) or /48 (IPv6) networks.
    #[default]
    Prefix,
    /// Distinct /16 (IPv4) or /32 (IPv6) networks: stricter, for jobs that want it.
    Wide,
    /// Distinct keys only.
    Off,
}

/// The networks a peer's connections came from, at both widths (`None`: no prefix, see the
/// module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetPrefix {
    /// The /24 or /48.
    pub narrow: [u8; 7],
    /// The /16 or /32.
    pub wide: [u8; 7],
}

impl NetPrefix {
    /// The prefixes of `ip`; `None` for loopback, private and link-local addresses.
    pub fn of(ip: IpAddr) -> Option<NetPrefix> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                if v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() {
                    return None;
                }
                let o = v4.octets();
                Some(NetPrefix { narrow: [4, o[0], o[1], o[2], 0, 0, 0], wide: [4, o[0], o[1], 0, 0, 0, 0] })
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                // fc00::/7 unique-local, fe80::/10 link-local.
                if v6.is_loopback() || v6.is_unspecified() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80 {
                    return None;
                }
                let o = v6.octets();
                Some(NetPrefix { narrow: [6, o[0], o[1], o[2], o[3], o[4], o[5]], wide: [6, o[0], o[1], o[2], o[3], 0, 0] })
            }
        }
    }

    /// Whether two peers with these prefixes count as one network under `diversity`.
    pub fn same_network(&self, other: &NetPrefix, diversity: Diversity) -> bool {
        match diversity {
            Diversity::Prefix => self.narrow == other.narrow,
            Diversity::Wide => self.wide == other.wide,
            Diversity::Off => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<NetPrefix> {
        NetPrefix::of(s.parse().expect("an address"))
    }

    #[test]
    fn a_prefix_is_the_24_or_48_and_private_networks_have_none() {
        let (a, b, c) = (p("203.0.113.7").unwrap(), p("203.0.113.200").unwrap(), p("203.0.114.7").unwrap());
        assert!(a.same_network(&b, Diversity::Prefix));
        assert!(!a.same_network(&c, Diversity::Prefix), "another /24");
        assert!(a.same_network(&c, Diversity::Wide), "the same /16");
        assert!(!a.same_network(&b, Diversity::Off));
        assert_eq!(p("::ffff:203.0.113.9"), Some(a), "a mapped IPv4 address is that address");
        let (x, y) = (p("2001:db8:1:2::1").unwrap(), p("2001:db8:1:3::1").unwrap());
        assert!(x.same_network(&y, Diversity::Prefix), "one /48");
        assert!(!x.same_network(&p("2001:db8:2:2::1").unwrap(), Diversity::Prefix));
        for none in ["127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "169.254.1.1", "::1", "fd00::1", "fe80::1"] {
            assert_eq!(p(none), None, "{none}");
        }
    }
}
