//! Load-balancing strategies: which target a new connection tries first.
//!
//! A strategy only chooses; the proxy does the connecting. The proxy skips targets
//! that are down (health checks, passive ejection) by walking on from the pick
//! through the list, and when every target is down it tries them all anyway (fail
//! open). So every strategy gets failover and health-awareness for free.
//!
//! Strategies are built per routing snapshot from a [`Registry`]; embedders register
//! their own under a name usable in config. Per-target state that must outlive a
//! snapshot (open connections, health) lives in [`TargetState`], shared by every
//! snapshot that keeps the target.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Target;

/// An endpoint (a target, or one address a target name resolved to) and what is
/// known about it now.
#[derive(Debug)]
pub struct TargetState {
    pub target: Target,
    /// The address to connect to: the target's own for an IP target, one resolved
    /// address for a name, `None` for a name not resolved yet (connecting resolves it).
    pub addr: Option<SocketAddr>,
    /// Relative share of connections (1 when not configured).
    pub weight: u32,
    /// Connections open to it (through any routing snapshot).
    active: AtomicUsize,
    /// Verdict of the active health check (true when none is configured).
    healthy: AtomicBool,
    /// Passive ejection: consecutive connect failures, and until when (ms since
    /// the app's epoch) it is ejected.
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    /// Consecutive check results in the current direction (for rise/fall).
    pub(crate) streak: Mutex<(bool, u32)>,
}

impl TargetState {
    pub fn new(target: Target, weight: u32, healthy: bool) -> TargetState {
        let addr = match &target {
            Target::Addr(a) => Some(*a),
            Target::Name { .. } => None,
        };
        TargetState::endpoint(target, addr, weight, healthy)
    }

    /// One endpoint of `target` at `addr`.
    pub fn endpoint(
        target: Target,
        addr: Option<SocketAddr>,
        weight: u32,
        healthy: bool,
    ) -> TargetState {
        TargetState {
            target,
            addr,
            weight: weight.max(1),
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(healthy),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            streak: Mutex::new((healthy, 0)),
        }
    }

    /// A stable name for the endpoint: the target as configured, plus the resolved
    /// address for a name (`db.internal:5432@10.0.0.7:5432`). Hashing strategies
    /// key on it so every instance agrees.
    pub fn key(&self) -> String {
        match (&self.target, self.addr) {
            (Target::Name { .. }, Some(a)) => format!("{}@{a}", self.target),
            _ => self.target.to_string(),
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, up: bool) -> bool {
        self.healthy.swap(up, Ordering::Relaxed) != up
    }

    /// Records one active check result; `rise` passes in a row bring the endpoint
    /// up, `fall` failures take it down. Returns the new verdict when it changed.
    pub(crate) fn record_check(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let streak = {
            let mut s = crate::sync::lock(&self.streak);
            if s.0 == ok {
                s.1 = s.1.saturating_add(1);
            } else {
                *s = (ok, 1);
            }
            s.1
        };
        let healthy = self.is_healthy();
        if (ok && !healthy && streak >= rise) || (!ok && healthy && streak >= fall) {
            self.set_healthy(ok);
            return Some(ok);
        }
        None
    }

    /// Whether new connections should go here at `now_ms`.
    pub fn available(&self, now_ms: u64) -> bool {
        self.is_healthy() && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub(crate) fn opened(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Consecutive connect failures blamed on it since its last success or ejection.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// A connect succeeded: the failure streak ends.
    pub(crate) fn connect_ok(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// A connect failed. Returns the failure count.
    pub(crate) fn connect_failed(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejects until `until_ms`; returns how many times it has been ejected.
    pub(crate) fn eject(&self, until_ms: u64) -> u32 {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What a strategy may look at when it picks.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    /// The client's address (for hashing strategies).
    pub client: SocketAddr,
    /// The app's targets with their weights and load, never empty.
    pub targets: &'a [Arc<TargetState>],
}

/// Chooses the first target for a new connection.
///
/// Called on the accept path from many tasks at once: it must not block or await.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// Index into `pick.targets` of the first target to try.
    fn pick(&self, pick: &Pick<'_>) -> usize;
}

/// Builds a strategy for an app's targets. Called on every routing change.
pub type Factory = Arc<dyn Fn(&[Arc<TargetState>]) -> Arc<dyn Strategy> + Send + Sync>;

/// The strategies known by name. Config validation refuses any other name.
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Default for Registry {
    /// The built-in strategies (see `docs/strategies.md`).
    fn default() -> Self {
        let mut r = Registry {
            factories: BTreeMap::new(),
        };
        r.register("round_robin", |t| Arc::new(RoundRobin::new(t)));
        r.register("random", |t| Arc::new(Random::new(t)));
        r.register("least_connections", |_| {
            Arc::new(LeastConnections::default())
        });
        r.register("p2c", |_| Arc::new(PowerOfTwo));
        r.register("consistent_hash", |t| Arc::new(Maglev::new(t)));
        r
    }
}

impl Registry {
    /// Adds (or replaces) a strategy under `name`; config refers to it by that name.
    pub fn register<F>(&mut self, name: &str, factory: F) -> &mut Self
    where
        F: Fn(&[Arc<TargetState>]) -> Arc<dyn Strategy> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_string(), Arc::new(factory));
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the named strategy; `None` for an unknown name (validation prevents it).
    pub fn build(&self, name: &str, targets: &[Arc<TargetState>]) -> Option<Arc<dyn Strategy>> {
        self.factories.get(name).map(|f| f(targets))
    }
}

/// Smooth weighted round robin (nginx's): with weights 5,1,1 the order is
/// a a b a c a a, not a a a a a b c. Without weights, plain A, B, C, A, ...
///
/// The schedule is computed once per snapshot; picking is one relaxed atomic
/// increment, with exact order for connections accepted one after another.
#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
    schedule: Vec<usize>,
}

/// Longest precomputed schedule; weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 10_000;

impl RoundRobin {
    pub fn new(targets: &[Arc<TargetState>]) -> RoundRobin {
        let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
        let scale = total.div_ceil(MAX_SCHEDULE).max(1);
        let weights: Vec<i64> = targets
            .iter()
            .map(|t| (u64::from(t.weight) / scale).max(1) as i64)
            .collect();
        let sum: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(sum as usize);
        for _ in 0..sum {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let best = (0..current.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= sum;
            schedule.push(best);
        }
        RoundRobin {
            next: AtomicUsize::new(0),
            schedule,
        }
    }
}

impl Strategy for RoundRobin {
    fn pick(&self, pick: &Pick<'_>) -> usize {
        if self.schedule.is_empty() {
            return 0;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        self.schedule[i] % pick.targets.len()
    }
}

/// Uniformly random, or in proportion to weights.
#[derive(Debug)]
pub struct Random {
    /// Running sums of the weights, for a binary search.
    cumulative: Vec<u64>,
}

impl Random {
    pub fn new(targets: &[Arc<TargetState>]) -> Random {
        let mut sum = 0u64;
        let cumulative = targets
            .iter()
            .map(|t| {
                sum += u64::from(t.weight);
                sum
            })
            .collect();
        Random { cumulative }
    }
}

impl Strategy for Random {
    fn pick(&self, pick: &Pick<'_>) -> usize {
        let Some(&total) = self.cumulative.last() else {
            return 0;
        };
        let r = rand::random_range(0..total);
        self.cumulative.partition_point(|&c| c <= r) % pick.targets.len()
    }
}

/// The target with the fewest open connections per unit of weight; ties go round
/// robin so equal targets share evenly.
#[derive(Debug, Default)]
pub struct LeastConnections {
    tie: AtomicUsize,
}

impl Strategy for LeastConnections {
    fn pick(&self, pick: &Pick<'_>) -> usize {
        let n = pick.targets.len();
        let start = self.tie.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by(|&a, &b| load(&pick.targets[a]).total_cmp(&load(&pick.targets[b])))
            .unwrap_or(0)
    }
}

/// Power of two choices: two targets at random, the less loaded wins. Nearly as good
/// as least connections at spreading load, O(1), and without the herd that sends
/// every new connection to the same momentarily idle target.
#[derive(Debug)]
pub struct PowerOfTwo;

impl Strategy for PowerOfTwo {
    fn pick(&self, pick: &Pick<'_>) -> usize {
        let n = pick.targets.len();
        if n == 1 {
            return 0;
        }
        let a = rand::random_range(0..n);
        let b = (a + rand::random_range(1..n)) % n;
        if load(&pick.targets[b]) < load(&pick.targets[a]) {
            b
        } else {
            a
        }
    }
}

fn load(t: &TargetState) -> f64 {
    t.active() as f64 / f64::from(t.weight)
}

/// Consistent hashing of the client's IP with a Maglev table: each client IP keeps
/// its target while targets come and go (adding or removing one of N moves about
/// 1/N of clients). Hashes use fixed seeds, so every instance and every restart
/// agrees. Weights give targets proportionally more table slots.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

/// Table size: a prime well above the number of targets.
const MAGLEV_SIZE: usize = 65_537;

impl Maglev {
    pub fn new(targets: &[Arc<TargetState>]) -> Maglev {
        let n = targets.len();
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let m = MAGLEV_SIZE as u64;
        let prefs: Vec<(u64, u64)> = targets
            .iter()
            .map(|t| {
                let name = t.key();
                let offset = fnv1a(name.as_bytes(), 0xcbf2_9ce4_8422_2325) % m;
                let skip = fnv1a(name.as_bytes(), 0x8422_2325_cbf2_9ce4) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_w = targets.iter().map(|t| t.weight).max().unwrap_or(1);
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        let mut filled = 0;
        let mut round = 0u32;
        'fill: loop {
            round += 1;
            for i in 0..n {
                // A target of weight w takes a turn in w of every max_w rounds.
                if round % max_w >= targets[i].weight {
                    continue;
                }
                let (offset, skip) = prefs[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == MAGLEV_SIZE {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }
}

impl Strategy for Maglev {
    fn pick(&self, pick: &Pick<'_>) -> usize {
        if self.table.is_empty() {
            return 0;
        }
        let h = match pick.client.ip() {
            IpAddr::V4(ip) => fnv1a(&ip.octets(), 0xcbf2_9ce4_8422_2325),
            IpAddr::V6(ip) => fnv1a(&ip.octets(), 0xcbf2_9ce4_8422_2325),
        };
        self.table[(h % MAGLEV_SIZE as u64) as usize] as usize % pick.targets.len()
    }
}

/// FNV-1a, 64 bits, from a given offset basis: stable across builds and machines.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    let mut h = basis;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so nearby inputs land far apart.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(weights: &[u32]) -> Vec<Arc<TargetState>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(TargetState::new(
                    Target::Addr(SocketAddr::from(([10, 0, 0, i as u8 + 1], 80))),
                    w,
                    true,
                ))
            })
            .collect()
    }

    fn client(i: u32) -> SocketAddr {
        SocketAddr::from((i.to_be_bytes(), 1234))
    }

    fn picks(s: &dyn Strategy, t: &[Arc<TargetState>], n: u32) -> Vec<usize> {
        (0..n)
            .map(|i| {
                s.pick(&Pick {
                    client: client(i),
                    targets: t,
                })
            })
            .collect()
    }

    fn counts(p: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in p {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let t = targets(&[1, 1, 1]);
        let rr = Registry::default().build("round_robin", &t).unwrap();
        assert_eq!(picks(rr.as_ref(), &t, 7), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let t = targets(&[5, 1, 1]);
        let rr = RoundRobin::new(&t);
        assert_eq!(picks(&rr, &t, 7), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&picks(&rr, &t, 700), 3), [500, 100, 100]);
    }

    #[test]
    fn random_follows_weights_within_bounds() {
        let t = targets(&[3, 1]);
        let c = counts(&picks(&Random::new(&t), &t, 40_000), 2);
        // Expected 30000/10000; 5 standard deviations is about 430.
        assert!((c[0] as i64 - 30_000).abs() < 1_000, "{c:?}");
    }

    #[test]
    fn least_connections_prefers_the_idle_target_by_weight() {
        let t = targets(&[1, 1, 2]);
        for _ in 0..4 {
            t[0].opened();
        }
        for _ in 0..2 {
            t[1].opened();
        }
        for _ in 0..3 {
            t[2].opened(); // 3 per 2 weight = 1.5 per unit
        }
        let lc = LeastConnections::default();
        assert_eq!(
            lc.pick(&Pick {
                client: client(0),
                targets: &t
            }),
            2
        );
        t[1].closed();
        assert_eq!(
            lc.pick(&Pick {
                client: client(0),
                targets: &t
            }),
            1
        );
    }

    #[test]
    fn p2c_avoids_the_loaded_target() {
        let t = targets(&[1, 1, 1]);
        for _ in 0..100 {
            t[0].opened();
        }
        let c = counts(&picks(&PowerOfTwo, &t, 3_000), 3);
        // The loaded target wins only when drawn twice, which p2c never does.
        assert_eq!(c[0], 0, "{c:?}");
        assert!(c[1] > 1_000 && c[2] > 1_000, "{c:?}");
    }

    #[test]
    fn maglev_is_stable_balanced_and_moves_about_one_nth() {
        let t4 = targets(&[1, 1, 1, 1]);
        let m4 = Maglev::new(&t4);
        let before = picks(&m4, &t4, 20_000);
        // Same input, same answer: no per-process seed.
        assert_eq!(before, picks(&Maglev::new(&t4), &t4, 20_000));
        let c = counts(&before, 4);
        assert!(c.iter().all(|&n| (4_500..5_500).contains(&n)), "{c:?}");

        // Adding a fifth target moves about 1/5 of clients, all of them to it.
        let t5 = targets(&[1, 1, 1, 1, 1]);
        let after = picks(&Maglev::new(&t5), &t5, 20_000);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
        let share = moved.len() as f64 / 20_000.0;
        let between_old = moved.iter().filter(|(_, &b)| b != 4).count() as f64 / 20_000.0;
        println!("moved {share:.3}, of which between old targets {between_old:.4}");
        assert!((0.17..0.25).contains(&share), "moved {share}");
        // Maglev trades a little extra movement for an even table; keep it small.
        assert!(
            between_old < 0.03,
            "{between_old} moved between old targets"
        );
    }

    #[test]
    fn checks_need_fall_failures_to_go_down_and_rise_passes_to_come_back() {
        let t = &targets(&[1])[0];
        let (rise, fall) = (2, 3);
        assert_eq!(t.record_check(false, rise, fall), None);
        assert_eq!(t.record_check(false, rise, fall), None);
        // A pass in between restarts the count.
        assert_eq!(t.record_check(true, rise, fall), None);
        assert_eq!(t.record_check(false, rise, fall), None);
        assert_eq!(t.record_check(false, rise, fall), None);
        assert_eq!(t.record_check(false, rise, fall), Some(false));
        assert!(!t.is_healthy());
        assert_eq!(
            t.record_check(false, rise, fall),
            None,
            "no repeated verdict"
        );
        assert_eq!(t.record_check(true, rise, fall), None);
        assert_eq!(t.record_check(true, rise, fall), Some(true));
        assert!(t.is_healthy());
    }

    #[test]
    fn registry_knows_custom_names() {
        let mut r = Registry::default();
        r.register("first", |_| Arc::new(PowerOfTwo));
        assert!(r.names().any(|n| n == "first"));
        assert!(r.build("nope", &[]).is_none());
    }
}
