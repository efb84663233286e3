//! The admin API of a real daemon: liveness, readiness, status, metrics, reloads.

mod common;

use std::time::Duration;

use common::upstream::*;
use common::*;
use fproxy::admin::status::{Reload, Status};
use fproxy::daemon::Event;
use fproxy::{Daemon, Registry};

const ADMIN: &str = r#""admin":{"listen":"127.0.0.1:0"}"#;

/// A config of `apps` with the admin API on an ephemeral port.
fn with_admin(apps: &[String]) -> String {
    format!(r#"{{"apps":[{}],{ADMIN}}}"#, apps.join(","))
}

async fn status(p: &Proxy) -> Status {
    let (code, body) = p.admin_get("/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn metrics_and_status_report_a_refused_config() {
    let backend = echo_backend("127.0.0.1:0").await;
    let web = app("web", &["127.0.0.1:0"], &[backend], "");
    let mut p = Proxy::start(&with_admin(std::slice::from_ref(&web))).await;
    let addr = p.addr("web");

    let (code, body) = p.admin_get("/live").await;
    assert_eq!((code, body.as_str()), (200, "live\n"));

    let m = p.metrics().await;
    assert_eq!(m.get("fproxy_config_version", &[]), Some(1.0));
    assert_eq!(
        m.get("fproxy_config_reloads_total", &[("result", "applied")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("fproxy_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(m.value("fproxy_config_last_reload_success_timestamp_seconds", &[]) > 1.6e9);
    assert_eq!(
        m.get("fproxy_app_rollouts_total", &[("action", "added")]),
        Some(1.0)
    );

    let bad = with_admin(&[r#"{"name":"web","listen":["127.0.0.1:0"],"targets":["nope"]}"#.into()]);
    match p.reload(&bad).await {
        Event::Refused { error } => assert!(error.to_string().contains("targets[0]"), "{error}"),
        other => panic!("invalid config was not refused: {other:?}"),
    }
    let m = p.metrics().await;
    assert_eq!(
        m.value("fproxy_config_reloads_total", &[("result", "refused")]),
        1.0
    );
    assert_eq!(
        m.get("fproxy_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(m.get("fproxy_config_version", &[]), Some(1.0));

    let s = status(&p).await;
    assert_eq!(s.version, 1);
    assert!(s.source.starts_with("file /"), "{}", s.source);
    assert!(s.source.ends_with("config.json"), "{}", s.source);
    let refused = s.last_refused.expect("last_refused");
    assert_eq!(refused.result, "refused");
    assert_eq!(refused.version, 1);
    assert!(
        refused
            .error
            .as_deref()
            .unwrap_or("")
            .contains("targets[0]"),
        "{refused:?}"
    );
    assert_eq!(s.last_reload.map(|r| r.result).as_deref(), Some("refused"));
    // The app keeps serving, and its status shows it.
    ping(addr, b"still serving").await.unwrap();
    assert_eq!(s.apps.len(), 1);
    let web_status = &s.apps[0];
    assert_eq!(web_status.name, "web");
    assert_eq!(web_status.listeners, [addr]);
    let endpoints = &web_status.tcp.as_ref().expect("tcp status").endpoints;
    assert_eq!(endpoints[0].target, backend.to_string());
    assert!(s.ready);

    // A good config afterwards: success again, last_refused kept.
    p.reload_ok(&with_admin(&[
        web,
        app("two", &["127.0.0.1:0"], &[backend], ""),
    ]))
    .await;
    let m = p.metrics().await;
    assert_eq!(
        m.get("fproxy_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(m.get("fproxy_config_version", &[]), Some(2.0));
    let s = status(&p).await;
    assert_eq!(
        s.last_reload.as_ref().map(|r| r.added.clone()),
        Some(vec!["two".to_string()])
    );
    assert!(s.last_refused.is_some());
    p.stop().await;
}

#[tokio::test]
async fn endpoints_answer_wrong_methods_and_paths() {
    let backend = echo_backend("127.0.0.1:0").await;
    let p = Proxy::start(&with_admin(&[app("web", &["127.0.0.1:0"], &[backend], "")])).await;
    let (code, body) = p.admin_get("/reload").await;
    assert_eq!(code, 405, "{body}");
    let (code, _) = p.admin_post("/status").await;
    assert_eq!(code, 405);
    let (code, body) = p.admin_get("/nope").await;
    assert_eq!(code, 404);
    assert!(body.contains("/ready"), "{body}");
    let (code, body) = p.admin_get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("# TYPE fproxy_config_reloads counter"),
        "{body}"
    );
    p.stop().await;
}

#[tokio::test]
async fn ready_flips_with_a_spec_key() {
    let (up, mut seen) = Upstream::start().await;
    // The warm key's upstream is not answering yet.
    up.fail_with(Some(503));
    let config = format!(
        r#"{{"apps":[{{"name":"flags","kind":"spec","listen":["127.0.0.1:0"],"upstream":"{}","warm_keys":["{KEY}"],"poll_interval":"50ms"}}],{ADMIN}}}"#,
        up.url()
    );
    let p = Proxy::start(&config).await;
    upstream_polled(&up, &mut seen, KEY, 1).await;

    let (code, body) = p.admin_get("/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#"app \"flags\": key v1:"#), "{body}");
    assert!(body.contains("warm key has no data yet"), "{body}");
    assert!(!body.contains(KEY), "the SDK key leaked whole: {body}");
    let s = status(&p).await;
    assert!(!s.ready);
    let keys = &s.apps[0].spec.as_ref().expect("spec status").keys;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].warm && keys[0].lcut.is_none(), "{keys:?}");
    assert!(!keys[0].key.contains(KEY), "{keys:?}");

    up.fail_with(None);
    up.publish(KEY, 9, payload(9, true));
    let body = within("ready", async {
        loop {
            let (code, body) = p.admin_get("/ready").await;
            if code == 200 {
                break body;
            }
            seen.recv().await.unwrap();
        }
    })
    .await;
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true, "{body}");
    assert_eq!(ready["apps"][0]["name"], "flags", "{body}");
    let s = status(&p).await;
    assert_eq!(s.apps[0].spec.as_ref().unwrap().keys[0].lcut, Some(9));
    p.stop().await;
}

#[tokio::test]
async fn post_reload_reports_unchanged_then_applied() {
    let (a, b) = (tagged_backend(b'a').await, tagged_backend(b'b').await);
    let before = with_admin(&[app("x", &["127.0.0.1:0"], &[a], "")]);
    // File events never get past the debounce here: only POST /reload reads the file.
    let mut p = Proxy::start_watching(Daemon::new(Registry::default()), &before, |w| {
        w.debounce(Duration::from_secs(3600))
    })
    .await;
    let addr = p.addr("x");

    let (code, body) = p.admin_post("/reload").await;
    assert_eq!(code, 200, "{body}");
    let r: Reload = serde_json::from_str(&body).unwrap();
    assert_eq!((r.result.as_str(), r.version), ("unchanged", 1), "{body}");
    match within("unchanged event", p.events.recv()).await.unwrap() {
        Event::Unchanged(a) => assert!(a.unchanged && a.version == 1, "{a:?}"),
        other => panic!("expected unchanged: {other:?}"),
    }

    std::fs::write(&p.path, with_admin(&[app("x", &["127.0.0.1:0"], &[b], "")])).unwrap();
    let (code, body) = p.admin_post("/reload").await;
    assert_eq!(code, 200, "{body}");
    let r: Reload = serde_json::from_str(&body).unwrap();
    assert_eq!((r.result.as_str(), r.version), ("applied", 2), "{body}");
    assert_eq!(r.changed, ["x"]);
    assert_eq!(which(addr).await.unwrap().0, b'b');

    std::fs::write(&p.path, "{").unwrap();
    let (code, body) = p.admin_post("/reload").await;
    assert_eq!(code, 422, "{body}");
    let r: Reload = serde_json::from_str(&body).unwrap();
    assert_eq!((r.result.as_str(), r.version), ("refused", 2), "{body}");
    assert!(
        r.error.unwrap_or_default().contains("invalid JSON"),
        "{body}"
    );

    let m = p.metrics().await;
    for (result, n) in [("applied", 2.0), ("unchanged", 1.0), ("refused", 1.0)] {
        assert_eq!(
            m.value("fproxy_config_reloads_total", &[("result", result)]),
            n,
            "{result}"
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn the_admin_api_moves_and_a_taken_address_refuses_the_config() {
    let backend = echo_backend("127.0.0.1:0").await;
    let web = app("web", &["127.0.0.1:0"], &[backend], "");
    let mut p = Proxy::start(&with_admin(std::slice::from_ref(&web))).await;
    let old = p.admin();

    // Another program holds the address: the whole config is refused.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let moved = |addr: &str| format!(r#"{{"apps":[{web}],"admin":{{"listen":"{addr}"}}}}"#);
    match p.reload(&moved(&taken_addr.to_string())).await {
        Event::Refused { error } => {
            assert!(
                error.to_string().contains("admin API: cannot listen on"),
                "{error}"
            )
        }
        other => panic!("taken admin address was not refused: {other:?}"),
    }
    assert_eq!(p.admin_get("/live").await.0, 200);

    // Moving it: the new address serves, the old one closes.
    let port = free_port();
    let applied = p.reload_ok(&moved(&format!("127.0.0.1:{port}"))).await;
    let new = applied.admin.expect("admin address");
    assert_eq!(new.port(), port);
    assert_eq!(
        admin_request(new, reqwest::Method::GET, "/live").await.0,
        200
    );
    assert!(
        tokio::net::TcpStream::connect(old).await.is_err(),
        "old admin address still open"
    );

    // Dropping the section stops it.
    let applied = p.reload_ok(&config(&[web])).await;
    assert_eq!(applied.admin, None);
    assert!(tokio::net::TcpStream::connect(new).await.is_err());
    drop(taken);
    p.stop().await;
}

#[tokio::test]
async fn a_source_without_refresh_answers_501() {
    use fproxy::watch::Update;
    use fproxy::{Daemon, Subscription};
    use tokio::sync::{mpsc, oneshot};

    let daemon = Daemon::new(Registry::default());
    let mut events = daemon.events();
    let config = daemon
        .validator()
        .parse(&with_admin(&[]))
        .expect("valid config");
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Update::Config(config)).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(Subscription::new(rx, ()), async {
        let _ = stopped.await;
    }));
    let admin = match within("first rollout", events.recv()).await.unwrap() {
        Event::Applied(a) => a.admin.expect("admin address"),
        other => panic!("not applied: {other:?}"),
    };
    let (code, body) = admin_request(admin, reqwest::Method::POST, "/reload").await;
    assert_eq!(code, 501, "{body}");
    assert!(body.contains("custom"), "{body}");
    let (code, body) = admin_request(admin, reqwest::Method::GET, "/status").await;
    assert_eq!(code, 200);
    let s: Status = serde_json::from_str(&body).unwrap();
    assert_eq!(s.source, "custom");
    // No apps at all is ready.
    assert_eq!(
        admin_request(admin, reqwest::Method::GET, "/ready").await.0,
        200
    );

    let _ = stop.send(());
    within("daemon stop", task).await.unwrap().unwrap();
    drop(tx);
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "admin API outlived the daemon"
    );
}
