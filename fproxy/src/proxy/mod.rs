//! The TCP (L4) app: accept, pick a target, connect, copy both ways.
//!
//! An app's routing (targets, strategy, timeouts, limits) is one immutable [`Route`]
//! snapshot behind an `ArcSwap`. A reload that keeps the app's addresses swaps the
//! snapshot under the live listeners: new connections see the new route, connections
//! in flight keep the one they started with. Nothing on the accept path takes a lock.

mod connect;
mod copy;
mod health;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connect::{connect, ConnectError, Connected};
pub use copy::{bidirectional, Copied, End};

use crate::admin::status::{AppStatus, EndpointStatus, TcpStatus};
use crate::app::{App, BoxFuture};
use crate::config::{AppConfig, Kind, TcpConfig};
use crate::dns::Resolver;
use crate::listener::{BoundSet, Handler, Listener, Listeners};
use crate::metrics::Metrics;
use crate::strategy::{Registry, Strategy, TargetState};

/// One routing snapshot of an app.
pub struct Route {
    /// The whole app config (name, drain timeout) this snapshot came from.
    pub app: Arc<AppConfig>,
    /// Its TCP settings.
    pub config: TcpConfig,
    /// One slot per configured target, in config order.
    pub targets: Vec<Arc<TargetSlot>>,
    /// The same targets' shared state, as strategies see them.
    pub states: Vec<Arc<TargetState>>,
    pub strategy: Arc<dyn Strategy>,
    /// The app's clock for ejections (milliseconds since it started).
    pub epoch: tokio::time::Instant,
}

/// A target's state, and the signal that closes its connections once it has been
/// removed from the config and its drain time has passed. Slots of targets that stay
/// in the config are carried over from one snapshot to the next, and with them their
/// health and connection counts.
#[derive(Debug)]
pub struct TargetSlot {
    pub state: Arc<TargetState>,
    retired: CancellationToken,
}

impl Route {
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl Route {
    /// Builds a snapshot, reusing `previous`'s slots (and its strategy, when neither
    /// the targets nor the strategy changed, so round robin keeps its place).
    fn build(app: Arc<AppConfig>, registry: &Registry, previous: Option<&Route>) -> Route {
        let config = match &app.kind {
            Kind::Tcp(t) => t.clone(),
            // The daemon only hands a TCP app TCP configs.
            Kind::Spec(_) => unreachable!("a spec config reached a TCP app"),
        };
        // A first config's targets start healthy; a reload's new ones as configured.
        let fresh_healthy = previous.is_none() || config.new_targets_healthy;
        let targets: Vec<Arc<TargetSlot>> = config
            .targets
            .iter()
            .zip(&config.weights)
            .map(|(t, &w)| {
                previous
                    .and_then(|p| {
                        p.targets
                            .iter()
                            .find(|s| s.state.target == *t && s.state.weight == w)
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(TargetSlot {
                            state: Arc::new(TargetState::new(t.clone(), w, fresh_healthy)),
                            retired: CancellationToken::new(),
                        })
                    })
            })
            .collect();
        let states: Vec<Arc<TargetState>> = targets.iter().map(|s| s.state.clone()).collect();
        let strategy = match previous {
            Some(p)
                if p.config.targets == config.targets
                    && p.config.weights == config.weights
                    && p.config.strategy == config.strategy =>
            {
                p.strategy.clone()
            }
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
    resolver: Resolver,
    metrics: Arc<Metrics>,
    active: AtomicUsize,
    connections: TaskTracker,
    /// Fired when a removed app's drain timeout ends: remaining connections close.
    force_close: CancellationToken,
}

/// A running TCP app.
pub struct TcpApp {
    shared: Arc<Shared>,
    registry: Registry,
    listeners: Listeners,
    /// Stops the health checker.
    checks: CancellationToken,
}

impl Drop for TcpApp {
    fn drop(&mut self) {
        self.checks.cancel();
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
        let shared = Arc::new(Shared {
            route: ArcSwap::from_pointee(Route::build(config, &registry, None)),
            resolver,
            metrics,
            active: AtomicUsize::new(0),
            connections: TaskTracker::new(),
            force_close: CancellationToken::new(),
        });
        let checks = CancellationToken::new();
        tokio::spawn(health::run(shared.clone(), checks.clone()));
        let mut app = TcpApp {
            shared,
            registry,
            listeners: Listeners::default(),
            checks,
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
                address: match &s.target {
                    crate::config::Target::Addr(a) => Some(*a),
                    crate::config::Target::Name { .. } => None,
                },
                weight: s.weight,
                healthy: s.is_healthy(),
                ejected: s.is_ejected(now),
                ejections: s.ejections(),
                connections: s.active(),
            })
            .collect();
        let mut problems = Vec::new();
        if !endpoints.iter().any(|e| e.healthy && !e.ejected) {
            problems.push("every target is down (failing open: all are tried)".to_string());
        }
        AppStatus {
            name: route.app.name.clone(),
            kind: "tcp".into(),
            listeners: self.listeners.local_addrs(),
            connections: self.active_connections(),
            // Its listeners accept; a TCP app with every target down still fails
            // open, so it stays ready and reports the problem.
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
        let old = self.shared.route.load_full();
        let route = Route::build(config.clone(), &self.registry, Some(&old));
        for slot in &old.targets {
            if !route.targets.iter().any(|s| Arc::ptr_eq(s, slot)) {
                retire_target(
                    slot.clone(),
                    config.drain_timeout,
                    self.shared.force_close.clone(),
                );
            }
        }
        self.shared.route.store(Arc::new(route));
        self.start_listeners(added);
        self.listeners.remove_except(&config.listen)
    }

    fn stop_accepting(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.listeners.retire_all())
    }

    fn shutdown(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.listeners.retire_all().await;
            self.checks.cancel();
            let config = self.config();
            crate::app::drain(
                &config.name,
                &self.shared.connections,
                config.drain_timeout,
                &self.shared.force_close,
            )
            .await;
            // Its series go with it; a re-added app starts from zero.
            self.shared.metrics.tcp.remove_app(&config.name);
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
        // Over the limit: reset now. Queueing would only hold the client until its
        // own timeout; a fast reset lets it retry elsewhere.
        if shared.active.fetch_add(1, Ordering::AcqRel) >= route.config.max_connections {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(app = %route.app.name, client = %peer, "connection limit reached; refused");
            reset(stream);
            return;
        }
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
    let _ = client.set_nodelay(true);
    let started = tokio::time::Instant::now();
    let connected = tokio::select! {
        r = connect(&route, &shared.resolver, peer) => r,
        _ = shared.force_close.cancelled() => return reset(client),
    };
    let mut target = match connected {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(app = %name, client = %peer, error = %e, "no target available; resetting client");
            return reset(client);
        }
    };
    let _ = target.stream.set_nodelay(true);
    let slot = route.targets[target.index].clone();
    slot.state.opened();
    let copied = tokio::select! {
        c = bidirectional(&mut client, &mut target.stream, cfg.buffer_size, cfg.idle_timeout) => Some(c),
        _ = shared.force_close.cancelled() => None,
        _ = slot.retired.cancelled() => None,
    };
    slot.state.closed();
    match copied {
        Some(c) => tracing::debug!(
            app = %name, client = %peer, target = %slot.state.target, addr = %target.addr,
            retries = target.retries, sent = c.sent, received = c.received,
            duration = ?started.elapsed(), reason = c.end.as_str(), "connection closed"
        ),
        None => tracing::debug!(
            app = %name, client = %peer, target = %slot.state.target,
            duration = ?started.elapsed(), reason = "drain_timeout", "connection closed"
        ),
    }
}

/// Closes with RST instead of FIN: the client learns at once that nothing is there.
fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
