//! Active health checks: every interval, each endpoint of the app is connected to
//! (and, when configured, sent a probe whose answer must contain an expected
//! string). `rise` passes in a row bring an endpoint back, `fall` failures take it
//! out. Checks run in their own task, off the request path: choosing a target only
//! reads the verdict.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Route, Shared, TargetSlot};
use crate::config::tcp::{defaults, HealthCheck};
use crate::dns::Resolver;
use crate::error::Side;
use crate::loglimit::LogLimit;

/// Most bytes of a probe answer read while looking for `expect`.
const MAX_ANSWER: usize = 4096;

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let route = shared.route.load_full();
        let interval = match &route.config.health_check {
            None => {
                // Checks off (perhaps by a reload): nothing may stay marked down.
                for slot in &route.targets {
                    if slot.state.set_healthy(true) {
                        slot.health.healthy.set(1);
                    }
                }
                defaults::CHECK_INTERVAL
            }
            Some(hc) => {
                let mut checks = JoinSet::new();
                for slot in &route.targets {
                    let slot = slot.clone();
                    let (hc, resolver, app) =
                        (hc.clone(), shared.resolver.clone(), route.app.name.clone());
                    checks.spawn(async move { check(&app, &slot, &hc, &resolver).await });
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = async { while checks.join_next().await.is_some() {} } => {}
                }
                hc.interval
            }
        };
        refresh_ejections(&route);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Ejections end by time alone, with no event; the gauge follows at each round.
fn refresh_ejections(route: &Route) {
    let now = route.now_ms();
    for slot in &route.targets {
        slot.health
            .ejected
            .set(i64::from(slot.state.is_ejected(now)));
    }
}

async fn check(app: &str, slot: &TargetSlot, hc: &HealthCheck, resolver: &Resolver) {
    check_with(app, slot, hc, resolver, TcpStream::connect).await
}

/// [`check`], opening sockets with `dial`.
async fn check_with<D, F>(
    app: &str,
    slot: &TargetSlot,
    hc: &HealthCheck,
    resolver: &Resolver,
    dial: D,
) where
    D: Fn(SocketAddr) -> F,
    F: Future<Output = io::Result<TcpStream>>,
{
    /// One line per second for all endpoints: fd exhaustion hits every check.
    static LOCAL: LogLimit = LogLimit::per_second();
    let state = &slot.state;
    let probed = tokio::time::timeout(
        hc.timeout,
        probe(state.addr, &state.target, hc, resolver, dial),
    )
    .await
    .unwrap_or(Ok(false));
    let ok = match probed {
        Ok(ok) => ok,
        Err(e) => {
            // Out of fds or ports here: the target's verdict stays as it was.
            if let Some(suppressed) = LOCAL.allow() {
                tracing::warn!(app, target = %state.target, addr = ?state.addr, error = %e, suppressed, "health check skipped: local resources exhausted");
            }
            return;
        }
    };
    match state.record_check(ok, hc.rise, hc.fall) {
        Some(true) => {
            slot.health.healthy.set(1);
            slot.health.up.inc();
            tracing::info!(app, target = %state.target, addr = ?state.addr, "health check: target up");
        }
        Some(false) => {
            slot.health.healthy.set(0);
            slot.health.down.inc();
            tracing::warn!(app, target = %state.target, addr = ?state.addr, "health check: target down");
        }
        None => {}
    }
}

/// Checks the endpoint's own address, or every address of a name not resolved by
/// discovery yet. An error is a local failure (see [`Side`]): no verdict.
async fn probe<D, F>(
    addr: Option<SocketAddr>,
    target: &crate::config::Target,
    hc: &HealthCheck,
    resolver: &Resolver,
    dial: D,
) -> io::Result<bool>
where
    D: Fn(SocketAddr) -> F,
    F: Future<Output = io::Result<TcpStream>>,
{
    let addrs = match addr {
        Some(a) => vec![a],
        None => match resolver.resolve(target).await {
            Ok(a) => a,
            Err(_) => return Ok(false),
        },
    };
    for addr in addrs {
        let mut s = match dial(addr).await {
            Ok(s) => s,
            Err(e) if Side::of_connect(&e) == Side::Local => return Err(e),
            Err(_) => continue,
        };
        if let Some(send) = &hc.send {
            if s.write_all(send.as_bytes()).await.is_err() {
                return Ok(false);
            }
        }
        let Some(expect) = &hc.expect else {
            return Ok(true);
        };
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while answer.len() < MAX_ANSWER {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if contains(&answer, expect.as_bytes()) {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    Ok(false)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use nix::errno::Errno;

    use super::*;
    use crate::proxy::testing::{failing, route};

    /// A check that cannot open a socket here (out of fds) gives no verdict: with
    /// `fall: 1` a single blamed failure would take the target down.
    #[tokio::test(start_paused = true)]
    async fn local_errors_give_no_verdict() {
        let json = r#"{"apps":[{"name":"a","ports":[1],"targets":["10.0.0.1:1"],"health_check":{"fall":1,"rise":1}}]}"#;
        let route = route(json);
        let hc = route.config.health_check.clone().unwrap();
        let slot = &route.targets[0];
        let resolver = Resolver::from_system();
        for errno in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::EADDRNOTAVAIL,
        ] {
            check_with("a", slot, &hc, &resolver, failing(errno)).await;
            assert!(slot.state.is_healthy(), "{errno} marked the target down");
        }
        assert_eq!(slot.health.down.get(), 0);
        check_with("a", slot, &hc, &resolver, failing(Errno::ECONNREFUSED)).await;
        assert!(
            !slot.state.is_healthy(),
            "a refusal is the target's failure"
        );
    }
}
