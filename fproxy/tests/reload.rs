//! Live reloads through the file watcher, with traffic.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use fproxy::daemon::{ApplyError, Event, Refusal};
use fproxy::ConfigError;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn changed_targets_apply_to_new_connections() {
    let (a, b) = (tagged_backend(b'a').await, tagged_backend(b'b').await);
    let mut p = Proxy::start(&config(&[app("x", &["127.0.0.1:0"], &[a], "")])).await;
    let addr = p.addr("x");
    assert_eq!(which(addr).await.unwrap().0, b'a');
    let applied = p
        .reload_ok(&config(&[app("x", &["127.0.0.1:0"], &[b], "")]))
        .await;
    assert_eq!(applied.changed, ["x"]);
    // Same listener, new route.
    assert_eq!(applied.listeners["x"], [addr]);
    assert_eq!(which(addr).await.unwrap().0, b'b');
    p.stop().await;
}

#[tokio::test]
async fn add_and_remove_apps_leave_others_untouched() {
    let backend = echo_backend("127.0.0.1:0").await;
    let keep = app("keep", &["127.0.0.1:0"], &[backend], "");
    let mut p = Proxy::start(&config(std::slice::from_ref(&keep))).await;
    let keep_addr = p.addr("keep");
    let mut open = TcpStream::connect(keep_addr).await.unwrap();
    roundtrip(&mut open, b"before").await.unwrap();

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let added = app("new", &[&listen], &[backend], "");
    let applied = p.reload_ok(&config(&[keep.clone(), added])).await;
    assert_eq!(applied.added, ["new"]);
    assert!(
        applied.changed.is_empty(),
        "untouched app was rolled: {applied:?}"
    );
    ping(applied.listeners["new"][0], b"new app").await.unwrap();

    let applied = p.reload_ok(&config(&[keep])).await;
    assert_eq!(applied.removed, ["new"]);
    let refused = TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "removed app still accepts");
    // The untouched app's connection never noticed.
    roundtrip(&mut open, b"after").await.unwrap();
    assert_eq!(applied.listeners["keep"], [keep_addr]);
    drop(open);
    p.stop().await;
}

#[tokio::test]
async fn changed_ports_move_the_listener() {
    let backend = echo_backend("127.0.0.1:0").await;
    let (p1, p2) = (free_port(), free_port());
    let at = |port: u16| format!("127.0.0.1:{port}");
    let mut p = Proxy::start(&config(&[app("m", &[&at(p1)], &[backend], "")])).await;
    ping(p.addr("m"), b"one").await.unwrap();

    // Gain a port, keep the old one.
    p.reload_ok(&config(&[app("m", &[&at(p1), &at(p2)], &[backend], "")]))
        .await;
    ping(SocketAddrOf(p1).get(), b"still one").await.unwrap();
    ping(SocketAddrOf(p2).get(), b"two").await.unwrap();

    // Lose the first.
    p.reload_ok(&config(&[app("m", &[&at(p2)], &[backend], "")]))
        .await;
    assert!(TcpStream::connect(SocketAddrOf(p1).get()).await.is_err());
    ping(SocketAddrOf(p2).get(), b"two again").await.unwrap();
    p.stop().await;
}

struct SocketAddrOf(u16);
impl SocketAddrOf {
    fn get(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.0))
    }
}

#[tokio::test]
async fn broken_json_keeps_the_old_config_serving() {
    let backend = echo_backend("127.0.0.1:0").await;
    let good = config(&[app("g", &["127.0.0.1:0"], &[backend], "")]);
    let mut p = Proxy::start(&good).await;
    let addr = p.addr("g");

    match p.reload("{\"apps\": [ {\"name\": \"g\",").await {
        Event::Refused { error } => assert!(error.to_string().contains("line 1"), "{error}"),
        other => panic!("broken JSON was not refused: {other:?}"),
    }
    ping(addr, b"still serving").await.unwrap();

    let bad_target =
        config(&[r#"{"name":"g","listen":["127.0.0.1:0"],"targets":["nope"]}"#.to_string()]);
    match p.reload(&bad_target).await {
        Event::Refused { error } => assert!(error.to_string().contains("targets[0]"), "{error}"),
        other => panic!("invalid target was not refused: {other:?}"),
    }
    ping(addr, b"still serving").await.unwrap();

    // A good config after bad ones applies normally.
    let b2 = tagged_backend(b'2').await;
    p.reload_ok(&config(&[app("g", &["127.0.0.1:0"], &[b2], "")]))
        .await;
    assert_eq!(which(addr).await.unwrap().0, b'2');
    p.stop().await;
}

/// A refused config's event says what kind of refusal it was, and for whom: an
/// invalid field names the app and the field, a taken address the app and the
/// address, with the OS error as its source.
#[tokio::test]
async fn refusals_carry_typed_errors() {
    let backend = echo_backend("127.0.0.1:0").await;
    let mut p = Proxy::start(&config(&[app("g", &["127.0.0.1:0"], &[backend], "")])).await;
    let bad_target =
        config(&[r#"{"name":"g","listen":["127.0.0.1:0"],"targets":["nope"]}"#.to_string()]);
    match p.reload(&bad_target).await {
        Event::Refused {
            error: Refusal::Invalid(ConfigError::Field { app, field, .. }),
        } => assert_eq!((app.as_str(), field.as_str()), ("\"g\"", "targets[0]")),
        other => panic!("not refused as invalid: {other:?}"),
    }
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let next = config(&[app("h", &[&taken.to_string()], &[backend], "")]);
    match p.reload(&next).await {
        Event::Refused {
            error: Refusal::NotApplied(ApplyError::Bind { app, addr, source }),
        } => {
            assert_eq!((app.as_str(), addr), ("h", taken));
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse, "{source}");
        }
        other => panic!("not refused as unbindable: {other:?}"),
    }
    p.stop().await;
}

#[tokio::test]
async fn unbindable_address_refuses_the_whole_config() {
    let backend = echo_backend("127.0.0.1:0").await;
    let mut p = Proxy::start(&config(&[app("g", &["127.0.0.1:0"], &[backend], "")])).await;
    // A socket without SO_REUSEPORT holds this port: fproxy cannot share it.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().to_string();
    let next = config(&[
        app("g", &["127.0.0.1:0"], &[dead_addr()], ""),
        app("h", &[&taken], &[backend], ""),
    ]);
    match p.reload(&next).await {
        Event::Refused { error } => assert!(error.to_string().contains(&taken), "{error}"),
        other => panic!("unbindable config applied: {other:?}"),
    }
    // Nothing of it applied: g still routes to the live backend.
    ping(p.addr("g"), b"unchanged").await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn in_flight_connection_survives_a_reload_of_its_app() {
    let (a, b) = (tagged_backend(b'a').await, tagged_backend(b'b').await);
    let mut p = Proxy::start(&config(&[app("s", &["127.0.0.1:0"], &[a], "")])).await;
    let (tag, mut open) = which(p.addr("s")).await.unwrap();
    assert_eq!(tag, b'a');
    // Its target is removed and its timeouts change; it stays up within the drain time.
    p.reload_ok(&config(&[app(
        "s",
        &["127.0.0.1:0"],
        &[b],
        r#","idle_timeout":"1h","max_connections":50"#,
    )]))
    .await;
    roundtrip(&mut open, b"still talking to a").await.unwrap();
    assert_eq!(which(p.addr("s")).await.unwrap().0, b'b');
    drop(open);
    p.stop().await;
}

#[tokio::test]
async fn removed_target_connections_close_after_drain_timeout() {
    let (a, b) = (tagged_backend(b'a').await, tagged_backend(b'b').await);
    let drain = r#","drain_timeout":"300ms","strategy":"round_robin""#;
    let mut p = Proxy::start(&config(&[app("d", &["127.0.0.1:0"], &[a, b], drain)])).await;
    let (ta, mut to_a) = which(p.addr("d")).await.unwrap();
    let (tb, mut to_b) = which(p.addr("d")).await.unwrap();
    assert_eq!((ta, tb), (b'a', b'b'));
    p.reload_ok(&config(&[app("d", &["127.0.0.1:0"], &[b], drain)]))
        .await;
    // The connection to the removed target is closed once the drain time is up...
    let mut rest = Vec::new();
    within("drain close", to_a.read_to_end(&mut rest))
        .await
        .unwrap();
    // ...while the one to the kept target is untouched.
    roundtrip(&mut to_b, b"kept").await.unwrap();
    drop(to_b);
    p.stop().await;
}

/// The zero-downtime promise: a client opening short connections in a loop sees no
/// failure while the config is rewritten 60 times, its app changing targets and
/// gaining and losing other ports, other apps coming and going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_under_reload_storm() {
    let backends = [
        echo_backend("127.0.0.1:0").await,
        echo_backend("127.0.0.1:0").await,
        echo_backend("127.0.0.1:0").await,
    ];
    // Listeners come and go 60 times: each on a loopback address of its own, so no
    // outgoing connection of this or another test can take a port meanwhile.
    let on = |ip: [u8; 4]| format!("{}:{}", std::net::Ipv4Addr::from(ip), free_port_on(ip));
    let main_port = on([127, 0, 0, 20]);
    let extra: Vec<String> = (21..24).map(|i| on([127, 0, 0, i])).collect();
    let side = on([127, 0, 0, 24]);

    let version = |i: usize| {
        let targets = match i % 3 {
            0 => vec![backends[0]],
            1 => vec![backends[1], backends[2]],
            _ => vec![backends[2], backends[0], backends[1]],
        };
        let mut listen = vec![main_port.as_str()];
        listen.extend(extra.iter().take(i % 4).map(String::as_str));
        let mut apps = vec![app("load", &listen, &targets, "")];
        if i % 2 == 1 {
            apps.push(app("side", &[&side], &[backends[i % 3]], ""));
        }
        config(&apps)
    };

    let mut p = Proxy::start(&version(0)).await;
    let addr = p.addr("load");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4u8 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded: the loop ends when the reloads do, or at a hard cap.
            for i in 0..1_000_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let payload = format!("client {c} request {i}");
                match ping(addr, payload.as_bytes()).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }

    const RELOADS: usize = 60;
    for i in 1..=RELOADS {
        let applied = p.reload_ok(&version(i)).await;
        let listeners = &applied.listeners["load"];
        assert!(
            listeners.contains(&addr),
            "main listener gone: {listeners:?}"
        );
        assert_eq!(listeners.len(), 1 + i % 4);
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failures out of {}: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    println!("{ok} connections, 0 failures, across {RELOADS} reloads");
    assert!(ok >= RELOADS, "too little traffic to prove anything: {ok}");
    p.stop().await;
}
