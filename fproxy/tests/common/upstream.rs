//! A fake Statsig CDN for spec app tests: a real HTTP server on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use fproxy::metrics::Metrics;

// Metric readers, for the spec tests that import everything from here.
#[allow(unused_imports)]
pub use super::prom::{metric_at_least, metric_reaches, sample, scrape, value};
use super::{within, Proxy};

pub const KEY: &str = "secret-test-key-0123456789";

/// A fake Statsig CDN: serves a payload per key, counts requests, reports each one.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<UpState>>,
}

pub struct UpState {
    /// key -> (lcut, body)
    pub specs: HashMap<String, (u64, String)>,
    /// Answer every request with this status instead.
    pub status: Option<u16>,
    /// Answer every spec request with 200 and a body that never ends (no
    /// content-length); counts the bytes sent in `endless_sent`.
    pub endless: bool,
    pub endless_sent: Arc<std::sync::atomic::AtomicUsize>,
    pub requests: Vec<String>,
    seen: mpsc::UnboundedSender<String>,
}

pub fn payload(lcut: u64, enabled: bool) -> String {
    format!(
        r#"{{"has_updates":true,"time":{lcut},"feature_gates":[{{"name":"g","enabled":{enabled}}}],"dynamic_configs":[],"layer_configs":[]}}"#
    )
}

impl Upstream {
    pub async fn start() -> (Upstream, mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let up = Upstream {
            addr,
            state: Arc::new(Mutex::new(UpState {
                specs: HashMap::new(),
                status: None,
                endless: false,
                endless_sent: Arc::default(),
                requests: Vec::new(),
                seen: tx,
            })),
        };
        let state = up.state.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(answer(&state, &req)) }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (up, rx)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn publish(&self, key: &str, lcut: u64, body: String) {
        self.state
            .lock()
            .unwrap()
            .specs
            .insert(key.into(), (lcut, body));
    }

    pub fn fail_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().status = status;
    }

    pub fn requests_for(&self, key: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.contains(key))
            .count()
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

fn answer(state: &Mutex<UpState>, req: &Request<hyper::body::Incoming>) -> Response<UpBody> {
    let mut st = state.lock().unwrap();
    let uri = req.uri().to_string();
    st.requests.push(uri.clone());
    let _ = st.seen.send(uri.clone());
    let status = st.status;
    let resp = |code: u16, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        r
    };
    if st.endless {
        // `{"time":1,"pad":"xxxx...` forever: valid JSON so far, never finished.
        let sent = st.endless_sent.clone();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let head = std::iter::once(Bytes::from_static(br#"{"time":1,"pad":""#));
        let frames = head.chain(std::iter::repeat(chunk)).map(move |b| {
            sent.fetch_add(b.len(), std::sync::atomic::Ordering::Relaxed);
            Ok::<_, Infallible>(Frame::data(b))
        });
        return Response::new(BodyExt::boxed(StreamBody::new(tokio_stream::iter(frames))));
    }
    if let Some(code) = status {
        return resp(code, "upstream says no".into());
    }
    // SDKs ask the API for ID lists at start; there are none.
    if req.uri().path().ends_with("/get_id_lists") {
        return resp(200, "{}".into());
    }
    let key = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .trim_end_matches(".json")
        .to_string();
    let since: Option<u64> = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("sinceTime="))
        .and_then(|v| v.parse().ok());
    match st.specs.get(&key) {
        None => resp(401, "Unauthorized".into()),
        Some((lcut, _)) if since.is_some_and(|s| *lcut <= s) => {
            resp(200, r#"{"has_updates":false}"#.into())
        }
        Some((lcut, body)) => {
            let mut r = resp(200, body.clone());
            r.headers_mut().insert("x-since-time", (*lcut).into());
            r
        }
    }
}

/// A DCS payload with a gate the real SDKs evaluate: on (or off) for everyone.
pub fn gate_payload(lcut: u64, enabled: bool) -> String {
    format!(
        r#"{{"has_updates":true,"time":{lcut},"feature_gates":[{{"name":"always_on_gate","type":"feature_gate","entity":"feature_gate","salt":"s1","enabled":{enabled},"defaultValue":false,"idType":"userID","rules":[{{"name":"everyone","id":"rule1","salt":"s2","groupName":"everyone","passPercentage":100,"returnValue":true,"idType":"userID","conditions":[{{"type":"public","targetValue":null,"operator":null,"field":null,"additionalValues":{{}},"idType":"userID"}}]}}]}}],"dynamic_configs":[],"layer_configs":[],"layers":{{}}}}"#
    )
}

pub fn spec_app(upstream: &str, extra: &str) -> String {
    format!(
        r#"{{"apps":[{{"name":"spec","kind":"spec","listen":["127.0.0.1:0"],"upstream":"{upstream}"{extra}}}]}}"#
    )
}

pub fn client() -> reqwest::Client {
    // No transparent gzip: the tests look at what is on the wire.
    reqwest::Client::builder().no_gzip().build().unwrap()
}

pub fn dcs(p: &Proxy, path: &str) -> String {
    format!("http://{}{path}", p.addr("spec"))
}

/// Waits until upstream has been asked about `key` `n` times in all.
pub async fn upstream_polled(
    up: &Upstream,
    seen: &mut mpsc::UnboundedReceiver<String>,
    key: &str,
    n: usize,
) {
    within("upstream poll", async {
        while up.requests_for(key) < n {
            seen.recv().await.unwrap();
        }
    })
    .await;
}

/// Starts the daemon on `config` as [`Proxy::start`] does, and also returns its
/// metrics.
pub async fn start_with_metrics(config: &str) -> (Proxy, Arc<Metrics>) {
    let proxy = Proxy::start(config).await;
    let metrics = proxy.metrics.clone();
    (proxy, metrics)
}

/// A gRPC spec request for `key`, asking for everything (since_time 0).
pub fn req(key: &str) -> fproxy::spec::grpc::proto::ConfigSpecRequest {
    fproxy::spec::grpc::proto::ConfigSpecRequest {
        sdk_key: key.into(),
        since_time: Some(0),
        version: None,
        zstd_dict_id: None,
    }
}
