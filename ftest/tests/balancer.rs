//! `ftest balancer` against a real fproxy: balanced, unbalanced and unreachable.

mod common;

use std::time::Duration;

use ftest::cmd::balancer::{judge, measure, print, Expect};
use ftest::exchange::Failure;
use ftest::probe::Identity;

const LIMIT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fproxy_round_robin_holds() {
    let e = common::backends(3).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(1), e.addr(2)]).await;
    let d = measure(p.addr, 30, LIMIT).await;
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    for id in ["b1", "b2", "b3"] {
        assert_eq!(d.count_of(id), 10);
    }
    for expect in [Expect::RoundRobin, Expect::Even, Expect::Any] {
        let v = judge(&d, expect, Some(3));
        assert!(v.holds, "{expect:?}: {v:?}");
    }
    let v = judge(&d, Expect::RoundRobin, None);
    let mut out = Vec::new();
    print(&mut out, "proxy", &d, Expect::RoundRobin, &v).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("order: ABCABCABC"), "{out}");
    assert!(
        out.contains("expect round-robin: holds: every connection"),
        "{out}"
    );
    assert!(out.contains("b1 ") && out.contains("33.3%"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doubled_target_is_unbalanced() {
    let e = common::backends(2).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(0), e.addr(1)]).await;
    let d = measure(p.addr, 300, LIMIT).await;
    assert_eq!(d.count_of("b1"), 200);
    assert_eq!(d.count_of("b2"), 100);
    let rr = judge(&d, Expect::RoundRobin, None);
    assert!(!rr.holds, "{rr:?}");
    assert!(rr.reason.contains("but the cycle"), "{rr:?}");
    let even = judge(&d, Expect::Even, None);
    assert!(!even.holds, "{even:?}");
    assert!(even.reason.contains("chi-square 33.33"), "{even:?}");
    let mut out = Vec::new();
    print(&mut out, "proxy", &d, Expect::Even, &even).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("expect even: DOES NOT HOLD"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_breaks_the_cycle_through_failover() {
    let e = common::backends(2).await;
    let dead = common::dead_addr();
    let p = common::proxy_to(&[e.addr(0), dead, e.addr(1)]).await;
    let d = measure(p.addr, 12, LIMIT).await;
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    // fproxy fails over from the dead target to the next: b2 gets two turns.
    assert_eq!(d.count_of("b1"), 4);
    assert_eq!(d.count_of("b2"), 8);
    assert!(!judge(&d, Expect::RoundRobin, None).holds);
    assert!(!judge(&d, Expect::Any, Some(3)).holds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_connections_fail_the_judgement() {
    let dead = common::dead_addr();
    let d = measure(dead, 3, LIMIT).await;
    assert_eq!(d.failed.len(), 3);
    assert_eq!(d.failed[0].0, 1);
    assert_eq!(d.failed[0].1.kind, Failure::Refused);
    let v = judge(&d, Expect::Any, None);
    assert_eq!(v.reason, "3 of 3 connections failed");
    let mut out = Vec::new();
    print(&mut out, &dead.to_string(), &d, Expect::Any, &v).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains(&format!(
            "connection 1: connect {dead}: connection refused (refused)"
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_echo_and_single_backends() {
    let (plain, _t) = common::plain_echo().await;
    let d = measure(plain, 4, LIMIT).await;
    assert_eq!(d.backends, vec![Identity::PlainEcho]);
    assert!(judge(&d, Expect::Any, None).holds);
    assert!(!judge(&d, Expect::Single, None).holds);

    let e = common::backends(1).await;
    let p = common::proxy_to(&[e.addr(0)]).await;
    let d = measure(p.addr, 4, LIMIT).await;
    assert!(judge(&d, Expect::Single, None).holds);
    let v = judge(&d, Expect::RoundRobin, None);
    assert!(!v.holds && v.reason.contains("only 1 backend"), "{v:?}");
}
