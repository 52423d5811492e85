//! Which addresses outbound requests may reach.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Most entries `--outbound-allow` takes (each is checked per address).
const MAX_ALLOW_ENTRIES: usize = 256;

/// Refuses loopback, link-local, private and other special addresses
/// unless an operator allowed them by network or by host name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    networks: Vec<IpNet>,
    /// Lowercase, without a trailing dot.
    hosts: Vec<String>,
}

/// An `--outbound-allow` entry that is neither a network, an address nor
/// a host name.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    #[error("--outbound-allow {0:?}: expected a network (10.0.0.0/8, fd00::/8), an address or a host name")]
    Entry(String),
    #[error("--outbound-allow takes at most {MAX_ALLOW_ENTRIES} entries")]
    TooMany,
}

/// Why a destination is refused: written for the user who supplied it.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The host as given or the address it resolved to.
    pub destination: String,
    /// What kind of address it is, e.g. "loopback".
    pub class: &'static str,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is a {} address; requests to it are refused unless the operator allows it (--outbound-allow)",
            self.destination, self.class
        )
    }
}

impl Policy {
    /// A policy from `--outbound-allow` entries: networks in CIDR form,
    /// single addresses, or host names (any address such a name resolves
    /// to is allowed).
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<Policy, PolicyError> {
        if entries.len() > MAX_ALLOW_ENTRIES {
            return Err(PolicyError::TooMany);
        }
        let mut policy = Policy::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                // `SHOAL_OUTBOUND_ALLOW=""`: nothing allowed.
                continue;
            } else if let Ok(network) = entry.parse::<IpNet>() {
                policy.networks.push(network.trunc());
            } else if let Ok(address) = entry.parse::<IpAddr>() {
                policy.networks.push(IpNet::from(address));
            } else if is_host_name(entry) {
                policy.hosts.push(normal_host(entry));
            } else {
                return Err(PolicyError::Entry(entry.to_string()));
            }
        }
        Ok(policy)
    }

    /// Also allows loopback (127.0.0.0/8 and ::1), as `shoal dev` does.
    pub fn allow_loopback(&mut self) {
        for network in ["127.0.0.0/8", "::1/128"] {
            if let Ok(network) = network.parse() {
                self.networks.push(network);
            }
        }
    }

    /// Whether the operator allowed this host name as a whole.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normal_host(host);
        self.hosts.contains(&host)
    }

    /// Whether a request may connect to this address.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Refusal> {
        let address = canonical(address);
        if self.networks.iter().any(|n| n.contains(&address)) {
            return Ok(());
        }
        match special(address) {
            Some(class) => Err(Refusal {
                destination: address.to_string(),
                class,
            }),
            None => Ok(()),
        }
    }

    /// What can be told from a URL's host without DNS: an address in it,
    /// or a name that always means loopback (`localhost`, `*.localhost`).
    pub fn check_host(&self, url: &reqwest::Url) -> Result<(), Refusal> {
        let refused_as = |class| Refusal {
            destination: url.host_str().unwrap_or_default().to_string(),
            class,
        };
        match url.host() {
            Some(url::Host::Ipv4(address)) => self.check_address(address.into()),
            Some(url::Host::Ipv6(address)) => self.check_address(address.into()),
            Some(url::Host::Domain(name)) => {
                let name = normal_host(name);
                if self.allows_host(&name) {
                    Ok(())
                } else if name == "localhost" || name.ends_with(".localhost") {
                    self.check_address(Ipv4Addr::LOCALHOST.into())
                        .map_err(|_| refused_as("loopback"))
                } else {
                    Ok(())
                }
            }
            None => Err(refused_as("missing")),
        }
    }
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_host_name(entry: &str) -> bool {
    let name = entry.trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The kind of a non-public address, or `None` for a public one.
fn special(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    if a == 0 {
        Some("unspecified")
    } else if address.is_loopback() {
        Some("loopback")
    } else if address.is_link_local() {
        Some("link-local")
    } else if address.is_private() {
        Some("private")
    } else if a == 100 && (b & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol assignment")
    } else if a == 198 && (b & 0xfe) == 18 {
        Some("benchmarking")
    } else if address.is_multicast() {
        Some("multicast")
    } else if a >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn special_v6(address: Ipv6Addr) -> Option<&'static str> {
    let s = address.segments();
    let embedded_v4 =
        || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if address.is_unspecified() {
        Some("unspecified")
    } else if address.is_loopback() {
        Some("loopback")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if s[0] & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if s[0] & 0xff00 == 0xff00 {
        Some("multicast")
    } else if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d) reach
        // the IPv4 address they carry.
        special_v4(embedded_v4())
    } else if s[0] == 0x2002 {
        // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        special_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &Policy, address: &str) -> Option<&'static str> {
        let address: IpAddr = address.parse().unwrap();
        policy.check_address(address).err().map(|r| r.class)
    }

    #[test]
    fn special_addresses_are_refused_and_public_ones_pass() {
        let policy = Policy::default();
        for (address, class) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("169.254.169.254", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.100.100.200", "shared (carrier-grade NAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "private (unique local)"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::10.0.0.1", "private"),
            ("2002:7f00:1::", "loopback"),
        ] {
            assert_eq!(refused(&policy, address), Some(class), "{address}");
        }
        for address in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(refused(&policy, address), None, "{address}");
        }
    }

    #[test]
    fn allowed_networks_and_addresses_pass() {
        let mut policy = Policy::new(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]).unwrap();
        assert_eq!(refused(&policy, "10.200.0.1"), None);
        assert_eq!(refused(&policy, "192.168.1.7"), None);
        assert_eq!(refused(&policy, "192.168.1.8"), Some("private"));
        assert_eq!(refused(&policy, "fd12::1"), None);
        assert_eq!(refused(&policy, "127.0.0.1"), Some("loopback"));
        policy.allow_loopback();
        assert_eq!(refused(&policy, "127.0.0.1"), None);
        assert_eq!(refused(&policy, "::ffff:127.0.0.1"), None);
        assert_eq!(refused(&policy, "::1"), None);
    }

    #[test]
    fn entries_are_networks_addresses_or_host_names() {
        let policy = Policy::new(&["Payments.Internal.", "10.0.0.0/8"]).unwrap();
        assert!(policy.allows_host("payments.internal"));
        assert!(!policy.allows_host("internal"));
        assert_eq!(Policy::new(&["", " "]).unwrap(), Policy::default());
        for bad in [
            "10.0.0.0/33",
            "http://x/",
            "a b",
            "-x.example",
            "x..example",
        ] {
            assert!(Policy::new(&[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_in_urls() {
        let policy = Policy::default();
        let host = |url: &str| {
            policy
                .check_host(&reqwest::Url::parse(url).unwrap())
                .err()
                .map(|r| r.class)
        };
        assert_eq!(host("http://127.1/"), Some("loopback"));
        assert_eq!(host("http://2130706433/"), Some("loopback"));
        assert_eq!(host("http://[::ffff:7f00:1]/"), Some("loopback"));
        assert_eq!(
            host("http://169.254.169.254/latest/meta-data/"),
            Some("link-local")
        );
        assert_eq!(host("http://LOCALHOST./"), Some("loopback"));
        assert_eq!(host("http://api.localhost:8080/"), Some("loopback"));
        assert_eq!(host("https://example.com/"), None);
        let allowed = Policy::new(&["localhost"]).unwrap();
        assert!(allowed
            .check_host(&reqwest::Url::parse("http://localhost/").unwrap())
            .is_ok());
    }
}
