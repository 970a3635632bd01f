//! SSRF guards of callbacks: which URLs are accepted (`https` only, unless the host is in
//! `ERASURE_CALLBACK_ALLOW_HOSTS`), and which addresses a callback may connect to. The check
//! is on the addresses the connection is made to: the client resolves names through
//! [`GuardedResolver`], which drops every address in loopback, private, link-local, metadata,
//! shared (CGNAT) or otherwise special space, so a name that resolves (or rebinds) there
//! cannot be reached; an IP literal is checked before any connection.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

use crate::contract::MAX_CALLBACK_URL_BYTES;

/// Hosts callbacks may reach over `http` and at any address: `host` or `host:port`, lowercase.
#[derive(Clone, Debug, Default)]
pub struct AllowList(pub Vec<String>);

impl AllowList {
    /// Whether `host` (as in a URL: IPv6 in brackets) at `port` is listed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let with_port = format!("{host}:{port}");
        self.0.iter().any(|h| *h == host || *h == with_port)
    }

    /// Whether `host` is listed with any port (what the resolver knows: a name, no port).
    fn allows_name(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.0.iter().any(|h| {
            h == &name
                || h.rsplit_once(':')
                    .is_some_and(|(host, port)| host == name && port.parse::<u16>().is_ok())
        })
    }
}

/// Why a callback URL is refused (the message of `invalid_callback_url`; names no value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("callbackUrl must be an absolute URL of at most 2048 bytes")]
    Malformed,
    #[error("callbackUrl must use https")]
    NotHttps,
    #[error("callbackUrl must not carry credentials")]
    Credentials,
    #[error("callbackUrl must not point to a loopback, private, link-local or unspecified address")]
    Address,
}

/// Checks a callback URL against the rules of DESIGN.md section 10 that hold without a
/// DNS lookup: scheme, size, credentials, and an IP literal's space. A name is checked at
/// every connection by [`GuardedResolver`].
pub fn check_url(raw: &str, allow: &AllowList) -> Result<Url, UrlRefused> {
    if raw.len() > MAX_CALLBACK_URL_BYTES {
        return Err(UrlRefused::Malformed);
    }
    let url = Url::parse(raw).map_err(|_| UrlRefused::Malformed)?;
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(UrlRefused::Malformed)?;
    let port = url.port_or_known_default().ok_or(UrlRefused::Malformed)?;
    let allowed = allow.allows(host, port);
    match url.scheme() {
        "https" => {}
        "http" if allowed => {}
        _ => return Err(UrlRefused::NotHttps),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    if !allowed && literal(&url).is_some_and(forbidden) {
        return Err(UrlRefused::Address);
    }
    Ok(url)
}

/// The URL's host when it is an IP address.
pub fn literal(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// Whether an address is one a callback must never reach: anything but global unicast.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, the cloud metadata address 169.254.169.254 included
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (b & 0xc0) == 64) // shared address space (CGNAT), 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking, 198.18/15
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7 (fd00:ec2::254, metadata, included)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0) // Teredo: tunnels to anywhere
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0] == 0x0100 && s[1..4] == [0, 0, 0] // discard-only
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5]
        && (s[5] == 0xffff || (s[5] == 0 && !ip.is_loopback() && !ip.is_unspecified()))
    {
        return Some(low);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// A name resolved only to forbidden addresses (in the error chain of a refused attempt).
#[derive(Debug, thiserror::Error)]
#[error("the callback host resolves only to addresses callbacks may not reach")]
pub struct AddressRefused;

/// The callbacks' DNS resolver: the system's, minus every forbidden address, except for
/// allow-listed hosts.
pub struct GuardedResolver {
    pub allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allow.allows_name(name.as_str());
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allowed || !forbidden(a.ip()))
                .collect();
            if resolved.is_empty() {
                return Err(Box::new(AddressRefused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(resolved.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_addresses_are_forbidden_and_public_ones_are_not() {
        for bad in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "::",
            "::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:0001::",
            "2001:0:4136:e378::1",
            "2001:db8::1",
        ] {
            assert!(forbidden(ip(bad)), "{bad} is forbidden");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "172.15.0.1",
            "169.253.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::",
        ] {
            assert!(!forbidden(ip(good)), "{good} is allowed");
        }
    }

    #[test]
    fn urls_are_https_unless_allow_listed_and_literals_are_checked() {
        let none = AllowList::default();
        assert!(check_url("https://hooks.example.com/x", &none).is_ok());
        assert_eq!(
            check_url("http://hooks.example.com/x", &none),
            Err(UrlRefused::NotHttps)
        );
        assert_eq!(
            check_url("ftp://hooks.example.com/x", &none),
            Err(UrlRefused::NotHttps)
        );
        assert_eq!(
            check_url("https://127.0.0.1/x", &none),
            Err(UrlRefused::Address)
        );
        assert_eq!(
            check_url("https://[::1]/x", &none),
            Err(UrlRefused::Address)
        );
        assert_eq!(
            check_url("https://[::ffff:7f00:1]/x", &none),
            Err(UrlRefused::Address)
        );
        assert_eq!(
            check_url("https://169.254.169.254/", &none),
            Err(UrlRefused::Address)
        );
        assert_eq!(
            check_url("https://u:p@example.com/", &none),
            Err(UrlRefused::Credentials)
        );
        assert_eq!(check_url("not a url", &none), Err(UrlRefused::Malformed));
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(check_url(&long, &none), Err(UrlRefused::Malformed));

        let allow = AllowList(vec!["127.0.0.1:9000".into(), "receiver.test".into()]);
        assert!(check_url("http://127.0.0.1:9000/hook", &allow).is_ok());
        assert_eq!(
            check_url("http://127.0.0.1:9001/hook", &allow),
            Err(UrlRefused::NotHttps)
        );
        assert!(check_url("http://receiver.test:1234/hook", &allow).is_ok());
        assert!(allow.allows_name("127.0.0.1") && allow.allows_name("RECEIVER.test"));
        assert!(!allow.allows_name("localhost"));
    }
}
