//! `ftest spec-upstream`: the routes, versions and errors of the fake Statsig CDN,
//! and fproxy's spec app following it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::KEY;
use ftest::cmd::spec_upstream::{self, Options, Source};
use ftest::http::{fetch, Response};
use hyper::Method;

const LIMIT: Duration = Duration::from_secs(10);

/// Waits for `f` at most [`LIMIT`]; reached only when something is broken.
async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn get(url: &str) -> Response {
    fetch(Method::GET, url, "", LIMIT).await.expect(url)
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_keys_since_time_and_published_versions() {
    let up = common::spec_upstream(5, None).await;
    let base = up.url();
    let v1 = up.current();
    assert_eq!(v1.number, 1);

    let r = get(&format!("{base}/v1/download_config_specs/{KEY}.json")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-since-time"), v1.lcut.to_string());
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.body, v1.body);
    let doc = json(&r);
    assert_eq!(doc["time"], v1.lcut, "time is the lcut");
    assert_eq!(doc["feature_gates"].as_array().map(Vec::len), Some(5));
    assert_eq!(doc["feature_gates"][0]["enabled"], true);

    // v2, `.js` and no suffix are the same payload.
    for path in [
        format!("/v2/download_config_specs/{KEY}.json"),
        format!("/v1/download_config_specs/{KEY}.js"),
        format!("/v1/download_config_specs/{KEY}"),
    ] {
        assert_eq!(get(&format!("{base}{path}")).await.body, v1.body, "{path}");
    }

    // sinceTime at the lcut: nothing new; just before it: the payload.
    let url = format!("{base}/v1/download_config_specs/{KEY}.json");
    let r = get(&format!("{url}?sinceTime={}", v1.lcut)).await;
    assert_eq!(&r.body[..], br#"{"has_updates":false}"#);
    assert_eq!(r.header("x-since-time"), v1.lcut.to_string());
    let r = get(&format!("{url}?sinceTime={}", v1.lcut - 1)).await;
    assert_eq!(r.body, v1.body);

    // Unknown keys: 401; other routes.
    let r = get(&format!(
        "{base}/v1/download_config_specs/secret-nobody.json"
    ))
    .await;
    assert_eq!(
        (r.status.as_u16(), &r.body[..]),
        (401, &b"Unauthorized"[..])
    );
    let r = fetch(
        Method::POST,
        &format!("{base}/v1/get_id_lists"),
        "{}",
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"{}"[..]));
    assert_eq!(get(&format!("{base}/nope")).await.status, 404);

    // A publish: newer lcut, first gate flipped, served from then on.
    let r = fetch(Method::POST, &format!("{base}/__publish"), "", LIMIT)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let answer = json(&r);
    let v2 = up.current();
    assert_eq!(answer["version"], 2);
    assert_eq!(answer["lcut"], v2.lcut);
    assert!(v2.lcut > v1.lcut);
    let r = get(&format!("{url}?sinceTime={}", v1.lcut)).await;
    assert_eq!(r.header("x-since-time"), v2.lcut.to_string());
    let doc = json(&r);
    assert_eq!(doc["time"], v2.lcut);
    assert_eq!(doc["feature_gates"][0]["enabled"], false);
    let before: serde_json::Value = serde_json::from_slice(&v1.body).unwrap();
    assert_eq!(doc["feature_gates"][1], before["feature_gates"][1]);
    assert_ne!(doc["feature_gates"][0], before["feature_gates"][0]);

    let status = json(&get(&format!("{base}/__status")).await);
    assert_eq!(status["version"], 2);
    assert_eq!(status["requests"]["unauthorized"], 1);
    assert_eq!(status["requests"]["publishes"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_every_makes_new_versions() {
    let up = common::spec_upstream(3, Some(Duration::from_millis(20))).await;
    let mut versions = up.subscribe();
    let mut last = versions.borrow_and_update().lcut;
    for _ in 0..2 {
        tokio::time::timeout(LIMIT, versions.changed())
            .await
            .expect("a version within 10 s")
            .unwrap();
        let v = versions.borrow_and_update().clone();
        assert!(v.lcut > last);
        last = v.lcut;
    }
    assert!(up.current().number >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fproxy_follows_the_published_versions() {
    let up = common::spec_upstream(20, None).await;
    let p = common::spec_proxy(&up.url()).await;
    let url = format!("http://{}/v1/download_config_specs/{KEY}.json", p.http);
    let r = get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, up.current().body);

    let mut versions = up.subscribe();
    let v2 = up.publish().unwrap();
    versions.borrow_and_update();
    // fproxy polls every 100 ms; wait for its poll to have been answered with v2, by
    // watching what it serves (each try is one request, bounded overall).
    let served = tokio::time::timeout(LIMIT, async {
        loop {
            let r = get(&url).await;
            if r.header("x-since-time") == v2.lcut.to_string() {
                return r;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("fproxy serves the new version within 10 s");
    assert_eq!(served.body, v2.body);
    // Only the first fetch got the whole payload; polls asked with sinceTime.
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(up.counts().full.load(Relaxed), 2, "v1 once, v2 once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_file_sets_the_lcut_and_bad_input_is_named() {
    let dir = std::env::temp_dir().join(format!("ftest-spec-upstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dcs.json");
    std::fs::write(
        &file,
        r#"{"has_updates":true,"time":1234,"feature_gates":[{"name":"g","enabled":false}]}"#,
    )
    .unwrap();
    let opts = |source: Source| Options {
        listen: "127.0.0.1:0".into(),
        sdk_keys: vec![KEY.into()],
        source,
        lcut: None,
        publish_every: None,
    };
    let up = spec_upstream::start(&opts(Source::File(file.clone())))
        .await
        .unwrap();
    assert_eq!(up.current().lcut, 1234);
    let v2 = up.publish().unwrap();
    assert_eq!(v2.flipped, Some(("g".into(), true)));
    let doc: serde_json::Value = serde_json::from_slice(&v2.body).unwrap();
    assert_eq!(doc["time"], v2.lcut);
    assert_eq!(doc["feature_gates"][0]["enabled"], true);

    let missing = dir.join("missing.json");
    let e = spec_upstream::start(&opts(Source::File(missing.clone())))
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!("read {}: no such file or directory", missing.display())
    );
    std::fs::write(&file, "[1,2]").unwrap();
    let e = spec_upstream::start(&opts(Source::File(file.clone())))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a JSON object"), "{e}");
    std::fs::write(&file, "{nope").unwrap();
    let e = spec_upstream::start(&opts(Source::File(file.clone())))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    let e = spec_upstream::start(&opts(Source::Gates(0)))
        .await
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "--gates must be at least 1");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_until_sigterm_and_fails_on_a_taken_port() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ftest"))
        .args(["spec-upstream", "--listen", "127.0.0.1:0", "--sdk-key", KEY])
        .args(["--gates", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within("the listening line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    let addr = first
        .strip_prefix("spec-upstream listening on ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();

    let r = fetch(Method::POST, &format!("http://{addr}/__publish"), "", LIMIT)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let published = within("the published line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(
        published.starts_with("published version 2: lcut ")
            && published.ends_with("gate ftest_gate_0 enabled=false"),
        "{published}"
    );

    // The same port again: exit 1, saying where and why.
    let taken = tokio::process::Command::new(env!("CARGO_BIN_EXE_ftest"))
        .args([
            "spec-upstream",
            "--listen",
            &addr,
            "--sdk-key",
            KEY,
            "--gates",
            "1",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(taken.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&taken.stderr),
        format!("error: listen {addr}: address already in use\n")
    );

    let pid = child.id().unwrap().to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    assert_eq!(within("exit", child.wait()).await.unwrap().code(), Some(0));
    let last = within("the last line", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        last,
        "spec-upstream: 0 full, 0 unchanged, 0 unauthorized, 0 id lists, 1 publishes, 0 other"
    );
}
