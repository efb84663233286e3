//! `ftest balancer`: open connections one after another, learn which backend
//! answered each (the identity probe), print the distribution and judge it.
//!
//! "One after another" is strict: each connection is closed, and its close seen,
//! before the next opens, so strategies that count open connections see one at a
//! time and round robin's order is exactly the order of the connections.
//!
//! With `--source-ips` the connections come from several loopback addresses, so a
//! strategy that hashes the client address can be seen keeping each one's backend.

mod judge;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

pub use judge::{chi_square_p, judge, Check, Expect, Verdict};

use crate::exchange::{Failure, TryError};
use crate::net::{self, parse_millis, TargetArgs};
use crate::probe::{self, Identity};

const EXAMPLES: &str = "\
Examples:
  ftest balancer 127.0.0.1:5001 --expect round-robin
  ftest balancer 127.0.0.1:5001 -n 70 --expect round-robin --weights 5,1,1
  ftest balancer localhost:5001 --connections 300 --expect even --backends 3
  ftest balancer 127.0.0.1:5001 -n 400 --expect random --weights 3,1
  ftest balancer 127.0.0.1:5001 -n 64 --expect consistent-hash --source-ips 16
  ftest balancer [::1]:5300 -n 10                   # just show the distribution

Expectations (one connection at a time, so no backend has any open when the next
is balanced):
  round-robin        backends take turns in a fixed cycle (2 connections per backend);
                     with --weights, every cycle of sum(weights) connections gives each
                     backend its weight, in smooth weighted order (5,1,1: a a b a c a a)
  even, random       counts pass a chi-square test at p >= 0.001 of an even split, or
                     with --weights of shares in proportion to the weights
                     (5 expected connections per backend)
  least-connections  no backend ever two connections ahead of another: with every
                     backend idle, least connections is left with its tie-break, turns
  p2c                an even split, as `even`: two random picks among idle backends
                     are one random pick
  consistent-hash    (or sticky) each source address always reaches the same backend;
                     from --source-ips 11 on, at least 2 backends must be used
  single             every connection reached the same backend
  any                only print (fails only when connections fail)
Balancing expectations need at least 2 backends to answer unless --backends (or the
number of --weights) says otherwise. Give --weights in the order of the targets in
the config. Exit status: 0 when the expectation holds, 1 otherwise.";

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
    /// Target weights, in config order, for round-robin, even and random (one per
    /// backend).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "W[,W...]",
        conflicts_with = "backends",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub weights: Vec<u32>,
    /// Open the connections from 127.0.0.1 to 127.0.0.N, back and forth (for
    /// consistent-hash; a loopback IPv4 target only).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_ips: Option<u8>,
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
    /// The source addresses connections came from; empty: the system's choice.
    pub sources: Vec<IpAddr>,
    /// The index into `sources` of each successful connection (0 without sources),
    /// same order as `sequence`.
    pub origin: Vec<usize>,
    /// Failed connections: (1-based connection number, why).
    pub failed: Vec<(usize, TryError)>,
}

impl Distribution {
    #[cfg(test)]
    fn add(&mut self, who: Identity) {
        self.add_from(who, 0);
    }

    fn add_from(&mut self, who: Identity, source: usize) {
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
        self.origin.push(source);
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
    let check = Check {
        expect: args.expect,
        backends: args.backends,
        weights: args.weights.clone(),
    };
    if let Err(e) = check.validate() {
        bail!("{e}");
    }
    let addr = args.target.resolve_one().await?;
    let sources = match args.source_ips {
        None => Vec::new(),
        Some(n) if matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) => {
            loopback_sources(n)
        }
        Some(_) => bail!(
            "--source-ips binds 127.0.0.1 to 127.0.0.N, which reach only a loopback IPv4 target; {addr} is not one"
        ),
    };
    let dist = measure_from(addr, args.connections, args.timeout, &sources).await;
    let verdict = check.judge(&dist);
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

/// 127.0.0.1 to 127.0.0.`n`. Linux routes all of 127.0.0.0/8 to the loopback
/// interface, so each is a distinct client address without any setup.
pub fn loopback_sources(n: u8) -> Vec<IpAddr> {
    (1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// The source of connection `i` (from 0) among `n` sources: back and forth,
/// 0 1 .. n-1 n-1 .. 1 0 0 1 .. A plain cycle 0 1 .. n-1 0 1 .. would line up with
/// a round robin over a number of backends that divides n and make it look
/// sticky; at each turn one source opens two connections in a row, which plain
/// round robin never gives the same backend.
pub fn source_of(i: usize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let (pass, pos) = (i / n, i % n);
    if pass % 2 == 0 {
        pos
    } else {
        n - 1 - pos
    }
}

/// Opens `n` connections to `addr` one after another and asks each who answered.
pub async fn measure(addr: SocketAddr, n: usize, limit: Duration) -> Distribution {
    measure_from(addr, n, limit, &[]).await
}

/// [`measure`] with the connections taking turns over `sources` (see [`source_of`]);
/// no sources: the system picks the source address.
pub async fn measure_from(
    addr: SocketAddr,
    n: usize,
    limit: Duration,
    sources: &[IpAddr],
) -> Distribution {
    let mut dist = Distribution {
        sources: sources.to_vec(),
        ..Distribution::default()
    };
    for i in 0..n {
        let s = source_of(i, sources.len());
        match ask_from(addr, sources.get(s).copied(), limit).await {
            Ok(who) => dist.add_from(who, s),
            Err(e) => dist.failed.push((i + 1, e)),
        }
    }
    dist
}

/// One connection: probe, read the answer, close, and wait for the other side's close.
pub async fn ask(addr: SocketAddr, limit: Duration) -> Result<Identity, TryError> {
    ask_from(addr, None, limit).await
}

/// [`ask`] from a chosen source address.
pub async fn ask_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    limit: Duration,
) -> Result<Identity, TryError> {
    let attempt = async {
        let mut stream = net::connect_from(addr, source, limit).await?;
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
/// Most sources whose answers are listed one by one.
const SOURCES_SHOWN: usize = 16;

/// The answers each source got, in order: a sticky balancer shows one letter per line.
fn write_sources(out: &mut dyn Write, dist: &Distribution) -> std::io::Result<()> {
    let mut answers = vec![String::new(); dist.sources.len()];
    for (&b, &s) in dist.sequence.iter().zip(&dist.origin) {
        if let Some(a) = answers.get_mut(s) {
            if a.len() < ORDER_SHOWN {
                a.push(key(b).unwrap_or('?'));
            }
        }
    }
    let width = dist
        .sources
        .iter()
        .map(|s| s.to_string().len())
        .max()
        .unwrap_or(0);
    for (source, a) in dist.sources.iter().zip(&answers).take(SOURCES_SHOWN) {
        writeln!(out, "from {:<width$}  {a}", source.to_string())?;
    }
    if dist.sources.len() > SOURCES_SHOWN {
        writeln!(
            out,
            "... and {} more sources",
            dist.sources.len() - SOURCES_SHOWN
        )?;
    }
    Ok(())
}

/// The table, a bar per backend, the order of answers, failures and the verdict.
pub fn print(
    out: &mut dyn Write,
    name: &str,
    dist: &Distribution,
    expect: Expect,
    verdict: &Verdict,
) -> std::io::Result<()> {
    let from = match dist.sources.len() {
        0 | 1 => String::new(),
        s => format!(", from {s} source addresses"),
    };
    writeln!(
        out,
        "BALANCER {name}: {} connections, one after another{from}",
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
        if dist.sources.len() > 1 {
            write_sources(out, dist)?;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_go_back_and_forth() {
        let order: Vec<usize> = (0..10).map(|i| source_of(i, 3)).collect();
        assert_eq!(order, [0, 1, 2, 2, 1, 0, 0, 1, 2, 2]);
        assert_eq!(source_of(5, 1), 0);
        assert_eq!(source_of(5, 0), 0);
        let s = loopback_sources(3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].to_string(), "127.0.0.3");
    }
}
