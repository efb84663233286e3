//! The daemon: turns each new config into the smallest rollout that reaches it.
//!
//! Per app, the old and new config are compared:
//! - unchanged apps are not touched at all;
//! - changed apps get a new routing snapshot on their live listeners, gain listeners
//!   for new addresses and retire those for dropped ones;
//! - new apps start, removed apps stop and drain.
//!
//! A rollout has three phases so a failure cannot leave a half-applied config:
//! 1. bind every new address (nothing running has changed yet; on any error the
//!    new sockets are dropped and the running config stays);
//! 2. commit: swap routes, start new listeners and apps (cannot fail);
//! 3. retire what is gone: listeners serve their queued clients and close, removed
//!    apps drain in the background.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::app::App;
use crate::config::{AppConfig, Config, Kind, Validator};
use crate::dns::Resolver;
use crate::listener::{Bound, BoundSet};
use crate::metrics::Metrics;
use crate::proxy::TcpApp;
use crate::spec::SpecApp;
use crate::strategy::Registry;
use crate::watch::{Subscription, Update};

/// Why a valid config could not be rolled out. The running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("app {app:?}: cannot listen on {addr}: {source}")]
    Bind {
        app: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What observers (tests, the admin API, embedders) hear about rollouts.
#[derive(Debug, Clone)]
pub enum Event {
    /// A config is now running.
    Applied(Applied),
    /// A config was refused (invalid, or it could not be rolled out).
    Refused { error: String },
}

/// The result of one rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Counts rollouts, starting at 1 for the first config.
    pub version: u64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Every running app's bound listen addresses.
    pub listeners: BTreeMap<String, Vec<SocketAddr>>,
}

/// Runs apps from configs. Construct, then [`Daemon::run`] on a subscription, or
/// drive it yourself with [`Daemon::apply`] and [`Daemon::shutdown`].
pub struct Daemon {
    registry: Registry,
    resolver: Resolver,
    metrics: Arc<Metrics>,
    apps: BTreeMap<String, Box<dyn App>>,
    version: u64,
    events: broadcast::Sender<Event>,
    /// Removed apps still draining.
    draining: JoinSet<()>,
}

impl Daemon {
    pub fn new(registry: Registry) -> Self {
        let metrics = Arc::new(Metrics::new());
        Daemon {
            registry,
            resolver: Resolver::from_system().count_lookups(metrics.daemon.dns_lookups.clone()),
            metrics,
            apps: BTreeMap::new(),
            version: 0,
            events: broadcast::channel(64).0,
            draining: JoinSet::new(),
        }
    }

    /// Resolves target names with `resolver` instead of the system's configuration.
    /// Call before the first config is applied.
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = resolver.count_lookups(self.metrics.daemon.dns_lookups.clone());
        self
    }

    /// A validator that knows this daemon's strategies.
    pub fn validator(&self) -> Validator {
        Validator::new(self.registry.names())
    }

    /// The daemon's metrics (what the admin API serves at `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Rollout events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Bound addresses of a running app.
    pub fn local_addrs(&self, app: &str) -> Option<Vec<SocketAddr>> {
        self.apps.get(app).map(|a| a.local_addrs())
    }

    /// Rolls out `config` (see the module docs). On error nothing changed.
    pub async fn apply(&mut self, config: Config) -> Result<Applied, ApplyError> {
        let names: BTreeSet<String> = config.apps.iter().map(|a| a.name.clone()).collect();

        // Phase 1: bind every address that is new to its app. On error the sockets
        // bound so far are dropped with `staged`.
        let mut staged: Vec<(Arc<AppConfig>, BoundSet)> = Vec::new();
        for app in config.apps {
            let running = self.apps.get(&app.name).map(|a| a.config());
            if running.as_deref() == Some(&app) {
                continue;
            }
            // An app that changes kind is replaced: it keeps no listener.
            let kept = match &running {
                Some(r) if r.kind.name() == app.kind.name() => r.addresses(),
                _ => Vec::new(),
            };
            let mut bound = Vec::new();
            for addr in app.addresses() {
                if kept.contains(&addr) {
                    continue;
                }
                let b = Bound::bind(addr).map_err(|source| ApplyError::Bind {
                    app: app.name.clone(),
                    addr,
                    source,
                })?;
                bound.push((addr, b));
            }
            staged.push((Arc::new(app), bound));
        }

        // Phase 2: commit.
        self.version += 1;
        let mut result = Applied {
            version: self.version,
            ..Applied::default()
        };
        let mut retired = Vec::new();
        let mut replaced = Vec::new();
        for (app, bound) in staged {
            let same_kind = self
                .apps
                .get(&app.name)
                .is_some_and(|r| r.config().kind.name() == app.kind.name());
            if same_kind {
                if let Some(running) = self.apps.get_mut(&app.name) {
                    result.changed.push(app.name.clone());
                    retired.extend(running.update(app, bound));
                }
                continue;
            }
            if let Some(old) = self.apps.remove(&app.name) {
                result.changed.push(app.name.clone());
                replaced.push(old);
            } else {
                result.added.push(app.name.clone());
            }
            let name = app.name.clone();
            let rt = self.start_app(app, bound);
            self.apps.insert(name, rt);
        }

        // Phase 3: retire. Listeners first (quick: they serve their queue and close),
        // so a port that moved between apps stops being served by the old one.
        for listener in retired {
            listener.retire().await;
        }
        for app in replaced {
            self.draining.spawn(app.shutdown());
        }
        let gone: Vec<String> = self
            .apps
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(app) = self.apps.remove(&name) {
                result.removed.push(name);
                self.draining.spawn(app.shutdown());
            }
        }
        // Reap drains that finished, so the set does not grow over many reloads.
        while self.draining.try_join_next().is_some() {}

        result.listeners = self
            .apps
            .iter()
            .map(|(n, a)| (n.clone(), a.local_addrs()))
            .collect();
        tracing::info!(
            version = result.version,
            added = ?result.added,
            changed = ?result.changed,
            removed = ?result.removed,
            "config applied"
        );
        Ok(result)
    }

    fn start_app(&self, app: Arc<AppConfig>, bound: BoundSet) -> Box<dyn App> {
        match &app.kind {
            Kind::Tcp(_) => Box::new(TcpApp::start(
                app,
                bound,
                self.registry.clone(),
                self.resolver.clone(),
                self.metrics.clone(),
            )),
            Kind::Spec(_) => Box::new(SpecApp::start(app, bound, self.metrics.clone())),
        }
    }

    /// Applies updates from `subscription` until `shutdown` completes, then stops
    /// every app, draining their connections. The first update must be a valid
    /// config that can be rolled out; otherwise that error is returned.
    pub async fn run(
        mut self,
        mut subscription: Subscription,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ApplyError> {
        tokio::pin!(shutdown);
        let mut first = true;
        loop {
            let update = tokio::select! {
                u = subscription.recv() => u,
                _ = &mut shutdown => break,
            };
            match update {
                Some(Update::Config(config)) => match self.apply(config).await {
                    Ok(applied) => {
                        first = false;
                        let _ = self.events.send(Event::Applied(applied));
                    }
                    Err(e) if first => return Err(e),
                    Err(e) => self.refuse(e.to_string()),
                },
                Some(Update::Rejected(e)) => self.refuse(e.to_string()),
                None => {
                    tracing::warn!("config source ended; running the last config until shutdown");
                    shutdown.as_mut().await;
                    break;
                }
            }
        }
        tracing::info!("shutdown requested");
        self.shutdown().await;
        Ok(())
    }

    fn refuse(&self, error: String) {
        tracing::error!(%error, "config refused; the running config stays");
        let _ = self.events.send(Event::Refused { error });
    }

    /// Stops every app: first all listeners (so no port accepts any more), then
    /// each app drains up to its own drain timeout. Also waits for apps removed
    /// earlier that are still draining.
    pub async fn shutdown(mut self) {
        let mut apps = std::mem::take(&mut self.apps);
        for app in apps.values_mut() {
            app.stop_accepting().await;
        }
        let open: usize = apps.values().map(|a| a.active_connections()).sum();
        tracing::info!(open, "all listeners closed; draining connections");
        for (_, app) in apps {
            self.draining.spawn(app.shutdown());
        }
        while self.draining.join_next().await.is_some() {}
    }
}
