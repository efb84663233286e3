//! The spec cache: one entry per (API version, SDK key).
//!
//! Each upstream update is encoded once, as the exact bytes upstream sent and as
//! gzip, and kept as shared [`Bytes`]; serving a request clones a reference, with
//! no JSON work and no compression. Readers find an entry under a read lock that is
//! never held across an await, and load its current spec from an `ArcSwap`.

use std::collections::HashMap;
use std::io::Write;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio::sync::watch;
// tokio's clock, so tests can run timers on paused time.
use tokio::time::Instant;

use crate::metrics::spec::{KeyHandles, KeyMetrics};
use crate::metrics::unix_now;
use crate::sync::{lock, read, write};

pub use super::key::SdkKey;

/// DCS API version of a request; v1 and v2 payloads differ, so they are cached apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    V1,
    V2,
}

impl Api {
    pub fn path(self) -> &'static str {
        match self {
            Api::V1 => "v1",
            Api::V2 => "v2",
        }
    }
}

/// What a cache entry is known by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub api: Api,
    pub sdk_key: SdkKey,
}

impl Key {
    /// The SDK key shortened for logs and status: never the whole secret.
    pub fn masked(&self) -> String {
        format!("{}:{}", self.api.path(), self.sdk_key.masked())
    }
}

/// Shows enough of a secret to recognise it, never all of it.
pub fn mask(secret: &str) -> String {
    let shown: String = secret
        .chars()
        .take((secret.chars().count() / 3).min(12))
        .collect();
    format!("{shown}…")
}

/// One version of a spec, ready to serve.
#[derive(Debug)]
pub struct Spec {
    /// Upstream's last config update time (ms), from `x-since-time` or `time`.
    pub lcut: u64,
    /// The payload exactly as upstream sent it.
    pub plain: Bytes,
    /// The same, gzip-compressed once.
    pub gzip: Bytes,
    /// When it arrived (from upstream or Redis), to measure how long it takes to
    /// reach streams.
    pub received: Instant,
}

impl Spec {
    pub fn new(lcut: u64, plain: Bytes) -> Spec {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(plain.len() / 4),
            flate2::Compression::default(),
        );
        // Writing to a Vec cannot fail.
        let _ = enc.write_all(&plain);
        let gzip = enc.finish().unwrap_or_default();
        Spec {
            lcut,
            plain,
            gzip: Bytes::from(gzip),
            received: Instant::now(),
        }
    }
}

/// Where a key stands with upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Never fetched yet.
    Pending,
    /// The last fetch succeeded.
    Ok,
    /// Upstream answered 401/403 for this key.
    Unauthorized,
    /// The last fetch failed (network, 5xx, bad payload); data, if any, is stale.
    Failing(String),
}

/// One cached key.
#[derive(Debug)]
pub struct Entry {
    pub key: Key,
    spec: ArcSwapOption<Spec>,
    /// Upstream state and the spec, for waiters on the first fetch and streams.
    changes: watch::Sender<(Upstream, Option<Arc<Spec>>)>,
    /// The store's epoch; the times below are milliseconds since it (0: never).
    epoch: Instant,
    last_requested: AtomicU64,
    last_checked: AtomicU64,
    /// Skip polls until then (backoff after failures).
    next_attempt: AtomicU64,
    /// Consecutive failed fetches, for backoff.
    pub failures: AtomicU64,
    /// gRPC streams following this key (see [`Entry::follow`]).
    streams: AtomicUsize,
    /// The key's gauges (none in unit tests without metrics).
    gauges: Option<KeyHandles>,
}

/// Counts a stream following an entry until dropped.
#[derive(Debug)]
pub struct Following(Arc<Entry>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Entry {
    pub fn spec(&self) -> Option<Arc<Spec>> {
        self.spec.load_full()
    }

    /// Counts a stream following this key while the guard lives.
    pub fn follow(self: &Arc<Self>) -> Following {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Following(self.clone())
    }

    /// gRPC streams following this key now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Counts as a request (for eviction): live streams call this.
    pub fn touch(&self) {
        self.last_requested.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn upstream(&self) -> Upstream {
        self.changes.borrow().0.clone()
    }

    /// Follows every change of state or spec.
    pub fn subscribe(&self) -> watch::Receiver<(Upstream, Option<Arc<Spec>>)> {
        self.changes.subscribe()
    }

    /// Records a new spec if it is newer than the current one; returns whether it was.
    pub fn offer(&self, spec: Spec) -> bool {
        self.checked();
        let newer = self.spec().is_none_or(|cur| spec.lcut > cur.lcut);
        if newer {
            if let Some(g) = &self.gauges {
                g.lcut.set(spec.lcut as i64);
                g.has_data.set(1);
            }
            let spec = Arc::new(spec);
            self.spec.store(Some(spec.clone()));
            self.changes.send_replace((Upstream::Ok, Some(spec)));
        } else {
            self.set_upstream(Upstream::Ok);
        }
        newer
    }

    /// Marks a successful check that brought nothing new.
    pub fn unchanged(&self) {
        self.checked();
        self.set_upstream(Upstream::Ok);
    }

    fn checked(&self) {
        if let Some(g) = &self.gauges {
            g.last_success.set(unix_now());
        }
        self.last_checked.store(self.now_ms(), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.next_attempt.store(0, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        ms_since(self.epoch, Instant::now())
    }

    /// Skips polls for `wait`.
    pub fn retry_after(&self, wait: Duration) {
        let at = self.now_ms() + wait.as_millis() as u64;
        self.next_attempt.store(at, Ordering::Relaxed);
    }

    /// Whether a poll at `now` should fetch this key.
    pub fn due(&self, now: Instant) -> bool {
        self.next_attempt.load(Ordering::Relaxed) <= ms_since(self.epoch, now)
    }

    pub fn set_upstream(&self, state: Upstream) {
        self.changes.send_if_modified(|(s, _)| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// Drops the data (for keys upstream no longer accepts, when configured so).
    pub fn clear(&self) {
        if let Some(g) = &self.gauges {
            g.lcut.set(0);
            g.has_data.set(0);
        }
        self.spec.store(None);
        self.changes.send_modify(|(_, spec)| *spec = None);
    }

    /// Time since the last successful upstream check, if there was one.
    pub fn age(&self) -> Option<Duration> {
        match self.last_checked.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(self.now_ms().saturating_sub(ms))),
        }
    }
}

/// All cached keys of one spec app.
#[derive(Debug)]
pub struct Store {
    entries: RwLock<HashMap<Key, Arc<Entry>>>,
    /// Keys upstream rejected, with when: answered 401 without asking again. In
    /// order of rejection (read with `peek`, which keeps the order), capped at
    /// `max_rejected_keys` (the oldest goes first) and swept of expired ones on
    /// every reject and lookup, so clients inventing keys cannot grow it.
    rejected: Mutex<lru::LruCache<Key, Instant>>,
    epoch: Instant,
    /// Creates each key's series with its entry and removes them with it, both
    /// under the entries' write lock, so a key's series exist exactly while it does.
    metrics: Option<KeyMetrics>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(None)
    }
}

/// What a lookup found.
pub enum Lookup {
    Found(Arc<Entry>),
    /// New to this store: the caller must fetch it (exactly one caller gets this).
    Created(Arc<Entry>),
    /// Recently rejected by upstream.
    Rejected,
    /// New, but the caller's admission (the new-key budget) said no: nothing
    /// was created.
    Refused,
}

/// Remembered rejected keys before the first [`Store::reject`] sets the cap.
const REJECTED_CAP: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

impl Store {
    pub fn new(metrics: Option<KeyMetrics>) -> Store {
        Store {
            entries: RwLock::default(),
            rejected: Mutex::new(lru::LruCache::new(REJECTED_CAP)),
            epoch: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        ms_since(self.epoch, Instant::now())
    }

    /// Finds `key`, creating it if new (unless upstream rejected it within `ttl`),
    /// for trusted sources (warm keys, keys other instances registered).
    pub fn lookup(&self, key: &Key, rejected_ttl: Duration) -> Lookup {
        self.lookup_admitted(key, rejected_ttl, || true)
    }

    /// Like [`Store::lookup`], but a new key is created only if `admit` (asked
    /// only then, once) agrees; otherwise [`Lookup::Refused`].
    pub fn lookup_admitted(
        &self,
        key: &Key,
        rejected_ttl: Duration,
        admit: impl FnOnce() -> bool,
    ) -> Lookup {
        let now = self.now_ms();
        if let Some(e) = read(&self.entries).get(key) {
            e.last_requested.store(now, Ordering::Relaxed);
            return Lookup::Found(e.clone());
        }
        {
            let mut rejected = lock(&self.rejected);
            sweep(&mut rejected, rejected_ttl);
            match rejected.peek(key) {
                Some(at) if at.elapsed() < rejected_ttl => return Lookup::Rejected,
                Some(_) => {
                    rejected.pop(key);
                }
                None => {}
            }
        }
        let mut entries = write(&self.entries);
        // Another request may have created it since the read lock was released.
        if let Some(e) = entries.get(key) {
            return Lookup::Found(e.clone());
        }
        if !admit() {
            return Lookup::Refused;
        }
        let entry = Arc::new(Entry {
            key: key.clone(),
            spec: ArcSwapOption::empty(),
            changes: watch::channel((Upstream::Pending, None)).0,
            epoch: self.epoch,
            last_requested: AtomicU64::new(now),
            last_checked: AtomicU64::new(0),
            next_attempt: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            streams: AtomicUsize::new(0),
            gauges: self.metrics.as_ref().map(|m| m.key(&key.masked())),
        });
        entries.insert(key.clone(), entry.clone());
        Lookup::Created(entry)
    }

    /// Forgets `key` and answers 401 for it for `ttl`. At most `max` rejected
    /// keys are remembered; past it the oldest is forgotten (and asked upstream
    /// again, within the new-key budget, if a client names it again).
    pub fn reject(&self, key: &Key, ttl: Duration, max: usize) {
        let mut entries = write(&self.entries);
        // Under the lock, so a new entry for the key cannot get the series first.
        if entries.remove(key).is_some() {
            self.forget_series(key);
        }
        drop(entries);
        let mut rejected = lock(&self.rejected);
        let cap = NonZeroUsize::new(max).unwrap_or(NonZeroUsize::MIN);
        if rejected.cap() != cap {
            rejected.resize(cap);
        }
        sweep(&mut rejected, ttl);
        // `push` evicts the oldest when full.
        rejected.push(key.clone(), Instant::now());
    }

    /// Forgets rejected keys older than `ttl` (the poller calls this each round,
    /// so the map empties even when no one asks).
    pub fn sweep_rejected(&self, ttl: Duration) {
        sweep(&mut lock(&self.rejected), ttl);
    }

    /// How many rejected keys are remembered.
    pub fn rejected_len(&self) -> usize {
        lock(&self.rejected).len()
    }

    fn forget_series(&self, key: &Key) {
        if let Some(m) = &self.metrics {
            m.remove(&key.masked());
        }
    }

    /// Removes every key's series (the app is going away).
    pub fn forget_all_series(&self) {
        for key in read(&self.entries).keys() {
            self.forget_series(key);
        }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        read(&self.entries).get(key).cloned()
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<_> = read(&self.entries).values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Evicts keys beyond `max`, sparing those `keep` says to (warm keys, the
    /// key being created). Keys without data go first (failed ones before those
    /// still waiting for their first fetch), least recently requested first, and
    /// only then keys with data: invented SDK keys never get a spec,
    /// so a flood of them (always the most recently requested) replaces only
    /// each other and never pushes out real keys' last good specs, which matter
    /// most while upstream is down. Returns the evicted keys.
    ///
    /// One pass over the map (no sort) under the write lock: usually one key is
    /// over, and this runs for every new key.
    pub fn evict_beyond(&self, max: usize, keep: impl Fn(&Key) -> bool) -> Vec<Key> {
        let mut entries = write(&self.entries);
        if entries.len() <= max {
            return Vec::new();
        }
        let excess = entries.len() - max;
        // Smallest first: no data before data; among keys without data, those
        // whose fetch already failed before those still waiting for their first
        // (likely a real key that arrived a moment ago); then the oldest request.
        let rank = |e: &Entry| {
            let has_data = e.spec.load().is_some();
            let waiting = matches!(e.changes.borrow().0, Upstream::Pending);
            (has_data, waiting, e.last_requested.load(Ordering::Relaxed))
        };
        let candidates = entries.values().filter(|e| !keep(&e.key));
        let evicted: Vec<Key> = if excess == 1 {
            candidates
                .min_by_key(|e| rank(e))
                .map(|e| e.key.clone())
                .into_iter()
                .collect()
        } else {
            let mut ranked: Vec<_> = candidates.map(|e| (rank(e), &e.key)).collect();
            if ranked.len() > excess {
                ranked.select_nth_unstable(excess - 1);
                ranked.truncate(excess);
            }
            ranked.into_iter().map(|(_, k)| k.clone()).collect()
        };
        for k in &evicted {
            entries.remove(k);
            self.forget_series(k);
        }
        evicted
    }

    pub fn len(&self) -> usize {
        read(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the expired rejected keys: the oldest are at the end, so it stops at the
/// first one still fresh.
fn sweep(rejected: &mut lru::LruCache<Key, Instant>, ttl: Duration) {
    while rejected
        .peek_lru()
        .is_some_and(|(_, at)| at.elapsed() >= ttl)
    {
        rejected.pop_lru();
    }
}

/// Milliseconds from `epoch` to `t`, never 0 (0 means "never").
fn ms_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        Key {
            api: Api::V1,
            sdk_key: SdkKey::parse(&format!("secret-{i}")).unwrap(),
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    /// However many keys are rejected, at most `max` are remembered (the oldest
    /// go first), and they expire after the TTL even if no one asks again.
    #[tokio::test(start_paused = true)]
    async fn rejected_keys_are_capped_and_expire() {
        let store = Store::default();
        for i in 0..1000 {
            store.reject(&key(i), TTL, 10);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(store.rejected_len(), 10);
        assert!(matches!(store.lookup(&key(999), TTL), Lookup::Rejected));
        // The oldest were forgotten: asked upstream again (a new entry).
        assert!(matches!(store.lookup(&key(0), TTL), Lookup::Created(_)));

        tokio::time::advance(TTL).await;
        store.sweep_rejected(TTL);
        assert_eq!(store.rejected_len(), 0, "expired keys kept");

        // Expiry also happens on the way, without a sweep.
        store.reject(&key(5000), TTL, 10);
        tokio::time::advance(TTL / 2).await;
        store.reject(&key(5001), TTL, 10);
        tokio::time::advance(TTL / 2).await;
        assert!(matches!(store.lookup(&key(1), TTL), Lookup::Created(_)));
        assert_eq!(store.rejected_len(), 1, "the expired key outlived a lookup");
    }

    /// A new key is created only when admitted; known and rejected keys never ask.
    #[tokio::test(start_paused = true)]
    async fn admission_is_asked_only_for_new_keys() {
        let store = Store::default();
        assert!(matches!(
            store.lookup_admitted(&key(1), TTL, || false),
            Lookup::Refused
        ));
        assert!(store.is_empty(), "a refused key was created");
        assert!(matches!(
            store.lookup_admitted(&key(1), TTL, || true),
            Lookup::Created(_)
        ));
        let asked = std::cell::Cell::new(false);
        let found = store.lookup_admitted(&key(1), TTL, || {
            asked.set(true);
            false
        });
        assert!(matches!(found, Lookup::Found(_)) && !asked.get());
        store.reject(&key(2), TTL, 10);
        let rejected = store.lookup_admitted(&key(2), TTL, || {
            asked.set(true);
            true
        });
        assert!(matches!(rejected, Lookup::Rejected) && !asked.get());
    }

    fn with_data(store: &Store, k: &Key) {
        let Lookup::Created(e) = store.lookup(k, TTL) else {
            panic!("{} already known", k.masked());
        };
        e.offer(Spec::new(1, Bytes::from_static(b"{}")));
    }

    fn invented(i: usize) -> Key {
        Key {
            api: Api::V1,
            sdk_key: SdkKey::parse(&format!("invented-{i}")).unwrap(),
        }
    }

    /// A flood of invented keys (never any data, always the most recently
    /// requested) replaces only invented keys: every real key keeps its spec.
    #[tokio::test(start_paused = true)]
    async fn keys_without_data_are_evicted_before_keys_with_data() {
        const N: usize = 50;
        let store = Store::default();
        for i in 0..N {
            with_data(&store, &key(i));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        for i in 0..1000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            let k = invented(i);
            assert!(matches!(store.lookup(&k, TTL), Lookup::Created(_)));
            let evicted = store.evict_beyond(N, |x| x == &k);
            // The first has only real keys to push out (the oldest); after it,
            // each invented key replaces the one before.
            let expected = if i == 0 { key(0) } else { invented(i - 1) };
            assert_eq!(evicted, vec![expected], "new key {i}");
            assert_eq!(store.len(), N);
        }
        for i in 1..N {
            assert!(store.get(&key(i)).is_some(), "real key {i} evicted");
        }

        // Several over at once (the poll round after a reload lowers the cap):
        // the invented ones go first, oldest first, and then the oldest real keys.
        for i in 1000..1003 {
            tokio::time::advance(Duration::from_millis(1)).await;
            store.lookup(&invented(i), TTL);
        }
        let mut evicted = store.evict_beyond(N - 2, |_| false);
        evicted.sort();
        let mut expected = vec![
            invented(999),
            invented(1000),
            invented(1001),
            invented(1002),
        ];
        expected.push(key(1));
        expected.sort();
        assert_eq!(evicted, expected);
        assert_eq!(store.len(), N - 2);

        // Without data, a key whose fetch failed goes before one still waiting
        // for its first fetch, even a more recently requested one.
        let pending = invented(2000);
        store.lookup(&pending, TTL);
        tokio::time::advance(Duration::from_millis(1)).await;
        let Lookup::Created(failed) = store.lookup(&invented(2001), TTL) else {
            panic!("not created");
        };
        failed.set_upstream(Upstream::Failing("503".into()));
        tokio::time::advance(Duration::from_millis(1)).await;
        store.lookup(&invented(2002), TTL);
        let evicted = store.evict_beyond(N, |x| x == &invented(2002));
        assert_eq!(evicted, vec![invented(2001)]);
        let mut evicted = store.evict_beyond(N - 2, |_| false);
        evicted.sort();
        assert_eq!(evicted, vec![pending, invented(2002)]);

        // Among keys with data, the least recently requested goes; warm keys never.
        store.lookup(&key(2), TTL);
        let evicted = store.evict_beyond(N - 3, |x| x == &key(3));
        assert_eq!(evicted, vec![key(4)]);
    }
}
