//! The TCP app against hostile clients and operator faults: strangers on its ports,
//! running out of file descriptors, floods of refused clients.

mod common;

use std::net::SocketAddr;

use common::bin::Bin;
use common::*;
use fproxy::{Daemon, Registry};
use socket2::{Domain, Protocol, Socket, Type};

/// A stranger's listener on `addr` that shares ports the way a second fproxy would
/// (SO_REUSEADDR + SO_REUSEPORT).
fn foreign_listener(addr: SocketAddr) -> std::net::TcpListener {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(128).unwrap();
    s.into()
}

/// Connects `n` clients to `addr` and checks that `foreign` accepted every one:
/// nothing else shares its port.
fn foreign_takes_all(foreign: &std::net::TcpListener, addr: SocketAddr, n: usize) {
    let clients: Vec<_> = (0..n)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    foreign.set_nonblocking(true).unwrap();
    let mut accepted = 0;
    while foreign.accept().is_ok() {
        accepted += 1;
    }
    assert_eq!(accepted, clients.len(), "another listener took connections");
}

async fn apply(daemon: &mut Daemon, json: &str) -> Result<fproxy::Applied, String> {
    let config = daemon.validator().parse(json).unwrap();
    daemon.apply(config).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_port_held_by_another_process_is_refused_at_start() {
    let addr = SocketAddr::from(([127, 0, 0, 31], free_port_on([127, 0, 0, 31])));
    let foreign = foreign_listener(addr);
    let backend = echo_backend("127.0.0.1:0").await;
    let mut daemon = Daemon::new(Registry::default());
    let error = apply(
        &mut daemon,
        &config(&[app("a", &[&addr.to_string()], &[backend], "")]),
    )
    .await
    .expect_err("started on a port another process listens on");
    assert!(
        error.contains(&format!("{addr} is already in use by another process")),
        "{error}"
    );
    assert!(error.contains("app \"a\""), "{error}");
    foreign_takes_all(&foreign, addr, 20);
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_reload_onto_a_port_held_by_another_process_is_refused() {
    let addr = SocketAddr::from(([127, 0, 0, 32], free_port_on([127, 0, 0, 32])));
    let backend = echo_backend("127.0.0.1:0").await;
    let mut p = Proxy::start(&config(&[app("a", &["127.0.0.1:0"], &[backend], "")])).await;
    let foreign = foreign_listener(addr);
    // A wildcard address on the same port would take the same connections.
    for listen in [addr.to_string(), format!("0.0.0.0:{}", addr.port())] {
        let next = config(&[
            app("a", &["127.0.0.1:0"], &[backend], ""),
            app("b", &[&listen], &[backend], ""),
        ]);
        match p.reload(&next).await {
            fproxy::Event::Refused { error } => {
                assert!(
                    error
                        .to_string()
                        .contains("is already in use by another process"),
                    "{error}"
                )
            }
            other => panic!("shared a stranger's port: {other:?}"),
        }
    }
    foreign_takes_all(&foreign, addr, 20);
    ping(p.addr("a"), b"still serving").await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn own_ports_still_move_between_apps_and_kinds() {
    let addr = SocketAddr::from(([127, 0, 0, 33], free_port_on([127, 0, 0, 33])));
    let at = addr.to_string();
    let backend = echo_backend("127.0.0.1:0").await;
    let mut p = Proxy::start(&config(&[app("a", &[&at], &[backend], "")])).await;
    ping(addr, b"a").await.unwrap();
    // The port moves to another app in one reload: the new listener joins the old
    // one (both this process's) before the old one retires.
    p.reload_ok(&config(&[app("b", &[&at], &[backend], "")]))
        .await;
    ping(addr, b"b").await.unwrap();
    // And to an app of another kind under the same name.
    let spec = format!(r#"{{"apps":[{{"name":"b","kind":"spec","listen":["{at}"]}}]}}"#);
    p.reload_ok(&spec).await;
    let tcp_again = p
        .reload_ok(&config(&[app("b", &[&at], &[backend], "")]))
        .await;
    assert_eq!(tcp_again.listeners["b"], [addr]);
    ping(addr, b"tcp again").await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn an_admin_port_held_by_another_process_is_refused() {
    let addr = SocketAddr::from(([127, 0, 0, 34], free_port_on([127, 0, 0, 34])));
    let foreign = foreign_listener(addr);
    let backend = echo_backend("127.0.0.1:0").await;
    let mut daemon = Daemon::new(Registry::default());
    let json = format!(
        r#"{{"apps":[{}],"admin":{{"listen":"{addr}"}}}}"#,
        app("a", &["127.0.0.1:0"], &[backend], "")
    );
    let error = apply(&mut daemon, &json)
        .await
        .expect_err("admin API shares a stranger's port");
    assert!(
        error.contains(&format!("{addr} is already in use by another process")),
        "{error}"
    );
    foreign_takes_all(&foreign, addr, 5);
    daemon.shutdown().await;
}

/// The `fproxy` binary on `config` (in a temporary directory, returned to keep),
/// with RLIMIT_NOFILE (soft and hard) at `nofile` when given; returns once
/// `config applied` is logged.
async fn start_bin(config: &str, nofile: Option<u64>) -> (Bin, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Bin::command(&path);
    cmd.env("TOKIO_WORKER_THREADS", "2");
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                    .map_err(std::io::Error::from)
            });
        }
    }
    (Bin::spawn(cmd).await, dir)
}

/// Under a low descriptor limit, a burst of clients exhausts the daemon's fds.
/// Connects that fail for that are not the target's fault: it is neither ejected
/// nor marked down, the clients are refused as `local`, and once the clients go,
/// new ones are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_fds_blames_no_target_and_recovers() {
    let backend = echo_backend("127.0.0.1:0").await;
    let extra = r#","passive":{"consecutive_failures":2,"base_ejection":"1m"},"health_check":{"interval":"50ms","timeout":"1s","fall":1,"rise":1}"#;
    let json = format!(
        r#"{{"apps":[{}],"admin":{{"listen":"127.0.0.1:0"}}}}"#,
        app("fd", &["127.0.0.1:0"], &[backend], extra)
    );
    let (mut d, _dir) = start_bin(&json, Some(128)).await;
    let listen = d.addr("listening app=");
    let admin = d.addr("admin API listening");
    // The default max_connections (10000) needs far more than 128 descriptors.
    let warning = d
        .logged("cannot carry the configured max_connections")
        .await;
    assert!(warning.contains("limit=128"), "{warning}");
    assert!(warning.contains("needed=20"), "{warning}");

    // Far more clients than descriptors, at once.
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..400 {
        connecting.spawn(tokio::net::TcpStream::connect(listen));
    }
    let mut clients = Vec::new();
    while let Some(c) = connecting.join_next().await {
        if let Ok(Ok(c)) = c {
            clients.push(c);
        }
    }
    let line = d.logged("local resources exhausted").await;
    assert!(line.contains("suppressed="), "{line}");
    drop(clients);

    // Accepting recovers once the clients are gone.
    within("a client served again", async {
        loop {
            if ping(listen, b"again").await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let (code, body) = admin_request(admin, reqwest::Method::GET, "/metrics").await;
    assert_eq!(code, 200);
    let m = Metrics::parse(&body);
    let app_l = [("app", "fd")];
    assert!(
        m.value(
            "fproxy_tcp_connections_refused_total",
            &[("app", "fd"), ("reason", "local")]
        ) >= 1.0,
        "{body}"
    );
    assert_eq!(m.value("fproxy_tcp_ejections_total", &app_l), 0.0, "{body}");
    assert_eq!(
        m.value("fproxy_tcp_endpoint_ejected", &app_l),
        0.0,
        "{body}"
    );
    assert_eq!(
        m.value("fproxy_tcp_endpoint_healthy", &app_l),
        1.0,
        "{body}"
    );
    assert_eq!(
        m.value(
            "fproxy_tcp_health_transitions_total",
            &[("app", "fd"), ("to", "down")]
        ),
        0.0,
        "{body}"
    );
    assert_eq!(
        m.value(
            "fproxy_tcp_connect_failures_total",
            &[("app", "fd"), ("reason", "refused")]
        ),
        0.0,
        "{body}"
    );
    d.drain();
    assert_eq!(d.count("target ejected"), 0);
    assert_eq!(d.count("health check: target down"), 0);
    let _ = d.child.start_kill();
}

/// A flood of refused clients (the only target is dead) writes a bounded number
/// of log lines, each saying how many like it were suppressed.
#[tokio::test]
async fn refused_clients_do_not_flood_the_log() {
    let json = config(&[app(
        "dead",
        &["127.0.0.1:0"],
        &[dead_addr()],
        r#","max_connections":100"#,
    )]);
    let (mut d, _dir) = start_bin(&json, None).await;
    let listen = d.addr("listening app=");
    let started = std::time::Instant::now();
    let mut refused = 0usize;
    // Until a line reports suppressed ones (the second second of the flood), or
    // long enough that one should have.
    let mut reported = false;
    within("the flood", async {
        while !reported && started.elapsed().as_secs() < 3 {
            for _ in 0..100 {
                // The reset may even beat the end of the handshake.
                if let Ok(mut c) = tokio::net::TcpStream::connect(listen).await {
                    let mut buf = [0u8; 1];
                    use tokio::io::AsyncReadExt;
                    assert!(matches!(c.read(&mut buf).await, Ok(0) | Err(_)));
                }
                refused += 1;
            }
            d.drain();
            reported = d.seen.iter().any(|l| {
                l.contains("no target available")
                    && !l.contains("suppressed=0")
                    && l.contains("suppressed=")
            });
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs() as usize;
    let lines = d.count("no target available");
    assert!(refused >= 200, "only {refused} clients");
    assert!(
        lines <= elapsed + 2,
        "{lines} lines for {refused} refused clients in {elapsed}s"
    );
    assert!(reported, "no line says how many were suppressed");
    let warns = d.count(" WARN ");
    // Each other reason (every target down, ejections) is limited alike.
    assert!(
        warns <= 4 * (elapsed + 2),
        "{warns} WARN lines:\n{}",
        d.seen.join("\n")
    );
    let _ = d.child.start_kill();
}
