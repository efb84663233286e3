//! Latency recording shared by the load commands: HDR histograms (3 significant
//! digits, 1 µs to 1 h) sharded across workers, and the percentiles reports print.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tells apart (µs); longer ones count as this.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Histograms are shared by workers in shards: one per worker would cost ~200 KB
/// each, too much at thousands of workers; a shard's lock is held only to record.
const SHARDS: usize = 64;

/// A new empty histogram with the bounds every report uses.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("cannot create a latency histogram")
}

/// Records latencies from many workers at once.
#[derive(Debug)]
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    /// Enough shards for `workers` (at most 64).
    pub fn new(workers: usize) -> anyhow::Result<Recorder> {
        let mut shards = Vec::new();
        for _ in 0..workers.clamp(1, SHARDS) {
            shards.push(Mutex::new(histogram()?));
        }
        Ok(Recorder { shards })
    }

    pub fn record(&self, worker: usize, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let shard = &self.shards[worker % self.shards.len()];
        // A poisoned lock only means another worker panicked mid-record; the
        // counts are still usable.
        let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
        h.saturating_record(us);
    }

    /// All shards added up (None only if there are no shards, which `new` prevents).
    pub fn merged(&self) -> Option<Histogram<u64>> {
        let mut all: Option<Histogram<u64>> = None;
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            match &mut all {
                None => all = Some(h.clone()),
                // Shards share bounds, so adding cannot fail; should it, the shard is
                // left out rather than the whole report lost.
                Some(a) => {
                    let _ = a.add(&*h);
                }
            }
        }
        all
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    #[serde(rename = "p99_9")]
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    /// The percentiles of `h`; None when it recorded nothing.
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }

    /// "p50 0.304  p90 0.447  p99 0.651  p99.9 1.644  max 4.983  (mean 0.319, min 0.035)"
    /// in milliseconds.
    pub fn text_ms(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, min {})",
            us_as_ms(self.p50 as f64),
            us_as_ms(self.p90 as f64),
            us_as_ms(self.p99 as f64),
            us_as_ms(self.p999 as f64),
            us_as_ms(self.max as f64),
            us_as_ms(self.mean),
            us_as_ms(self.min as f64)
        )
    }
}

/// Microseconds as milliseconds with three decimals.
pub fn us_as_ms(v: f64) -> String {
    format!("{:.3}", v / 1000.0)
}

/// Bytes per second for people: "3.1 MiB/s".
pub fn per_second(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The lines every load report ends with: latency percentiles, then errors by kind
/// with the first message of each.
pub fn write_outcome<'a>(
    out: &mut dyn std::io::Write,
    latency: Option<&Latency>,
    errors: impl IntoIterator<Item = (&'static str, u64)>,
    examples: impl IntoIterator<Item = (&'static str, &'a str)>,
) -> std::io::Result<()> {
    match latency {
        Some(l) => writeln!(out, "latency ms:  {}", l.text_ms())?,
        None => writeln!(out, "latency:     no successful request")?,
    }
    let kinds: Vec<String> = errors
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if kinds.is_empty() {
        writeln!(out, "errors:      none")?;
    } else {
        writeln!(out, "errors:      {}", kinds.join(", "))?;
        for (k, m) in examples {
            writeln!(out, "  first {k}: {m}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_percentiles_order() {
        let r = Recorder::new(3).unwrap();
        for i in 1..=100u64 {
            r.record(i as usize, Duration::from_micros(i * 10));
        }
        let l = Latency::of(&r.merged().unwrap()).unwrap();
        assert_eq!((l.min, l.max), (10, 1000));
        assert!(l.p50 >= 495 && l.p50 <= 505, "{l:?}");
        assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999);
        assert!(l.text_ms().starts_with("p50 0.50"), "{}", l.text_ms());
        assert_eq!(Latency::of(&histogram().unwrap()), None);
        assert_eq!(per_second(3.0 * 1024.0 * 1024.0), "3.0 MiB/s");
    }
}
