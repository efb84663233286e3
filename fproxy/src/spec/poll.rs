//! Keeping cached specs fresh.
//!
//! A new key is fetched at once (the first request waits for it; concurrent first
//! requests share that fetch). After that, one background loop refreshes every key
//! each poll interval with `sinceTime`, so serving never waits on upstream. Failing
//! keys back off exponentially with jitter (so a recovering upstream is not hit by
//! every instance at once) and keep serving their last good spec.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::redis::RedisCache;
use super::store::{Entry, Key, Lookup, Spec, Upstream as State};
use super::upstream::Fetched;
use super::Shared;
use crate::loglimit::LogLimit;

/// The longest a failing key waits between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Fetches one key now and records the outcome. With a shared cache, a key seen for
/// the first time is looked up there first (so a fresh instance serves at once, even
/// with upstream down), and only the leader writes what upstream sends.
pub async fn fetch(shared: Arc<Shared>, entry: Arc<Entry>) {
    let settings = shared.settings.load_full();
    if let (Some(cache), None) = (settings.cache(), entry.spec()) {
        cache.first_attempt().await;
    }
    let cache = settings.cache().filter(|c| c.is_connected()).cloned();
    if let (Some(cache), None) = (&cache, entry.spec()) {
        if !cache.is_leader() {
            let _ = cache.register(&entry.key).await;
        }
        if let Ok(Some((lcut, body))) = cache.read_newer(&entry.key, 0).await {
            if upstream_payload_ok(&body) {
                entry.offer(Spec::new(lcut, body));
                return;
            }
        }
    }
    let stats = &shared.stats;
    let upstream = match &settings.upstream {
        Ok(u) => u.clone(),
        Err(e) => {
            stats.fetch_error.inc();
            entry.set_upstream(State::Failing(e.clone()));
            return;
        }
    };
    // One limit for all fetches of the app, first fetches included.
    let Ok(_permit) = settings.fetches.clone().acquire_owned().await else {
        return;
    };
    let since = entry.spec().map(|s| s.lcut);
    let key = entry.key.masked();
    let started = Instant::now();
    let fetched = upstream
        .fetch(&entry.key, since, settings.spec.max_spec_size)
        .await;
    stats
        .fetch_duration
        .observe(started.elapsed().as_secs_f64());
    match fetched {
        Ok(Fetched::Spec(spec)) => {
            let lcut = spec.lcut;
            if entry.offer(spec) {
                stats.updated.inc();
                tracing::info!(app = %shared.name(), key, lcut, "spec updated");
                if let (Some(cache), Some(spec)) = (&cache, entry.spec()) {
                    if cache.is_leader() {
                        let _ = cache.write(&entry.key, &spec).await;
                    }
                }
            } else {
                // A payload no newer than ours: nothing changed.
                stats.unchanged.inc();
            }
        }
        Ok(Fetched::Unchanged) => {
            stats.unchanged.inc();
            entry.unchanged();
        }
        Ok(Fetched::Unauthorized(status)) => {
            stats.unauthorized.inc();
            // Any client can name unknown keys: a sample of them is enough.
            static REJECTS: LogLimit = LogLimit::per_second();
            if let Some(suppressed) = REJECTS.allow() {
                tracing::warn!(app = %shared.name(), key, status, suppressed, "upstream rejects this SDK key");
            }
            if entry.spec().is_none() {
                // Never had data: forget it, answer 401 for a while without asking.
                shared.store.reject(
                    &entry.key,
                    settings.spec.rejected_key_ttl,
                    settings.spec.max_rejected_keys,
                );
            } else if settings.spec.drop_unauthorized {
                entry.clear();
                if let Some(cache) = cache.as_ref().filter(|c| c.is_leader()) {
                    let _ = cache.delete(&entry.key).await;
                }
            }
            entry.set_upstream(State::Unauthorized);
            backoff(&entry, settings.spec.poll_interval);
        }
        Err(e) => {
            stats.fetch_error.inc();
            // One line per failing key and round could be thousands (keys come
            // from clients): a sample, with the count left out.
            static FAILED: LogLimit = LogLimit::per_second();
            if let Some(suppressed) = FAILED.allow() {
                tracing::warn!(app = %shared.name(), key, error = %e, suppressed, "fetch failed; serving the last good spec");
            }
            entry.set_upstream(State::Failing(e.to_string()));
            backoff(&entry, settings.spec.poll_interval);
        }
    }
}

/// What Redis holds passes the same check as what upstream sends.
fn upstream_payload_ok(body: &bytes::Bytes) -> bool {
    matches!(
        super::upstream::parse(body.clone(), None),
        Ok(Fetched::Spec(_))
    )
}

/// A follower's refresh of one key from the shared cache.
async fn sync_from_cache(cache: &RedisCache, entry: &Entry, leader_alive: bool) {
    let current = entry.spec().map(|s| s.lcut).unwrap_or(0);
    match cache.read_newer(&entry.key, current).await {
        Ok(Some((lcut, body))) if upstream_payload_ok(&body) => {
            entry.offer(Spec::new(lcut, body));
        }
        // Nothing newer: fresh as far as a live leader keeps Redis fresh.
        Ok(_) if leader_alive => entry.unchanged(),
        _ => {}
    }
}

/// Keeps this instance's leadership up to date: a step every third of the leader
/// TTL, so a dead leader's key expires and a follower takes over within the TTL.
pub async fn lead(shared: Arc<Shared>, cache: Arc<RedisCache>, stop: CancellationToken) {
    let period = cache.config().leader_ttl / 3;
    loop {
        // A reload that drops this cache cancels `stop` and resigns; an election
        // step finishing after that would take leadership (and the gauge) back.
        let (me, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = cache.elect() => r,
        };
        if me {
            // Poll keys followers registered as soon as we lead.
            shared.reconfigured.notify_one();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// The leader announced a change of the hash `hash_key`: followers read it now.
pub fn on_announced(shared: &Arc<Shared>, hash_key: &str) {
    let settings = shared.settings.load();
    let Some(cache) = settings.cache().cloned() else {
        return;
    };
    if cache.is_leader() {
        return;
    }
    for entry in shared.store.entries() {
        if cache.hash_key(&entry.key) == hash_key {
            let cache = cache.clone();
            tokio::spawn(async move { sync_from_cache(&cache, &entry, true).await });
        }
    }
}

/// Writes again every spec Redis lacks or holds older (Redis restarted, flushed, or
/// expired it), so SDK adapters reading Redis never fall back to nothing.
async fn repair(shared: &Shared, cache: &RedisCache) {
    for entry in shared.store.entries() {
        let Some(spec) = entry.spec() else { continue };
        match cache.lcut(&entry.key).await {
            Ok(Some(stored)) if stored >= spec.lcut => {}
            Ok(_) => {
                if let Ok(true) = cache.write(&entry.key, &spec).await {
                    tracing::info!(
                        key = entry.key.masked(),
                        lcut = spec.lcut,
                        "rewrote a spec missing from redis"
                    );
                }
            }
            Err(_) => return, // Redis is down; try next round
        }
    }
}

/// Evicts keys beyond `max` (those without data first), sparing `keep`.
pub(super) fn evict(shared: &Shared, max: usize, keep: impl Fn(&Key) -> bool) {
    let evicted = shared.store.evict_beyond(max, keep);
    if evicted.is_empty() {
        return;
    }
    shared.stats.evicted.inc_by(evicted.len() as u64);
    // Clients naming new valid keys drive this: one line a second at most.
    static EVICTED: LogLimit = LogLimit::per_second();
    if let Some(suppressed) = EVICTED.allow() {
        tracing::info!(
            app = %shared.name(),
            key = evicted[0].masked(),
            count = evicted.len(),
            suppressed,
            "evicted over max_sdk_keys (keys without data first, then least recently requested)"
        );
    }
}

/// Counts a failure; the entry is skipped until its backoff has passed.
fn backoff(entry: &Entry, base: Duration) {
    let failures = entry.failures.fetch_add(1, Ordering::Relaxed) + 1;
    let exp = base
        .saturating_mul(1 << failures.min(16))
        .min(MAX_BACKOFF.max(base));
    // Full jitter over the upper half: spread out, never sooner than half.
    let wait = exp.mul_f64(rand::random_range(0.5..=1.0));
    entry.retry_after(wait);
}

/// Refreshes every key each poll interval until `stop`.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last_round = Instant::now();
    loop {
        // A reload may change the interval: then the next round is due one new
        // interval after the last round, not after the old interval.
        let due = last_round + shared.settings.load().spec.poll_interval;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.reconfigured.notified() => continue,
            _ = tokio::time::sleep_until(due) => {}
        }
        last_round = Instant::now();
        let settings = shared.settings.load_full();
        let warm = |k: &Key| settings.warm.contains(k);
        evict(&shared, settings.spec.max_sdk_keys, warm);
        shared.store.sweep_rejected(settings.spec.rejected_key_ttl);
        let cache = settings.cache().filter(|c| c.is_connected()).cloned();
        if let Some(cache) = &cache {
            if !cache.is_leader() {
                // A follower: Redis, kept by the leader, is the source.
                let (_, leader_alive) = cache.elect().await;
                for entry in shared.store.entries() {
                    sync_from_cache(cache, &entry, leader_alive).await;
                }
                continue;
            }
            // The leader polls every key any instance asked for.
            if let Ok(keys) = cache.registered().await {
                for key in keys {
                    if let Lookup::Created(e) =
                        shared.store.lookup(&key, settings.spec.rejected_key_ttl)
                    {
                        tracing::debug!(
                            key = e.key.masked(),
                            "polling a key registered by a follower"
                        );
                    }
                }
                // Followers' keys count against max_sdk_keys too.
                evict(&shared, settings.spec.max_sdk_keys, warm);
            }
        }
        let mut fetches = JoinSet::new();
        for entry in shared.store.entries() {
            if entry.due(last_round) {
                fetches.spawn(fetch(shared.clone(), entry));
            }
        }
        // Finish this round before the next, so a slow upstream is not piled on.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { while fetches.join_next().await.is_some() {} } => {}
        }
        if let Some(cache) = cache.filter(|c| c.is_leader()) {
            repair(&shared, &cache).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::store::{Api, Lookup, Store};

    /// Each failure doubles the wait from the poll interval, jittered over the upper
    /// half, up to the cap; a success clears it.
    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_jitter_and_is_capped() {
        let store = Store::default();
        let key = Key {
            api: Api::V1,
            sdk_key: "secret-k".parse().unwrap(),
        };
        let Lookup::Created(entry) = store.lookup(&key, Duration::from_secs(60)) else {
            panic!("new key not created");
        };
        let base = Duration::from_millis(100);
        let ms = Duration::from_millis;
        for (failures, (low, high)) in [(1u32, (100, 200)), (2, (200, 400)), (5, (1600, 3200))] {
            while entry.failures.load(Ordering::Relaxed) < u64::from(failures) {
                backoff(&entry, base);
            }
            let now = Instant::now();
            assert!(
                !entry.due(now + ms(low - 2)),
                "due too early after {failures}"
            );
            assert!(entry.due(now + ms(high + 2)), "not due after {failures}");
        }
        for _ in 0..30 {
            backoff(&entry, base);
        }
        let now = Instant::now();
        assert!(entry.due(now + MAX_BACKOFF + ms(2)), "backoff not capped");
        assert!(!entry.due(now + MAX_BACKOFF / 2 - ms(2)));
        entry.unchanged();
        assert!(
            entry.due(Instant::now()),
            "a success did not clear the backoff"
        );
    }
}
