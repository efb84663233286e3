//! Reading config files without trusting the file system.
//!
//! A config path can block: a FIFO with no writer blocks `open`, a hung NFS or FUSE
//! mount blocks `stat` and `read`. So every read runs on a thread of its own, never on
//! the async runtime, and the caller waits at most [`READ_TIMEOUT`]. A read that
//! overruns is left behind (a thread stuck in the kernel cannot be cancelled) and
//! counted as outstanding: while it is stuck no other read starts, so a hung mount
//! costs one thread, not one per reload. Nothing waits for such a thread at shutdown.
//!
//! Only regular files are read: FIFOs, devices, sockets and directories are refused by
//! `stat` before they are opened, and the file is opened with `O_NONBLOCK` so one
//! swapped in between the `stat` and the `open` cannot block either. At most
//! [`MAX_SIZE`] bytes are read (counted while reading, not taken from `stat`, which
//! `/proc` files and some FUSE mounts get wrong).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ConfigError;
use crate::sync::lock;

/// How long a config read may take before it is refused.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest config file read (16 MiB); a config is a few kilobytes.
pub const MAX_SIZE: u64 = 16 * 1024 * 1024;

/// Why a config file could not be read. Shown after `cannot read <path>: `.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("is a {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is larger than the {} limit", size(*.0))]
    TooLarge(u64),
    #[error("is not UTF-8 text")]
    NotUtf8,
    #[error("reading it took longer than {} (a hung network or FUSE mount?); the read is abandoned", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("an earlier read of it has been stuck for {}; no new read starts until it returns", humantime::format_duration(*.0))]
    Stuck(Duration),
    #[error("cannot start a thread to read it: {0}")]
    Thread(io::Error),
    #[error("the reading thread died")]
    Died,
    #[error("cannot watch {0}")]
    Watch(String),
}

impl ReadError {
    /// The file does not exist (the file watcher tolerates that briefly).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }

    pub(crate) fn for_path(&self, path: &Path) -> ConfigError {
        ConfigError::Read {
            path: path.display().to_string(),
            reason: self.to_string(),
        }
    }
}

fn size(bytes: u64) -> String {
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{bytes} bytes")
    }
}

/// Reads regular files of up to `max` bytes off the calling thread, within a time
/// limit, one at a time. Clones share the one-at-a-time limit.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    timeout: Duration,
    max: u64,
    /// When the outstanding read started, if one is outstanding.
    busy: Arc<Mutex<Option<Instant>>>,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new(READ_TIMEOUT, MAX_SIZE)
    }
}

impl Reader {
    pub(crate) fn new(timeout: Duration, max: u64) -> Self {
        Reader {
            timeout,
            max,
            busy: Arc::new(Mutex::new(None)),
        }
    }

    /// The size cap.
    pub(crate) fn max_size(&self) -> u64 {
        self.max
    }

    /// The file at `path` as text, waiting on the calling thread (for start-up and
    /// the CLI, where nothing else runs yet).
    pub(crate) fn read_blocking(&self, path: &Path) -> Result<String, ReadError> {
        let max = self.max;
        let path = path.to_path_buf();
        self.run_blocking(move || read_regular(&path, max))
    }

    /// Runs `work` (which touches the file system) on its own thread; waits for it
    /// on the calling thread, at most the time limit.
    pub(crate) fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.start(work, move |r| {
            let _ = tx.send(r);
        })?;
        match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(ReadError::Timeout(self.timeout))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ReadError::Died),
        }
    }

    /// Runs `work` (which touches the file system) on its own thread; waits for it
    /// without blocking the runtime, at most the time limit.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.start(work, move |r| {
            let _ = tx.send(r);
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ReadError::Died),
            Err(_) => Err(ReadError::Timeout(self.timeout)),
        }
    }

    /// Starts `work` on a detached thread unless a read is outstanding; the thread
    /// marks the reader free when `work` returns, however late.
    fn start<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
        send: impl FnOnce(Result<T, ReadError>) + Send + 'static,
    ) -> Result<(), ReadError> {
        {
            let mut busy = lock(&self.busy);
            if let Some(since) = *busy {
                return Err(ReadError::Stuck(round(since.elapsed())));
            }
            *busy = Some(Instant::now());
        }
        let busy = self.busy.clone();
        let spawned = std::thread::Builder::new()
            .name("fproxy-config-read".into())
            .spawn(move || {
                let r = work();
                // Free before answering, so a caller that hears back can read again.
                *lock(&busy) = None;
                send(r);
            });
        spawned.map(drop).map_err(|e| {
            *lock(&self.busy) = None;
            ReadError::Thread(e)
        })
    }
}

/// Whole seconds (durations in messages need no nanoseconds).
fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

/// What kind of non-regular file `t` is, or `None` for a regular file.
fn irregular(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("directory")
    } else if t.is_fifo() {
        Some("FIFO (named pipe)")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() || t.is_block_device() {
        Some("device")
    } else {
        Some("special file")
    }
}

/// Reads a regular file of at most `max` bytes; blocks (call it off the runtime).
pub(crate) fn read_regular(path: &Path, max: u64) -> Result<String, ReadError> {
    // `stat` first: opening a FIFO blocks until a writer appears.
    if let Some(kind) = irregular(std::fs::metadata(path)?.file_type()) {
        return Err(ReadError::NotRegular(kind));
    }
    // O_NONBLOCK: a FIFO swapped in since the `stat` opens without blocking and is
    // refused below. It changes nothing for regular files.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if let Some(kind) = irregular(file.metadata()?.file_type()) {
        return Err(ReadError::NotRegular(kind));
    }
    read_capped(file, max)
}

/// At most `max` bytes of `file` as text: reads one byte more to tell a file of
/// exactly `max` bytes from a larger one.
fn read_capped(file: File, max: u64) -> Result<String, ReadError> {
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_directory_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = Reader::default().read_blocking(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "is a directory, not a regular file");
        let e = e.for_path(dir.path()).to_string();
        assert!(
            e.starts_with(&format!("cannot read {}: ", dir.path().display())),
            "{e}"
        );
    }

    #[test]
    fn refuses_a_device() {
        let e = Reader::default()
            .read_blocking(Path::new("/dev/zero"))
            .unwrap_err();
        assert_eq!(e.to_string(), "is a device, not a regular file");
    }

    #[test]
    fn refuses_a_fifo_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = Reader::default().read_blocking(&fifo).unwrap_err();
        assert_eq!(e.to_string(), "is a FIFO (named pipe), not a regular file");
    }

    #[test]
    fn the_size_cap_is_counted_while_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        // Sparse: MAX_SIZE + 1 bytes on disk cost nothing.
        let f = File::create(&path).unwrap();
        f.set_len(MAX_SIZE + 1).unwrap();
        let e = Reader::default().read_blocking(&path).unwrap_err();
        assert_eq!(e.to_string(), "is larger than the 16 MiB limit");
        // Exactly at the cap is fine.
        f.set_len(MAX_SIZE).unwrap();
        assert_eq!(
            Reader::default().read_blocking(&path).unwrap().len() as u64,
            MAX_SIZE
        );
        // The cap holds whatever `stat` says: a small cap on a file read as a stream.
        let e = read_capped(File::open(&path).unwrap(), 10).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge(10)), "{e}");
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let e = Reader::default()
            .read_blocking(&dir.path().join("nope.json"))
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    /// A read that hangs (as on a hung mount) is refused at the time limit, blocks
    /// no other read while it is merely slow, refuses new reads while stuck, and
    /// frees the reader when it finally returns.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_read_times_out_and_holds_off_others_until_it_returns() {
        let reader = Reader::default();
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let started = tokio::time::Instant::now();
        let e = reader
            .run(move || {
                let _ = hung.recv();
                let _ = done_tx.send(());
                Ok::<_, ReadError>(String::new())
            })
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), READ_TIMEOUT);
        assert_eq!(
            e.to_string(),
            "reading it took longer than 5s (a hung network or FUSE mount?); the read is abandoned"
        );
        // Still stuck: refused at once rather than piling up threads.
        let e = reader.run(|| Ok::<_, ReadError>(1)).await.unwrap_err();
        assert!(matches!(e, ReadError::Stuck(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("an earlier read of it has been stuck for"),
            "{e}"
        );
        // The blocking path shares the limit.
        let e = reader.run_blocking(|| Ok::<_, ReadError>(1)).unwrap_err();
        assert!(matches!(e, ReadError::Stuck(_)), "{e}");
        // Once the stuck read returns, reads work again.
        release.send(()).unwrap();
        done.await.unwrap();
        // The thread frees the reader before it answers, so it is free by now.
        assert!(lock(&reader.busy).is_none(), "answered while still busy");
        // Blocking wait: with the clock paused, an async wait would time out while
        // the thread (which tokio does not track) has yet to run.
        assert_eq!(reader.run_blocking(|| Ok::<_, ReadError>(7)).unwrap(), 7);
    }

    #[test]
    fn the_blocking_wait_is_bounded_too() {
        let reader = Reader::new(Duration::from_millis(50), MAX_SIZE);
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let e = reader
            .run_blocking(move || {
                let _ = hung.recv();
                Ok::<_, ReadError>(())
            })
            .unwrap_err();
        assert!(matches!(e, ReadError::Timeout(_)), "{e}");
        drop(release);
    }
}
