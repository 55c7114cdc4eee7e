//! Which network addresses a webhook may be sent to: public ones only, so that a form's
//! `webhook_url` cannot make the notify processor reach into the network it runs in (a cloud's
//! metadata service at 169.254.169.254, a database on 10.0.0.5, an admin port on 127.0.0.1).
//! Loopback is allowed only when the operator says so (local development and tests).
//!
//! Invariant: the address a webhook connects to is one this module allowed. A host name is
//! resolved by [`CheckedResolver`], the resolver the webhook client connects with, which drops
//! every address that is not allowed; so a name that resolved to a public address when it was
//! first looked up and to a private one later (DNS rebinding) is checked again on the lookup the
//! connection uses. An IP literal in the URL, which the client connects to without a lookup, is
//! checked before sending ([`Destinations::check_url`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which addresses webhooks may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Destinations {
    /// Public unicast addresses only (production).
    #[default]
    Public,
    /// Public addresses and this machine's loopback (127.0.0.0/8, ::1): local development and
    /// tests, whose receivers listen on 127.0.0.1.
    PublicAndLoopback,
}

/// A webhook address that is not allowed, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the webhook host {host} resolves to {address}, a {class} address; webhooks are sent to public addresses only{hint}"
)]
pub struct Refused {
    pub host: String,
    pub address: IpAddr,
    pub class: &'static str,
    hint: &'static str,
}

impl Destinations {
    /// Whether `address` may be connected to; `Err` names its class.
    pub fn allows(self, address: IpAddr) -> Result<(), &'static str> {
        match (non_public(address), self) {
            (None, _) => Ok(()),
            (Some("loopback"), Destinations::PublicAndLoopback) => Ok(()),
            (Some(class), _) => Err(class),
        }
    }

    /// Checks `address` as the address `host` resolved to.
    pub fn check(self, host: &str, address: IpAddr) -> Result<(), Refused> {
        self.allows(address).map_err(|class| Refused {
            host: host.to_owned(),
            address,
            class,
            hint: if class == "loopback" {
                " (loopback only with --webhook-allow-loopback, for development)"
            } else {
                ""
            },
        })
    }

    /// Checks a URL whose host is an IP literal, which is connected to without a lookup; a host
    /// name is checked by [`CheckedResolver`] when the connection is made.
    pub fn check_url(self, url: &reqwest::Url) -> Result<(), Refused> {
        let address = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        self.check(url.host_str().unwrap_or_default(), address)
    }

    /// The allowed ones among the addresses `host` resolved to; `Err` (naming the first one) if
    /// none is.
    pub fn filter(
        self,
        host: &str,
        addresses: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        let mut first_refusal = None;
        let mut allowed = Vec::new();
        for address in addresses {
            match self.check(host, address.ip()) {
                Ok(()) => allowed.push(address),
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        match (allowed.is_empty(), first_refusal) {
            (true, Some(refused)) => Err(refused),
            _ => Ok(allowed),
        }
    }
}

/// The class of an address that is not public unicast, or `None` for a public one.
fn non_public(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(ip) => non_public_v4(ip),
        IpAddr::V6(ip) => non_public_v6(ip),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (b & 0xC0) == 64 {
        // 100.64.0.0/10: carrier-grade NAT, and some clouds' internal services.
        Some("shared (carrier-grade NAT)")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else if ip.is_documentation()
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xFE) == 18)
        || a >= 240
    {
        // Documentation, IETF protocol assignments, benchmarking (198.18.0.0/15), reserved.
        Some("reserved")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    // An IPv4 address in IPv6 clothing is judged as the IPv4 address it reaches.
    let embedded = |high: u16, low: u16| {
        let [h1, h2] = high.to_be_bytes();
        let [l1, l2] = low.to_be_bytes();
        Ipv4Addr::new(h1, h2, l1, l2)
    };
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 (64:ff9b::/96).
        return non_public_v4(embedded(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        // 6to4 (2002::/16) carries the IPv4 address in its next 32 bits.
        return non_public_v4(embedded(segments[1], segments[2]));
    }
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || segments[..6] == [0; 6] {
        // :: and the deprecated IPv4-compatible ::a.b.c.d.
        Some("unspecified")
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        Some("private (unique local)")
    } else if (segments[0] & 0xffc0) == 0xfe80 || (segments[0] & 0xffc0) == 0xfec0 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast or broadcast")
    } else if segments[0] == 0x2001 && (segments[1] == 0x0db8 || segments[1] < 0x0200) {
        // Documentation (2001:db8::/32) and IETF protocol assignments (2001::/23, Teredo among
        // them, whose tunnels reach arbitrary IPv4 addresses).
        Some("reserved")
    } else {
        None
    }
}

/// The webhook client's resolver: the system's (`getaddrinfo`, as reqwest's default), with every
/// address [`Destinations`] does not allow removed. A name left with no address fails the
/// connection with [`Refused`].
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver {
    pub destinations: Destinations,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let destinations = self.destinations;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // The port is the URL's: the connector replaces this 0 with it.
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = destinations.filter(&host, found)?;
            let addresses: Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

impl fmt::Display for Destinations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Destinations::Public => "public addresses",
            Destinations::PublicAndLoopback => "public and loopback addresses",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<&'static str> {
        non_public(text.parse().expect("an IP address"))
    }

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(class(public), None, "{public}");
        }
        for (address, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("10.0.0.5", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("::ffff:10.1.2.3", "private"),
            ("64:ff9b::a00:1", "private"),
            ("2002:c0a8:101::1", "private"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "private (unique local)"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("::7f00:1", "unspecified"),
            ("224.0.0.1", "multicast or broadcast"),
            ("255.255.255.255", "multicast or broadcast"),
            ("ff02::1", "multicast or broadcast"),
            ("192.0.2.1", "reserved"),
            ("198.18.0.1", "reserved"),
            ("240.0.0.1", "reserved"),
            ("2001:db8::1", "reserved"),
            ("2001:0:4136:e378::1", "reserved"),
        ] {
            assert_eq!(class(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn loopback_only_with_the_development_setting() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let private: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(Destinations::Public.allows(loopback), Err("loopback"));
        assert_eq!(Destinations::PublicAndLoopback.allows(loopback), Ok(()));
        assert_eq!(
            Destinations::PublicAndLoopback.allows(private),
            Err("private")
        );
        let refused = Destinations::Public
            .check("hooks.example", loopback)
            .unwrap_err();
        assert!(
            refused.to_string().contains("--webhook-allow-loopback"),
            "{refused}"
        );
    }

    /// What a rebinding name resolves to on the lookup the connection makes: the private
    /// addresses are dropped whatever came before; with none left, the connection is refused.
    #[test]
    fn resolved_addresses_are_filtered() {
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 443);
        let kept = Destinations::Public
            .filter("mixed.example", [at("10.0.0.1"), at("8.8.8.8"), at("::1")])
            .unwrap();
        assert_eq!(kept, vec![at("8.8.8.8")]);
        let refused = Destinations::Public
            .filter("rebound.example", [at("169.254.169.254"), at("10.0.0.1")])
            .unwrap_err();
        assert_eq!(refused.class, "link-local");
        assert!(refused.to_string().contains("rebound.example"), "{refused}");
        assert_eq!(
            Destinations::Public.filter("nothing.example", []),
            Ok(vec![])
        );
    }

    #[test]
    fn ip_literals_are_checked_before_sending() {
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        for refused in [
            "https://127.0.0.1/hook",
            "https://[::1]:8443/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://0x7f.1/hook",
            "https://[::ffff:10.0.0.1]/hook",
        ] {
            assert!(
                Destinations::Public.check_url(&url(refused)).is_err(),
                "{refused}"
            );
        }
        assert!(
            Destinations::Public
                .check_url(&url("https://8.8.8.8/hook"))
                .is_ok()
        );
        // Names are checked when they are resolved, at connection time.
        assert!(
            Destinations::Public
                .check_url(&url("https://localhost/hook"))
                .is_ok()
        );
    }
}
