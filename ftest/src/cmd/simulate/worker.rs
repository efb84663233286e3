//! One load worker: claim a request, send it, check the echo, record.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Shared;
use crate::exchange::{self, Failure, TryError};
use crate::net;

/// Requests read the shared payload at one of this many offsets, so consecutive
/// requests differ and a stale echo from the previous one shows as a mismatch.
pub const ROTATE: usize = 64;

/// Failures one worker saw, by kind, with the first message of each kind.
#[derive(Debug, Default)]
pub struct Errors {
    pub counts: [u64; Failure::ALL.len()],
    pub first: [Option<String>; Failure::ALL.len()],
}

impl Errors {
    fn add(&mut self, e: TryError) {
        let k = e.kind as usize;
        self.counts[k] += 1;
        if self.first[k].is_none() {
            self.first[k] = Some(e.message);
        }
    }

    /// Adds another worker's errors (its first messages only where none yet).
    pub fn merge(&mut self, other: Errors) {
        for (k, first) in other.first.into_iter().enumerate() {
            self.counts[k] += other.counts[k];
            if self.first[k].is_none() {
                self.first[k] = first;
            }
        }
    }
}

/// What a worker hands back when the run is over.
#[derive(Debug, Default)]
pub struct Outcome {
    pub errors: Errors,
    pub connections: u64,
}

pub async fn run(shared: Arc<Shared>, index: usize, mut stop: watch::Receiver<bool>) -> Outcome {
    let plan = &shared.plan;
    let mut out = Outcome::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; plan.size];
    // Workers start at different offsets so they do not send identical bytes.
    let mut offset = index.wrapping_mul(7) % ROTATE;
    while let Some(t0) = shared.claim(&mut stop).await {
        offset = (offset + 1) % ROTATE;
        let sent = &shared.payload[offset..offset + plan.size];
        let attempt = request(&mut conn, plan.addr, sent, &mut buf, &mut out, plan.timeout);
        let result = match tokio::time::timeout(plan.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(TryError::new(
                Failure::Timeout,
                format!(
                    "no complete echo from {} within {}",
                    plan.addr,
                    net::fmt_duration(plan.timeout)
                ),
            )),
        };
        match result {
            Ok(()) => {
                shared.record(index, t0.elapsed());
                shared.ok.fetch_add(1, Ordering::Relaxed);
                if plan.new_connection_per_request {
                    conn = None;
                }
            }
            Err(e) => {
                // The stream's state is unknown after a failure: start afresh.
                conn = None;
                shared.failed.fetch_add(1, Ordering::Relaxed);
                out.errors.add(e);
            }
        }
    }
    out
}

async fn request(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    sent: &[u8],
    buf: &mut [u8],
    out: &mut Outcome,
    limit: std::time::Duration,
) -> Result<(), TryError> {
    let stream = match conn {
        Some(s) => s,
        None => {
            let s = net::connect(addr, limit).await?;
            out.connections += 1;
            conn.insert(s)
        }
    };
    let (mut r, mut w) = stream.split();
    exchange::round_trip(&mut r, &mut w, sent, buf, addr).await
}
