//! Settings of a TCP (L4) app, and its targets.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{Fields, RawApp};

/// Defaults of the optional TCP fields. Documented in `docs/config.md`.
pub mod defaults {
    use std::time::Duration;

    pub const STRATEGY: &str = "round_robin";
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const CONNECT_DEADLINE: Duration = Duration::from_secs(3);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const BUFFER_SIZE: usize = 64 * 1024;
}

/// Smallest and largest accepted copy buffer: below 1 KiB a copy is all syscalls,
/// above 16 MiB a few thousand connections would exhaust memory.
const BUFFER_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1024..=16 * 1024 * 1024;

/// A validated TCP app's routing and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    pub targets: Vec<Target>,
    pub strategy: String,
    /// Limit for one connect attempt to one target address.
    pub connect_timeout: Duration,
    /// Limit for finding any target that accepts, across all attempts.
    pub connect_deadline: Duration,
    /// A proxied connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent connections above this are reset at once.
    pub max_connections: usize,
    /// Size of each of the two copy buffers of a connection.
    pub buffer_size: usize,
}

impl TcpConfig {
    pub(super) fn validate(
        raw: &mut RawApp,
        f: &Fields<'_>,
        strategies: &std::collections::BTreeSet<String>,
    ) -> Result<TcpConfig, super::ConfigError> {
        let raw_targets = std::mem::take(&mut raw.targets);
        if raw_targets.is_empty() {
            return Err(f.err("targets", "must list at least one target"));
        }
        let mut targets = Vec::with_capacity(raw_targets.len());
        for (i, t) in raw_targets.iter().enumerate() {
            targets.push(Target::parse(t).map_err(|e| f.err(&format!("targets[{i}]"), e))?);
        }

        let strategy = raw
            .strategy
            .take()
            .unwrap_or_else(|| defaults::STRATEGY.into())
            .replace('-', "_");
        if !strategies.contains(&strategy) {
            let known: Vec<_> = strategies.iter().map(String::as_str).collect();
            return Err(f.err(
                "strategy",
                format!(
                    "unknown strategy {strategy:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }

        let connect_timeout = f.duration(
            "connect_timeout",
            raw.connect_timeout.take(),
            defaults::CONNECT_TIMEOUT,
        )?;
        let connect_deadline = f.duration(
            "connect_deadline",
            raw.connect_deadline.take(),
            defaults::CONNECT_DEADLINE.max(connect_timeout),
        )?;
        if connect_deadline < connect_timeout {
            return Err(f.err("connect_deadline", "must be at least connect_timeout"));
        }
        let idle_timeout = f.duration(
            "idle_timeout",
            raw.idle_timeout.take(),
            defaults::IDLE_TIMEOUT,
        )?;
        let max_connections = raw
            .max_connections
            .take()
            .unwrap_or(defaults::MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(f.err("max_connections", "must be at least 1"));
        }
        let buffer_size = raw.buffer_size.take().unwrap_or(defaults::BUFFER_SIZE);
        if !BUFFER_SIZE_RANGE.contains(&buffer_size) {
            return Err(f.err(
                "buffer_size",
                format!(
                    "{buffer_size} is outside {}-{} bytes",
                    BUFFER_SIZE_RANGE.start(),
                    BUFFER_SIZE_RANGE.end()
                ),
            ));
        }
        Ok(TcpConfig {
            targets,
            strategy,
            connect_timeout,
            connect_deadline,
            idle_timeout,
            max_connections,
            buffer_size,
        })
    }
}

/// Where a connection can be forwarded to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP literal: no resolution needed.
    Addr(SocketAddr),
    /// A DNS name, resolved when a connection needs it (cached for the record's TTL).
    Name { host: String, port: u16 },
}

impl Target {
    /// Parses `host:port`, `1.2.3.4:port` or `[::1]:port`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port (expected host:port)"))?;
        let port = super::parse_port(port).map_err(|e| format!("`{s}`: {e}"))?;
        if host.starts_with('[') || host.contains(':') {
            return Err(format!(
                "`{s}` is not a valid address (IPv6 targets are written [addr]:port)"
            ));
        }
        if host.parse::<IpAddr>().is_ok() {
            return Err(format!("`{s}` is not a valid address"));
        }
        if !is_valid_hostname(host) {
            return Err(format!("`{s}`: `{host}` is not a valid host name"));
        }
        Ok(Target::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

fn is_valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
