//! `ftest echo`: echo backends that can say which one they are.
//!
//! Each `--listen` entry is one backend with one id. A host name entry listens on
//! every address the name resolves to, all as that one backend (so `localhost:9003`
//! serves both 127.0.0.1 and ::1 when the name has both). The identity probe is
//! described in [`crate::probe`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::net::{describe, resolve, Family};
use crate::probe::{self, PREFIX_WAIT, PROBE};

const EXAMPLES: &str = "\
Examples:
  # the backends of the example config.json (ids default to the addresses)
  ftest echo --listen 127.0.0.1:9001,127.0.0.1:9002,localhost:9003
  # IPv4 and IPv6 backends side by side
  ftest echo --listen 127.0.0.1:9001,[::1]:9001
  # one backend named blue on a free port (the port is printed)
  ftest echo --listen 127.0.0.1:0 --id blue

Ask a backend who it is (the identity probe, see docs/ftest.md):
  ftest balancer 127.0.0.1:9001 -n 1
  printf '\\0FTEST-ID?\\nhello\\n' | socat - TCP:127.0.0.1:9001   # ftest-echo id=..., hello";

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Addresses to listen on, one backend each: ip:port, [ipv6]:port or host:port.
    /// Port 0 picks a free port.
    #[arg(
        short,
        long,
        value_delimiter = ',',
        required = true,
        value_name = "ADDR[,ADDR...]"
    )]
    pub listen: Vec<String>,
    /// Backend ids: one per address, or one for all (numbered NAME-1, NAME-2, ...).
    /// Default: each address as written (the bound address for port 0).
    #[arg(long, value_delimiter = ',', value_name = "NAME[,NAME...]")]
    pub id: Vec<String>,
}

/// Copy buffer per connection: big enough for bulk echo, small enough for many.
const BUF_SIZE: usize = 16 * 1024;
/// Pause after an accept error that is about resources (EMFILE...), not one client.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// What a backend has served so far.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Connections that started with the identity probe.
    pub probes: AtomicU64,
    /// Bytes echoed back (probes not counted).
    pub bytes: AtomicU64,
}

/// One running backend.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    /// Bound addresses (the real port when 0 was asked for).
    pub addrs: Vec<SocketAddr>,
    pub stats: Arc<Stats>,
}

/// Running backends. Dropping this stops them: listeners and connections close.
#[derive(Debug)]
pub struct Echo {
    pub backends: Vec<Backend>,
    _tasks: JoinSet<()>,
}

impl Echo {
    /// The first bound address of backend `i` (panics when there is no backend `i`).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.backends[i].addrs[0]
    }
}

/// Binds every backend (all or nothing) and starts serving.
pub async fn start(listen: &[String], ids: &[String]) -> anyhow::Result<Echo> {
    let ids = assign_ids(listen, ids)?;
    let mut bound = Vec::new();
    for (entry, id) in listen.iter().zip(ids) {
        let addrs = resolve(entry, Family::Any)
            .await
            .with_context(|| format!("listen {entry}"))?;
        let mut listeners = Vec::new();
        let mut port = None;
        for mut addr in addrs {
            // A name on port 0: every address shares the port the first one got.
            if let Some(p) = port {
                addr.set_port(p);
            }
            let l = bind(addr).map_err(|e| anyhow::anyhow!("listen {addr}: {}", describe(&e)))?;
            let local = l
                .local_addr()
                .map_err(|e| anyhow::anyhow!("listen {addr}: {}", describe(&e)))?;
            port.get_or_insert(local.port());
            listeners.push((local, l));
        }
        let id = match id {
            Some(id) => id,
            None if port_is_zero(entry) => default_id(entry, listeners[0].0),
            None => entry.clone(),
        };
        probe::check_id(&id).map_err(|e| anyhow::anyhow!("listen {entry}: {e}"))?;
        bound.push((id, listeners));
    }
    check_unique(&bound)?;

    let mut tasks = JoinSet::new();
    let mut backends = Vec::new();
    for (id, listeners) in bound {
        let stats = Arc::new(Stats::default());
        let answer: Arc<[u8]> = probe::answer(&id).into();
        let addrs = listeners.iter().map(|(a, _)| *a).collect();
        for (_, l) in listeners {
            tasks.spawn(accept_loop(l, answer.clone(), stats.clone()));
        }
        backends.push(Backend { id, addrs, stats });
    }
    Ok(Echo {
        backends,
        _tasks: tasks,
    })
}

/// `ftest echo`: serve until Ctrl-C or SIGTERM, then print what was served.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    use std::io::Write;
    let echo = start(&args.listen, &args.id).await?;
    // Installed before saying it is ready, so a SIGTERM right after is not missed.
    let stop = super::stop_signal();
    let write_err = |e: io::Error| anyhow::anyhow!("write output: {}", describe(&e));
    // Line by line and unlocked between lines: scripts wait for "listening on".
    let mut out = std::io::stdout();
    for b in &echo.backends {
        let addrs: Vec<String> = b.addrs.iter().map(ToString::to_string).collect();
        writeln!(out, "backend {} listening on {}", b.id, addrs.join(", ")).map_err(write_err)?;
    }
    writeln!(
        out,
        "ftest echo: {} backend(s) ready; Ctrl-C to stop",
        echo.backends.len()
    )
    .map_err(write_err)?;
    stop.await;
    for b in &echo.backends {
        writeln!(
            out,
            "backend {}: {} connections ({} identity probes), {} bytes echoed",
            b.id,
            b.stats.connections.load(Ordering::Relaxed),
            b.stats.probes.load(Ordering::Relaxed),
            b.stats.bytes.load(Ordering::Relaxed),
        )
        .map_err(write_err)?;
    }
    Ok(())
}

fn assign_ids(listen: &[String], ids: &[String]) -> anyhow::Result<Vec<Option<String>>> {
    Ok(match (ids.len(), listen.len()) {
        (0, n) => vec![None; n],
        (1, 1) => vec![Some(ids[0].clone())],
        (1, n) => (1..=n).map(|i| Some(format!("{}-{i}", ids[0]))).collect(),
        (k, n) if k == n => ids.iter().cloned().map(Some).collect(),
        (k, n) => bail!("--id has {k} names for {n} addresses; give one name, or one per address"),
    })
}

fn port_is_zero(entry: &str) -> bool {
    entry.rsplit_once(':').is_some_and(|(_, p)| p == "0")
}

/// For port 0 the address as written would not tell backends apart: use the real port.
fn default_id(entry: &str, local: SocketAddr) -> String {
    match entry.parse::<SocketAddr>() {
        Ok(_) => local.to_string(),
        Err(_) => match entry.rsplit_once(':') {
            Some((host, _)) => format!("{host}:{}", local.port()),
            None => local.to_string(),
        },
    }
}

fn check_unique(bound: &[(String, Vec<(SocketAddr, TcpListener)>)]) -> anyhow::Result<()> {
    for (i, (id, _)) in bound.iter().enumerate() {
        if bound[..i].iter().any(|(other, _)| other == id) {
            bail!("two backends have the id {id:?}; give each its own --id");
        }
    }
    Ok(())
}

/// No SO_REUSEPORT: a second `ftest echo` on the same port is an error rather than a
/// silent split of the traffic.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(fproxy::listener::bind_socket(addr, false)?)
}

async fn accept_loop(listener: TcpListener, answer: Arc<[u8]>, stats: Arc<Stats>) {
    // Owning the connections here means aborting this task closes them too.
    let mut conns = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                conns.spawn(serve(stream, answer.clone(), stats.clone()));
                while conns.try_join_next().is_some() {}
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
        }
    }
}

/// Serves one connection. Errors only end it: a reset client is not the backend's
/// problem, and nobody is there to tell.
async fn serve(mut stream: TcpStream, answer: Arc<[u8]>, stats: Arc<Stats>) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.split();
    let _ = echo_with_probe(r, w, &answer, &stats).await;
}

/// The backend's side of a connection: answer a probe if the connection starts with
/// one, echo everything else.
async fn echo_with_probe<R, W>(mut r: R, mut w: W, answer: &[u8], stats: &Stats) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];

    // Phase 1: does the connection start with the probe? Decide on the first byte
    // that differs from it, or once it is complete; hold a matching prefix at most
    // PREFIX_WAIT (then it was data after all).
    let mut have = 0;
    loop {
        let n = if have == 0 {
            r.read(&mut buf).await?
        } else {
            match tokio::time::timeout(PREFIX_WAIT, r.read(&mut buf[have..])).await {
                Ok(n) => n?,
                Err(_) => {
                    stats.bytes.fetch_add(have as u64, Ordering::Relaxed);
                    w.write_all(&buf[..have]).await?;
                    break;
                }
            }
        };
        if n == 0 {
            stats.bytes.fetch_add(have as u64, Ordering::Relaxed);
            w.write_all(&buf[..have]).await?;
            return w.shutdown().await;
        }
        have += n;
        let m = have.min(PROBE.len());
        if buf[..m] != PROBE[..m] {
            stats.bytes.fetch_add(have as u64, Ordering::Relaxed);
            w.write_all(&buf[..have]).await?;
            break;
        }
        if have >= PROBE.len() {
            stats.probes.fetch_add(1, Ordering::Relaxed);
            stats
                .bytes
                .fetch_add((have - PROBE.len()) as u64, Ordering::Relaxed);
            // Answer and any data after the probe in one write: one segment back.
            let mut out = Vec::with_capacity(answer.len() + have - PROBE.len());
            out.extend_from_slice(answer);
            out.extend_from_slice(&buf[PROBE.len()..have]);
            w.write_all(&out).await?;
            break;
        }
    }

    // Phase 2: plain echo. A FIN from the client becomes our FIN (half-close).
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        w.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ids_pair_up_or_number() {
        let l = s(&["a:1", "b:2"]);
        assert_eq!(assign_ids(&l, &[]).unwrap(), vec![None, None]);
        assert_eq!(
            assign_ids(&l, &s(&["x"])).unwrap(),
            vec![Some("x-1".into()), Some("x-2".into())]
        );
        assert_eq!(
            assign_ids(&l, &s(&["p", "q"])).unwrap(),
            vec![Some("p".into()), Some("q".into())]
        );
        let e = assign_ids(&s(&["a:1", "b:2", "c:3"]), &s(&["p", "q"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--id has 2 names for 3 addresses; give one name, or one per address"
        );
    }

    /// Runs the backend logic over a scripted stream: reads arrive exactly as split
    /// in `script`, and every write must match.
    async fn serve_script(mock: tokio_test::io::Mock) {
        let (r, w) = tokio::io::split(mock);
        let stats = Stats::default();
        echo_with_probe(r, w, &probe::answer("b1"), &stats)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn probe_split_over_reads_is_answered() {
        let mock = tokio_test::io::Builder::new()
            .read(b"\0FT")
            .read(b"EST-ID?\nhel")
            .write(b"ftest-echo id=b1\nhel")
            .read(b"lo")
            .write(b"lo")
            .build();
        serve_script(mock).await;
    }

    #[tokio::test]
    async fn data_that_diverges_from_the_probe_is_echoed_untouched() {
        let mock = tokio_test::io::Builder::new()
            .read(b"\0F")
            .read(b"X")
            .write(b"\0FX")
            .read(b"more")
            .write(b"more")
            .build();
        serve_script(mock).await;
        let mock = tokio_test::io::Builder::new()
            .read(b"GET / HTTP/1.0\r\n")
            .write(b"GET / HTTP/1.0\r\n")
            .build();
        serve_script(mock).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_prefix_is_echoed_after_the_wait() {
        // The client sends one NUL and waits for it: it comes back after PREFIX_WAIT.
        let mock = tokio_test::io::Builder::new()
            .read(b"\0")
            .wait(PREFIX_WAIT * 2)
            .write(b"\0")
            .read(b"\0FTEST-ID?\n")
            .write(b"\0FTEST-ID?\n")
            .build();
        serve_script(mock).await;
    }

    #[tokio::test]
    async fn a_prefix_then_eof_is_echoed() {
        let mock = tokio_test::io::Builder::new()
            .read(b"\0FTE")
            .write(b"\0FTE")
            .build();
        serve_script(mock).await;
    }

    #[test]
    fn default_id_uses_the_real_port() {
        let local: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        assert_eq!(default_id("127.0.0.1:0", local), "127.0.0.1:4321");
        assert_eq!(default_id("localhost:0", local), "localhost:4321");
        assert!(port_is_zero("[::1]:0"));
        assert!(!port_is_zero("[::1]:9001"));
    }
}
