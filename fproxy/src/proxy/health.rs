//! Active health checks: every interval, each target of the app is connected to
//! (and, when configured, sent a probe whose answer must contain an expected
//! string). `rise` passes in a row bring a target back, `fall` failures take it out.
//! Checks run in their own task, off the request path: choosing a target only reads
//! the verdict.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::tcp::{defaults, HealthCheck};
use crate::dns::Resolver;
use crate::strategy::TargetState;

/// Most bytes of a probe answer read while looking for `expect`.
const MAX_ANSWER: usize = 4096;

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let route = shared.route.load_full();
        let interval = match &route.config.health_check {
            None => {
                // Checks off (perhaps by a reload): nothing may stay marked down.
                for s in &route.states {
                    s.set_healthy(true);
                }
                defaults::CHECK_INTERVAL
            }
            Some(hc) => {
                let mut checks = JoinSet::new();
                for state in &route.states {
                    let state = state.clone();
                    let (hc, resolver, app) =
                        (hc.clone(), shared.resolver.clone(), route.app.name.clone());
                    checks.spawn(async move { check(&app, &state, &hc, &resolver).await });
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = async { while checks.join_next().await.is_some() {} } => {}
                }
                hc.interval
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn check(app: &str, state: &TargetState, hc: &HealthCheck, resolver: &Resolver) {
    let ok = tokio::time::timeout(hc.timeout, probe(state, hc, resolver))
        .await
        .unwrap_or(false);
    let streak = {
        let mut s = state.streak.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == ok {
            s.1 += 1;
        } else {
            *s = (ok, 1);
        }
        s.1
    };
    let healthy = state.is_healthy();
    if ok && !healthy && streak >= hc.rise {
        state.set_healthy(true);
        tracing::info!(app, target = %state.target, "health check: target up");
    } else if !ok && healthy && streak >= hc.fall {
        state.set_healthy(false);
        tracing::warn!(app, target = %state.target, "health check: target down");
    }
}

async fn probe(state: &TargetState, hc: &HealthCheck, resolver: &Resolver) -> bool {
    let Ok(addrs) = resolver.resolve(&state.target).await else {
        return false;
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
