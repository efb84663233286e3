//! The TCP (L4) app: accept, pick a target, connect, copy both ways.
//!
//! An app's routing (targets, strategy, timeouts, limits) is one immutable [`Route`]
//! snapshot behind an `ArcSwap`. A reload that keeps the app's addresses swaps the
//! snapshot under the live listeners: new connections see the new route, connections
//! in flight keep the one they started with. Nothing on the accept path takes a lock.

mod connect;
mod copy;
mod discover;
mod health;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use connect::{connect, ConnectError, Connected};
pub use copy::{bidirectional, Copied, End};

use crate::admin::status::{AppStatus, EndpointStatus, TcpStatus};
use crate::app::{App, BoxFuture};
use crate::config::{AppConfig, Kind, Target, TcpConfig};
use crate::dns::Resolver;
use crate::error::Side;
use crate::listener::{BoundSet, Handler, Listener, Listeners};
use crate::loglimit::LogLimit;
use crate::metrics::tcp::{AppHandles, EndpointHandles, TargetHandles};
use crate::metrics::Metrics;
use crate::strategy::{Registry, Strategy, TargetState};

/// The addresses each target name resolved to, as background discovery last saw
/// them. Names missing here are resolved when a connection needs them.
pub(crate) type Resolved = HashMap<Target, Vec<SocketAddr>>;

/// One routing snapshot of an app.
pub struct Route {
    /// The whole app config (name, drain timeout) this snapshot came from.
    pub app: Arc<AppConfig>,
    /// Its TCP settings.
    pub config: TcpConfig,
    /// One slot per endpoint, in config order: an IP target is one endpoint, a
    /// target name one per address it resolved to (or one unresolved endpoint
    /// until discovery has an answer).
    pub targets: Vec<Arc<TargetSlot>>,
    /// The same endpoints' shared state, as strategies see them.
    pub states: Vec<Arc<TargetState>>,
    pub strategy: Arc<dyn Strategy>,
    /// The app's clock for ejections (milliseconds since it started).
    pub epoch: tokio::time::Instant,
}

/// An endpoint's state, its metric handles, and the signal that closes its
/// connections once its target has been removed from the config and the drain
/// time has passed. Slots of endpoints that stay are carried over from one
/// snapshot to the next, and with them their health and connection counts.
#[derive(Debug)]
pub struct TargetSlot {
    pub state: Arc<TargetState>,
    retired: CancellationToken,
    /// Traffic series of the configured target (shared by its endpoints).
    pub(crate) traffic: TargetHandles,
    /// Health series of this endpoint.
    pub(crate) health: EndpointHandles,
}

impl TargetSlot {
    /// The `address` label of the endpoint's health series.
    fn address_label(addr: Option<SocketAddr>) -> String {
        addr.map_or_else(|| "unresolved".into(), |a| a.to_string())
    }
}

impl Route {
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Builds a snapshot, reusing `previous`'s slots (and its strategy, when the
    /// endpoints and the strategy are unchanged, so round robin keeps its place).
    fn build(
        app: Arc<AppConfig>,
        registry: &Registry,
        previous: Option<&Route>,
        resolved: &Resolved,
        metrics: &Metrics,
    ) -> Route {
        let config = match &app.kind {
            Kind::Tcp(t) => t.clone(),
            // The daemon only hands a TCP app TCP configs.
            Kind::Spec(_) => unreachable!("a spec config reached a TCP app"),
        };
        // A first config's endpoints start healthy; later ones as configured.
        let fresh_healthy = previous.is_none() || config.new_targets_healthy;
        // The first answer for a name replaces its unresolved stand-in, whose verdict
        // its addresses inherit: they are not "new" targets.
        let placeholder_health = |target: &Target| {
            previous.and_then(|p| {
                p.states
                    .iter()
                    .find(|s| s.target == *target && s.addr.is_none())
                    .map(|s| s.is_healthy())
            })
        };
        let mut targets: Vec<Arc<TargetSlot>> = Vec::with_capacity(config.targets.len());
        for (target, &weight) in config.targets.iter().zip(&config.weights) {
            let addrs: Vec<Option<SocketAddr>> = match target {
                Target::Addr(a) => vec![Some(*a)],
                Target::Name { .. } => match resolved.get(target) {
                    Some(list) if !list.is_empty() => list.iter().copied().map(Some).collect(),
                    _ => vec![None],
                },
            };
            // A slot from the previous snapshot, or one built for an earlier
            // listing of the same target in this one.
            let known = |built: &[Arc<TargetSlot>], pred: &dyn Fn(&TargetSlot) -> bool| {
                previous
                    .and_then(|p| p.targets.iter().find(|s| pred(s)))
                    .or_else(|| built.iter().find(|s| pred(s)))
                    .cloned()
            };
            let traffic = known(&targets, &|s| s.state.target == *target)
                .map(|s| s.traffic.clone())
                .unwrap_or_else(|| metrics.tcp.target(&app.name, &target.to_string()));
            for addr in addrs {
                let slot = known(&targets, &|s| {
                    s.state.target == *target && s.state.weight == weight && s.state.addr == addr
                })
                .unwrap_or_else(|| {
                    let healthy = placeholder_health(target).unwrap_or(fresh_healthy);
                    let state = TargetState::endpoint(target.clone(), addr, weight, healthy);
                    let health = metrics.tcp.endpoint(
                        &app.name,
                        &target.to_string(),
                        &TargetSlot::address_label(addr),
                    );
                    health.healthy.set(i64::from(healthy));
                    Arc::new(TargetSlot {
                        state: Arc::new(state),
                        retired: CancellationToken::new(),
                        traffic: traffic.clone(),
                        health,
                    })
                });
                targets.push(slot);
            }
        }
        let states: Vec<Arc<TargetState>> = targets.iter().map(|s| s.state.clone()).collect();
        let same_endpoints = previous.is_some_and(|p| {
            p.targets.len() == targets.len()
                && p.targets
                    .iter()
                    .zip(&targets)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        });
        let strategy = match previous {
            Some(p) if same_endpoints && p.config.strategy == config.strategy => p.strategy.clone(),
            // Validation only lets registered names through; round robin is the
            // safe answer should an embedder's registry and validator disagree.
            _ => registry
                .build(&config.strategy, &states)
                .unwrap_or_else(|| Arc::new(crate::strategy::RoundRobin::new(&states))),
        };
        Route {
            app,
            config,
            targets,
            states,
            strategy,
            epoch: previous.map_or_else(tokio::time::Instant::now, |p| p.epoch),
        }
    }
}

/// State shared by an app's listeners and connections.
struct Shared {
    route: ArcSwap<Route>,
    /// Held while a new route is built and stored, by a reload or by discovery, so
    /// neither overwrites the other's change; holds what discovery resolved.
    /// Never held across an await; the accept path does not take it.
    routing: Mutex<Resolved>,
    registry: Registry,
    resolver: Resolver,
    metrics: Arc<Metrics>,
    app_metrics: AppHandles,
    active: AtomicUsize,
    connections: TaskTracker,
    /// Wakes discovery when a reload may have brought new names.
    reconfigured: tokio::sync::Notify,
    /// Fired when a removed app's drain timeout ends: remaining connections close.
    force_close: CancellationToken,
}

impl Shared {
    /// Builds a route from `config` (or the current one) and the resolved names
    /// (or the current ones), stores it, and retires what left. Returns the route.
    fn reroute(&self, config: Option<Arc<AppConfig>>, resolved: Option<Resolved>) -> Arc<Route> {
        let mut names = crate::sync::lock(&self.routing);
        if let Some(r) = resolved {
            *names = r;
        }
        let old = self.route.load_full();
        let config = config.unwrap_or_else(|| old.app.clone());
        let route = Arc::new(Route::build(
            config,
            &self.registry,
            Some(&old),
            &names,
            &self.metrics,
        ));
        self.route.store(route.clone());
        self.retire_left(&old, &route);
        drop(names);
        route
    }

    /// Endpoints in `old` but not in `new`: their health series go; those whose
    /// target left the config also have their connections closed after the drain
    /// time. An address that only dropped out of DNS keeps its open connections
    /// (DNS answers flap; nothing asked for them to be cut).
    fn retire_left(&self, old: &Route, new: &Route) {
        let app = &new.app.name;
        for slot in &old.targets {
            if new.targets.iter().any(|s| Arc::ptr_eq(s, slot)) {
                continue;
            }
            let target = slot.state.target.to_string();
            // A slot replaced by one for the same address (its weight changed)
            // shares its series: they stay.
            let same_endpoint = new
                .states
                .iter()
                .any(|s| s.target == slot.state.target && s.addr == slot.state.addr);
            if !same_endpoint {
                self.metrics.tcp.remove_endpoint(
                    app,
                    &target,
                    &TargetSlot::address_label(slot.state.addr),
                );
            }
            if new.config.targets.contains(&slot.state.target) {
                continue;
            }
            retire_target(
                slot.clone(),
                new.app.drain_timeout,
                self.force_close.clone(),
            );
            self.metrics.tcp.remove_target(app, &target);
        }
    }
}

/// A running TCP app.
pub struct TcpApp {
    shared: Arc<Shared>,
    listeners: Listeners,
    /// Stops the health checker and discovery.
    background: CancellationToken,
}

impl Drop for TcpApp {
    fn drop(&mut self) {
        self.background.cancel();
    }
}

impl TcpApp {
    /// Starts an app on listeners the caller has already bound.
    pub fn start(
        config: Arc<AppConfig>,
        bound: BoundSet,
        registry: Registry,
        resolver: Resolver,
        metrics: Arc<Metrics>,
    ) -> TcpApp {
        metrics.claim_app("tcp", &config.name);
        let route = Route::build(config.clone(), &registry, None, &Resolved::new(), &metrics);
        let shared = Arc::new(Shared {
            route: ArcSwap::from_pointee(route),
            routing: Mutex::new(Resolved::new()),
            registry,
            resolver,
            app_metrics: metrics.tcp.app(&config.name),
            metrics,
            active: AtomicUsize::new(0),
            connections: TaskTracker::new(),
            reconfigured: tokio::sync::Notify::new(),
            force_close: CancellationToken::new(),
        });
        let background = CancellationToken::new();
        tokio::spawn(health::run(shared.clone(), background.clone()));
        tokio::spawn(discover::run(shared.clone(), background.clone()));
        let mut app = TcpApp {
            shared,
            listeners: Listeners::default(),
            background,
        };
        app.start_listeners(bound);
        app
    }

    fn start_listeners(&mut self, bound: BoundSet) {
        let name = self.shared.route.load().app.name.clone();
        let handler: Arc<dyn Handler> = Arc::new(AppHandler(self.shared.clone()));
        self.listeners.start(&name, bound, |_| handler.clone());
    }
}

impl App for TcpApp {
    fn config(&self) -> Arc<AppConfig> {
        self.shared.route.load().app.clone()
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs()
    }

    fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    fn status(&self) -> AppStatus {
        let route = self.shared.route.load_full();
        let now = route.now_ms();
        let endpoints: Vec<EndpointStatus> = route
            .states
            .iter()
            .map(|s| EndpointStatus {
                target: s.target.to_string(),
                address: s.addr,
                weight: s.weight,
                healthy: s.is_healthy(),
                ejected: s.is_ejected(now),
                ejections: s.ejections(),
                connections: s.active(),
            })
            .collect();
        let mut problems = Vec::new();
        if !route.states.iter().any(|s| s.available(now)) {
            problems.push("every target is down (failing open: all are tried)".to_string());
        }
        AppStatus {
            name: route.app.name.clone(),
            kind: "tcp".into(),
            listeners: self.listeners.local_addrs(),
            connections: self.active_connections(),
            // Its listeners accept; with every target down it still fails open,
            // so it stays ready and reports the problem instead.
            ready: true,
            problems,
            tcp: Some(TcpStatus {
                strategy: route.config.strategy.clone(),
                endpoints,
            }),
            spec: None,
        }
    }

    fn update(&mut self, config: Arc<AppConfig>, added: BoundSet) -> Vec<Listener> {
        self.shared.reroute(Some(config.clone()), None);
        self.shared.reconfigured.notify_one();
        self.start_listeners(added);
        self.listeners.remove_except(&config.listen)
    }

    fn stop_accepting(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.listeners.retire_all())
    }

    fn shutdown(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.listeners.retire_all().await;
            self.background.cancel();
            let config = self.config();
            crate::app::drain(
                &config.name,
                &self.shared.connections,
                config.drain_timeout,
                &self.shared.force_close,
            )
            .await;
            // Its series go with it (unless a new instance of the same name runs);
            // a re-added app starts from zero.
            if !self.shared.metrics.release_app("tcp", &config.name) {
                return;
            }
            let (metrics, route) = (&self.shared.metrics.tcp, self.shared.route.load());
            for slot in &route.targets {
                let target = slot.state.target.to_string();
                metrics.remove_endpoint(
                    &config.name,
                    &target,
                    &TargetSlot::address_label(slot.state.addr),
                );
                metrics.remove_target(&config.name, &target);
            }
            metrics.remove_app(&config.name);
        })
    }
}

/// Closes connections to a target removed from the config once `drain` has passed.
fn retire_target(slot: Arc<TargetSlot>, drain: Duration, app_closed: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(drain) => slot.retired.cancel(),
            // The app's own shutdown closes these connections.
            _ = app_closed.cancelled() => {}
        }
    });
}

struct AppHandler(Arc<Shared>);

impl Handler for AppHandler {
    fn handle(&self, stream: TcpStream, peer: SocketAddr) {
        let shared = &self.0;
        let route = shared.route.load_full();
        shared.app_metrics.accepted.inc();
        // Over the limit: reset now. Queueing would only hold the client until its
        // own timeout; a fast reset lets it retry elsewhere.
        if shared.active.fetch_add(1, Ordering::AcqRel) >= route.config.max_connections {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            static LIMIT: LogLimit = LogLimit::per_second();
            shared.app_metrics.refused_limit.inc();
            if let Some(suppressed) = LIMIT.allow() {
                tracing::warn!(app = %route.app.name, client = %peer, limit = route.config.max_connections, suppressed, "connection limit reached; resetting client");
            }
            reset(stream);
            return;
        }
        shared.app_metrics.active.inc();
        let guard = ActiveGuard(shared.clone());
        shared
            .connections
            .spawn(serve(shared.clone(), route, stream, peer, guard));
    }
}

/// Counts a connection as active until dropped, whatever way its task ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.app_metrics.active.dec();
    }
}

async fn serve(
    shared: Arc<Shared>,
    route: Arc<Route>,
    mut client: TcpStream,
    peer: SocketAddr,
    _guard: ActiveGuard,
) {
    let cfg = &route.config;
    let name = &route.app.name;
    let span = tracing::debug_span!("connection", app = %name, client = %peer);
    let _ = client.set_nodelay(true);
    let started = tokio::time::Instant::now();
    let connected = tokio::select! {
        r = connect(&route, &shared.resolver, peer).instrument(span.clone()) => r,
        _ = shared.force_close.cancelled() => return reset(client),
    };
    let mut target = match connected {
        Ok(c) => {
            shared.app_metrics.retries.inc_by(u64::from(c.retries));
            c
        }
        Err(e) => {
            match refusal(&e) {
                Refusal::Local => {
                    static LOCAL: LogLimit = LogLimit::per_second();
                    shared.app_metrics.refused_local.inc();
                    if let Some(suppressed) = LOCAL.allow() {
                        tracing::warn!(app = %name, client = %peer, error = %e, suppressed, "local resources exhausted (file descriptors, buffers or ports), not a target failure; resetting client");
                    }
                }
                Refusal::NoTarget => {
                    static NO_TARGET: LogLimit = LogLimit::per_second();
                    shared.app_metrics.refused_no_target.inc();
                    if let Some(suppressed) = NO_TARGET.allow() {
                        tracing::warn!(app = %name, client = %peer, error = %e, suppressed, "no target available; resetting client");
                    }
                }
            }
            return reset(client);
        }
    };
    let _ = target.stream.set_nodelay(true);
    let slot = route.targets[target.index].clone();
    let traffic = &slot.traffic;
    slot.state.opened();
    traffic.connections.inc();
    traffic.active.inc();
    let meters = Some((&traffic.bytes_in, &traffic.bytes_out));
    let copied = tokio::select! {
        c = bidirectional(&mut client, &mut target.stream, cfg.buffer_size, cfg.idle_timeout, meters) => Some(c),
        _ = shared.force_close.cancelled() => None,
        _ = slot.retired.cancelled() => None,
    };
    slot.state.closed();
    traffic.active.dec();
    // A target that failed mid-stream (a reset, say) must not look like a clean
    // close to the client: its reply may be cut short. Pass the failure on as a
    // reset; a FIN would tell the client the reply is complete.
    if copied.is_some_and(|c| c.end.side() == Some(Side::Upstream)) {
        reset(client);
    }
    let reason = copied.map_or("drain_timeout", |c| c.end.as_str());
    traffic.close(reason);
    tracing::debug!(
        parent: &span,
        target = %slot.state.target, addr = %target.addr, retries = target.retries,
        sent = copied.map(|c| c.sent), received = copied.map(|c| c.received),
        duration = ?started.elapsed(), reason, "connection closed"
    );
}

/// How a client no target took is answered. Always with a reset (nothing of its
/// data was read, so it may retry at once: [`ConnectError::retry_safe`]); counted
/// in `fproxy_tcp_connections_refused_total` under the reason of who is to blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `reason="local"`: this host ran out of a resource; no target is blamed.
    Local,
    /// `reason="no_target"`: every target failed, or time ran out.
    NoTarget,
}

/// The TCP outcome of each connect error: the one place it is decided.
fn refusal(e: &ConnectError) -> Refusal {
    match e.side() {
        Side::Local => Refusal::Local,
        Side::Upstream | Side::Client => Refusal::NoTarget,
    }
}

/// Closes with RST instead of FIN: the client learns at once that nothing is there.
fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::connect::tests::every_kind;

    /// Each kind of connect error resets the client, counted as `local` only when
    /// this host ran out of something.
    #[test]
    fn each_connect_error_maps_to_one_refusal() {
        for e in every_kind() {
            let want = match e {
                ConnectError::Local { .. } => Refusal::Local,
                _ => Refusal::NoTarget,
            };
            assert_eq!(refusal(&e), want, "{e}");
        }
    }
}
