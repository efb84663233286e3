//! Property tests of config validation: whatever the text, `Validator::parse`
//! answers with a config or an error and never panics, and a config it accepts has
//! every duration within the ceiling (so `Instant + d` cannot overflow at run time).
//!
//! Bounded to a few hundred cases each so the suite stays fast.

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

/// Every field of an app, nested ones as `a.b`, with its type.
const FIELDS: &[(&str, Ty)] = &[
    ("name", Ty::Text),
    ("kind", Ty::Text),
    ("listen", Ty::Addrs),
    ("ports", Ty::Ports),
    ("drain_timeout", Ty::Duration),
    ("targets", Ty::Addrs),
    ("strategy", Ty::Text),
    ("connect_timeout", Ty::Duration),
    ("connect_deadline", Ty::Duration),
    ("idle_timeout", Ty::Duration),
    ("max_connections", Ty::Number),
    ("buffer_size", Ty::Number),
    ("new_targets_healthy", Ty::Bool),
    ("health_check.interval", Ty::Duration),
    ("health_check.timeout", Ty::Duration),
    ("health_check.rise", Ty::Number),
    ("health_check.fall", Ty::Number),
    ("health_check.send", Ty::Text),
    ("health_check.expect", Ty::Text),
    ("passive.consecutive_failures", Ty::Number),
    ("passive.base_ejection", Ty::Duration),
    ("passive.max_ejected_percent", Ty::Number),
    ("dns.min_ttl", Ty::Duration),
    ("dns.max_ttl", Ty::Duration),
    ("dns.family", Ty::Text),
    ("grpc_listen", Ty::Addrs),
    ("grpc_ports", Ty::Ports),
    ("upstream", Ty::Text),
    ("poll_interval", Ty::Duration),
    ("fetch_concurrency", Ty::Number),
    ("request_timeout", Ty::Duration),
    ("max_sdk_keys", Ty::Number),
    ("stale_after", Ty::Duration),
    ("max_streams", Ty::Number),
    ("max_stream_age", Ty::Duration),
    ("heartbeat_interval", Ty::Duration),
    ("drop_unauthorized", Ty::Bool),
    ("rejected_key_ttl", Ty::Duration),
    ("cache.backend", Ty::Text),
    ("cache.url", Ty::Text),
    ("cache.prefix", Ty::Text),
    ("cache.cache_ttl", Ty::Duration),
    ("cache.leader_ttl", Ty::Duration),
    ("cache.connect_timeout", Ty::Duration),
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

/// One field of `FIELDS` with a value of its type.
fn field() -> impl Strategy<Value = (&'static str, Value)> {
    (0..FIELDS.len()).prop_flat_map(|i| {
        let (path, ty) = FIELDS[i];
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

/// A valid app with some of its own kind's duration fields set to any duration,
/// huge ones included: mostly accepted, unless a duration is out of bounds.
fn duration_app() -> impl Strategy<Value = Value> {
    let durations = || {
        prop::collection::vec(
            prop_oneof!["[1-9][0-9]{0,3}(ms|s|m|h)", "[1-9][0-9]{0,21}(s|m|h|d|w|y)",],
            8,
        )
    };
    (
        any::<bool>(),
        durations(),
        prop::collection::vec(any::<bool>(), 8),
    )
        .prop_map(|(tcp, values, pick)| {
            let (mut app, fields) = if tcp {
                (
                    json!({"name": "t", "listen": ["127.0.0.1:0"], "targets": ["127.0.0.1:1"],
                        "health_check": {}, "passive": {}}),
                    &[
                        "drain_timeout",
                        "connect_timeout",
                        "idle_timeout",
                        "health_check.interval",
                        "health_check.timeout",
                        "passive.base_ejection",
                        "dns.min_ttl",
                        "dns.max_ttl",
                    ],
                )
            } else {
                (
                    json!({"name": "s", "kind": "spec", "listen": ["127.0.0.1:0"],
                        "cache": {"backend": "redis", "url": "redis://h:1"}}),
                    &[
                        "poll_interval",
                        "request_timeout",
                        "stale_after",
                        "max_stream_age",
                        "heartbeat_interval",
                        "rejected_key_ttl",
                        "cache.cache_ttl",
                        "cache.connect_timeout",
                    ],
                )
            };
            for ((path, value), on) in fields.iter().zip(values).zip(pick) {
                if on {
                    set(&mut app, path, value.into());
                }
            }
            json!({ "apps": [app] })
        })
}

fn config() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(app(), 0..3),
        prop::option::of(prop_oneof![
            addr().prop_map(|a| json!({ "listen": a })),
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
    let text = format!("{config:?}");
    let mut out = Vec::new();
    for (i, _) in text.match_indices(": ") {
        let rest = &text[i + 2..];
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            continue;
        }
        let (num, after) = rest.split_at(num_len);
        let unit = ["ns", "µs", "ms", "s"]
            .into_iter()
            .find(|u| after.starts_with(u) && after[u.len()..].starts_with([',', ' ', '}', ')']));
        let scale = match unit {
            Some("ns") => 1e-9,
            Some("µs") => 1e-6,
            Some("ms") => 1e-3,
            Some("s") => 1.0,
            _ => continue,
        };
        if let Ok(n) = num.parse::<f64>() {
            out.push(n * scale);
        }
    }
    out
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
            "drain_timeout":"1500ms","health_check":{"interval":"2us"}}]}"#,
        )
        .unwrap();
    let found = durations(&c);
    assert!(found.contains(&1.5), "{found:?}");
    assert!(found.contains(&2e-6), "{found:?}");
}
