//! The `ftest` binary: exit codes and messages, one success and one failure per
//! command, against in-process fproxy and echo backends.

mod common;

use std::process::{Output, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

fn ftest() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ftest"));
    c.stdin(Stdio::null()).kill_on_drop(true);
    c
}

async fn output(args: &[&str]) -> Output {
    ftest().args(args).output().await.expect("run ftest")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_serves_until_sigterm_and_fails_on_a_taken_port() {
    let mut child = ftest()
        .args(["echo", "--listen", "127.0.0.1:0", "--id", "one"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let addr: std::net::SocketAddr = first
        .strip_prefix("backend one listening on ")
        .unwrap_or_else(|| panic!("{first}"))
        .parse()
        .unwrap();
    let who = ftest::cmd::balancer::ask(addr, std::time::Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(who, ftest::probe::Identity::Backend("one".into()));

    // The same port again: refused with where and why.
    let taken = output(&["echo", "--listen", &addr.to_string()]).await;
    assert_eq!(taken.status.code(), Some(1));
    assert_eq!(
        text(&taken.stderr),
        format!("error: listen {addr}: address already in use\n")
    );

    let pid = child.id().unwrap().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert!(
        rest.contains("backend one: 1 connections (1 identity probes)"),
        "{rest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_exit_codes() {
    let e = common::backends(2).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(1)]).await;
    let ok = output(&["ping", &p.addr.to_string(), "-c", "3", "-i", "0"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("3 tries, 3 ok, 0 failed"));
    assert!(ok.stderr.is_empty());

    let dead = common::dead_addr().to_string();
    let bad = output(&["ping", &dead, "-c", "1"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stdout).contains(&format!("seq=1: connect {dead}: connection refused")));
    assert_eq!(
        text(&bad.stderr),
        format!("error: ping {dead}: 1 of 1 tries failed\n")
    );

    // Bad addresses are refused before any connection (no DNS query leaves the host).
    let no_port = output(&["ping", "localhost", "-c", "1"]).await;
    assert_eq!(no_port.status.code(), Some(1));
    assert_eq!(
        text(&no_port.stderr),
        "error: `localhost` has no port (expected host:port, 1.2.3.4:port or [::1]:port)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_exit_codes() {
    let e = common::backends(3).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(1), e.addr(2)]).await;
    let addr = p.addr.to_string();
    let ok = output(&["balancer", &addr, "-n", "9", "--expect", "round-robin"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("expect round-robin: holds"));

    let skewed = common::proxy_to(&[e.addr(0), e.addr(0), e.addr(1)]).await;
    let bad = output(&[
        "balancer",
        &skewed.addr.to_string(),
        "-n",
        "9",
        "--expect",
        "round-robin",
    ])
    .await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stdout).contains("expect round-robin: DOES NOT HOLD"));
    assert!(text(&bad.stderr).starts_with(&format!(
        "error: balancer {}: round-robin does not hold: connection ",
        skewed.addr
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_weights_and_sources_exit_codes() {
    let e = common::backends(2).await;
    let p = common::proxy_with("round_robin", &[(e.addr(0), 2), (e.addr(1), 1)]).await;
    let addr = p.addr.to_string();
    let ok = output(&[
        "balancer",
        &addr,
        "-n",
        "6",
        "--expect",
        "round-robin",
        "--weights",
        "2,1",
    ])
    .await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("expect round-robin: holds: every cycle of 3"));

    // Round robin is not sticky, seen from 4 sources.
    let bad = output(&[
        "balancer",
        &addr,
        "-n",
        "8",
        "--expect",
        "sticky",
        "--source-ips",
        "4",
    ])
    .await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stdout).contains("from 127.0.0.4  "));
    assert!(text(&bad.stderr).starts_with(&format!(
        "error: balancer {addr}: consistent-hash does not hold: connections from 127.0.0."
    )));

    // Options that do not fit: said before any connection.
    let p2c = output(&["balancer", &addr, "--expect", "p2c", "--weights", "2,1"]).await;
    assert_eq!(p2c.status.code(), Some(1));
    assert!(text(&p2c.stderr).starts_with("error: --weights does not apply to p2c"));
    let v6 = output(&["balancer", "[::1]:1", "--source-ips", "2"]).await;
    assert_eq!(v6.status.code(), Some(1));
    assert!(text(&v6.stderr).contains("reach only a loopback IPv4 target; [::1]:1 is not one"));
    let both = output(&["balancer", &addr, "--weights", "2,1", "--backends", "2"]).await;
    assert_eq!(both.status.code(), Some(2));
    let zero = output(&["balancer", &addr, "--weights", "2,0"]).await;
    assert_eq!(zero.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_exit_codes_and_json() {
    let e = common::backends(2).await;
    let p = common::proxy_to(&[e.addr(0), e.addr(1)]).await;
    let ok = output(&[
        "simulate",
        &p.addr.to_string(),
        "-c",
        "4",
        "-n",
        "500",
        "--json",
    ])
    .await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["ok"], 500);
    assert_eq!(v["failed"], 0);

    let dead = common::dead_addr().to_string();
    let bad = output(&["simulate", &dead, "-c", "2", "-n", "10", "--json", "-q"]).await;
    assert_eq!(bad.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["errors"]["refused"], 10);
    assert_eq!(
        text(&bad.stderr),
        format!("error: simulate {dead}: 10 of 10 requests failed\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_go_to_stderr_when_not_a_terminal() {
    let e = common::backends(1).await;
    let out = output(&[
        "simulate",
        &e.addr(0).to_string(),
        "-c",
        "2",
        "-d",
        "1200ms",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("[   1s] ") && err.contains(" req/s"), "{err}");
    assert!(text(&out.stdout).contains("latency ms:  p50 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_usage_errors() {
    let ok = output(&["completions", "bash"]).await;
    assert_eq!(ok.status.code(), Some(0));
    assert!(text(&ok.stdout).contains("_ftest()"));
    let bad = output(&["completions", "tcsh"]).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("invalid value 'tcsh'"));
    // simulate needs --duration or --requests.
    let missing = output(&["simulate", "127.0.0.1:1", "-c", "1"]).await;
    assert_eq!(missing.status.code(), Some(2));
    let both = output(&["simulate", "127.0.0.1:1", "-c", "1", "-n", "1", "-d", "1s"]).await;
    assert_eq!(both.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_help_with_an_example() {
    for cmd in [
        "echo",
        "ping",
        "balancer",
        "simulate",
        "completions",
        "spec-upstream",
        "spec-load",
    ] {
        let out = output(&[cmd, "--help"]).await;
        assert_eq!(out.status.code(), Some(0), "{cmd}");
        let help = text(&out.stdout);
        assert!(help.contains("Examples:"), "{cmd}: {help}");
        assert!(help.contains(&format!("ftest {cmd} ")), "{cmd}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_binary_answers_plain_clients_byte_for_byte() {
    // Same binary, a client that never probes: nothing added, nothing lost.
    let mut child = ftest()
        .args(["echo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let addr = first.rsplit(' ').next().unwrap().to_string();
    assert!(
        first.starts_with(&format!("backend {addr} listening on {addr}")),
        "{first}"
    );
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"plain\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got)
        .await
        .unwrap();
    assert_eq!(got, b"plain\n");
    child.kill().await.unwrap();
}
