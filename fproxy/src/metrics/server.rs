//! Metrics of the HTTP servers fproxy runs (spec apps and the admin API): open
//! connections, connections refused over the cap, and connections closed by a
//! timeout. Labelled by `kind` (`spec` or `admin`) and `app` (the spec app's name;
//! empty for the admin API), so cardinality follows the config.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// `spec` or `admin`.
    pub kind: &'static str,
    pub app: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    pub kind: &'static str,
    pub app: String,
    /// `header` (no complete request head in time), `idle` (no request in time) or
    /// `stall` (requests in flight, but no response bytes written in time).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct ServerMetrics {
    pub open: Family<ServerLabels, Gauge>,
    pub refused: Family<ServerLabels, Counter>,
    pub timeouts: Family<TimeoutLabels, Counter>,
}

/// One server's handles, resolved once.
#[derive(Debug, Clone, Default)]
pub struct ServerHandles {
    pub open: Gauge,
    pub refused: Counter,
    pub header_timeouts: Counter,
    pub idle_timeouts: Counter,
    pub stall_timeouts: Counter,
}

impl ServerMetrics {
    pub(super) fn register(r: &mut Registry) -> ServerMetrics {
        let m = ServerMetrics::default();
        let r = r.sub_registry_with_prefix("server");
        r.register(
            "connections",
            "Open connections of an HTTP server (spec app or admin API)",
            m.open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at once because the server was at its connection cap",
            m.refused.clone(),
        );
        r.register(
            "connection_timeouts",
            "Connections closed by a timeout, by reason (header, idle, stall)",
            m.timeouts.clone(),
        );
        m
    }

    fn labels(kind: &'static str, app: &str) -> ServerLabels {
        ServerLabels {
            kind,
            app: app.into(),
        }
    }

    fn timeout(kind: &'static str, app: &str, reason: &'static str) -> TimeoutLabels {
        TimeoutLabels {
            kind,
            app: app.into(),
            reason,
        }
    }

    /// The handles of the server of `kind` named `app` (empty for the admin API).
    pub fn handles(&self, kind: &'static str, app: &str) -> ServerHandles {
        let l = Self::labels(kind, app);
        ServerHandles {
            open: self.open.get_or_create_owned(&l),
            refused: self.refused.get_or_create_owned(&l),
            header_timeouts: self
                .timeouts
                .get_or_create_owned(&Self::timeout(kind, app, "header")),
            idle_timeouts: self
                .timeouts
                .get_or_create_owned(&Self::timeout(kind, app, "idle")),
            stall_timeouts: self
                .timeouts
                .get_or_create_owned(&Self::timeout(kind, app, "stall")),
        }
    }

    /// Drops a server's series (its app is gone).
    pub fn remove(&self, kind: &'static str, app: &str) {
        let l = Self::labels(kind, app);
        self.open.remove(&l);
        self.refused.remove(&l);
        for reason in ["header", "idle", "stall"] {
            self.timeouts.remove(&Self::timeout(kind, app, reason));
        }
    }
}
