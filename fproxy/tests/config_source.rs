//! Reading and watching the config file: hostile file types and sizes, symlinks that
//! lead elsewhere, and SIGHUP. Tests of the real binary read its log.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::bin::{Bin, BIN};
use common::*;
use fproxy::daemon::{Event, ReloadError};
use fproxy::{ConfigSubscriber, Daemon, FileWatcher, Registry, Subscription, Update};
use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Writes `text` to a temporary file and renames it over `path`, as editors save.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn with_admin(apps: &[String]) -> String {
    format!(
        r#"{{"apps":[{}],"admin":{{"listen":"127.0.0.1:0"}}}}"#,
        apps.join(",")
    )
}

/// A FIFO with no writer swapped in for the config (opening it would block until a
/// writer comes) is refused by name; the daemon keeps serving, its admin API
/// answers, a later valid file is applied and SIGTERM still exits.
#[tokio::test]
async fn a_fifo_config_is_refused_and_the_daemon_carries_on() {
    let backend = echo_backend("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        with_admin(&[app("a", &["127.0.0.1:0"], &[backend], "")]),
    )
    .unwrap();
    let mut bin = Bin::start(&path).await;
    let listen = bin.addr("listening app=\"a\"");
    let admin = bin.addr("admin API listening");
    let mut open = TcpStream::connect(listen).await.unwrap();
    roundtrip(&mut open, b"before").await.unwrap();

    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &path).unwrap();
    let refused = bin.wait_for("config refused").await;
    assert!(
        refused.contains(&format!(
            "cannot read {}: is a FIFO (named pipe), not a regular file",
            path.display()
        )),
        "{refused}"
    );
    // On demand too, at once (the admin API waits 10 s for a stuck source).
    let (code, body) = admin_request(admin, reqwest::Method::POST, "/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("is a FIFO"), "{body}");
    let (code, body) = admin_request(admin, reqwest::Method::GET, "/status").await;
    assert_eq!(code, 200, "{body}");
    // Traffic flows: the open connection and new ones.
    roundtrip(&mut open, b"during").await.unwrap();
    ping(listen, b"new").await.unwrap();

    // A valid file again is applied.
    replace(
        &path,
        &with_admin(&[
            app("a", &["127.0.0.1:0"], &[backend], ""),
            app("b", &["127.0.0.1:0"], &[backend], ""),
        ]),
    );
    let applied = bin.wait_for("config applied").await;
    assert!(applied.contains("version=2"), "{applied}");
    drop(open);
    bin.stop().await;
}

#[tokio::test]
async fn a_fifo_config_at_start_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    mkfifo(&path);
    let out = within(
        "fproxy to exit",
        tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is a FIFO (named pipe), not a regular file"),
        "{stderr}"
    );
}

/// SIGHUP re-reads the file (the way systemd's `ExecReload` asks) and the process
/// keeps serving. The edit goes through a hard link in another directory, which the
/// watch on the config's directory does not see, so only SIGHUP can apply it.
#[tokio::test]
async fn sighup_rereads_the_config_and_keeps_serving() {
    let backend = echo_backend("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, config(&[app("a", &["127.0.0.1:0"], &[backend], "")])).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let alias = elsewhere.path().join("alias.json");
    std::fs::hard_link(&path, &alias).unwrap();
    let mut bin = Bin::start(&path).await;
    let a = bin.addr("listening app=\"a\"");

    // Nothing changed: only a forced re-read reports "unchanged".
    bin.signal(Signal::SIGHUP);
    bin.wait_for("SIGHUP: reloading config").await;
    let line = bin.wait_for("config unchanged").await;
    assert!(line.contains("version=1"), "{line}");

    // In place, through the other name: same inode, no event in the watched directory.
    std::fs::write(
        &alias,
        config(&[
            app("a", &["127.0.0.1:0"], &[backend], ""),
            app("b", &["127.0.0.1:0"], &[backend], ""),
        ]),
    )
    .unwrap();
    bin.signal(Signal::SIGHUP);
    bin.wait_for("SIGHUP: reloading config").await;
    let applied = bin.wait_for("config applied").await;
    assert!(
        applied.contains("version=2") && applied.contains(r#"added=["b"]"#),
        "{applied}"
    );
    let b = bin.addr("listening app=\"b\"");
    ping(b, b"new app").await.unwrap();
    ping(a, b"old app").await.unwrap();
    assert!(
        bin.child.try_wait().unwrap().is_none(),
        "SIGHUP ended fproxy"
    );
    bin.stop().await;
}

/// The daemon running on the file at `path`, watched by the real file watcher.
struct Run {
    events: broadcast::Receiver<Event>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), fproxy::daemon::ApplyError>>,
}

impl Run {
    async fn start(path: &Path) -> Run {
        let daemon = Daemon::new(Registry::default());
        let mut events = daemon.events();
        let sub = FileWatcher::new(path)
            .subscribe(daemon.validator())
            .expect("initial config is valid");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(sub, async {
            let _ = stopped.await;
        }));
        match within("first rollout", events.recv()).await.unwrap() {
            Event::Applied(_) => {}
            other => panic!("first config not applied: {other:?}"),
        }
        Run { events, stop, task }
    }

    /// Waits (within [`WAIT`]) for a new version to be applied. An edit in place
    /// is a truncate and a write, two syscalls: when the watcher reads between them
    /// it sees a partial file and refuses it (or the old one again), then the write
    /// brings the new text. Those in-between events are passed over; they are kept
    /// to show should the new version never come.
    async fn applied(&mut self, what: &str) {
        let mut between = Vec::new();
        let events = &mut self.events;
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(Event::Applied(_)) => return,
                    Ok(other @ (Event::Refused { .. } | Event::Unchanged(_))) => {
                        between.push(other)
                    }
                    Err(e) => panic!("{what}: event stream: {e}"),
                }
            }
        };
        if tokio::time::timeout(WAIT, wait).await.is_err() {
            panic!("{what}: not applied within {WAIT:?}; events: {between:?}");
        }
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        within("daemon stop", self.task).await.unwrap().unwrap();
    }
}

/// A config whose one app targets `n` (so each `n` is a different config).
fn nth(n: u16) -> String {
    config(&[app(
        "a",
        &["127.0.0.1:0"],
        &[SocketAddr::from(([127, 0, 0, 1], 1000 + n))],
        "",
    )])
}

/// Writes into the existing file (same inode), as `echo >> file` or `sed -i`-less tools do.
fn edit_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn symlink(target: impl AsRef<Path>, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// Points `link` at `target` atomically (a new link renamed over it, like `ln -sfn`
/// with `mv -T`).
fn repoint(target: impl AsRef<Path>, link: &Path) {
    let tmp: PathBuf = link.with_extension("tmp-link");
    symlink(target, &tmp);
    std::fs::rename(&tmp, link).unwrap();
}

#[tokio::test]
async fn a_symlink_into_another_directory_is_followed() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("conf");
    let other = root.path().join("other");
    std::fs::create_dir(&conf).unwrap();
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("real.json"), nth(1)).unwrap();
    std::fs::write(other.join("second.json"), nth(2)).unwrap();
    let path = conf.join("config.json");
    symlink("../other/real.json", &path);
    let mut run = Run::start(&path).await;

    edit_in_place(&other.join("real.json"), &nth(3));
    run.applied("in-place edit of the link's target").await;
    repoint("../other/second.json", &path);
    run.applied("the link repointed").await;
    edit_in_place(&other.join("second.json"), &nth(4));
    run.applied("in-place edit of the new target").await;
    run.finish().await;
}

/// Kubernetes mounts a ConfigMap as `config.json -> ..data/config.json`, `..data ->
/// ..<timestamp>`, and updates it by writing a new timestamped directory, renaming a
/// `..data_tmp` link over `..data` and deleting the old directory.
#[tokio::test]
async fn a_kubernetes_configmap_swap_is_followed() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let generation = |n: u16| {
        let d = r.join(format!("..2026_01_0{n}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("config.json"), nth(n)).unwrap();
        d
    };
    let first = generation(1);
    symlink(first.file_name().unwrap(), &r.join("..data"));
    let path = r.join("config.json");
    symlink("..data/config.json", &path);
    let mut run = Run::start(&path).await;

    let mut old = first;
    for n in 2..=3 {
        let new = generation(n);
        symlink(new.file_name().unwrap(), &r.join("..data_tmp"));
        std::fs::rename(r.join("..data_tmp"), r.join("..data")).unwrap();
        std::fs::remove_dir_all(&old).unwrap();
        run.applied(&format!("swap {n}")).await;
        old = new;
    }
    // The watch moved to the current directory.
    edit_in_place(&old.join("config.json"), &nth(9));
    run.applied("in-place edit after the swaps").await;
    run.finish().await;
}

#[tokio::test]
async fn an_oversize_config_is_refused_by_name() {
    let backend = echo_backend("127.0.0.1:0").await;
    let mut p = Proxy::start(&config(&[app("a", &["127.0.0.1:0"], &[backend], "")])).await;
    let tmp = p.dir.path().join("big.tmp");
    // Sparse: 16 MiB + 1 byte of zeros on disk cost nothing.
    std::fs::File::create(&tmp)
        .unwrap()
        .set_len(fproxy::config::read::MAX_SIZE + 1)
        .unwrap();
    std::fs::rename(&tmp, &p.path).unwrap();
    match within("refusal", p.events.recv()).await.unwrap() {
        Event::Refused { error } => assert_eq!(
            error.to_string(),
            format!(
                "cannot read {}: is larger than the 16 MiB limit",
                p.path.display()
            )
        ),
        other => panic!("not refused: {other:?}"),
    }
    ping(p.addr("a"), b"still serving").await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn a_directory_config_is_refused_by_name() {
    // At start.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::new(Registry::default());
    let e = FileWatcher::new(dir.path())
        .subscribe(daemon.validator())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot read {}: is a directory, not a regular file",
            dir.path().display()
        )
    );

    // Swapped in later.
    let backend = echo_backend("127.0.0.1:0").await;
    let mut p = Proxy::start(&config(&[app("a", &["127.0.0.1:0"], &[backend], "")])).await;
    let tmp = p.dir.path().join("d.tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::remove_file(&p.path).unwrap();
    std::fs::rename(&tmp, &p.path).unwrap();
    let body = match within("refusal", p.events.recv()).await.unwrap() {
        Event::Refused { error } => error.to_string(),
        other => panic!("not refused: {other:?}"),
    };
    assert!(
        body.ends_with("is a directory, not a regular file"),
        "{body}"
    );
    ping(p.addr("a"), b"still serving").await.unwrap();
    p.stop().await;
}

/// An embedder's own source that cannot be re-read: a reload says so, by name, and
/// the daemon carries on with it.
#[tokio::test]
async fn reloader_on_a_source_that_cannot_reload_says_so() {
    let daemon = Daemon::new(Registry::default());
    let validator = daemon.validator();
    let mut events = daemon.events();
    let reloader = daemon.reloader();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Update::Config(validator.parse(&nth(1)).unwrap()))
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(Subscription::new(rx, ()), async {
        let _ = stopped.await;
    }));
    assert!(matches!(
        within("first rollout", events.recv()).await.unwrap(),
        Event::Applied(_)
    ));
    assert_eq!(
        within("reload", reloader.reload()).await.unwrap_err(),
        ReloadError::Unsupported("this config source cannot be re-read on demand (custom)".into())
    );
    tx.send(Update::Config(validator.parse(&nth(2)).unwrap()))
        .unwrap();
    assert!(matches!(
        within("second rollout", events.recv()).await.unwrap(),
        Event::Applied(_)
    ));
    let _ = stop.send(());
    within("daemon stop", task).await.unwrap().unwrap();
    // Once the daemon is gone, a reload says that.
    assert_eq!(reloader.reload().await.unwrap_err(), ReloadError::Stopped);
}
