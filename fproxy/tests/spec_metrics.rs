//! The spec app's metrics and status, scraped and parsed as Prometheus would,
//! against a real local upstream.

mod common;

use std::sync::Arc;

use common::upstream::*;
use common::*;
use fproxy::app::App;
use fproxy::listener::Bound;
use fproxy::metrics::Metrics;
use fproxy::spec::grpc::proto::statsig_forward_proxy_client::StatsigForwardProxyClient;
use fproxy::spec::store::{Api, Key};
use fproxy::spec::SpecApp;
use fproxy::{Registry, Validator};
use tonic::transport::Channel;
use tonic::Code;

const APP: (&str, &str) = ("app", "spec");
const UNKNOWN: &str = "secret-unknown-0123456789";
const OTHER: &str = "secret-other-key-0123456789";

fn masked(key: &str) -> String {
    Key {
        api: Api::V1,
        sdk_key: key.parse().unwrap(),
    }
    .masked()
}

fn grpc_app(upstream: &str, extra: &str) -> String {
    format!(
        r#"{{"apps":[{{"name":"spec","kind":"spec","grpc_listen":["127.0.0.1:0"],"upstream":"{upstream}"{extra}}}]}}"#
    )
}

async fn grpc_client(addr: std::net::SocketAddr) -> StatsigForwardProxyClient<Channel> {
    StatsigForwardProxyClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// No SDK key appears whole anywhere in the metrics, and every key label is masked.
fn assert_no_key_leaks(metrics: &Metrics, keys: &[&str]) {
    let text = metrics.encode();
    for k in keys {
        assert!(!text.contains(k), "SDK key {k} leaked whole:\n{text}");
    }
    for s in scrape(metrics) {
        if let Some(k) = s.labels.get("key") {
            assert!(k.ends_with('…'), "unmasked key label {k:?}");
        }
    }
}

#[tokio::test]
async fn http_traffic_moves_requests_cache_and_fetch_metrics() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1000, payload(1000, true));
    // No background polls: every fetch below is one the test caused.
    let (p, m) = start_with_metrics(&spec_app(&up.url(), r#","poll_interval":"1h""#)).await;
    let c = client();
    let dcs_route = ("route", "download_config_specs");

    // Before any traffic the common pairs read 0.
    assert_eq!(
        value(
            &m,
            "fproxy_spec_requests_total",
            &[APP, dcs_route, ("status", "200")]
        ),
        0.0
    );

    let url = dcs(&p, &format!("/v1/download_config_specs/{KEY}.json"));
    for _ in 0..3 {
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    }
    let unknown = dcs(&p, &format!("/v1/download_config_specs/{UNKNOWN}.json"));
    for _ in 0..2 {
        assert_eq!(c.get(&unknown).send().await.unwrap().status(), 401);
    }
    assert_eq!(
        c.get(dcs(&p, "/v1/health")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(dcs(&p, "/v1/ready")).send().await.unwrap().status(),
        200
    );
    assert_eq!(c.get(dcs(&p, "/nope")).send().await.unwrap().status(), 404);

    let s = scrape(&m);
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    let requests = "fproxy_spec_requests_total";
    assert_eq!(get(requests, &[APP, dcs_route, ("status", "200")]), 3.0);
    assert_eq!(get(requests, &[APP, dcs_route, ("status", "401")]), 2.0);
    assert_eq!(
        get(requests, &[APP, ("route", "health"), ("status", "200")]),
        1.0
    );
    assert_eq!(
        get(requests, &[APP, ("route", "ready"), ("status", "200")]),
        1.0
    );
    assert_eq!(
        get(requests, &[APP, ("route", "not_found"), ("status", "404")]),
        1.0
    );

    // Each key's first request waited for its fetch; the unknown key's second was
    // answered from the rejected list; KEY's later two were hits.
    let cache = "fproxy_spec_cache_lookups_total";
    assert_eq!(get(cache, &[APP, ("result", "miss")]), 2.0);
    assert_eq!(get(cache, &[APP, ("result", "hit")]), 2.0);
    assert_eq!(get(cache, &[APP, ("result", "rejected")]), 1.0);

    let fetches = "fproxy_spec_upstream_fetches_total";
    assert_eq!(get(fetches, &[APP, ("result", "updated")]), 1.0);
    assert_eq!(get(fetches, &[APP, ("result", "unauthorized")]), 1.0);
    assert_eq!(get(fetches, &[APP, ("result", "error")]), 0.0);
    assert_eq!(
        get("fproxy_spec_upstream_fetch_duration_seconds_count", &[APP]),
        2.0
    );

    let key = masked(KEY);
    let key_labels = [APP, ("key", key.as_str())];
    assert_eq!(get("fproxy_spec_key_has_data", &key_labels), 1.0);
    assert_eq!(get("fproxy_spec_key_lcut", &key_labels), 1000.0);
    let since = get(
        "fproxy_spec_key_last_success_timestamp_seconds",
        &key_labels,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(
        (now - since).abs() < 60.0,
        "last success {since}, now {now}"
    );
    // The rejected key left the store, and its series with it.
    let gone = masked(UNKNOWN);
    assert_eq!(
        sample(
            &s,
            "fproxy_spec_key_has_data",
            &[APP, ("key", gone.as_str())]
        ),
        None
    );
    assert_no_key_leaks(&m, &[KEY, UNKNOWN]);
    p.stop().await;
}

#[tokio::test]
async fn grpc_calls_streams_and_propagation_are_measured() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let (p, m) = start_with_metrics(&grpc_app(
        &up.url(),
        r#","poll_interval":"50ms","max_streams":1"#,
    ))
    .await;
    let mut c = grpc_client(p.addr("spec")).await;
    let requests = "fproxy_spec_requests_total";
    let get = ("route", "get_config_spec");
    let stream_route = ("route", "stream_config_spec");

    c.get_config_spec(req(KEY)).await.unwrap();
    let denied = c.get_config_spec(req(UNKNOWN)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(value(&m, requests, &[APP, get, ("status", "OK")]), 1.0);
    assert_eq!(
        value(&m, requests, &[APP, get, ("status", "PERMISSION_DENIED")]),
        1.0
    );

    let active = "fproxy_spec_streams_active";
    assert_eq!(value(&m, active, &[APP]), 0.0);
    let mut stream = c.stream_config_spec(req(KEY)).await.unwrap().into_inner();
    within("first message", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&m, active, &[APP]), 1.0);
    // Over the cap: refused, counted, and not an active stream.
    let refused = c.stream_config_spec(req(KEY)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(
        value(
            &m,
            requests,
            &[APP, stream_route, ("status", "RESOURCE_EXHAUSTED")]
        ),
        1.0
    );
    assert_eq!(value(&m, active, &[APP]), 1.0);

    // An update pushed on the stream is timed from its arrival.
    let propagation = "fproxy_spec_update_propagation_seconds_count";
    assert_eq!(value(&m, propagation, &[APP]), 0.0);
    up.publish(KEY, 2, payload(2, false));
    let pushed = within("pushed update", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pushed.last_updated, 2);
    metric_reaches(&m, propagation, &[APP], 1.0).await;
    let key = masked(KEY);
    assert_eq!(
        value(&m, "fproxy_spec_key_lcut", &[APP, ("key", key.as_str())]),
        2.0
    );

    // The client leaves: the stream ends as cancelled and the gauge falls back.
    drop(stream);
    metric_reaches(&m, active, &[APP], 0.0).await;
    metric_reaches(
        &m,
        requests,
        &[APP, stream_route, ("status", "CANCELLED")],
        1.0,
    )
    .await;
    assert_no_key_leaks(&m, &[KEY, UNKNOWN]);
    drop(c);
    p.stop().await;
}

/// A spec app run directly (not through the daemon), for its `App::status()`.
async fn start_app(config: &str, metrics: Arc<Metrics>) -> SpecApp {
    let names: Vec<String> = Registry::default().names().map(String::from).collect();
    let config = Validator::new(names).parse(config).unwrap();
    let app = Arc::new(config.apps.into_iter().next().unwrap());
    let bound = app
        .addresses()
        .into_iter()
        .map(|a| (a, Bound::bind(a).unwrap()))
        .collect();
    SpecApp::start(app, bound, metrics)
}

#[tokio::test]
async fn status_counts_streams_per_key_and_shutdown_removes_every_series() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    up.publish(OTHER, 5, payload(5, true));
    let m = Arc::new(Metrics::new());
    let app = start_app(&grpc_app(&up.url(), ""), m.clone()).await;
    let addr = app.local_addrs()[0];
    let mut c = grpc_client(addr).await;
    let mut streams = Vec::new();
    for key in [KEY, KEY, OTHER] {
        let mut s = c.stream_config_spec(req(key)).await.unwrap().into_inner();
        within("first message", s.message()).await.unwrap().unwrap();
        streams.push(s);
    }

    let per_key = |app: &SpecApp| {
        let spec = app.status().spec.expect("a spec app reports spec status");
        let of = |k: &str| {
            spec.keys
                .iter()
                .find(|s| s.key == masked(k))
                .unwrap_or_else(|| panic!("{} not in status", masked(k)))
                .streams
        };
        (spec.streams, of(KEY), of(OTHER))
    };
    assert_eq!(per_key(&app), (3, 2, 1));
    assert_eq!(value(&m, "fproxy_spec_streams_active", &[APP]), 3.0);
    let status = app.status();
    assert!(status.ready, "{:?}", status.problems);
    let json = serde_json::to_string(&status).unwrap();
    assert!(!json.contains(KEY) && !json.contains(OTHER), "{json}");

    // One of KEY's streams goes: the server notices asynchronously.
    streams.remove(0);
    within("stream count", async {
        while per_key(&app) != (2, 1, 1) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(streams);
    within("no streams", async {
        while per_key(&app) != (0, 0, 0) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(value(&m, "fproxy_spec_streams_active", &[APP]), 0.0);
    drop(c);

    // Gone with its app: no spec series is left for it, per key or per app.
    within("shutdown", Box::new(app).shutdown()).await;
    let left: Vec<String> = scrape(&m)
        .into_iter()
        .filter(|s| s.metric.starts_with("fproxy_spec_") && s.labels.get("app") == Some("spec"))
        .map(|s| format!("{} {}", s.metric, s.labels))
        .collect();
    assert!(left.is_empty(), "series outlived their app: {left:?}");
}

#[tokio::test]
async fn evicted_and_dropped_keys_update_their_series() {
    let keys = [
        "secret-a-0123456789abcdefghij",
        "secret-b-0123456789abcdefghij",
        "secret-c-0123456789abcdefghij",
    ];
    let (up, _seen) = Upstream::start().await;
    for k in keys {
        up.publish(k, 1, payload(1, true));
    }
    let (p, m) = start_with_metrics(&spec_app(
        &up.url(),
        r#","max_sdk_keys":2,"poll_interval":"50ms","drop_unauthorized":true"#,
    ))
    .await;
    let c = client();
    for k in keys {
        let url = dcs(&p, &format!("/v1/download_config_specs/{k}.json"));
        assert_eq!(c.get(url).send().await.unwrap().status(), 200);
    }
    // The first poll round evicts "a", the least recently requested, and its series.
    metric_reaches(&m, "fproxy_spec_evicted_keys_total", &[APP], 1.0).await;
    let has_data = |k: &str| {
        let key = masked(k);
        sample(
            &scrape(&m),
            "fproxy_spec_key_has_data",
            &[APP, ("key", key.as_str())],
        )
    };
    assert_eq!(has_data(keys[0]), None);
    assert_eq!(has_data(keys[1]), Some(1.0));
    assert_eq!(has_data(keys[2]), Some(1.0));

    // Upstream stops accepting the keys; with drop_unauthorized they lose their data.
    up.fail_with(Some(401));
    let c_key = masked(keys[2]);
    metric_reaches(
        &m,
        "fproxy_spec_key_has_data",
        &[APP, ("key", c_key.as_str())],
        0.0,
    )
    .await;
    assert_eq!(
        value(&m, "fproxy_spec_key_lcut", &[APP, ("key", c_key.as_str())]),
        0.0
    );
    assert!(
        value(
            &m,
            "fproxy_spec_upstream_fetches_total",
            &[APP, ("result", "unauthorized")]
        ) >= 1.0
    );
    assert_no_key_leaks(&m, &keys);
    p.stop().await;
}
