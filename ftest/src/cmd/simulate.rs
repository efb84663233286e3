//! `ftest simulate`: a load generator for echo paths.
//!
//! C workers each keep one request in flight. A request writes `size` bytes and
//! reads them back, checked byte for byte (over a kept-alive connection per worker,
//! or a new connection per request).
//!
//! Without `--rate` the load is closed-loop: a worker sends its next request when the
//! previous answer is in, and latency runs from the actual send. With `--rate` the
//! load is open-loop: request i is due at start + i/rate whatever happened before,
//! and latency runs from that due time, so a stall counts against every request it
//! delayed instead of being hidden by the workers waiting (no coordinated omission).

mod progress;
mod report;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::ArgGroup;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use crate::latency::Latency;
pub use progress::ProgressMode;
pub use report::Report;

use crate::latency::Recorder;
use crate::net::{self, parse_millis, parse_seconds, TargetArgs};

const EXAMPLES: &str = "\
Examples:
  # as fast as 64 kept-alive connections go, for 10 seconds
  ftest simulate 127.0.0.1:5001 --concurrency 64 --duration 10s
  # 2000 req/s on a fixed schedule, a new connection per request, 1 KiB each
  ftest simulate 127.0.0.1:5001 -c 32 -d 30s --rate 2000 --size 1024 --new-connection-per-request
  # exactly 10000 requests, machine-readable result
  ftest simulate [::1]:5300 -c 8 --requests 10000 --json

Errors are counted by kind: refused, reset, timeout, short read, mismatch, other.
Exit status: 0 when every request succeeded, 1 otherwise.";

/// More workers than this would exhaust ports and memory long before helping.
const MAX_CONCURRENCY: usize = 100_000;

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
#[command(group(ArgGroup::new("length").required(true).args(["duration", "requests"])))]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Concurrent workers, each with one request in flight.
    #[arg(short, long, value_name = "C")]
    pub concurrency: usize,
    /// Run this long: 10s, 1m, 500ms (a bare number is seconds).
    #[arg(short, long, value_name = "D", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Send this many requests in total.
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,
    /// Bytes per request (each is echoed back and checked).
    #[arg(short, long, default_value_t = 64, value_name = "B")]
    pub size: usize,
    /// Requests per second in total, on a fixed schedule (open loop). Default: each
    /// worker sends as soon as its previous answer is in (closed loop).
    #[arg(short, long, value_name = "R")]
    pub rate: Option<f64>,
    /// Open a new connection for every request (default: one kept-alive connection
    /// per worker).
    #[arg(long)]
    pub new_connection_per_request: bool,
    /// Limit for each request, connect included, in ms (or 5s).
    #[arg(short = 'W', long, default_value = "5000", value_name = "MS", value_parser = parse_millis)]
    pub timeout: Duration,
    /// Print the result as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Duration(Duration),
    Requests(u64),
}

impl Length {
    /// The planned duration in seconds, for reports (`None` for a request count).
    pub fn duration_s(self) -> Option<f64> {
        match self {
            Length::Duration(d) => Some(d.as_secs_f64()),
            Length::Requests(_) => None,
        }
    }

    /// The planned request count, for reports (`None` for a duration).
    pub fn requests(self) -> Option<u64> {
        match self {
            Length::Requests(n) => Some(n),
            Length::Duration(_) => None,
        }
    }
}

/// A validated load plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    /// ADDR as the user wrote it.
    pub target: String,
    pub concurrency: usize,
    pub length: Length,
    pub size: usize,
    pub rate: Option<f64>,
    pub new_connection_per_request: bool,
    pub timeout: Duration,
}

impl Plan {
    /// Checks the numbers; `addr` is the resolved ADDR.
    pub fn new(args: &Args, addr: SocketAddr) -> anyhow::Result<Plan> {
        if !(1..=MAX_CONCURRENCY).contains(&args.concurrency) {
            bail!("--concurrency must be 1 to {MAX_CONCURRENCY}");
        }
        let length = match (args.duration, args.requests) {
            (Some(d), None) if d.is_zero() => bail!("--duration must be longer than 0"),
            (Some(d), None) => Length::Duration(d),
            (None, Some(0)) => bail!("--requests must be at least 1"),
            (None, Some(n)) => Length::Requests(n),
            _ => bail!("give one of --duration or --requests"),
        };
        if let Some(r) = args.rate {
            if !(r.is_finite() && r > 0.0) {
                bail!("--rate must be a positive number of requests per second");
            }
        }
        if args.size == 0 {
            bail!("--size must be at least 1 byte");
        }
        Ok(Plan {
            addr,
            target: args.target.addr.clone(),
            concurrency: args.concurrency,
            length,
            size: args.size,
            rate: args.rate,
            new_connection_per_request: args.new_connection_per_request,
            timeout: args.timeout,
        })
    }
}

/// `ftest simulate`: run the plan, print the report, fail on any failed request.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let addr = args.target.resolve_one().await?;
    let plan = Plan::new(args, addr)?;
    let mode = ProgressMode::choose(args.quiet);
    let report = simulate(&plan, mode, super::stop_signal()).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let written = if args.json {
            serde_json::to_string_pretty(&report)
                .map_err(std::io::Error::other)
                .and_then(|s| writeln!(out, "{s}"))
        } else {
            report.write_text(&mut out)
        };
        written.map_err(|e| anyhow::anyhow!("write output: {}", net::describe(&e)))?;
    }
    if report.interrupted {
        bail!("simulate {}: interrupted", plan.target);
    }
    if report.failed > 0 {
        bail!(
            "simulate {}: {} of {} requests failed",
            plan.target,
            report.failed,
            report.requests
        );
    }
    Ok(())
}

/// State the workers share.
struct Shared {
    plan: Plan,
    start: Instant,
    /// Requests claimed so far (the index of the next one).
    next: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    stopped: AtomicBool,
    latencies: Recorder,
    /// The test data: one pattern, read at a different offset per request.
    payload: Arc<[u8]>,
}

impl Shared {
    /// When a duration-bound run ends (None: bound by count, or beyond any clock).
    fn end(&self) -> Option<Instant> {
        match self.plan.length {
            Length::Duration(d) => self.start.checked_add(d),
            Length::Requests(_) => None,
        }
    }

    /// Claims the next request and waits until it is due. Returns the moment its
    /// latency is measured from, or None when the run is over.
    async fn claim(&self, stop: &mut watch::Receiver<bool>) -> Option<Instant> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let Some(rate) = self.plan.rate else {
            // Closed loop: the next request goes now.
            match (self.plan.length, self.end()) {
                (Length::Requests(n), _) if self.next.fetch_add(1, Ordering::Relaxed) >= n => {
                    return None
                }
                (_, Some(end)) if Instant::now() >= end => return None,
                _ => return Some(Instant::now()),
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        // Past what an Instant can hold is past any end of the run.
        let due = Duration::try_from_secs_f64(i as f64 / rate)
            .ok()
            .and_then(|d| self.start.checked_add(d))?;
        match (self.plan.length, self.end()) {
            (Length::Requests(n), _) if i >= n => return None,
            (_, Some(end)) if due >= end => return None,
            _ => {}
        }
        if due <= Instant::now() {
            // Late (every worker was busy): the wait counts as latency.
            return Some(due);
        }
        // Early: sleep until due, then measure from the wake-up so the timer's own
        // lateness (up to a millisecond) is not charged to the proxy.
        tokio::select! {
            _ = tokio::time::sleep_until(due) => Some(Instant::now()),
            _ = stop.changed() => None,
        }
    }

    fn record(&self, worker: usize, latency: Duration) {
        self.latencies.record(worker, latency);
    }
}

/// Runs `plan`, showing progress as `mode` says. `stop` (Ctrl-C) ends it early:
/// no new requests, those in flight finish, and the report says so.
pub async fn simulate(
    plan: &Plan,
    mode: ProgressMode,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    let latencies = Recorder::new(plan.concurrency)?;
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        start: Instant::now(),
        next: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        latencies,
        payload: crate::payload::pattern(plan.size + worker::ROTATE, 1).into(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    for i in 0..plan.concurrency {
        workers.spawn(worker::run(shared.clone(), i, stop_rx.clone()));
    }
    let progress = progress::start(mode, shared.clone());

    tokio::pin!(stop);
    let mut interrupted = false;
    let mut results = Vec::with_capacity(plan.concurrency);
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(r)) => results.push(r),
                Some(Err(e)) => bail!("a load worker failed: {e}"),
                None => break,
            },
            _ = &mut stop, if !interrupted => {
                interrupted = true;
                shared.stopped.store(true, Ordering::Relaxed);
                let _ = stop_tx.send(true);
            }
        }
    }
    let elapsed = shared.start.elapsed();
    progress.finish().await;
    Ok(Report::build(plan, &shared, results, elapsed, interrupted))
}
