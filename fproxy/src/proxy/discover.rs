//! Background discovery of target names.
//!
//! Each target name of the app is resolved when the app starts and again when
//! its answer's TTL runs out (kept within the app's `dns.min_ttl`..`dns.max_ttl`,
//! so a TTL of 0 cannot turn into a lookup loop and a TTL of a day cannot pin a
//! dead address). Every address an answer holds becomes an endpoint of its own,
//! health-checked and ejected on its own. A failed lookup keeps the last answer (a
//! DNS outage should not take working backends away) and is retried after
//! `min_ttl`. Connections never wait on this: they use the last answer. Of an
//! answer's addresses, `dns.family` picks which become endpoints (by default the
//! IPv4 ones, or the IPv6 ones when there are none).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Resolved, Shared};
use crate::config::Target;

pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut due: HashMap<Target, Instant> = HashMap::new();
    let mut failing: HashSet<Target> = HashSet::new();
    loop {
        let route = shared.route.load_full();
        let (app, dns) = (&route.app.name, &route.config.dns);
        let mut names: Vec<Target> = Vec::new();
        for t in &route.config.targets {
            if matches!(t, Target::Name { .. }) && !names.contains(t) {
                names.push(t.clone());
            }
        }
        due.retain(|t, _| names.contains(t));
        failing.retain(|t| names.contains(t));

        let mut next: Resolved = crate::sync::lock(&shared.routing).clone();
        let mut changed = false;
        let now = Instant::now();
        for name in &names {
            if due.get(name).is_some_and(|at| *at > now) {
                continue;
            }
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                a = shared.resolver.lookup(name) => a,
            };
            match answer {
                Ok(a) => {
                    let mut addrs = dns.family.select(a.addrs);
                    addrs.sort();
                    addrs.dedup();
                    if next.get(name) != Some(&addrs) {
                        tracing::info!(app, target = %name, ?addrs, "target name resolved");
                        next.insert(name.clone(), addrs);
                        changed = true;
                    }
                    failing.remove(name);
                    due.insert(name.clone(), now + a.ttl.clamp(dns.min_ttl, dns.max_ttl));
                }
                Err(e) => {
                    // Say it once per outage, not once per retry.
                    if failing.insert(name.clone()) {
                        tracing::warn!(app, target = %name, error = %e, "cannot resolve target; keeping its last addresses");
                    }
                    due.insert(name.clone(), now + dns.min_ttl);
                }
            }
        }
        let before = next.len();
        next.retain(|t, _| names.contains(t));
        changed |= next.len() != before;
        if changed {
            shared.reroute(None, Some(next));
        }

        let wake = due.values().min().copied();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.reconfigured.notified() => {}
            _ = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}
