//! Target names: background re-resolution at TTL, one endpoint per address, each
//! health-checked and ejected on its own. A real DNS server (UDP, answers from a
//! table the test edits) runs on a free loopback port; backends listen on
//! 127.0.0.2 and 127.0.0.3 at the same port, as two hosts behind one name would.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use common::*;
use fproxy::dns::Resolver;
use fproxy::{Daemon, Registry};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// A DNS server answering A queries for every name from `table`, with TTL 1.
async fn dns_server(table: Arc<Mutex<Vec<Ipv4Addr>>>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut answer = Message::new();
            answer
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(query.op_code())
                .set_recursion_desired(query.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true)
                .set_response_code(ResponseCode::NoError);
            for q in query.queries() {
                answer.add_query(q.clone());
                if q.query_type() == RecordType::A {
                    for ip in table.lock().unwrap().iter() {
                        answer.add_answer(Record::from_rdata(
                            q.name().clone(),
                            1,
                            RData::A(A(*ip)),
                        ));
                    }
                }
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = sock.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

/// A backend on `ip:port` that sends its tag on every connection; abort the
/// handle to take it down (its port then refuses).
async fn tagged_on(ip: Ipv4Addr, port: u16, tag: u8) -> std::io::Result<JoinHandle<()>> {
    let l = TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), port)).await?;
    Ok(tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(&[tag]).await;
                let mut sink = [0u8; 64];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut sink).await;
            });
        }
    }))
}

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Backends A (127.0.0.2) and B (127.0.0.3) on one port.
async fn two_hosts() -> (u16, JoinHandle<()>, JoinHandle<()>) {
    for _ in 0..20 {
        let a = tagged_on(A_IP, 0, b'A').await.unwrap();
        // The port A got may be taken on 127.0.0.3; try another then.
        let probe = std::net::TcpListener::bind((A_IP, 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        a.abort();
        let (Ok(a), Ok(b)) = (
            tagged_on(A_IP, port, b'A').await,
            tagged_on(B_IP, port, b'B').await,
        ) else {
            continue;
        };
        return (port, a, b);
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// Connects until `pred` holds for the tags seen in the last `window` connections.
async fn until_tags(addr: SocketAddr, window: usize, pred: impl Fn(&[u8]) -> bool) {
    within("connections to reach the expected backends", async {
        let mut seen: Vec<u8> = Vec::new();
        loop {
            let (tag, _) = which(addr).await.expect("a connection through the proxy");
            seen.push(tag);
            if seen.len() >= window && pred(&seen[seen.len() - window..]) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

async fn start(table: &Arc<Mutex<Vec<Ipv4Addr>>>, port: u16, extra: &str) -> Proxy {
    let dns = dns_server(table.clone()).await;
    let daemon = Daemon::new(Registry::default()).with_resolver(Resolver::with_nameservers(&[dns]));
    let cfg = format!(
        r#"{{"apps":[{{"name":"svc","listen":["127.0.0.1:0"],"targets":["svc.test:{port}"],
        "strategy":"round_robin","dns":{{"min_ttl":"50ms","max_ttl":"200ms"}}{extra}}}]}}"#
    );
    Proxy::start_daemon(daemon, &cfg).await
}

#[tokio::test]
async fn each_address_is_an_endpoint_and_dns_changes_are_followed() {
    let (port, _a, _b) = two_hosts().await;
    let table = Arc::new(Mutex::new(vec![A_IP]));
    let proxy = start(&table, port, "").await;
    let addr = proxy.addr("svc");

    until_tags(addr, 5, |t| t.iter().all(|&x| x == b'A')).await;

    // A second address appears: round robin alternates over both endpoints.
    table.lock().unwrap().push(B_IP);
    until_tags(addr, 4, |t| t.windows(2).all(|w| w[0] != w[1])).await;

    // A leaves DNS: only B from then on.
    table.lock().unwrap().retain(|ip| *ip != A_IP);
    until_tags(addr, 10, |t| t.iter().all(|&x| x == b'B')).await;

    let m = proxy.scrape();
    assert!(
        m.value(
            "fproxy_dns_lookups_total",
            &[("host", "svc.test"), ("result", "ok")]
        ) >= 3.0
    );
    // A's endpoint series went with it; B's stays.
    let b = format!("{B_IP}:{port}");
    let a = format!("{A_IP}:{port}");
    assert_eq!(
        m.get("fproxy_tcp_endpoint_healthy", &[("address", &b)]),
        Some(1.0)
    );
    assert_eq!(
        m.get("fproxy_tcp_endpoint_healthy", &[("address", &a)]),
        None
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_dead_address_is_ejected_alone_and_no_client_fails() {
    let (port, a, _b) = two_hosts().await;
    let table = Arc::new(Mutex::new(vec![A_IP, B_IP]));
    let extra = r#","passive":{"consecutive_failures":1,"base_ejection":"1h"}"#;
    let proxy = start(&table, port, extra).await;
    let addr = proxy.addr("svc");
    until_tags(addr, 4, |t| t.windows(2).all(|w| w[0] != w[1])).await;

    // A dies: its connects fail over to B inside the proxy, so every client
    // connection still succeeds, and A is ejected after its first failure.
    a.abort();
    for _ in 0..20 {
        let (tag, _) = which(addr).await.expect("no client connection fails");
        assert_eq!(tag, b'B');
    }
    let m = proxy.scrape();
    let a_addr = format!("{A_IP}:{port}");
    let b_addr = format!("{B_IP}:{port}");
    assert_eq!(
        m.value("fproxy_tcp_ejections_total", &[("address", &a_addr)]),
        1.0
    );
    assert_eq!(
        m.value("fproxy_tcp_ejections_total", &[("address", &b_addr)]),
        0.0
    );
    assert_eq!(
        m.get("fproxy_tcp_endpoint_ejected", &[("address", &a_addr)]),
        Some(1.0)
    );
    // One failed attempt in all: after the ejection nobody tries A.
    let failed = m.value(
        "fproxy_tcp_connect_failures_total",
        &[
            ("target", &format!("svc.test:{port}")),
            ("reason", "refused"),
        ],
    );
    assert_eq!(failed, 1.0);
    proxy.stop().await;
}

/// The first answer for a name is part of the first config, not a new target: its
/// addresses start healthy even with `new_targets_healthy: false`.
#[tokio::test]
async fn first_answer_addresses_start_healthy() {
    let (port, _a, _b) = two_hosts().await;
    let table = Arc::new(Mutex::new(vec![A_IP]));
    let proxy = start(&table, port, r#","new_targets_healthy":false"#).await;
    let a = format!("{A_IP}:{port}");
    within("the name to resolve", async {
        while proxy
            .scrape()
            .get("fproxy_tcp_endpoint_healthy", &[("address", &a)])
            .is_none()
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let m = proxy.scrape();
    assert_eq!(
        m.get("fproxy_tcp_endpoint_healthy", &[("address", &a)]),
        Some(1.0)
    );
    proxy.stop().await;
}
