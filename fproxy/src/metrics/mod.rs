//! Prometheus metrics, in the text format served at the admin API's `/metrics`.
//!
//! One [`Metrics`] per daemon owns the registry and every metric family; apps get it
//! (an `Arc`) when they start. Families are grouped by what they describe:
//! [`DaemonMetrics`] (config reloads, rollouts, DNS), [`tcp::TcpMetrics`] and
//! [`spec::SpecMetrics`]. Every metric is documented in `docs/observability.md`.
//!
//! Hot paths never look a label set up: an app resolves the handles it needs
//! (counters and gauges are shared atomics) when it builds a routing snapshot, and
//! removes its series when a target or app goes, so label cardinality follows the
//! config, never the clients, and a removed app leaves no series with its name.

pub mod server;
pub mod spec;
pub mod tcp;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a per-app series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

impl AppLabels {
    pub fn new(app: &str) -> Self {
        AppLabels { app: app.into() }
    }
}

/// Labels of a reload outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Labels of rollout steps. No `app` label: a counter of removals must outlive
/// the app, and series of every name ever used would grow without bound (the
/// names of each rollout are in the logs and `/status`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// `added`, `changed` or `removed`.
    pub action: &'static str,
}

/// Labels of a DNS lookup.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// The name looked up (from the config, so bounded).
    pub host: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Config reloads, rollouts, listeners and DNS: what the daemon itself does.
#[derive(Debug, Clone, Default)]
pub struct DaemonMetrics {
    /// Reloads by result: `applied`, `unchanged`, `refused`.
    pub reloads: Family<ResultLabels, Counter>,
    /// 1 when the last config seen was applied (or unchanged), 0 when refused.
    pub last_reload_successful: Gauge,
    /// Unix time of the last applied config.
    pub last_reload_success_timestamp: Gauge,
    /// Rollout counter of the running config (1 for the first).
    pub config_version: Gauge,
    /// Apps added, changed and removed by rollouts.
    pub rollouts: Family<RolloutLabels, Counter>,
    /// Accept loops restarted after dying.
    pub listener_restarts: Family<AppLabels, Counter>,
    /// DNS lookups of target names.
    pub dns_lookups: Family<DnsLabels, Counter>,
}

/// Every metric of one daemon, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub daemon: DaemonMetrics,
    pub tcp: tcp::TcpMetrics,
    pub spec: spec::SpecMetrics,
    /// HTTP servers: spec apps and the admin API.
    pub server: server::ServerMetrics,
    /// Running instances per app name. An app removed and re-added while the old
    /// instance drains shares its labels with the new one, so only the last to go
    /// may remove them.
    owners: Mutex<HashMap<String, usize>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fproxy");
        let daemon = DaemonMetrics::default();
        let r = &mut registry;
        r.register(
            "config_reloads",
            "Config versions seen, by result (applied, unchanged, refused)",
            daemon.reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 if the last config seen was applied or unchanged, 0 if it was refused",
            daemon.last_reload_successful.clone(),
        );
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last applied config",
            daemon.last_reload_success_timestamp.clone(),
        );
        r.register(
            "config_version",
            "Rollout number of the running config (1 for the first)",
            daemon.config_version.clone(),
        );
        r.register(
            "app_rollouts",
            "Apps rolled out, by action (added, changed, removed)",
            daemon.rollouts.clone(),
        );
        r.register(
            "listener_restarts",
            "Accept loops restarted after they died",
            daemon.listener_restarts.clone(),
        );
        r.register(
            "dns_lookups",
            "DNS lookups of target names, by result (ok, error)",
            daemon.dns_lookups.clone(),
        );
        let tcp = tcp::TcpMetrics::register(r);
        let spec = spec::SpecMetrics::register(r);
        let server = server::ServerMetrics::register(r);
        Metrics {
            registry,
            daemon,
            tcp,
            spec,
            server,
            owners: Mutex::new(HashMap::new()),
        }
    }

    /// An app instance of `kind` named `app` starts writing series.
    pub fn claim_app(&self, kind: &str, app: &str) {
        let mut owners = crate::sync::lock(&self.owners);
        *owners.entry(format!("{kind}/{app}")).or_default() += 1;
    }

    /// An app instance of `kind` named `app` is gone. True when it was the last
    /// one, so its series may be removed.
    pub fn release_app(&self, kind: &str, app: &str) -> bool {
        let key = format!("{kind}/{app}");
        let mut owners = crate::sync::lock(&self.owners);
        match owners.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                owners.remove(&key);
                true
            }
        }
    }

    /// Everything, in the Prometheus text format (version 0.0.4 compatible, with the
    /// OpenMetrics `# EOF` trailer).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_instance_of_an_app_may_remove_its_series() {
        let m = Metrics::new();
        m.claim_app("tcp", "a");
        // Removed, then re-added while the first instance still drains.
        m.claim_app("tcp", "a");
        // A spec app of the same name is counted apart.
        m.claim_app("spec", "a");
        assert!(
            !m.release_app("tcp", "a"),
            "the re-added instance still runs"
        );
        assert!(m.release_app("tcp", "a"));
        assert!(m.release_app("spec", "a"));
        // Releasing what was never claimed (an embedder's hand-built app) removes.
        assert!(m.release_app("tcp", "b"));
    }
}
