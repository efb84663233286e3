//! The real Statsig Python SDK (PyPI `statsig`, pinned in tests/interop/requirements.txt)
//! against the spec app: it initialises over HTTP and over GRPC_WEBSOCKET streaming,
//! sees a gate on, then sees it off once the gate is turned off upstream.
//!
//! The test creates (once, and again when the requirements change) a virtualenv under
//! the target directory with `python3 -m venv` and pip; that needs PyPI the first time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::upstream::*;
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SDK_KEY: &str = "secret-interop-test-key";

/// The venv's python, made or refreshed as needed.
fn python() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let requirements = std::fs::read_to_string(dir.join("requirements.txt")).unwrap();
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("statsig-venv");
    let python = venv.join("bin/python");
    let marker = venv.join("requirements.installed");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(requirements.as_str()) {
        return python;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = std::fs::remove_dir_all(&venv);
    run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv));
    run(std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(dir.join("requirements.txt")));
    std::fs::write(&marker, requirements).unwrap();
    python
}

/// Runs the SDK client with `mode` args; flips the gate upstream when it reports the
/// gate on, and returns the milliseconds the SDK took to see it off.
async fn drive(up: &Upstream, mode: &[String]) -> u64 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sdk_client.py");
    let mut child = tokio::process::Command::new(python())
        .arg(script)
        .args(["--key", SDK_KEY, "--api", &format!("{}/v1", up.url())])
        .args(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdin = child.stdin.take().unwrap();
    let line = within("GATE_ON", out.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("GATE_ON"), "{mode:?}");

    up.publish(SDK_KEY, 2_000, gate_payload(2_000, false));
    stdin.write_all(b"flipped\n").await.unwrap();
    let line = within("SEEN_OFF", out.next_line())
        .await
        .unwrap()
        .unwrap_or_default();
    let ms = line
        .strip_prefix("SEEN_OFF ")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{mode:?}: {line}"));
    assert!(within("exit", child.wait()).await.unwrap().success());
    ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_http_and_grpc_streaming() {
    let poll = "100ms";
    for grpc in [false, true] {
        let (up, _seen) = Upstream::start().await;
        up.publish(SDK_KEY, 1_000, gate_payload(1_000, true));
        let cfg = format!(
            r#"{{"apps":[{{"name":"spec","kind":"spec","listen":["127.0.0.1:0"],"grpc_listen":["127.0.0.2:0"],"upstream":"{}","poll_interval":"{poll}"}}]}}"#,
            up.url()
        );
        let p = Proxy::start(&cfg).await;
        let addr = |ip: &str| {
            *p.first.listeners["spec"]
                .iter()
                .find(|a| a.ip().to_string() == ip)
                .unwrap()
        };
        let mode = if grpc {
            vec!["--grpc".to_string(), addr("127.0.0.2").to_string()]
        } else {
            vec![
                "--http".to_string(),
                format!("http://{}", addr("127.0.0.1")),
            ]
        };
        let ms = drive(&up, &mode).await;
        // "Within a couple of polling intervals": fproxy's (100 ms) plus the SDK's
        // own (200 ms for HTTP). Generous, to stay clear of a loaded machine.
        assert!(ms < 5_000, "{mode:?}: the flip took {ms} ms");
        println!(
            "{}: gate flip seen after {ms} ms",
            if grpc { "grpc" } else { "http" }
        );
        p.stop().await;
    }
}
