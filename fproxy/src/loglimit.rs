//! Rate limits for log lines a client can trigger.
//!
//! A client can cause a log line per connection or per request (a refused
//! connection, an unknown SDK key). Without a limit, a flood of such clients turns
//! into a flood of log lines: disk, CPU and the log shipper pay for the attacker.
//! Metrics already count every event; the log only needs a sample.
//!
//! Each call site owns one [`LogLimit`] (usually a `static`), so each *reason* gets
//! its own budget: at most one line per interval, and the line that goes out says how
//! many were suppressed since the last one.
//!
//! ```
//! use fproxy::loglimit::LogLimit;
//! static REFUSED: LogLimit = LogLimit::per_second();
//! if let Some(suppressed) = REFUSED.allow() {
//!     tracing::warn!(suppressed, "connection refused");
//! }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// At most one log line per `interval`; lock-free, so it is cheap on hot paths.
#[derive(Debug)]
pub struct LogLimit {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] of the last line that went out, plus one
    /// (0 means "never", so the first event always logs).
    last: AtomicU64,
    suppressed: AtomicU64,
}

/// A process-wide monotonic origin for every limiter.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimit {
    pub const fn new(interval: Duration) -> Self {
        LogLimit {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// One line per second: the default for client-triggered lines.
    pub const fn per_second() -> Self {
        Self::new(Duration::from_secs(1))
    }

    /// `Some(n)` when a line may be written now, `n` being how many were suppressed
    /// since the previous one; `None` when this event should only be counted.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let now_ms = now.saturating_duration_since(epoch()).as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now_ms < last.saturating_add(self.interval_ms) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // Only one of several racing callers wins the slot; the others count.
        match self
            .last
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let limit = LogLimit::per_second();
        let t0 = epoch() + Duration::from_secs(10);
        assert_eq!(limit.allow_at(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(limit.allow_at(t0 + Duration::from_micros(i * 500)), None);
        }
        assert_eq!(limit.allow_at(t0 + Duration::from_millis(1000)), Some(1000));
        assert_eq!(limit.allow_at(t0 + Duration::from_millis(1001)), None);
        assert_eq!(limit.allow_at(t0 + Duration::from_millis(5000)), Some(1));
    }

    #[test]
    fn the_first_event_logs_even_at_the_epoch() {
        let limit = LogLimit::new(Duration::from_secs(60));
        assert_eq!(limit.allow_at(epoch()), Some(0));
        assert_eq!(limit.allow_at(epoch()), None);
    }
}
