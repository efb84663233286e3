//! Listening sockets: bind, accept under supervision, retire without dropping
//! queued clients.
//!
//! A listener's life has three steps so the daemon can roll out without loss:
//! [`Bound::bind`] claims the address (SO_REUSEADDR + SO_REUSEPORT, so a new socket
//! can join an address an old one of this process still holds; [`Bound::bind_new`]
//! first makes sure no other process listens there, since SO_REUSEPORT would let the
//! two silently split the traffic); [`Bound::start`] begins accepting;
//! [`Listener::retire`] stops accepting, then serves every connection already in the
//! kernel's accept queue before closing. Closing with a non-empty queue would reset
//! those clients.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::loglimit::LogLimit;

/// Accept queue length; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;
/// Restart delays for a listener task that died: doubling from the first to the cap.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));
/// Pause after a resource error (EMFILE, ENOBUFS...) so a full fd table does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Receives every accepted connection. Must not block: spawn the work.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, stream: TcpStream, peer: SocketAddr);
}

/// Sockets bound for an app, each with the configured address it serves (which
/// differs from the bound one for port 0).
pub type BoundSet = Vec<(SocketAddr, Bound)>;

/// A non-blocking listening socket on `addr`, with SO_REUSEADDR (a restart need not
/// wait for old connections in TIME_WAIT). `share_port` adds SO_REUSEPORT, for
/// listeners that must coexist with the ones they replace; without it a second
/// process on the same address fails instead of silently splitting the traffic.
pub fn bind_socket(addr: SocketAddr, share_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = unbound(addr)?;
    if share_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|e| named(addr, e))?;
    socket.listen(BACKLOG).map_err(|e| named(addr, e))?;
    Ok(socket.into())
}

/// A TCP socket for `addr` with the options every listener (and probe) shares.
fn unbound(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]:p` and `0.0.0.0:p` are separate listeners; dual-stack would make
        // the second bind collide with the first.
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// "Address in use" says which address, and that someone else has it.
fn named(addr: SocketAddr, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        return io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{addr} is already in use by another process"),
        );
    }
    e
}

/// Fails when another socket listens on `addr` (or overlaps it: a wildcard on the
/// same port), SO_REUSEPORT or not. The probe binds without SO_REUSEPORT, which
/// the kernel refuses next to any listener, then closes at once; it never listens.
/// Port 0 always gets a fresh port.
pub fn ensure_unclaimed(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = unbound(addr)?;
    probe.bind(&addr.into()).map_err(|e| named(addr, e))
}

/// Whether listeners on `a` and `b` would take the same connections: same port
/// and family, and the same IP or a wildcard on either side.
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// A bound, listening socket whose connections queue until [`Bound::start`].
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    local: SocketAddr,
    /// Counts restarts of the accept loop. Set by whoever binds (the daemon), so the
    /// app that starts the listener needs no metrics of its own for it.
    restarts: Option<Counter>,
}

impl Bound {
    /// Binds `addr` so it can share the address with sockets it is replacing.
    pub fn bind(addr: SocketAddr) -> io::Result<Bound> {
        let listener = TcpListener::from_std(bind_socket(addr, true)?)?;
        let local = listener.local_addr()?;
        Ok(Bound {
            listener,
            local,
            restarts: None,
        })
    }

    /// Binds an address this process does not listen on yet: like [`Bound::bind`],
    /// but refused when another process already listens there (see
    /// [`ensure_unclaimed`]). A port shared with a stranger would silently lose it
    /// part of the traffic. (A stranger that binds in the instant between the
    /// check and the bind is not caught.)
    pub fn bind_new(addr: SocketAddr) -> io::Result<Bound> {
        ensure_unclaimed(addr)?;
        Bound::bind(addr)
    }

    /// Counts each restart of this listener's accept loop in `counter`.
    pub fn count_restarts(mut self, counter: Counter) -> Bound {
        self.restarts = Some(counter);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts accepting, handing each connection to `handler`. Cannot fail, so a
    /// rollout that bound everything can always complete.
    pub fn start(self, app: &str, handler: Arc<dyn Handler>) -> Listener {
        let listener = Arc::new(self.listener);
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            app.to_string(),
            listener.clone(),
            handler.clone(),
            stop.clone(),
            self.restarts,
        ));
        Listener {
            local: self.local,
            listener,
            handler,
            stop,
            task,
        }
    }
}

/// An app's listeners, keyed by configured address.
#[derive(Debug, Default)]
pub struct Listeners {
    map: BTreeMap<SocketAddr, Listener>,
}

impl Listeners {
    /// Starts accepting on `bound`, each address with the handler `handler_for` gives.
    pub fn start(
        &mut self,
        app: &str,
        bound: BoundSet,
        mut handler_for: impl FnMut(SocketAddr) -> Arc<dyn Handler>,
    ) {
        for (addr, b) in bound {
            tracing::info!(app, addr = %b.local_addr(), "listening");
            let handler = handler_for(addr);
            self.map.insert(addr, b.start(app, handler));
        }
    }

    /// Takes out the listeners whose address is not in `keep`.
    pub fn remove_except(&mut self, keep: &[SocketAddr]) -> Vec<Listener> {
        let gone: Vec<SocketAddr> = self
            .map
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        gone.iter().filter_map(|a| self.map.remove(a)).collect()
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.map.values().map(Listener::local_addr).collect()
    }

    /// Retires every listener (see [`Listener::retire`]).
    pub async fn retire_all(&mut self) {
        for (_, l) in std::mem::take(&mut self.map) {
            l.retire().await;
        }
    }
}

/// An accepting listener.
pub struct Listener {
    local: SocketAddr,
    listener: Arc<TcpListener>,
    handler: Arc<dyn Handler>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .finish()
    }
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting, serves what the kernel already queued, then closes.
    pub async fn retire(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
        // The accept task is gone; take what is left in the queue with direct,
        // non-blocking accepts (tokio's readiness may lag the kernel's queue).
        let sock = SockRef::from(&*self.listener);
        let mut served = 0usize;
        loop {
            match sock.accept() {
                Ok((conn, peer)) => {
                    let Some(peer) = peer.as_socket() else {
                        continue;
                    };
                    let std: std::net::TcpStream = conn.into();
                    if std.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if let Ok(stream) = TcpStream::from_std(std) {
                        served += 1;
                        self.handler.handle(stream, peer);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_transient(&e) => continue,
                Err(_) => break, // WouldBlock: the queue is empty.
            }
        }
        tracing::debug!(addr = %self.local, queued = served, "listener retired");
        // Dropping the last reference closes the socket.
    }
}

impl Drop for Listener {
    /// A listener dropped without [`Listener::retire`] still stops its accept task
    /// (which would otherwise keep the socket open forever).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs the accept loop, restarting it with backoff if it dies (a panic in a
/// handler, say), so one bad connection cannot take a port offline.
async fn supervise(
    app: String,
    listener: Arc<TcpListener>,
    handler: Arc<dyn Handler>,
    stop: CancellationToken,
    restarts: Option<Counter>,
) {
    let mut backoff = RESTART_BACKOFF.0;
    loop {
        let task = tokio::spawn(accept_loop(listener.clone(), handler.clone(), stop.clone()));
        match task.await {
            Ok(()) => return, // stopped on request
            Err(e) if e.is_cancelled() => return,
            Err(e) => {
                let addr = listener.local_addr().ok();
                tracing::error!(app, ?addr, error = %e, ?backoff, "listener task died; restarting");
                if let Some(c) = &restarts {
                    c.inc();
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF.1);
            }
        }
    }
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    handler: Arc<dyn Handler>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => handler.handle(stream, peer),
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the queue keeps the client; wait
                // for resources rather than spin. Clients keep coming while this
                // lasts: one line a second says so.
                static ACCEPT_FAILED: LogLimit = LogLimit::per_second();
                if let Some(suppressed) = ACCEPT_FAILED.allow() {
                    let addr = listener.local_addr().ok();
                    tracing::warn!(?addr, error = %e, suppressed, pause = ?ACCEPT_ERROR_PAUSE, "accept failed (out of file descriptors or buffers?); pausing");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Errors about one half-open connection, not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc;

    /// Panics on its first connection, reports the others.
    struct Flaky {
        calls: AtomicUsize,
        seen: mpsc::UnboundedSender<SocketAddr>,
    }

    impl Handler for Flaky {
        fn handle(&self, _stream: TcpStream, peer: SocketAddr) {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("handler bug");
            }
            let _ = self.seen.send(peer);
        }
    }

    #[tokio::test]
    async fn accept_loop_is_restarted_after_a_panic() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handler = Arc::new(Flaky {
            calls: AtomicUsize::new(0),
            seen: tx,
        });
        let restarts = Counter::default();
        let bound = Bound::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .count_restarts(restarts.clone());
        let addr = bound.local_addr();
        let listener = bound.start("t", handler.clone());
        let _first = TcpStream::connect(addr).await.unwrap();
        // The second client waits in the accept queue (same socket) until the
        // restarted loop takes it.
        let second = TcpStream::connect(addr).await.unwrap();
        let peer = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("listener was not restarted")
            .unwrap();
        assert_eq!(peer, second.local_addr().unwrap());
        assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
        assert_eq!(restarts.get(), 1);
        listener.retire().await;
    }

    #[tokio::test]
    async fn retire_serves_the_queue_then_closes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        struct Count(mpsc::UnboundedSender<SocketAddr>);
        impl Handler for Count {
            fn handle(&self, _s: TcpStream, peer: SocketAddr) {
                let _ = self.0.send(peer);
            }
        }
        let bound = Bound::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = bound.local_addr();
        // Clients queue in the kernel before accepting starts.
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let listener = bound.start("t", Arc::new(Count(tx)));
        listener.retire().await;
        let mut served = 0;
        while rx.try_recv().is_ok() {
            served += 1;
        }
        assert_eq!(served, 5, "queued clients were dropped");
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
