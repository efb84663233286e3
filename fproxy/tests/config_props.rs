//! Property tests of config validation: whatever the text, `Validator::parse`
//! answers with a config or an error and never panics, and a config it accepts has
//! every duration within the ceiling (so `Instant + d` cannot overflow at run time).
//!
//! The duration fields are not listed by hand: they are read from the `Debug` text
//! of configs that set every section ([`duration_fields`]), so a field added later
//! is generated, bounded and checked without anyone remembering to list it.
//!
//! Bounded to a few hundred cases each so the suite stays fast.

use std::sync::LazyLock;

use fproxy::config::limits::MAX_DURATION;
use fproxy::{Config, Validator};
use proptest::prelude::*;
use serde_json::{json, Value};

/// What kind of value a field takes, to generate mostly plausible ones.
#[derive(Clone, Copy, Debug)]
enum Ty {
    Duration,
    Number,
    Addrs,
    Ports,
    Text,
    Bool,
}

/// Every field of an app but its durations, nested ones as `a.b`, with its type.
/// The durations come from [`duration_fields`] (see [`fields`]).
const FIELDS: &[(&str, Ty)] = &[
    ("name", Ty::Text),
    ("kind", Ty::Text),
    ("listen", Ty::Addrs),
    ("ports", Ty::Ports),
    ("targets", Ty::Addrs),
    ("strategy", Ty::Text),
    ("max_connections", Ty::Number),
    ("buffer_size", Ty::Number),
    ("new_targets_healthy", Ty::Bool),
    ("health_check.rise", Ty::Number),
    ("health_check.fall", Ty::Number),
    ("health_check.send", Ty::Text),
    ("health_check.expect", Ty::Text),
    ("passive.consecutive_failures", Ty::Number),
    ("passive.max_ejected_percent", Ty::Number),
    ("dns.family", Ty::Text),
    ("grpc_listen", Ty::Addrs),
    ("grpc_ports", Ty::Ports),
    ("upstream", Ty::Text),
    ("fetch_concurrency", Ty::Number),
    ("max_sdk_keys", Ty::Number),
    ("max_streams", Ty::Number),
    ("drop_unauthorized", Ty::Bool),
    ("cache.backend", Ty::Text),
    ("cache.url", Ty::Text),
    ("cache.prefix", Ty::Text),
    ("cache.legacy_hashed_key", Ty::Bool),
];

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,4}(ms|s|m|h)",
        "[0-9]{1,22}(ns|us|ms|s|m|h|d|w|M|y)",
        "[0-9]{1,3}d [0-9]{1,5}(s|h)",
        Just("365d".to_string()),
        Just("366d".to_string()),
        Just("10000000000000000000s".to_string()),
        Just("0s".to_string()),
        ".{0,12}",
    ]
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        (0u64..20).prop_map(Value::from),
        (0u64..=2_000_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
    ]
    .boxed()
}

fn addr() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("127.0.0.1:0".to_string()),
        "127\\.0\\.0\\.[1-3]:[0-9]{1,5}",
        "(0\\.0\\.0\\.0|\\[::\\]|\\[::1\\]):[0-9]{1,5}",
        "(localhost|db|[a-z]{1,8}\\.example):[0-9]{1,6}",
        ".{0,12}",
    ]
}

/// Any JSON at all, for the fields that get a wrong type.
fn garbage() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn typed(ty: Ty) -> BoxedStrategy<Value> {
    let plausible = match ty {
        Ty::Duration => duration().prop_map(Value::from).boxed(),
        Ty::Number => number(),
        Ty::Addrs => prop::collection::vec(addr(), 0..4)
            .prop_map(Value::from)
            .boxed(),
        Ty::Ports => prop::collection::vec(number(), 0..3)
            .prop_map(Value::from)
            .boxed(),
        Ty::Text => prop_oneof![
            "[A-Za-z0-9_.-]{0,70}",
            "(tcp|spec|p2c|round_robin|redis|local|prefer_ipv6|all)",
            "(http|https|redis|ftp)://[a-z0-9.:@]{0,20}",
            ".{0,20}",
        ]
        .prop_map(Value::from)
        .boxed(),
        Ty::Bool => any::<bool>().prop_map(Value::from).boxed(),
    };
    prop_oneof![9 => plausible, 1 => garbage()].boxed()
}

/// Every field of an app with its type: [`FIELDS`] and the app duration fields
/// of both kinds.
fn fields() -> &'static [(&'static str, Ty)] {
    static ALL: LazyLock<Vec<(&'static str, Ty)>> = LazyLock::new(|| {
        let mut all = FIELDS.to_vec();
        for (kind, path) in duration_fields() {
            if *kind != "admin" && !all.iter().any(|(p, _)| p == path) {
                all.push((path, Ty::Duration));
            }
        }
        all
    });
    &ALL
}

/// One field of [`fields`] with a value of its type.
fn field() -> impl Strategy<Value = (&'static str, Value)> {
    (0..fields().len()).prop_flat_map(|i| {
        let (path, ty) = fields()[i];
        typed(ty).prop_map(move |v| (path, v))
    })
}

/// A valid app of a random kind, then random fields set over it.
fn app() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        "[a-z]{1,3}",
        prop::collection::vec(field(), 0..10),
    )
        .prop_map(|(tcp, name, fields)| {
            let mut app = if tcp {
                json!({"name": name, "listen": ["127.0.0.1:0"], "targets": ["127.0.0.1:1"]})
            } else {
                json!({"name": name, "kind": "spec", "listen": ["127.0.0.1:0"]})
            };
            for (path, value) in fields {
                set(&mut app, path, value);
            }
            app
        })
}

fn set(app: &mut Value, path: &str, value: Value) {
    match path.split_once('.') {
        None => app[path] = value,
        Some((outer, inner)) => {
            if !app.get(outer).is_some_and(Value::is_object) {
                app[outer] = json!({});
            }
            app[outer][inner] = value;
        }
    }
}

/// A valid config with some of its own kind's duration fields, and of the admin
/// section's, set to any duration, huge ones included: mostly accepted, unless a
/// duration is out of bounds.
fn duration_app() -> impl Strategy<Value = Value> {
    let n = duration_fields().len();
    (
        any::<bool>(),
        prop::collection::vec(
            prop_oneof!["[1-9][0-9]{0,3}(ms|s|m|h)", "[1-9][0-9]{0,21}(s|m|h|d|w|y)",],
            n,
        ),
        prop::collection::vec(any::<bool>(), n),
    )
        .prop_map(|(tcp, values, pick)| {
            let kind = if tcp { "tcp" } else { "spec" };
            let mut c = json!({ "apps": [full_app(kind)], "admin": {"listen": "127.0.0.1:0"} });
            for (((of, path), value), on) in duration_fields().iter().zip(values).zip(pick) {
                if !on || (*of != kind && *of != "admin") {
                    continue;
                }
                match path.strip_prefix("admin.") {
                    Some(field) => c["admin"][field] = value.into(),
                    None => set(&mut c["apps"][0], path, value.into()),
                }
            }
            c
        })
}

fn config() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(app(), 0..3),
        prop::option::of(prop_oneof![
            (
                addr(),
                prop::collection::vec(
                    prop::option::of(typed(Ty::Duration)),
                    admin_durations().count()
                )
            )
                .prop_map(|(a, durations)| {
                    let mut admin = json!({ "listen": a });
                    for (field, d) in admin_durations().zip(durations) {
                        if let Some(d) = d {
                            admin[field] = d;
                        }
                    }
                    admin
                }),
            garbage()
        ]),
    )
        .prop_map(|(apps, admin)| {
            let mut c = json!({ "apps": apps });
            if let Some(a) = admin {
                c["admin"] = a;
            }
            c
        })
}

/// Every `Duration` in the config's `Debug` text, in seconds. Reading the Debug
/// text instead of listing fields keeps the check true for fields added later.
fn durations(config: &Config) -> Vec<f64> {
    durations_by_path(config)
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

/// Every `Duration` in the config's pretty `Debug` text with the path of its field
/// as written in JSON (`drain_timeout`, `health_check.interval`, `cache.cache_ttl`,
/// `admin.header_timeout`): the names of the enclosing fields, without `apps` and
/// `kind`, which JSON does not have.
fn durations_by_path(config: &Config) -> Vec<(String, f64)> {
    let text = format!("{config:#?}");
    // The named fields whose value is still open, by indentation.
    let mut open: Vec<(usize, &str)> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        while open.last().is_some_and(|(i, _)| *i >= indent) {
            open.pop();
        }
        let (name, value) = match body.split_once(": ") {
            Some((n, v)) if n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                (Some(n), v)
            }
            _ => (None, body),
        };
        if let Some(secs) = seconds(value.trim_end_matches(',')) {
            let path: Vec<&str> = open
                .iter()
                .map(|(_, n)| *n)
                .chain(name)
                .filter(|n| !matches!(*n, "apps" | "kind"))
                .collect();
            out.push((path.join("."), secs));
        } else if let (Some(n), true) = (name, value.ends_with(['{', '(', '['])) {
            open.push((indent, n));
        }
    }
    out
}

/// A `Duration`'s Debug text (`1.5s`, `300ms`, `2µs`) in seconds.
fn seconds(text: &str) -> Option<f64> {
    let (num, scale) = [("ns", 1e-9), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0)]
        .into_iter()
        .find_map(|(unit, scale)| Some((text.strip_suffix(unit)?, scale)))?;
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    Some(num.parse::<f64>().ok()? * scale)
}

/// A valid app of `kind` that sets every optional section, so its `Debug` text
/// shows every field there is.
fn full_app(kind: &str) -> Value {
    match kind {
        "tcp" => json!({"name": "a", "listen": ["127.0.0.1:0"], "targets": ["127.0.0.1:1"],
            "health_check": {"send": "ping", "expect": "pong"}, "passive": {}, "dns": {}}),
        _ => json!({"name": "a", "kind": "spec", "listen": ["127.0.0.1:0"],
            "cache": {"backend": "redis", "url": "redis://h:1"}}),
    }
}

/// Every duration field as (`tcp`, `spec` or `admin`, path as in JSON), read from
/// the `Debug` text of a [`full_app`] of each kind with an admin section. A new
/// `Duration` field anywhere in the config shows up here by itself; a new optional
/// section makes [`full_configs_set_every_section`] fail until `full_app` sets it.
fn duration_fields() -> &'static [(&'static str, String)] {
    static ALL: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
        let mut all: Vec<(&'static str, String)> = Vec::new();
        for kind in ["tcp", "spec"] {
            for (path, _) in durations_by_path(&full_config(kind)) {
                let of = if path.starts_with("admin.") {
                    "admin"
                } else {
                    kind
                };
                if !all.iter().any(|(k, p)| *k == of && *p == path) {
                    all.push((of, path));
                }
            }
        }
        all
    });
    &ALL
}

/// The admin section's duration fields, without the `admin.` prefix.
fn admin_durations() -> impl Iterator<Item = &'static str> {
    duration_fields()
        .iter()
        .filter_map(|(_, p)| p.strip_prefix("admin."))
}

fn full_config(kind: &str) -> Config {
    let text = json!({"apps": [full_app(kind)], "admin": {"listen": "127.0.0.1:0"}});
    validator()
        .parse(&text.to_string())
        .unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn validator() -> Validator {
    Validator::default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_configs_never_panic_and_accepted_durations_are_bounded(c in config()) {
        let text = c.to_string();
        if let Ok(config) = validator().parse(&text) {
            let found = durations(&config);
            // Each app has at least its drain timeout: the scan sees durations.
            prop_assert!(found.len() >= config.apps.len(), "{config:?}");
            for d in found {
                prop_assert!(d <= MAX_DURATION.as_secs_f64(), "{d}s accepted in {text}");
            }
        }
    }

    #[test]
    fn accepted_durations_are_bounded(c in duration_app()) {
        let text = c.to_string();
        if let Ok(config) = validator().parse(&text) {
            for d in durations(&config) {
                prop_assert!(d <= MAX_DURATION.as_secs_f64(), "{d}s accepted in {text}");
            }
        }
    }

    #[test]
    fn garbled_text_never_panics(
        c in config(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 0..6),
    ) {
        // A config's text with characters replaced, inserted or deleted.
        let mut chars: Vec<char> = c.to_string().chars().collect();
        for (at, op, ch) in edits {
            if chars.is_empty() {
                break;
            }
            let i = at.index(chars.len());
            match op {
                0 => chars[i] = ch,
                1 => chars.insert(i, ch),
                _ => {
                    chars.remove(i);
                }
            }
        }
        let text: String = chars.into_iter().collect();
        let _ = validator().parse(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = validator().parse(&text);
    }
}

#[test]
fn the_duration_scan_sees_every_duration() {
    let c = validator()
        .parse(
            r#"{"apps":[{"name":"a","listen":["127.0.0.1:0"],"targets":["x:1"],
            "drain_timeout":"1500ms","health_check":{"interval":"2us"}}],
            "admin":{"keepalive_timeout":"3m"}}"#,
        )
        .unwrap();
    let found = durations_by_path(&c);
    for want in [
        ("drain_timeout", 1.5),
        ("health_check.interval", 2e-6),
        ("admin.keepalive_timeout", 180.0),
    ] {
        assert!(
            found.iter().any(|(p, d)| p == want.0 && *d == want.1),
            "{want:?} not in {found:?}"
        );
    }
}

/// The derived list is only as good as the configs it is read from: they must
/// leave no optional section out, or that section's durations would go unchecked.
/// And it must find what is known today, so a broken scan cannot pass for an
/// empty list.
#[test]
fn full_configs_set_every_section() {
    for kind in ["tcp", "spec"] {
        let text = format!("{:#?}", full_config(kind));
        assert!(
            !text.contains("None"),
            "full_app({kind:?}) leaves a section unset; set it so its fields are checked:\n{text}"
        );
    }
    let fields = duration_fields();
    for want in [
        ("tcp", "drain_timeout"),
        ("tcp", "connect_deadline"),
        ("tcp", "health_check.timeout"),
        ("tcp", "passive.base_ejection"),
        ("tcp", "dns.max_ttl"),
        ("spec", "drain_timeout"),
        ("spec", "header_timeout"),
        ("spec", "keepalive_timeout"),
        ("spec", "cache.leader_ttl"),
        ("admin", "admin.header_timeout"),
        ("admin", "admin.keepalive_timeout"),
    ] {
        assert!(
            fields.iter().any(|(k, p)| *k == want.0 && p == want.1),
            "{want:?} not in {fields:?}"
        );
    }
}

/// A config with the duration field `path` of `kind` set to `value`, other fields
/// that must stay in order with it moved out of the way.
fn with_duration(kind: &str, path: &str, value: &str) -> String {
    let app_kind = if kind == "admin" { "tcp" } else { kind };
    let mut c = json!({"apps": [full_app(app_kind)], "admin": {"listen": "127.0.0.1:0"}});
    let app = &mut c["apps"][0];
    // dns.max_ttl must stay at least dns.min_ttl, connect_deadline at least
    // connect_timeout.
    match path {
        "dns.max_ttl" => set(app, "dns.min_ttl", "1ms".into()),
        "dns.min_ttl" => set(app, "dns.max_ttl", "365d".into()),
        "connect_deadline" => set(app, "connect_timeout", "1ms".into()),
        // heartbeat_interval must stay below keepalive_timeout.
        "heartbeat_interval" => set(app, "keepalive_timeout", "365d".into()),
        "keepalive_timeout" => set(app, "heartbeat_interval", "1ms".into()),
        _ => {}
    }
    match path.strip_prefix("admin.") {
        Some(field) => c["admin"][field] = value.into(),
        None => set(&mut c["apps"][0], path, value.into()),
    }
    c.to_string()
}

/// Issue 12 finding 5: every duration field, app or admin, present or added later,
/// is bounded, and the error names the app (or section) and field.
#[test]
fn every_duration_is_bounded_with_an_error_naming_app_and_field() {
    for (kind, path) in duration_fields() {
        // The ceiling itself is accepted (heartbeat_interval: just below it, as it
        // must stay below keepalive_timeout).
        let ceiling = if path == "heartbeat_interval" {
            "364d"
        } else {
            "365d"
        };
        let ok = with_duration(kind, path, ceiling);
        assert!(
            validator().parse(&ok).is_ok(),
            "{kind} {path}: {:?}",
            validator().parse(&ok)
        );
        for too_long in ["10000000000000000000s", "365d 1s", "1000y"] {
            let e = validator()
                .parse(&with_duration(kind, path, too_long))
                .unwrap_err()
                .to_string();
            let want = match *kind {
                "admin" => format!("{path}: "),
                _ => format!("app \"a\": {path}: "),
            };
            assert!(
                e.starts_with(&want) && e.contains("longer than the most allowed, 365 days"),
                "{kind} {path} = {too_long}: {e}"
            );
        }
    }
}
