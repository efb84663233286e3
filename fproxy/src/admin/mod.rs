//! The admin API: health, readiness, status, metrics and reloads, over HTTP on its
//! own (loopback by default) address.
//!
//! The server never touches the daemon's state: it asks the daemon loop over a
//! channel (`Request`) and waits, bounded, for the answer. So `/status` and
//! `/ready` show live state without a lock, and `/live` proves the loop still turns.
//! `/metrics` reads the shared [`crate::metrics::Metrics`] directly (atomics).

pub mod client;
pub(crate) mod host;
mod server;
pub mod status;
pub mod table;

use tokio::sync::oneshot;

pub(crate) use server::{AdminServer, StagedAdmin};

use status::{Reload, Status};

/// What the admin server asks the daemon loop.
#[derive(Debug)]
pub(crate) enum Request {
    /// Answered as soon as the loop sees it (for `/live`).
    Ping(oneshot::Sender<()>),
    /// The daemon's status now (for `/status` and `/ready`).
    Status(oneshot::Sender<Status>),
    /// Re-read the config source; answered once the next update is handled.
    Reload(oneshot::Sender<ReloadAnswer>),
}

/// The daemon's answer to [`Request::Reload`].
#[derive(Debug)]
pub(crate) enum ReloadAnswer {
    /// The update that followed: applied, unchanged or refused.
    Done(Reload),
    /// The source cannot be re-read on demand (or has stopped); says why.
    Unsupported(String),
}
