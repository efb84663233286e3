//! `spec-load --http`: C workers, each with one kept-alive HTTP/1.1 connection and
//! one request in flight (closed loop). A request counts as ok when the answer is
//! 200, its body arrives whole, and its encoding is what was asked for (gzip with
//! `--gzip`, none without). Latency runs from the send to the body's last byte.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING};
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::exchange::{self, TryError};
use crate::http::{self, Conn};
use crate::latency::{per_second, write_outcome, Latency, Recorder};
use crate::net;

// When a run ends: the same notion as `simulate`'s.
pub use crate::cmd::simulate::Length;

/// A validated HTTP load.
#[derive(Debug, Clone)]
pub struct HttpPlan {
    pub addr: SocketAddr,
    /// ADDR as the user wrote it.
    pub target: String,
    /// The Host header.
    pub host: String,
    /// The request path (holds the SDK key).
    pub path: String,
    pub sdk_key: String,
    pub concurrency: usize,
    pub length: Length,
    pub gzip: bool,
    /// Limit per request, connect included.
    pub timeout: Duration,
}

/// How a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// Nothing listens there.
    Refused,
    /// The connection was reset or closed mid-answer.
    Reset,
    /// No whole answer within the limit.
    Timeout,
    /// An answer other than 200.
    Status,
    /// gzip asked and not given, or given unasked.
    Encoding,
    /// Anything else.
    Other,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::Refused,
        Failure::Reset,
        Failure::Timeout,
        Failure::Status,
        Failure::Encoding,
        Failure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Status => "status",
            Failure::Encoding => "encoding",
            Failure::Other => "other",
        }
    }

    fn of(e: &TryError) -> Failure {
        use exchange::Failure as F;
        match e.kind {
            F::Refused => Failure::Refused,
            F::Reset | F::ShortRead => Failure::Reset,
            F::Timeout => Failure::Timeout,
            F::Mismatch | F::Other => Failure::Other,
        }
    }
}

/// A failed request.
struct Failed {
    kind: Failure,
    message: String,
}

impl From<TryError> for Failed {
    fn from(e: TryError) -> Failed {
        Failed {
            kind: Failure::of(&e),
            message: e.message,
        }
    }
}

/// Failures one worker saw, by kind, with the first message of each.
#[derive(Debug, Default)]
struct Errors {
    counts: BTreeMap<Failure, u64>,
    first: BTreeMap<Failure, String>,
}

impl Errors {
    fn add(&mut self, f: Failed) {
        *self.counts.entry(f.kind).or_default() += 1;
        self.first.entry(f.kind).or_insert(f.message);
    }

    fn merge(&mut self, other: Errors) {
        for (k, n) in other.counts {
            *self.counts.entry(k).or_default() += n;
        }
        for (k, m) in other.first {
            self.first.entry(k).or_insert(m);
        }
    }
}

struct Shared {
    plan: HttpPlan,
    start: Instant,
    next: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Body bytes of successful requests.
    bytes: AtomicU64,
    stopped: AtomicBool,
    latencies: Recorder,
}

impl Shared {
    /// Claims the next request; false when the run is over.
    fn claim(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        match self.plan.length {
            Length::Requests(n) => self.next.fetch_add(1, Ordering::Relaxed) < n,
            Length::Duration(d) => self.start.elapsed() < d,
        }
    }
}

/// What a worker hands back.
#[derive(Default)]
struct Outcome {
    errors: Errors,
    connections: u64,
}

/// The result of an HTTP run.
#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    pub mode: &'static str,
    /// ADDR as given, and the address used.
    pub target: String,
    pub addr: SocketAddr,
    /// The request path, SDK key masked.
    pub path: String,
    pub concurrency: usize,
    pub gzip: bool,
    pub duration_s: Option<f64>,
    pub requests_planned: Option<u64>,
    pub elapsed_s: f64,
    /// Requests sent (ok + failed).
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub requests_per_sec: f64,
    /// Body bytes of successful answers per second (as sent: compressed with gzip).
    pub bytes_per_s: f64,
    /// Mean body bytes of a successful answer.
    pub body_bytes: Option<u64>,
    pub connections: u64,
    /// Latency of successful requests (µs); null when none succeeded.
    pub latency_us: Option<Latency>,
    /// Failed requests by kind; every kind is present.
    pub errors: BTreeMap<Failure, u64>,
    /// The first message of each kind that occurred.
    pub error_examples: BTreeMap<Failure, String>,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
}

/// Runs the load, with a progress line a second on stderr when `progress`. `stop`
/// (Ctrl-C) ends it early: no new requests, those in flight finish.
pub async fn run(
    plan: &HttpPlan,
    progress: bool,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<HttpReport> {
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        start: Instant::now(),
        next: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        latencies: Recorder::new(plan.concurrency)?,
    });
    let mut workers = JoinSet::new();
    for i in 0..plan.concurrency {
        workers.spawn(worker(shared.clone(), i));
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_ok = 0;
    tokio::pin!(stop);
    let mut interrupted = false;
    let mut outcomes = Vec::new();
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(Ok(o)) => outcomes.push(o),
                // A panicked worker: its counts are in the shared totals already.
                Some(Err(_)) => {}
                None => break,
            },
            _ = tick.tick(), if progress => {
                let ok = shared.ok.load(Ordering::Relaxed);
                let _ = writeln!(
                    std::io::stderr(),
                    "[{:>4}s] {ok} ok, {} failed, {} req/s",
                    shared.start.elapsed().as_secs(),
                    shared.failed.load(Ordering::Relaxed),
                    ok - last_ok
                );
                last_ok = ok;
            }
            _ = &mut stop, if !interrupted => {
                interrupted = true;
                shared.stopped.store(true, Ordering::Relaxed);
            }
        }
    }
    let elapsed = shared.start.elapsed();
    Ok(report(plan, &shared, outcomes, elapsed, interrupted))
}

async fn worker(shared: Arc<Shared>, index: usize) -> Outcome {
    let plan = &shared.plan;
    let mut out = Outcome::default();
    let mut conn: Option<Conn> = None;
    while shared.claim() {
        let t0 = Instant::now();
        let attempt = request(&mut conn, plan, &mut out);
        let result = match tokio::time::timeout(plan.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Failed {
                kind: Failure::Timeout,
                message: format!(
                    "GET {} on {}: no whole answer within {}",
                    plan.path,
                    plan.addr,
                    net::fmt_duration(plan.timeout)
                ),
            }),
        };
        match result {
            Ok(n) => {
                shared.latencies.record(index, t0.elapsed());
                shared.ok.fetch_add(1, Ordering::Relaxed);
                shared.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                // The connection's state is unknown after a failure: start afresh.
                if e.kind != Failure::Status && e.kind != Failure::Encoding {
                    conn = None;
                }
                shared.failed.fetch_add(1, Ordering::Relaxed);
                out.errors.add(e);
            }
        }
    }
    out
}

/// One request on the worker's connection (opened first if there is none, or the
/// server closed it); returns the body's length.
async fn request(
    conn: &mut Option<Conn>,
    plan: &HttpPlan,
    out: &mut Outcome,
) -> Result<u64, Failed> {
    if let Some(c) = conn {
        if !c.ready().await {
            *conn = None;
        }
    }
    let c = match conn {
        Some(c) => c,
        None => {
            let c = Conn::open(plan.addr, plan.timeout).await?;
            out.connections += 1;
            conn.insert(c)
        }
    };
    let what = format!("GET {}", masked_path(plan));
    let mut req = http::request(Method::GET, plan.addr, &plan.host, &plan.path, Bytes::new())
        .map_err(|e| Failed {
            kind: Failure::Other,
            message: format!("{e:#}"),
        })?;
    if plan.gzip {
        req.headers_mut()
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let resp = c.send(req).await?;
    let status = resp.status();
    let encoding = resp
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if status != StatusCode::OK {
        let body = http::read_body(resp.into_body(), &what, plan.addr).await?;
        let text = String::from_utf8_lossy(&body[..body.len().min(100)]).into_owned();
        return Err(Failed {
            kind: Failure::Status,
            message: format!("{what} on {}: HTTP {status}: {}", plan.addr, text.trim()),
        });
    }
    let n = http::count_body(resp.into_body(), &what, plan.addr).await?;
    let gzipped = encoding.eq_ignore_ascii_case("gzip");
    if plan.gzip != gzipped {
        let got = if encoding.is_empty() {
            "none"
        } else {
            &encoding
        };
        let asked = if plan.gzip { "gzip" } else { "no encoding" };
        return Err(Failed {
            kind: Failure::Encoding,
            message: format!(
                "{what} on {}: asked for {asked}, got Content-Encoding {got}",
                plan.addr
            ),
        });
    }
    Ok(n)
}

/// The path with the SDK key masked, for output.
fn masked_path(plan: &HttpPlan) -> String {
    plan.path
        .replace(&plan.sdk_key, &fproxy::spec::store::mask(&plan.sdk_key))
}

fn report(
    plan: &HttpPlan,
    shared: &Shared,
    outcomes: Vec<Outcome>,
    elapsed: Duration,
    interrupted: bool,
) -> HttpReport {
    let mut errors = Errors::default();
    let mut connections = 0;
    for o in outcomes {
        connections += o.connections;
        errors.merge(o.errors);
    }
    let ok = shared.ok.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let bytes = shared.bytes.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-9);
    // Keys never shown whole: the report may be pasted anywhere.
    let examples = errors
        .first
        .into_iter()
        .map(|(k, m)| {
            (
                k,
                m.replace(&plan.sdk_key, &fproxy::spec::store::mask(&plan.sdk_key)),
            )
        })
        .collect();
    HttpReport {
        mode: "http",
        target: plan.target.clone(),
        addr: plan.addr,
        path: masked_path(plan),
        concurrency: plan.concurrency,
        gzip: plan.gzip,
        duration_s: plan.length.duration_s(),
        requests_planned: plan.length.requests(),
        elapsed_s: elapsed.as_secs_f64(),
        requests: ok + failed,
        ok,
        failed,
        requests_per_sec: ok as f64 / secs,
        bytes_per_s: bytes as f64 / secs,
        body_bytes: (ok > 0).then(|| bytes / ok),
        connections,
        latency_us: shared.latencies.merged().and_then(|h| Latency::of(&h)),
        errors: Failure::ALL
            .iter()
            .map(|&k| (k, errors.counts.get(&k).copied().unwrap_or(0)))
            .collect(),
        error_examples: examples,
        interrupted,
    }
}

impl HttpReport {
    pub fn errors_of(&self, kind: Failure) -> u64 {
        self.errors.get(&kind).copied().unwrap_or(0)
    }

    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let length = match (self.duration_s, self.requests_planned) {
            (Some(d), _) => format!("for {d} s"),
            (_, Some(n)) => format!("{n} requests"),
            _ => String::new(),
        };
        writeln!(
            out,
            "SPEC-LOAD http://{}{}: {} workers, keep-alive, {}, {length}{}",
            self.target,
            self.path,
            self.concurrency,
            if self.gzip { "gzip" } else { "no compression" },
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
        let each = match self.body_bytes {
            Some(b) => format!(" ({b} bytes each)"),
            None => String::new(),
        };
        writeln!(
            out,
            "throughput:  {:.1} req/s, {} of bodies{each}",
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

    /// Ok when every request succeeded and the run was not interrupted.
    pub fn verdict(&self) -> anyhow::Result<()> {
        if self.interrupted {
            anyhow::bail!("spec-load {}: interrupted", self.target);
        }
        if self.failed > 0 {
            let first = self
                .error_examples
                .values()
                .next()
                .map(|m| format!(" (first: {m})"))
                .unwrap_or_default();
            anyhow::bail!(
                "spec-load {}: {} of {} requests failed{first}",
                self.target,
                self.failed,
                self.requests
            );
        }
        Ok(())
    }
}
