//! Judging a distribution against an expectation.
//!
//! `even` uses Pearson's chi-square goodness-of-fit test against an even split and
//! holds when p >= [`SIGNIFICANCE`]. A fixed max/min ratio would be wrong both ways:
//! it fails a fair random balancer on small samples and passes a skewed one on large
//! ones. With p >= 0.001 a fair balancer fails by chance once in a thousand runs; a
//! 2:1 skew between two backends is caught from about 100 connections on
//! (chi-square is n/9 for n connections split 2:1; the critical value is 10.83).
//!
//! The strategy names map to what a client opening one connection at a time can
//! see: every backend then has no connection open, so `least-connections` is left
//! with its tie-break (turns) and `p2c` with its two random draws (an even split).

use super::{key, Distribution};
use crate::probe::Identity;

/// The p-value below which `even` does not hold.
pub const SIGNIFICANCE: f64 = 0.001;
/// The chi-square approximation needs about 5 expected connections per backend.
const MIN_EXPECTED: usize = 5;
/// From this many sources on, `consistent-hash` requires them to reach 2 or more
/// backends: a hash puts all of N sources on one of 2 equal backends with chance
/// 2^(1-N), under 1/1000 from N = 11 on.
const MIN_SPREAD_SOURCES: usize = 11;

/// What the distribution must look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    /// Backends take turns in a fixed cycle (with --weights: the smooth weighted one).
    RoundRobin,
    /// Counts are statistically even, or follow --weights (chi-square, p >= 0.001).
    Even,
    /// The same test as `even`, named for fproxy's `random` strategy.
    Random,
    /// Ties take turns: no backend ever gets two connections ahead of another.
    LeastConnections,
    /// An even split: two random picks among idle backends are one random pick.
    #[value(name = "p2c")]
    P2c,
    /// Each source address always reaches the same backend.
    #[value(alias = "sticky")]
    ConsistentHash,
    /// Every connection went to the same backend.
    Single,
    /// Anything goes: only print.
    #[default]
    Any,
}

impl Expect {
    pub fn name(self) -> &'static str {
        match self {
            Expect::RoundRobin => "round-robin",
            Expect::Even => "even",
            Expect::Random => "random",
            Expect::LeastConnections => "least-connections",
            Expect::P2c => "p2c",
            Expect::ConsistentHash => "consistent-hash",
            Expect::Single => "single",
            Expect::Any => "any",
        }
    }

    /// Whether it judges a spread over backends, which one backend cannot show.
    fn balances(self) -> bool {
        matches!(
            self,
            Expect::RoundRobin
                | Expect::Even
                | Expect::Random
                | Expect::LeastConnections
                | Expect::P2c
        )
    }
}

/// An expectation and what it needs to know besides the distribution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Check {
    pub expect: Expect,
    /// How many backends must answer (None: any number, but at least 2 where a
    /// spread is judged: balancing over one backend is no balancing).
    pub backends: Option<usize>,
    /// The targets' weights in config order; empty: all equal. Their number is the
    /// number of backends.
    pub weights: Vec<u32>,
}

/// Whether an expectation held, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub holds: bool,
    pub reason: String,
}

fn holds(reason: String) -> Verdict {
    Verdict {
        holds: true,
        reason,
    }
}

fn fails(reason: String) -> Verdict {
    Verdict {
        holds: false,
        reason,
    }
}

/// Judges `dist` without weights. `backends` is how many must answer (None: any
/// number, but at least 2 where a spread is judged).
pub fn judge(dist: &Distribution, expect: Expect, backends: Option<usize>) -> Verdict {
    Check {
        expect,
        backends,
        weights: Vec::new(),
    }
    .judge(dist)
}

impl Check {
    /// Whether the options make sense together; the error names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.weights.is_empty() {
            return Ok(());
        }
        if self.weights.contains(&0) {
            return Err("--weights must all be at least 1".into());
        }
        match self.expect {
            Expect::RoundRobin | Expect::Even | Expect::Random => {}
            Expect::LeastConnections | Expect::P2c => {
                return Err(format!(
                    "--weights does not apply to {}: it weighs open connections, and one \
                     connection at a time finds none open anywhere, so the split is even \
                     whatever the weights",
                    self.expect.name()
                ))
            }
            Expect::ConsistentHash => {
                let why = "--weights does not apply to consistent-hash: weights give a \
                           backend more hash table slots, which no exact check of a few \
                           sources can see";
                return Err(why.into());
            }
            Expect::Single | Expect::Any => {
                return Err("--weights needs --expect round-robin, even or random".into())
            }
        }
        match self.backends {
            Some(b) if b != self.weights.len() => Err(format!(
                "--backends {b} disagrees with the {} --weights (one per backend)",
                self.weights.len()
            )),
            _ => Ok(()),
        }
    }

    /// Judges `dist`.
    pub fn judge(&self, dist: &Distribution) -> Verdict {
        if let Err(e) = self.validate() {
            return fails(e);
        }
        let expect = self.expect;
        let n = dist.connections();
        if !dist.failed.is_empty() {
            return fails(format!("{} of {n} connections failed", dist.failed.len()));
        }
        if dist.backends.contains(&Identity::PlainEcho) && expect != Expect::Any {
            return fails(
                "a plain echo server answered without an id; run `ftest echo` backends".into(),
            );
        }
        let k = dist.backends.len();
        let weighted = !self.weights.is_empty();
        let want = self.backends.or(weighted.then_some(self.weights.len()));
        // A random pick may leave a light backend unused in a sample; the weighted
        // chi-square test counts it as 0 instead of failing outright.
        let may_miss = weighted && matches!(expect, Expect::Even | Expect::Random);
        match want {
            Some(want) if k > want || (k < want && !may_miss) => {
                return fails(format!("{k} backend(s) answered, expected {want}"));
            }
            None if k < 2 && expect.balances() => {
                return fails(format!(
                    "only {k} backend answered; balancing needs at least 2 (pass --backends 1 if one is right)"
                ));
            }
            _ => {}
        }
        match expect {
            Expect::Any => holds(format!("{n} connections over {k} backend(s)")),
            Expect::Single if k == 1 => {
                holds(format!("all {n} connections went to {}", dist.backends[0]))
            }
            Expect::Single => fails(format!("connections went to {k} backends")),
            Expect::RoundRobin if weighted => weighted_round_robin(dist, &self.weights),
            Expect::RoundRobin => round_robin(dist),
            Expect::Even | Expect::Random if weighted => weighted_chi_square(dist, &self.weights),
            Expect::Even | Expect::Random | Expect::P2c => even(dist),
            Expect::LeastConnections => least_connections(dist),
            Expect::ConsistentHash => consistent_hash(dist, self.backends),
        }
    }
}

fn round_robin(dist: &Distribution) -> Verdict {
    let k = dist.backends.len();
    let seq = &dist.sequence;
    if seq.len() < 2 * k {
        return fails(format!(
            "{} connections cannot show a cycle of {k} backends repeat; use --connections {} or more",
            seq.len(),
            2 * k
        ));
    }
    // Backends are numbered by first answer, so a cycle is 0, 1, .., k-1, 0, 1, ..
    let name = |i: usize| dist.backends[i].to_string();
    let cycle: Vec<String> = (0..k).map(name).collect();
    if let Some(at) = (0..seq.len()).find(|&i| seq[i] != i % k) {
        return fails(format!(
            "connection {} went to {}, but the cycle {} puts {} there",
            at + 1,
            name(seq[at]),
            cycle.join(" -> "),
            name(at % k)
        ));
    }
    holds(format!(
        "every connection went to the next backend of the cycle {} ({} rounds)",
        cycle.join(" -> "),
        seq.len() / k
    ))
}

/// Smooth weighted round robin (nginx's, and fproxy's): each turn every weight is
/// added to its running total, the largest total wins (ties: the earlier one) and
/// gives back the sum of the weights. Weights 5,1,1 give 0 0 1 0 2 0 0.
pub fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let sum: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::new();
    for _ in 0..sum {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let mut best = 0;
        for i in 1..current.len() {
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= sum;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Whether `observed` (backend numbers) is `schedule` (weight numbers) entered at
/// some point, with each weight standing for one backend and each backend for one
/// weight. Backends are numbered by first answer, so which weight is whose is
/// learned from the order.
fn is_schedule_rotation(observed: &[usize], schedule: &[usize], backends: usize) -> bool {
    let len = schedule.len();
    let weights = schedule.iter().copied().max().map_or(0, |m| m + 1);
    observed.len() == len
        && (0..len).any(|phase| {
            let mut backend_of = vec![None; weights];
            let mut weight_of = vec![None; backends];
            observed.iter().enumerate().all(|(j, &b)| {
                let w = schedule[(j + phase) % len];
                match (backend_of[w], weight_of[b]) {
                    (None, None) => {
                        backend_of[w] = Some(b);
                        weight_of[b] = Some(w);
                        true
                    }
                    (Some(x), Some(y)) => x == b && y == w,
                    _ => false,
                }
            })
        })
}

/// Letters of backends (or weights) for a cycle in a verdict, cut when long.
fn letters(cycle: &[usize], lower: bool) -> String {
    const SHOWN: usize = 60;
    let mut s: String = cycle
        .iter()
        .take(SHOWN)
        .map(|&i| {
            let c = key(i).unwrap_or('?');
            if lower {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect();
    if cycle.len() > SHOWN {
        s.push_str("...");
    }
    s
}

fn join_weights(weights: &[u32]) -> String {
    let w: Vec<String> = weights.iter().map(ToString::to_string).collect();
    w.join(",")
}

/// Round robin with weights: the sequence repeats with the period of the weights'
/// sum, each period gives every backend as many connections as one weight, and the
/// order within it is the smooth one, not all of one backend in a row.
fn weighted_round_robin(dist: &Distribution, weights: &[u32]) -> Verdict {
    // Scaling every weight by the same factor gives the same schedule, so the
    // shortest cycle is the sum of the reduced weights.
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<u32> = weights.iter().map(|w| w / g).collect();
    let cycle = reduced.iter().map(|&w| w as usize).sum::<usize>();
    let given = join_weights(weights);
    let seq = &dist.sequence;
    let name = |i: usize| dist.backends[i].to_string();
    if seq.len() < 2 * cycle {
        return fails(format!(
            "{} connections cannot show the cycle of {cycle} of weights {given} repeat; use --connections {} or more",
            seq.len(),
            2 * cycle
        ));
    }
    if let Some(i) = (cycle..seq.len()).find(|&i| seq[i] != seq[i - cycle]) {
        return fails(format!(
            "connection {} went to {}, but connection {}, one cycle of {cycle} earlier, went to {}",
            i + 1,
            name(seq[i]),
            i + 1 - cycle,
            name(seq[i - cycle])
        ));
    }
    // Every window of one cycle holds the same counts; take the first.
    let mut per_cycle = vec![0usize; dist.backends.len()];
    for &b in &seq[..cycle] {
        per_cycle[b] += 1;
    }
    let got: Vec<String> = per_cycle
        .iter()
        .enumerate()
        .map(|(b, c)| format!("{} {c}", name(b)))
        .collect();
    let mut have = per_cycle.clone();
    have.sort_unstable();
    let mut need: Vec<usize> = reduced.iter().map(|&w| w as usize).collect();
    need.sort_unstable();
    if have != need {
        return fails(format!(
            "each cycle of {cycle} connections gives {}, but weights {given} give {}",
            got.join(", "),
            join_weights(&reduced)
        ));
    }
    let schedule = smooth_schedule(&reduced);
    if !is_schedule_rotation(&seq[..cycle], &schedule, dist.backends.len()) {
        return fails(format!(
            "the cycle {} has the right counts but not the smooth order: weights {given} \
             interleave as {} (a, b, ...: the weights in the order given, which must be \
             the targets' order in the config)",
            letters(&seq[..cycle], false),
            letters(&schedule, true)
        ));
    }
    holds(format!(
        "every cycle of {cycle} connections gave {} in the smooth order {} ({} cycles)",
        got.join(", "),
        letters(&seq[..cycle], false),
        seq.len() / cycle
    ))
}

/// The p-value and the words for a chi-square verdict; `unlikely` says what a
/// failure means, before "less than once in 1000 runs".
fn chi_square_verdict(stat: String, chi2: f64, df: usize, unlikely: &str) -> Verdict {
    let p = chi_square_p(chi2, df as f64);
    // Small p-values in scientific notation: "p 0.000" would hide how small.
    let p_text = if p >= SIGNIFICANCE {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    };
    let stat = format!("{stat}, chi-square {chi2:.2}, df {df}, p {p_text}");
    if p >= SIGNIFICANCE {
        holds(format!("{stat} >= {SIGNIFICANCE}"))
    } else {
        fails(format!(
            "{stat} < {SIGNIFICANCE}: {unlikely} less than once in 1000 runs"
        ))
    }
}

fn even(dist: &Distribution) -> Verdict {
    let k = dist.backends.len();
    let n = dist.sequence.len();
    if n < MIN_EXPECTED * k {
        return fails(format!(
            "{n} connections are too few to judge {k} backends; use --connections {} or more",
            MIN_EXPECTED * k
        ));
    }
    let expected = n as f64 / k as f64;
    let chi2: f64 = dist
        .counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    let min = dist.counts.iter().copied().min().unwrap_or(0);
    let max = dist.counts.iter().copied().max().unwrap_or(0);
    chi_square_verdict(
        format!("counts {min}..{max} around {expected:.1}"),
        chi2,
        k - 1,
        "an even balancer is this uneven",
    )
}

/// Chi-square against shares in proportion to `weights`. Which backend has which
/// weight is not known, so the largest count is paired with the largest weight:
/// of all pairings that one gives the smallest chi-square (the rearrangement
/// inequality on the sum of count²/weight), so the test fails only when no pairing
/// of backends and weights fits.
fn weighted_chi_square(dist: &Distribution, weights: &[u32]) -> Verdict {
    let n = dist.sequence.len();
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let lightest = weights.iter().copied().min().map_or(1, u64::from);
    let given = join_weights(weights);
    // The lightest backend needs MIN_EXPECTED expected connections.
    let need = (MIN_EXPECTED as u64 * total).div_ceil(lightest);
    if (n as u64) < need {
        return fails(format!(
            "{n} connections are too few to judge weights {given}; use --connections {need} or more"
        ));
    }
    // Backends that never answered are in the test with 0 connections.
    let mut counts: Vec<(usize, Option<usize>)> = dist
        .counts
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, Some(b)))
        .collect();
    counts.resize(weights.len(), (0, None));
    counts.sort_by_key(|&(c, _)| std::cmp::Reverse(c));
    let mut sorted = weights.to_vec();
    sorted.sort_unstable_by_key(|&w| std::cmp::Reverse(w));
    let mut chi2 = 0.0;
    let mut parts = Vec::new();
    for (&(c, b), &w) in counts.iter().zip(&sorted) {
        let expected = n as f64 * f64::from(w) / total as f64;
        chi2 += (c as f64 - expected).powi(2) / expected;
        let who = b.map_or_else(
            || "(no answer)".to_string(),
            |b| dist.backends[b].to_string(),
        );
        parts.push(format!("{who} {c}/{expected:.1}"));
    }
    chi_square_verdict(
        format!("counts/expected for weights {given}: {}", parts.join(", ")),
        chi2,
        weights.len() - 1,
        "a balancer following the weights is this far off",
    )
}

/// Least connections, one connection at a time: every backend is idle at each
/// pick, so the tie-break decides. Ties that take turns never let a backend get two
/// connections ahead of another, whatever order the turns go in.
fn least_connections(dist: &Distribution) -> Verdict {
    let k = dist.backends.len();
    let seq = &dist.sequence;
    if seq.len() < 2 * k {
        return fails(format!(
            "{} connections cannot show ties over {k} backends take turns; use --connections {} or more",
            seq.len(),
            2 * k
        ));
    }
    let name = |i: usize| dist.backends[i].to_string();
    // Backends not answered yet are in `counts` with 0: numbering is by first answer.
    let mut counts = vec![0usize; k];
    for (i, &b) in seq.iter().enumerate() {
        counts[b] += 1;
        let (low, &min) = counts
            .iter()
            .enumerate()
            .min_by_key(|&(_, c)| c)
            .unwrap_or((0, &0));
        if counts[b] > min + 1 {
            return fails(format!(
                "after connection {}, {} had {} connections and {} {min}: ties between idle backends that take turns never put one two ahead",
                i + 1,
                name(b),
                counts[b],
                name(low)
            ));
        }
    }
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    holds(format!(
        "no backend was ever two connections ahead of another (counts {min}..{max} over {k} backends): idle backends tie, and the ties took turns"
    ))
}

/// Consistent hashing of the client address: every source keeps one backend, and
/// enough sources reach more than one.
fn consistent_hash(dist: &Distribution, backends: Option<usize>) -> Verdict {
    let sources = dist.sources.len().max(1);
    let seq = &dist.sequence;
    let n = seq.len();
    let source = |s: usize| {
        dist.sources
            .get(s)
            .map_or_else(|| "this client".to_string(), ToString::to_string)
    };
    let name = |i: usize| dist.backends[i].to_string();
    if n < 2 * sources {
        return fails(format!(
            "{n} connections cannot show {sources} source(s) keep a backend; use --connections {} or more",
            2 * sources
        ));
    }
    // The first backend and connection of each source.
    let mut first: Vec<Option<(usize, usize)>> = vec![None; sources];
    for (i, (&b, &s)) in seq.iter().zip(&dist.origin).enumerate() {
        let Some(slot) = first.get_mut(s) else {
            continue;
        };
        match *slot {
            None => *slot = Some((b, i)),
            Some((was, at)) if was != b => {
                return fails(format!(
                    "connections from {} went to {} (connection {}) and to {} (connection {}): a hash of the client address keeps one backend",
                    source(s),
                    name(was),
                    at + 1,
                    name(b),
                    i + 1
                ));
            }
            Some(_) => {}
        }
    }
    let k = dist.backends.len();
    if sources == 1 {
        return holds(format!(
            "all {n} connections from {} went to {}",
            source(0),
            name(seq[0])
        ));
    }
    if k == 1 && backends.is_none() {
        if sources >= MIN_SPREAD_SOURCES {
            return fails(format!(
                "all {sources} sources went to {}: a hash spreads them over 2 or more equal backends except about once in {:.0} runs (pass --backends 1 if one is right)",
                name(0),
                2f64.powi(sources as i32 - 1)
            ));
        }
        return holds(format!(
            "each of {sources} sources kept one backend, all {}; {sources} sources are too few to require a spread (use --source-ips {MIN_SPREAD_SOURCES} or more)",
            name(0)
        ));
    }
    holds(format!(
        "each of {sources} sources kept one backend over {} or more connections; {k} backends used",
        n / sources
    ))
}

/// P(X >= chi2) for a chi-square variable with `df` degrees of freedom: the
/// regularised upper incomplete gamma function Q(df/2, chi2/2).
pub fn chi_square_p(chi2: f64, df: f64) -> f64 {
    if chi2 <= 0.0 || df <= 0.0 {
        return 1.0;
    }
    let (a, x) = (df / 2.0, chi2 / 2.0);
    if x < a + 1.0 {
        (1.0 - gamma_p_series(a, x)).clamp(0.0, 1.0)
    } else {
        gamma_q_fraction(a, x).clamp(0.0, 1.0)
    }
}

const EPS: f64 = 1e-15;
const TINY: f64 = 1e-300;
const MAX_ITER: usize = 1000;

/// Lower regularised gamma P(a, x) by its series; converges fast for x < a + 1.
fn gamma_p_series(a: f64, x: f64) -> f64 {
    let (mut ap, mut del) = (a, 1.0 / a);
    let mut sum = del;
    for _ in 0..MAX_ITER {
        ap += 1.0;
        del *= x / ap;
        sum += del;
        if del.abs() < sum.abs() * EPS {
            break;
        }
    }
    sum * (-x + a * x.ln() - ln_gamma(a)).exp()
}

/// Upper regularised gamma Q(a, x) by its continued fraction (modified Lentz);
/// converges fast for x >= a + 1.
fn gamma_q_fraction(a: f64, x: f64) -> f64 {
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..MAX_ITER {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

/// ln Γ(x) for x > 0 (Lanczos approximation, about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const COF: [f64; 14] = [
        57.156_235_665_862_92,
        -59.597_960_355_475_49,
        14.136_097_974_741_747,
        -0.491_913_816_097_620_2,
        0.339_946_499_848_118_9e-4,
        0.465_236_289_270_485_8e-4,
        -0.983_744_753_048_795_6e-4,
        0.158_088_703_224_912_5e-3,
        -0.210_264_441_724_104_9e-3,
        0.217_439_618_115_212_6e-3,
        -0.164_318_106_536_763_9e-3,
        0.844_182_239_838_527_4e-4,
        -0.261_908_384_015_814_1e-4,
        0.368_991_826_595_316_2e-5,
    ];
    let tmp = x + 5.242_187_5;
    let tmp = (x + 0.5) * tmp.ln() - tmp;
    let mut ser = 0.999_999_999_999_997_1;
    let mut y = x;
    for c in COF {
        y += 1.0;
        ser += c / y;
    }
    tmp + (2.506_628_274_631_000_5 * ser / x).ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{Failure, TryError};

    fn dist(seq: &[usize]) -> Distribution {
        let mut d = Distribution::default();
        for &i in seq {
            d.add(Identity::Backend(format!("b{i}")));
        }
        d
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        assert!(close(ln_gamma(1.0), 0.0, 1e-12));
        assert!(close(ln_gamma(5.0), 24f64.ln(), 1e-12));
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-12
        ));
    }

    #[test]
    fn chi_square_p_matches_tables() {
        // df 2 has the closed form p = exp(-x/2).
        for x in [0.5, 2.0, 13.816, 40.0] {
            assert!(
                close(chi_square_p(x, 2.0), (-x / 2.0f64).exp(), 1e-12),
                "{x}"
            );
        }
        // Critical values from standard tables.
        assert!(close(chi_square_p(3.841, 1.0), 0.05, 1e-4));
        assert!(close(chi_square_p(10.828, 1.0), 0.001, 1e-5));
        assert!(close(chi_square_p(16.266, 3.0), 0.001, 1e-5));
        assert!(close(chi_square_p(29.588, 10.0), 0.001, 1e-5));
        assert_eq!(chi_square_p(0.0, 3.0), 1.0);
    }

    #[test]
    fn round_robin_holds_for_a_cycle_from_any_start() {
        let v = judge(&dist(&[2, 0, 1, 2, 0, 1, 2]), Expect::RoundRobin, None);
        assert!(v.holds, "{v:?}");
        assert!(v.reason.contains("b2 -> b0 -> b1"), "{v:?}");
    }

    #[test]
    fn round_robin_names_the_first_break() {
        let v = judge(&dist(&[0, 1, 0, 1, 1, 0]), Expect::RoundRobin, None);
        assert!(!v.holds);
        assert_eq!(
            v.reason,
            "connection 5 went to b1, but the cycle b0 -> b1 puts b0 there"
        );
        // A doubled target: A A B A A B.
        let v = judge(&dist(&[0, 0, 1, 0, 0, 1]), Expect::RoundRobin, None);
        assert!(!v.holds, "{v:?}");
        let v = judge(&dist(&[0, 1, 2]), Expect::RoundRobin, None);
        assert!(!v.holds && v.reason.contains("--connections 6"), "{v:?}");
    }

    #[test]
    fn even_uses_chi_square() {
        let fair: Vec<usize> = (0..300).map(|i| i % 3).collect();
        assert!(judge(&dist(&fair), Expect::Even, None).holds);
        // 2:1 over 300 connections: chi-square 33.3, p ~ 8e-9.
        let skew: Vec<usize> = (0..300).map(|i| usize::from(i % 3 == 2)).collect();
        let v = judge(&dist(&skew), Expect::Even, None);
        assert!(
            !v.holds
                && v.reason
                    .contains("chi-square 33.33, df 1, p 7.8e-9 < 0.001"),
            "{v:?}"
        );
        assert!(
            v.reason
                .ends_with(": an even balancer is this uneven less than once in 1000 runs"),
            "{v:?}"
        );
        // 2:1 over 90 is not yet significant at 0.001 (chi-square n/9 = 10 < 10.83).
        let small: Vec<usize> = (0..90).map(|i| usize::from(i % 3 == 2)).collect();
        let v = judge(&dist(&small), Expect::Even, None);
        assert!(v.holds && v.reason.contains("p 0.002 >= 0.001"), "{v:?}");
        // Random-looking but fair-ish counts (52, 48) pass.
        let mild: Vec<usize> = (0..100).map(|i| usize::from(i >= 52)).collect();
        assert!(judge(&dist(&mild), Expect::Even, None).holds);
        let few = judge(&dist(&[0, 1, 0, 1]), Expect::Even, None);
        assert!(!few.holds && few.reason.contains("too few"), "{few:?}");
    }

    fn weighted(expect: Expect, weights: &[u32]) -> Check {
        Check {
            expect,
            weights: weights.to_vec(),
            ..Check::default()
        }
    }

    /// `seq` repeated `times` times.
    fn cycles(seq: &[usize], times: usize) -> Vec<usize> {
        seq.iter()
            .copied()
            .cycle()
            .take(seq.len() * times)
            .collect()
    }

    #[test]
    fn smooth_schedule_matches_fproxy_round_robin() {
        use fproxy::strategy::{Pick, RoundRobin, Strategy, TargetState};
        use std::sync::Arc;
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        for weights in [
            &[1, 1, 1][..],
            &[3, 1],
            &[6, 5, 3],
            &[2, 2, 5, 4, 3],
            &[1, 5, 4],
        ] {
            let targets: Vec<Arc<TargetState>> = (0..weights.len())
                .map(|i| {
                    let addr = std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 80));
                    Arc::new(TargetState::new(
                        fproxy::Target::Addr(addr),
                        weights[i],
                        true,
                    ))
                })
                .collect();
            let rr = RoundRobin::new(&targets);
            let pick = Pick {
                client: "127.0.0.1:1".parse().unwrap(),
                targets: &targets,
            };
            let theirs: Vec<usize> = smooth_schedule(weights)
                .iter()
                .map(|_| rr.pick(&pick))
                .collect();
            assert_eq!(smooth_schedule(weights), theirs, "{weights:?}");
        }
    }

    #[test]
    fn weighted_round_robin_holds_for_the_smooth_cycle_from_any_start() {
        // a a b a c a a entered at its 4th connection, backends named by first answer.
        let v = weighted(Expect::RoundRobin, &[5, 1, 1])
            .judge(&dist(&cycles(&[0, 1, 0, 0, 0, 0, 2], 3)));
        assert!(v.holds, "{v:?}");
        assert_eq!(
            v.reason,
            "every cycle of 7 connections gave b0 5, b1 1, b2 1 in the smooth order ABAAAAC (3 cycles)"
        );
        // 10,2,2 is the same schedule as 5,1,1: the cycle is 7 long, not 14.
        let v = weighted(Expect::RoundRobin, &[10, 2, 2])
            .judge(&dist(&cycles(&[0, 0, 1, 0, 2, 0, 0], 2)));
        assert!(v.holds, "{v:?}");
        let v = weighted(Expect::RoundRobin, &[5, 1, 1])
            .judge(&dist(&cycles(&[0, 0, 1, 0, 2, 0, 0], 1)));
        assert!(
            !v.holds && v.reason.contains("use --connections 14"),
            "{v:?}"
        );
    }

    #[test]
    fn weighted_round_robin_names_what_broke() {
        let check = weighted(Expect::RoundRobin, &[5, 1, 1]);
        let mut seq = cycles(&[0, 0, 1, 0, 2, 0, 0], 2);
        seq[9] = 0;
        seq[10] = 1;
        let v = check.judge(&dist(&seq));
        assert_eq!(
            v.reason,
            "connection 10 went to b0, but connection 3, one cycle of 7 earlier, went to b1"
        );
        let v = check.judge(&dist(&cycles(&[0, 0, 1, 0, 2, 1, 0], 2)));
        assert_eq!(
            v.reason,
            "each cycle of 7 connections gives b0 4, b1 2, b2 1, but weights 5,1,1 give 5,1,1"
        );
        let v = check.judge(&dist(&cycles(&[0, 0, 0, 0, 0, 1, 2], 2)));
        assert!(!v.holds, "{v:?}");
        assert!(
            v.reason.starts_with(
                "the cycle AAAAABC has the right counts but not the smooth order: weights 5,1,1 interleave as aabacaa"
            ),
            "{v:?}"
        );
        // Every backend of the weights must answer, and no other.
        let v = check.judge(&dist(&cycles(&[0, 0, 1, 0, 1, 0, 0], 2)));
        assert_eq!(v.reason, "2 backend(s) answered, expected 3");
    }

    #[test]
    fn weighted_round_robin_follows_the_config_order_of_equal_totals() {
        // Ties go to the earlier target, so 6,5,3 and 3,5,6 interleave differently.
        let config_order = smooth_schedule(&[6, 5, 3]);
        assert!(
            weighted(Expect::RoundRobin, &[6, 5, 3])
                .judge(&dist(&cycles(&config_order, 2)))
                .holds
        );
        let v = weighted(Expect::RoundRobin, &[3, 5, 6]).judge(&dist(&cycles(&config_order, 2)));
        assert!(
            !v.holds && v.reason.contains("targets' order in the config"),
            "{v:?}"
        );
    }

    #[test]
    fn weighted_chi_square_pairs_counts_with_weights() {
        // 500/100/100 for weights 5,1,1, whichever backend answered first.
        let seq: Vec<usize> = [(0, 100), (1, 500), (2, 100)]
            .iter()
            .flat_map(|&(b, n)| std::iter::repeat_n(b, n))
            .collect();
        let d = dist(&seq);
        assert_eq!(d.counts, [100, 500, 100]);
        for expect in [Expect::Even, Expect::Random] {
            let v = weighted(expect, &[5, 1, 1]).judge(&d);
            assert!(v.holds, "{v:?}");
            assert!(
                v.reason.starts_with(
                    "counts/expected for weights 5,1,1: b1 500/500.0, b0 100/100.0, b2 100/100.0, chi-square 0.00, df 2, p 1.000"
                ),
                "{v:?}"
            );
        }
        // An even split is far from 5,1,1, and 5,1,1 far from even.
        let even: Vec<usize> = (0..700).map(|i| i % 3).collect();
        let v = weighted(Expect::Random, &[5, 1, 1]).judge(&dist(&even));
        assert!(
            !v.holds && v.reason.contains("a balancer following the weights"),
            "{v:?}"
        );
        assert!(!judge(&d, Expect::Even, None).holds);
        let v = weighted(Expect::Random, &[5, 1, 1]).judge(&dist(&seq[..30]));
        assert!(
            !v.holds && v.reason.contains("use --connections 35"),
            "{v:?}"
        );
    }

    #[test]
    fn weighted_chi_square_counts_a_silent_backend_as_zero() {
        // 3,1,1 over 25: the lightest expects 5; missing it is chi-square 5 + small.
        let seq: Vec<usize> = (0..25).map(|i| usize::from(i % 5 == 0)).collect();
        let v = weighted(Expect::Random, &[3, 1, 1]).judge(&dist(&seq));
        assert!(v.holds, "{v:?}");
        assert!(v.reason.contains("(no answer) 0/5.0"), "{v:?}");
        let v = weighted(Expect::Random, &[3, 1])
            .judge(&dist(&(0..40).map(|i| i % 3).collect::<Vec<_>>()));
        assert_eq!(v.reason, "3 backend(s) answered, expected 2");
    }

    #[test]
    fn least_connections_takes_turns_in_any_order() {
        // Each round every backend once, in a different order each round.
        let v = judge(
            &dist(&[0, 1, 2, 1, 2, 0, 2, 0, 1]),
            Expect::LeastConnections,
            None,
        );
        assert!(v.holds, "{v:?}");
        assert!(v.reason.contains("counts 3..3 over 3 backends"), "{v:?}");
        // A backend not yet seen counts 0: A A is already two ahead of it.
        let v = judge(&dist(&[0, 1, 0, 0, 1, 1]), Expect::LeastConnections, None);
        assert_eq!(
            v.reason,
            "after connection 4, b0 had 3 connections and b1 1: ties between idle backends that take turns never put one two ahead"
        );
        let v = judge(&dist(&[0, 1, 0]), Expect::LeastConnections, None);
        assert!(!v.holds && v.reason.contains("--connections 4"), "{v:?}");
        assert!(!judge(&dist(&[0, 0, 0, 0]), Expect::LeastConnections, None).holds);
    }

    #[test]
    fn p2c_is_judged_even() {
        let fair: Vec<usize> = (0..300).map(|i| i % 3).collect();
        assert!(judge(&dist(&fair), Expect::P2c, None).holds);
        let skew: Vec<usize> = (0..300).map(|i| usize::from(i % 3 == 2)).collect();
        let v = judge(&dist(&skew), Expect::P2c, None);
        assert!(!v.holds && v.reason.contains("an even balancer"), "{v:?}");
    }

    /// A distribution from `sources` loopback sources: (source, backend) per connection.
    fn from_sources(sources: u8, answers: &[(usize, usize)]) -> Distribution {
        let mut d = Distribution {
            sources: super::super::loopback_sources(sources),
            ..Distribution::default()
        };
        for &(s, b) in answers {
            d.add_from(Identity::Backend(format!("b{b}")), s);
        }
        d
    }

    #[test]
    fn consistent_hash_keeps_each_source_on_one_backend() {
        let v = judge(&dist(&[0, 0, 0]), Expect::ConsistentHash, None);
        assert_eq!(v.reason, "all 3 connections from this client went to b0");
        let v = judge(&dist(&[0, 0, 1]), Expect::ConsistentHash, None);
        assert_eq!(
            v.reason,
            "connections from this client went to b0 (connection 1) and to b1 (connection 3): a hash of the client address keeps one backend"
        );
        let sticky = from_sources(3, &[(0, 0), (1, 1), (2, 0), (2, 0), (1, 1), (0, 0)]);
        let v = judge(&sticky, Expect::ConsistentHash, None);
        assert!(v.holds, "{v:?}");
        assert!(
            v.reason.contains(
                "each of 3 sources kept one backend over 2 or more connections; 2 backends used"
            ),
            "{v:?}"
        );
        let moved = from_sources(2, &[(0, 0), (1, 1), (1, 0), (0, 0)]);
        let v = judge(&moved, Expect::ConsistentHash, None);
        assert!(
            v.reason.starts_with(
                "connections from 127.0.0.2 went to b1 (connection 2) and to b0 (connection 3)"
            ),
            "{v:?}"
        );
        let few = from_sources(3, &[(0, 0), (1, 0), (2, 0)]);
        let v = judge(&few, Expect::ConsistentHash, None);
        assert!(!v.holds && v.reason.contains("--connections 6"), "{v:?}");
    }

    #[test]
    fn consistent_hash_needs_a_spread_only_from_enough_sources() {
        let all_one = |n: u8| {
            let answers: Vec<(usize, usize)> =
                (0..2 * n as usize).map(|i| (i % n as usize, 0)).collect();
            from_sources(n, &answers)
        };
        let v = judge(&all_one(4), Expect::ConsistentHash, None);
        assert!(
            v.holds && v.reason.contains("too few to require a spread"),
            "{v:?}"
        );
        let v = judge(&all_one(16), Expect::ConsistentHash, None);
        assert_eq!(
            v.reason,
            "all 16 sources went to b0: a hash spreads them over 2 or more equal backends except about once in 32768 runs (pass --backends 1 if one is right)"
        );
        assert!(judge(&all_one(16), Expect::ConsistentHash, Some(1)).holds);
        // `sticky` is the same expectation.
        let sticky = <Expect as clap::ValueEnum>::from_str("sticky", false).unwrap();
        assert_eq!(sticky, Expect::ConsistentHash);
    }

    #[test]
    fn weights_apply_to_round_robin_even_and_random_only() {
        for expect in [Expect::RoundRobin, Expect::Even, Expect::Random] {
            assert_eq!(weighted(expect, &[2, 1]).validate(), Ok(()));
        }
        let e = weighted(Expect::P2c, &[2, 1]).validate().unwrap_err();
        assert!(
            e.starts_with("--weights does not apply to p2c: it weighs open connections"),
            "{e}"
        );
        assert!(weighted(Expect::LeastConnections, &[2, 1])
            .validate()
            .is_err());
        assert!(weighted(Expect::ConsistentHash, &[2, 1])
            .validate()
            .is_err());
        assert_eq!(
            weighted(Expect::Any, &[2, 1]).validate().unwrap_err(),
            "--weights needs --expect round-robin, even or random"
        );
        let both = Check {
            backends: Some(3),
            ..weighted(Expect::Even, &[2, 1])
        };
        assert!(both
            .validate()
            .unwrap_err()
            .contains("--backends 3 disagrees"));
        // An invalid check never holds.
        assert!(!weighted(Expect::Any, &[2, 1]).judge(&dist(&[0, 1])).holds);
    }

    #[test]
    fn backend_counts_single_and_failures() {
        let one = dist(&[0, 0, 0, 0]);
        assert!(!judge(&one, Expect::RoundRobin, None).holds);
        assert!(judge(&one, Expect::RoundRobin, Some(1)).holds);
        assert!(judge(&one, Expect::Single, None).holds);
        assert!(!judge(&dist(&[0, 1]), Expect::Single, None).holds);
        let v = judge(&dist(&[0, 1, 0, 1]), Expect::Any, Some(3));
        assert_eq!(v.reason, "2 backend(s) answered, expected 3");
        let mut d = dist(&[0, 1, 0, 1]);
        d.failed.push((
            5,
            TryError::new(Failure::Refused, "connect x: refused".into()),
        ));
        let v = judge(&d, Expect::Any, None);
        assert!(!v.holds && v.reason == "1 of 5 connections failed", "{v:?}");
    }
}
