//! The HTTP servers fproxy runs (spec HTTP, spec gRPC, admin API) under hostile
//! clients: silent sockets over the connection cap, slowloris, idle keep-alive
//! connections on both protocols, and foreign Host/Origin on the admin API.
//! Timeouts are configured short (hundreds of ms); every wait is on a socket event
//! bounded by the harness WAIT.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::upstream::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEALTH: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n";

/// Reads until the server closes the connection (EOF or reset); what was read.
async fn until_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    within(what, async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

/// Reads one HTTP/1.1 response with a Content-Length (the connection stays open).
async fn read_response(s: &mut TcpStream) -> String {
    within("a response", async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before a whole response: {out:?}");
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if out.len() >= end + 4 + len {
                    return text;
                }
            }
        }
    })
    .await
}

const SPEC: [(&str, &str); 2] = [("kind", "spec"), ("app", "spec")];
const OPEN: &str = "fproxy_server_connections";
const REFUSED: &str = "fproxy_server_connections_refused_total";
const TIMEOUTS: &str = "fproxy_server_connection_timeouts_total";

async fn spec_proxy(extra: &str) -> (Proxy, Upstream) {
    let (up, _seen) = Upstream::start().await;
    let p = Proxy::start(&spec_app(&up.url(), extra)).await;
    (p, up)
}

#[tokio::test]
async fn spec_connections_over_the_cap_are_closed_at_once_then_served_when_room() {
    let (p, _up) = spec_proxy(r#","max_connections":3"#).await;
    let addr = p.addr("spec");
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // Accepted in order: by the time this one is, the three hold the cap.
    let mut late = TcpStream::connect(addr).await.unwrap();
    let _ = late.write_all(HEALTH).await;
    let got = until_closed(&mut late, "the refused connection to close").await;
    assert!(got.is_empty(), "a refused client got {got:?}");
    assert_eq!(p.scrape().value(REFUSED, &SPEC), 1.0);
    assert_eq!(p.scrape().value(OPEN, &SPEC), 3.0);

    // The silent clients go; a new client is served.
    silent.clear();
    prom::metric_reaches(&p.metrics, OPEN, &SPEC, 0.0).await;
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(HEALTH).await.unwrap();
    let resp = read_response(&mut good).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    drop(good);
    p.stop().await;
}

#[tokio::test]
async fn silent_and_slowloris_clients_are_cut_at_the_header_timeout() {
    let (p, _up) = spec_proxy(r#","header_timeout":"300ms""#).await;
    let addr = p.addr("spec");

    // Never sends a byte. Timed from before the connect: the server may accept
    // (and start its timer) before connect returns here.
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    until_closed(&mut silent, "a silent client to be cut").await;
    assert!(start.elapsed() >= Duration::from_millis(300));

    // One header byte every 50 ms: never a whole head.
    let start = Instant::now();
    let slow = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for b in b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let got = within("a slowloris client to be cut", async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    })
    .await;
    assert!(got.is_empty(), "{got:?}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    trickle.abort();
    assert_eq!(
        p.scrape()
            .value(TIMEOUTS, &[("app", "spec"), ("reason", "header")]),
        2.0
    );
    p.stop().await;
}

#[tokio::test]
async fn an_idle_http1_keepalive_connection_is_closed_after_keepalive_timeout() {
    // The header timeout is shorter: it must not apply while waiting idle. (Long
    // enough that a stalled test machine still reads the head in time.)
    let (p, _up) = spec_proxy(r#","header_timeout":"500ms","keepalive_timeout":"1500ms""#).await;
    let mut c = TcpStream::connect(p.addr("spec")).await.unwrap();
    // The server's idle timer starts after this, once the response is written.
    let sent = Instant::now();
    c.write_all(HEALTH).await.unwrap();
    assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    let rest = until_closed(&mut c, "the idle connection to be closed").await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "closed {:?} after the request, before keepalive_timeout",
        sent.elapsed()
    );
    let s = p.scrape();
    assert_eq!(
        s.value(TIMEOUTS, &[("app", "spec"), ("reason", "idle")]),
        1.0
    );
    assert_eq!(
        s.value(TIMEOUTS, &[("app", "spec"), ("reason", "header")]),
        0.0
    );
    p.stop().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let (p, _up) = spec_proxy(r#","keepalive_timeout":"300ms""#).await;
    let stream = TcpStream::connect(p.addr("spec")).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("http://spec/v1/health")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    // The server sends GOAWAY and closes; the client connection ends.
    let _ = within("the idle HTTP/2 connection to end", conn).await;
    assert_eq!(
        p.scrape()
            .value(TIMEOUTS, &[("app", "spec"), ("reason", "idle")]),
        1.0
    );
    p.stop().await;
}

#[tokio::test]
async fn an_open_grpc_stream_outlives_the_idle_timeout() {
    use fproxy::spec::grpc::proto::statsig_forward_proxy_client::StatsigForwardProxyClient;
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let config = format!(
        r#"{{"apps":[{{"name":"spec","kind":"spec","grpc_listen":["127.0.0.1:0"],"upstream":"{}","keepalive_timeout":"600ms","header_timeout":"600ms","heartbeat_interval":"150ms"}}]}}"#,
        up.url()
    );
    let p = Proxy::start(&config).await;
    let mut c = StatsigForwardProxyClient::connect(format!("http://{}", p.addr("spec")))
        .await
        .unwrap();
    let mut stream = c.stream_config_spec(req(KEY)).await.unwrap().into_inner();
    let opened = Instant::now();
    // Heartbeats for more than two idle timeouts: the stream is a request in
    // flight, and its heartbeats are progress, so the connection is kept.
    let mut beats = 0;
    while opened.elapsed() < Duration::from_millis(1500) {
        let m = within("a stream message", stream.message()).await;
        assert!(matches!(m, Ok(Some(_))), "stream ended: {m:?}");
        beats += 1;
    }
    assert!(beats >= 4, "{beats} messages");
    let s = p.scrape();
    for reason in ["idle", "stall"] {
        assert_eq!(
            s.value(TIMEOUTS, &[("app", "spec"), ("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
    // Once the stream is gone the connection is idle, and closed.
    drop(stream);
    prom::metric_reaches(
        &p.metrics,
        TIMEOUTS,
        &[("app", "spec"), ("reason", "idle")],
        1.0,
    )
    .await;
    drop(c);
    p.stop().await;
}

fn admin_config(admin: &str) -> String {
    format!(r#"{{"apps":[],"admin":{{"listen":"127.0.0.1:0"{admin}}}}}"#)
}

const ADMIN: [(&str, &str); 1] = [("kind", "admin")];

#[tokio::test]
async fn the_admin_api_caps_connections_and_cuts_silent_ones() {
    let p = Proxy::start(&admin_config(
        // Long enough to outlast connecting the silent ones and refusing the late
        // one on a loaded machine.
        r#","max_connections":2,"header_timeout":"2s""#,
    ))
    .await;
    let addr = p.admin();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut late = TcpStream::connect(addr).await.unwrap();
    let _ = late
        .write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let got = until_closed(&mut late, "the refused admin connection to close").await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(p.scrape().value(REFUSED, &ADMIN), 1.0);
    // The silent ones are cut at the header timeout; then there is room again.
    for s in &mut silent {
        until_closed(s, "a silent admin client to be cut").await;
    }
    prom::metric_reaches(&p.metrics, OPEN, &ADMIN, 0.0).await;
    assert_eq!(
        p.scrape()
            .value(TIMEOUTS, &[("kind", "admin"), ("reason", "header")]),
        2.0
    );
    let (code, body) = p.admin_get("/live").await;
    assert_eq!(code, 200, "{body}");
    p.stop().await;
}

#[tokio::test]
async fn the_admin_api_closes_idle_keepalive_connections() {
    let p = Proxy::start(&admin_config(r#","keepalive_timeout":"300ms""#)).await;
    let mut c = TcpStream::connect(p.admin()).await.unwrap();
    c.write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut c).await.starts_with("HTTP/1.1 200"));
    until_closed(&mut c, "the idle admin connection to be closed").await;
    assert_eq!(
        p.scrape()
            .value(TIMEOUTS, &[("kind", "admin"), ("reason", "idle")]),
        1.0
    );
    p.stop().await;
}

/// One request on its own connection; the status code and body.
async fn raw(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}Connection: close\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let out = String::from_utf8(until_closed(&mut s, "an admin answer").await).unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn the_admin_api_refuses_foreign_hosts_and_cross_site_posts() {
    let p = Proxy::start(&admin_config(r#","allowed_hosts":["admin.internal"]"#)).await;
    let addr = p.admin();
    let port = addr.port();

    // DNS rebinding: a page on evil.example whose name now points here.
    let (code, body) = raw(
        addr,
        &format!("GET /status HTTP/1.1\r\nHost: evil.example:{port}\r\n"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("evil.example") && body.contains("allowed_hosts"),
        "{body}"
    );
    // Our own names are fine.
    for host in [
        addr.to_string(),
        format!("localhost:{port}"),
        "admin.internal".into(),
    ] {
        let (code, body) = raw(addr, &format!("GET /live HTTP/1.1\r\nHost: {host}\r\n")).await;
        assert_eq!(code, 200, "{host}: {body}");
    }
    // HTTP/1.0 without a Host (not a browser) is answered.
    let (code, _) = raw(addr, "GET /live HTTP/1.0\r\n").await;
    assert_eq!(code, 200);

    // CSRF: a page elsewhere makes the browser POST /reload here.
    let (code, body) = raw(
        addr,
        &format!("POST /reload HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Origin"), "{body}");
    // The admin's own origin passes the check (and reaches the reload itself).
    let (code, body) = raw(
        addr,
        &format!("POST /reload HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n"),
    )
    .await;
    assert_ne!(code, 403, "{body}");

    // `fproxy status` keeps working.
    let status = fproxy::admin::client::status(addr)
        .await
        .expect("fproxy status");
    assert!(status.version >= 1);
    p.stop().await;
}

/// A request body that never ends and never sends a byte.
struct Endless;

impl hyper::body::Body for Endless {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// An HTTP/2 connection to `addr`; `window` is the client's initial stream window
/// (0: the server may send no DATA until told so, which this client never does).
async fn h2_client(
    addr: SocketAddr,
    window: u32,
) -> (
    hyper::client::conn::http2::SendRequest<Endless>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(window)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

#[tokio::test]
async fn a_post_body_that_never_arrives_is_answered_at_the_header_timeout() {
    // The keepalive (and so the stall) timeout is far longer: the body's own limit
    // answers first.
    let (p, _up) = spec_proxy(r#","header_timeout":"300ms","keepalive_timeout":"30s""#).await;
    let addr = p.addr("spec");

    // HTTP/1.1: announces 64 KiB, sends nothing.
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        format!("POST /v1/download_config_specs/{KEY} HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let resp = read_response(&mut c).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(start.elapsed() >= Duration::from_millis(300));

    // HTTP/2: a request stream that never ends.
    let (mut send, _conn) = h2_client(addr, 65_535).await;
    let req = hyper::Request::post(format!("http://spec/v1/download_config_specs/{KEY}"))
        .body(Endless)
        .unwrap();
    let resp = within("an HTTP/2 answer", send.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    p.stop().await;
}

/// Asks `path` on an HTTP/2 connection whose stream window stays shut (and whose
/// request body, for a POST, never ends); the server must cut the connection.
async fn stalled_h2(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) {
    let (mut send, conn) = h2_client(addr, 0).await;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Endless).unwrap();
    // Holds the stream (a response head may come; its body never can).
    let pending = tokio::spawn(send.send_request(req));
    let ended = within("the stalled HTTP/2 connection to be cut", conn).await;
    assert!(ended.is_ok(), "{ended:?}");
    pending.abort();
}

#[tokio::test]
async fn http2_clients_that_never_read_or_never_finish_a_request_are_cut() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let config = format!(
        r#"{{"apps":[{{"name":"spec","kind":"spec","listen":["127.0.0.1:0"],"grpc_listen":["127.0.0.2:0"],"upstream":"{}","keepalive_timeout":"500ms","heartbeat_interval":"100ms"}}],"admin":{{"listen":"127.0.0.1:0","keepalive_timeout":"500ms"}}}}"#,
        up.url()
    );
    let p = Proxy::start(&config).await;
    let stalls = |labels: [(&'static str, &'static str); 2]| {
        let s = p.scrape();
        s.value(TIMEOUTS, &labels)
    };
    let spec_stall = [("app", "spec"), ("reason", "stall")];

    // Spec HTTP: the answer is ready, the client never opens its window for it.
    let http = *p.first.listeners["spec"]
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.1")
        .unwrap();
    stalled_h2(http, "GET", "/v1/health", &[]).await;
    assert_eq!(stalls(spec_stall), 1.0);

    // Spec gRPC: a unary call whose request never ends.
    let grpc = *p.first.listeners["spec"]
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.2")
        .unwrap();
    let grpc_headers = [("content-type", "application/grpc"), ("te", "trailers")];
    stalled_h2(
        grpc,
        "POST",
        "/statsig_forward_proxy.StatsigForwardProxy/getConfigSpec",
        &grpc_headers,
    )
    .await;
    assert_eq!(stalls(spec_stall), 2.0);

    // Admin API.
    stalled_h2(p.admin(), "GET", "/live", &[]).await;
    assert_eq!(stalls([("kind", "admin"), ("reason", "stall")]), 1.0);
    p.stop().await;
}

#[tokio::test]
async fn a_slow_client_gets_a_large_response_whole_past_the_keepalive_timeout() {
    let (up, _seen) = Upstream::start().await;
    // 20 MB: more than the kernel buffers on both sides hold, so the server is
    // still writing long after the response was queued.
    let pad = "x".repeat(20 << 20);
    up.publish(
        KEY,
        1,
        format!(r#"{{"has_updates":true,"time":1,"feature_gates":[],"dynamic_configs":[],"layer_configs":[],"pad":"{pad}"}}"#),
    );
    let p = Proxy::start(&spec_app(&up.url(), r#","keepalive_timeout":"300ms""#)).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut c = sock.connect(p.addr("spec")).await.unwrap();
    c.write_all(
        format!("GET /v1/download_config_specs/{KEY}.json HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    // At most 16 KiB per 2 ms (8 MB/s): the download takes well over the keepalive
    // timeout plus the shutdown grace (1.3 s).
    let (head, body) = within("the slow download", async {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut want = None;
        loop {
            let n = c.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {} bytes", out.len());
            out.extend_from_slice(&buf[..n]);
            if want.is_none() {
                if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .expect("a content-length");
                    want = Some((end + 4, len));
                }
            }
            if let Some((start, len)) = want {
                if out.len() >= start + len {
                    let head = String::from_utf8_lossy(&out[..start]).to_string();
                    return (head, out.split_off(start));
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.len() > 20 << 20, "{} bytes", body.len());
    assert!(body.ends_with(br#""}"#));
    assert!(
        start.elapsed() > Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    p.stop().await;
}

#[tokio::test]
async fn grpc_request_messages_are_capped_at_8_kib() {
    use fproxy::spec::grpc::proto::statsig_forward_proxy_client::StatsigForwardProxyClient;
    let (up, _seen) = Upstream::start().await;
    let config = format!(
        r#"{{"apps":[{{"name":"spec","kind":"spec","grpc_listen":["127.0.0.1:0"],"upstream":"{}"}}]}}"#,
        up.url()
    );
    let p = Proxy::start(&config).await;
    let mut c = StatsigForwardProxyClient::connect(format!("http://{}", p.addr("spec")))
        .await
        .unwrap();
    // Not decoded at all (tonic's own default would read 4 MiB per stream).
    let e = c
        .get_config_spec(req(&"k".repeat(16 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    p.stop().await;
}
