//! Which `Host` and `Origin` the admin API answers, against DNS rebinding and
//! cross-site requests from a browser.
//!
//! - DNS rebinding: a page on `evil.example` points that name at 127.0.0.1 and
//!   reads `/status`. The browser sends `Host: evil.example`, so a request is
//!   answered only when its `Host` is an IP literal (a browser sends one only when
//!   its page's URL names that IP, and no page on an IP origin is served here),
//!   `localhost` at the admin port (when the admin API listens on loopback or the
//!   wildcard address), or an entry of `admin.allowed_hosts`. A request with no
//!   `Host` (HTTP/1.0) is answered: browsers always send one.
//! - Cross-site POST: a page anywhere can make the browser `POST /reload` to
//!   `127.0.0.1:9901` (the `Host` is then fine). Browsers add `Origin` to such
//!   requests, so a request other than GET/HEAD with an `Origin` is refused unless
//!   that origin is the admin API itself: the address the request reached, the
//!   listen address, a loopback name or IP at the admin port, or an allowed host.

use std::net::{IpAddr, SocketAddr};

use crate::config::{clip, limits::MAX_ECHO};

/// An `admin.allowed_hosts` entry: a name, with a port or matching any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    host: String,
    port: Option<u16>,
}

/// Splits `host[:port]` (IPv6 in brackets), lowercasing the host and dropping a
/// trailing dot. `None` when malformed.
fn split(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    ok.then_some((host, port))
}

/// Checks one `admin.allowed_hosts` entry; the error says what is wrong.
pub(crate) fn parse_allowed(entry: &str) -> Result<String, String> {
    match split(entry) {
        Some((host, port)) if port != Some(0) => Ok(match port {
            Some(p) if host.contains(':') => format!("[{host}]:{p}"),
            Some(p) => format!("{host}:{p}"),
            None if host.contains(':') => format!("[{host}]"),
            None => host,
        }),
        _ => Err(format!(
            "{entry:?} is not a host name or IP, with an optional :port (like \"admin.internal\" or \"admin.internal:9901\")"
        )),
    }
}

/// The admin API's host rules, for one listen address.
#[derive(Debug, Clone)]
pub(crate) struct HostPolicy {
    /// The bound address.
    listen: SocketAddr,
    /// Whether `localhost` and loopback IPs name this server.
    loopback: bool,
    allowed: Vec<Allowed>,
}

impl HostPolicy {
    /// `allowed_hosts` were validated by the config ([`parse_allowed`]).
    pub(crate) fn new(listen: SocketAddr, allowed_hosts: &[String]) -> HostPolicy {
        let ip = listen.ip();
        HostPolicy {
            listen,
            loopback: ip.is_loopback() || ip.is_unspecified(),
            allowed: allowed_hosts
                .iter()
                .filter_map(|e| split(e))
                .map(|(host, port)| Allowed { host, port })
                .collect(),
        }
    }

    /// `port` is the one the client named, or its scheme's default (80 for a
    /// `Host` without one: the admin API speaks plain HTTP; 443 for an `https`
    /// origin), so `admin.example:443` matches `https://admin.example`.
    fn allowed(&self, host: &str, port: u16) -> bool {
        self.allowed
            .iter()
            .any(|a| a.host == host && a.port.is_none_or(|p| p == port))
    }

    /// `localhost` at the admin port, when the API listens on loopback or the
    /// wildcard address. `port` is the one named, or the scheme's default.
    fn is_local_name(&self, name: &str, port: u16) -> bool {
        self.loopback && name == "localhost" && port == self.listen.port()
    }

    /// `Ok` when the request may be answered, else why not. `local` is the address
    /// the connection reached.
    pub(crate) fn check(
        &self,
        host: Option<&str>,
        origin: Option<&str>,
        safe_method: bool,
        local: SocketAddr,
    ) -> Result<(), String> {
        if let Some(host) = host {
            // Echoed clipped: a client chooses its length.
            let shown = clip(host, MAX_ECHO);
            let Some((name, port)) = split(host) else {
                return Err(format!("malformed Host header {shown:?}"));
            };
            let ok = name.parse::<IpAddr>().is_ok()
                || self.is_local_name(&name, port.unwrap_or(80))
                || self.allowed(&name, port.unwrap_or(80));
            if !ok {
                return Err(format!(
                    "Host {shown:?} does not name this admin API (refused against DNS rebinding); \
                     use its IP address, or add the name to admin.allowed_hosts"
                ));
            }
        }
        if safe_method {
            return Ok(());
        }
        let Some(origin) = origin else {
            return Ok(());
        };
        if self.own_origin(origin, local) {
            Ok(())
        } else {
            Err(format!(
                "Origin {:?} is not this admin API: cross-site requests other than GET are refused; \
                 add the origin's host to admin.allowed_hosts to allow it",
                clip(origin, MAX_ECHO)
            ))
        }
    }

    fn own_origin(&self, origin: &str, local: SocketAddr) -> bool {
        let (authority, default_port) = if let Some(a) = origin.strip_prefix("http://") {
            (a, 80)
        } else if let Some(a) = origin.strip_prefix("https://") {
            (a, 443)
        } else {
            // `null` (a sandboxed or file page) and anything else.
            return false;
        };
        let Some((name, port)) = split(authority) else {
            return false;
        };
        let port_or_default = port.unwrap_or(default_port);
        if let Ok(ip) = name.parse::<IpAddr>() {
            let at = SocketAddr::new(ip, port_or_default);
            return at == local
                || at == self.listen
                || (self.loopback && ip.is_loopback() && port_or_default == self.listen.port());
        }
        self.is_local_name(&name, port_or_default) || self.allowed(&name, port_or_default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(listen: &str, allowed: &[&str]) -> HostPolicy {
        let allowed: Vec<String> = allowed.iter().map(|a| parse_allowed(a).unwrap()).collect();
        HostPolicy::new(listen.parse().unwrap(), &allowed)
    }

    const LOCAL: &str = "127.0.0.1:9901";

    fn get(p: &HostPolicy, host: Option<&str>) -> Result<(), String> {
        p.check(host, None, true, LOCAL.parse().unwrap())
    }

    fn post(p: &HostPolicy, host: &str, origin: Option<&str>) -> Result<(), String> {
        p.check(Some(host), origin, false, LOCAL.parse().unwrap())
    }

    #[test]
    fn host_must_name_the_admin_api() {
        let p = policy("127.0.0.1:9901", &["admin.internal", "ops.example:8443"]);
        for ok in [
            "127.0.0.1:9901",
            "localhost:9901",
            "LOCALHOST:9901",
            "[::1]:9901",
            "10.1.2.3:9901",
            "10.1.2.3",
            "admin.internal",
            "admin.internal:1234",
            "admin.internal.",
            "ops.example:8443",
        ] {
            assert_eq!(get(&p, Some(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:9901",
            "evil.example",
            "localhost:80",
            "localhost",
            "ops.example:9901",
            "ops.example",
            "127.0.0.1:9901:1",
            "",
            "a b",
        ] {
            let e = get(&p, Some(bad)).unwrap_err();
            assert!(e.contains("Host"), "{bad}: {e}");
        }
        // HTTP/1.0 without Host: not a browser.
        assert_eq!(get(&p, None), Ok(()));
        // localhost names a server on a routable address only when allowed.
        let public = policy("10.0.0.5:9901", &[]);
        assert!(get(&public, Some("localhost:9901")).is_err());
        assert_eq!(get(&public, Some("10.0.0.5:9901")), Ok(()));
        let wildcard = policy("0.0.0.0:9901", &[]);
        assert_eq!(get(&wildcard, Some("localhost:9901")), Ok(()));
    }

    #[test]
    fn a_post_with_a_foreign_origin_is_refused() {
        let p = policy("127.0.0.1:9901", &["admin.internal"]);
        let host = "127.0.0.1:9901";
        for ok in [
            None,
            Some("http://127.0.0.1:9901"),
            Some("http://localhost:9901"),
            Some("http://[::1]:9901"),
            Some("https://admin.internal"),
        ] {
            assert_eq!(post(&p, host, ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "http://evil.example",
            "http://127.0.0.1:8080",
            "http://localhost:3000",
            "http://10.9.9.9:9901",
            "null",
            "file://",
        ] {
            let e = post(&p, host, Some(bad)).unwrap_err();
            assert!(e.contains("Origin"), "{bad}: {e}");
        }
        // A GET may carry any Origin: the browser will not let the page read it.
        assert_eq!(
            p.check(
                Some(host),
                Some("http://evil.example"),
                true,
                LOCAL.parse().unwrap()
            ),
            Ok(())
        );
    }

    #[test]
    fn an_allowed_host_with_a_port_matches_its_scheme_default() {
        let p = policy("127.0.0.1:9901", &["admin.example:443", "plain.example:80"]);
        assert_eq!(
            post(&p, "admin.example:443", Some("https://admin.example")),
            Ok(())
        );
        assert_eq!(
            post(&p, "plain.example", Some("http://plain.example")),
            Ok(())
        );
        assert_eq!(get(&p, Some("plain.example")), Ok(()));
        assert_eq!(get(&p, Some("plain.example:80")), Ok(()));
        // A Host without a port is plain HTTP: port 80, not 443.
        assert!(get(&p, Some("admin.example")).is_err());
        assert_eq!(get(&p, Some("admin.example:443")), Ok(()));
        assert!(post(&p, "admin.example:443", Some("http://admin.example")).is_err());
        assert!(post(&p, "admin.example:443", Some("https://plain.example")).is_err());
    }

    #[test]
    fn refusals_echo_a_clipped_host_and_origin() {
        let p = policy("127.0.0.1:9901", &[]);
        let long = format!("evil{}.example", "a".repeat(65536));
        let e = get(&p, Some(&long)).unwrap_err();
        assert!(e.len() < 1024 && e.contains("evilaaa"), "{} bytes", e.len());
        let e = get(&p, Some(&format!("{long} x"))).unwrap_err();
        assert!(
            e.len() < 1024 && e.contains("malformed"),
            "{} bytes",
            e.len()
        );
        let e = post(&p, LOCAL, Some(&format!("http://{long}"))).unwrap_err();
        assert!(e.len() < 1024 && e.contains("Origin"), "{} bytes", e.len());
    }

    #[test]
    fn allowed_host_entries_are_checked() {
        assert_eq!(parse_allowed("Admin.Internal"), Ok("admin.internal".into()));
        assert_eq!(parse_allowed("a:9901"), Ok("a:9901".into()));
        assert_eq!(parse_allowed("[::1]:9901"), Ok("[::1]:9901".into()));
        for bad in ["", "a:0", "a:x", "http://a", "a/b", "[zz]:1"] {
            assert!(parse_allowed(bad).is_err(), "{bad}");
        }
    }
}
