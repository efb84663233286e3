//! Test harness: real backends on loopback and a real daemon fed by the real file
//! watcher. Every wait is on an event (a daemon event, a socket read) bounded by
//! [`WAIT`], never a sleep.
#![allow(dead_code)]

pub mod bin;
pub mod prom;
pub mod redis_server;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fproxy::daemon::{Applied, Event};
use fproxy::{ConfigSubscriber, Daemon, FileWatcher, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits on; reached only when something is broken.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Runs the futures at once, each on its own task; their outputs in order, each
/// within [`WAIT`].
pub async fn join_all<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(within("a joined task", h).await.unwrap());
    }
    out
}

/// A port nothing listens on (bound then released).
pub fn free_port() -> u16 {
    free_port_on([127, 0, 0, 1])
}

/// A port nothing listens on at `ip`. Listeners a test binds again and again belong
/// on a loopback address of their own (127.0.0.20 and up): on 127.0.0.1 a released
/// port can be taken meanwhile as the local port of some outgoing connection.
pub fn free_port_on(ip: [u8; 4]) -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// An address that refuses connections.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A plain echo backend.
pub async fn echo_backend(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).await.expect("bind backend");
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An echo backend that first sends its one-byte tag, so a client can tell which
/// backend it reached.
pub async fn tagged_backend(tag: u8) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if s.write_all(&[tag]).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Connects and returns the backend's tag.
pub async fn which(addr: SocketAddr) -> std::io::Result<(u8, TcpStream)> {
    let mut s = TcpStream::connect(addr).await?;
    let mut tag = [0u8; 1];
    tokio::time::timeout(WAIT, s.read_exact(&mut tag))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no tag"))??;
    Ok((tag[0], s))
}

/// One short connection: send `payload`, half-close, expect it back whole.
pub async fn ping(addr: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(payload).await?;
    s.shutdown().await?;
    let mut back = Vec::with_capacity(payload.len());
    tokio::time::timeout(WAIT, s.read_to_end(&mut back))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo"))??;
    if back != payload {
        return Err(std::io::Error::other(format!(
            "echo mismatch: sent {} bytes, got {}",
            payload.len(),
            back.len()
        )));
    }
    Ok(())
}

/// A round trip on an open connection.
pub async fn roundtrip(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    s.write_all(payload).await?;
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo"))??;
    assert_eq!(back, payload);
    Ok(())
}

/// The daemon running on a config file, as the binary runs it.
pub struct Proxy {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub events: broadcast::Receiver<Event>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), fproxy::daemon::ApplyError>>,
    pub first: Applied,
    pub metrics: std::sync::Arc<fproxy::metrics::Metrics>,
}

impl Proxy {
    /// Writes `config` and starts the daemon on it; returns once it is applied.
    pub async fn start(config: &str) -> Proxy {
        Self::start_with(Registry::default(), config).await
    }

    pub async fn start_with(registry: Registry, config: &str) -> Proxy {
        Self::start_daemon(Daemon::new(registry), config).await
    }

    /// Runs `daemon` (built by the caller, e.g. with its own resolver) on `config`.
    pub async fn start_daemon(daemon: Daemon, config: &str) -> Proxy {
        Self::start_watching(daemon, config, |w| w).await
    }

    /// Like [`Proxy::start_daemon`], with the file watcher adjusted by `watcher`
    /// (a long debounce, say, so only explicit refreshes read the file).
    pub async fn start_watching(
        daemon: Daemon,
        config: &str,
        watcher: impl FnOnce(FileWatcher) -> FileWatcher,
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config).unwrap();
        let metrics = daemon.metrics();
        let mut events = daemon.events();
        let sub = watcher(FileWatcher::new(&path))
            .subscribe(daemon.validator())
            .expect("initial config is valid");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(sub, async {
            let _ = stopped.await;
        }));
        let first = match within("first rollout", events.recv()).await.unwrap() {
            Event::Applied(a) => a,
            other => panic!("first config not applied: {other:?}"),
        };
        Proxy {
            dir,
            path,
            events,
            stop: Some(stop),
            task,
            first,
            metrics,
        }
    }

    /// The daemon's metrics, scraped and parsed.
    pub fn scrape(&self) -> prom::Scrape {
        prom::Scrape::parse(&self.metrics.encode())
    }

    /// Bound addresses of `app` after the first rollout.
    pub fn addr(&self, app: &str) -> SocketAddr {
        self.first.listeners[app][0]
    }

    /// Replaces the config file the way editors do (write a temp file, rename it
    /// over) and returns the daemon's verdict.
    pub async fn reload(&mut self, config: &str) -> Event {
        let tmp = self.dir.path().join(".config.json.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
        within("reload event", self.events.recv()).await.unwrap()
    }

    pub async fn reload_ok(&mut self, config: &str) -> Applied {
        match self.reload(config).await {
            Event::Applied(a) => a,
            Event::Unchanged(a) => panic!("reload was unchanged: {a:?}"),
            Event::Refused { error } => panic!("reload refused: {error}"),
        }
    }

    /// The admin API's bound address (the config must have an `admin` section).
    pub fn admin(&self) -> SocketAddr {
        self.first.admin.expect("the config has no admin section")
    }

    /// `GET path` on the admin API: status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_request(self.admin(), reqwest::Method::GET, path).await
    }

    /// `POST path` on the admin API: status code and body.
    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        admin_request(self.admin(), reqwest::Method::POST, path).await
    }

    /// The admin API's `/metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        let (code, body) = self.admin_get("/metrics").await;
        assert_eq!(code, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Stops the daemon (drains) and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        within("daemon stop", &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// A JSON string list.
pub fn list<T: ToString>(items: &[T]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| format!("\"{}\"", i.to_string()))
        .collect();
    format!("[{}]", quoted.join(","))
}

/// A one-app config on a given listen address.
pub fn app(name: &str, listen: &[&str], targets: &[SocketAddr], extra: &str) -> String {
    format!(
        r#"{{"name":"{name}","listen":{},"targets":{}{extra}}}"#,
        list(listen),
        list(targets)
    )
}

pub fn config(apps: &[String]) -> String {
    format!(r#"{{"apps":[{}]}}"#, apps.join(","))
}

/// One request to an admin API, through a client independent of fproxy's own.
pub async fn admin_request(addr: SocketAddr, method: reqwest::Method, path: &str) -> (u16, String) {
    // reqwest is built without a TLS provider; plain HTTP still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = within(
        path,
        client
            .request(method, format!("http://{addr}{path}"))
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap())
}

/// A parsed Prometheus scrape.
pub struct Metrics(pub prometheus_parse::Scrape);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Metrics(prometheus_parse::Scrape::parse(lines).expect("metrics parse"))
    }

    /// The value of the sample `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    }

    /// Like [`Metrics::get`], 0 for a series not there yet.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}
