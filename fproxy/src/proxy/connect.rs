//! Finding a target that accepts: strategy pick, then failover along the list.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use nix::errno::Errno;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::Route;
use crate::config::Target;
use crate::dns::{ResolveError, Resolver};
use crate::error::Side;
use crate::loglimit::LogLimit;
use crate::strategy::Pick;

/// Why no target took a connection, or why one attempt failed (the `last` cause
/// of [`ConnectError::Exhausted`] and [`ConnectError::Deadline`]).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The target's name gave no address.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The target refused the connection (or failed it otherwise: reset,
    /// unreachable).
    #[error("connect {target} ({addr}): {source}")]
    Refused {
        target: Target,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// One attempt took longer than `connect_timeout`.
    #[error("connect {target} ({addr}): timed out")]
    Timeout { target: Target, addr: SocketAddr },
    /// `connect_deadline` passed before a target connected; `last` is the last
    /// failure before that (`None`: nothing was tried).
    #[error("no target connected within {deadline:?}; last error: {}", Last(last))]
    Deadline {
        deadline: Duration,
        last: Option<Box<ConnectError>>,
    },
    /// Every target was tried and failed; `last` is the last failure.
    #[error("no target connected within {deadline:?}; last error: {}", Last(last))]
    Exhausted {
        deadline: Duration,
        last: Option<Box<ConnectError>>,
    },
    /// The app has no targets. Validation forbids this; an embedder building a
    /// config by hand may not.
    #[error("the app has no targets")]
    NoEndpoints,
    /// A local resource ran out while connecting to `addr`; the targets were not
    /// at fault. Host-wide shortages (fds, memory) stop at the first; a lack of
    /// local ports (per destination) ends here only when every target lacked them.
    #[error("local resource exhausted connecting to {addr}: {source}")]
    Local {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// Who is to blame: [`Side::Local`] for [`ConnectError::Local`], the upstream
    /// for the rest (also when some of the attempts before ran out of local ports:
    /// then a target failed too).
    pub fn side(&self) -> Side {
        match self {
            ConnectError::Local { .. } => Side::Local,
            ConnectError::Resolve(_)
            | ConnectError::Refused { .. }
            | ConnectError::Timeout { .. }
            | ConnectError::Deadline { .. }
            | ConnectError::Exhausted { .. }
            | ConnectError::NoEndpoints => Side::Upstream,
        }
    }

    /// Whether the client may safely retry the connection (here or elsewhere).
    /// Always: every attempt happens before a byte of the client's data is read.
    pub fn retry_safe(&self) -> bool {
        true
    }
}

/// Displays the last cause of a failed connect, or that there was none.
struct Last<'a>(&'a Option<Box<ConnectError>>);

impl std::fmt::Display for Last<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(e) => e.fmt(f),
            None => f.write_str("none tried"),
        }
    }
}

/// A connected target.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    /// Index of the target in the route.
    pub index: usize,
    pub addr: SocketAddr,
    /// Attempts that failed before this one.
    pub retries: u32,
}

/// Tries targets from the strategy's pick onwards, each resolved address in turn,
/// every attempt bounded by the connect timeout and all of them by the deadline.
/// Targets that are down (failed health checks, ejected) are skipped, unless every
/// target is down: then all are tried anyway (fail open). One pass: when every
/// target refused, the client is answered at once rather than held to the deadline.
pub async fn connect(
    route: &Route,
    resolver: &Resolver,
    client: SocketAddr,
) -> Result<Connected, ConnectError> {
    connect_with(route, resolver, client, TcpStream::connect).await
}

/// [`connect`], opening sockets with `dial`.
pub(crate) async fn connect_with<D, F>(
    route: &Route,
    resolver: &Resolver,
    client: SocketAddr,
    dial: D,
) -> Result<Connected, ConnectError>
where
    D: Fn(SocketAddr) -> F,
    F: Future<Output = io::Result<TcpStream>>,
{
    /// Every client of an app with every target down would log this line.
    static ALL_DOWN: LogLimit = LogLimit::per_second();
    let cfg = &route.config;
    let deadline = Instant::now() + cfg.connect_deadline;
    let n = route.targets.len();
    if n == 0 {
        return Err(ConnectError::NoEndpoints);
    }
    let first = route.strategy.pick(&Pick {
        client,
        targets: &route.states,
    }) % n;
    let now_ms = route.now_ms();
    // Fail open: when every target is down, all are tried anyway.
    let any_up = route.states.iter().any(|s| s.available(now_ms));
    if !any_up {
        if let Some(suppressed) = ALL_DOWN.allow() {
            tracing::warn!(app = %route.app.name, suppressed, "every target is down; trying them all");
        }
    }
    let tries = (0..n)
        .map(|k| (first + k) % n)
        .filter(|&i| !any_up || route.states[i].available(now_ms));
    let mut retries = 0;
    let mut last: Option<ConnectError> = None;
    // Whether the deadline ended the search before every target was tried.
    let mut out_of_time = false;
    // The last local error that did not stop the search, and whether any target
    // failed on its own account (then the answer is "no target", not "local").
    let mut local: Option<(SocketAddr, io::Error)> = None;
    let mut any_target_failed = false;

    for index in tries {
        let slot = &route.targets[index];
        let state = &slot.state;
        let target = &state.target;
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            out_of_time = true;
            break;
        };
        // A resolved endpoint has its address; a name discovery has not answered
        // yet is resolved here.
        let addrs = match state.addr {
            Some(a) => vec![a],
            None => match timeout(left, resolver.resolve(target)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    last = Some(e.into());
                    slot.traffic.resolve.inc();
                    retries += 1;
                    continue;
                }
                Err(_) => {
                    last = Some(ConnectError::Resolve(ResolveError {
                        host: target.to_string(),
                        reason: "timed out".into(),
                    }));
                    slot.traffic.resolve.inc();
                    out_of_time = true;
                    break;
                }
            },
        };
        // Only the target's own failures count toward ejecting it.
        let mut target_failed = false;
        for addr in addrs {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                out_of_time = true;
                break;
            };
            slot.traffic.attempts.inc();
            let attempt = Instant::now();
            match timeout(left.min(cfg.connect_timeout), dial(addr)).await {
                Ok(Ok(stream)) => {
                    slot.traffic
                        .connect_duration
                        .observe(attempt.elapsed().as_secs_f64());
                    state.connect_ok();
                    return Ok(Connected {
                        stream,
                        index,
                        addr,
                        retries,
                    });
                }
                Ok(Err(e)) if Side::of_connect(&e) == Side::Local => {
                    // Not the target's failure: no failure count, no ejection.
                    if host_wide(&e) {
                        // Other targets would fail alike: answer the client now.
                        return Err(ConnectError::Local { addr, source: e });
                    }
                    // Out of local ports for this destination only (the kernel
                    // needs a free port per 4-tuple): another address or target
                    // usually still connects.
                    last = Some(ConnectError::Local {
                        addr,
                        source: copy(&e),
                    });
                    local = Some((addr, e));
                }
                Ok(Err(e)) => {
                    slot.traffic.refused.inc();
                    last = Some(ConnectError::Refused {
                        target: target.clone(),
                        addr,
                        source: e,
                    });
                    target_failed = true;
                }
                Err(_) => {
                    slot.traffic.timeout.inc();
                    last = Some(ConnectError::Timeout {
                        target: target.clone(),
                        addr,
                    });
                    target_failed = true;
                }
            }
            retries += 1;
            if let Some(error) = &last {
                tracing::debug!(app = %route.app.name, %client, %error, "connect attempt failed");
            }
        }
        if target_failed {
            any_target_failed = true;
            passive_failure(route, index);
        }
    }
    match local {
        // Only local errors: say so (counted and logged as local, not as targets down).
        Some((addr, source)) if !any_target_failed => Err(ConnectError::Local { addr, source }),
        _ if out_of_time => Err(ConnectError::Deadline {
            deadline: cfg.connect_deadline,
            last: last.map(Box::new),
        }),
        _ => Err(ConnectError::Exhausted {
            deadline: cfg.connect_deadline,
            last: last.map(Box::new),
        }),
    }
}

/// A copy of an OS error (`io::Error` is not `Clone`), for the last cause.
fn copy(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Whether a local connect error would hit every destination alike: the
/// process's or host's file descriptors (EMFILE, ENFILE), or kernel memory and
/// socket buffers (ENOBUFS, ENOMEM), which are shared by all sockets, so trying
/// more targets only spends more of what ran out. EADDRNOTAVAIL (no free local
/// port) is per destination, so it is not.
fn host_wide(e: &io::Error) -> bool {
    e.raw_os_error().map(Errno::from_raw) != Some(Errno::EADDRNOTAVAIL)
}

/// Counts a failed connect to a target and ejects it after enough in a row, for a
/// time that grows with each ejection, while few enough targets are ejected.
fn passive_failure(route: &Route, index: usize) {
    let p = &route.config.passive;
    let state = &route.states[index];
    if p.consecutive_failures == 0 || state.connect_failed() < p.consecutive_failures {
        return;
    }
    let now = route.now_ms();
    let ejected = route.states.iter().filter(|s| s.is_ejected(now)).count();
    let allowed = (route.states.len() * p.max_ejected_percent as usize / 100).max(1);
    if ejected >= allowed {
        return;
    }
    let n = state.ejections() + 1;
    let length = p.base_ejection.saturating_mul(n);
    // Saturating: the n-th ejection of a long base must not wrap to "never ejected".
    let length_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
    state.eject(now.saturating_add(length_ms));
    let health = &route.targets[index].health;
    health.ejections.inc();
    health.ejected.set(1);
    tracing::warn!(app = %route.app.name, target = %state.target, addr = ?state.addr, ejection = n, ?length, "target ejected after consecutive connect failures");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proxy::testing::{self, failing};

    /// One error of each kind (an `Exhausted` and a `Deadline` wrapping a local
    /// last cause, the case where the blame must not follow the cause).
    pub(crate) fn every_kind() -> Vec<ConnectError> {
        let target = Target::parse("example.test:1").unwrap();
        let addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let local = || ConnectError::Local {
            addr,
            source: io::Error::from_raw_os_error(Errno::EADDRNOTAVAIL as i32),
        };
        let deadline = Duration::from_secs(1);
        vec![
            ConnectError::Resolve(ResolveError {
                host: target.to_string(),
                reason: "no address".into(),
            }),
            ConnectError::Refused {
                target: target.clone(),
                addr,
                source: io::Error::from_raw_os_error(Errno::ECONNREFUSED as i32),
            },
            ConnectError::Timeout { target, addr },
            ConnectError::Deadline {
                deadline,
                last: None,
            },
            ConnectError::Exhausted {
                deadline,
                last: Some(Box::new(local())),
            },
            ConnectError::NoEndpoints,
            local(),
        ]
    }

    /// Only a local shortage is blamed on this host; every kind is safe to retry
    /// (nothing of the client's was read yet).
    #[test]
    fn sides_and_retries() {
        for e in every_kind() {
            let side = match e {
                ConnectError::Local { .. } => Side::Local,
                _ => Side::Upstream,
            };
            assert_eq!(e.side(), side, "{e}");
            assert!(e.retry_safe(), "{e}");
        }
    }

    /// The messages read as they did when the causes were strings.
    #[test]
    fn messages() {
        let target = Target::parse("10.0.0.1:1").unwrap();
        let addr: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let timeout = ConnectError::Timeout { target, addr };
        let e = ConnectError::Exhausted {
            deadline: Duration::from_secs(2),
            last: Some(Box::new(timeout)),
        };
        assert_eq!(
            e.to_string(),
            "no target connected within 2s; last error: connect 10.0.0.1:1 (10.0.0.1:1): timed out"
        );
        let e = ConnectError::Deadline {
            deadline: Duration::from_secs(2),
            last: None,
        };
        assert_eq!(
            e.to_string(),
            "no target connected within 2s; last error: none tried"
        );
    }

    fn route(extra: &str) -> Route {
        testing::route(&format!(
            r#"{{"apps":[{{"name":"a","ports":[1],"targets":["10.0.0.1:1","10.0.0.2:1","10.0.0.3:1","10.0.0.4:1"]{extra}}}]}}"#
        ))
    }

    /// Ejection lengths grow with each ejection and end by the clock alone.
    #[tokio::test(start_paused = true)]
    async fn ejections_grow_and_expire_on_time() {
        let r = route(r#","passive":{"consecutive_failures":3,"base_ejection":"10s"}"#);
        let t = &r.states[0];
        for _ in 0..2 {
            passive_failure(&r, 0);
        }
        assert!(!t.is_ejected(r.now_ms()), "ejected before 3 failures");
        passive_failure(&r, 0);
        assert!(t.is_ejected(r.now_ms()));
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(t.is_ejected(r.now_ms()));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(
            !t.is_ejected(r.now_ms()),
            "first ejection lasts base_ejection"
        );

        // The second ejection lasts twice as long.
        for _ in 0..3 {
            passive_failure(&r, 0);
        }
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(t.is_ejected(r.now_ms()));
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(!t.is_ejected(r.now_ms()));
        assert_eq!(t.ejections(), 2);
    }

    /// Running out of fds (or buffers, or ports) here is not the target's fault:
    /// no failure is counted and nothing is ejected, however often it happens;
    /// a refusal by the target is counted and ejects.
    #[tokio::test(start_paused = true)]
    async fn local_errors_do_not_count_against_targets() {
        let r = route(r#","passive":{"consecutive_failures":1,"base_ejection":"10s"}"#);
        let resolver = Resolver::from_system();
        let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // Host-wide shortages stop at the first attempt; a lack of local ports
        // (per destination) tries every target first.
        for (errno, attempts) in [
            (Errno::EMFILE, 1),
            (Errno::ENFILE, 1),
            (Errno::ENOBUFS, 1),
            (Errno::ENOMEM, 1),
            (Errno::EADDRNOTAVAIL, 4),
        ] {
            for _ in 0..5 {
                let dials = std::cell::Cell::new(0);
                let dial = |a| {
                    dials.set(dials.get() + 1);
                    failing(errno)(a)
                };
                let e = connect_with(&r, &resolver, client, dial).await.unwrap_err();
                assert_eq!(e.side(), Side::Local, "{errno}: {e}");
                assert!(e.retry_safe());
                assert!(matches!(e, ConnectError::Local { .. }), "{e}");
                assert_eq!(dials.get(), attempts, "{errno}: attempts");
            }
        }
        let now = r.now_ms();
        for s in &r.states {
            assert_eq!(s.failures(), 0, "{} blamed for a local error", s.target);
            assert!(!s.is_ejected(now));
        }
        assert!(r.targets.iter().all(|t| t.traffic.refused.get() == 0));

        // The contrast: a refusal is the target's, and ejects at once here.
        let e = connect_with(&r, &resolver, client, failing(Errno::ECONNREFUSED))
            .await
            .unwrap_err();
        assert_eq!(e.side(), Side::Upstream);
        assert!(r.states.iter().any(|s| s.is_ejected(r.now_ms())));
    }

    /// Every target refusing ends the search at once with the last refusal; a
    /// deadline that passes first ends it with the last timeout.
    #[tokio::test(start_paused = true)]
    async fn exhausted_and_deadline_carry_the_last_cause() {
        let resolver = Resolver::from_system();
        let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let r = route("");
        let e = connect_with(&r, &resolver, client, failing(Errno::ECONNREFUSED))
            .await
            .unwrap_err();
        match &e {
            ConnectError::Exhausted {
                last: Some(last), ..
            } => {
                assert!(matches!(**last, ConnectError::Refused { .. }), "{e}")
            }
            _ => panic!("not exhausted: {e}"),
        }

        // Two attempts of 1s fit in the 1.5s deadline, not four.
        let r = route(r#","connect_timeout":"1s","connect_deadline":"1500ms""#);
        let never = |_| std::future::pending::<io::Result<TcpStream>>();
        let e = connect_with(&r, &resolver, client, never)
            .await
            .unwrap_err();
        match &e {
            ConnectError::Deadline {
                last: Some(last), ..
            } => {
                assert!(matches!(**last, ConnectError::Timeout { .. }), "{e}")
            }
            _ => panic!("not past the deadline: {e}"),
        }
        assert_eq!(e.side(), Side::Upstream);
    }

    /// At most max_ejected_percent of targets are out at once (at least one may be).
    #[tokio::test(start_paused = true)]
    async fn ejected_share_is_capped() {
        let r = route(
            r#","passive":{"consecutive_failures":1,"base_ejection":"1m","max_ejected_percent":50}"#,
        );
        for i in 0..4 {
            passive_failure(&r, i);
        }
        let now = r.now_ms();
        let ejected = r.states.iter().filter(|s| s.is_ejected(now)).count();
        assert_eq!(ejected, 2);
        // Once the first ejections end, the others may go.
        tokio::time::advance(Duration::from_secs(61)).await;
        passive_failure(&r, 2);
        passive_failure(&r, 3);
        let now = r.now_ms();
        assert!(r.states[2].is_ejected(now) && r.states[3].is_ejected(now));
    }

    /// Out of local ports for one destination: the next target is tried (and
    /// connects), and the one without ports is not blamed.
    #[tokio::test(start_paused = true)]
    async fn no_local_port_fails_over_to_the_next_target() {
        let r = route(r#","passive":{"consecutive_failures":1,"base_ejection":"10s"}"#);
        let resolver = Resolver::from_system();
        let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let good: SocketAddr = "10.0.0.3:1".parse().unwrap();
        for _ in 0..4 {
            // Connected before the call: no real I/O while time is paused.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            stream.set_nonblocking(true).unwrap();
            let stream = std::cell::RefCell::new(Some(TcpStream::from_std(stream).unwrap()));
            let dial = |a: SocketAddr| {
                let s = if a == good {
                    stream.borrow_mut().take()
                } else {
                    None
                };
                std::future::ready(
                    s.ok_or_else(|| io::Error::from_raw_os_error(Errno::EADDRNOTAVAIL as i32)),
                )
            };
            let c = connect_with(&r, &resolver, client, dial).await.unwrap();
            assert_eq!(c.addr, good);
        }
        let now = r.now_ms();
        for s in &r.states {
            assert_eq!(s.failures(), 0, "{} blamed for a local error", s.target);
            assert!(!s.is_ejected(now));
        }
    }
}
