//! Target health: active checks, passive ejection, fail-open, reloads.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers health probes (`PING`) with `PONG` while `up`, `NOPE`
/// otherwise, and answers any other first message with its tag.
async fn backend(tag: u8, up: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    serve_backend(l, tag, up, None);
    addr
}

/// Serves `backend`'s protocol on `l`, reporting each probe on `probed`.
fn serve_backend(
    l: TcpListener,
    tag: u8,
    up: Arc<AtomicBool>,
    probed: Option<tokio::sync::mpsc::UnboundedSender<()>>,
) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (up, probed) = (up.clone(), probed.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                if buf[..n].starts_with(b"PING") {
                    let answer: &[u8] = if up.load(Ordering::SeqCst) {
                        b"PONG"
                    } else {
                        b"NOPE"
                    };
                    let _ = s.write_all(answer).await;
                    if let Some(p) = probed {
                        let _ = p.send(());
                    }
                } else {
                    let _ = s.write_all(&[tag]).await;
                }
            });
        }
    });
}

/// Which backend a new connection through the proxy reaches.
async fn reach(addr: SocketAddr) -> u8 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut tag = [0u8; 1];
    within("tag", s.read_exact(&mut tag)).await.unwrap();
    tag[0]
}

/// Polls (bounded, on loopback) until `n` connections in a row reach only `want`.
async fn settles_on(addr: SocketAddr, want: &[u8], n: usize) {
    within("traffic to settle", async {
        let mut streak = 0;
        while streak < n {
            if want.contains(&reach(addr).await) {
                streak += 1;
            } else {
                streak = 0;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    })
    .await
}

const CHECK: &str = r#","strategy":"round_robin","health_check":{"interval":"30ms","timeout":"500ms","rise":2,"fall":2,"send":"PING","expect":"PONG"}"#;

#[tokio::test]
async fn active_checks_take_a_target_out_and_bring_it_back() {
    let (a_up, b_up) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let a = backend(b'a', a_up).await;
    let b = backend(b'b', b_up.clone()).await;
    let p = Proxy::start(&config(&[app("h", &["127.0.0.1:0"], &[a, b], CHECK)])).await;
    let addr = p.addr("h");
    settles_on(addr, b"ab", 4).await;

    b_up.store(false, Ordering::SeqCst);
    settles_on(addr, b"a", 20).await;

    b_up.store(true, Ordering::SeqCst);
    within("b back", async {
        while reach(addr).await != b'b' {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    p.stop().await;
}

#[tokio::test]
async fn every_target_down_fails_open() {
    // Backends that fail every check and report each probe, so the test can wait.
    let (probed, mut probes) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut targets = Vec::new();
    for tag in [b'a', b'b'] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        targets.push(l.local_addr().unwrap());
        serve_backend(
            l,
            tag,
            Arc::new(AtomicBool::new(false)),
            Some(probed.clone()),
        );
    }
    let p = Proxy::start(&config(&[app("h", &["127.0.0.1:0"], &targets, CHECK)])).await;
    // Both fail their checks (fall 2: wait for three rounds of two probes)...
    within("health probes", async {
        for _ in 0..6 {
            probes.recv().await.unwrap();
        }
    })
    .await;
    // ...yet both accept connections: clients are still served.
    for _ in 0..10 {
        assert!([b'a', b'b'].contains(&reach(p.addr("h")).await));
    }
    p.stop().await;
}

#[tokio::test]
async fn failing_target_is_ejected_then_returns() {
    let a = backend(b'a', Arc::new(AtomicBool::new(true))).await;
    // "b" is a port nothing listens on yet.
    let b_port = free_port();
    let b: SocketAddr = ([127, 0, 0, 1], b_port).into();
    let extra = r#","strategy":"round_robin","passive":{"consecutive_failures":2,"base_ejection":"400ms","max_ejected_percent":50}"#;
    let p = Proxy::start(&config(&[app("e", &["127.0.0.1:0"], &[a, b], extra)])).await;
    let addr = p.addr("e");
    // Every connection succeeds (failover to "a"); after two failures "b" is ejected.
    for _ in 0..6 {
        assert_eq!(reach(addr).await, b'a');
    }
    // "b" comes up, but is still ejected: traffic stays on "a" for now...
    let l = TcpListener::bind(b).await.unwrap();
    serve_backend(l, b'b', Arc::new(AtomicBool::new(true)), None);
    assert_eq!(reach(addr).await, b'a');
    // ...and once the ejection ends it gets its share again.
    within("b back after ejection", async {
        while reach(addr).await != b'b' {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    p.stop().await;
}

#[tokio::test]
async fn health_survives_a_reload_for_kept_targets() {
    let a = backend(b'a', Arc::new(AtomicBool::new(true))).await;
    let b = backend(b'b', Arc::new(AtomicBool::new(false))).await;
    let mut p = Proxy::start(&config(&[app("h", &["127.0.0.1:0"], &[a, b], CHECK)])).await;
    let addr = p.addr("h");
    settles_on(addr, b"a", 10).await;
    // A reload that keeps both targets (and changes something else) keeps "b" down
    // from the first connection on, without waiting for new checks.
    let changed = CHECK.replace("\"timeout\":\"500ms\"", "\"timeout\":\"400ms\"");
    p.reload_ok(&config(&[app("h", &["127.0.0.1:0"], &[a, b], &changed)]))
        .await;
    for _ in 0..10 {
        assert_eq!(reach(addr).await, b'a');
    }
    p.stop().await;
}

#[tokio::test]
async fn least_connections_avoids_busy_targets() {
    let a = tagged_backend(b'a').await;
    let b = tagged_backend(b'b').await;
    let extra = r#","strategy":"least_connections""#;
    let p = Proxy::start(&config(&[app("lc", &["127.0.0.1:0"], &[a, b], extra)])).await;
    let addr = p.addr("lc");
    // Hold connections open: each new one goes where fewer are open, so the counts
    // stay level whatever order the ties break in.
    let mut held = Vec::new();
    let mut counts = [0usize; 2];
    for _ in 0..10 {
        let (tag, s) = which(addr).await.unwrap();
        counts[(tag - b'a') as usize] += 1;
        held.push(s);
    }
    assert_eq!(counts, [5, 5]);
    drop(held);
    p.stop().await;
}
