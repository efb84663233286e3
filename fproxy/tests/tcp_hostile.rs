//! The TCP app against hostile clients and operator faults: strangers on its ports,
//! running out of file descriptors, floods of refused clients.

mod common;

use std::net::SocketAddr;

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
                assert!(error.contains("is already in use by another process"), "{error}")
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
    p.reload_ok(&config(&[app("b", &[&at], &[backend], "")])).await;
    ping(addr, b"b").await.unwrap();
    // And to an app of another kind under the same name.
    let spec = format!(r#"{{"apps":[{{"name":"b","kind":"spec","listen":["{at}"]}}]}}"#);
    p.reload_ok(&spec).await;
    let tcp_again = p.reload_ok(&config(&[app("b", &[&at], &[backend], "")])).await;
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
