//! Metrics of TCP apps: per app, per target, and per resolved endpoint.
//!
//! Traffic is counted per configured target (`target` is the address as written in
//! config, a bounded set); health is per endpoint (`address` is what a target name
//! resolved to), since each endpoint is checked and ejected on its own.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::AppLabels;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub app: String,
    /// `limit` (over max_connections), `no_target` (no target connected) or
    /// `local` (this process ran out of file descriptors, buffers or local ports
    /// while connecting: not the targets' fault).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub app: String,
    pub target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub app: String,
    pub target: String,
    /// `refused`, `timeout` or `resolve`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub app: String,
    pub target: String,
    /// `in` (client to target) or `out` (target to client).
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub app: String,
    pub target: String,
    /// How the connection ended: `closed`, `idle_timeout`, `client_error`,
    /// `target_error`, `drain_timeout`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub app: String,
    pub target: String,
    pub address: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub app: String,
    pub target: String,
    pub address: String,
    /// `up` or `down`.
    pub to: &'static str,
}

/// Connect latency buckets: 100 µs to about 3.3 s.
#[derive(Debug, Clone)]
pub struct ConnectBuckets;

impl MetricConstructor<Histogram> for ConnectBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 16))
    }
}

/// Every ending a connection can have, so each target's close counters can be
/// resolved up front.
pub const CLOSE_REASONS: [&str; 5] = [
    "closed",
    "idle_timeout",
    "client_error",
    "target_error",
    "drain_timeout",
];

const FAILURE_REASONS: [&str; 3] = ["refused", "timeout", "resolve"];

#[derive(Debug, Clone)]
pub struct TcpMetrics {
    pub accepted: Family<AppLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    pub active: Family<AppLabels, Gauge>,
    pub retries: Family<AppLabels, Counter>,
    pub target_connections: Family<TargetLabels, Counter>,
    pub target_active: Family<TargetLabels, Gauge>,
    pub connect_attempts: Family<TargetLabels, Counter>,
    pub connect_failures: Family<FailureLabels, Counter>,
    pub connect_duration: Family<TargetLabels, Histogram, ConnectBuckets>,
    pub bytes: Family<BytesLabels, Counter>,
    pub closed: Family<CloseLabels, Counter>,
    pub healthy: Family<EndpointLabels, Gauge>,
    pub ejected: Family<EndpointLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub ejections: Family<EndpointLabels, Counter>,
}

impl TcpMetrics {
    pub(super) fn register(r: &mut Registry) -> TcpMetrics {
        let m = TcpMetrics {
            accepted: Family::default(),
            refused: Family::default(),
            active: Family::default(),
            retries: Family::default(),
            target_connections: Family::default(),
            target_active: Family::default(),
            connect_attempts: Family::default(),
            connect_failures: Family::default(),
            connect_duration: Family::new_with_constructor(ConnectBuckets),
            bytes: Family::default(),
            closed: Family::default(),
            healthy: Family::default(),
            ejected: Family::default(),
            transitions: Family::default(),
            ejections: Family::default(),
        };
        let r = r.sub_registry_with_prefix("tcp");
        r.register(
            "connections_accepted",
            "Client connections accepted",
            m.accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections reset at once, by reason (limit, no_target, local)",
            m.refused.clone(),
        );
        r.register(
            "connections_active",
            "Client connections open now",
            m.active.clone(),
        );
        r.register(
            "connect_retries",
            "Failed connect attempts that were followed by another attempt or target",
            m.retries.clone(),
        );
        r.register(
            "target_connections",
            "Connections forwarded to a target",
            m.target_connections.clone(),
        );
        r.register(
            "target_connections_active",
            "Connections open to a target now",
            m.target_active.clone(),
        );
        r.register(
            "connect_attempts",
            "Connect attempts to a target (every address tried counts)",
            m.connect_attempts.clone(),
        );
        r.register(
            "connect_failures",
            "Failed connect attempts, by reason (refused, timeout, resolve)",
            m.connect_failures.clone(),
        );
        r.register(
            "connect_duration_seconds",
            "Time to connect to a target (successful attempts)",
            m.connect_duration.clone(),
        );
        r.register(
            "bytes",
            "Bytes forwarded, by direction (in: client to target, out: target to client)",
            m.bytes.clone(),
        );
        r.register(
            "connections_closed",
            "Forwarded connections that ended, by reason",
            m.closed.clone(),
        );
        r.register(
            "endpoint_healthy",
            "1 if the endpoint passes its health checks (or has none), else 0",
            m.healthy.clone(),
        );
        r.register(
            "endpoint_ejected",
            "1 while the endpoint is ejected after consecutive connect failures",
            m.ejected.clone(),
        );
        r.register(
            "health_transitions",
            "Health check verdict changes, by new state (up, down)",
            m.transitions.clone(),
        );
        r.register(
            "ejections",
            "Passive ejections of an endpoint",
            m.ejections.clone(),
        );
        m
    }

    /// Handles for one app's per-app series.
    pub fn app(&self, app: &str) -> AppHandles {
        let l = AppLabels::new(app);
        AppHandles {
            accepted: self.accepted.get_or_create_owned(&l),
            active: self.active.get_or_create_owned(&l),
            retries: self.retries.get_or_create_owned(&l),
            refused_limit: self.refused.get_or_create_owned(&RefusedLabels {
                app: app.into(),
                reason: "limit",
            }),
            refused_no_target: self.refused.get_or_create_owned(&RefusedLabels {
                app: app.into(),
                reason: "no_target",
            }),
            refused_local: self.refused.get_or_create_owned(&RefusedLabels {
                app: app.into(),
                reason: "local",
            }),
        }
    }

    /// Handles for one target's series.
    pub fn target(&self, app: &str, target: &str) -> TargetHandles {
        let l = TargetLabels {
            app: app.into(),
            target: target.into(),
        };
        let failure = |reason| {
            self.connect_failures.get_or_create_owned(&FailureLabels {
                app: app.into(),
                target: target.into(),
                reason,
            })
        };
        let bytes = |direction| {
            self.bytes.get_or_create_owned(&BytesLabels {
                app: app.into(),
                target: target.into(),
                direction,
            })
        };
        TargetHandles {
            connections: self.target_connections.get_or_create_owned(&l),
            active: self.target_active.get_or_create_owned(&l),
            attempts: self.connect_attempts.get_or_create_owned(&l),
            refused: failure("refused"),
            timeout: failure("timeout"),
            resolve: failure("resolve"),
            connect_duration: self.connect_duration.get_or_create_owned(&l),
            bytes_in: bytes("in"),
            bytes_out: bytes("out"),
            closed: CLOSE_REASONS.map(|reason| {
                self.closed.get_or_create_owned(&CloseLabels {
                    app: app.into(),
                    target: target.into(),
                    reason,
                })
            }),
        }
    }

    /// Handles for one endpoint's health series.
    pub fn endpoint(&self, app: &str, target: &str, address: &str) -> EndpointHandles {
        let l = EndpointLabels {
            app: app.into(),
            target: target.into(),
            address: address.into(),
        };
        let transition = |to| {
            self.transitions.get_or_create_owned(&TransitionLabels {
                app: app.into(),
                target: target.into(),
                address: address.into(),
                to,
            })
        };
        EndpointHandles {
            healthy: self.healthy.get_or_create_owned(&l),
            ejected: self.ejected.get_or_create_owned(&l),
            ejections: self.ejections.get_or_create_owned(&l),
            up: transition("up"),
            down: transition("down"),
        }
    }

    /// Drops a target's series (it left the config).
    pub fn remove_target(&self, app: &str, target: &str) {
        let l = TargetLabels {
            app: app.into(),
            target: target.into(),
        };
        self.target_connections.remove(&l);
        self.target_active.remove(&l);
        self.connect_attempts.remove(&l);
        self.connect_duration.remove(&l);
        for reason in FAILURE_REASONS {
            self.connect_failures.remove(&FailureLabels {
                app: app.into(),
                target: target.into(),
                reason,
            });
        }
        for direction in ["in", "out"] {
            self.bytes.remove(&BytesLabels {
                app: app.into(),
                target: target.into(),
                direction,
            });
        }
        for reason in CLOSE_REASONS {
            self.closed.remove(&CloseLabels {
                app: app.into(),
                target: target.into(),
                reason,
            });
        }
    }

    /// Drops an endpoint's series (its target left, or DNS stopped returning it).
    pub fn remove_endpoint(&self, app: &str, target: &str, address: &str) {
        let l = EndpointLabels {
            app: app.into(),
            target: target.into(),
            address: address.into(),
        };
        self.healthy.remove(&l);
        self.ejected.remove(&l);
        self.ejections.remove(&l);
        for to in ["up", "down"] {
            self.transitions.remove(&TransitionLabels {
                app: app.into(),
                target: target.into(),
                address: address.into(),
                to,
            });
        }
    }

    /// Drops the per-app series (the app is gone; its targets were removed one by one).
    pub fn remove_app(&self, app: &str) {
        let l = AppLabels::new(app);
        self.accepted.remove(&l);
        self.active.remove(&l);
        self.retries.remove(&l);
        for reason in ["limit", "no_target", "local"] {
            self.refused.remove(&RefusedLabels {
                app: app.into(),
                reason,
            });
        }
    }
}

/// Per-app handles, resolved once per app.
#[derive(Debug, Clone)]
pub struct AppHandles {
    pub accepted: Counter,
    pub active: Gauge,
    pub retries: Counter,
    pub refused_limit: Counter,
    pub refused_no_target: Counter,
    pub refused_local: Counter,
}

/// Per-target handles, resolved when a target enters the config.
#[derive(Debug, Clone)]
pub struct TargetHandles {
    pub connections: Counter,
    pub active: Gauge,
    pub attempts: Counter,
    pub refused: Counter,
    pub timeout: Counter,
    pub resolve: Counter,
    pub connect_duration: Histogram,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Indexed like [`CLOSE_REASONS`].
    pub closed: [Counter; 5],
}

impl TargetHandles {
    /// Counts a connection's end under `reason` (one of [`CLOSE_REASONS`]).
    pub fn close(&self, reason: &str) {
        if let Some(i) = CLOSE_REASONS.iter().position(|r| *r == reason) {
            self.closed[i].inc();
        }
    }
}

/// Per-endpoint health handles.
#[derive(Debug, Clone)]
pub struct EndpointHandles {
    pub healthy: Gauge,
    pub ejected: Gauge,
    pub ejections: Counter,
    pub up: Counter,
    pub down: Counter,
}
