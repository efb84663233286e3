//! `spec-load --grpc-streams N`: how long one update takes to reach N streams.
//!
//! 1. Open C HTTP/2 connections and N `StreamConfigSpec` streams, stream i on
//!    connection i mod C (one connection carries at most the server's
//!    SETTINGS_MAX_CONCURRENT_STREAMS, 200 for fproxy).
//! 2. Wait until every stream has its first message (the full current spec). The
//!    baseline is the newest `lastUpdated` seen so far.
//! 3. POST to `--publish` (if given), then wait until every stream has received a
//!    message with `lastUpdated` newer than the baseline. Heartbeats
//!    (`{"has_updates":false}`, the same `lastUpdated`) are ignored.
//!
//! Each stream's delay runs from just before the publish request was sent, and also
//! from the first stream that got the update (the fan-out spread, which leaves out
//! the time the server took to notice the new version upstream).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use fproxy::spec::grpc::proto::statsig_forward_proxy_client::StatsigForwardProxyClient;
use fproxy::spec::grpc::proto::{ConfigSpecRequest, ConfigSpecResponse};
use hyper::Method;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::latency::{self, Latency};
use crate::net;

const HEARTBEAT: &[u8] = br#"{"has_updates":false}"#;

/// A validated stream load.
#[derive(Debug, Clone)]
pub struct StreamsPlan {
    pub addr: SocketAddr,
    /// ADDR as the user wrote it.
    pub target: String,
    pub sdk_key: String,
    pub streams: usize,
    /// At most `streams`.
    pub connections: usize,
    /// URL to POST to once every stream is open.
    pub publish: Option<String>,
    /// Process whose memory is reported.
    pub rss_pid: Option<u32>,
    /// Limit for each phase: opening every stream, the update reaching every stream.
    pub timeout: Duration,
}

/// What a stream task reports.
enum Event {
    /// The first message arrived.
    Opened {
        stream: usize,
        lcut: u64,
        bytes: usize,
    },
    /// The stream could not be opened, or ended before its first message.
    Failed {
        stream: usize,
        code: String,
        message: String,
    },
    /// A message newer than any this stream had before.
    Newer {
        stream: usize,
        lcut: u64,
        at: Instant,
    },
    /// The stream ended (after its first message).
    Ended { stream: usize, message: String },
}

/// Resident memory of a process, in KiB (from /proc/PID/status), and the CPU time
/// it has used (from /proc/PID/stat).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most it was ever resident.
    pub peak_kib: u64,
    /// User + system CPU seconds used so far.
    pub cpu_s: f64,
}

/// Memory and CPU time of `--rss-pid` at each step.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub pid: u32,
    pub before: Memory,
    /// Every stream open and its first message delivered.
    pub streams_open: Option<Memory>,
    /// The update delivered (or the wait for it over).
    pub after_update: Option<Memory>,
    /// (streams_open.rss - before.rss) / streams, in bytes.
    pub bytes_per_stream: Option<f64>,
}

/// The result of a stream run.
#[derive(Debug, Clone, Serialize)]
pub struct StreamsReport {
    pub mode: &'static str,
    pub target: String,
    pub addr: SocketAddr,
    pub streams: usize,
    pub connections: usize,
    /// Streams that got their first message.
    pub opened: usize,
    /// Streams that failed to open, by gRPC status (or `transport`).
    pub open_failures: BTreeMap<String, usize>,
    pub open_failure_example: Option<String>,
    /// Streams still waiting for their first message when the time was up.
    pub open_pending: usize,
    /// From the first connect to the last first message.
    pub open_s: f64,
    /// Size of the first message's spec (of the last stream to open).
    pub first_message_bytes: Option<usize>,
    /// CPU seconds this process (the load generator) used opening the streams.
    pub open_cpu_s: Option<f64>,
    /// The newest lastUpdated once every stream was open.
    pub baseline_lcut: Option<u64>,
    pub publish_url: Option<String>,
    /// The publish request's round trip.
    pub publish_ms: Option<f64>,
    /// The lcut the publish answer announced (`ftest spec-upstream` says it).
    pub published_lcut: Option<u64>,
    /// The newest lastUpdated delivered by the update.
    pub update_lcut: Option<u64>,
    /// Open streams that got the update.
    pub received: usize,
    /// Open streams that did not get it in time (still open).
    pub missed: usize,
    /// Open streams that ended before getting it.
    pub ended: usize,
    pub ended_example: Option<String>,
    /// Delay per stream from the publish request (µs); null without --publish.
    pub delay_from_publish_us: Option<Latency>,
    /// Delay per stream from the first stream that got the update (µs).
    pub delay_from_first_us: Option<Latency>,
    /// From the publish (or the start of the wait) to the last delivery, or to the
    /// end of the wait.
    pub update_s: Option<f64>,
    /// CPU seconds this process used in that time.
    pub update_cpu_s: Option<f64>,
    /// Heartbeats received in all.
    pub heartbeats: u64,
    pub memory: Option<MemoryReport>,
    pub interrupted: bool,
}

/// Reads VmRSS and VmHWM of `pid`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow!("read {path}: {}", net::describe(&e)))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("{path}: no {name} line in kB"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
        cpu_s: cpu_of(&pid.to_string())?,
    })
}

/// User + system CPU seconds used by a process so far ("self" for this one), from
/// /proc/PID/stat in clock ticks of 1/100 s (Linux's USER_HZ).
pub fn cpu_of(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow!("read {path}: {}", net::describe(&e)))?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => Ok((u + s) as f64 / 100.0),
        _ => bail!("{path}: no utime and stime fields"),
    }
}

/// An error and its causes on one line, the innermost I/O error in plain words.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = match s.downcast_ref::<std::io::Error>() {
            Some(io) => net::describe(io),
            None => s.to_string(),
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn status_text(s: &tonic::Status) -> (String, String) {
    let code = format!("{:?}", s.code());
    let mut msg = format!("{code}: {}", s.message());
    if let Some(src) = std::error::Error::source(s) {
        msg.push_str(": ");
        msg.push_str(&chain(src));
    }
    (code, msg)
}

/// Opens the C connections, at most 16 connects in flight (all C at once would be a
/// burst of SYNs the server's accept queue may not take).
async fn connect_all(plan: &StreamsPlan) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(format!("http://{}", plan.addr))
        .map_err(|e| anyhow!("gRPC endpoint for {}: {e}", plan.addr))?
        .connect_timeout(plan.timeout)
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(plan.connections);
    let mut pending = JoinSet::new();
    let mut next = 0;
    while channels.len() < plan.connections {
        while next < plan.connections && pending.len() < 16 {
            let e = endpoint.clone();
            let i = next;
            pending.spawn(async move { (i, e.connect().await) });
            next += 1;
        }
        match pending.join_next().await {
            Some(Ok((_, Ok(c)))) => channels.push(c),
            Some(Ok((i, Err(e)))) => bail!(
                "connect {} (gRPC connection {} of {}): {}",
                plan.addr,
                i + 1,
                plan.connections,
                chain(&e)
            ),
            Some(Err(e)) => bail!("connect {}: task failed: {e}", plan.addr),
            None => break,
        }
    }
    Ok(channels)
}

/// One stream: report its first message, then each newer one, then its end.
async fn stream_task(
    stream: usize,
    channel: Channel,
    sdk_key: String,
    events: mpsc::UnboundedSender<Event>,
    heartbeats: Arc<AtomicU64>,
) {
    let mut client = StatsigForwardProxyClient::new(channel).max_decoding_message_size(usize::MAX);
    let req = ConfigSpecRequest {
        sdk_key,
        since_time: None,
        version: None,
        zstd_dict_id: None,
    };
    let fail = |code: String, message: String| {
        let _ = events.send(Event::Failed {
            stream,
            code,
            message,
        });
    };
    let mut s = match client.stream_config_spec(req).await {
        Ok(r) => r.into_inner(),
        Err(st) => {
            let (code, message) = status_text(&st);
            return fail(code, message);
        }
    };
    let first: ConfigSpecResponse = match s.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return fail("Ok".into(), "stream ended before its first message".into()),
        Err(st) => {
            let (code, message) = status_text(&st);
            return fail(code, message);
        }
    };
    let mut newest = first.last_updated;
    let _ = events.send(Event::Opened {
        stream,
        lcut: newest,
        bytes: first.spec.len(),
    });
    drop(first);
    loop {
        match s.message().await {
            Ok(Some(m)) => {
                if m.last_updated <= newest || m.spec.as_ref() == HEARTBEAT {
                    heartbeats.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                newest = m.last_updated;
                let _ = events.send(Event::Newer {
                    stream,
                    lcut: newest,
                    at: Instant::now(),
                });
            }
            Ok(None) => {
                let _ = events.send(Event::Ended {
                    stream,
                    message: "the server ended the stream (OK)".into(),
                });
                return;
            }
            Err(st) => {
                let _ = events.send(Event::Ended {
                    stream,
                    message: status_text(&st).1,
                });
                return;
            }
        }
    }
}

/// Per-stream state the coordinator keeps.
#[derive(Default, Clone)]
struct Track {
    opened: bool,
    failed: bool,
    ended: bool,
    got: Option<Instant>,
}

/// Runs the plan; progress lines on stderr when `progress`; `stop` (Ctrl-C) ends
/// the waiting early and still reports.
pub async fn run(
    plan: &StreamsPlan,
    progress: bool,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<StreamsReport> {
    tokio::pin!(stop);
    let before = plan.rss_pid.map(memory_of).transpose()?;
    // Our own CPU time is reported only where /proc has it.
    let cpu0 = cpu_of("self").ok();
    let t_start = Instant::now();
    let channels = connect_all(plan).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let heartbeats = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for i in 0..plan.streams {
        tasks.spawn(stream_task(
            i,
            channels[i % channels.len()].clone(),
            plan.sdk_key.clone(),
            tx.clone(),
            heartbeats.clone(),
        ));
    }
    drop(tx);

    let mut r = StreamsReport {
        mode: "grpc",
        target: plan.target.clone(),
        addr: plan.addr,
        streams: plan.streams,
        connections: channels.len(),
        opened: 0,
        open_failures: BTreeMap::new(),
        open_failure_example: None,
        open_pending: 0,
        open_s: 0.0,
        first_message_bytes: None,
        open_cpu_s: None,
        baseline_lcut: None,
        publish_url: plan.publish.clone(),
        publish_ms: None,
        published_lcut: None,
        update_lcut: None,
        received: 0,
        missed: 0,
        ended: 0,
        ended_example: None,
        delay_from_publish_us: None,
        delay_from_first_us: None,
        update_s: None,
        update_cpu_s: None,
        heartbeats: 0,
        memory: None,
        interrupted: false,
    };
    let mut track = vec![Track::default(); plan.streams];
    let mut newest = 0u64;
    let mut failed = 0usize;

    // Phase 1: every stream open.
    let deadline = Instant::now() + plan.timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while r.opened + failed < plan.streams {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Opened { stream, lcut, bytes }) => {
                    track[stream].opened = true;
                    r.opened += 1;
                    newest = newest.max(lcut);
                    r.first_message_bytes = Some(bytes);
                }
                Some(Event::Failed { stream, code, message }) => {
                    track[stream].failed = true;
                    failed += 1;
                    *r.open_failures.entry(code).or_default() += 1;
                    r.open_failure_example.get_or_insert(message);
                }
                Some(Event::Newer { lcut, .. }) => newest = newest.max(lcut),
                Some(Event::Ended { stream, message }) => {
                    track[stream].ended = true;
                    r.ended += 1;
                    r.ended_example.get_or_insert(message);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick(), if progress => {
                let _ = writeln!(
                    std::io::stderr(),
                    "[{:>4}s] {} of {} streams open, {failed} failed",
                    t_start.elapsed().as_secs(),
                    r.opened,
                    plan.streams
                );
            }
            _ = &mut stop => {
                r.interrupted = true;
                break;
            }
        }
    }
    r.open_s = t_start.elapsed().as_secs_f64();
    r.open_pending = plan.streams - r.opened - failed;
    let streams_open = plan.rss_pid.map(memory_of).transpose()?;
    let cpu1 = cpu_of("self").ok();
    r.open_cpu_s = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let all_open = r.opened == plan.streams && r.ended == 0;
    if all_open && !r.interrupted {
        r.baseline_lcut = Some(newest);
        let t0 = Instant::now();
        update_phase(
            plan, &mut r, &mut rx, &mut track, newest, progress, &mut stop,
        )
        .await?;
        r.update_s = Some(t0.elapsed().as_secs_f64());
        r.update_cpu_s = cpu1.zip(cpu_of("self").ok()).map(|(a, b)| b - a);
    }
    r.heartbeats = heartbeats.load(Ordering::Relaxed);
    if let (Some(pid), Some(before)) = (plan.rss_pid, before) {
        let after = memory_of(pid)?;
        r.memory = Some(MemoryReport {
            pid,
            before,
            streams_open,
            after_update: Some(after),
            bytes_per_stream: streams_open
                .map(|m| (m.rss_kib as f64 - before.rss_kib as f64) * 1024.0 / plan.streams as f64),
        });
    }
    // Closing: dropping the tasks resets the streams, the channels close.
    tasks.shutdown().await;
    Ok(r)
}

/// Phase 2: publish, then wait for a message newer than `baseline` on every stream.
async fn update_phase(
    plan: &StreamsPlan,
    r: &mut StreamsReport,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    track: &mut [Track],
    baseline: u64,
    progress: bool,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<()> {
    let mut published_at = None;
    if let Some(url) = &plan.publish {
        let t0 = Instant::now();
        let resp = crate::http::fetch(Method::POST, url, "", plan.timeout)
            .await
            .map_err(|e| anyhow!("publish: {e:#}"))?;
        if !resp.status.is_success() {
            let text = String::from_utf8_lossy(&resp.body[..resp.body.len().min(100)]).into_owned();
            bail!("publish: POST {url}: HTTP {}: {}", resp.status, text.trim());
        }
        r.publish_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
        r.published_lcut = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|v| v.get("lcut").and_then(serde_json::Value::as_u64));
        published_at = Some(t0);
    }
    let waiting = |track: &[Track]| {
        track
            .iter()
            .filter(|t| t.opened && !t.ended && t.got.is_none())
            .count()
    };
    let deadline = Instant::now() + plan.timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut left = waiting(track);
    while left > 0 {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Newer { stream, lcut, at }) if lcut > baseline => {
                    let t = &mut track[stream];
                    if t.got.is_none() {
                        t.got = Some(at);
                        r.update_lcut = Some(r.update_lcut.unwrap_or(0).max(lcut));
                        left -= 1;
                    }
                }
                Some(Event::Ended { stream, message }) => {
                    let t = &mut track[stream];
                    if !t.ended {
                        t.ended = true;
                        r.ended += 1;
                        r.ended_example.get_or_insert(message);
                        if t.got.is_none() {
                            left -= 1;
                        }
                    }
                }
                Some(_) => {}
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick(), if progress => {
                let _ = writeln!(
                    std::io::stderr(),
                    "update: {} of {} streams have it",
                    track.iter().filter(|t| t.got.is_some()).count(),
                    r.opened
                );
            }
            _ = &mut *stop => {
                r.interrupted = true;
                break;
            }
        }
    }
    let got: Vec<Instant> = track.iter().filter_map(|t| t.got).collect();
    r.received = got.len();
    r.missed = waiting(track);
    if let Some(&first) = got.iter().min() {
        let mut from_first = latency::histogram()?;
        let mut from_publish = latency::histogram()?;
        for &at in &got {
            from_first.saturating_record(micros(at.saturating_duration_since(first)));
            if let Some(p) = published_at {
                from_publish.saturating_record(micros(at.saturating_duration_since(p)));
            }
        }
        r.delay_from_first_us = Latency::of(&from_first);
        r.delay_from_publish_us = Latency::of(&from_publish);
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl StreamsReport {
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "SPEC-LOAD {} gRPC: {} StreamConfigSpec streams over {} connections{}",
            self.target,
            self.streams,
            self.connections,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )?;
        let size = match self.first_message_bytes {
            Some(b) => format!(", first message {b} bytes"),
            None => String::new(),
        };
        writeln!(
            out,
            "opened:      {} of {} in {:.2} s{size}",
            self.opened, self.streams, self.open_s
        )?;
        if !self.open_failures.is_empty() || self.open_pending > 0 {
            let mut kinds: Vec<String> = self
                .open_failures
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            if self.open_pending > 0 {
                kinds.push(format!("{} still waiting", self.open_pending));
            }
            writeln!(out, "not opened:  {}", kinds.join(", "))?;
            if let Some(m) = &self.open_failure_example {
                writeln!(out, "  first failure: {m}")?;
            }
        }
        if let Some(base) = self.baseline_lcut {
            match (&self.publish_url, self.publish_ms) {
                (Some(url), Some(ms)) => {
                    let lcut = self
                        .published_lcut
                        .map(|l| format!(", new lcut {l}"))
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "publish:     POST {url} ({ms:.1} ms{lcut}); baseline lcut {base}"
                    )?
                }
                _ => writeln!(
                    out,
                    "update:      waited for an update newer than lcut {base}"
                )?,
            }
            let lcut = self
                .update_lcut
                .map(|l| format!(", lcut {l}"))
                .unwrap_or_default();
            writeln!(
                out,
                "received:    {} of {} streams{lcut}; {} missed, {} ended",
                self.received, self.opened, self.missed, self.ended
            )?;
            if let Some(l) = &self.delay_from_publish_us {
                writeln!(out, "from publish ms:       {}", l.text_ms())?;
            }
            if let Some(l) = &self.delay_from_first_us {
                writeln!(out, "from first delivery ms: {}", l.text_ms())?;
            }
        }
        if let Some(m) = &self.ended_example {
            writeln!(out, "  first end: {m}")?;
        }
        writeln!(out, "heartbeats:  {}", self.heartbeats)?;
        if let Some(open) = self.open_cpu_s {
            let update = match (self.update_s, self.update_cpu_s) {
                (Some(wall), Some(cpu)) => format!(", {cpu:.2} s during the update ({wall:.2} s)"),
                _ => String::new(),
            };
            writeln!(out, "cpu ftest:   {open:.2} s opening the streams{update}")?;
        }
        if let Some(m) = &self.memory {
            let kib = |m: &Option<Memory>| match m {
                Some(m) => format!("{} KiB (peak {} KiB)", m.rss_kib, m.peak_kib),
                None => "-".into(),
            };
            writeln!(
                out,
                "memory pid {}: before {} KiB, streams open {}, after update {}",
                m.pid,
                m.before.rss_kib,
                kib(&m.streams_open),
                kib(&m.after_update)
            )?;
            if let Some(b) = m.bytes_per_stream {
                writeln!(out, "             {:.0} bytes per stream", b)?;
            }
            if let (Some(open), Some(after)) = (m.streams_open, m.after_update) {
                writeln!(
                    out,
                    "cpu pid {}:  {:.2} s opening the streams, {:.2} s during the update",
                    m.pid,
                    open.cpu_s - m.before.cpu_s,
                    after.cpu_s - open.cpu_s
                )?;
            }
        }
        Ok(())
    }

    /// Ok when every stream opened and got the update.
    pub fn verdict(&self) -> anyhow::Result<()> {
        let t = &self.target;
        if self.interrupted {
            bail!("spec-load {t}: interrupted");
        }
        if self.opened < self.streams {
            let why = self
                .open_failure_example
                .as_deref()
                .or(self.ended_example.as_deref())
                .map(|m| format!(": {m}"))
                .unwrap_or_else(|| {
                    format!(
                        ": still waiting after the time limit (one connection carries at most \
                         the server's max concurrent streams; {} per connection now)",
                        self.streams.div_ceil(self.connections.max(1))
                    )
                });
            bail!(
                "spec-load {t}: {} of {} streams did not open{why}",
                self.streams - self.opened,
                self.streams
            );
        }
        if self.received < self.opened {
            let why = match &self.ended_example {
                Some(m) => format!(" ({} ended: {m})", self.ended),
                None => " within the time limit".into(),
            };
            bail!(
                "spec-load {t}: {} of {} streams did not get the update{why}",
                self.opened - self.received,
                self.opened
            );
        }
        Ok(())
    }
}
