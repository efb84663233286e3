//! The file descriptor limit (RLIMIT_NOFILE) against what the config may need.
//!
//! Every proxied TCP connection holds two descriptors (client and target), every
//! listener one. Distributions start processes with a soft limit of 1024, which a
//! few hundred clients exhaust; the hard limit is usually far higher. So the daemon
//! raises its soft limit to the hard one at start ([`raise`]) and, on every config
//! it applies, warns when the limit cannot carry the apps' `max_connections`
//! ([`Demand::check`]). Running out is handled (accept pauses, connects fail as local errors
//! that blame no target), but an operator should hear about it before it happens.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

use crate::config::{Config, Kind};

/// Descriptors kept for everything that is not a proxied connection: the admin
/// API and its clients, DNS, the config watcher, spec apps' upstream clients, the
/// runtime itself.
pub const RESERVE: u64 = 64;

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
    /// Descriptors: two per TCP connection (summed over apps), one per listener,
    /// plus [`RESERVE`].
    pub fds: u64,
    /// The sum of the TCP apps' `max_connections`.
    pub connections: u64,
}

impl Demand {
    pub fn of(config: &Config) -> Demand {
        let mut d = Demand {
            fds: RESERVE,
            connections: 0,
        };
        for app in &config.apps {
            d.fds = d.fds.saturating_add(app.addresses().len() as u64);
            if let Kind::Tcp(t) = &app.kind {
                let c = t.max_connections as u64;
                d.connections = d.connections.saturating_add(c);
                d.fds = d.fds.saturating_add(c.saturating_mul(2));
            }
        }
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
             (2 per connection, summed over apps, plus listeners and {RESERVE} spare): \
             clients beyond about (limit - listeners - {RESERVE}) / 2 will be refused; \
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

    #[test]
    fn needs_two_per_connection_plus_listeners() {
        let json = r#"{"apps":[
            {"name":"a","listen":["127.0.0.1:1","127.0.0.1:2"],"targets":["10.0.0.1:1"],"max_connections":100},
            {"name":"b","listen":["127.0.0.1:3"],"targets":["10.0.0.1:1"],"max_connections":50}]}"#;
        let config = Validator::new(Registry::default().names())
            .parse(json)
            .unwrap();
        let d = Demand::of(&config);
        assert_eq!(d.fds, RESERVE + 3 + 2 * 150);
        assert_eq!(d.connections, 150);
    }
}
