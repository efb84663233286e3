//! `ftest balancer` against a real fproxy: balanced, unbalanced and unreachable,
//! and each strategy judged by the expectation named for it.

mod common;

use std::time::Duration;

use std::net::SocketAddr;

use ftest::cmd::balancer::{
    judge, loopback_sources, measure, measure_from, print, Check, Expect, Verdict,
};
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

fn check(expect: Expect, weights: &[u32]) -> Check {
    Check {
        expect,
        weights: weights.to_vec(),
        ..Check::default()
    }
}

/// Measures and judges a random strategy. A fair one fails a p >= 0.001 test once
/// in 1000 runs; a second, independent sample makes a false failure of this test
/// one in a million, while a real skew fails both.
async fn judge_random(addr: SocketAddr, n: usize, check: &Check) -> Verdict {
    let mut v = check.judge(&measure(addr, n, LIMIT).await);
    if !v.holds {
        v = check.judge(&measure(addr, n, LIMIT).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fproxy_smooth_weighted_round_robin_holds() {
    let e = common::backends(3).await;
    let p = common::proxy_with(
        "round_robin",
        &[(e.addr(0), 5), (e.addr(1), 1), (e.addr(2), 1)],
    )
    .await;
    let d = measure(p.addr, 70, LIMIT).await;
    assert_eq!(
        [d.count_of("b1"), d.count_of("b2"), d.count_of("b3")],
        [50, 10, 10]
    );
    let weighted = check(Expect::RoundRobin, &[5, 1, 1]);
    let v = weighted.judge(&d);
    assert_eq!(
        v.reason,
        "every cycle of 7 connections gave b1 5, b2 1, b3 1 in the smooth order AABACAA (10 cycles)"
    );
    // Without weights it is no plain cycle, and far from even.
    assert!(!judge(&d, Expect::RoundRobin, None).holds);
    assert!(!judge(&d, Expect::Even, None).holds);
    let mut out = Vec::new();
    print(
        &mut out,
        "proxy",
        &d,
        Expect::RoundRobin,
        &weighted.judge(&d),
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("order: AABACAAAABACAA"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fproxy_weighted_random_follows_the_weights() {
    let e = common::backends(2).await;
    let p = common::proxy_with("random", &[(e.addr(0), 3), (e.addr(1), 1)]).await;
    for expect in [Expect::Random, Expect::Even] {
        let v = judge_random(p.addr, 400, &check(expect, &[3, 1])).await;
        assert!(v.holds, "{expect:?}: {v:?}");
        assert!(
            v.reason.contains("counts/expected for weights 3,1"),
            "{v:?}"
        );
    }
    // 3:1 over 400 is chi-square 100 against an even split.
    let d = measure(p.addr, 400, LIMIT).await;
    let v = judge(&d, Expect::Random, None);
    assert!(!v.holds && v.reason.contains("an even balancer"), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fproxy_least_connections_takes_turns_whatever_the_weights() {
    let e = common::backends(3).await;
    // Weights count only against open connections, and one at a time there are none.
    let p = common::proxy_with(
        "least_connections",
        &[(e.addr(0), 5), (e.addr(1), 1), (e.addr(2), 1)],
    )
    .await;
    let d = measure(p.addr, 30, LIMIT).await;
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    for id in ["b1", "b2", "b3"] {
        assert_eq!(d.count_of(id), 10, "{id}");
    }
    let v = judge(&d, Expect::LeastConnections, Some(3));
    assert!(v.holds, "{v:?}");
    assert!(v.reason.contains("counts 10..10 over 3 backends"), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fproxy_p2c_looks_even() {
    let e = common::backends(3).await;
    let targets = [(e.addr(0), 1), (e.addr(1), 1), (e.addr(2), 1)];
    let p = common::proxy_with("p2c", &targets).await;
    let v = judge_random(p.addr, 150, &check(Expect::P2c, &[])).await;
    assert!(v.holds, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_and_least_connections_fail_against_weighted_round_robin() {
    let e = common::backends(2).await;
    let p = common::proxy_with("round_robin", &[(e.addr(0), 3), (e.addr(1), 1)]).await;
    let d = measure(p.addr, 200, LIMIT).await;
    let v = judge(&d, Expect::P2c, None);
    assert!(!v.holds && v.reason.contains("chi-square 50.00"), "{v:?}");
    // a a b a: after the second connection a is two ahead of b.
    let v = judge(&d, Expect::LeastConnections, None);
    assert_eq!(
        v.reason,
        "after connection 2, b1 had 2 connections and b2 0: ties between idle backends that take turns never put one two ahead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fproxy_consistent_hash_keeps_each_source_on_its_backend() {
    let e = common::backends(3).await;
    let targets = [(e.addr(0), 1), (e.addr(1), 1), (e.addr(2), 1)];
    let p = common::proxy_with("consistent_hash", &targets).await;

    let one = measure(p.addr, 10, LIMIT).await;
    let v = judge(&one, Expect::ConsistentHash, None);
    assert!(
        v.holds
            && v.reason
                .starts_with("all 10 connections from this client went to b"),
        "{v:?}"
    );

    let d = measure_from(p.addr, 64, LIMIT, &loopback_sources(16)).await;
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    let v = judge(&d, Expect::ConsistentHash, None);
    assert!(v.holds, "{v:?}");
    // 16 sources all on one of 3 backends: 3^-15.
    assert!(d.backends.len() >= 2, "{:?}", d.counts);
    assert!(!judge(&d, Expect::Single, None).holds);
    let mut out = Vec::new();
    print(&mut out, "proxy", &d, Expect::ConsistentHash, &v).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("64 connections, one after another, from 16 source addresses"),
        "{out}"
    );
    assert!(out.contains("from 127.0.0.16  "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_fails_against_round_robin() {
    let e = common::backends(3).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(1), e.addr(2)]).await;
    let one = measure(p.addr, 6, LIMIT).await;
    let v = judge(&one, Expect::ConsistentHash, None);
    assert_eq!(
        v.reason,
        "connections from this client went to b1 (connection 1) and to b2 (connection 2): a hash of the client address keeps one backend"
    );
    // 3 sources over 3 round-robin backends: a plain 1 2 3 1 2 3 turn of the sources
    // would line up with the cycle; going back and forth gives 127.0.0.3 connections
    // 3 and 4 in a row.
    let d = measure_from(p.addr, 12, LIMIT, &loopback_sources(3)).await;
    assert!(d.failed.is_empty(), "{:?}", d.failed);
    let v = judge(&d, Expect::ConsistentHash, None);
    assert_eq!(
        v.reason,
        "connections from 127.0.0.3 went to b3 (connection 3) and to b1 (connection 4): a hash of the client address keeps one backend"
    );
}
