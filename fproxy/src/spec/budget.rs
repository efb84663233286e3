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

#[derive(Debug)]
pub struct Budget {
    per_second: f64,
    burst: f64,
    /// Tokens left and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    /// `per_second` fetches a second on average, up to `burst` at once (both at
    /// least 1). Starts full.
    pub fn new(per_second: u32, burst: u32) -> Budget {
        let burst = f64::from(burst.max(1));
        Budget {
            per_second: f64::from(per_second.max(1)),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one fetch from the budget; `false` when it is spent.
    pub fn take(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
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
