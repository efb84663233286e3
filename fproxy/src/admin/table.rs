//! Renders a [`Status`] as the readable tables `fproxy status` prints.

use std::fmt::Write;

use super::status::{AppStatus, Reload, Status};

/// The whole status: a header, then one section per app.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    // Fixed label width, so the header lines up the same with or without a refusal.
    let mut field = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<12}  {value}");
    };
    field("version", &s.version.to_string());
    field("source", &s.source);
    field("ready", yes_no(s.ready));
    field(
        "last reload",
        &s.last_reload
            .as_ref()
            .map_or_else(|| "-".into(), describe_reload),
    );
    if let Some(r) = &s.last_refused {
        field("last refused", &describe_reload(r));
    }

    for app in &s.apps {
        out.push('\n');
        render_app(&mut out, app);
    }
    if s.apps.is_empty() {
        out.push_str("\nno apps\n");
    }
    out
}

fn describe_reload(r: &Reload) -> String {
    let mut s = format!("{} {} (version {}", r.at, r.result, r.version);
    for (what, apps) in [
        ("added", &r.added),
        ("changed", &r.changed),
        ("removed", &r.removed),
    ] {
        if !apps.is_empty() {
            let _ = write!(s, "; {what}: {}", apps.join(", "));
        }
    }
    s.push(')');
    if let Some(e) = &r.error {
        let _ = write!(s, ": {e}");
    }
    s
}

fn render_app(out: &mut String, app: &AppStatus) {
    let listeners: Vec<String> = app.listeners.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "app {} ({}): {}, {} connection(s), listening on {}",
        app.name,
        app.kind,
        if app.ready { "ready" } else { "NOT READY" },
        app.connections,
        if listeners.is_empty() {
            "-".into()
        } else {
            listeners.join(", ")
        }
    );
    for p in &app.problems {
        let _ = writeln!(out, "  problem: {p}");
    }
    if let Some(tcp) = &app.tcp {
        let _ = writeln!(out, "  strategy: {}", tcp.strategy);
        let mut t = Table::new(&[
            "TARGET",
            "ADDRESS",
            "WEIGHT",
            "HEALTH",
            "EJECTED",
            "EJECTIONS",
            "CONNECTIONS",
        ]);
        for e in &tcp.endpoints {
            t.row(vec![
                e.target.clone(),
                e.address.map_or_else(|| "-".into(), |a| a.to_string()),
                e.weight.to_string(),
                if e.healthy { "up" } else { "down" }.into(),
                yes_no(e.ejected).into(),
                e.ejections.to_string(),
                e.connections.to_string(),
            ]);
        }
        t.write(out, "  ");
    }
    if let Some(spec) = &app.spec {
        let cache = if spec.cache == "local" {
            "local".to_string()
        } else {
            format!(
                "{} ({}{})",
                spec.cache,
                if spec.cache_connected {
                    "connected"
                } else {
                    "disconnected"
                },
                if spec.leader { ", leader" } else { "" }
            )
        };
        let _ = writeln!(out, "  cache: {cache}, {} stream(s)", spec.streams);
        if let Some(e) = &spec.cache_error {
            let _ = writeln!(out, "  cache error: {e}");
        }
        let mut t = Table::new(&[
            "KEY", "WARM", "LCUT", "AGE", "UPSTREAM", "STREAMS", "PROBLEM",
        ]);
        for k in &spec.keys {
            t.row(vec![
                k.key.clone(),
                yes_no(k.warm).into(),
                k.lcut.map_or_else(|| "-".into(), |l| l.to_string()),
                k.age_ms.map_or_else(|| "-".into(), age),
                k.upstream.clone(),
                k.streams.to_string(),
                k.problem.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        if spec.keys.is_empty() {
            let _ = writeln!(out, "  no SDK keys yet");
        } else {
            t.write(out, "  ");
        }
    }
}

/// `1.2s`, `3m4s`: precise enough to spot a stale key.
fn age(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let s = ms / 1000;
        humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Left-aligned columns, two spaces apart.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    fn write(&self, out: &mut String, indent: &str) {
        let w = self.widths();
        line(out, indent, &self.header, &w);
        for row in &self.rows {
            line(out, indent, row, &w);
        }
    }
}

fn line(out: &mut String, indent: &str, cells: &[String], widths: &[usize]) {
    let mut l = String::from(indent);
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            l.push_str("  ");
        }
        l.push_str(c);
        let pad = widths.get(i).copied().unwrap_or(0);
        for _ in c.chars().count()..pad {
            l.push(' ');
        }
    }
    out.push_str(l.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{EndpointStatus, KeyStatus, SpecStatus, TcpStatus};

    #[test]
    fn renders_header_endpoints_and_keys() {
        let s = Status {
            version: 3,
            source: "file /etc/fproxy.json".into(),
            ready: false,
            last_reload: Some(Reload {
                at: "2025-01-01T00:00:00Z".into(),
                result: "applied".into(),
                version: 3,
                error: None,
                added: vec![],
                changed: vec!["web".into()],
                removed: vec![],
            }),
            last_refused: Some(Reload {
                at: "2024-12-31T00:00:00Z".into(),
                result: "refused".into(),
                version: 2,
                error: Some("app \"web\": targets: must list at least one target".into()),
                added: vec![],
                changed: vec![],
                removed: vec![],
            }),
            apps: vec![
                AppStatus {
                    name: "web".into(),
                    kind: "tcp".into(),
                    listeners: vec!["127.0.0.1:8080".parse().unwrap()],
                    connections: 2,
                    ready: true,
                    problems: vec![],
                    tcp: Some(TcpStatus {
                        strategy: "p2c".into(),
                        endpoints: vec![EndpointStatus {
                            target: "backend.local:80".into(),
                            address: Some("10.0.0.5:80".parse().unwrap()),
                            weight: 1,
                            healthy: false,
                            ejected: true,
                            ejections: 4,
                            connections: 2,
                        }],
                    }),
                    spec: None,
                },
                AppStatus {
                    name: "flags".into(),
                    kind: "spec".into(),
                    listeners: vec![],
                    connections: 0,
                    ready: false,
                    problems: vec!["warm key has no data yet (pending)".into()],
                    tcp: None,
                    spec: Some(SpecStatus {
                        cache: "local".into(),
                        cache_connected: true,
                        leader: false,
                        cache_error: None,
                        streams: 0,
                        keys: vec![KeyStatus {
                            key: "v1:secret-ab…".into(),
                            warm: true,
                            lcut: None,
                            age_ms: Some(90_500),
                            upstream: "pending".into(),
                            streams: 0,
                            problem: Some("warm key has no data yet (pending)".into()),
                        }],
                    }),
                },
            ],
        };
        let out = render(&s);
        for want in [
            "version       3",
            "source        file /etc/fproxy.json",
            "ready         no",
            "last reload   2025-01-01T00:00:00Z applied (version 3; changed: web)",
            "last refused  2024-12-31T00:00:00Z refused (version 2): app \"web\": targets",
            "app web (tcp): ready, 2 connection(s), listening on 127.0.0.1:8080",
            "  TARGET            ADDRESS      WEIGHT  HEALTH  EJECTED  EJECTIONS  CONNECTIONS",
            "  backend.local:80  10.0.0.5:80  1       down    yes      4          2",
            "app flags (spec): NOT READY, 0 connection(s), listening on -",
            "  v1:secret-ab…  yes   -     1m 30s  pending",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }
}
