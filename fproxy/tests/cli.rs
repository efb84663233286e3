//! The `fproxy` binary: `check`, and draining on SIGTERM.

mod common;

use std::process::Command;

use common::bin::{Bin, BIN};
use common::*;
use nix::sys::signal::Signal;
use tokio::net::TcpStream;

/// Runs `fproxy check` on `config`; asserts it succeeds and prints `line`.
fn check_prints(config: &str, line: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(line), "{stdout}");
}

#[test]
fn check_summarises_a_valid_config() {
    check_prints(
        r#"{"Apps":[{"Name":"five-thousand","Ports":[5001,5200],"Targets":["tcp-echo.fly.dev:5001"]}]}"#,
        "five-thousand: tcp listen 0.0.0.0:5001,0.0.0.0:5200 -> tcp-echo.fly.dev:5001",
    );
}

#[test]
fn check_summarises_a_spec_app() {
    check_prints(
        r#"{"apps":[{"name":"statsig","kind":"spec","ports":[8000],"poll_interval":"5s"}]}"#,
        "statsig: spec http 0.0.0.0:8000 grpc - <- https://api.statsigcdn.com every 5s",
    );
}

#[test]
fn check_names_the_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        r#"{"apps":[{"name":"web","ports":[80],"targets":[]}]}"#,
    )
    .unwrap();
    // The path may also come from the environment, as for the daemon.
    let out = Command::new(BIN)
        .arg("check")
        .env("FPROXY_CONFIG_PATH", &path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("app \"web\": targets: must list at least one target"),
        "{stderr}"
    );
}

#[test]
fn refuses_to_start_on_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, "{\"apps\": [}").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 1 column 11"), "{stderr}");
}

#[tokio::test]
async fn sigterm_drains_open_connections_then_exits_zero() {
    let backend = echo_backend("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        // Port 0: the OS picks a free port, which the log then tells us.
        config(&[app(
            "d",
            &["127.0.0.1:0"],
            &[backend],
            r#","drain_timeout":"20s""#,
        )]),
    )
    .unwrap();
    let mut bin = Bin::start(&path).await;
    let listen = bin.addr("listening");
    let mut open = TcpStream::connect(listen).await.unwrap();
    roundtrip(&mut open, b"up").await.unwrap();

    bin.signal(Signal::SIGTERM);
    bin.wait_for("all listeners closed").await;
    // New connections are refused...
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "still accepting after SIGTERM"
    );
    // ...while the open one keeps working, and the process waits for it.
    roundtrip(&mut open, b"still draining").await.unwrap();
    assert!(
        bin.child.try_wait().unwrap().is_none(),
        "exited before the drain"
    );
    drop(open);
    let status = within("exit after drain", bin.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

/// Runs the binary with `args` without blocking the runtime the daemon under test
/// runs on.
async fn run_bin(args: &[&str], env: &[(&str, &std::path::Path)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_remove("FPROXY_CONFIG_PATH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    within("fproxy to exit", cmd.output()).await.unwrap()
}

#[tokio::test]
async fn status_prints_apps_and_targets() {
    let backend = echo_backend("127.0.0.1:0").await;
    let p = Proxy::start(&format!(
        r#"{{"apps":[{}],"admin":{{"listen":"127.0.0.1:0"}}}}"#,
        app("web", &["127.0.0.1:0"], &[backend], "")
    ))
    .await;
    let admin = p.admin().to_string();

    let out = run_bin(&["status", "--admin", &admin], &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "version       1",
        "ready         yes",
        &format!(
            "app web (tcp): ready, 0 connection(s), listening on {}",
            p.addr("web")
        ),
        "TARGET",
        &format!("{backend}  {backend}"),
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }

    let out = run_bin(&["status", "--json", "--admin", &admin], &[]).await;
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["apps"][0]["name"], "web");

    // Without --admin the config file's admin.listen is used, even while the rest of
    // the file is invalid (when the status matters most).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        format!(r#"{{"apps":[{{"name":"web"}}],"admin":{{"listen":"{admin}"}}}}"#),
    )
    .unwrap();
    let out = run_bin(&["status"], &[("FPROXY_CONFIG_PATH", &path)]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("app web (tcp)"), "{stdout}");
    p.stop().await;
}

#[tokio::test]
async fn status_names_the_address_it_cannot_reach() {
    let dead = dead_addr().to_string();
    let out = run_bin(&["status", "--admin", &dead], &[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to the admin API at {dead}")),
        "{stderr}"
    );

    // Without --admin, the config file says where; here it has no admin section.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, r#"{"apps":[]}"#).unwrap();
    let out = run_bin(&["status"], &[("FPROXY_CONFIG_PATH", &path)]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no `admin` section"), "{stderr}");
}
