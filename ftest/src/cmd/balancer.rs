//! `ftest balancer`: open connections one after another, learn which backend
//! answered each (the identity probe), print the distribution and judge it.
//!
//! "One after another" is strict: each connection is closed, and its close seen,
//! before the next opens, so strategies that count open connections see one at a
//! time and round robin's order is exactly the order of the connections.

mod judge;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

pub use judge::{chi_square_p, judge, Expect, Verdict};

use crate::exchange::{Failure, TryError};
use crate::net::{self, parse_millis, TargetArgs};
use crate::probe::{self, Identity};

const EXAMPLES: &str = "\
Examples:
  ftest balancer 127.0.0.1:5001 --expect round-robin
  ftest balancer localhost:5001 --connections 300 --expect even --backends 3
  ftest balancer [::1]:5300 -n 10                   # just show the distribution

Expectations:
  round-robin  backends take turns in a fixed cycle (needs 2 connections per backend)
  even         counts pass a chi-square test of an even split at p >= 0.001
               (needs 5 connections per backend)
  single       every connection reached the same backend
  any          only print (fails only when connections fail)
round-robin and even also need at least 2 backends to answer unless --backends says
otherwise. Exit status: 0 when the expectation holds, 1 otherwise.";

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to open, one after another.
    #[arg(short = 'n', long, default_value_t = 30)]
    pub connections: usize,
    /// What the distribution must look like.
    #[arg(short, long, value_enum, default_value_t = Expect::Any)]
    pub expect: Expect,
    /// How many backends must answer.
    #[arg(short, long, value_name = "N")]
    pub backends: Option<usize>,
    /// Limit for each connection, in ms (or 2s).
    #[arg(short = 'W', long, default_value = "2000", value_name = "MS", value_parser = parse_millis)]
    pub timeout: Duration,
}

/// Who answered each connection.
#[derive(Debug, Clone, Default)]
pub struct Distribution {
    /// Backends in order of first answer.
    pub backends: Vec<Identity>,
    /// Connections per backend, same order.
    pub counts: Vec<usize>,
    /// The backend index of each successful connection, in connection order.
    pub sequence: Vec<usize>,
    /// Failed connections: (1-based connection number, why).
    pub failed: Vec<(usize, TryError)>,
}

impl Distribution {
    fn add(&mut self, who: Identity) {
        let i = match self.backends.iter().position(|b| *b == who) {
            Some(i) => i,
            None => {
                self.backends.push(who);
                self.counts.push(0);
                self.backends.len() - 1
            }
        };
        self.counts[i] += 1;
        self.sequence.push(i);
    }

    pub fn connections(&self) -> usize {
        self.sequence.len() + self.failed.len()
    }

    /// Connections per backend id, for tests and scripts.
    pub fn count_of(&self, id: &str) -> usize {
        self.backends
            .iter()
            .position(|b| *b == Identity::Backend(id.to_string()))
            .map_or(0, |i| self.counts[i])
    }
}

/// `ftest balancer`: measure, print, judge.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let addr = args.target.resolve_one().await?;
    let dist = measure(addr, args.connections, args.timeout).await;
    let verdict = judge(&dist, args.expect, args.backends);
    let mut out = std::io::stdout().lock();
    print(&mut out, &args.target.addr, &dist, args.expect, &verdict)
        .map_err(|e| anyhow::anyhow!("write output: {}", net::describe(&e)))?;
    if !verdict.holds {
        bail!(
            "balancer {}: {} does not hold: {}",
            args.target.addr,
            args.expect.name(),
            verdict.reason
        );
    }
    Ok(())
}

/// Opens `n` connections to `addr` one after another and asks each who answered.
pub async fn measure(addr: SocketAddr, n: usize, limit: Duration) -> Distribution {
    let mut dist = Distribution::default();
    for i in 1..=n {
        match ask(addr, limit).await {
            Ok(who) => dist.add(who),
            Err(e) => dist.failed.push((i, e)),
        }
    }
    dist
}

/// One connection: probe, read the answer, close, and wait for the other side's close.
pub async fn ask(addr: SocketAddr, limit: Duration) -> Result<Identity, TryError> {
    let attempt = async {
        let mut stream = net::connect(addr, limit).await?;
        let (r, mut w) = stream.split();
        let mut r = BufReader::new(r);
        w.write_all(probe::PROBE)
            .await
            .map_err(|e| TryError::io("write to", addr, &e))?;
        let who = probe::read_answer(&mut r)
            .await
            .map_err(|e| e.into_try_error(addr))?;
        w.shutdown()
            .await
            .map_err(|e| TryError::io("close", addr, &e))?;
        let mut extra = [0u8; 64];
        match r.read(&mut extra).await {
            Ok(0) => Ok(who),
            Ok(n) => Err(TryError::new(
                Failure::Mismatch,
                format!(
                    "mismatch from {addr}: unexpected bytes after the probe answer: {}",
                    probe::show_bytes(&extra[..n])
                ),
            )),
            Err(e) => Err(TryError::io("read from", addr, &e)),
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(r) => r,
        Err(_) => Err(TryError::new(
            Failure::Timeout,
            format!("no answer from {addr} within {}", net::fmt_duration(limit)),
        )),
    }
}

/// One letter per backend for the order line; `None` past 52 backends.
fn key(i: usize) -> Option<char> {
    const KEYS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    KEYS.get(i).map(|&b| char::from(b))
}

const BAR_WIDTH: usize = 40;
/// Most failures listed one by one; the rest are counted.
const FAILURES_SHOWN: usize = 5;
/// Longest order line printed.
const ORDER_SHOWN: usize = 120;

/// The table, a bar per backend, the order of answers, failures and the verdict.
pub fn print(
    out: &mut dyn Write,
    name: &str,
    dist: &Distribution,
    expect: Expect,
    verdict: &Verdict,
) -> std::io::Result<()> {
    writeln!(
        out,
        "BALANCER {name}: {} connections, one after another",
        dist.connections()
    )?;
    let ids: Vec<String> = dist.backends.iter().map(ToString::to_string).collect();
    let width = ids.iter().map(String::len).max().unwrap_or(0).max(8);
    let max = dist.counts.iter().copied().max().unwrap_or(0).max(1);
    let ok = dist.sequence.len().max(1);
    writeln!(
        out,
        "   {:<width$}  {:>6}  {:>6}",
        "backend", "conns", "share"
    )?;
    for (i, id) in ids.iter().enumerate() {
        let c = dist.counts[i];
        let bar = "█".repeat((c * BAR_WIDTH).div_ceil(max));
        writeln!(
            out,
            "{}  {id:<width$}  {c:>6}  {:>5.1}%  {bar}",
            key(i).unwrap_or(' '),
            100.0 * c as f64 / ok as f64
        )?;
    }
    if !dist.failed.is_empty() {
        writeln!(out, "   {:<width$}  {:>6}", "(failed)", dist.failed.len())?;
    }
    if dist.backends.len() <= 52 && !dist.sequence.is_empty() {
        // The order of answers with failures marked '!': round robin shows as ABCABC.
        let mut order = String::new();
        let mut failed = dist.failed.iter().map(|(n, _)| *n).peekable();
        let mut seq = dist.sequence.iter();
        for n in 1..=dist.connections().min(ORDER_SHOWN) {
            if failed.peek() == Some(&n) {
                failed.next();
                order.push('!');
            } else if let Some(&i) = seq.next() {
                order.push(key(i).unwrap_or('?'));
            }
        }
        if dist.connections() > ORDER_SHOWN {
            order.push_str("...");
        }
        writeln!(out, "order: {order}")?;
    }
    for (n, e) in dist.failed.iter().take(FAILURES_SHOWN) {
        writeln!(out, "connection {n}: {e} ({})", e.kind.as_str())?;
    }
    if dist.failed.len() > FAILURES_SHOWN {
        writeln!(
            out,
            "... and {} more failed connections",
            dist.failed.len() - FAILURES_SHOWN
        )?;
    }
    let word = if verdict.holds {
        "holds"
    } else {
        "DOES NOT HOLD"
    };
    writeln!(out, "expect {}: {word}: {}", expect.name(), verdict.reason)
}
