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
    refresh: Option<mpsc::Sender<()>>,
    description: String,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("source", &self.description)
            .field("refresh", &self.refresh.is_some())
            .finish()
    }
}

/// Why [`Subscription::refresh`] could not ask for a re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error("this config source cannot be re-read on demand")]
    Unsupported,
    #[error("the config source has stopped")]
    Closed,
}

impl Subscription {
    /// `source` is dropped with the subscription; put whatever must stay alive in it.
    pub fn new(rx: mpsc::UnboundedReceiver<Update>, source: impl Send + Sync + 'static) -> Self {
        Subscription {
            rx,
            _source: Box::new(source),
            refresh: None,
            description: "custom".into(),
        }
    }

    /// Lets [`Subscription::refresh`] (the admin API's `POST /reload`) ask the source
    /// to re-read now: a message on `refresh` must make the source send an update,
    /// even when nothing changed, so the caller hears back.
    pub fn with_refresh(mut self, refresh: mpsc::Sender<()>) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// Describes where configs come from (shown by `/status`), e.g. `file /etc/fproxy.json`.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Where configs come from; `custom` unless the source said.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether the source can be re-read on demand.
    pub fn can_refresh(&self) -> bool {
        self.refresh.is_some()
    }

    /// Asks the source to re-read now; its answer arrives through [`Subscription::recv`].
    /// Requests made while one is pending are merged into it.
    pub fn refresh(&self) -> Result<(), RefreshError> {
        let tx = self.refresh.as_ref().ok_or(RefreshError::Unsupported)?;
        match tx.try_send(()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(())) => Err(RefreshError::Closed),
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
/// running config. A refresh ([`Subscription::refresh`]) re-reads at once and always
/// sends what it read, changed or not, and a missing file is then an error.
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

        let text = crate::config::read_text(&path)?;
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
        // Capacity 1 again: refreshes asked for while one is pending share its answer.
        let (refresh_tx, refresh_rx) = mpsc::channel::<()>(1);
        let description = format!("file {}", path.display());
        tokio::spawn(reload_loop(
            path,
            validator,
            self.debounce,
            text,
            Wakes {
                events: wake_rx,
                refresh: refresh_rx,
            },
            tx,
        ));
        Ok(Subscription::new(rx, watcher)
            .with_refresh(refresh_tx)
            .with_description(description))
    }
}

/// What makes the reload loop read the file.
struct Wakes {
    /// File events (debounced, and only a changed file is sent on).
    events: mpsc::Receiver<()>,
    /// Explicit refreshes (read now, always send).
    refresh: mpsc::Receiver<()>,
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
    wakes: Wakes,
    tx: mpsc::UnboundedSender<Update>,
) {
    let Wakes {
        events: mut wake,
        mut refresh,
    } = wakes;
    loop {
        let mut forced = tokio::select! {
            w = wake.recv() => match w {
                Some(()) => false,
                None => return,
            },
            // Closes only with the subscription, when `tx.closed()` fires too.
            Some(()) = refresh.recv() => true,
            // Nobody listens any more.
            _ = tx.closed() => return,
        };
        // Debounce: wait for the burst (write, chmod, rename...) to settle. Someone
        // asking for a refresh meanwhile wants it now.
        while !forced {
            tokio::select! {
                w = wake.recv() => if w.is_none() { return },
                Some(()) = refresh.recv() => forced = true,
                _ = tokio::time::sleep(debounce) => break,
            }
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !forced => {
                tracing::info!(path = %path.display(), "config file is absent; keeping the running config");
                continue;
            }
            Err(e) => {
                let err = ConfigError::read(&path, &e);
                if tx.send(Update::Rejected(err)).is_err() {
                    return;
                }
                continue;
            }
        };
        if text == last && !forced {
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
