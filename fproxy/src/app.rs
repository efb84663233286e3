//! The interface between the daemon and the apps it runs.
//!
//! The daemon diffs configs and binds sockets; an [`App`] serves them. Every kind
//! (TCP, spec) implements this trait, so the daemon rolls all kinds the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::status::AppStatus;
use crate::config::AppConfig;
use crate::listener::{BoundSet, Listener};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A running app.
pub trait App: Send + 'static {
    /// The config it runs now.
    fn config(&self) -> Arc<AppConfig>;

    /// Bound address of every listener (differs from the configured one for port 0).
    fn local_addrs(&self) -> Vec<SocketAddr>;

    /// Connections (or streams) currently open.
    fn active_connections(&self) -> usize;

    /// What it is doing now, for `/status` and `/ready`.
    fn status(&self) -> AppStatus;

    /// Applies a new config of the same kind without dropping anything open. `added`
    /// holds sockets, already bound, for addresses the app gains. Returns the
    /// listeners of addresses it loses, for the daemon to retire once everything new
    /// is in place.
    fn update(&mut self, config: Arc<AppConfig>, added: BoundSet) -> Vec<Listener>;

    /// Stops accepting: each listener serves what is queued, then closes.
    fn stop_accepting(&mut self) -> BoxFuture<'_, ()>;

    /// Stops accepting, then drains open connections for up to the drain timeout.
    fn shutdown(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Lets an app's connections finish for up to `timeout`, then fires `force_close`
/// (which every connection task watches) and waits for the rest to go.
pub async fn drain(
    app: &str,
    connections: &TaskTracker,
    timeout: Duration,
    force_close: &CancellationToken,
) {
    connections.close();
    if tokio::time::timeout(timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            app,
            open = connections.len(),
            "drain timeout reached; closing remaining connections"
        );
        force_close.cancel();
        connections.wait().await;
    }
    tracing::info!(app, "stopped");
}
