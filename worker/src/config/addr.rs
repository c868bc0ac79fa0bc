//! Addresses a peer listens on (`listen`, `metrics`, `web`), as a person writes them: an IP
//! address or a host name with a port (`127.0.0.1:7070`, `localhost:7070`,
//! `myhost.lan:7070`). Kept as written, so `--print-config` shows what was given, and resolved
//! once, when the configuration is checked, with the key named when a name does not resolve.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `HOST:PORT`, where HOST is an IP address (IPv6 in brackets) or a host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort(String);

impl HostPort {
    /// The address to bind: the text itself when it is an IP address, otherwise the first IPv4
    /// address the name resolves to (else its first address), so `localhost` means 127.0.0.1
    /// where the clients' default peer is.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(addr) = self.0.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let addrs: Vec<SocketAddr> = self.0.to_socket_addrs().map_err(|e| format!("cannot resolve {:?}: {e}", self.0))?.collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{:?} resolves to no address", self.0))
    }
}

impl FromStr for HostPort {
    type Err = String;

    /// Checks the form only (a port after the last `:`); names resolve in [`HostPort::resolve`].
    fn from_str(s: &str) -> Result<HostPort, String> {
        let ok = s.parse::<SocketAddr>().is_ok()
            || s.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok());
        if ok { Ok(HostPort(s.to_string())) } else { Err(format!("{s:?} is not HOST:PORT, e.g. 127.0.0.1:7070 or localhost:7070")) }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> HostPort {
        HostPort(a.to_string())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HostPort, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_resolve_and_nonsense_is_refused() {
        let hp = |s: &str| s.parse::<HostPort>();
        assert_eq!(hp("127.0.0.1:7070").unwrap().resolve(), Ok("127.0.0.1:7070".parse().unwrap()));
        assert_eq!(hp("[::1]:7070").unwrap().resolve(), Ok("[::1]:7070".parse().unwrap()));
        assert_eq!(hp("localhost:7000").unwrap().resolve(), Ok("127.0.0.1:7000".parse().unwrap()));
        for bad in ["localhost", "localhost:port", ":7070", "::1:7070", ""] {
            assert!(hp(bad).unwrap_err().contains("HOST:PORT"), "{bad}");
        }
        let e = hp("no-such-host.invalid:7070").unwrap().resolve().unwrap_err();
        assert!(e.contains("no-such-host.invalid"), "{e}");
    }
}
