//! The budget of first fetches for keys the app does not know.
//!
//! Every unknown SDK key a client names costs one upstream request (the first
//! fetch), so a client inventing keys could make fproxy hammer upstream. A token
//! bucket bounds those fetches per second for the whole app; a request over it is
//! answered 503/UNAVAILABLE at once, without asking upstream. Known keys, keys
//! recently rejected (answered from memory) and warm keys cost nothing.
//!
//! A dozen lines, on tokio's clock so tests can run it on paused time; a crate
//! (governor) would bring its own clock and a handful of dependencies.

use std::sync::Mutex;

use tokio::time::Instant;

use crate::sync::lock;

/// Counted in nanoseconds of credit (a fetch costs `1s / per_second`), so the
/// arithmetic is exact.
#[derive(Debug)]
pub struct Budget {
    cost: u64,
    capacity: u64,
    /// Credit left and when it was counted.
    state: Mutex<(u64, Instant)>,
}

impl Budget {
    /// `per_second` fetches a second on average, up to `burst` at once (both at
    /// least 1). Starts full.
    pub fn new(per_second: u32, burst: u32) -> Budget {
        let cost = 1_000_000_000 / u64::from(per_second.max(1));
        let capacity = cost * u64::from(burst.max(1));
        Budget {
            cost,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes one fetch from the budget; `false` when it is spent.
    pub fn take(&self) -> bool {
        let mut s = lock(&self.state);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(s.1).as_nanos();
        let refill = u64::try_from(elapsed).unwrap_or(u64::MAX);
        s.0 = s.0.saturating_add(refill).min(self.capacity);
        s.1 = now;
        if s.0 >= self.cost {
            s.0 -= self.cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let b = Budget::new(10, 3);
        assert_eq!((0..10).filter(|_| b.take()).count(), 3, "burst");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take(), "one refilled after 1/rate");
        assert!(!b.take());
        // A long pause refills to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..10).filter(|_| b.take()).count(), 3);
        // Over one second at most rate (+ what was left) pass.
        let mut passed = 0;
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(10)).await;
            passed += usize::from(b.take());
        }
        assert_eq!(passed, 10);
    }
}
