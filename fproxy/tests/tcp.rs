//! The TCP app against real sockets on loopback.

mod common;

use std::io::ErrorKind;
use std::time::Instant;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn ping_through_the_proxy() {
    let backend = echo_backend("127.0.0.1:0").await;
    let p = Proxy::start(&config(&[app("a", &["127.0.0.1:0"], &[backend], "")])).await;
    // Larger than any buffer, so the copy loops many times each way.
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    ping(p.addr("a"), &payload).await.unwrap();
    ping(p.addr("a"), b"x").await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn round_robin_exact_order() {
    let targets = [
        tagged_backend(b'a').await,
        tagged_backend(b'b').await,
        tagged_backend(b'c').await,
    ];
    let p = Proxy::start(&config(&[app(
        "rr",
        &["127.0.0.1:0"],
        &targets,
        r#","strategy":"round_robin""#,
    )]))
    .await;
    let mut seen = Vec::new();
    for _ in 0..9 {
        seen.push(which(p.addr("rr")).await.unwrap().0);
    }
    assert_eq!(seen, b"abcabcabc");
    p.stop().await;
}

#[tokio::test]
async fn half_close_client_to_target() {
    // The backend reads to EOF, then answers with the byte count: the answer can only
    // arrive if the client's FIN reached it while the other direction stayed open.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {}", all.len()).as_bytes())
            .await
            .unwrap();
    });
    let p = Proxy::start(&config(&[app("hc", &["127.0.0.1:0"], &[backend], "")])).await;
    let mut c = TcpStream::connect(p.addr("hc")).await.unwrap();
    c.write_all(&[7u8; 100_000]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = String::new();
    within("answer after FIN", c.read_to_string(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, "got 100000");
    p.stop().await;
}

#[tokio::test]
async fn half_close_target_to_client() {
    // The backend says hello and closes its write side at once, then keeps reading:
    // the client must see EOF and still be able to send.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        let _ = tx.send(all);
    });
    let p = Proxy::start(&config(&[app("hc", &["127.0.0.1:0"], &[backend], "")])).await;
    let mut c = TcpStream::connect(p.addr("hc")).await.unwrap();
    let mut greeting = Vec::new();
    within("greeting then EOF", c.read_to_end(&mut greeting))
        .await
        .unwrap();
    assert_eq!(greeting, b"hello");
    c.write_all(b"still here").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(within("backend read", rx).await.unwrap(), b"still here");
    p.stop().await;
}

#[tokio::test]
async fn target_reset_mid_stream_resets_the_client() {
    // The backend sends part of a reply, then resets (SO_LINGER 0). A FIN to the
    // client would make the partial reply look complete.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // The client's request: the proxy's connect is complete (a reset before
        // it would fail the connect instead).
        let mut req = [0u8; 2];
        s.read_exact(&mut req).await.unwrap();
        s.write_all(b"partial").await.unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let p = Proxy::start(&config(&[app("rst", &["127.0.0.1:0"], &[backend], "")])).await;
    let mut c = TcpStream::connect(p.addr("rst")).await.unwrap();
    c.write_all(b"go").await.unwrap();
    let mut got = Vec::new();
    let r = within("client sees the end", c.read_to_end(&mut got)).await;
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "a target reset reached the client as a clean close after {got:?}"
    );
    let closed = p.scrape().value(
        "fproxy_tcp_connections_closed_total",
        &[("app", "rst"), ("reason", "target_error")],
    );
    assert_eq!(closed, 1.0);
    p.stop().await;
}

#[tokio::test]
async fn dead_target_is_skipped() {
    let live = tagged_backend(b'L').await;
    let p = Proxy::start(&config(&[app(
        "d",
        &["127.0.0.1:0"],
        &[dead_addr(), live],
        "",
    )]))
    .await;
    for _ in 0..6 {
        assert_eq!(which(p.addr("d")).await.unwrap().0, b'L');
    }
    p.stop().await;
}

#[tokio::test]
async fn all_targets_dead_resets_fast() {
    // A long deadline: the reset must come from running out of targets, not time.
    let extra = r#","connect_deadline":"30s""#;
    let p = Proxy::start(&config(&[app(
        "dead",
        &["127.0.0.1:0"],
        &[dead_addr(), dead_addr()],
        extra,
    )]))
    .await;
    let started = Instant::now();
    let mut c = TcpStream::connect(p.addr("dead")).await.unwrap();
    let mut buf = [0u8; 1];
    let r = within("reset", c.read(&mut buf)).await;
    assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    assert!(
        started.elapsed().as_secs() < 10,
        "reset took {:?}",
        started.elapsed()
    );
    p.stop().await;
}

#[tokio::test]
async fn localhost_name_target() {
    let backend = echo_backend("127.0.0.1:0").await;
    let cfg = format!(
        r#"{{"apps":[{{"name":"n","listen":["127.0.0.1:0"],"targets":["localhost:{}"]}}]}}"#,
        backend.port()
    );
    let p = Proxy::start(&cfg).await;
    // localhost also resolves to ::1, where nothing listens: that address is tried
    // and skipped as needed.
    for _ in 0..3 {
        ping(p.addr("n"), b"by name").await.unwrap();
    }
    p.stop().await;
}

#[tokio::test]
async fn ipv6_listener_and_target() {
    let backend = echo_backend("[::1]:0").await;
    let p = Proxy::start(&config(&[app("six", &["[::1]:0"], &[backend], "")])).await;
    let addr = p.addr("six");
    assert!(addr.is_ipv6());
    ping(addr, b"over IPv6").await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn over_the_limit_is_refused_fast() {
    let backend = echo_backend("127.0.0.1:0").await;
    let p = Proxy::start(&config(&[app(
        "lim",
        &["127.0.0.1:0"],
        &[backend],
        r#","max_connections":2"#,
    )]))
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(p.addr("lim")).await.unwrap();
        roundtrip(&mut c, b"hold").await.unwrap();
        held.push(c);
    }
    let mut third = TcpStream::connect(p.addr("lim")).await.unwrap();
    let mut buf = [0u8; 1];
    let r = within("refusal", third.read(&mut buf)).await;
    assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset));
    // Closing one frees a slot. The proxy notices the close asynchronously, so try
    // a bounded number of times on loopback.
    held.pop();
    let mut ok = false;
    for _ in 0..100 {
        if ping(p.addr("lim"), b"again").await.is_ok() {
            ok = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(ok, "a freed slot was never reused");
    drop(held);
    p.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let backend = echo_backend("127.0.0.1:0").await;
    let p = Proxy::start(&config(&[app(
        "idle",
        &["127.0.0.1:0"],
        &[backend],
        r#","idle_timeout":"200ms""#,
    )]))
    .await;
    let mut c = TcpStream::connect(p.addr("idle")).await.unwrap();
    roundtrip(&mut c, b"active").await.unwrap();
    let mut rest = Vec::new();
    // The proxy closes the idle connection: the client sees EOF.
    within("idle close", c.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    p.stop().await;
}
