//! `ftest simulate` against a real fproxy and `ftest echo`, and each error kind.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use ftest::cmd::simulate::{simulate, Length, Plan, ProgressMode, Report};
use ftest::exchange::Failure;

fn plan(addr: SocketAddr, concurrency: usize, length: Length) -> Plan {
    Plan {
        addr,
        target: addr.to_string(),
        concurrency,
        length,
        size: 64,
        rate: None,
        new_connection_per_request: false,
        timeout: Duration::from_secs(2),
    }
}

async fn run(p: &Plan) -> Report {
    simulate(p, ProgressMode::Quiet, std::future::pending())
        .await
        .unwrap()
}

fn text(r: &Report) -> String {
    let mut out = Vec::new();
    r.write_text(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_load_through_fproxy() {
    let e = common::backends(3).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(1), e.addr(2)]).await;
    let mut pl = plan(p.addr, 8, Length::Requests(3000));
    pl.size = 1500;
    let r = run(&pl).await;
    assert_eq!(
        (r.ok, r.failed, r.requests),
        (3000, 0, 3000),
        "{}",
        text(&r)
    );
    assert_eq!(r.connections, 8, "one kept-alive connection per worker");
    let l = r.latency_us.as_ref().unwrap();
    assert!(
        l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max
    );
    assert!(r.requests_per_sec > 0.0);
    assert!(r.errors.values().all(|&n| n == 0));
    let t = text(&r);
    assert!(t.contains("requests:    3000 ok, 0 failed"), "{t}");
    assert!(t.contains("errors:      none"), "{t}");
    // Every backend got connections (8 connections, round robin over 3).
    use std::sync::atomic::Ordering::Relaxed;
    let conns: Vec<u64> = e
        .backends
        .iter()
        .map(|b| b.stats.connections.load(Relaxed))
        .collect();
    assert_eq!(conns.iter().sum::<u64>(), 8, "{conns:?}");
    assert!(conns.iter().all(|&c| c >= 2), "{conns:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connection_per_request_opens_one_each() {
    let e = common::backends(2).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(1)]).await;
    let mut pl = plan(p.addr, 4, Length::Requests(400));
    pl.new_connection_per_request = true;
    let r = run(&pl).await;
    assert_eq!((r.ok, r.failed), (400, 0), "{}", text(&r));
    assert_eq!(r.connections, 400);
    use std::sync::atomic::Ordering::Relaxed;
    let served: u64 = e
        .backends
        .iter()
        .map(|b| b.stats.connections.load(Relaxed))
        .sum();
    assert_eq!(served, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rate_keeps_the_schedule() {
    let e = common::backends(1).await;
    let mut pl = plan(e.addr(0), 4, Length::Requests(50));
    pl.rate = Some(500.0);
    let r = run(&pl).await;
    assert_eq!(r.ok, 50, "{}", text(&r));
    // Request 49 is due 98 ms after the start: the run cannot be shorter.
    assert!(r.elapsed_s >= 0.098, "{}", r.elapsed_s);
    assert!(text(&r).contains("open loop at 500 req/s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_a_stall_against_every_request_it_delayed() {
    // One worker, 200 req/s, a backend that takes 100 ms per answer: requests queue
    // behind each other, and their latency from the schedule must grow with it.
    let (slow, _t) = common::server(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(&buf).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut pl = plan(slow, 1, Length::Requests(5));
    pl.rate = Some(200.0);
    let r = run(&pl).await;
    assert_eq!(r.ok, 5, "{}", text(&r));
    let l = r.latency_us.unwrap();
    // The 5th request was due at 20 ms and answered after ~500 ms: ~480 ms late.
    // A closed-loop measurement would report ~100 ms for every request.
    assert!(l.max >= 400_000, "max {} us", l.max);
    assert!(l.min >= 100_000, "min {} us", l.min);

    // Closed loop on the same server hides the queueing: every request ~100 ms.
    pl.rate = None;
    let closed = run(&pl).await.latency_us.unwrap();
    assert!(closed.max < 350_000, "closed-loop max {} us", closed.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bounds_the_run() {
    let e = common::backends(1).await;
    let r = run(&plan(
        e.addr(0),
        2,
        Length::Duration(Duration::from_millis(300)),
    ))
    .await;
    assert!(r.ok > 0 && r.failed == 0, "{}", text(&r));
    assert!(r.elapsed_s >= 0.3 && r.elapsed_s < 2.3, "{}", r.elapsed_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_is_refused_and_said_where() {
    let dead = common::dead_addr();
    let r = run(&plan(dead, 2, Length::Requests(20))).await;
    assert_eq!((r.ok, r.failed), (0, 20));
    assert_eq!(r.errors_of(Failure::Refused), 20);
    assert!(r.latency_us.is_none());
    let t = text(&r);
    assert!(t.contains("errors:      20 refused"), "{t}");
    assert!(
        t.contains(&format!(
            "first refused: connect {dead}: connection refused"
        )),
        "{t}"
    );

    // Through fproxy with no live target: fproxy resets each client.
    let p = common::proxy_to(&[dead]).await;
    let r = run(&plan(p.addr, 2, Length::Requests(10))).await;
    assert_eq!(r.failed, 10, "{}", text(&r));
    assert_eq!(
        r.errors_of(Failure::Reset) + r.errors_of(Failure::ShortRead),
        10,
        "{}",
        text(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_short_read_and_timeout_are_counted_by_kind() {
    let (bad, _t1) = common::corrupting_echo(10).await;
    let r = run(&plan(bad, 2, Length::Requests(10))).await;
    assert_eq!(r.errors_of(Failure::Mismatch), 10, "{}", text(&r));
    assert!(r.error_examples[&Failure::Mismatch].contains("byte 10 of 64 differs"));

    let (closing, _t2) = common::closing_echo(30).await;
    let r = run(&plan(closing, 2, Length::Requests(6))).await;
    assert_eq!(r.errors_of(Failure::ShortRead), 6, "{}", text(&r));

    let (silent, _t3) = common::silent().await;
    let mut pl = plan(silent, 3, Length::Requests(3));
    pl.timeout = Duration::from_millis(100);
    let r = run(&pl).await;
    assert_eq!(r.errors_of(Failure::Timeout), 3, "{}", text(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_the_run_early_with_a_report() {
    let e = common::backends(1).await;
    let pl = plan(e.addr(0), 2, Length::Duration(Duration::from_secs(60)));
    let r = simulate(&pl, ProgressMode::Quiet, std::future::ready(()))
        .await
        .unwrap();
    assert!(r.interrupted);
    assert!(r.elapsed_s < 5.0, "{}", r.elapsed_s);
    assert_eq!(r.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_has_the_documented_fields() {
    let e = common::backends(1).await;
    let r = run(&plan(e.addr(0), 1, Length::Requests(10))).await;
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["ok"], 10);
    assert_eq!(v["errors"]["short_read"], 0);
    assert_eq!(v["connection_mode"], "keep-alive");
    for k in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(v["latency_us"][k].is_u64(), "{k}: {v}");
    }
}
