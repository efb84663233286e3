//! The HTTP server layer every server fproxy runs shares: spec apps (HTTP and
//! gRPC) and the admin API.
//!
//! It bounds what a client can hold:
//! - a connection cap per server ([`ConnCap`]): over it a new connection is closed
//!   at once (counted, logged rate-limited), so silent sockets cannot eat the
//!   process's file descriptors and starve every other listener;
//! - a header timeout: a connection must send a complete request head within
//!   `header_timeout` of connecting (or, on HTTP/1.1 keep-alive, of the first byte of
//!   its next request); silent sockets and slowloris clients are closed;
//! - an idle timeout: a connection with no request in flight and no response
//!   bytes written for `keepalive_timeout` is shut down gracefully (HTTP/2:
//!   GOAWAY), whatever the protocol. A response still being written (a slow client
//!   downloading a large spec) keeps its connection;
//! - a progress timeout: a connection with requests in flight but no response bytes
//!   written for `keepalive_timeout` is shut down the same way (a request body that
//!   never ends, an HTTP/2 client that never opens its flow-control window). What
//!   counts as progress is response bytes reaching the socket: on HTTP/1.1 any
//!   write, on HTTP/2 a HEADERS, CONTINUATION or DATA frame (not PINGs, SETTINGS or
//!   WINDOW_UPDATEs, which a client can keep going forever). A request starting
//!   counts too. gRPC streams stay alive by their heartbeats, so the spec config
//!   requires `heartbeat_interval` below `keepalive_timeout`;
//! - after a timeout asked a connection to close, it is cut [`SHUTDOWN_GRACE`]
//!   later unless response bytes still move;
//! - HTTP/2 keepalive pings to find dead peers, a concurrent stream limit, and a
//!   header size limit on both protocols.
//!
//! Why a tracker of our own rather than hyper's `header_read_timeout`: hyper (1.x)
//! restarts that timer whenever it starts reading a request head, including while an
//! HTTP/1.1 keep-alive connection waits for its next request, so idle HTTP/1.1
//! connections would close at `header_timeout` rather than `keepalive_timeout`; and
//! it does not run at all while the auto builder is still reading the first bytes to
//! choose the protocol, nor for HTTP/2. The tracker (`Activity`) sees every read
//! and every request, and gives one deadline for both protocols.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::loglimit::LogLimit;
use crate::metrics::server::ServerHandles;

/// HTTP/2 PING interval, to find peers that are gone without a FIN.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// A PING unanswered for this long closes the connection.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent HTTP/2 streams per connection (gRPC streams are further capped per
/// app by `max_streams`). SDKs use one or a few; this bounds what one connection
/// can hold in flight.
pub const H2_MAX_STREAMS: u32 = 100;
/// Request head size: HTTP/1.1 read buffer and HTTP/2 header list.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Headers per HTTP/1.1 request.
pub const MAX_HEADERS: usize = 100;
/// After a timeout asked a connection to close gracefully, how long it may take.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The admin API's fixed limits.
pub mod admin {
    use std::time::Duration;

    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Enough for scrapers, probes and operators; small next to the 1024 file
    /// descriptors of a default soft limit.
    pub const MAX_CONNECTIONS: usize = 64;
}

/// The time limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From connecting (or from the first byte of a later HTTP/1.1 request) to a
    /// complete request head.
    pub header: Duration,
    /// How long a connection is kept with no request in flight and no response
    /// bytes written, or with requests in flight but no response bytes written.
    pub keepalive: Duration,
}

/// Counts one server's open connections and refuses those over its cap.
#[derive(Debug)]
pub struct ConnCap {
    open: AtomicUsize,
    metrics: ServerHandles,
}

impl ConnCap {
    pub fn new(metrics: ServerHandles) -> Arc<ConnCap> {
        Arc::new(ConnCap {
            open: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &ServerHandles {
        &self.metrics
    }

    /// A slot for one more connection, or `None` (counted and logged, the caller
    /// closes the connection) when `max` are open. `max` is passed at each call so
    /// a reload that changes it takes effect on the next connection.
    pub fn try_acquire(self: &Arc<Self>, max: usize, server: &str) -> Option<ConnGuard> {
        static REFUSED: LogLimit = LogLimit::per_second();
        match self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            }) {
            Ok(_) => {
                self.metrics.open.inc();
                Some(ConnGuard(self.clone()))
            }
            Err(_) => {
                self.metrics.refused.inc();
                if let Some(suppressed) = REFUSED.allow() {
                    tracing::warn!(
                        server,
                        max_connections = max,
                        suppressed,
                        "connection cap reached; new connections are closed at once"
                    );
                }
                None
            }
        }
    }
}

/// One open connection: counted until dropped (also when its task panics).
#[derive(Debug)]
pub struct ConnGuard(Arc<ConnCap>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.metrics.open.dec();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a connection is told to stop early.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Finish the requests in flight, take no more, close.
    pub graceful: CancellationToken,
    /// Close now, whatever is in flight.
    pub force: CancellationToken,
}

/// The hyper builder with fproxy's limits (both protocols, detected per connection).
fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Timed by `Activity` instead; see the module docs.
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    b
}

/// Why a connection's deadline fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Header,
    Idle,
    /// Requests in flight, but no response bytes written.
    Stall,
}

const NONE: u64 = u64::MAX;

/// What one connection is doing, seen from its reads and its requests.
#[derive(Debug)]
struct Activity {
    /// When the connection was accepted; the other times are microseconds after it.
    base: Instant,
    timeouts: Timeouts,
    /// Requests whose response has not been sent whole yet.
    in_flight: AtomicUsize,
    /// When the last request in flight ended.
    idle_since: AtomicU64,
    /// When response bytes were last written or a request last began.
    progress: AtomicU64,
    /// When the request head being read began ([`NONE`] when not reading one).
    head_since: AtomicU64,
    /// Wakes the connection's loop when its deadline changed: a request began or
    /// ended, or a request head began.
    wake: Notify,
}

impl Activity {
    fn new(timeouts: Timeouts) -> Activity {
        Activity {
            base: Instant::now(),
            timeouts,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            // The first request head is timed from the accept.
            head_since: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(NONE - 1)
    }

    fn at(&self, micros: u64) -> Instant {
        self.base + Duration::from_micros(micros)
    }

    /// An HTTP/1.1 connection received bytes: with no request in flight they begin
    /// a request head, timed from now.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self
                .head_since
                .compare_exchange(NONE, self.now(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// The connection speaks HTTP/2: its frames (pings, settings) are not request
    /// heads, so it is idle from now until its first request.
    fn is_h2(&self) {
        self.idle_since.store(self.now(), Ordering::Release);
        self.head_since.store(NONE, Ordering::Release);
        self.wake.notify_one();
    }

    /// Response bytes reached the socket. Only moves deadlines later, so the loop
    /// need not wake: it checks again when its sleep ends.
    fn progressed(&self) {
        self.progress.store(self.now(), Ordering::Release);
    }

    /// A request head was read whole.
    fn start(self: &Arc<Self>) -> InFlight {
        self.progressed();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        self.wake.notify_one();
        InFlight(self.clone())
    }

    /// When the connection must close and why.
    fn deadline(&self) -> (Instant, Reason) {
        let progress = self.progress.load(Ordering::Acquire);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (self.at(progress) + self.timeouts.keepalive, Reason::Stall);
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != NONE {
            return (self.at(head) + self.timeouts.header, Reason::Header);
        }
        // A response still being written (HTTP/1.1 drops a whole body as soon as it
        // is queued) keeps the connection.
        let idle = self.idle_since.load(Ordering::Acquire).max(progress);
        (self.at(idle) + self.timeouts.keepalive, Reason::Idle)
    }
}

/// A request in flight, until its response body is dropped (sent whole, or the
/// stream ended).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::Release);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake.notify_one();
        }
    }
}

/// The HTTP/2 client preface; a connection that starts with it speaks HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// Matched this many bytes of the HTTP/2 preface so far.
    Unknown(usize),
    Http1,
    Http2,
}

/// Finds, in the bytes an HTTP/2 server writes (a sequence of frames), those that
/// carry a response: HEADERS, DATA, CONTINUATION.
#[derive(Debug, Default)]
struct FrameScan {
    header: [u8; 9],
    /// Bytes of `header` seen so far.
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    /// Whether the current frame carries a response.
    response: bool,
}

impl FrameScan {
    /// Scans written bytes; whether any belong to a response frame.
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        const DATA: u8 = 0;
        const HEADERS: u8 = 1;
        const CONTINUATION: u8 = 9;
        let mut progress = false;
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                progress |= self.response;
                continue;
            }
            let n = (self.header.len() - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == self.header.len() {
                self.have = 0;
                let h = self.header;
                self.remaining =
                    usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.response = matches!(h[3], DATA | HEADERS | CONTINUATION);
                progress |= self.response;
            }
        }
        progress
    }
}

/// The TCP stream, reporting reads and response writes to the connection's
/// [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    proto: Proto,
    frames: FrameScan,
}

impl Tracked {
    fn saw(&mut self, bytes: &[u8]) {
        if let Proto::Unknown(mut matched) = self.proto {
            let mut proto = None;
            for &b in bytes {
                if H2_PREFACE[matched] != b {
                    proto = Some(Proto::Http1);
                    break;
                }
                matched += 1;
                if matched == H2_PREFACE.len() {
                    self.proto = Proto::Http2;
                    self.activity.is_h2();
                    return;
                }
            }
            // Every byte so far matched the preface: still undecided, and still
            // under the first request's header deadline.
            self.proto = proto.unwrap_or(Proto::Unknown(matched));
        }
        if self.proto == Proto::Http1 {
            self.activity.bytes_read();
        }
    }

    /// `bytes` were written to the socket.
    fn wrote(&mut self, bytes: &[u8]) {
        let progress = match self.proto {
            Proto::Http2 => self.frames.scan(bytes),
            // HTTP/1.1 writes nothing but responses.
            Proto::Http1 | Proto::Unknown(_) => true,
        };
        if progress {
            self.activity.progressed();
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() > before {
                this.saw(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.wrote(&buf[..n.min(buf.len())]);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = r {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let part = n.min(b.len());
                this.wrote(&b[..part]);
                n -= part;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        // Without it hyper copies whole response bodies into its write buffer.
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until it is dropped.
pub struct TrackedBody<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The service, counting each request in flight on the connection's [`Activity`].
struct TrackedService<S> {
    inner: S,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<Incoming>> for TrackedService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.start();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| TrackedBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// Serves one accepted connection with `service` (HTTP/1.1 or HTTP/2, as the client
/// speaks) under `timeouts`, until it ends, times out or `stop` says so. `guard`
/// holds its slot under the server's cap until then.
pub async fn serve<S, B>(
    stream: TcpStream,
    service: S,
    timeouts: Timeouts,
    guard: ConnGuard,
    stop: Stop,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new(timeouts));
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
        proto: Proto::Unknown(0),
        frames: FrameScan::default(),
    });
    let service = TrackedService {
        inner: service,
        activity: activity.clone(),
    };
    let builder = builder();
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let metrics = guard.0.metrics();
    // Set once the connection was asked to close (timeout or shutdown): from then
    // on a deadline that fires cuts it, no earlier than the grace.
    let mut grace_until: Option<Instant> = None;
    let mut draining = false;
    loop {
        let (at, _) = activity.deadline();
        let at = grace_until.map_or(at, |g| at.max(g));
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = activity.wake.notified() => continue,
            _ = stop.force.cancelled() => break,
            _ = stop.graceful.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
                grace_until.get_or_insert(Instant::now() + SHUTDOWN_GRACE);
            }
            _ = tokio::time::sleep_until(at) => {
                // Still due? (A request may have come and gone, or bytes moved.)
                let (due, reason) = activity.deadline();
                if due > Instant::now() {
                    continue;
                }
                if grace_until.is_some() {
                    // Asked to close, past the grace, and nothing moved for a whole
                    // timeout (an HTTP/1.1 request head still trickling in, a stream
                    // the client never reads): cut it.
                    break;
                }
                match reason {
                    Reason::Header => metrics.header_timeouts.inc(),
                    Reason::Idle => metrics.idle_timeouts.inc(),
                    Reason::Stall => metrics.stall_timeouts.inc(),
                };
                conn.as_mut().graceful_shutdown();
                grace_until = Some(Instant::now() + SHUTDOWN_GRACE);
            }
        }
    }
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn only_response_frames_are_progress_however_the_writes_split() {
        const SETTINGS: u8 = 4;
        const PING: u8 = 6;
        const WINDOW_UPDATE: u8 = 8;
        let control = [
            frame(SETTINGS, &[0; 12]),
            frame(PING, &[7; 8]),
            frame(WINDOW_UPDATE, &[0, 0, 1, 0]),
        ]
        .concat();
        let data = frame(0, &[b'x'; 300]);
        for split in [1, 2, 5, 9, 10, 64, 1000] {
            let mut s = FrameScan::default();
            // Control frames, a byte or many at a time: never progress.
            assert!(
                !control.chunks(split).any(|c| s.scan(c)),
                "split {split}: control frames counted"
            );
            // Then a DATA frame: progress in each write once its header is whole
            // (the header's first bytes alone are not yet known to be DATA).
            let progress: Vec<bool> = data.chunks(split).map(|c| s.scan(c)).collect();
            assert!(
                progress.iter().skip(9 / split).all(|p| *p),
                "split {split}: {progress:?}"
            );
            // And control frames again.
            assert!(!s.scan(&frame(PING, &[0; 8])), "split {split}");
        }
        let mut s = FrameScan::default();
        assert!(s.scan(&frame(1, b"headers")));
        assert!(s.scan(&frame(0, b"")));
    }
}
