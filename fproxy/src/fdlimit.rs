//! The file descriptor limit (RLIMIT_NOFILE) against what the config may need.
//!
//! Every proxied TCP connection holds two descriptors (client and target), every
//! spec or admin connection and every listener one, spec apps' upstream fetches
//! and Redis connections a few more. Distributions start processes with a soft limit of 1024, which a
//! few hundred clients exhaust; the hard limit is usually far higher. So the daemon
//! raises its soft limit to the hard one at start ([`raise`]) and, on every config
//! it applies, warns when the limit cannot carry the configured `max_connections`
//! ([`Demand::check`]). Running out is handled (accept pauses, connects fail as local errors
//! that blame no target), but an operator should hear about it before it happens.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

use crate::config::{Cache, Config, Kind};

/// Descriptors kept for what no config field bounds: DNS, the config watcher,
/// health checks, the runtime itself.
pub const RESERVE: u64 = 64;

/// Redis connections a spec app with a Redis cache may hold: the command
/// connection and the pub/sub subscription, and their replacements while a
/// reconnect is under way.
pub const REDIS_PER_APP: u64 = 4;

/// The soft and hard limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub soft: u64,
    pub hard: u64,
}

/// The process's current limits, `None` when they cannot be read.
pub fn current() -> Option<Limits> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, hard)| Limits { soft, hard })
}

/// Raises the soft limit to the hard one and logs the numbers. Returns the limits
/// in force afterwards. An unlimited hard limit (root may have one) is not a
/// valid soft value for RLIMIT_NOFILE; the soft limit then stays.
pub fn raise() -> Option<Limits> {
    let Some(before) = current() else {
        tracing::warn!("cannot read the file descriptor limit (RLIMIT_NOFILE)");
        return None;
    };
    if before.soft >= before.hard || before.hard == RLIM_INFINITY {
        tracing::info!(
            soft = before.soft,
            hard = before.hard,
            "file descriptor limit"
        );
        return Some(before);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, before.hard, before.hard) {
        Ok(()) => {
            tracing::info!(
                from = before.soft,
                to = before.hard,
                "file descriptor limit raised to the hard limit"
            );
            Some(Limits {
                soft: before.hard,
                hard: before.hard,
            })
        }
        Err(e) => {
            tracing::warn!(soft = before.soft, hard = before.hard, error = %e, "cannot raise the file descriptor limit");
            Some(before)
        }
    }
}

/// What a config may use at its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Descriptors: one per listener; two per TCP connection (client and
    /// target); one per spec app connection (HTTP and gRPC clients), plus its
    /// `fetch_concurrency` upstream sockets and [`REDIS_PER_APP`] with a Redis
    /// cache; one per admin API connection and its listener; and [`RESERVE`].
    pub fds: u64,
    /// The sum of every server's `max_connections` (TCP and spec apps, admin API).
    pub connections: u64,
}

impl Demand {
    pub fn of(config: &Config) -> Demand {
        let mut d = Demand {
            fds: RESERVE,
            connections: 0,
        };
        let mut add = |fds: u64| d.fds = d.fds.saturating_add(fds);
        let mut connections = 0u64;
        for app in &config.apps {
            add(app.addresses().len() as u64);
            match &app.kind {
                Kind::Tcp(t) => {
                    let c = t.max_connections as u64;
                    connections = connections.saturating_add(c);
                    add(c.saturating_mul(2));
                }
                Kind::Spec(s) => {
                    let c = s.max_connections as u64;
                    connections = connections.saturating_add(c);
                    add(c);
                    add(s.fetch_concurrency as u64);
                    if matches!(s.cache, Cache::Redis(_)) {
                        add(REDIS_PER_APP);
                    }
                }
            }
        }
        if let Some(admin) = &config.admin {
            let c = admin.max_connections as u64;
            connections = connections.saturating_add(c);
            add(c.saturating_add(1));
        }
        d.connections = connections;
        d
    }

    /// Warns when the soft limit cannot carry this demand. Returns the limit when
    /// it falls short.
    pub fn check(self) -> Option<u64> {
        let limit = current()?.soft;
        if limit == RLIM_INFINITY || self.fds <= limit {
            return None;
        }
        tracing::warn!(
            limit,
            needed = self.fds,
            max_connections = self.connections,
            "the file descriptor limit cannot carry the configured max_connections \
             (2 per TCP connection, 1 per spec or admin connection, spec fetch_concurrency \
             and Redis connections, listeners, {RESERVE} spare): \
             some clients will be refused at the limits; \
             raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower max_connections"
        );
        Some(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Validator;
    use crate::strategy::Registry;

    /// Two per TCP connection; one per spec and admin connection, plus spec
    /// upstream fetches and Redis; one per listener; the reserve.
    #[test]
    fn counts_every_server_and_upstream() {
        let json = r#"{"apps":[
            {"name":"a","listen":["127.0.0.1:1","127.0.0.1:2"],"targets":["10.0.0.1:1"],"max_connections":100},
            {"name":"b","listen":["127.0.0.1:3"],"targets":["10.0.0.1:1"],"max_connections":50},
            {"name":"s","kind":"spec","listen":["127.0.0.1:4"],"grpc_listen":["127.0.0.1:5"],
             "upstream":"http://u","max_connections":30,"fetch_concurrency":7,
             "cache":{"backend":"redis","url":"redis://h:1"}},
            {"name":"t","kind":"spec","listen":["127.0.0.1:6"],"upstream":"http://u",
             "max_connections":20,"fetch_concurrency":3}],
            "admin":{"listen":"127.0.0.1:7","max_connections":9}}"#;
        let config = Validator::new(Registry::default().names())
            .parse(json)
            .unwrap();
        let d = Demand::of(&config);
        let listeners = 6;
        let tcp = 2 * 150;
        let spec = 30 + 7 + REDIS_PER_APP + 20 + 3;
        let admin = 9 + 1;
        assert_eq!(d.fds, RESERVE + listeners + tcp + spec + admin);
        assert_eq!(d.connections, 150 + 50 + 9);
    }
}
