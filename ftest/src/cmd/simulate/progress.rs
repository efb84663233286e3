//! Progress while a load runs: a bar on a terminal, a line a second otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Length, Shared};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// An `indicatif` bar on stderr (a terminal).
    Bar,
    /// A plain line on stderr every second (logs, CI).
    Lines,
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    pub fn choose(quiet: bool) -> ProgressMode {
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines
        }
    }
}

/// A running progress display; [`Progress::finish`] clears it.
pub struct Progress {
    done: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    pub async fn finish(mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

pub(super) fn start(mode: ProgressMode, shared: Arc<Shared>) -> Progress {
    if mode == ProgressMode::Quiet {
        return Progress {
            done: None,
            task: None,
        };
    }
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(show(mode, shared, rx));
    Progress {
        done: Some(tx),
        task: Some(task),
    }
}

async fn show(mode: ProgressMode, shared: Arc<Shared>, mut done: oneshot::Receiver<()>) {
    let every = match mode {
        ProgressMode::Bar => Duration::from_millis(200),
        _ => Duration::from_secs(1),
    };
    let bar = (mode == ProgressMode::Bar).then(|| new_bar(&shared));
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate
    let mut last_ok = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut done => break,
        }
        let ok = shared.ok.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let rate = (ok - last_ok) as f64 / every.as_secs_f64();
        last_ok = ok;
        let elapsed = shared.start.elapsed();
        match &bar {
            Some(bar) => {
                bar.set_position(match shared.plan.length {
                    Length::Duration(_) => elapsed.as_millis() as u64,
                    Length::Requests(_) => ok + failed,
                });
                bar.set_message(format!("{rate:.0} req/s, {failed} failed"));
            }
            None => {
                // stderr gone (closed pipe) is no reason to stop the load.
                let _ = writeln!(
                    std::io::stderr(),
                    "[{:>4}s] {ok} ok, {failed} failed, {rate:.0} req/s",
                    elapsed.as_secs()
                );
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn new_bar(shared: &Shared) -> ProgressBar {
    let (len, template) = match shared.plan.length {
        Length::Duration(d) => (
            d.as_millis() as u64,
            "{spinner} {elapsed:>4} [{wide_bar}] {percent:>3}%  {msg}",
        ),
        Length::Requests(n) => (n, "{spinner} {elapsed:>4} [{wide_bar}] {pos}/{len}  {msg}"),
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style)
}
