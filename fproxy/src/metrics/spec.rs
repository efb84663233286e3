//! Metrics of spec apps: requests, the cache, upstream, streams and Redis.
//!
//! SDK keys appear only masked (as in logs), and only for keys the app keeps in
//! its store, which `max_sdk_keys` bounds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::AppLabels;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    /// The route family, e.g. `download_config_specs`, `get_config_spec`,
    /// `stream_config_spec`, `health`, `ready`, `not_found`.
    pub route: &'static str,
    /// HTTP status code, or gRPC code name.
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppResultLabels {
    pub app: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisLabels {
    pub app: String,
    /// The operation, e.g. `read`, `write`, `lead`, `publish`.
    pub op: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub app: String,
    /// The SDK key, masked.
    pub key: String,
}

/// Upstream fetch latency: 5 ms to about 40 s.
#[derive(Debug, Clone)]
pub struct FetchBuckets;

impl MetricConstructor<Histogram> for FetchBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.005, 2.0, 14))
    }
}

/// Update propagation: 1 ms to about 33 s.
#[derive(Debug, Clone)]
pub struct PropagationBuckets;

impl MetricConstructor<Histogram> for PropagationBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 16))
    }
}

#[derive(Debug, Clone)]
pub struct SpecMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Lookups of a key's spec: `hit` (served from memory), `miss` (waited for a
    /// first fetch), `rejected` (a key upstream refused).
    pub cache: Family<AppResultLabels, Counter>,
    /// Upstream fetches by result: `updated`, `unchanged`, `unauthorized`, `error`.
    pub fetches: Family<AppResultLabels, Counter>,
    pub fetch_duration: Family<AppLabels, Histogram, FetchBuckets>,
    /// From a new spec arriving (upstream or Redis) to it being sent on a stream.
    pub propagation: Family<AppLabels, Histogram, PropagationBuckets>,
    pub streams: Family<AppLabels, Gauge>,
    pub redis: Family<RedisLabels, Counter>,
    pub leader: Family<AppLabels, Gauge>,
    pub evicted: Family<AppLabels, Counter>,
    /// Per key: the lcut served, whether it has data, when upstream last answered.
    pub key_lcut: Family<KeyLabels, Gauge>,
    pub key_has_data: Family<KeyLabels, Gauge>,
    pub key_last_success: Family<KeyLabels, Gauge>,
}

impl SpecMetrics {
    pub(super) fn register(r: &mut Registry) -> SpecMetrics {
        let m = SpecMetrics {
            requests: Family::default(),
            cache: Family::default(),
            fetches: Family::default(),
            fetch_duration: Family::new_with_constructor(FetchBuckets),
            propagation: Family::new_with_constructor(PropagationBuckets),
            streams: Family::default(),
            redis: Family::default(),
            leader: Family::default(),
            evicted: Family::default(),
            key_lcut: Family::default(),
            key_has_data: Family::default(),
            key_last_success: Family::default(),
        };
        let r = r.sub_registry_with_prefix("spec");
        r.register(
            "requests",
            "Requests by route and status",
            m.requests.clone(),
        );
        r.register(
            "cache_lookups",
            "Spec lookups by result (hit, miss, rejected)",
            m.cache.clone(),
        );
        r.register(
            "upstream_fetches",
            "Upstream fetches by result (updated, unchanged, unauthorized, error)",
            m.fetches.clone(),
        );
        r.register(
            "upstream_fetch_duration_seconds",
            "Upstream fetch latency",
            m.fetch_duration.clone(),
        );
        r.register(
            "update_propagation_seconds",
            "Time from a new spec arriving to it being sent on a stream",
            m.propagation.clone(),
        );
        r.register("streams_active", "Open gRPC streams", m.streams.clone());
        r.register(
            "redis_operations",
            "Redis operations by operation and result",
            m.redis.clone(),
        );
        r.register(
            "redis_leader",
            "1 while this instance leads the Redis fleet",
            m.leader.clone(),
        );
        r.register(
            "evicted_keys",
            "SDK keys evicted over max_sdk_keys",
            m.evicted.clone(),
        );
        r.register(
            "key_lcut",
            "Last config update time (ms) of the spec served for a key",
            m.key_lcut.clone(),
        );
        r.register(
            "key_has_data",
            "1 if the key has a spec to serve, else 0",
            m.key_has_data.clone(),
        );
        r.register(
            "key_last_success_timestamp_seconds",
            "Unix time upstream (or Redis) last answered for a key",
            m.key_last_success.clone(),
        );
        m
    }

    /// Drops a key's series (evicted, or its app is gone).
    pub fn remove_key(&self, app: &str, key: &str) {
        let l = KeyLabels {
            app: app.into(),
            key: key.into(),
        };
        self.key_lcut.remove(&l);
        self.key_has_data.remove(&l);
        self.key_last_success.remove(&l);
    }

    /// Drops the per-app series that need no per-key knowledge.
    pub fn remove_app(&self, app: &str) {
        let l = AppLabels::new(app);
        self.fetch_duration.remove(&l);
        self.propagation.remove(&l);
        self.streams.remove(&l);
        self.leader.remove(&l);
        self.evicted.remove(&l);
    }
}
