//! Config sources: where new configs come from.
//!
//! A [`ConfigSubscriber`] validates what its source produces and sends the result to
//! the daemon: a [`Config`] to roll out, or the [`ConfigError`] that kept a new
//! version out (so it can be logged and reported; the running config stays). The
//! daemon only consumes [`Update`]s, so a new source (Redis pub/sub, an API) needs
//! no daemon change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::read::{read_regular, ReadError, Reader, MAX_SIZE, READ_TIMEOUT};
use crate::config::{Config, ConfigError, Validator};
use crate::sync::lock;

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
/// events are filtered on the file name. When the path is a symlink, the directory of
/// every link it leads through and of the file it finally names are watched too, so
/// an in-place edit of a target elsewhere is seen; the chain is resolved again before
/// every read, so a repointed link (or a Kubernetes `..data` swap) moves the watches
/// with it. Bursts of events are debounced, the file is re-read only when its content
/// changed, and a briefly missing file keeps the running config. A refresh
/// ([`Subscription::refresh`]) re-reads at once and always sends what it read,
/// changed or not, and a missing file is then an error.
///
/// Reads never block the async runtime and are bounded: only regular files of at most
/// [`crate::config::read::MAX_SIZE`] bytes, each read within
/// [`crate::config::read::READ_TIMEOUT`], one at a time (see
/// [`crate::config::read`]). The first read, in [`ConfigSubscriber::subscribe`],
/// waits on the calling thread for at most that limit.
#[derive(Debug, Clone)]
pub struct FileWatcher {
    path: PathBuf,
    debounce: Duration,
    read_timeout: Duration,
    /// Runs before each re-read, on the reading thread (tests make reads hang).
    #[cfg(test)]
    stall: Option<Stall>,
}

/// A hook that can hold up a read, as a hung mount would.
#[cfg(test)]
#[derive(Clone)]
struct Stall(Arc<dyn Fn() + Send + Sync>);

#[cfg(test)]
impl std::fmt::Debug for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stall")
    }
}

impl FileWatcher {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileWatcher {
            path: path.into(),
            debounce: Duration::from_millis(50),
            read_timeout: READ_TIMEOUT,
            #[cfg(test)]
            stall: None,
        }
    }

    /// Quiet time after the last event before the file is read.
    pub fn debounce(mut self, d: Duration) -> Self {
        self.debounce = d;
        self
    }

    /// How long one read may take before it is refused (default
    /// [`READ_TIMEOUT`], 5 s).
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }
}

/// At most this many symlinks are followed when finding the directories to watch
/// (Linux's own limit is 40).
const MAX_LINKS: usize = 40;

/// The inotify handle and the directories it watches besides the config's own.
struct Watches {
    watcher: RecommendedWatcher,
    extra: BTreeSet<PathBuf>,
}

/// What a read needs besides the path: the watches to move along the symlink chain,
/// and the chain the event filter matches against.
#[derive(Clone)]
struct Follow {
    path: PathBuf,
    /// The config's own directory (canonical); always watched.
    dir: PathBuf,
    watches: Arc<Mutex<Watches>>,
    chain: Arc<Mutex<Vec<PathBuf>>>,
    #[cfg(test)]
    stall: Option<Stall>,
}

impl Follow {
    /// Resolves the symlink chain again and watches its directories (blocks: call it
    /// off the runtime). A directory that cannot be watched is logged; the read goes on.
    fn refresh(&self) {
        let chain = chain(&self.path);
        let dirs: BTreeSet<PathBuf> = chain[1..]
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| *d != self.dir)
            .collect();
        // Publish the chain before touching the watcher: the event callback takes this
        // lock, and the watcher waits for its callback.
        *lock(&self.chain) = chain;
        let mut w = lock(&self.watches);
        if w.extra == dirs {
            return;
        }
        for gone in w.extra.difference(&dirs).cloned().collect::<Vec<_>>() {
            // A deleted directory (the old target of a `..data` swap) lost its watch
            // with it; nothing to undo then.
            if let Err(e) = w.watcher.unwatch(&gone) {
                tracing::debug!(dir = %gone.display(), error = %e, "config watch: unwatch");
            }
        }
        let mut watched = BTreeSet::new();
        for dir in dirs {
            if w.extra.contains(&dir) {
                watched.insert(dir);
                continue;
            }
            match w.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "watching the config's symlink target directory");
                    watched.insert(dir);
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch the config's symlink target directory; edits there are seen only on reload"
                ),
            }
        }
        w.extra = watched;
    }
}

/// The config path, each symlink it leads through and the file it finally names:
/// what to watch. Past the first, each has a canonical directory, so a directory is
/// watched under one name only.
fn chain(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut cur = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let Ok(link) = std::fs::read_link(&cur) else {
            break;
        };
        let next = canonical_dir(&cur.parent().map(|d| d.join(&link)).unwrap_or(link));
        if out.contains(&next) {
            break;
        }
        out.push(next.clone());
        cur = next;
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        if !out.contains(&real) {
            out.push(real);
        }
    }
    out
}

/// `p` with its directory made canonical (`a/../b/c` -> `/abs/b/c`); as is when the
/// directory does not resolve.
fn canonical_dir(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => std::fs::canonicalize(d)
            .map(|d| d.join(n))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
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

        // A capacity-1 channel coalesces bursts: one pending wake-up is enough.
        let (wake_tx, wake_rx) = mpsc::channel::<()>(1);
        let chain = Arc::new(Mutex::new(Vec::new()));
        let file_name = name.clone();
        let targets = chain.clone();
        let watcher: RecommendedWatcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) if relevant(&ev, &file_name, &lock(&targets)) => {
                    let _ = wake_tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "config watch error"),
            })
            .map_err(|e| watch_err(e.to_string()))?;
        let watches = Arc::new(Mutex::new(Watches {
            watcher,
            extra: BTreeSet::new(),
        }));

        // Everything that touches the file system runs on the reader's thread, within
        // its time limit: a hung mount must not hang the caller.
        let reader = Reader::new(self.read_timeout, MAX_SIZE);
        #[cfg(test)]
        let stall = self.stall.clone();
        let max = reader.max_size();
        let (follow, text) = {
            let (file, watches, chain) = (path.clone(), watches.clone(), chain.clone());
            reader
                .run_blocking(move || {
                    let dir = std::fs::canonicalize(&dir)
                        .map_err(|e| ReadError::Watch(format!("{}: {e}", dir.display())))?;
                    lock(&watches)
                        .watcher
                        .watch(&dir, RecursiveMode::NonRecursive)
                        .map_err(|e| ReadError::Watch(format!("{}: {e}", dir.display())))?;
                    let follow = Follow {
                        path: file,
                        dir,
                        watches,
                        chain,
                        #[cfg(test)]
                        stall,
                    };
                    follow.refresh();
                    let text = read_regular(&follow.path, max)?;
                    Ok((follow, text))
                })
                .map_err(|e| match e {
                    ReadError::Watch(reason) => watch_err(reason),
                    e => WatchError::Initial(e.for_path(&path)),
                })?
        };
        let initial = validator.parse(&text)?;

        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Update::Config(initial));
        // Capacity 1 again: refreshes asked for while one is pending share its answer.
        let (refresh_tx, refresh_rx) = mpsc::channel::<()>(1);
        let description = format!("file {}", path.display());
        tokio::spawn(reload_loop(
            follow,
            reader,
            validator,
            self.debounce,
            text,
            Wakes {
                events: wake_rx,
                refresh: refresh_rx,
            },
            tx,
        ));
        Ok(Subscription::new(rx, watches)
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

/// Whether an event in a watched directory may have changed our file: it names the
/// file, or a link or file of its symlink chain. A Kubernetes ConfigMap swaps a
/// `..data` link, an event naming neither the file nor its chain, so while the file
/// is a symlink every event in its directory counts; the content check below filters
/// out the rest.
fn relevant(ev: &notify::Event, name: &std::ffi::OsStr, chain: &[PathBuf]) -> bool {
    match ev.kind {
        // Opens and reads (ours included) change nothing.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    ev.paths.iter().any(|p| {
        p.file_name() == Some(name)
            || chain.iter().any(|c| c == p)
            || p.parent()
                .map(|d| d.join(name).is_symlink())
                .unwrap_or(false)
    })
}

#[allow(clippy::too_many_arguments)]
async fn reload_loop(
    follow: Follow,
    reader: Reader,
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
    let max = reader.max_size();
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
        // Off the runtime and bounded in time: see `crate::config::read`.
        let f = follow.clone();
        let read = reader
            .run(move || {
                #[cfg(test)]
                if let Some(stall) = &f.stall {
                    (stall.0)();
                }
                f.refresh();
                read_regular(&f.path, max)
            })
            .await;
        let text = match read {
            Ok(t) => t,
            Err(e) if e.is_not_found() && !forced => {
                tracing::info!(path = %follow.path.display(), "config file is absent; keeping the running config");
                continue;
            }
            Err(e) => {
                if tx.send(Update::Rejected(e.for_path(&follow.path))).is_err() {
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

#[cfg(test)]
mod tests {
    use std::sync::Condvar;

    use super::*;
    use crate::daemon::{Daemon, ReloadError};
    use crate::strategy::Registry;

    /// A read that hangs (a hung NFS or FUSE mount) is refused at the time limit by
    /// name; while it stays stuck, later reloads are refused at once; once it returns,
    /// reloads work again; and shutdown never waits for a stuck read.
    #[tokio::test]
    async fn a_hung_read_wedges_neither_reloads_nor_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            r#"{"apps":[{"name":"a","listen":["127.0.0.1:0"],"targets":["127.0.0.1:9"]}]}"#,
        )
        .unwrap();
        // While the gate is closed, a read blocks its thread (as in a hung mount).
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let close = |closed: bool| {
            *lock(&gate.0) = closed;
            gate.1.notify_all();
        };
        let stall = {
            let gate = gate.clone();
            Stall(Arc::new(move || {
                let closed = lock(&gate.0);
                drop(gate.1.wait_while(closed, |c| *c));
            }))
        };
        // Long enough that the reads meant to succeed (thread start, stat, read) do
        // on a loaded machine; short against the test's 10 s waits.
        let mut watcher = FileWatcher::new(&path).read_timeout(Duration::from_secs(2));
        watcher.stall = Some(stall);
        let daemon = Daemon::new(Registry::default());
        let reloader = daemon.reloader();
        let mut events = daemon.events();
        let sub = watcher.subscribe(daemon.validator()).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(sub, async {
            let _ = stopped.await;
        }));
        let wait = Duration::from_secs(10);
        let reload = || async {
            tokio::time::timeout(wait, reloader.reload())
                .await
                .expect("a reload answer")
        };
        // The first config, then a reload that reads it again.
        let first = tokio::time::timeout(wait, events.recv()).await.unwrap();
        assert!(
            matches!(first, Ok(crate::daemon::Event::Applied(_))),
            "{first:?}"
        );
        assert_eq!(reload().await.unwrap().result, "unchanged");

        close(true);
        let r = reload().await.unwrap();
        assert_eq!(r.result, "refused");
        let error = r.error.unwrap_or_default();
        assert_eq!(
            error,
            format!(
                "cannot read {}: reading it took longer than 2s (a hung network or FUSE mount?); the read is abandoned",
                path.display()
            )
        );
        let r = reload().await.unwrap();
        assert_eq!(r.result, "refused");
        let error = r.error.unwrap_or_default();
        assert!(
            error.contains("an earlier read of it has been stuck for"),
            "{error}"
        );

        // Unstuck: reloads work again (once the abandoned thread has returned).
        close(false);
        let mut result = String::new();
        for _ in 0..100 {
            result = reload().await.unwrap().result;
            if result != "refused" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(result, "unchanged");

        // Stuck again, then shut down: the daemon stops without waiting for the read.
        close(true);
        let pending = tokio::spawn({
            let reloader = reloader.clone();
            async move { reloader.reload().await }
        });
        let _ = stop.send(());
        tokio::time::timeout(wait, task)
            .await
            .expect("shutdown with a read stuck")
            .unwrap()
            .unwrap();
        let answer = tokio::time::timeout(wait, pending).await.unwrap().unwrap();
        assert!(
            matches!(answer, Ok(_) | Err(ReloadError::Stopped)),
            "{answer:?}"
        );
        close(false);
    }
}
