//! Helpers shared by the proxy modules' unit tests.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use nix::errno::Errno;
use tokio::net::TcpStream;

use super::{Resolved, Route};
use crate::config::Validator;
use crate::metrics::Metrics;
use crate::strategy::Registry;

/// A dialer that fails every attempt with `errno`.
pub(crate) fn failing(
    errno: Errno,
) -> impl Fn(SocketAddr) -> std::future::Ready<io::Result<TcpStream>> {
    move |_| std::future::ready(Err(io::Error::from_raw_os_error(errno as i32)))
}

/// The route of the first app of the config `json` (a TCP app), with no resolver.
pub(crate) fn route(json: &str) -> Route {
    let registry = Registry::default();
    let config = Validator::new(registry.names()).parse(json).unwrap();
    let app = Arc::new(config.apps.into_iter().next().unwrap());
    Route::build(app, &registry, None, &Resolved::new(), &Metrics::new())
}
