//! Active health checks: every interval, each endpoint of the app is connected to
//! (and, when configured, sent a probe whose answer must contain an expected
//! string). `rise` passes in a row bring an endpoint back, `fall` failures take it
//! out. Checks run in their own task, off the request path: choosing a target only
//! reads the verdict.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Route, Shared, TargetSlot};
use crate::config::tcp::{defaults, HealthCheck};
use crate::dns::Resolver;

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
    let state = &slot.state;
    let ok = tokio::time::timeout(hc.timeout, probe(state.addr, &state.target, hc, resolver))
        .await
        .unwrap_or(false);
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
/// discovery yet.
async fn probe(
    addr: Option<SocketAddr>,
    target: &crate::config::Target,
    hc: &HealthCheck,
    resolver: &Resolver,
) -> bool {
    let addrs = match addr {
        Some(a) => vec![a],
        None => match resolver.resolve(target).await {
            Ok(a) => a,
            Err(_) => return false,
        },
    };
    for addr in addrs {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            continue;
        };
        if let Some(send) = &hc.send {
            if s.write_all(send.as_bytes()).await.is_err() {
                return false;
            }
        }
        let Some(expect) = &hc.expect else {
            return true;
        };
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while answer.len() < MAX_ANSWER {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if contains(&answer, expect.as_bytes()) {
                return true;
            }
        }
        return false;
    }
    false
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
