//! An app removed by a reload leaves nothing of itself in `/metrics`: app names are
//! labels of many series, so anything left behind grows with every name ever used.

mod common;

use common::upstream::*;
use common::*;
use fproxy::spec::grpc::proto::statsig_forward_proxy_client::StatsigForwardProxyClient;

const ADMIN: &str = r#""admin":{"listen":"127.0.0.1:0"}"#;

fn with_admin(apps: &[String]) -> String {
    format!(r#"{{"apps":[{}],{ADMIN}}}"#, apps.join(","))
}

/// The `/metrics` lines that mention `name` anywhere (label values included).
fn mentions(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(name))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_removed_app_leaves_no_series_behind() {
    let backend = echo_backend("127.0.0.1:0").await;
    let dead = dead_addr();
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1000, payload(1000, true));

    let stays = app("stays", &["127.0.0.1:0"], &[backend], "");
    // A live and a dead target, checked and ejectable, so every kind of TCP series
    // exists: per app, per target, per endpoint, failures and retries.
    let tcp = app(
        "gone-tcp",
        &["127.0.0.1:0"],
        &[backend, dead],
        r#","strategy":"round_robin","health_check":{"interval":"50ms"},"passive":{"consecutive_failures":1}"#,
    );
    let spec = format!(
        r#"{{"name":"gone-spec","kind":"spec","listen":["127.0.0.1:0"],"grpc_listen":["127.0.0.2:0"],
            "upstream":"{}","warm_keys":["{KEY}"],"poll_interval":"1h"}}"#,
        up.url()
    );
    let mut p = Proxy::start(&with_admin(&[stays.clone(), tcp, spec])).await;

    // Traffic on both apps.
    let tcp_addr = p.addr("gone-tcp");
    for _ in 0..4 {
        ping(tcp_addr, b"hello").await.unwrap();
    }
    let http = p.first.listeners["gone-spec"][0];
    let c = client();
    for key in [KEY, "secret-unknown-0123456789"] {
        let url = format!("http://{http}/v1/download_config_specs/{key}.json");
        within("spec request", c.get(&url).send()).await.unwrap();
    }
    let grpc = p.first.listeners["gone-spec"][1];
    let mut g = StatsigForwardProxyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    within("grpc request", g.get_config_spec(req(KEY)))
        .await
        .unwrap();

    let (_, before) = p.admin_get("/metrics").await;
    for name in ["gone-tcp", "gone-spec"] {
        assert!(
            !mentions(&before, name).is_empty(),
            "no series of {name} to begin with:\n{before}"
        );
    }

    // Remove both; the one that stays keeps its listener.
    let stays_at = p.addr("stays").to_string();
    let applied = p
        .reload_ok(&with_admin(&[app("stays", &[&stays_at], &[backend], "")]))
        .await;
    assert_eq!(applied.removed.len(), 2, "{applied:?}");
    drop(g);

    // Removed apps drain in the background: scrape until their series are gone,
    // paced (each scrape is a new admin connection) and bounded by WAIT.
    let mut left = Vec::new();
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(20));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let settled = tokio::time::timeout(WAIT, async {
        loop {
            pace.tick().await;
            let (code, text) = p.admin_get("/metrics").await;
            assert_eq!(code, 200);
            left = ["gone-tcp", "gone-spec"]
                .iter()
                .flat_map(|n| mentions(&text, n))
                .collect();
            if left.is_empty() {
                return text;
            }
        }
    })
    .await;
    let text =
        settled.unwrap_or_else(|_| panic!("series of removed apps remain:\n{}", left.join("\n")));
    assert!(
        !mentions(&text, r#"app="stays""#).is_empty(),
        "the app that stays lost its series:\n{text}"
    );
    p.stop().await;
}
