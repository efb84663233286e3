//! The result of a load run: text for people, JSON for scripts.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::worker::{Errors, Outcome};
use super::{Plan, Shared};
use crate::exchange::Failure;
use crate::latency::{per_second, write_outcome, Latency};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// ADDR as given, and the address used.
    pub target: String,
    pub addr: SocketAddr,
    pub concurrency: usize,
    pub size: usize,
    /// "keep-alive" or "new-connection-per-request".
    pub connection_mode: &'static str,
    /// Requests per second asked for (open loop); null for closed loop.
    pub rate: Option<f64>,
    /// Asked-for run length: seconds, or a request count.
    pub duration_s: Option<f64>,
    pub requests_planned: Option<u64>,
    pub elapsed_s: f64,
    /// Requests sent (ok + failed).
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    /// Successful requests per second.
    pub requests_per_sec: f64,
    /// Payload bytes echoed per second, each way.
    pub bytes_per_s: f64,
    pub connections: u64,
    /// Absent when no request succeeded.
    pub latency_us: Option<Latency>,
    /// Failed requests by kind; every kind is present.
    pub errors: BTreeMap<Failure, u64>,
    /// The first message of each kind that occurred.
    pub error_examples: BTreeMap<Failure, String>,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
}

impl Report {
    pub(super) fn build(
        plan: &Plan,
        shared: &Shared,
        outcomes: Vec<Outcome>,
        elapsed: Duration,
        interrupted: bool,
    ) -> Report {
        let mut errors = Errors::default();
        let mut connections = 0;
        for o in outcomes {
            connections += o.connections;
            errors.merge(o.errors);
        }
        let latency = shared.latencies.merged().and_then(|h| Latency::of(&h));
        let ok = shared.ok.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        Report {
            target: plan.target.clone(),
            addr: plan.addr,
            concurrency: plan.concurrency,
            size: plan.size,
            connection_mode: if plan.new_connection_per_request {
                "new-connection-per-request"
            } else {
                "keep-alive"
            },
            rate: plan.rate,
            duration_s: plan.length.duration_s(),
            requests_planned: plan.length.requests(),
            elapsed_s: elapsed.as_secs_f64(),
            requests: ok + failed,
            ok,
            failed,
            requests_per_sec: ok as f64 / secs,
            bytes_per_s: (ok as f64 * plan.size as f64) / secs,
            connections,
            latency_us: latency,
            errors: Failure::ALL
                .iter()
                .map(|&k| (k, errors.counts[k as usize]))
                .collect(),
            error_examples: Failure::ALL
                .iter()
                .filter_map(|&k| errors.first[k as usize].clone().map(|m| (k, m)))
                .collect(),
            interrupted,
        }
    }

    /// Failed requests of one kind.
    pub fn errors_of(&self, kind: Failure) -> u64 {
        self.errors.get(&kind).copied().unwrap_or(0)
    }

    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let schedule = match self.rate {
            Some(r) => format!("open loop at {r} req/s (latency from each scheduled send)"),
            None => "closed loop".into(),
        };
        let length = match (self.duration_s, self.requests_planned) {
            (Some(d), _) => format!("for {d} s"),
            (_, Some(n)) => format!("{n} requests"),
            _ => String::new(),
        };
        writeln!(
            out,
            "SIMULATE {}: {} workers, {}-byte requests, {}, {schedule}, {length}{}",
            self.target,
            self.concurrency,
            self.size,
            self.connection_mode,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )?;
        writeln!(
            out,
            "requests:    {} ok, {} failed in {:.2} s",
            self.ok, self.failed, self.elapsed_s
        )?;
        writeln!(
            out,
            "throughput:  {:.1} req/s, {} each way",
            self.requests_per_sec,
            per_second(self.bytes_per_s)
        )?;
        writeln!(out, "connections: {} opened", self.connections)?;
        write_outcome(
            out,
            self.latency_us.as_ref(),
            self.errors.iter().map(|(k, &n)| (k.as_str(), n)),
            self.error_examples
                .iter()
                .map(|(k, m)| (k.as_str(), m.as_str())),
        )
    }
}
