//! The spec app: a Statsig-compatible config-spec cache.
//!
//! SDKs ask for `download_config_specs` by SDK key; the app answers from memory and
//! keeps every key fresh from upstream in the background (see the `poll` module). A reload
//! swaps the app's settings (upstream, intervals, limits) atomically and keeps its
//! store, so nothing cached is lost and open connections carry on.

mod budget;
pub mod grpc;
mod http;
pub mod key;
mod poll;
pub mod redis;
pub mod route;
pub mod store;
pub mod upstream;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::status::{AppStatus, KeyStatus, SpecStatus};
use crate::app::{App, BoxFuture};
use crate::config::{AppConfig, Cache, Kind, SpecConfig};
use crate::listener::{BoundSet, Handler, Listener, Listeners};
use crate::loglimit::LogLimit;
use crate::metrics::spec::{RedisHandles, SpecHandles};
use crate::metrics::Metrics;
use crate::server::{ConnCap, Stop, Timeouts};
use store::{Api, Entry, Key, Lookup, Spec, Store, Upstream as State};
use upstream::Upstream;

/// Settings of one config version, swapped whole on reload.
pub(crate) struct Settings {
    /// The whole app config these settings come from: kept in the same snapshot
    /// so a reader never sees the config of one version with the settings of
    /// another.
    pub app: Arc<AppConfig>,
    pub spec: SpecConfig,
    /// The client, or why it could not be built (every fetch then fails with it).
    pub upstream: Result<Upstream, String>,
    /// Bounds upstream fetches in flight.
    pub fetches: Arc<Semaphore>,
    /// Bounds first fetches of keys the app does not know, per second.
    pub new_keys: Arc<budget::Budget>,
    /// The shared cache, when configured, and the token that stops its tasks.
    pub redis: Option<(Arc<redis::RedisCache>, CancellationToken)>,
    /// The warm keys as a set, built once per config: eviction asks it for
    /// every key in the map on every new key.
    pub warm: HashSet<Key>,
}

impl Settings {
    /// Reuses `previous`'s client and limit where the config left them unchanged.
    /// `redis_metrics` gives a new Redis cache its handles.
    fn new(
        app: Arc<AppConfig>,
        previous: Option<&Settings>,
        redis_metrics: impl FnOnce() -> RedisHandles,
    ) -> Settings {
        let spec = spec_config(&app);
        let upstream = match previous {
            Some(p)
                if p.spec.upstream == spec.upstream
                    && p.spec.request_timeout == spec.request_timeout =>
            {
                p.upstream.clone()
            }
            _ => Upstream::new(&spec.upstream, spec.request_timeout).map_err(|e| e.to_string()),
        };
        let fetches = match previous {
            Some(p) if p.spec.fetch_concurrency == spec.fetch_concurrency => p.fetches.clone(),
            _ => Arc::new(Semaphore::new(spec.fetch_concurrency)),
        };
        let new_keys = match previous {
            Some(p) if p.spec.new_key_fetches_per_second == spec.new_key_fetches_per_second => {
                p.new_keys.clone()
            }
            // The burst is one second's worth: enough for a fleet of SDKs with a
            // few keys starting at once, nowhere near a flood.
            _ => Arc::new(budget::Budget::new(
                spec.new_key_fetches_per_second,
                spec.new_key_fetches_per_second,
            )),
        };
        let redis = match (&spec.cache, previous.and_then(|p| p.redis.as_ref())) {
            (Cache::Redis(cfg), Some((r, stop))) if r.config() == cfg => {
                Some((r.clone(), stop.clone()))
            }
            (Cache::Redis(cfg), _) => Some((
                redis::RedisCache::new(cfg.clone(), redis_metrics()),
                CancellationToken::new(),
            )),
            (Cache::Local, _) => None,
        };
        let warm = warm_keys(&spec).collect();
        Settings {
            app,
            warm,
            spec,
            upstream,
            fetches,
            new_keys,
            redis,
        }
    }

    pub fn cache(&self) -> Option<&Arc<redis::RedisCache>> {
        self.redis.as_ref().map(|(r, _)| r)
    }
}

/// Warm keys are v1 keys (what most server SDKs ask for).
fn warm_keys(spec: &SpecConfig) -> impl Iterator<Item = Key> + '_ {
    spec.warm_keys.iter().map(|k| Key {
        api: Api::V1,
        sdk_key: k.clone(),
    })
}

/// State shared by the app's listeners, connections and poller.
pub(crate) struct Shared {
    /// The app's config and what was built from it, swapped as one.
    pub settings: ArcSwap<Settings>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// This app's series, resolved once.
    pub stats: SpecHandles,
    connections: TaskTracker,
    /// Open connections, HTTP and gRPC together, capped by `max_connections`.
    conns: Arc<ConnCap>,
    /// Open gRPC streams (capped by `max_streams`).
    streams: AtomicUsize,
    /// Wakes the poller when a reload changed the settings.
    reconfigured: tokio::sync::Notify,
    /// Asks keep-alive connections to finish their request and close.
    closing: CancellationToken,
    /// Drain time is up: close whatever is left.
    force_close: CancellationToken,
}

impl Shared {
    pub fn name(&self) -> String {
        self.settings.load().app.name.clone()
    }
}

fn spec_config(app: &AppConfig) -> SpecConfig {
    match &app.kind {
        Kind::Spec(s) => s.clone(),
        // The daemon only hands a spec app spec configs.
        Kind::Tcp(_) => unreachable!("a tcp config reached a spec app"),
    }
}

/// A running spec app.
pub struct SpecApp {
    shared: Arc<Shared>,
    listeners: Listeners,
    poller: CancellationToken,
}

impl SpecApp {
    pub fn start(app: Arc<AppConfig>, bound: BoundSet, metrics: Arc<Metrics>) -> SpecApp {
        let settings = Settings::new(app.clone(), None, || metrics.spec.redis(&app.name));
        metrics.claim_app("spec", &app.name);
        let stats = metrics.spec.app(&app.name);
        let conns = ConnCap::new(metrics.server.handles("spec", &app.name));
        let shared = Arc::new(Shared {
            settings: ArcSwap::from_pointee(settings),
            store: Store::new(Some(stats.keys.clone())),
            metrics,
            stats,
            connections: TaskTracker::new(),
            conns,
            streams: AtomicUsize::new(0),
            reconfigured: tokio::sync::Notify::new(),
            closing: CancellationToken::new(),
            force_close: CancellationToken::new(),
        });
        let poller = CancellationToken::new();
        tokio::spawn(poll::run(shared.clone(), poller.clone()));
        start_cache(&shared, None);
        let mut app = SpecApp {
            shared,
            listeners: Listeners::default(),
            poller,
        };
        app.warm();
        app.start_listeners(bound);
        app
    }

    /// Starts fetching warm keys not yet known.
    fn warm(&self) {
        let settings = self.shared.settings.load();
        for key in warm_keys(&settings.spec) {
            if let Lookup::Created(e) = self
                .shared
                .store
                .lookup(&key, settings.spec.rejected_key_ttl)
            {
                tokio::spawn(poll::fetch(self.shared.clone(), e));
            }
        }
    }

    fn start_listeners(&mut self, bound: BoundSet) {
        let name = self.shared.name();
        let routes = grpc::routes(self.shared.clone());
        self.listeners.start(&name, bound, |addr| {
            Arc::new(SpecHandler {
                shared: self.shared.clone(),
                addr,
                grpc: routes.clone(),
            })
        });
    }
}

impl Drop for SpecApp {
    /// Dropped without a shutdown (an embedder dropping the daemon), the poller
    /// would otherwise run on forever.
    fn drop(&mut self) {
        self.poller.cancel();
        if let Some((_, stop)) = &self.shared.settings.load().redis {
            stop.cancel();
        }
    }
}

impl App for SpecApp {
    fn config(&self) -> Arc<AppConfig> {
        self.shared.settings.load().app.clone()
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs()
    }

    fn active_connections(&self) -> usize {
        self.shared.conns.open()
    }

    fn status(&self) -> AppStatus {
        let r = readiness(&self.shared, true);
        let problems = r.keys.iter().filter_map(|k| k.problem.clone()).collect();
        AppStatus {
            name: self.shared.name(),
            kind: "spec".into(),
            listeners: self.listeners.local_addrs(),
            connections: self.active_connections(),
            ready: r.ready,
            problems,
            tcp: None,
            spec: Some(SpecStatus {
                cache: r.cache.backend.into(),
                cache_connected: r.cache.connected,
                leader: r.cache.leader,
                cache_error: r.cache.error,
                streams: self.shared.streams.load(Ordering::Relaxed),
                keys: r.keys,
            }),
        }
    }

    fn update(&mut self, config: Arc<AppConfig>, added: BoundSet) -> Vec<Listener> {
        let old = self.shared.settings.load_full();
        let metrics = &self.shared.metrics;
        let settings = Settings::new(config.clone(), Some(&old), || {
            metrics.spec.redis(&config.name)
        });
        self.shared.settings.store(Arc::new(settings));
        start_cache(&self.shared, Some(&old));
        self.shared.reconfigured.notify_one();
        let addresses = config.addresses();
        self.warm();
        self.start_listeners(added);
        self.listeners.remove_except(&addresses)
    }

    fn stop_accepting(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.listeners.retire_all())
    }

    fn shutdown(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.listeners.retire_all().await;
            self.poller.cancel();
            if let Some((_, stop)) = &self.shared.settings.load().redis {
                stop.cancel();
            }
            let shared = &self.shared;
            // Keep-alive connections finish their request in flight, then close.
            shared.closing.cancel();
            let drain = shared.settings.load().app.drain_timeout;
            crate::app::drain(
                &shared.name(),
                &shared.connections,
                drain,
                &shared.force_close,
            )
            .await;
            // Its series go with it (unless a new instance of the same name runs);
            // a re-added app starts from zero.
            if shared.metrics.release_app("spec", &shared.name()) {
                shared.store.forget_all_series();
                shared.metrics.spec.remove_app(&shared.name());
                shared.metrics.server.remove("spec", &shared.name());
            }
        })
    }
}

/// Starts the tasks of the settings' Redis cache unless `old` already ran them, and
/// stops those of a cache the new settings dropped.
fn start_cache(shared: &Arc<Shared>, old: Option<&Settings>) {
    let settings = shared.settings.load();
    let new = settings.redis.as_ref();
    if let Some((old_cache, stop)) = old.and_then(|o| o.redis.as_ref()) {
        if new.is_none_or(|(n, _)| !Arc::ptr_eq(n, old_cache)) {
            stop.cancel();
            // A new cache's first leadership step sets the gauge again.
            old_cache.resign();
        }
    }
    let Some((cache, stop)) = new else { return };
    if old
        .and_then(|o| o.redis.as_ref())
        .is_some_and(|(o, _)| Arc::ptr_eq(o, cache))
    {
        return;
    }
    tokio::spawn(cache.clone().connect(stop.clone()));
    tokio::spawn(poll::lead(shared.clone(), cache.clone(), stop.clone()));
    let follower = shared.clone();
    tokio::spawn(cache.clone().follow(stop.clone(), move |hash_key| {
        poll::on_announced(&follower, &hash_key);
    }));
}

/// Serves one listen address: gRPC when the app's current config lists it in
/// `grpc_listen`, else HTTP/1.1 and HTTP/2. Decided per connection, so an address
/// that changes role in a reload is served right without rebinding.
struct SpecHandler {
    shared: Arc<Shared>,
    /// The address as configured.
    addr: SocketAddr,
    grpc: tonic::service::Routes,
}

impl Handler for SpecHandler {
    fn handle(&self, stream: TcpStream, _peer: SocketAddr) {
        let settings = self.shared.settings.load();
        let (app, spec) = (&settings.app, &settings.spec);
        let is_grpc = spec.grpc_listen.contains(&self.addr);
        // Over the cap the connection is dropped (closed) here, at once.
        let Some(guard) = self
            .shared
            .conns
            .try_acquire(spec.max_connections, &app.name)
        else {
            return;
        };
        let timeouts = Timeouts {
            header: spec.header_timeout,
            keepalive: spec.keepalive_timeout,
        };
        let shared = self.shared.clone();
        let stop = Stop {
            graceful: shared.closing.clone(),
            force: shared.force_close.clone(),
        };
        let grpc = self.grpc.clone();
        shared.connections.clone().spawn(async move {
            if is_grpc {
                let svc = hyper_util::service::TowerToHyperService::new(grpc);
                crate::server::serve(stream, svc, timeouts, guard, stop).await;
            } else {
                let svc = hyper::service::service_fn(move |req| http::handle(shared.clone(), req));
                crate::server::serve(stream, svc, timeouts, guard, stop).await;
            }
        });
    }
}

/// Why a key has no spec to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Unknown to upstream (401/403): answer 401 / PERMISSION_DENIED.
    Unauthorized,
    /// Upstream has not answered (yet): answer 503 / UNAVAILABLE.
    Unavailable,
    /// A new key over the new-key budget: answer 503 / UNAVAILABLE, retry soon.
    OverBudget,
}

/// The key's entry and current spec, waiting for the first fetch if the key is new
/// (concurrent first requests all wait on the same fetch).
pub(crate) async fn find(
    shared: &Arc<Shared>,
    key: &Key,
) -> Result<(Arc<Entry>, Arc<Spec>), Missing> {
    let settings = shared.settings.load();
    let stats = &shared.stats;
    let lookup = shared
        .store
        .lookup_admitted(key, settings.spec.rejected_key_ttl, || {
            settings.new_keys.take()
        });
    let entry = match lookup {
        Lookup::Rejected => {
            stats.rejected.inc();
            return Err(Missing::Unauthorized);
        }
        Lookup::Refused => {
            stats.new_key_refused.inc();
            static OVER: LogLimit = LogLimit::per_second();
            if let Some(suppressed) = OVER.allow() {
                tracing::warn!(
                    app = %shared.name(),
                    key = key.masked(),
                    suppressed,
                    per_second = settings.spec.new_key_fetches_per_second,
                    "new SDK key refused: over new_key_fetches_per_second"
                );
            }
            return Err(Missing::OverBudget);
        }
        Lookup::Found(e) => e,
        Lookup::Created(e) => {
            // Keep the map within max_sdk_keys now, not only at the next poll.
            poll::evict(shared, settings.spec.max_sdk_keys, |k| {
                k == key || settings.warm.contains(k)
            });
            tokio::spawn(poll::fetch(shared.clone(), e.clone()));
            e
        }
    };
    if let Some(spec) = entry.spec() {
        stats.hit.inc();
        return Ok((entry, spec));
    }
    if entry.upstream() == State::Unauthorized {
        // Upstream refused it (and its data was dropped): nothing to wait for.
        stats.rejected.inc();
        return Err(Missing::Unauthorized);
    }
    stats.miss.inc();
    let mut changes = entry.subscribe();
    let wait = settings.spec.request_timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(
        wait,
        changes.wait_for(|(state, spec)| spec.is_some() || *state != State::Pending),
    )
    .await;
    match (entry.spec(), entry.upstream()) {
        (Some(spec), _) => Ok((entry, spec)),
        (None, State::Pending | State::Failing(_)) => Err(Missing::Unavailable),
        (None, _) => Err(Missing::Unauthorized),
    }
}

/// What `/v1/ready` and `/v1/startup` report.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// The shared cache's state; its outages do not make the app unready (it serves
    /// from memory) but are reported here.
    pub cache: CacheReport,
    pub keys: Vec<KeyStatus>,
}

#[derive(Debug, Serialize)]
pub struct CacheReport {
    pub backend: &'static str,
    pub connected: bool,
    pub leader: bool,
    pub error: Option<String>,
}

/// Ready when every warm key has data and no key's data is older than the
/// staleness bound. With `check_staleness` false (startup), only the first holds.
pub(crate) fn readiness(shared: &Shared, check_staleness: bool) -> Readiness {
    let settings = shared.settings.load();
    let stale_after = settings.spec.stale_after;
    let mut keys = Vec::new();
    let mut ready = true;
    let entries = shared.store.entries();
    // In config order; membership below asks the set.
    for key in warm_keys(&settings.spec) {
        if !entries.iter().any(|e| e.key == key) {
            ready = false;
            keys.push(KeyStatus {
                key: key.masked(),
                warm: true,
                lcut: None,
                age_ms: None,
                upstream: "rejected".into(),
                streams: 0,
                problem: Some("warm key rejected by upstream (401/403)".into()),
            });
        }
    }
    for e in entries {
        let spec = e.spec();
        let age = e.age();
        let is_warm = settings.warm.contains(&e.key);
        let state = e.upstream();
        let problem = match (&spec, age) {
            (None, _) if is_warm => {
                Some(format!("warm key has no data yet ({})", describe(&state)))
            }
            (Some(_), Some(age)) if check_staleness && age > stale_after => Some(format!(
                "data is {}s old (stale_after {}s; upstream: {})",
                age.as_secs(),
                stale_after.as_secs(),
                describe(&state)
            )),
            _ => None,
        };
        ready &= problem.is_none();
        keys.push(KeyStatus {
            key: e.key.masked(),
            warm: is_warm,
            lcut: spec.map(|s| s.lcut),
            age_ms: age.map(|a| a.as_millis() as u64),
            upstream: describe(&state),
            streams: e.streams(),
            problem,
        });
    }
    let cache = match settings.cache() {
        None => CacheReport {
            backend: "local",
            connected: true,
            leader: false,
            error: None,
        },
        Some(r) => CacheReport {
            backend: "redis",
            connected: r.is_connected(),
            leader: r.is_leader(),
            error: r.error(),
        },
    };
    Readiness { ready, cache, keys }
}

fn describe(state: &store::Upstream) -> String {
    match state {
        store::Upstream::Pending => "pending".into(),
        store::Upstream::Ok => "ok".into(),
        store::Upstream::Unauthorized => "unauthorized".into(),
        store::Upstream::Failing(e) => format!("failing: {e}"),
    }
}
