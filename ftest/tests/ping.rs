//! `ftest ping` through a real fproxy to real `ftest echo` backends, and failures.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use ftest::cmd::ping::{self, Args, Summary};
use ftest::exchange::Failure;
use ftest::net::TargetArgs;
use ftest::probe::Identity;

fn args(addr: &str, count: u64, size: usize) -> Args {
    Args {
        target: TargetArgs {
            addr: addr.to_string(),
            ipv4: false,
            ipv6: false,
        },
        count,
        size,
        interval: Duration::ZERO,
        timeout: Duration::from_secs(2),
    }
}

async fn run(addr: SocketAddr, a: &Args) -> (Summary, String) {
    let mut out = Vec::new();
    let s = ping::ping(addr, &a.target.addr, a, &mut out, std::future::pending())
        .await
        .unwrap();
    (s, String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_through_fproxy_and_names_each_backend() {
    let e = common::backends(3).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(1), e.addr(2)]).await;
    let a = args(&p.addr.to_string(), 6, 1000);
    let (s, out) = run(p.addr, &a).await;
    assert!(s.failed.is_empty(), "{out}");
    assert_eq!(s.ok.len(), 6);
    // Round robin: each backend answered twice.
    for id in ["b1", "b2", "b3"] {
        let n =
            s.ok.iter()
                .filter(|t| t.backend == Identity::Backend(id.into()))
                .count();
        assert_eq!(n, 2, "{id} in {out}");
    }
    assert!(
        out.contains(&format!("1000 bytes from {}: seq=1 backend=b", p.addr)),
        "{out}"
    );
    assert!(
        out.contains("6 tries, 6 ok, 0 failed, 0.0% failed"),
        "{out}"
    );
    assert!(out.contains("rtt min/avg/max/mdev = "), "{out}");
    assert!(out.contains("backends: b1 x2, b2 x2, b3 x2"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_and_ipv6() {
    let e = ftest::cmd::echo::start(&["[::1]:0".into()], &["six".into()])
        .await
        .unwrap();
    let v6 = e.addr(0);
    let (s, out) = run(v6, &args(&v6.to_string(), 2, 64)).await;
    assert_eq!(s.ok.len(), 2, "{out}");
    assert_eq!(s.ok[0].backend, Identity::Backend("six".into()));

    let e4 = common::backends(1).await;
    let name = format!("localhost:{}", e4.addr(0).port());
    let mut a = args(&name, 1, 64);
    a.target.ipv4 = true;
    let addr = a.target.resolve_one().await.unwrap();
    assert_eq!(addr, e4.addr(0));
    let (s, out) = run(addr, &a).await;
    assert_eq!(s.ok.len(), 1, "{out}");
    assert!(
        out.starts_with(&format!("PING {name} ({addr}): 64 bytes")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_echo_is_a_mismatch() {
    // The probe is 11 bytes, so stream offset 20 is payload byte 9.
    let (bad, _t) = common::corrupting_echo(20).await;
    let p = common::proxy_to(&[bad]).await;
    let (s, out) = run(p.addr, &args(&p.addr.to_string(), 2, 64)).await;
    assert_eq!(s.failed.len(), 2, "{out}");
    assert!(s.failed.iter().all(|e| e.kind == Failure::Mismatch));
    assert!(out.contains("byte 9 of 64 differs"), "{out}");
    // It came back as a plain echo (no ftest id), flipped.
    assert!(out.contains("2 tries, 0 ok, 2 failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_addresses_fail_with_where() {
    let dead = common::dead_addr();
    let (s, out) = run(dead, &args(&dead.to_string(), 1, 64)).await;
    assert_eq!(s.failed.len(), 1);
    assert_eq!(s.failed[0].kind, Failure::Refused);
    assert_eq!(
        s.failed[0].message,
        format!("connect {dead}: connection refused")
    );
    assert!(out.contains("failures: refused 1"), "{out}");

    // Through fproxy: it accepts, finds no target, and resets the client.
    let p = common::proxy_to(&[dead]).await;
    let (s, out) = run(p.addr, &args(&p.addr.to_string(), 1, 64)).await;
    assert_eq!(s.failed.len(), 1, "{out}");
    assert!(
        matches!(s.failed[0].kind, Failure::Reset | Failure::ShortRead),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_reads_and_timeouts() {
    let (closing, _t) = common::closing_echo(20).await;
    let (s, out) = run(closing, &args(&closing.to_string(), 1, 64)).await;
    assert_eq!(s.failed[0].kind, Failure::ShortRead, "{out}");
    assert!(out.contains("got 9 of 64 bytes"), "{out}");

    let (silent, _t) = common::silent().await;
    let mut a = args(&silent.to_string(), 1, 64);
    a.timeout = Duration::from_millis(100);
    let (s, out) = run(silent, &a).await;
    assert_eq!(s.failed[0].kind, Failure::Timeout, "{out}");
    assert!(
        out.contains(&format!("no complete echo from {silent} within 100 ms")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_echo_server_works_without_an_id() {
    let (plain, _t) = common::plain_echo().await;
    let (s, out) = run(plain, &args(&plain.to_string(), 1, 64)).await;
    assert_eq!(s.ok.len(), 1, "{out}");
    assert_eq!(s.ok[0].backend, Identity::PlainEcho);
}
