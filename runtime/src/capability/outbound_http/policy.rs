//! Which destinations a component may call: the `allowed_outbound_hosts`
//! entries, and the internal addresses (loopback, private, link-local...)
//! an entry names explicitly, for exactly its scheme, host and port.

use super::address::is_internal;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// One `allowed_outbound_hosts` entry: `scheme://host[:port]`, where scheme,
/// host and port may each be `*`, and host may be `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OutboundHost {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Exact(String),
    /// `10.0.0.0/24` or `[fd00::/8]`: IP literals in the range (a name
    /// never matches, whatever it resolves to).
    Range(ipnet::IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    /// No port written: the scheme's default.
    Default,
    Exact(u16),
}

impl TryFrom<String> for OutboundHost {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid allowed_outbound_hosts entry {text:?}: {why}; write scheme://host[:port], such as \"https://api.example.com\" or \"http://127.0.0.1:8080\""
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" | "tcp" => Some(scheme.to_string()),
            _ => return Err(bad("the scheme must be http, https, tcp or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal in brackets has colons of its own.
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (rest, None),
        };
        if port.is_some_and(|port| port.contains('/')) {
            return Err(bad("paths are not allowed"));
        }
        let port = match port {
            None if scheme.as_deref() == Some("tcp") => {
                return Err(bad(
                    "a tcp:// entry needs a port, such as tcp://db.internal:5432",
                ));
            }
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::Exact(p.parse().map_err(|_| bad("the port is not a number"))?),
        };
        let host = host.to_ascii_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let host = if bare.contains('/') {
            // A CIDR range, as Spin writes them; anything else with a '/'
            // is a path.
            let looks_like_range = bare
                .split_once('/')
                .is_some_and(|(ip, _)| ip.parse::<IpAddr>().is_ok());
            if !looks_like_range {
                return Err(bad("paths are not allowed"));
            }
            let range = bare.parse::<ipnet::IpNet>().map_err(|_| {
                bad("the range is not an address and a prefix length, such as 10.0.0.0/24")
            })?;
            HostPattern::Range(range.trunc())
        } else if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Suffix(format!(".{suffix}"))
        } else if host.is_empty() || host.contains('*') {
            return Err(bad(
                "'*' may only stand for the whole host or its first labels",
            ));
        } else {
            HostPattern::Exact(host)
        };
        Ok(OutboundHost {
            scheme,
            host,
            port,
            text,
        })
    }
}

impl From<OutboundHost> for String {
    fn from(host: OutboundHost) -> String {
        host.text
    }
}

impl fmt::Display for OutboundHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl OutboundHost {
    /// Whether this entry grants TCP connections: its scheme is `tcp` or
    /// `*`, and it writes a port (or `*`).
    pub fn grants_tcp(&self) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == "tcp") && self.port != PortPattern::Default
    }

    /// Whether this entry names the host `name` (as written, by a
    /// `*.suffix`, or as `*`).
    fn names(&self, name: &str) -> bool {
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Suffix(suffix) => name.ends_with(suffix.as_str()),
            HostPattern::Exact(exact) => exact == name,
            HostPattern::Range(_) => false,
        }
    }

    /// Whether a request to `scheme://host:port` is covered by this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host = host.to_ascii_lowercase();
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
            HostPattern::Exact(exact) => *exact == host,
            HostPattern::Range(range) => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| range.contains(&ip)),
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Exact(p) => p == port,
            PortPattern::Default => port == default_port(scheme),
        };
        scheme_ok && host_ok && port_ok
    }
}

/// The port a URL of `scheme` means when it writes none; TCP has none.
pub(super) fn default_port(scheme: &str) -> u16 {
    match scheme {
        "https" => 443,
        "http" => 80,
        _ => 0,
    }
}

/// The hosts one component may call.
#[derive(Debug)]
pub struct OutboundPolicy {
    component: String,
    allowed: Vec<OutboundHost>,
}

impl OutboundPolicy {
    /// A policy that allows exactly `allowed`.
    pub fn new(component: &str, allowed: Vec<OutboundHost>) -> OutboundPolicy {
        OutboundPolicy {
            component: component.to_string(),
            allowed,
        }
    }

    /// Whether a request to `scheme://host:port` may connect to `ip`, one
    /// of the addresses `host` stands for. A public address: when an entry
    /// allows the request. An internal one: only when an entry naming it
    /// exactly (as an IP literal, or `localhost` for loopback) allows the
    /// request's scheme, host and port; a wildcard host never reaches one.
    pub fn permits_address(&self, scheme: &str, host: &str, port: u16, ip: IpAddr) -> bool {
        if !is_internal(ip) {
            return self
                .allowed
                .iter()
                .any(|entry| entry.allows(scheme, host, port));
        }
        self.allowed.iter().any(|entry| {
            let names_ip = match &entry.host {
                HostPattern::Exact(named) if named == "localhost" => ip.is_loopback(),
                HostPattern::Exact(named) => named
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|listed| listed == ip),
                // A range names each address in it.
                HostPattern::Range(range) => range.contains(&ip),
                HostPattern::Any | HostPattern::Suffix(_) => false,
            };
            names_ip && entry.allows(scheme, host, port)
        })
    }

    /// Whether a TCP connection to `ip:port` is allowed: as the address
    /// looked up for the name `resolved_from`, or as an IP literal.
    pub fn permits_tcp(&self, ip: IpAddr, port: u16, resolved_from: Option<&str>) -> bool {
        let literal = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let host = resolved_from.unwrap_or(&literal);
        self.permits_address("tcp", host, port, ip)
    }

    /// Whether an entry granting TCP names the host `name`, so it may be
    /// looked up.
    pub fn may_resolve(&self, name: &str) -> bool {
        self.allowed
            .iter()
            .any(|entry| entry.grants_tcp() && entry.names(name))
    }

    /// The component this policy belongs to.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// Whether `uri` may be requested.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("http");
        let Some(host) = uri.host() else {
            return false;
        };
        let port = uri.port_u16().unwrap_or_else(|| default_port(scheme));
        self.allowed
            .iter()
            .any(|entry| entry.allows(scheme, host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> OutboundHost {
        OutboundHost::try_from(s.to_string()).unwrap()
    }

    fn policy(entries: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new("t", entries.iter().map(|e| host(e)).collect())
    }

    #[test]
    fn exact_host_uses_default_port() {
        let p = policy(&["https://api.example.com"]);
        assert!(p.allows(&"https://api.example.com/x".parse().unwrap()));
        assert!(p.allows(&"https://API.example.com:443/".parse().unwrap()));
        assert!(!p.allows(&"http://api.example.com/".parse().unwrap()));
        assert!(!p.allows(&"https://api.example.com:8443/".parse().unwrap()));
        assert!(!p.allows(&"https://evil.com/".parse().unwrap()));
    }

    #[test]
    fn wildcards() {
        let p = policy(&["*://*.example.com:*", "http://127.0.0.1:8080"]);
        assert!(p.allows(&"http://a.example.com:1234/".parse().unwrap()));
        assert!(p.allows(&"https://b.c.example.com/".parse().unwrap()));
        assert!(!p.allows(&"https://example.com/".parse().unwrap()));
        assert!(!p.allows(&"https://badexample.com/".parse().unwrap()));
        assert!(p.allows(&"http://127.0.0.1:8080/".parse().unwrap()));
        assert!(!p.allows(&"http://127.0.0.1:8081/".parse().unwrap()));
    }

    #[test]
    fn internal_addresses_count_only_for_the_entry_that_names_them() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let p = policy(&["http://127.0.0.1:8080", "*://*:*"]);
        assert!(p.permits_address("http", "127.0.0.1", 8080, loopback));
        // Another port or scheme on the named address, or a name resolving
        // to it, is only under the wildcard: refused.
        assert!(!p.permits_address("http", "127.0.0.1", 8081, loopback));
        assert!(!p.permits_address("https", "127.0.0.1", 8080, loopback));
        assert!(!p.permits_address("http", "localhost", 8080, loopback));
        assert!(!p.permits_address("http", "rebind.example.com", 8080, loopback));
        assert!(!p.permits_address("http", "[::ffff:127.0.0.1]", 8080, loopback));
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(!p.permits_address("http", "169.254.169.254", 80, metadata));
        // The wildcard still reaches public addresses.
        assert!(p.permits_address(
            "https",
            "example.com",
            443,
            "93.184.215.14".parse().unwrap()
        ));

        let p = policy(&[
            "http://localhost:8080",
            "http://[::1]:9000",
            "http://10.0.0.5:*",
        ]);
        assert!(p.permits_address("http", "localhost", 8080, loopback));
        assert!(p.permits_address("http", "localhost", 8080, "::1".parse().unwrap()));
        assert!(!p.permits_address("http", "localhost", 8081, loopback));
        assert!(!p.permits_address("http", "127.0.0.1", 8080, loopback));
        assert!(p.permits_address("http", "[::1]", 9000, "::1".parse().unwrap()));
        assert!(!p.permits_address("http", "[::1]", 9000, loopback));
        assert!(p.permits_address("http", "10.0.0.5", 5432, "10.0.0.5".parse().unwrap()));
        assert!(!p.permits_address("https", "10.0.0.5", 5432, "10.0.0.5".parse().unwrap()));
        assert!(!p.permits_address("http", "10.0.0.6", 5432, "10.0.0.6".parse().unwrap()));

        let p = policy(&["https://*"]);
        assert!(!p.permits_address("https", "127.0.0.1", 443, loopback));
    }

    #[test]
    fn ranges_cover_the_ip_literals_in_them_internal_ones_included() {
        let p = policy(&[
            "*://127.0.0.0/24:6379",
            "https://[fd00::/8]:443",
            "http://10.1.2.3/16",
        ]);
        let loopback: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(p.allows(&"http://127.0.0.9:6379/".parse().unwrap()));
        assert!(p.permits_address("http", "127.0.0.9", 6379, loopback));
        assert!(!p.permits_address("http", "127.0.0.9", 6380, loopback));
        assert!(!p.allows(&"http://127.0.1.9:6379/".parse().unwrap()));
        // A name resolving into the range is not named by it.
        assert!(!p.allows(&"http://localhost:6379/".parse().unwrap()));
        assert!(!p.permits_address("http", "redis.local", 6379, loopback));
        assert!(p.allows(&"https://[fd00::1]/".parse().unwrap()));
        assert!(p.permits_address("https", "[fd00::1]", 443, "fd00::1".parse().unwrap()));
        // Host bits are dropped: 10.1.2.3/16 is 10.1.0.0/16.
        assert!(p.allows(&"http://10.1.200.1/".parse().unwrap()));
        assert!(!p.allows(&"http://10.2.0.1/".parse().unwrap()));
    }

    #[test]
    fn tcp_goes_to_the_host_and_port_an_entry_names() {
        let p = policy(&[
            "tcp://db.example.com:5432",
            "*://127.0.0.1:6379",
            "tcp://*.cache.example.com:11211",
            "https://api.example.com",
            "*://*.example.org",
        ]);
        let public: IpAddr = "93.184.215.14".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.permits_tcp(public, 5432, Some("db.example.com")));
        assert!(!p.permits_tcp(public, 5433, Some("db.example.com")));
        // An address not looked up for an allowed name is not allowed.
        assert!(!p.permits_tcp(public, 5432, None));
        assert!(p.permits_tcp(loopback, 6379, None));
        assert!(!p.permits_tcp(loopback, 6380, None));
        // A name resolving to an internal address is not the address.
        assert!(!p.permits_tcp(loopback, 5432, Some("db.example.com")));
        assert!(p.permits_tcp(public, 11211, Some("a.cache.example.com")));
        // An http(s) entry, or a wildcard scheme without a port, grants no TCP.
        assert!(!p.permits_tcp(public, 443, Some("api.example.com")));
        assert!(!p.permits_tcp(public, 80, Some("www.example.org")));
        assert!(p.may_resolve("db.example.com"));
        assert!(p.may_resolve("x.cache.example.com"));
        assert!(!p.may_resolve("api.example.com"));
        assert!(!p.may_resolve("www.example.org"));
        assert!(host("tcp://db:5432").grants_tcp());
        assert!(!host("*://db").grants_tcp());
        // HTTP does not go through a tcp:// entry.
        assert!(
            !policy(&["tcp://db.example.com:80"])
                .allows(&"http://db.example.com/".parse().unwrap())
        );
    }

    #[test]
    fn empty_policy_denies_everything() {
        assert!(!policy(&[]).allows(&"http://127.0.0.1/".parse().unwrap()));
    }

    #[test]
    fn bad_entries_name_the_entry() {
        for bad in [
            "example.com",
            "ftp://x",
            "http://x/path",
            "http://x:80/path",
            "http://10.0.0.0/33",
            "http://x:port",
            "http://a*b",
            "tcp://db.internal",
            "udp://x:53",
        ] {
            let err = OutboundHost::try_from(bad.to_string()).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
