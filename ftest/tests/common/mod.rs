//! Test fixtures: real `ftest echo` backends, an in-process fproxy, and small
//! misbehaving servers for the failure cases. Everything binds port 0.

#![allow(dead_code)] // each test crate uses a different subset

use std::net::SocketAddr;

use ftest::cmd::echo::{self, Echo};
use ftest::cmd::spec_upstream::{self, Options, Source, SpecUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// `n` echo backends on 127.0.0.1, ids b1..bn.
pub async fn backends(n: usize) -> Echo {
    let listen = vec!["127.0.0.1:0".to_string(); n];
    let ids: Vec<String> = (1..=n).map(|i| format!("b{i}")).collect();
    echo::start(&listen, &ids)
        .await
        .expect("start echo backends")
}

/// An fproxy daemon running one app in this process.
pub struct Proxy {
    pub daemon: fproxy::Daemon,
    pub addr: SocketAddr,
}

/// Starts fproxy on 127.0.0.1:0 forwarding round robin to `targets` (host:port
/// strings).
pub async fn proxy(targets: &[String]) -> Proxy {
    let targets: Vec<serde_json::Value> = targets.iter().map(|t| t.as_str().into()).collect();
    start_proxy("round_robin", targets).await
}

/// Starts fproxy on 127.0.0.1:0 with `strategy` over `targets` and their weights.
pub async fn proxy_with(strategy: &str, targets: &[(SocketAddr, u32)]) -> Proxy {
    let targets = targets
        .iter()
        .map(|(addr, weight)| serde_json::json!({"address": addr.to_string(), "weight": weight}))
        .collect();
    start_proxy(strategy, targets).await
}

async fn start_proxy(strategy: &str, targets: Vec<serde_json::Value>) -> Proxy {
    let json = serde_json::json!({
        "apps": [{
            "name": "t",
            "listen": ["127.0.0.1:0"],
            "targets": targets,
            "strategy": strategy,
            "connect_timeout": "500ms",
            "connect_deadline": "1s",
            "drain_timeout": "1s",
        }]
    });
    let mut daemon = fproxy::Daemon::new(fproxy::Registry::default());
    let config = daemon
        .validator()
        .parse(&json.to_string())
        .expect("valid config");
    let applied = daemon.apply(config).await.expect("apply config");
    let addr = applied.listeners["t"][0];
    Proxy { daemon, addr }
}

pub async fn proxy_to(targets: &[SocketAddr]) -> Proxy {
    let t: Vec<String> = targets.iter().map(ToString::to_string).collect();
    proxy(&t).await
}

/// An address nothing listens on: bound to get a free port, then closed.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// Runs `serve` for every connection to a fresh 127.0.0.1 port.
pub async fn server<F, Fut>(serve: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    (addr, task)
}

/// Echoes, but flips the byte at stream offset `at` of every connection.
pub async fn corrupting_echo(at: usize) -> (SocketAddr, JoinHandle<()>) {
    server(move |mut s| async move {
        let mut buf = vec![0u8; 65536];
        let mut pos = 0usize;
        loop {
            let n = match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if (pos..pos + n).contains(&at) {
                buf[at - pos] ^= 0x01;
            }
            pos += n;
            if s.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Echoes the first `limit` bytes of a connection, then sends FIN (and reads on,
/// so unread data does not turn the close into a reset).
pub async fn closing_echo(limit: usize) -> (SocketAddr, JoinHandle<()>) {
    server(move |mut s| async move {
        let mut buf = vec![0u8; limit];
        if s.read_exact(&mut buf).await.is_ok() {
            let _ = s.write_all(&buf).await;
            let _ = s.shutdown().await;
            let mut sink = [0u8; 4096];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    return;
                }
            }
        }
    })
    .await
}

/// Accepts and reads, never answers.
pub async fn silent() -> (SocketAddr, JoinHandle<()>) {
    server(|mut s| async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
}

/// A plain echo server that knows nothing of the probe.
pub async fn plain_echo() -> (SocketAddr, JoinHandle<()>) {
    server(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// An SDK key the fake upstream serves.
pub const KEY: &str = "secret-ftest-key-0123456789";

/// `ftest spec-upstream` on 127.0.0.1:0 serving `gates` generated gates to [`KEY`].
pub async fn spec_upstream(
    gates: usize,
    publish_every: Option<std::time::Duration>,
) -> SpecUpstream {
    spec_upstream::start(&Options {
        listen: "127.0.0.1:0".into(),
        sdk_keys: vec![KEY.into()],
        source: Source::Gates(gates),
        lcut: None,
        publish_every,
    })
    .await
    .expect("start spec-upstream")
}

/// An fproxy spec app in this process: HTTP on 127.0.0.1, gRPC on 127.0.0.2.
pub struct SpecProxy {
    pub daemon: fproxy::Daemon,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// Starts a spec app polling `upstream` every 100 ms.
pub async fn spec_proxy(upstream: &str) -> SpecProxy {
    let json = serde_json::json!({
        "apps": [{
            "name": "spec",
            "kind": "spec",
            "listen": ["127.0.0.1:0"],
            "grpc_listen": ["127.0.0.2:0"],
            "upstream": upstream,
            "poll_interval": "100ms",
            "drain_timeout": "1s",
        }]
    });
    let mut daemon = fproxy::Daemon::new(fproxy::Registry::default());
    let config = daemon
        .validator()
        .parse(&json.to_string())
        .expect("valid config");
    let applied = daemon.apply(config).await.expect("apply config");
    let addrs = &applied.listeners["spec"];
    let pick = |last: u8| {
        addrs
            .iter()
            .copied()
            .find(|a| matches!(a.ip(), std::net::IpAddr::V4(v4) if v4.octets()[3] == last))
            .unwrap_or_else(|| panic!("no 127.0.0.{last} listener in {addrs:?}"))
    };
    SpecProxy {
        http: pick(1),
        grpc: pick(2),
        daemon,
    }
}
