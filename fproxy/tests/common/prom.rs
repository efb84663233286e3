//! Reading `/metrics` text with a real Prometheus text parser (prometheus-parse).

use fproxy::metrics::Metrics;
use prometheus_parse::Value;

/// A parsed scrape.
pub struct Scrape(pub prometheus_parse::Scrape);

/// Parses metrics text.
fn parse(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("metrics text parses")
}

/// The samples named `name` whose labels include `labels`.
fn matching<'a>(
    samples: &'a [prometheus_parse::Sample],
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a prometheus_parse::Sample> {
    samples
        .iter()
        .filter(move |s| s.metric == name)
        .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

/// A counter's, gauge's or untyped sample's value.
fn scalar(s: &prometheus_parse::Sample) -> Option<f64> {
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    }
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        Scrape(parse(text))
    }

    /// The value of the one sample named `name` whose labels include `labels`;
    /// `None` if there is none. Panics if several match (the labels are too loose).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = matching(&self.0.samples, name, labels)
            .filter_map(scalar)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().copied()
    }

    /// Like [`Scrape::get`], 0 when absent (a counter not yet touched).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The observation count of a histogram.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        matching(&self.0.samples, name, labels)
            .find_map(|s| match &s.value {
                Value::Histogram(buckets) => buckets.last().map(|b| b.count as u64),
                _ => None,
            })
            .unwrap_or(0)
    }
}

/// The metrics text, parsed.
pub fn scrape(metrics: &Metrics) -> Vec<prometheus_parse::Sample> {
    parse(&metrics.encode()).samples
}

/// The value of the first sample `name` whose labels include `labels`, if there is
/// one. Counters are named with their `_total` suffix; histograms by `_count`/`_sum`.
pub fn sample(
    samples: &[prometheus_parse::Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    matching(samples, name, labels).next().and_then(scalar)
}

/// Like [`sample`], for a sample that must exist.
pub fn value(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = scrape(metrics);
    sample(&samples, name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", metrics.encode()))
}

/// Waits (bounded, polling on loopback) until `name` with `labels` reads `want`.
pub async fn metric_reaches(metrics: &Metrics, name: &str, labels: &[(&str, &str)], want: f64) {
    metric_until(metrics, name, labels, &format!("== {want}"), |v| v == want).await;
}

/// Waits (bounded, polling on loopback) until `name` with `labels` reads `least` or more.
pub async fn metric_at_least(metrics: &Metrics, name: &str, labels: &[(&str, &str)], least: f64) {
    metric_until(metrics, name, labels, &format!(">= {least}"), |v| {
        v >= least
    })
    .await;
}

async fn metric_until(
    metrics: &Metrics,
    name: &str,
    labels: &[(&str, &str)],
    what: &str,
    ok: impl Fn(f64) -> bool,
) {
    let reached = tokio::time::timeout(super::WAIT, async {
        loop {
            if sample(&scrape(metrics), name, labels).is_some_and(&ok) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    if reached.is_err() {
        panic!(
            "{name} {labels:?} never reached {what}; metrics:\n{}",
            metrics.encode()
        );
    }
}
