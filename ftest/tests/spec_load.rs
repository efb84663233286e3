//! `ftest spec-load` against a real in-process fproxy spec app fed by a real
//! `ftest spec-upstream`: HTTP load (plain and gzip), gRPC streams timing an update,
//! and the failures (unknown key, nothing listening).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::KEY;
use ftest::cmd::spec_load::http_load::{self, Failure, Length};
use ftest::cmd::spec_load::streams;
use ftest::cmd::spec_load::{HttpPlan, HttpReport, StreamsPlan, StreamsReport};

fn http_plan(addr: SocketAddr, key: &str, requests: u64, gzip: bool) -> HttpPlan {
    HttpPlan {
        addr,
        target: addr.to_string(),
        host: addr.to_string(),
        path: format!("/v1/download_config_specs/{key}.json"),
        sdk_key: key.into(),
        concurrency: 4,
        length: Length::Requests(requests),
        gzip,
        timeout: Duration::from_secs(5),
    }
}

async fn load(plan: &HttpPlan) -> HttpReport {
    http_load::run(plan, false, std::future::pending())
        .await
        .unwrap()
}

fn http_text(r: &HttpReport) -> String {
    let mut out = Vec::new();
    r.write_text(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn streams_plan(addr: SocketAddr, key: &str, n: usize, publish: Option<String>) -> StreamsPlan {
    StreamsPlan {
        addr,
        target: addr.to_string(),
        sdk_key: key.into(),
        streams: n,
        connections: 4,
        publish,
        rss_pid: None,
        timeout: Duration::from_secs(10),
    }
}

async fn streams_run(plan: &StreamsPlan) -> StreamsReport {
    streams::run(plan, false, std::future::pending())
        .await
        .unwrap()
}

fn streams_text(r: &StreamsReport) -> String {
    let mut out = Vec::new();
    r.write_text(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_load_plain_and_gzip_through_fproxy() {
    let up = common::spec_upstream(50, None).await;
    let p = common::spec_proxy(&up.url()).await;
    let size = up.current().body.len() as u64;

    let r = load(&http_plan(p.http, KEY, 200, false)).await;
    assert_eq!((r.ok, r.failed), (200, 0), "{}", http_text(&r));
    assert_eq!(
        r.body_bytes,
        Some(size),
        "every answer is the whole payload"
    );
    assert_eq!(r.connections, 4, "one kept-alive connection per worker");
    let l = r.latency_us.as_ref().unwrap();
    assert!(l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max);
    let t = http_text(&r);
    assert!(t.contains("requests:    200 ok, 0 failed"), "{t}");
    assert!(t.contains(&format!("({size} bytes each)")), "{t}");
    assert!(!t.contains(KEY), "the SDK key is shown whole: {t}");
    r.verdict().unwrap();

    let z = load(&http_plan(p.http, KEY, 100, true)).await;
    assert_eq!((z.ok, z.failed), (100, 0), "{}", http_text(&z));
    let zsize = z.body_bytes.unwrap();
    assert!(zsize > 0 && zsize < size / 3, "gzip {zsize} of {size}");

    // fproxy served all of that from its cache: upstream sent the payload once.
    assert_eq!(up.counts().full.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_load_counts_unknown_keys_unreachable_and_wrong_encoding() {
    let up = common::spec_upstream(5, None).await;
    let p = common::spec_proxy(&up.url()).await;

    let r = load(&http_plan(p.http, "secret-nobody-knows", 20, false)).await;
    assert_eq!((r.ok, r.failed), (0, 20));
    assert_eq!(r.errors_of(Failure::Status), 20);
    let e = r.verdict().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("spec-load {}: 20 of 20 requests failed", p.http)),
        "{e}"
    );
    assert!(e.contains("HTTP 401 Unauthorized: Unauthorized"), "{e}");
    assert!(!e.contains("secret-nobody-knows"), "key shown whole: {e}");

    let dead = common::dead_addr();
    let r = load(&http_plan(dead, KEY, 10, false)).await;
    assert_eq!(r.errors_of(Failure::Refused), 10, "{}", http_text(&r));
    assert!(
        r.error_examples[&Failure::Refused]
            .contains(&format!("connect {dead}: connection refused")),
        "{}",
        http_text(&r)
    );

    // spec-upstream itself never compresses: asking for gzip is a failed check.
    let r = load(&http_plan(up.addr, KEY, 5, true)).await;
    assert_eq!(r.errors_of(Failure::Encoding), 5, "{}", http_text(&r));
    assert!(
        r.error_examples[&Failure::Encoding].contains("asked for gzip, got Content-Encoding none")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_time_a_published_update() {
    let up = common::spec_upstream(50, None).await;
    let p = common::spec_proxy(&up.url()).await;
    let v1 = up.current();
    let mut plan = streams_plan(p.grpc, KEY, 30, Some(format!("{}/__publish", up.url())));
    plan.rss_pid = Some(std::process::id());
    let r = streams_run(&plan).await;
    let t = streams_text(&r);
    r.verdict().unwrap();
    let v2 = up.current();
    assert_eq!(v2.number, 2, "published exactly once");
    assert_eq!(
        (r.opened, r.received, r.missed, r.ended),
        (30, 30, 0, 0),
        "{t}"
    );
    assert_eq!(r.connections, 4);
    assert_eq!(r.first_message_bytes, Some(v1.body.len()));
    assert_eq!(r.baseline_lcut, Some(v1.lcut));
    assert_eq!(r.published_lcut, Some(v2.lcut));
    assert_eq!(r.update_lcut, Some(v2.lcut));
    let first = r.delay_from_first_us.as_ref().unwrap();
    let publish = r.delay_from_publish_us.as_ref().unwrap();
    assert_eq!(first.min, 0, "the first delivery is the reference");
    assert!(publish.min >= first.min && publish.max >= first.max, "{t}");
    let mem = r.memory.as_ref().unwrap();
    assert!(mem.before.rss_kib > 0 && mem.before.peak_kib >= mem.before.rss_kib);
    let after = mem.after_update.unwrap();
    assert!(after.cpu_s >= mem.before.cpu_s && after.cpu_s > 0.0, "{t}");
    let update_s = r.update_s.unwrap();
    assert!(
        update_s * 1e6 * 1.01 >= publish.max as f64, // HDR rounds up by at most 0.1%
        "the update phase outlasts every delay: {t}"
    );
    assert!(r.update_cpu_s.is_some() && r.open_cpu_s.is_some(), "{t}");
    assert!(t.contains("received:    30 of 30 streams"), "{t}");
    assert!(t.contains("from publish ms:"), "{t}");
    assert!(t.contains("s during the update"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_wait_for_an_update_published_by_someone_else() {
    let up = common::spec_upstream(5, Some(Duration::from_millis(300))).await;
    let p = common::spec_proxy(&up.url()).await;
    let r = streams_run(&streams_plan(p.grpc, KEY, 8, None)).await;
    let t = streams_text(&r);
    r.verdict().unwrap();
    assert_eq!((r.opened, r.received), (8, 8), "{t}");
    assert!(r.update_lcut > r.baseline_lcut, "{t}");
    assert!(r.delay_from_publish_us.is_none());
    assert!(r.delay_from_first_us.is_some());
    assert!(t.contains("waited for an update newer than lcut"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_fail_for_unknown_keys_and_unreachable_addresses() {
    let up = common::spec_upstream(5, None).await;
    let p = common::spec_proxy(&up.url()).await;
    let r = streams_run(&streams_plan(
        p.grpc,
        "secret-nobody-knows",
        6,
        Some(format!("{}/__publish", up.url())),
    ))
    .await;
    assert_eq!(r.opened, 0);
    assert_eq!(
        r.open_failures.get("PermissionDenied"),
        Some(&6),
        "{}",
        streams_text(&r)
    );
    let e = r.verdict().unwrap_err().to_string();
    assert!(
        e.contains("6 of 6 streams did not open: PermissionDenied"),
        "{e}"
    );
    assert_eq!(
        up.current().number,
        1,
        "nothing published when streams failed"
    );

    let dead = common::dead_addr();
    let e = streams::run(
        &streams_plan(dead, KEY, 2, None),
        false,
        std::future::pending(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!("connect {dead} (gRPC connection ")),
        "{e}"
    );
    assert!(e.contains("connection refused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exit_codes_and_json() {
    let up = common::spec_upstream(5, None).await;
    let p = common::spec_proxy(&up.url()).await;
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ftest"))
            .arg("spec-load")
            .args(args)
            .output()
            .await
            .unwrap()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let http = p.http.to_string();
    let grpc = p.grpc.to_string();

    let ok = run(s(&[
        &http,
        "--sdk-key",
        KEY,
        "--http",
        "-n",
        "50",
        "-c",
        "2",
        "--json",
        "-q",
    ]))
    .await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(
        (j["mode"].as_str(), j["ok"].as_u64()),
        (Some("http"), Some(50))
    );
    assert_eq!(j["errors"]["status"], 0);

    let bad = run(s(&[
        &http,
        "--sdk-key",
        "secret-nobody-knows",
        "--http",
        "-n",
        "3",
        "-q",
    ]))
    .await;
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.starts_with(&format!("error: spec-load {http}: 3 of 3 requests failed")),
        "{err}"
    );

    let publish = format!("{}/__publish", up.url());
    let ok = run(s(&[
        &grpc,
        "--sdk-key",
        KEY,
        "--grpc-streams",
        "5",
        "--connections",
        "2",
        "--publish",
        &publish,
        "--json",
        "-q",
    ]))
    .await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(
        (j["mode"].as_str(), j["received"].as_u64()),
        (Some("grpc"), Some(5))
    );

    let dead = common::dead_addr().to_string();
    let bad = run(s(&[&dead, "--sdk-key", KEY, "--grpc-streams", "2", "-q"])).await;
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.starts_with(&format!("error: connect {dead} (gRPC connection ")),
        "{err}"
    );

    // Flags of the other mode, or no mode: usage errors.
    let usage = run(s(&[
        &http,
        "--sdk-key",
        KEY,
        "--http",
        "--publish",
        &publish,
    ]))
    .await;
    assert_eq!(usage.status.code(), Some(2));
    let usage = run(s(&[&http, "--sdk-key", KEY])).await;
    assert_eq!(usage.status.code(), Some(2));
    let usage = run(s(&[
        &grpc,
        "--sdk-key",
        KEY,
        "--grpc-streams",
        "2",
        "--gzip",
    ]))
    .await;
    assert_eq!(usage.status.code(), Some(2));
}
