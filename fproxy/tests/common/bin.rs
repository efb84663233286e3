//! The real `fproxy` binary, running on a config file, its log read line by line.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::within;

pub const BIN: &str = env!("CARGO_BIN_EXE_fproxy");

/// The `fproxy` daemon as a child process, killed when dropped.
pub struct Bin {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every log line read so far.
    pub seen: Vec<String>,
    /// How many of `seen` a [`Bin::wait_for`] has passed over.
    next: usize,
}

impl Bin {
    /// A command for the daemon on the config at `path`, with info logs in the
    /// plain format; add to it, then [`Bin::spawn`] it.
    pub fn command(path: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("FPROXY_CONFIG_PATH", path)
            .env("RUST_LOG", "info")
            .env_remove("FPROXY_LOG_FORMAT")
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Starts the daemon on the config at `path`; returns once `config applied`
    /// is logged.
    pub async fn start(path: &Path) -> Bin {
        Bin::spawn(Bin::command(path)).await
    }

    /// Starts `cmd` (from [`Bin::command`]); returns once `config applied` is logged.
    pub async fn spawn(mut cmd: Command) -> Bin {
        let mut child = cmd.spawn().unwrap();
        let mut reader = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        // Unbounded, as the log of one test is: keeps the pipe drained while the test
        // is not reading, since a full pipe would block the daemon's logging.
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut bin = Bin {
            child,
            lines,
            seen: Vec::new(),
            next: 0,
        };
        bin.wait_for("config applied").await;
        bin
    }

    /// The next line containing `what` after those earlier waits returned or
    /// passed over, waiting (within [`super::WAIT`]) for it if need be.
    pub async fn wait_for(&mut self, what: &str) -> String {
        within(what, async {
            loop {
                if let Some(i) = self.seen[self.next..].iter().position(|l| l.contains(what)) {
                    self.next += i + 1;
                    return self.seen[self.next - 1].clone();
                }
                self.next = self.seen.len();
                self.read_one(what).await;
            }
        })
        .await
    }

    /// The first line ever logged containing `what`, waiting (within
    /// [`super::WAIT`]) for it if need be.
    pub async fn logged(&mut self, what: &str) -> String {
        within(what, async {
            loop {
                if let Some(line) = self.seen.iter().find(|l| l.contains(what)) {
                    return line.clone();
                }
                self.read_one(what).await;
            }
        })
        .await
    }

    /// Reads one more line into `seen`.
    async fn read_one(&mut self, what: &str) {
        match self.lines.recv().await {
            Some(line) => self.seen.push(line),
            None => panic!(
                "fproxy exited before logging {what:?}; log:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Takes the lines logged so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// How many lines seen so far contain `what`.
    pub fn count(&self, what: &str) -> usize {
        self.seen.iter().filter(|l| l.contains(what)).count()
    }

    /// The address in the last line seen so far that contains `what` and `addr=`.
    pub fn addr(&self, what: &str) -> SocketAddr {
        let line = self
            .seen
            .iter()
            .rev()
            .find(|l| l.contains(what) && l.contains("addr="))
            .unwrap_or_else(|| panic!("no {what:?} line in\n{}", self.seen.join("\n")));
        line.rsplit("addr=")
            .next()
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id().unwrap() as i32), sig).unwrap();
    }

    /// SIGTERM; asserts the process exits 0.
    pub async fn stop(mut self) {
        self.signal(Signal::SIGTERM);
        let status = within("exit after SIGTERM", self.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "{status}");
    }
}
