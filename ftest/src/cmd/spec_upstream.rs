//! `ftest spec-upstream`: a fake Statsig CDN for demos, tests and benchmarks.
//!
//! Serves one payload to a fixed set of SDK keys the way the CDN does:
//! `GET /v1|v2/download_config_specs/{key}.json[?sinceTime=N]` answers the payload
//! with `x-since-time: LCUT` (or `{"has_updates":false}` when LCUT <= sinceTime),
//! unknown keys get 401. A new version (newer lcut, first gate flipped) is published
//! by `POST /__publish` or every `--publish-every`.

mod gates;

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::ArgGroup;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::net::{describe, parse_seconds, resolve, Family};

pub use gates::{flip, payload as gates_payload};

const EXAMPLES: &str = "\
Examples:
  # 400 generated gates (about 200 KB) for two keys
  ftest spec-upstream --listen 127.0.0.1:9100 --sdk-key secret-a,secret-b --gates 400
  # your own payload; a new version every 5 seconds
  ftest spec-upstream -l 127.0.0.1:9100 --sdk-key secret-a --payload dcs.json --publish-every 5s

Then point a spec app at it (\"upstream\": \"http://127.0.0.1:9100\") and:
  curl -s localhost:9100/v1/download_config_specs/secret-a.json | head -c 200
  curl -s -X POST localhost:9100/__publish     # a new version: {\"version\":2,\"lcut\":...}
  curl -s localhost:9100/__status              # current version and request counts

Routes: GET /v1|v2/download_config_specs/{key}[.json|.js][?sinceTime=N] (key also from
the statsig-api-key header), POST /v1/get_id_lists (answers {}), POST /__publish,
GET /__status. Unknown keys get 401 Unauthorized.";

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
#[command(group(ArgGroup::new("source").required(true).args(["payload", "gates"])))]
pub struct Args {
    /// Where to listen: ip:port, [ipv6]:port or host:port (its first address). Port 0
    /// picks a free port (printed).
    #[arg(short, long, value_name = "ADDR")]
    pub listen: String,
    /// SDK keys to serve; any other key gets 401.
    #[arg(long, value_delimiter = ',', required = true, value_name = "K[,K...]")]
    pub sdk_key: Vec<String>,
    /// Serve this DCS payload (a JSON object); its `time` is set to the lcut.
    #[arg(long, value_name = "FILE")]
    pub payload: Option<PathBuf>,
    /// Serve a generated v1 payload with N feature gates (about 500 bytes each; 400 is about 200 KB).
    #[arg(long, value_name = "N")]
    pub gates: Option<usize>,
    /// The first version's lcut in ms. Default: the file's `time`, else now.
    #[arg(long, value_name = "MS")]
    pub lcut: Option<u64>,
    /// Publish a new version this often (10s, 500ms; a bare number is seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    pub publish_every: Option<Duration>,
}

/// Where the payload comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Gates(usize),
}

/// What [`start`] needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: String,
    pub sdk_keys: Vec<String>,
    pub source: Source,
    pub lcut: Option<u64>,
    pub publish_every: Option<Duration>,
}

impl Options {
    pub fn from_args(args: &Args) -> anyhow::Result<Options> {
        let source = match (&args.payload, args.gates) {
            (Some(f), None) => Source::File(f.clone()),
            (None, Some(n)) => Source::Gates(n),
            _ => bail!("give one of --payload or --gates"),
        };
        Ok(Options {
            listen: args.listen.clone(),
            sdk_keys: args.sdk_key.clone(),
            source,
            lcut: args.lcut,
            publish_every: args.publish_every,
        })
    }
}

/// One published version of the payload.
#[derive(Debug)]
pub struct Version {
    /// 1 for the first, +1 per publish.
    pub number: u64,
    pub lcut: u64,
    pub body: Bytes,
    /// The first gate's name and `enabled` after this version's flip (None for the
    /// first version, or when the payload has no gate to flip).
    pub flipped: Option<(String, bool)>,
}

/// Requests served so far, by answer.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// DCS answered with the payload.
    pub full: AtomicU64,
    /// DCS answered `{"has_updates":false}`.
    pub unchanged: AtomicU64,
    /// Unknown SDK key (401).
    pub unauthorized: AtomicU64,
    pub id_lists: AtomicU64,
    pub publishes: AtomicU64,
    /// Anything else (404).
    pub other: AtomicU64,
}

struct State {
    keys: HashSet<String>,
    /// The current document; a publish edits it.
    doc: Mutex<Value>,
    current: watch::Sender<Arc<Version>>,
    counts: Counts,
}

impl State {
    fn publish(&self) -> anyhow::Result<Arc<Version>> {
        // A poisoned lock only means a publish panicked; the document is whole.
        let mut doc = self.doc.lock().unwrap_or_else(|p| p.into_inner());
        let prev = self.current.borrow().clone();
        let lcut = now_ms().max(prev.lcut + 1);
        let flipped = flip(&mut doc, lcut);
        let body = serde_json::to_vec(&*doc).context("serialize the payload")?;
        let v = Arc::new(Version {
            number: prev.number + 1,
            lcut,
            body: body.into(),
            flipped,
        });
        self.current.send_replace(v.clone());
        self.counts.publishes.fetch_add(1, Ordering::Relaxed);
        Ok(v)
    }
}

/// A running fake upstream. Dropping it stops it.
pub struct SpecUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    _tasks: JoinSet<()>,
}

impl SpecUpstream {
    /// `http://ADDR`, what a spec app's `upstream` should say.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn current(&self) -> Arc<Version> {
        self.state.current.borrow().clone()
    }

    /// Publishes a new version now (as `POST /__publish` does).
    pub fn publish(&self) -> anyhow::Result<Arc<Version>> {
        self.state.publish()
    }

    /// Follows every published version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Version>> {
        self.state.current.subscribe()
    }

    pub fn counts(&self) -> &Counts {
        &self.state.counts
    }
}

/// The wall clock in ms since the Unix epoch (lcuts are such times).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

/// The first version's document and lcut.
fn first_document(opts: &Options) -> anyhow::Result<(Value, u64)> {
    match &opts.source {
        Source::Gates(0) => bail!("--gates must be at least 1"),
        Source::Gates(n) => {
            let lcut = opts.lcut.unwrap_or_else(now_ms);
            Ok((gates::payload(*n, lcut), lcut))
        }
        Source::File(path) => {
            let shown = path.display();
            let text =
                std::fs::read(path).map_err(|e| anyhow!("read {shown}: {}", describe(&e)))?;
            let mut doc: Value = serde_json::from_slice(&text)
                .map_err(|e| anyhow!("{shown}: not valid JSON: {e}"))?;
            let Some(obj) = doc.as_object_mut() else {
                bail!("{shown}: not a JSON object (a DCS payload is one)");
            };
            let lcut = opts
                .lcut
                .or_else(|| obj.get("time").and_then(Value::as_u64).filter(|&t| t > 0))
                .unwrap_or_else(now_ms);
            obj.insert("time".into(), lcut.into());
            Ok((doc, lcut))
        }
    }
}

/// Binds and starts serving (and publishing, with `publish_every`).
pub async fn start(opts: &Options) -> anyhow::Result<SpecUpstream> {
    for k in &opts.sdk_keys {
        if k.is_empty() || k.contains('/') || !k.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("--sdk-key {k:?}: a key is printable ASCII without spaces or `/`");
        }
    }
    if opts.publish_every.is_some_and(|d| d.is_zero()) {
        bail!("--publish-every must be longer than 0");
    }
    let (doc, lcut) = first_document(opts)?;
    let body = serde_json::to_vec(&doc).context("serialize the payload")?;
    let first = Arc::new(Version {
        number: 1,
        lcut,
        body: body.into(),
        flipped: None,
    });
    let addr = resolve(&opts.listen, Family::Any)
        .await
        .with_context(|| format!("listen {}", opts.listen))?
        .first()
        .copied()
        .with_context(|| format!("listen {}: no address", opts.listen))?;
    let listener =
        crate::cmd::echo::bind(addr).map_err(|e| anyhow!("listen {addr}: {}", describe(&e)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| anyhow!("listen {addr}: {}", describe(&e)))?;
    let state = Arc::new(State {
        keys: opts.sdk_keys.iter().cloned().collect(),
        doc: Mutex::new(doc),
        current: watch::Sender::new(first),
        counts: Counts::default(),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(accept_loop(listener, state.clone()));
    if let Some(every) = opts.publish_every {
        let state = state.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                // Serializing a JSON value into a Vec does not fail.
                let _ = state.publish();
            }
        });
    }
    Ok(SpecUpstream {
        addr,
        state,
        _tasks: tasks,
    })
}

/// `ftest spec-upstream`: serve until Ctrl-C or SIGTERM, printing each version.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    use std::io::Write;
    let opts = Options::from_args(args)?;
    let up = start(&opts).await?;
    // Before saying it listens: a version or a signal right after that is not missed.
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let mut versions = up.subscribe();
    let v = versions.borrow_and_update().clone();
    let write_err = |e: std::io::Error| anyhow!("write output: {}", describe(&e));
    let mut out = std::io::stdout();
    writeln!(
        out,
        "spec-upstream listening on {} ({} SDK key(s)); version 1: lcut {}, {} bytes",
        up.addr,
        opts.sdk_keys.len(),
        v.lcut,
        v.body.len()
    )
    .map_err(write_err)?;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = versions.changed() => {
                if changed.is_err() {
                    break;
                }
                let v = versions.borrow_and_update().clone();
                writeln!(out, "published {}", describe_version(&v)).map_err(write_err)?;
            }
        }
    }
    let c = up.counts();
    writeln!(
        out,
        "spec-upstream: {} full, {} unchanged, {} unauthorized, {} id lists, {} publishes, {} other",
        c.full.load(Ordering::Relaxed),
        c.unchanged.load(Ordering::Relaxed),
        c.unauthorized.load(Ordering::Relaxed),
        c.id_lists.load(Ordering::Relaxed),
        c.publishes.load(Ordering::Relaxed),
        c.other.load(Ordering::Relaxed),
    )
    .map_err(write_err)?;
    Ok(())
}

fn describe_version(v: &Version) -> String {
    let gate = match &v.flipped {
        Some((name, on)) => format!(", gate {name} enabled={on}"),
        None => String::new(),
    };
    format!(
        "version {}: lcut {}, {} bytes{gate}",
        v.number,
        v.lcut,
        v.body.len()
    )
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    // Owning the connections here means aborting this task closes them too.
    let mut conns = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, &req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
            // Out of file descriptors and the like: wait instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(body: String) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, "application/json", body.into())
}

fn answer(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let c = &state.counts;
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [v, "download_config_specs", rest @ ..])
            if (*v == "v1" || *v == "v2") && rest.len() <= 1 =>
        {
            dcs(state, req, rest.first().copied())
        }
        (&Method::POST, [_, "get_id_lists"]) => {
            c.id_lists.fetch_add(1, Ordering::Relaxed);
            json("{}".into())
        }
        (&Method::POST, ["__publish"]) => match state.publish() {
            Ok(v) => json(format!(
                r#"{{"version":{},"lcut":{},"bytes":{}}}"#,
                v.number,
                v.lcut,
                v.body.len()
            )),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("publish failed: {e:#}").into(),
            ),
        },
        (&Method::GET, ["__status"]) => {
            #[derive(Serialize)]
            struct Status<'a> {
                version: u64,
                lcut: u64,
                bytes: usize,
                requests: &'a Counts,
            }
            let v = state.current.borrow().clone();
            let status = Status {
                version: v.number,
                lcut: v.lcut,
                bytes: v.body.len(),
                requests: c,
            };
            // Numbers only: serializing cannot fail.
            json(serde_json::to_string(&status).unwrap_or_default())
        }
        _ => {
            c.other.fetch_add(1, Ordering::Relaxed);
            respond(StatusCode::NOT_FOUND, "text/plain", "Not Found".into())
        }
    }
}

fn dcs(state: &State, req: &Request<Incoming>, file: Option<&str>) -> Response<Full<Bytes>> {
    let c = &state.counts;
    // Like the CDN and fproxy: the header wins over the path.
    let from_header = req
        .headers()
        .get("statsig-api-key")
        .and_then(|v| v.to_str().ok());
    let from_path = file.map(|f| {
        f.strip_suffix(".json")
            .or_else(|| f.strip_suffix(".js"))
            .unwrap_or(f)
    });
    let known = from_header
        .or(from_path)
        .is_some_and(|k| state.keys.contains(k));
    if !known {
        c.unauthorized.fetch_add(1, Ordering::Relaxed);
        return respond(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "Unauthorized".into(),
        );
    }
    let since = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "sinceTime")
            .and_then(|(_, v)| v.parse::<u64>().ok())
    });
    let v = state.current.borrow().clone();
    let mut r = if since.is_some_and(|s| v.lcut <= s) {
        c.unchanged.fetch_add(1, Ordering::Relaxed);
        json(r#"{"has_updates":false}"#.into())
    } else {
        c.full.fetch_add(1, Ordering::Relaxed);
        respond(StatusCode::OK, "application/json", v.body.clone())
    };
    r.headers_mut()
        .insert("x-since-time", HeaderValue::from(v.lcut));
    r
}
