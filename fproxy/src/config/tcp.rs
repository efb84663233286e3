//! Settings of a TCP (L4) app, and its targets.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{Fields, RawApp};

/// Defaults of the optional TCP fields. Documented in `docs/config.md`.
pub mod defaults {
    use std::time::Duration;

    /// Power of two choices: spreads uneven load nearly as well as least
    /// connections, at O(1), without herding onto one idle target.
    pub const STRATEGY: &str = "p2c";
    pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
    pub const RISE: u32 = 2;
    pub const FALL: u32 = 3;
    pub const EJECT_AFTER: u32 = 5;
    pub const EJECT_BASE: Duration = Duration::from_secs(30);
    pub const MAX_EJECTED_PERCENT: u32 = 50;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const CONNECT_DEADLINE: Duration = Duration::from_secs(3);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const BUFFER_SIZE: usize = 64 * 1024;
    /// Target names are looked up again when their TTL runs out, but no sooner
    /// than this (a TTL of 0 would otherwise mean a lookup per loop) ...
    pub const DNS_MIN_TTL: Duration = Duration::from_secs(5);
    /// ... and no later than this, so a huge TTL cannot pin a stale address.
    pub const DNS_MAX_TTL: Duration = Duration::from_secs(300);
}

/// Smallest and largest accepted copy buffer: below 1 KiB a copy is all syscalls,
/// above 16 MiB a few thousand connections would exhaust memory.
const BUFFER_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1024..=16 * 1024 * 1024;

/// Concurrent connections of one app: beyond a million, file descriptors run out first.
const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=1_000_000;
/// Consecutive checks or failures counted before a verdict; more is never reached
/// in practice and only delays it by hours.
const MAX_STREAK: u32 = 1000;
/// Longest health check `send` and `expect`: the checker reads at most this much of
/// an answer, so a longer `expect` could never match.
pub const MAX_PROBE_BYTES: usize = 4096;

/// Active health checking of every target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a target back, and failures that take it out.
    pub rise: u32,
    pub fall: u32,
    /// Optional bytes to send after connecting, and bytes the answer must contain.
    pub send: Option<String>,
    pub expect: Option<String>,
}

/// Passive ejection: targets failing connects are taken out for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive connect failures that eject a target (0 disables ejection).
    pub consecutive_failures: u32,
    /// First ejection length; the n-th ejection lasts n times this.
    pub base_ejection: Duration,
    /// At most this share of targets is ejected at once (at least one may be).
    pub max_ejected_percent: u32,
}

/// How target names are resolved in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRefresh {
    /// The record's TTL is raised to at least this ...
    pub min_ttl: Duration,
    /// ... and lowered to at most this.
    pub max_ttl: Duration,
    /// Which of a name's addresses become endpoints.
    pub family: Family,
}

/// Which addresses of a name become endpoints. Many backends listen on one family
/// only (a `localhost` service on 127.0.0.1, a container on 0.0.0.0), while names
/// often resolve to both; an endpoint per family would send a share of connections
/// to an address that refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The IPv4 addresses, or the IPv6 ones when there are none (the default).
    PreferIpv4,
    /// The IPv6 addresses, or the IPv4 ones when there are none.
    PreferIpv6,
    /// Every address, both families.
    All,
}

impl Family {
    fn parse(s: &str) -> Option<Family> {
        match s {
            "prefer_ipv4" => Some(Family::PreferIpv4),
            "prefer_ipv6" => Some(Family::PreferIpv6),
            "all" => Some(Family::All),
            _ => None,
        }
    }

    /// The addresses of `addrs` this family keeps.
    pub fn select(self, addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let want_v4 = match self {
            Family::All => return addrs,
            Family::PreferIpv4 => true,
            Family::PreferIpv6 => false,
        };
        let preferred: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| a.is_ipv4() == want_v4)
            .collect();
        if preferred.is_empty() {
            addrs
        } else {
            preferred
        }
    }
}

/// A validated TCP app's routing and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    pub targets: Vec<Target>,
    /// One per target.
    pub weights: Vec<u32>,
    pub health_check: Option<HealthCheck>,
    pub passive: Passive,
    /// Whether a target added by a reload takes traffic before its first check.
    pub new_targets_healthy: bool,
    pub dns: DnsRefresh,
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
        f.count("targets", raw_targets.len(), super::limits::MAX_TARGETS)?;
        let mut targets = Vec::with_capacity(raw_targets.len());
        let mut weights = Vec::with_capacity(raw_targets.len());
        for (i, t) in raw_targets.iter().enumerate() {
            let (addr, weight) = match t {
                RawTarget::Plain(a) => (a, 1),
                RawTarget::Weighted { address, weight } => (address, *weight),
            };
            if !(1..=10_000).contains(&weight) {
                return Err(f.err(&format!("targets[{i}].weight"), "must be 1-10000"));
            }
            targets.push(Target::parse(addr).map_err(|e| f.err(&format!("targets[{i}]"), e))?);
            weights.push(weight);
        }
        let health_check = match raw.health_check.take() {
            None => None,
            Some(h) => {
                for (name, v) in [("send", &h.send), ("expect", &h.expect)] {
                    if v.as_ref().is_some_and(|v| v.len() > MAX_PROBE_BYTES) {
                        return Err(f.err(
                            &format!("health_check.{name}"),
                            format!("longer than {MAX_PROBE_BYTES} bytes"),
                        ));
                    }
                }
                Some(HealthCheck {
                    interval: f.duration(
                        "health_check.interval",
                        h.interval,
                        defaults::CHECK_INTERVAL,
                    )?,
                    timeout: f.duration(
                        "health_check.timeout",
                        h.timeout,
                        defaults::CHECK_TIMEOUT,
                    )?,
                    // 0 has always meant 1.
                    rise: f
                        .number("health_check.rise", h.rise, defaults::RISE, 0..=MAX_STREAK)?
                        .max(1),
                    fall: f
                        .number("health_check.fall", h.fall, defaults::FALL, 0..=MAX_STREAK)?
                        .max(1),
                    send: h.send,
                    expect: h.expect,
                })
            }
        };
        let passive = match raw.passive.take() {
            None => Passive {
                consecutive_failures: defaults::EJECT_AFTER,
                base_ejection: defaults::EJECT_BASE,
                max_ejected_percent: defaults::MAX_EJECTED_PERCENT,
            },
            Some(p) => {
                let max = p
                    .max_ejected_percent
                    .unwrap_or(defaults::MAX_EJECTED_PERCENT);
                if max > 100 {
                    return Err(f.err("passive.max_ejected_percent", "must be 0-100"));
                }
                Passive {
                    consecutive_failures: f.number(
                        "passive.consecutive_failures",
                        p.consecutive_failures,
                        defaults::EJECT_AFTER,
                        0..=MAX_STREAK,
                    )?,
                    base_ejection: f.duration(
                        "passive.base_ejection",
                        p.base_ejection,
                        defaults::EJECT_BASE,
                    )?,
                    max_ejected_percent: max,
                }
            }
        };
        let new_targets_healthy = raw.new_targets_healthy.take().unwrap_or(true);
        let raw_dns = raw.dns.take().unwrap_or_default();
        let family = match raw_dns.family.as_deref() {
            None => Family::PreferIpv4,
            Some(name) => Family::parse(&name.replace('-', "_")).ok_or_else(|| {
                f.err(
                    "dns.family",
                    format!("unknown family {name:?} (known: prefer_ipv4, prefer_ipv6, all)"),
                )
            })?,
        };
        let dns = DnsRefresh {
            min_ttl: f.duration("dns.min_ttl", raw_dns.min_ttl, defaults::DNS_MIN_TTL)?,
            max_ttl: f.duration("dns.max_ttl", raw_dns.max_ttl, defaults::DNS_MAX_TTL)?,
            family,
        };
        if dns.max_ttl < dns.min_ttl {
            return Err(f.err("dns.max_ttl", "must be at least dns.min_ttl"));
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
        let max_connections = f.number(
            "max_connections",
            raw.max_connections.take(),
            defaults::MAX_CONNECTIONS,
            MAX_CONNECTIONS_RANGE,
        )?;
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
            weights,
            health_check,
            passive,
            new_targets_healthy,
            dns,
            strategy,
            connect_timeout,
            connect_deadline,
            idle_timeout,
            max_connections,
            buffer_size,
        })
    }
}

/// A target as written: `"host:port"` or `{"address": "host:port", "weight": 3}`.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum RawTarget {
    Plain(String),
    Weighted { address: String, weight: u32 },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    send: Option<String>,
    expect: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    min_ttl: Option<String>,
    max_ttl: Option<String>,
    family: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassive {
    consecutive_failures: Option<u32>,
    base_ejection: Option<String>,
    max_ejected_percent: Option<u32>,
}

/// Where a connection can be forwarded to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP literal: no resolution needed.
    Addr(SocketAddr),
    /// A DNS name, resolved in the background and again when its TTL runs out;
    /// each address it resolves to is an endpoint of its own.
    Name { host: String, port: u16 },
}

impl Target {
    /// Parses `host:port`, `1.2.3.4:port` or `[::1]:port`.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            // Port 0 cannot be connected to: every client would be reset.
            if addr.port() == 0 {
                return Err(format!("`{s}`: port 0 out of range 1-65535"));
            }
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

#[cfg(test)]
mod tests {
    use super::Family;
    use std::net::SocketAddr;

    #[test]
    fn family_prefers_one_and_falls_back_to_the_other() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(Family::PreferIpv4.select(vec![v6, v4]), [v4]);
        assert_eq!(Family::PreferIpv6.select(vec![v6, v4]), [v6]);
        assert_eq!(Family::PreferIpv4.select(vec![v6]), [v6]);
        assert_eq!(Family::PreferIpv6.select(vec![v4]), [v4]);
        assert_eq!(Family::All.select(vec![v6, v4]), [v6, v4]);
    }
}
