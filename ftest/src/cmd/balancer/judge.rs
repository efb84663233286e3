//! Judging a distribution against an expectation.
//!
//! `even` uses Pearson's chi-square goodness-of-fit test against an even split and
//! holds when p >= [`SIGNIFICANCE`]. A fixed max/min ratio would be wrong both ways:
//! it fails a fair random balancer on small samples and passes a skewed one on large
//! ones. With p >= 0.001 a fair balancer fails by chance once in a thousand runs; a
//! 2:1 skew between two backends is caught from about 100 connections on
//! (chi-square is n/9 for n connections split 2:1; the critical value is 10.83).

use super::Distribution;
use crate::probe::Identity;

/// The p-value below which `even` does not hold.
pub const SIGNIFICANCE: f64 = 0.001;
/// The chi-square approximation needs about 5 expected connections per backend.
const MIN_EXPECTED: usize = 5;

/// What the distribution must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    /// Backends take turns in a fixed cycle.
    RoundRobin,
    /// Counts are statistically even (chi-square, p >= 0.001).
    Even,
    /// Every connection went to the same backend.
    Single,
    /// Anything goes: only print.
    Any,
}

impl Expect {
    pub fn name(self) -> &'static str {
        match self {
            Expect::RoundRobin => "round-robin",
            Expect::Even => "even",
            Expect::Single => "single",
            Expect::Any => "any",
        }
    }
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

/// Judges `dist`. `backends` is how many must answer (None: any number, but at
/// least 2 for round-robin and even: balancing over one backend is no balancing).
pub fn judge(dist: &Distribution, expect: Expect, backends: Option<usize>) -> Verdict {
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
    match backends {
        Some(want) if want != k => {
            return fails(format!("{k} backend(s) answered, expected {want}"));
        }
        None if k < 2 && matches!(expect, Expect::RoundRobin | Expect::Even) => {
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
        Expect::RoundRobin => round_robin(dist),
        Expect::Even => even(dist),
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
    let df = (k - 1) as f64;
    let p = chi_square_p(chi2, df);
    let min = dist.counts.iter().copied().min().unwrap_or(0);
    let max = dist.counts.iter().copied().max().unwrap_or(0);
    // Small p-values in scientific notation: "p 0.000" would hide how small.
    let p_text = if p >= SIGNIFICANCE {
        format!("{p:.3}")
    } else {
        format!("{p:.1e}")
    };
    let stat = format!(
        "counts {min}..{max} around {expected:.1}, chi-square {chi2:.2}, df {df}, p {p_text}"
    );
    if p >= SIGNIFICANCE {
        holds(format!("{stat} >= {SIGNIFICANCE}"))
    } else {
        fails(format!(
            "{stat} < {SIGNIFICANCE}: an even balancer is this uneven less than once in 1000 runs"
        ))
    }
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
