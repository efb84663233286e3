//! The admin HTTP/1.1 server: one task accepting, one per connection.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::host::HostPolicy;
use super::status::{AppStatus, Status};
use super::{ReloadAnswer, Request};
use crate::config::AdminConfig;
use crate::metrics::Metrics;
use crate::server::{self as srv, ConnCap, Stop, Timeouts};

/// How long the daemon loop may take to answer a question about its state. It only
/// blocks for the length of a rollout, so this is generous.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long `POST /reload` waits for the source's next update.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// Pause after an accept error that is about resources (EMFILE...), not the client.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The Prometheus content type of what [`Metrics::encode`] writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound admin socket, not serving yet (phase 1 of a rollout).
#[derive(Debug)]
pub(crate) struct StagedAdmin {
    listener: std::net::TcpListener,
}

impl StagedAdmin {
    /// Binds `addr`. Unlike app listeners there is no SO_REUSEPORT: a second daemon
    /// on the same admin address must fail rather than silently share it.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<StagedAdmin> {
        Ok(StagedAdmin {
            listener: crate::listener::bind_socket(addr, false)?,
        })
    }

    /// Starts serving (phase 2). Fails only if the runtime cannot register the socket.
    /// `config` gives the limits and allowed hosts; its address is the bound one.
    pub(crate) fn start(
        self,
        requests: mpsc::Sender<Request>,
        metrics: Arc<Metrics>,
        config: &AdminConfig,
    ) -> io::Result<AdminServer> {
        let listener = TcpListener::from_std(self.listener)?;
        let local = listener.local_addr()?;
        let stop = CancellationToken::new();
        let conns = ConnCap::new(metrics.server.handles("admin", ""));
        let ctx = Arc::new(Ctx {
            requests,
            metrics,
            settings: ArcSwap::from_pointee(Settings::of(local, config)),
        });
        let task = tokio::spawn(accept_loop(listener, ctx.clone(), conns, stop.clone()));
        tracing::info!(addr = %local, "admin API listening");
        Ok(AdminServer {
            local,
            stop,
            task,
            ctx,
        })
    }
}

/// A serving admin API.
#[derive(Debug)]
pub(crate) struct AdminServer {
    local: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
    ctx: Arc<Ctx>,
}

impl AdminServer {
    /// The bound address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A reload changed the admin config but not its address: new connections
    /// get the new limits, every request the new host rules.
    pub(crate) fn reconfigure(&self, config: &AdminConfig) {
        self.ctx
            .settings
            .store(Arc::new(Settings::of(self.local, config)));
    }

    /// Stops accepting and closes the socket. Connections carry on in the background
    /// until their request in flight is answered (a reload that moved the admin
    /// address still answers on the old one): waiting for them here would deadlock,
    /// since their answers come from the daemon loop that calls this.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
        tracing::info!(addr = %self.local, "admin API stopped");
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Ctx {
    requests: mpsc::Sender<Request>,
    metrics: Arc<Metrics>,
    /// Swapped whole on reload, so a reader never mixes two versions.
    settings: ArcSwap<Settings>,
}

/// Host rules and connection limits, from the config.
#[derive(Debug)]
struct Settings {
    hosts: HostPolicy,
    timeouts: Timeouts,
    max_connections: usize,
}

impl Settings {
    /// `local` is the bound address (the config's may have port 0).
    fn of(local: SocketAddr, config: &AdminConfig) -> Settings {
        Settings {
            hosts: HostPolicy::new(local, &config.allowed_hosts),
            timeouts: Timeouts {
                header: config.header_timeout,
                keepalive: config.keepalive_timeout,
            },
            max_connections: config.max_connections,
        }
    }
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("admin::Ctx")
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    conns: Arc<ConnCap>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                // Over the cap the connection is dropped (closed) here, at once.
                let max = ctx.settings.load().max_connections;
                let Some(guard) = conns.try_acquire(max, "admin") else {
                    continue;
                };
                tokio::spawn(serve(stream, ctx.clone(), guard, stop.clone()));
            }
            Err(e) => {
                // EMFILE and the like: the operator must see it (rate-limited, the
                // loop retries every pause).
                static ACCEPT_FAILED: crate::loglimit::LogLimit =
                    crate::loglimit::LogLimit::per_second();
                if let Some(suppressed) = ACCEPT_FAILED.allow() {
                    tracing::warn!(error = %e, suppressed, pause = ?ACCEPT_ERROR_PAUSE, "admin accept failed (out of file descriptors or buffers?); pausing");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Serves one connection. On stop it finishes the request in flight (bounded by
/// the answer waits) and closes.
async fn serve(stream: TcpStream, ctx: Arc<Ctx>, guard: srv::ConnGuard, stop: CancellationToken) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let timeouts = ctx.settings.load().timeouts;
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(checked(&ctx, local, req).await) }
    });
    let stop = Stop {
        graceful: stop,
        // The grace and the answer waits bound a stop; nothing cuts harder.
        force: CancellationToken::new(),
    };
    srv::serve(stream, svc, timeouts, guard, stop).await;
}

/// Refuses requests whose Host or Origin is not this API (see [`HostPolicy`]).
async fn checked(ctx: &Ctx, local: SocketAddr, req: hyper::Request<Incoming>) -> Resp {
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
    };
    // HTTP/2 carries the host in the URI (`:authority`).
    let host = header(HOST).or_else(|| req.uri().authority().map(|a| a.as_str()));
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if let Err(why) = ctx
        .settings
        .load()
        .hosts
        .check(host, header(ORIGIN), safe, local)
    {
        static REFUSED: crate::loglimit::LogLimit = crate::loglimit::LogLimit::per_second();
        if let Some(suppressed) = REFUSED.allow() {
            tracing::warn!(suppressed, reason = %why, "admin request refused");
        }
        return text(StatusCode::FORBIDDEN, &format!("{why}\n"));
    }
    route(ctx, req).await
}

type Resp = Response<Full<Bytes>>;

async fn route(ctx: &Ctx, req: hyper::Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let allowed = match path.as_str() {
        "/live" | "/ready" | "/status" | "/metrics" => "GET, HEAD",
        "/reload" => "POST",
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found; endpoints: GET /live, /ready, /status, /metrics; POST /reload\n",
            )
        }
    };
    // hyper leaves the body out of HEAD answers itself.
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/live") => live(ctx).await,
        (&Method::GET | &Method::HEAD, "/ready") => ready(ctx).await,
        (&Method::GET | &Method::HEAD, "/status") => status(ctx).await,
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(ctx.metrics.encode())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            r
        }
        (&Method::POST, "/reload") => reload(ctx).await,
        _ => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{path} allows {allowed}\n"),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            r
        }
    }
}

/// Why the daemon loop gave no answer.
enum NoAnswer {
    Timeout,
    Stopped,
}

impl NoAnswer {
    fn response(&self, what: &str) -> Resp {
        match self {
            NoAnswer::Timeout => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the daemon did not answer {what} within {ANSWER_WAIT:?}\n"),
            ),
            NoAnswer::Stopped => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is shutting down\n",
            ),
        }
    }
}

/// Sends the daemon loop a request made with a fresh reply channel, and waits up to
/// `wait` for the whole exchange.
async fn ask<T>(
    ctx: &Ctx,
    wait: Duration,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, NoAnswer> {
    let (tx, rx) = oneshot::channel();
    let exchange = async {
        ctx.requests
            .send(make(tx))
            .await
            .map_err(|_| NoAnswer::Stopped)?;
        rx.await.map_err(|_| NoAnswer::Stopped)
    };
    tokio::time::timeout(wait, exchange)
        .await
        .unwrap_or(Err(NoAnswer::Timeout))
}

async fn live(ctx: &Ctx) -> Resp {
    match ask(ctx, ANSWER_WAIT, Request::Ping).await {
        Ok(()) => text(StatusCode::OK, "live\n"),
        Err(e) => e.response("a ping"),
    }
}

async fn status(ctx: &Ctx) -> Resp {
    match ask(ctx, ANSWER_WAIT, Request::Status).await {
        Ok(s) => json(StatusCode::OK, &s),
        Err(e) => e.response("a status request"),
    }
}

/// The body of `/ready`.
#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    version: u64,
    /// Why not ready, one line per app problem (empty when ready).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
    apps: Vec<AppReadiness<'a>>,
}

#[derive(Serialize)]
struct AppReadiness<'a> {
    name: &'a str,
    kind: &'a str,
    ready: bool,
}

async fn ready(ctx: &Ctx) -> Resp {
    let status = match ask(ctx, ANSWER_WAIT, Request::Status).await {
        Ok(s) => s,
        Err(e) => return e.response("a status request"),
    };
    let body = Readiness {
        ready: status.ready,
        version: status.version,
        problems: if status.ready {
            Vec::new()
        } else {
            not_ready_reasons(&status)
        },
        apps: status
            .apps
            .iter()
            .map(|a| AppReadiness {
                name: &a.name,
                kind: &a.kind,
                ready: a.ready,
            })
            .collect(),
    };
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, &body)
}

/// One line per reason the daemon is not ready, naming the app (and the key).
fn not_ready_reasons(status: &Status) -> Vec<String> {
    if status.version == 0 {
        return vec!["no config has been applied yet".into()];
    }
    let mut out = Vec::new();
    for app in status.apps.iter().filter(|a| !a.ready) {
        let before = out.len();
        app_reasons(app, &mut out);
        if out.len() == before {
            out.push(format!("app {:?}: not ready", app.name));
        }
    }
    out
}

fn app_reasons(app: &AppStatus, out: &mut Vec<String>) {
    // Spec problems are per key: name the (masked) key.
    if let Some(spec) = &app.spec {
        for k in &spec.keys {
            if let Some(p) = &k.problem {
                out.push(format!("app {:?}: key {}: {p}", app.name, k.key));
            }
        }
        return;
    }
    for p in &app.problems {
        out.push(format!("app {:?}: {p}", app.name));
    }
}

async fn reload(ctx: &Ctx) -> Resp {
    match ask(ctx, RELOAD_WAIT, Request::Reload).await {
        Ok(ReloadAnswer::Done(r)) => {
            let code = if r.result == "refused" {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            };
            json(code, &r)
        }
        Ok(ReloadAnswer::Unsupported(why)) => {
            text(StatusCode::NOT_IMPLEMENTED, &format!("{why}\n"))
        }
        Err(NoAnswer::Timeout) => text(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("no config update arrived within {RELOAD_WAIT:?}\n"),
        ),
        Err(e @ NoAnswer::Stopped) => e.response("the reload"),
    }
}

fn text(code: StatusCode, body: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(code: StatusCode, body: &impl Serialize) -> Resp {
    match serde_json::to_vec_pretty(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            let mut r = Response::new(Full::new(Bytes::from(bytes)));
            *r.status_mut() = code;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the answer: {e}\n"),
        ),
    }
}
