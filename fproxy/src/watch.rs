//! Config sources: where new configs come from.
//!
//! A [`ConfigSubscriber`] validates what its source produces and sends the result to
//! the daemon: a [`Config`] to roll out, or the [`ConfigError`] that kept a new
//! version out (so it can be logged and reported; the running config stays). The
//! daemon only consumes [`Update`]s, so a new source (Redis pub/sub, an API) needs
//! no daemon change.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{Config, ConfigError, Validator};

/// What a source sends the daemon.
#[derive(Debug, Clone)]
pub enum Update {
    /// A new, valid config.
    Config(Config),
    /// A new version was refused; the running config stays.
    Rejected(ConfigError),
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The first config is invalid: there is nothing good to run.
    #[error(transparent)]
    Initial(#[from] ConfigError),
    #[error("cannot watch {path}: {reason}")]
    Watch { path: String, reason: String },
}

/// A source of configs. The first [`Update`] of a subscription is the current config.
pub trait ConfigSubscriber: Send + Sync {
    /// Starts watching. `validator` turns the source's text into configs.
    fn subscribe(&self, validator: Validator) -> Result<Subscription, WatchError>;
}

/// A live subscription: receive updates from it; dropping it stops the source.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Update>,
    // Keeps the source alive (the file watcher's inotify handle, say).
    _source: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Subscription {
    /// `source` is dropped with the subscription; put whatever must stay alive in it.
    pub fn new(rx: mpsc::UnboundedReceiver<Update>, source: impl Send + Sync + 'static) -> Self {
        Subscription {
            rx,
            _source: Box::new(source),
        }
    }

    /// The next update; `None` once the source has ended.
    pub async fn recv(&mut self) -> Option<Update> {
        self.rx.recv().await
    }
}

/// Watches a JSON file.
///
/// Editors save by writing a temporary file and renaming it over the old one, which
/// silences a watch on the file's inode; so the parent directory is watched and
/// events are filtered on the file name. Bursts of events are debounced, the file
/// is re-read only when its content changed, and a briefly missing file keeps the
/// running config.
#[derive(Debug, Clone)]
pub struct FileWatcher {
    path: PathBuf,
    debounce: Duration,
}

impl FileWatcher {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileWatcher {
            path: path.into(),
            debounce: Duration::from_millis(50),
        }
    }

    /// Quiet time after the last event before the file is read.
    pub fn debounce(mut self, d: Duration) -> Self {
        self.debounce = d;
        self
    }
}

impl ConfigSubscriber for FileWatcher {
    fn subscribe(&self, validator: Validator) -> Result<Subscription, WatchError> {
        let watch_err = |reason: String| WatchError::Watch {
            path: self.path.display().to_string(),
            reason,
        };
        let path = std::path::absolute(&self.path).map_err(|e| watch_err(e.to_string()))?;
        let dir = path
            .parent()
            .ok_or_else(|| watch_err("has no parent directory".into()))?
            .to_path_buf();
        let name = path
            .file_name()
            .ok_or_else(|| watch_err("is not a file path".into()))?
            .to_os_string();

        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let initial = validator.parse(&text)?;

        // A capacity-1 channel coalesces bursts: one pending wake-up is enough.
        let (wake_tx, wake_rx) = mpsc::channel::<()>(1);
        let file_name = name.clone();
        let mut watcher: RecommendedWatcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if relevant(&ev, &file_name) => {
                    let _ = wake_tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "config watch error"),
            })
            .map_err(|e| watch_err(e.to_string()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| watch_err(e.to_string()))?;

        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Update::Config(initial));
        tokio::spawn(reload_loop(
            path,
            validator,
            self.debounce,
            text,
            wake_rx,
            tx,
        ));
        Ok(Subscription::new(rx, watcher))
    }
}

/// Whether a directory event may have changed our file. A symlinked config (a
/// Kubernetes ConfigMap swaps a `..data` link) changes without an event naming the
/// file, so for symlinks every event in the directory counts; the content check
/// below filters out the rest.
fn relevant(ev: &notify::Event, name: &std::ffi::OsStr) -> bool {
    match ev.kind {
        // Opens and reads (ours included) change nothing.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    ev.paths.iter().any(|p| {
        p.file_name() == Some(name)
            || p.parent()
                .map(|d| d.join(name).is_symlink())
                .unwrap_or(false)
    })
}

async fn reload_loop(
    path: PathBuf,
    validator: Validator,
    debounce: Duration,
    mut last: String,
    mut wake: mpsc::Receiver<()>,
    tx: mpsc::UnboundedSender<Update>,
) {
    loop {
        tokio::select! {
            w = wake.recv() => if w.is_none() { return },
            // Nobody listens any more.
            _ = tx.closed() => return,
        }
        // Debounce: wait for the burst (write, chmod, rename...) to settle.
        loop {
            match tokio::time::timeout(debounce, wake.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "config file is absent; keeping the running config");
                continue;
            }
            Err(e) => {
                let err = ConfigError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                };
                if tx.send(Update::Rejected(err)).is_err() {
                    return;
                }
                continue;
            }
        };
        if text == last {
            continue;
        }
        let update = match validator.parse(&text) {
            Ok(c) => Update::Config(c),
            Err(e) => Update::Rejected(e),
        };
        last = text;
        if tx.send(update).is_err() {
            return;
        }
    }
}
