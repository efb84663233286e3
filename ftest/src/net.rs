//! Addresses, connecting, and error text that says what failed and where.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::{TcpSocket, TcpStream};

use crate::exchange::{Failure, TryError};

/// Which address family a host name may resolve to (`-4` / `-6`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Any,
    V4,
    V6,
}

impl Family {
    pub fn from_flags(ipv4: bool, ipv6: bool) -> Family {
        match (ipv4, ipv6) {
            (true, false) => Family::V4,
            (false, true) => Family::V6,
            _ => Family::Any,
        }
    }

    fn admits(self, addr: &SocketAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => addr.is_ipv4(),
            Family::V6 => addr.is_ipv6(),
        }
    }
}

/// The address a client command talks to, shared by ping, balancer and simulate.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Where to connect: host:port, 1.2.3.4:port or [::1]:port.
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// Use IPv4 addresses only (when ADDR is a host name).
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 addresses only (when ADDR is a host name).
    #[arg(short = '6')]
    pub ipv6: bool,
}

impl TargetArgs {
    /// The first address of ADDR in the chosen family, like `ping` picks one.
    pub async fn resolve_one(&self) -> anyhow::Result<SocketAddr> {
        let addrs = resolve(&self.addr, Family::from_flags(self.ipv4, self.ipv6)).await?;
        // `resolve` never returns an empty list.
        addrs
            .first()
            .copied()
            .with_context(|| format!("resolve {}: no address", self.addr))
    }
}

/// Every address of `host:port` in `family`, duplicates removed, in resolver order.
pub async fn resolve(target: &str, family: Family) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        if !family.admits(&addr) {
            bail!("{target} is not an {} address", family_name(family));
        }
        return Ok(vec![addr]);
    }
    let Some((host, port)) = target.rsplit_once(':') else {
        bail!("`{target}` has no port (expected host:port, 1.2.3.4:port or [::1]:port)");
    };
    if host.is_empty() || host.contains(':') || port.parse::<u16>().is_err() {
        bail!("`{target}` is not host:port (IPv6 addresses are written [::1]:port)");
    }
    let found = tokio::net::lookup_host(target)
        .await
        .map_err(|e| anyhow::anyhow!("resolve {host}: {}", describe(&e)))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in found.filter(|a| family.admits(a)) {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        bail!("resolve {host}: no {} address", family_name(family));
    }
    Ok(addrs)
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Any => "IP",
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// Connects with a time limit and TCP_NODELAY (every command sends small writes
/// and waits for the answer; Nagle would add delay to each).
pub async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, TryError> {
    connect_from(addr, None, limit).await
}

/// [`connect`] from a chosen source address (any free port), or from the one the
/// system picks when `source` is `None`.
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    limit: Duration,
) -> Result<TcpStream, TryError> {
    // Binding does not wait, so it stays outside the time limit and its error can
    // name the source address rather than the target.
    let socket = match source {
        Some(ip) => Some(bind(ip)?),
        None => None,
    };
    let connecting = async move {
        match socket {
            Some(socket) => socket.connect(addr).await,
            None => TcpStream::connect(addr).await,
        }
    };
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(stream)) => {
            // Failing to set it only costs latency; not worth failing the try.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(TryError::io("connect", addr, &e)),
        Err(_) => Err(TryError::new(
            Failure::Timeout,
            format!("connect {addr}: timed out after {}", fmt_duration(limit)),
        )),
    }
}

/// A socket bound to `ip` and a free port, ready to connect.
fn bind(ip: IpAddr) -> Result<TcpSocket, TryError> {
    let local = SocketAddr::new(ip, 0);
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|s| s.bind(local).map(|()| s))
        .map_err(|e| TryError::io("bind", local, &e))
}

/// An I/O error as a short lowercase phrase, without Rust's "(os error N)" suffix.
pub fn describe(e: &io::Error) -> String {
    use io::ErrorKind as K;
    let fixed = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset by peer",
        K::ConnectionAborted => "connection aborted",
        K::BrokenPipe => "broken pipe",
        K::TimedOut => "timed out",
        K::AddrInUse => "address already in use",
        K::AddrNotAvailable => "address not available on this host",
        K::PermissionDenied => "permission denied",
        K::UnexpectedEof => "connection closed early",
        _ => "",
    };
    if !fixed.is_empty() {
        return fixed.to_string();
    }
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", e.kind()),
    }
}

/// Parses a time limit: a bare number is milliseconds ("250"), or a duration with a
/// unit ("250ms", "2s", "1m").
pub fn parse_millis(s: &str) -> Result<Duration, String> {
    parse_with_default_unit(s, Duration::from_millis)
}

/// Parses a run length: a bare number is seconds ("10"), or a duration with a unit.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    parse_with_default_unit(s, Duration::from_secs)
}

fn parse_with_default_unit(s: &str, unit: fn(u64) -> Duration) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(unit(n));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 2s or 1m: {e}"))
}

/// A duration for people: "250 ms", "1.5 s", "2 m 0 s".
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} m {} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Milliseconds with microsecond precision, as `ping` prints times.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_drops_os_error_suffix() {
        let e = io::Error::from_raw_os_error(111);
        assert_eq!(describe(&e), "connection refused");
        let e = io::Error::from_raw_os_error(101); // ENETUNREACH
        assert_eq!(describe(&e), "network is unreachable");
    }

    #[test]
    fn durations_have_default_units() {
        assert_eq!(parse_millis("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_millis("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_seconds("soon").is_err());
    }

    #[tokio::test]
    async fn resolve_forms_and_families() {
        let v4 = resolve("127.0.0.1:5", Family::Any).await.unwrap();
        assert_eq!(v4, vec!["127.0.0.1:5".parse::<SocketAddr>().unwrap()]);
        let v6 = resolve("[::1]:5", Family::V6).await.unwrap();
        assert!(v6[0].is_ipv6());
        assert!(resolve("[::1]:5", Family::V4).await.is_err());
        let local = resolve("localhost:5", Family::V4).await.unwrap();
        assert!(local.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()));
        let e = resolve("localhost", Family::Any).await.unwrap_err();
        assert!(e.to_string().contains("has no port"), "{e}");
        let e = resolve("::1:80", Family::Any).await.unwrap_err();
        assert!(e.to_string().contains("[::1]:port"), "{e}");
    }
}
