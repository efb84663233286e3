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
    /// The route: one of [`HTTP_ROUTES`] or [`GRPC_ROUTES`].
    pub route: &'static str,
    /// HTTP status code, or gRPC code name. A stream is counted when it ends, with
    /// the code it ended with (`UNAVAILABLE` at its maximum age or on shutdown,
    /// `CANCELLED` when the client left), or when it is refused.
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
    /// The operation: one of [`REDIS_OPS`]. `write` includes the publish to
    /// followers (one script); `lead` is a leadership step (take or renew).
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
    /// first fetch), `rejected` (a key upstream refused: recently rejected, or its
    /// data dropped).
    pub cache: Family<AppResultLabels, Counter>,
    /// Upstream fetches by result: `updated`, `unchanged` (including a payload no
    /// newer than the one held), `unauthorized`, `error`.
    pub fetches: Family<AppResultLabels, Counter>,
    pub fetch_duration: Family<AppLabels, Histogram, FetchBuckets>,
    /// From a new spec arriving (upstream or Redis) to it being sent on a stream.
    pub propagation: Family<AppLabels, Histogram, PropagationBuckets>,
    /// Streams admitted (under `max_streams`) and not ended yet.
    pub streams: Family<AppLabels, Gauge>,
    pub redis: Family<RedisLabels, Counter>,
    pub leader: Family<AppLabels, Gauge>,
    pub evicted: Family<AppLabels, Counter>,
    /// Requests for a new SDK key refused because the app's
    /// `new_key_fetches_per_second` budget was spent (answered 503 / UNAVAILABLE
    /// without asking upstream).
    pub new_key_refusals: Family<AppLabels, Counter>,
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
            new_key_refusals: Family::default(),
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
            "new_key_refusals",
            "Requests for a new SDK key refused over new_key_fetches_per_second",
            m.new_key_refusals.clone(),
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

    /// Handles for one app's per-app series, resolved once when the app starts.
    pub fn app(&self, app: &str) -> SpecHandles {
        let l = AppLabels::new(app);
        let result = |family: &Family<AppResultLabels, Counter>, result| {
            family.get_or_create_owned(&AppResultLabels {
                app: app.into(),
                result,
            })
        };
        SpecHandles {
            requests: REQUESTS
                .iter()
                .map(|&(route, status)| {
                    let c = self.requests.get_or_create_owned(&RequestLabels {
                        app: app.into(),
                        route,
                        status: status.into(),
                    });
                    (route, status, c)
                })
                .collect(),
            hit: result(&self.cache, "hit"),
            miss: result(&self.cache, "miss"),
            rejected: result(&self.cache, "rejected"),
            updated: result(&self.fetches, "updated"),
            unchanged: result(&self.fetches, "unchanged"),
            unauthorized: result(&self.fetches, "unauthorized"),
            fetch_error: result(&self.fetches, "error"),
            fetch_duration: self.fetch_duration.get_or_create_owned(&l),
            propagation: self.propagation.get_or_create_owned(&l),
            streams: self.streams.get_or_create_owned(&l),
            evicted: self.evicted.get_or_create_owned(&l),
            new_key_refused: self.new_key_refusals.get_or_create_owned(&l),
            keys: KeyMetrics {
                app: app.into(),
                families: self.clone(),
            },
        }
    }

    /// Handles for one app's Redis series; only apps with a Redis cache have them.
    pub fn redis(&self, app: &str) -> RedisHandles {
        let op = |op, result| {
            self.redis.get_or_create_owned(&RedisLabels {
                app: app.into(),
                op,
                result,
            })
        };
        RedisHandles {
            ops: REDIS_OPS.map(|o| (o, op(o, "ok"), op(o, "error"))),
            leader: self.leader.get_or_create_owned(&AppLabels::new(app)),
        }
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

    /// Drops the per-app series (keys go one by one with [`SpecMetrics::remove_key`]).
    pub fn remove_app(&self, app: &str) {
        let l = AppLabels::new(app);
        self.fetch_duration.remove(&l);
        self.propagation.remove(&l);
        self.streams.remove(&l);
        self.leader.remove(&l);
        self.evicted.remove(&l);
        self.new_key_refusals.remove(&l);
        // Every pair a spec app can count, not only those created up front.
        let routes = HTTP_ROUTES
            .iter()
            .flat_map(|r| HTTP_STATUSES.map(|s| (*r, s)));
        let grpc = GRPC_ROUTES.iter().flat_map(|r| GRPC_CODES.map(|s| (*r, s)));
        for (route, status) in routes.chain(grpc) {
            self.requests.remove(&RequestLabels {
                app: app.into(),
                route,
                status: status.into(),
            });
        }
        for result in ["hit", "miss", "rejected"] {
            self.cache.remove(&AppResultLabels {
                app: app.into(),
                result,
            });
        }
        for result in ["updated", "unchanged", "unauthorized", "error"] {
            self.fetches.remove(&AppResultLabels {
                app: app.into(),
                result,
            });
        }
        for op in REDIS_OPS {
            for result in ["ok", "error"] {
                self.redis.remove(&RedisLabels {
                    app: app.into(),
                    op,
                    result,
                });
            }
        }
    }
}

/// HTTP routes of a spec app.
pub const HTTP_ROUTES: [&str; 5] = [
    "download_config_specs",
    "health",
    "ready",
    "startup",
    "not_found",
];

/// Every status the HTTP routes answer with.
pub const HTTP_STATUSES: [&str; 4] = ["200", "401", "404", "503"];

/// gRPC methods of a spec app.
pub const GRPC_ROUTES: [&str; 2] = ["get_config_spec", "stream_config_spec"];

/// gRPC code names, indexed by code number.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The (route, status) pairs a spec app answers with, created up front so they
/// export 0 before the first request and cost no lookup when counted.
const REQUESTS: [(&str, &str); 16] = [
    ("download_config_specs", "200"),
    ("download_config_specs", "401"),
    ("download_config_specs", "503"),
    ("health", "200"),
    ("ready", "200"),
    ("ready", "503"),
    ("startup", "200"),
    ("startup", "503"),
    ("not_found", "404"),
    ("get_config_spec", "OK"),
    ("get_config_spec", "PERMISSION_DENIED"),
    ("get_config_spec", "UNAVAILABLE"),
    ("stream_config_spec", "CANCELLED"),
    ("stream_config_spec", "PERMISSION_DENIED"),
    ("stream_config_spec", "UNAVAILABLE"),
    ("stream_config_spec", "RESOURCE_EXHAUSTED"),
];

/// Redis operations of the shared cache.
pub const REDIS_OPS: [&str; 8] = [
    "connect",
    "lead",
    "read",
    "write",
    "delete",
    "register",
    "registered",
    "subscribe",
];

/// Per-app handles of a spec app (see [`SpecMetrics`] for what each counts).
#[derive(Debug, Clone)]
pub struct SpecHandles {
    requests: Vec<(&'static str, &'static str, Counter)>,
    pub hit: Counter,
    pub miss: Counter,
    pub rejected: Counter,
    pub updated: Counter,
    pub unchanged: Counter,
    pub unauthorized: Counter,
    pub fetch_error: Counter,
    pub fetch_duration: Histogram,
    pub propagation: Histogram,
    pub streams: Gauge,
    pub evicted: Counter,
    pub new_key_refused: Counter,
    pub keys: KeyMetrics,
}

impl SpecHandles {
    /// Counts a request to `route` answered with `status` (an HTTP code or a gRPC
    /// code name).
    pub fn request(&self, route: &'static str, status: &str) {
        match self
            .requests
            .iter()
            .find(|(r, s, _)| *r == route && *s == status)
        {
            Some((_, _, c)) => {
                c.inc();
            }
            // Not a pair created up front: rare, so a lookup is fine. (`keys`
            // holds the app's name and families.)
            None => {
                self.keys
                    .families
                    .requests
                    .get_or_create(&RequestLabels {
                        app: self.keys.app.clone(),
                        route,
                        status: status.into(),
                    })
                    .inc();
            }
        }
    }
}

/// The name of a gRPC code, as in the gRPC spec (`PERMISSION_DENIED`).
pub fn grpc_code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|i| GRPC_CODES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Creates and removes one app's per-key series.
#[derive(Debug, Clone)]
pub struct KeyMetrics {
    app: String,
    families: SpecMetrics,
}

impl KeyMetrics {
    /// Handles for a key's series; `masked` must be the masked key, never the key.
    pub fn key(&self, masked: &str) -> KeyHandles {
        let l = KeyLabels {
            app: self.app.clone(),
            key: masked.into(),
        };
        let f = &self.families;
        KeyHandles {
            lcut: f.key_lcut.get_or_create_owned(&l),
            has_data: f.key_has_data.get_or_create_owned(&l),
            last_success: f.key_last_success.get_or_create_owned(&l),
        }
    }

    pub fn remove(&self, masked: &str) {
        self.families.remove_key(&self.app, masked);
    }
}

/// One key's gauges. Handles of a removed key update nothing that is exported, so
/// a fetch finishing after its key was evicted cannot bring the series back.
#[derive(Debug, Clone)]
pub struct KeyHandles {
    pub lcut: Gauge,
    pub has_data: Gauge,
    pub last_success: Gauge,
}

/// One app's Redis handles.
#[derive(Debug, Clone)]
pub struct RedisHandles {
    /// Per operation of [`REDIS_OPS`]: its `ok` and `error` counters.
    ops: [(&'static str, Counter, Counter); REDIS_OPS.len()],
    pub leader: Gauge,
}

impl RedisHandles {
    /// Counts one operation (one of [`REDIS_OPS`]).
    pub fn op(&self, op: &'static str, ok: bool) {
        if let Some((_, good, bad)) = self.ops.iter().find(|(o, _, _)| *o == op) {
            if ok {
                good.inc();
            } else {
                bad.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn grpc_code_names_follow_the_code_numbers() {
        use tonic::Code;
        for (code, name) in [
            (Code::Ok, "OK"),
            (Code::Cancelled, "CANCELLED"),
            (Code::PermissionDenied, "PERMISSION_DENIED"),
            (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
            (Code::Unavailable, "UNAVAILABLE"),
            (Code::Unauthenticated, "UNAUTHENTICATED"),
        ] {
            assert_eq!(grpc_code_name(code as i32), name);
        }
        assert_eq!(grpc_code_name(99), "UNKNOWN");
        assert_eq!(grpc_code_name(-1), "UNKNOWN");
    }

    /// Whatever an app's handles created, removing its keys and the app leaves
    /// none of its series behind (and another app's alone).
    #[test]
    fn removal_covers_every_series_an_app_creates() {
        let m = Metrics::new();
        for app in ["gone", "stays"] {
            let h = m.spec.app(app);
            m.spec.redis(app).op("write", true);
            h.request("stream_config_spec", "DEADLINE_EXCEEDED");
            h.keys.key("v1:secret-t…").has_data.set(1);
        }
        m.spec.remove_key("gone", "v1:secret-t…");
        m.spec.remove_app("gone");
        let text = m.encode();
        assert!(!text.contains(r#"app="gone""#), "{text}");
        assert!(text.contains(r#"app="stays""#), "{text}");
    }
}
