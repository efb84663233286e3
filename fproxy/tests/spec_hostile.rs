//! The spec app against hostile clients: SDK keys that try to leave their URL path
//! segment, floods of invented keys, and an upstream that sends too much.

mod common;

use std::time::Instant;

use common::upstream::*;
use common::*;
use fproxy::spec::grpc::proto::statsig_forward_proxy_client::StatsigForwardProxyClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

const APP: (&str, &str) = ("app", "spec");

/// Sends `request` as is (no client normalises its path) and returns the status.
async fn raw_status(p: &Proxy, request: &str) -> u16 {
    let mut s = TcpStream::connect(p.addr("spec")).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("raw response", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// The app's gRPC address (on 127.0.0.2; HTTP is on 127.0.0.1).
fn grpc_addr(p: &Proxy) -> std::net::SocketAddr {
    *p.first.listeners["spec"]
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.2")
        .unwrap()
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n")
}

/// Keys with `/ \ ? # %`, dots, spaces or too many characters, in paths,
/// headers (GET and POST) and gRPC requests: refused before upstream is asked.
#[tokio::test]
async fn hostile_keys_never_reach_upstream() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let p = Proxy::start(&spec_app(&up.url(), r#","grpc_listen":["127.0.0.2:0"]"#)).await;

    let long = "k".repeat(300);
    let paths = [
        "/v1/download_config_specs/..%2f..%2fadmin.json".to_string(),
        "/v1/download_config_specs/%2e%2e.json".into(),
        "/v1/download_config_specs/%2e%2e%2f%2e%2e%2fget_id_lists.json".into(),
        "/v2/download_config_specs/..%5cadmin.json".into(),
        "/v1/download_config_specs/..\\..\\admin.json".into(),
        "/v1/download_config_specs/k%3Fx=1.json".into(),
        "/v1/download_config_specs/k%23frag.json".into(),
        "/v1/download_config_specs/k%20x.json".into(),
        "/v1/download_config_specs/...json".into(),
        format!("/v1/download_config_specs/{long}.json"),
    ];
    for path in &paths {
        let status = raw_status(&p, &get(path, "")).await;
        assert!(status == 401 || status == 400, "{path}: {status}");
    }
    let header_keys = [
        "../../admin?x=",
        "a#b",
        "%2e%2e",
        "..\\x",
        "k?sinceTime=1",
        "k x",
        long.as_str(),
    ];
    for k in header_keys {
        let path = format!("/v1/download_config_specs/{KEY}.json");
        let status = raw_status(&p, &get(&path, &format!("statsig-api-key: {k}\r\n"))).await;
        assert_eq!(status, 401, "header key {k:?}");
        let post = format!(
            "POST /v2/download_config_specs HTTP/1.1\r\nhost: x\r\nconnection: close\r\nstatsig-api-key: {k}\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        assert_eq!(raw_status(&p, &post).await, 401, "POST header key {k:?}");
    }
    let grpc = grpc_addr(&p);
    let mut c = StatsigForwardProxyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for k in header_keys.iter().chain(&["a/b", "%2e%2e%2fx"]) {
        let err = c.get_config_spec(req(k)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{k:?}");
        let err = c.stream_config_spec(req(k)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{k:?}");
    }
    let asked = up.state.lock().unwrap().requests.clone();
    assert!(asked.is_empty(), "upstream was asked {asked:?}");

    // A good key still works, and upstream sees exactly its path.
    let r = client()
        .get(dcs(&p, &format!("/v1/download_config_specs/{KEY}.json")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let asked = up.state.lock().unwrap().requests.clone();
    assert_eq!(asked, [format!("/v1/download_config_specs/{KEY}.json")]);
    drop(c);
    p.stop().await;
}

#[test]
fn hostile_warm_keys_are_config_errors() {
    let v = fproxy::Validator::new(["p2c"]);
    for k in ["a#b", "%2e%2e", "a\\\\b", "k?x", ".."] {
        let cfg = spec_app("http://u", &format!(r#","warm_keys":["secret-ok","{k}"]"#));
        let e = v.parse(&cfg).unwrap_err().to_string();
        assert!(e.contains("warm_keys[1]"), "{k}: {e}");
        assert!(!e.contains(k), "the error repeats the key: {e}");
    }
}

/// An upstream body past `max_spec_size` fails the fetch as soon as the cap is
/// passed (an endless body would otherwise be read until the request timeout,
/// and held whole), is counted as an error and leaves nothing cached.
#[tokio::test]
async fn oversized_upstream_bodies_fail_the_fetch() {
    let (up, _seen) = Upstream::start().await;
    // With a declared length over the cap: refused before reading.
    up.publish(KEY, 1, payload(1, true) + &" ".repeat(2 << 20));
    let p = Proxy::start(&spec_app(
        &up.url(),
        r#","max_spec_size":1048576,"request_timeout":"60s""#,
    ))
    .await;
    let c = client();
    let r = c
        .get(dcs(&p, &format!("/v1/download_config_specs/{KEY}.json")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let errors = ("result", "error");
    assert_eq!(
        p.scrape()
            .value("fproxy_spec_upstream_fetches_total", &[APP, errors]),
        1.0
    );

    // Without a length, never ending: cut off at the cap, within the test's
    // patience (the request timeout is a minute).
    up.state.lock().unwrap().endless = true;
    let started = Instant::now();
    let r = within(
        "an answer despite an endless upstream body",
        c.get(dcs(&p, "/v1/download_config_specs/secret-other.json"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed().as_secs() < 30);
    assert_eq!(
        p.scrape()
            .value("fproxy_spec_upstream_fetches_total", &[APP, errors]),
        2.0
    );
    let sent = up
        .state
        .lock()
        .unwrap()
        .endless_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent >= 1 << 20, "upstream sent only {sent} bytes");
    p.stop().await;
}

/// The most first fetches a budget of `rate` a second (burst `rate`) allows over
/// `elapsed`.
fn allowed(rate: f64, elapsed: std::time::Duration) -> usize {
    (rate + rate * elapsed.as_secs_f64()).ceil() as usize + 1
}

/// Hundreds of invented keys at once, over HTTP then gRPC: upstream is asked
/// only as often as `new_key_fetches_per_second` allows; the rest get 503 with
/// Retry-After (UNAVAILABLE over gRPC) and are counted.
#[tokio::test]
async fn invented_keys_are_bounded_by_the_new_key_budget() {
    let (up, _seen) = Upstream::start().await;
    let p = Proxy::start(&spec_app(
        &up.url(),
        r#","grpc_listen":["127.0.0.2:0"],"new_key_fetches_per_second":5"#,
    ))
    .await;
    let c = client();
    let started = Instant::now();
    let gets: Vec<_> = (0..300)
        .map(|i| {
            c.get(dcs(
                &p,
                &format!("/v1/download_config_specs/secret-made-up-{i}.json"),
            ))
            .send()
        })
        .collect();
    let mut over = 0;
    for r in join_all(gets).await {
        let r = r.unwrap();
        match r.status().as_u16() {
            401 => {}
            503 => {
                assert_eq!(r.headers()["retry-after"], "1");
                over += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    let asked = up.state.lock().unwrap().requests.len();
    let bound = allowed(5.0, started.elapsed());
    assert!(asked <= bound, "{asked} upstream requests, budget {bound}");
    assert_eq!(asked + over, 300);
    let refusals = "fproxy_spec_new_key_refusals_total";
    assert_eq!(p.scrape().value(refusals, &[APP]), over as f64);

    let grpc = grpc_addr(&p);
    let c = StatsigForwardProxyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let before = up.state.lock().unwrap().requests.len();
    let started = Instant::now();
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let mut c = c.clone();
            async move { c.get_config_spec(req(&format!("secret-grpc-{i}"))).await }
        })
        .collect();
    let mut unavailable = 0;
    for r in join_all(calls).await {
        match r.unwrap_err().code() {
            Code::PermissionDenied => {}
            Code::Unavailable => unavailable += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let asked = up.state.lock().unwrap().requests.len() - before;
    let bound = allowed(5.0, started.elapsed());
    assert!(
        asked <= bound,
        "{asked} upstream requests over gRPC, budget {bound}"
    );
    assert!(unavailable > 0);
    assert_eq!(
        p.scrape().value(refusals, &[APP]),
        (over + unavailable) as f64
    );
    drop(c);
    p.stop().await;
}

/// `max_sdk_keys` holds as keys arrive, not only at the next poll round.
#[tokio::test]
async fn max_sdk_keys_holds_between_polls() {
    let (up, _seen) = Upstream::start().await;
    // Masked keys show their start: distinct starts keep their series apart.
    let keys: Vec<String> = (0..6).map(|i| format!("{i}-secret-real")).collect();
    for k in &keys {
        up.publish(k, 1, payload(1, true));
    }
    let p = Proxy::start(&spec_app(
        &up.url(),
        r#","max_sdk_keys":2,"poll_interval":"1h""#,
    ))
    .await;
    let c = client();
    for k in &keys {
        let r = c
            .get(dcs(&p, &format!("/v1/download_config_specs/{k}.json")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let scrape = p.scrape();
    assert_eq!(scrape.value("fproxy_spec_evicted_keys_total", &[APP]), 4.0);
    let with_data = scrape
        .0
        .samples
        .iter()
        .filter(|s| s.metric == "fproxy_spec_key_has_data")
        .count();
    assert_eq!(with_data, 2, "keys kept");
    p.stop().await;
}

/// While upstream is down, a flood of invented keys (which never get data)
/// replaces only invented keys: real keys keep serving their last good spec.
#[tokio::test]
async fn invented_keys_do_not_evict_real_keys_during_an_outage() {
    let (up, _seen) = Upstream::start().await;
    let keys: Vec<String> = (0..2).map(|i| format!("{i}-secret-real")).collect();
    for k in &keys {
        up.publish(k, 1, payload(1, true));
    }
    // Room for the real keys and one more; the flood stays within the default
    // new-key budget (20/s, burst 20), so every invented key gets an entry.
    let p = Proxy::start(&spec_app(
        &up.url(),
        r#","max_sdk_keys":3,"poll_interval":"1h""#,
    ))
    .await;
    let c = client();
    let status = |k: String| {
        let c = c.clone();
        let url = dcs(&p, &format!("/v1/download_config_specs/{k}.json"));
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    for k in &keys {
        assert_eq!(status(k.clone()).await, 200);
    }
    up.fail_with(Some(503));
    for i in 0..10 {
        assert_eq!(status(format!("{i}-secret-invented")).await, 503);
    }
    let evicted = p.scrape().value("fproxy_spec_evicted_keys_total", &[APP]);
    assert_eq!(
        evicted, 9.0,
        "each invented key after the first replaces one"
    );
    for k in &keys {
        assert_eq!(status(k.clone()).await, 200, "{k} lost its spec");
    }
    p.stop().await;
}
