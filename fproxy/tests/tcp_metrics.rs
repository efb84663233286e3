//! TCP app metrics move with real traffic: scraped from the daemon and parsed with
//! a Prometheus text parser.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Scrapes until `cond` holds (bounded by WAIT; loopback only).
async fn eventually(proxy: &Proxy, cond: impl Fn(&prom::Scrape) -> bool) -> prom::Scrape {
    within("metrics to settle", async {
        loop {
            let m = proxy.scrape();
            if cond(&m) {
                return m;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn counters_follow_connections_bytes_and_failures() {
    let live = echo_backend("127.0.0.1:0").await;
    let dead = dead_addr();
    let cfg = config(&[app(
        "m",
        &["127.0.0.1:0"],
        &[dead, live],
        r#","strategy":"round_robin","passive":{"consecutive_failures":0},"max_connections":2"#,
    )]);
    let proxy = Proxy::start(&cfg).await;
    let addr = proxy.addr("m");
    let (live_s, dead_s) = (live.to_string(), dead.to_string());

    // Four pings of 1000 bytes: round robin starts two of them on the dead target,
    // which fail over to the live one.
    for _ in 0..4 {
        ping(addr, &[7u8; 1000]).await.unwrap();
    }
    // Two held open, then a third is over the limit.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        roundtrip(&mut s, b"x").await.unwrap();
        held.push(s);
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(over.read(&mut buf).await, Ok(0) | Err(_)));

    let app = [("app", "m")];
    // A connection's task counts its close just after the client sees it; wait
    // for the four pings to be counted before reading the rest.
    let closed = |m: &prom::Scrape| {
        m.value(
            "fproxy_tcp_connections_closed_total",
            &[("target", &live_s), ("reason", "closed")],
        )
    };
    let m = eventually(&proxy, |m| {
        closed(m) == 4.0 && m.value("fproxy_tcp_connections_active", &app) == 2.0
    })
    .await;
    assert_eq!(m.value("fproxy_tcp_connections_accepted_total", &app), 7.0);
    assert_eq!(
        m.value(
            "fproxy_tcp_connections_refused_total",
            &[("app", "m"), ("reason", "limit")]
        ),
        1.0
    );
    assert_eq!(m.value("fproxy_tcp_connect_retries_total", &app), 3.0);
    fn on(t: &str) -> [(&'static str, &str); 2] {
        [("app", "m"), ("target", t)]
    }
    assert_eq!(
        m.value("fproxy_tcp_target_connections_total", &on(&live_s)),
        6.0
    );
    assert_eq!(
        m.value("fproxy_tcp_target_connections_active", &on(&live_s)),
        2.0
    );
    assert_eq!(
        m.value("fproxy_tcp_target_connections_total", &on(&dead_s)),
        0.0
    );
    assert_eq!(
        m.value("fproxy_tcp_connect_attempts_total", &on(&dead_s)),
        3.0
    );
    assert_eq!(
        m.value(
            "fproxy_tcp_connect_failures_total",
            &[("target", &dead_s), ("reason", "refused")]
        ),
        3.0
    );
    assert_eq!(
        m.histogram_count("fproxy_tcp_connect_duration_seconds", &on(&live_s)),
        6
    );
    let bytes = |d: &str| {
        m.value(
            "fproxy_tcp_bytes_total",
            &[("target", &live_s), ("direction", d)],
        )
    };
    // Held connections' bytes count while they are still open.
    assert_eq!(bytes("in"), 4002.0);
    assert_eq!(bytes("out"), 4002.0);

    // Closing the held ones brings the gauges back to zero.
    for mut s in held {
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    }
    let m = eventually(&proxy, |m| {
        m.value("fproxy_tcp_connections_active", &app) == 0.0
    })
    .await;
    assert_eq!(
        m.value("fproxy_tcp_target_connections_active", &on(&live_s)),
        0.0
    );
    assert_eq!(closed(&m), 6.0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_removed_target_takes_its_series_with_it() {
    let a = echo_backend("127.0.0.1:0").await;
    let b = echo_backend("127.0.0.1:0").await;
    let mut proxy = Proxy::start(&config(&[app("m", &["127.0.0.1:0"], &[a, b], "")])).await;
    let addr = proxy.addr("m");
    for _ in 0..4 {
        ping(addr, b"hi").await.unwrap();
    }
    let series = |t: &str| {
        proxy
            .scrape()
            .get("fproxy_tcp_target_connections_total", &[("target", t)])
    };
    assert!(series(&b.to_string()).is_some());
    let listen = proxy.first.listeners["m"][0].to_string();
    proxy
        .reload_ok(&config(&[app("m", &[&listen], &[a], "")]))
        .await;
    let m = proxy.scrape();
    assert!(m
        .get(
            "fproxy_tcp_target_connections_total",
            &[("target", &b.to_string())]
        )
        .is_none());
    assert!(m
        .get(
            "fproxy_tcp_endpoint_healthy",
            &[("address", &b.to_string())]
        )
        .is_none());
    assert!(m
        .get(
            "fproxy_tcp_target_connections_total",
            &[("target", &a.to_string())]
        )
        .is_some());
    proxy.stop().await;
}

#[tokio::test]
async fn a_weight_change_keeps_the_endpoint_series() {
    let a = echo_backend("127.0.0.1:0").await;
    let weighted = |w: u32| {
        format!(
            r#"{{"apps":[{{"name":"m","listen":["127.0.0.1:0"],"targets":[{{"address":"{a}","weight":{w}}}]}}]}}"#
        )
    };
    let mut proxy = Proxy::start(&weighted(1)).await;
    let addr = a.to_string();
    let healthy = |p: &Proxy| {
        p.scrape()
            .get("fproxy_tcp_endpoint_healthy", &[("address", &addr)])
    };
    assert_eq!(healthy(&proxy), Some(1.0));
    let listen = proxy.first.listeners["m"][0].to_string();
    proxy
        .reload_ok(&weighted(2).replace("127.0.0.1:0", &listen))
        .await;
    // The new slot writes to the same series; retiring the old one must not drop it.
    assert_eq!(healthy(&proxy), Some(1.0));
    ping(proxy.addr("m"), b"hi").await.unwrap();
    assert_eq!(
        proxy
            .scrape()
            .value("fproxy_tcp_target_connections_total", &[("target", &addr)]),
        1.0
    );
    proxy.stop().await;
}
