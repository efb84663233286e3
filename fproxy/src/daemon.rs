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
//!
//! The admin API is rolled the same way: its address is bound in phase 1 when new or
//! changed, the server swapped in phase 2 and the old one stopped in phase 3. While
//! [`Daemon::run`] runs, the daemon loop answers the admin server's questions, so
//! nothing else ever touches its state.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::admin::status::{Reload, Status};
use crate::admin::{AdminServer, ReloadAnswer, Request, StagedAdmin};
use crate::app::App;
use crate::config::{AdminConfig, AppConfig, Config, ConfigError, Kind, Validator};
use crate::dns::Resolver;
use crate::listener::{Bound, BoundSet};
use crate::metrics::{unix_now, AppLabels, Metrics, ResultLabels, RolloutLabels};
use crate::proxy::TcpApp;
use crate::spec::SpecApp;
use crate::strategy::Registry;
use crate::watch::{Subscription, Update};

/// Admin requests waiting for the daemon loop; more wait on the sender's side.
const ADMIN_QUEUE: usize = 64;

/// Why a valid config could not be rolled out. The running config stays. `Clone`
/// (the OS error is shared) so that [`Event::Refused`] can carry it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error("app {app:?}: cannot listen on {addr}: {source}")]
    Bind {
        app: String,
        addr: SocketAddr,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("admin API: cannot listen on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: Arc<std::io::Error>,
    },
}

/// What observers (tests, embedders) hear about rollouts.
#[derive(Debug, Clone)]
pub enum Event {
    /// A config is now running.
    Applied(Applied),
    /// A config identical to the running one arrived; nothing was rolled out.
    Unchanged(Applied),
    /// A config was refused (invalid, or it could not be rolled out).
    Refused { error: Refusal },
}

/// Why a config was refused. The running config stays. Displays as the error it
/// carries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The config is invalid, or its source could not be read.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The config is valid but could not be rolled out (an address was taken).
    #[error(transparent)]
    NotApplied(ApplyError),
}

/// The result of one rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Counts rollouts, starting at 1 for the first config.
    pub version: u64,
    /// The config equals the running one: nothing changed and `version` stayed.
    pub unchanged: bool,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Every running app's bound listen addresses.
    pub listeners: BTreeMap<String, Vec<SocketAddr>>,
    /// The admin API's bound address, when the config has one.
    pub admin: Option<SocketAddr>,
}

/// Asks a running daemon to re-read its config source and waits for the outcome,
/// as `POST /reload` does; the binary sends it on SIGHUP. Cheap to clone. Requests
/// made before [`Daemon::run`] starts are answered once it does.
#[derive(Debug, Clone)]
pub struct Reloader {
    requests: mpsc::Sender<Request>,
}

/// Why [`Reloader::reload`] got no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The config source cannot be re-read on demand, or has stopped; says why.
    #[error("{0}")]
    Unsupported(String),
    /// The daemon is not running any more.
    #[error("the daemon has stopped")]
    Stopped,
}

impl Reloader {
    /// Re-reads the source; the outcome (`applied`, `unchanged` or `refused`, with
    /// the error) is also logged and recorded like any reload.
    pub async fn reload(&self) -> Result<Reload, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Reload(tx))
            .await
            .map_err(|_| ReloadError::Stopped)?;
        match rx.await {
            Ok(ReloadAnswer::Done(r)) => Ok(r),
            Ok(ReloadAnswer::Unsupported(why)) => Err(ReloadError::Unsupported(why)),
            Err(_) => Err(ReloadError::Stopped),
        }
    }
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
    /// The running admin API, and the config it runs.
    admin: Option<(AdminConfig, AdminServer)>,
    /// What admin servers send; [`Daemon::run`] takes the receiver.
    requests: mpsc::Sender<Request>,
    requests_rx: Option<mpsc::Receiver<Request>>,
    /// Where configs come from, for `/status`.
    source: String,
    last_reload: Option<Reload>,
    last_refused: Option<Reload>,
}

impl Daemon {
    pub fn new(registry: Registry) -> Self {
        let metrics = Arc::new(Metrics::new());
        let (requests, requests_rx) = mpsc::channel(ADMIN_QUEUE);
        Daemon {
            registry,
            resolver: Resolver::from_system().count_lookups(metrics.daemon.dns_lookups.clone()),
            metrics,
            apps: BTreeMap::new(),
            version: 0,
            events: broadcast::channel(64).0,
            draining: JoinSet::new(),
            admin: None,
            requests,
            requests_rx: Some(requests_rx),
            source: "custom".into(),
            last_reload: None,
            last_refused: None,
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

    /// A handle that asks the running daemon to re-read its config source.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            requests: self.requests.clone(),
        }
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

    /// The admin API's bound address, if it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, s)| s.local_addr())
    }

    /// What `GET /status` reports: the config, the last reloads and every app.
    pub fn status(&self) -> Status {
        let apps: Vec<_> = self.apps.values().map(|a| a.status()).collect();
        Status {
            version: self.version,
            source: self.source.clone(),
            ready: self.version > 0 && apps.iter().all(|a| a.ready),
            last_reload: self.last_reload.clone(),
            last_refused: self.last_refused.clone(),
            apps,
        }
    }

    /// Rolls out `config` (see the module docs). On error nothing changed. A config
    /// equal to the running one rolls nothing out and keeps the version
    /// ([`Applied::unchanged`]). Either way the outcome is logged, counted in the
    /// metrics, reported by `/status` and sent to [`Daemon::events`].
    pub async fn apply(&mut self, config: Config) -> Result<Applied, ApplyError> {
        if self.is_running(&config) {
            let applied = Applied {
                version: self.version,
                unchanged: true,
                listeners: self.listeners(),
                admin: self.admin_addr(),
                ..Applied::default()
            };
            tracing::info!(version = self.version, "config unchanged");
            self.record("unchanged", &applied, None);
            let _ = self.events.send(Event::Unchanged(applied.clone()));
            return Ok(applied);
        }
        let demand = crate::fdlimit::Demand::of(&config);
        match self.roll_out(config).await {
            Ok(applied) => {
                demand.check();
                tracing::info!(
                    version = applied.version,
                    added = ?applied.added,
                    changed = ?applied.changed,
                    removed = ?applied.removed,
                    "config applied"
                );
                self.record("applied", &applied, None);
                let _ = self.events.send(Event::Applied(applied.clone()));
                Ok(applied)
            }
            Err(e) => {
                self.refuse(Refusal::NotApplied(e.clone()));
                Err(e)
            }
        }
    }

    /// Whether `config` is exactly what runs (apps compared by name, so their order
    /// in the file does not matter).
    fn is_running(&self, config: &Config) -> bool {
        self.version > 0
            && config.admin.as_ref() == self.admin.as_ref().map(|(c, _)| c)
            && config.apps.len() == self.apps.len()
            && config.apps.iter().all(|a| {
                self.apps
                    .get(&a.name)
                    .is_some_and(|r| r.config().as_ref() == a)
            })
    }

    fn listeners(&self) -> BTreeMap<String, Vec<SocketAddr>> {
        self.apps
            .iter()
            .map(|(n, a)| (n.clone(), a.local_addrs()))
            .collect()
    }

    async fn roll_out(&mut self, config: Config) -> Result<Applied, ApplyError> {
        let names: BTreeSet<String> = config.apps.iter().map(|a| a.name.clone()).collect();

        // Phase 1: bind every address that is new: the admin API's if it moved, and
        // each app's. On error the sockets bound so far are dropped with `staged`.
        let running_admin = self.admin.as_ref().map(|(c, _)| c.listen);
        let staged_admin = match &config.admin {
            Some(a) if running_admin != Some(a.listen) => Some(
                StagedAdmin::bind(a.listen).map_err(|source| ApplyError::AdminBind {
                    addr: a.listen,
                    source: Arc::new(source),
                })?,
            ),
            _ => None,
        };
        let mut staged: Vec<(Arc<AppConfig>, BoundSet)> = Vec::new();
        let held: Vec<SocketAddr> = self.apps.values().flat_map(|a| a.local_addrs()).collect();
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
                // Joining a port this process holds (another app's, or one of a
                // replaced app) shares it; a port of its own must be free of
                // other processes.
                let ours = held.iter().any(|h| crate::listener::overlaps(*h, addr));
                let bind = if ours { Bound::bind } else { Bound::bind_new };
                let b = bind(addr).map_err(|source| ApplyError::Bind {
                    app: app.name.clone(),
                    addr,
                    source: Arc::new(source),
                })?;
                let restarts = self
                    .metrics
                    .daemon
                    .listener_restarts
                    .get_or_create_owned(&AppLabels::new(&app.name));
                bound.push((addr, b.count_restarts(restarts)));
            }
            staged.push((Arc::new(app), bound));
        }

        // Phase 2: commit.
        let retired_admin = match (config.admin, staged_admin) {
            (Some(cfg), Some(staged)) => {
                match staged.start(self.requests.clone(), self.metrics.clone(), &cfg) {
                    Ok(server) => self.admin.replace((cfg, server)),
                    Err(e) => {
                        // Only a runtime without an I/O driver gets here; the proxy
                        // itself is unaffected, so carry on without the admin API.
                        tracing::error!(error = %e, "cannot start the admin API");
                        self.admin.take()
                    }
                }
            }
            (Some(cfg), None) => {
                // Same address: the server and its socket stay.
                if let Some((running, server)) = self.admin.as_mut() {
                    server.reconfigure(&cfg);
                    *running = cfg;
                }
                None
            }
            (None, _) => self.admin.take(),
        };
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
        if let Some((_, server)) = retired_admin {
            server.stop().await;
        }
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
                // Its series go with it; a re-added app counts from zero.
                self.metrics
                    .daemon
                    .listener_restarts
                    .remove(&AppLabels::new(&name));
                result.removed.push(name);
                self.draining.spawn(app.shutdown());
            }
        }
        // Reap drains that finished, so the set does not grow over many reloads.
        while self.draining.try_join_next().is_some() {}

        result.listeners = self.listeners();
        result.admin = self.admin_addr();
        Ok(result)
    }

    /// Records a refused config: logged, counted, kept for `/status`, sent as an event.
    fn refuse(&mut self, error: Refusal) {
        if self.version == 0 {
            tracing::error!(%error, "config refused; nothing is running");
        } else {
            tracing::error!(%error, version = self.version, "config refused; the running config stays");
        }
        self.record("refused", &Applied::default(), Some(error.to_string()));
        let _ = self.events.send(Event::Refused { error });
    }

    /// Updates the metrics and the last reloads for `/status`.
    fn record(&mut self, result: &'static str, applied: &Applied, error: Option<String>) {
        let m = &self.metrics.daemon;
        m.reloads.get_or_create(&ResultLabels { result }).inc();
        m.last_reload_successful.set(i64::from(result != "refused"));
        if result == "applied" {
            m.last_reload_success_timestamp.set(unix_now());
            m.config_version.set(self.version as i64);
            for (action, apps) in [
                ("added", &applied.added),
                ("changed", &applied.changed),
                ("removed", &applied.removed),
            ] {
                m.rollouts
                    .get_or_create(&RolloutLabels { action })
                    .inc_by(apps.len() as u64);
            }
        }
        let reload = Reload {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            result: result.into(),
            version: self.version,
            error,
            added: applied.added.clone(),
            changed: applied.changed.clone(),
            removed: applied.removed.clone(),
        };
        if result == "refused" {
            self.last_refused = Some(reload.clone());
        }
        self.last_reload = Some(reload);
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
    /// config that can be rolled out; otherwise that error is returned. Meanwhile it
    /// answers the admin API.
    pub async fn run(
        mut self,
        mut subscription: Subscription,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ApplyError> {
        tokio::pin!(shutdown);
        self.source = subscription.description().to_string();
        // Always there: `run` consumes the daemon, so it takes the receiver once.
        let mut requests = self
            .requests_rx
            .take()
            .unwrap_or_else(|| mpsc::channel(1).1);
        // `POST /reload` callers waiting for the next update.
        let mut reloads: Vec<oneshot::Sender<ReloadAnswer>> = Vec::new();
        let mut source_open = true;
        loop {
            tokio::select! {
                u = subscription.recv(), if source_open => match u {
                    Some(update) => {
                        self.handle(update).await?;
                        if let Some(reload) = &self.last_reload {
                            for tx in reloads.drain(..) {
                                let _ = tx.send(ReloadAnswer::Done(reload.clone()));
                            }
                        }
                    }
                    None => {
                        tracing::warn!("config source ended; running the last config until shutdown");
                        source_open = false;
                        for tx in reloads.drain(..) {
                            let _ = tx.send(ReloadAnswer::Unsupported("the config source has stopped".into()));
                        }
                    }
                },
                Some(req) = requests.recv() => match req {
                    Request::Ping(tx) => {
                        let _ = tx.send(());
                    }
                    Request::Status(tx) => {
                        let _ = tx.send(self.status());
                    }
                    Request::Reload(tx) => match subscription.refresh() {
                        Ok(()) => {
                            // Callers that gave up need no answer.
                            reloads.retain(|t| !t.is_closed());
                            reloads.push(tx);
                        }
                        Err(e) => {
                            let _ = tx.send(ReloadAnswer::Unsupported(format!(
                                "{e} ({})",
                                subscription.description()
                            )));
                        }
                    },
                },
                _ = &mut shutdown => break,
            }
        }
        tracing::info!("shutdown requested");
        // Admin callers waiting hear at once that the daemon is going away.
        drop(requests);
        drop(reloads);
        self.shutdown().await;
        Ok(())
    }

    /// Applies or refuses one update. While nothing runs yet, a config that cannot
    /// be rolled out is returned for [`Daemon::run`] to fail with.
    async fn handle(&mut self, update: Update) -> Result<(), ApplyError> {
        let first = self.version == 0;
        match update {
            Update::Config(config) => match self.apply(config).await {
                Ok(_) => Ok(()),
                Err(e) if first => Err(e),
                // Already recorded and logged by `apply`.
                Err(_) => Ok(()),
            },
            Update::Rejected(e) => {
                self.refuse(e.into());
                Ok(())
            }
        }
    }

    /// Stops every app: first all listeners (so no port accepts any more), then
    /// each app drains up to its own drain timeout. Also waits for apps removed
    /// earlier that are still draining.
    pub async fn shutdown(mut self) {
        // Readiness probes see the admin API gone at once and stop sending traffic.
        if let Some((_, server)) = self.admin.take() {
            server.stop().await;
        }
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
