//! `ftest echo` over real sockets: the probe, plain echo, ids and bind errors.

mod common;

use ftest::cmd::echo;
use ftest::exchange::round_trip;
use ftest::probe::{self, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_answers_with_the_id_then_echoes() {
    let e = echo::start(&["127.0.0.1:0".into()], &["blue".into()])
        .await
        .unwrap();
    let mut s = TcpStream::connect(e.addr(0)).await.unwrap();
    s.write_all(b"\0FTEST-ID?\nhello").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ftest-echo id=blue\nhello");
    assert_eq!(e.backends[0].id, "blue");
    let bytes = e.backends[0]
        .stats
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(bytes, 5, "the probe is not counted as echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_first_bytes_are_echoed_untouched() {
    let e = common::backends(1).await;
    for first in [
        &b"hello\n"[..],
        b"\0FTEST-IX?\n",
        b"ftest-echo id=x\n",
        b"\0",
    ] {
        let mut s = TcpStream::connect(e.addr(0)).await.unwrap();
        s.write_all(first).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, first, "{}", probe::show_bytes(first));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_echo_byte_for_byte_and_half_close_passes_on() {
    let e = common::backends(1).await;
    let addr = e.addr(0);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let sent = ftest::payload::pattern(4 << 20, 9);
    let mut buf = vec![0; sent.len()];
    let (mut r, mut w) = s.split();
    round_trip(&mut r, &mut w, &sent, &mut buf, addr)
        .await
        .unwrap();
    w.shutdown().await.unwrap();
    assert_eq!(r.read(&mut [0u8; 8]).await.unwrap(), 0, "FIN passed back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ids_are_the_bound_addresses_and_names_bind_each_address() {
    let e = echo::start(&["127.0.0.1:0".into(), "[::1]:0".into()], &[])
        .await
        .unwrap();
    assert_eq!(e.backends[0].id, e.addr(0).to_string());
    assert_eq!(e.backends[1].id, e.addr(1).to_string());
    assert!(e.addr(1).is_ipv6());
    for b in &e.backends {
        let mut s = BufReader::new(TcpStream::connect(b.addrs[0]).await.unwrap());
        s.get_mut().write_all(probe::PROBE).await.unwrap();
        let who = probe::read_answer(&mut s).await.unwrap();
        assert_eq!(who, Identity::Backend(b.id.clone()));
    }
    // A host name is one backend on every address it resolves to.
    let named = echo::start(&["localhost:0".into()], &[]).await.unwrap();
    let b = &named.backends[0];
    assert_eq!(b.id, format!("localhost:{}", b.addrs[0].port()));
    assert!(b.addrs.iter().all(|a| a.ip().is_loopback()));
    assert_eq!(
        b.stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors_say_where() {
    let taken = common::backends(1).await;
    let addr = taken.addr(0).to_string();
    let err = echo::start(std::slice::from_ref(&addr), &[])
        .await
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        format!("listen {addr}: address already in use")
    );
    let err = echo::start(
        &["127.0.0.1:0".into(), "127.0.0.1:0".into()],
        &["x".into(), "x".into()],
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("two backends have the id \"x\""),
        "{err:#}"
    );
    let err = echo::start(&["nowhere".into()], &[]).await.unwrap_err();
    assert!(format!("{err:#}").contains("has no port"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_connections_and_probes() {
    let e = common::backends(1).await;
    let who = ftest::cmd::balancer::ask(e.addr(0), std::time::Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(who, Identity::Backend("b1".into()));
    let st = &e.backends[0].stats;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(st.connections.load(Relaxed), 1);
    assert_eq!(st.probes.load(Relaxed), 1);
}
