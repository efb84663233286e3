//! `ftest ping`: send data through the proxy and check the echo, like `ping`.
//!
//! Each try opens its own connection, so tries travel the whole accept → pick →
//! connect path and show which backend answered. A try: connect, send the identity
//! probe and the payload in one write, read the answer line and the echo, compare
//! byte for byte, half-close and expect the echo side to close too (extra bytes
//! would be a mismatch). `time` runs from the write to the last echoed byte.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use crate::exchange::{check_echo, read_full, Failure, TryError};
use crate::net::{self, ms, parse_millis, TargetArgs};
use crate::payload;
use crate::probe::{self, Identity};

const EXAMPLES: &str = "\
Examples:
  ftest ping 127.0.0.1:5001                     # 5 tries, 64 bytes, 1 per second
  ftest ping localhost:5001 -6 --count 10 --size 1400 --interval 200
  ftest ping [::1]:5300 --count 0               # until Ctrl-C

Exit status: 0 when every try echoed correctly, 1 otherwise.";

/// The largest payload: bigger tries are a load test, not a ping.
const MAX_SIZE: usize = 64 * 1024 * 1024;
/// Longest pause between tries (keeps the schedule's clock arithmetic in range).
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Number of tries; 0 runs until Ctrl-C.
    #[arg(short, long, default_value_t = 5)]
    pub count: u64,
    /// Payload bytes per try.
    #[arg(short, long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// Pause between the start of one try and the next, in ms (or 1s, 250ms).
    #[arg(short, long, default_value = "1000", value_name = "MS", value_parser = parse_millis)]
    pub interval: Duration,
    /// Limit for each try (connect plus echo), in ms (or 2s).
    #[arg(short = 'W', long, default_value = "2000", value_name = "MS", value_parser = parse_millis)]
    pub timeout: Duration,
}

/// A successful try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryOk {
    pub connect: Duration,
    pub rtt: Duration,
    pub backend: Identity,
}

/// What a whole ping run saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub ok: Vec<TryOk>,
    pub failed: Vec<TryError>,
}

impl Summary {
    pub fn tries(&self) -> usize {
        self.ok.len() + self.failed.len()
    }
}

/// `ftest ping`: run, print like `ping`, fail when any try failed.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let addr = args.target.resolve_one().await?;
    let mut out = std::io::stdout().lock();
    let summary = ping(
        addr,
        &args.target.addr,
        args,
        &mut out,
        super::stop_signal(),
    )
    .await?;
    if !summary.failed.is_empty() {
        bail!(
            "ping {}: {} of {} tries failed",
            args.target.addr,
            summary.failed.len(),
            summary.tries()
        );
    }
    if summary.ok.is_empty() {
        bail!("ping {}: no tries", args.target.addr);
    }
    Ok(())
}

/// Runs the tries against `addr` (named `name`), printing each and a summary.
/// `stop` ends the run early (Ctrl-C); the summary still prints.
pub async fn ping(
    addr: SocketAddr,
    name: &str,
    args: &Args,
    out: &mut dyn Write,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    tokio::pin!(stop);
    if args.size > MAX_SIZE {
        bail!("--size {} is over the {} byte limit", args.size, MAX_SIZE);
    }
    if args.interval > MAX_INTERVAL {
        bail!("--interval is over the limit of one day");
    }
    let write_err = |e: std::io::Error| anyhow::anyhow!("write output: {}", net::describe(&e));
    let shown = if name == addr.to_string() {
        name.to_string()
    } else {
        format!("{name} ({addr})")
    };
    writeln!(
        out,
        "PING {shown}: {} bytes, one connection per try",
        args.size
    )
    .map_err(write_err)?;

    let mut summary = Summary::default();
    let mut next = Instant::now();
    let mut seq = 0u64;
    while args.count == 0 || seq < args.count {
        seq += 1;
        let data = payload::pattern(args.size, seq);
        let this_try = async {
            tokio::time::sleep_until(next).await;
            tokio::time::timeout(args.timeout, one_try(addr, &data, args.timeout)).await
        };
        let result = tokio::select! {
            r = this_try => r,
            _ = &mut stop => break,
        };
        next += args.interval;
        let line = match result {
            Ok(Ok(ok)) => {
                let line = format!(
                    "{} bytes from {addr}: seq={seq} backend={} connect={} ms time={} ms",
                    args.size,
                    ok.backend,
                    ms(ok.connect),
                    ms(ok.rtt)
                );
                summary.ok.push(ok);
                line
            }
            Ok(Err(e)) => {
                let line = format!("seq={seq}: {} ({})", e, e.kind.as_str());
                summary.failed.push(e);
                line
            }
            Err(_) => {
                let e = TryError::new(
                    Failure::Timeout,
                    format!(
                        "no complete echo from {addr} within {}",
                        net::fmt_duration(args.timeout)
                    ),
                );
                let line = format!("seq={seq}: {e} (timeout)");
                summary.failed.push(e);
                line
            }
        };
        writeln!(out, "{line}").map_err(write_err)?;
    }
    print_summary(&summary, &shown, out).map_err(write_err)?;
    Ok(summary)
}

/// One connection: connect, probe + payload, check the echo, close cleanly.
pub async fn one_try(addr: SocketAddr, data: &[u8], limit: Duration) -> Result<TryOk, TryError> {
    let started = Instant::now();
    let mut stream = net::connect(addr, limit).await?;
    let connect = started.elapsed();

    let (r, mut w) = stream.split();
    let mut r = BufReader::new(r);
    let mut request = Vec::with_capacity(probe::PROBE.len() + data.len());
    request.extend_from_slice(probe::PROBE);
    request.extend_from_slice(data);
    let mut echo = vec![0u8; data.len()];

    let sent_at = Instant::now();
    let write = async {
        w.write_all(&request)
            .await
            .map_err(|e| TryError::io("write to", addr, &e))
    };
    let read = async {
        let backend = probe::read_answer(&mut r)
            .await
            .map_err(|e| e.into_try_error(addr))?;
        read_full(&mut r, &mut echo, addr).await?;
        Ok::<_, TryError>((backend, sent_at.elapsed()))
    };
    let (wrote, read) = tokio::join!(write, read);
    let (backend, rtt) = read?;
    wrote?;
    check_echo(data, &echo, addr)?;

    // Half-close: the echo side should pass the FIN back with nothing after the echo.
    w.shutdown()
        .await
        .map_err(|e| TryError::io("close", addr, &e))?;
    let mut extra = [0u8; 64];
    match r.read(&mut extra).await {
        Ok(0) => {}
        Ok(n) => {
            return Err(TryError::new(
                Failure::Mismatch,
                format!(
                    "mismatch from {addr}: {} extra byte(s) after the echo: {}",
                    n,
                    probe::show_bytes(&extra[..n])
                ),
            ))
        }
        Err(e) => return Err(TryError::io("read from", addr, &e)),
    }
    Ok(TryOk {
        connect,
        rtt,
        backend,
    })
}

fn print_summary(s: &Summary, shown: &str, out: &mut dyn Write) -> std::io::Result<()> {
    let tries = s.tries();
    let failed_pct = if tries == 0 {
        0.0
    } else {
        100.0 * s.failed.len() as f64 / tries as f64
    };
    writeln!(out, "--- {shown} ftest ping statistics ---")?;
    writeln!(
        out,
        "{tries} tries, {} ok, {} failed, {failed_pct:.1}% failed",
        s.ok.len(),
        s.failed.len()
    )?;
    if !s.ok.is_empty() {
        let connect: Vec<Duration> = s.ok.iter().map(|t| t.connect).collect();
        let rtt: Vec<Duration> = s.ok.iter().map(|t| t.rtt).collect();
        writeln!(out, "connect min/avg/max/mdev = {} ms", stats(&connect))?;
        writeln!(out, "rtt min/avg/max/mdev = {} ms", stats(&rtt))?;
        let mut backends: BTreeMap<&Identity, usize> = BTreeMap::new();
        for t in &s.ok {
            *backends.entry(&t.backend).or_default() += 1;
        }
        let list: Vec<String> = backends.iter().map(|(b, n)| format!("{b} x{n}")).collect();
        writeln!(out, "backends: {}", list.join(", "))?;
    }
    let mut kinds: BTreeMap<Failure, usize> = BTreeMap::new();
    for e in &s.failed {
        *kinds.entry(e.kind).or_default() += 1;
    }
    if !kinds.is_empty() {
        let list: Vec<String> = kinds
            .iter()
            .map(|(k, n)| format!("{} {n}", k.as_str()))
            .collect();
        writeln!(out, "failures: {}", list.join(", "))?;
    }
    Ok(())
}

/// "min/avg/max/mdev" in ms, as `ping` prints it (mdev: standard deviation).
fn stats(v: &[Duration]) -> String {
    let ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let n = ms.len() as f64;
    let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ms.iter().copied().fold(0.0, f64::max);
    let avg = ms.iter().sum::<f64>() / n;
    let mdev = (ms.iter().map(|x| (x - avg).powi(2)).sum::<f64>() / n).sqrt();
    format!("{min:.3}/{avg:.3}/{max:.3}/{mdev:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_like_ping() {
        let v = [Duration::from_millis(1), Duration::from_millis(3)];
        assert_eq!(stats(&v), "1.000/2.000/3.000/1.000");
    }
}
