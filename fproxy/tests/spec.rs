//! The spec app over HTTP, against a real local upstream.

mod common;

use common::upstream::*;
use common::*;

#[tokio::test]
async fn serves_the_upstream_spec_with_the_sdk_headers() {
    let (up, _seen) = Upstream::start().await;
    let body = payload(1000, true);
    up.publish(KEY, 1000, body.clone());
    let p = Proxy::start(&spec_app(&up.url(), "")).await;
    let c = client();

    for path in [
        format!("/v1/download_config_specs/{KEY}.json"),
        format!("/v1/download_config_specs/{KEY}.js"),
        format!("/v1/download_config_specs/{KEY}"),
        format!("//v1/download_config_specs/{KEY}.json"),
    ] {
        let r = c.get(dcs(&p, &path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["x-since-time"], "1000");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.text().await.unwrap(), body, "{path}");
    }
    // Only the first request went upstream.
    assert_eq!(up.requests_for(KEY), 1);
    p.stop().await;
}

#[tokio::test]
async fn key_from_header_wins_and_post_works() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 7, payload(7, true));
    let p = Proxy::start(&spec_app(&up.url(), "")).await;
    let c = client();
    let r = c
        .get(dcs(&p, "/v1/download_config_specs/not-the-key.json"))
        .header("STATSIG-API-KEY", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(dcs(&p, "/v1/download_config_specs"))
        .header("statsig-api-key", KEY)
        .body(r#"{"sinceTime":7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-since-time"], "7");
    assert_eq!(r.text().await.unwrap(), r#"{"has_updates":false}"#);
    p.stop().await;
}

#[tokio::test]
async fn since_time_and_gzip() {
    let (up, _seen) = Upstream::start().await;
    let body = payload(500, true);
    up.publish(KEY, 500, body.clone());
    let p = Proxy::start(&spec_app(&up.url(), "")).await;
    let c = client();
    let url = dcs(&p, &format!("/v2/download_config_specs/{KEY}.json"));

    let r = c.get(format!("{url}?sinceTime=500")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), r#"{"has_updates":false}"#);
    let r = c.get(format!("{url}?sinceTime=499")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), body);

    let r = c
        .get(&url)
        .header("accept-encoding", "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let zipped = r.bytes().await.unwrap();
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut plain)
        .unwrap();
    assert_eq!(plain, body);
    // v2 is its own upstream path.
    assert!(up.state.lock().unwrap().requests[0].starts_with("/v2/"));
    p.stop().await;
}

#[tokio::test]
async fn unknown_keys_get_401_and_are_not_asked_again() {
    let (up, _seen) = Upstream::start().await;
    let p = Proxy::start(&spec_app(&up.url(), "")).await;
    let c = client();
    for _ in 0..5 {
        let r = c
            .get(dcs(&p, "/v1/download_config_specs/secret-unknown.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.text().await.unwrap(), "Unauthorized");
    }
    assert_eq!(
        up.requests_for("secret-unknown"),
        1,
        "a bad key hammered upstream"
    );
    p.stop().await;
}

#[tokio::test]
async fn concurrent_first_requests_share_one_fetch() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let p = Proxy::start(&spec_app(&up.url(), "")).await;
    let c = client();
    let url = dcs(&p, &format!("/v1/download_config_specs/{KEY}.json"));
    let gets: Vec<_> = (0..20).map(|_| c.get(&url).send()).collect();
    for r in join_all(gets).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(up.requests_for(KEY), 1);
    p.stop().await;
}

#[tokio::test]
async fn background_refresh_brings_updates_and_survives_upstream_failure() {
    let (up, mut seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let p = Proxy::start(&spec_app(&up.url(), r#","poll_interval":"50ms""#)).await;
    let c = client();
    let url = dcs(&p, &format!("/v1/download_config_specs/{KEY}.json"));
    assert_eq!(
        c.get(&url).send().await.unwrap().headers()["x-since-time"],
        "1"
    );

    // A new version upstream reaches clients after a poll, which asks with sinceTime.
    let newer = payload(2, false);
    up.publish(KEY, 2, newer.clone());
    let before = up.requests_for(KEY);
    upstream_polled(&up, &mut seen, KEY, before + 2).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["x-since-time"], "2");
    assert_eq!(r.text().await.unwrap(), newer);
    assert!(up
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .any(|q| q.contains("sinceTime=1")));

    // Upstream breaks: the last good spec is still served.
    up.fail_with(Some(500));
    let before = up.requests_for(KEY);
    upstream_polled(&up, &mut seen, KEY, before + 1).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), newer);

    // A payload that is not a JSON object is refused; the old one stays.
    up.fail_with(None);
    up.publish(KEY, 3, "[1,2,3]".into());
    let before = up.requests_for(KEY);
    upstream_polled(&up, &mut seen, KEY, before + 1).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["x-since-time"], "2");
    p.stop().await;
}

#[tokio::test]
async fn ready_waits_for_warm_keys_and_masks_them() {
    let (up, mut seen) = Upstream::start().await;
    // The warm key is not available upstream yet.
    up.fail_with(Some(503));
    let extra = format!(r#","warm_keys":["{KEY}"],"poll_interval":"50ms""#);
    let p = Proxy::start(&spec_app(&up.url(), &extra)).await;
    let c = client();
    assert_eq!(
        c.get(dcs(&p, "/v1/health")).send().await.unwrap().status(),
        200
    );
    upstream_polled(&up, &mut seen, KEY, 1).await;
    let r = c.get(dcs(&p, "/v1/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("warm key has no data yet"), "{body}");
    assert!(!body.contains(KEY), "the SDK key leaked whole: {body}");
    assert_eq!(
        c.get(dcs(&p, "/v1/startup")).send().await.unwrap().status(),
        503
    );

    up.fail_with(None);
    up.publish(KEY, 9, payload(9, true));
    // Wait for the retry (after backoff) to succeed.
    within("ready", async {
        loop {
            let r = c.get(dcs(&p, "/v1/ready")).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            seen.recv().await.unwrap();
        }
    })
    .await;
    assert_eq!(
        c.get(dcs(&p, "/v1/startup")).send().await.unwrap().status(),
        200
    );
    p.stop().await;
}

#[tokio::test]
async fn reload_changes_upstream_without_dropping_connections() {
    let (up1, _s1) = Upstream::start().await;
    let (up2, mut s2) = Upstream::start().await;
    up1.publish(KEY, 1, payload(1, true));
    up2.publish(KEY, 2, payload(2, true));
    let mut p = Proxy::start(&spec_app(&up1.url(), r#","poll_interval":"50ms""#)).await;
    // One keep-alive connection for the whole test.
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .no_gzip()
        .build()
        .unwrap();
    let url = dcs(&p, &format!("/v1/download_config_specs/{KEY}.json"));
    assert_eq!(
        c.get(&url).send().await.unwrap().headers()["x-since-time"],
        "1"
    );

    let applied = p
        .reload_ok(&spec_app(&up2.url(), r#","poll_interval":"50ms""#))
        .await;
    assert_eq!(applied.changed, ["spec"]);
    upstream_polled(&up2, &mut s2, KEY, 1).await;
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The cached spec survived the reload; the new upstream's newer one replaces it.
    let lcut = r.headers()["x-since-time"].to_str().unwrap().to_string();
    assert!(lcut == "1" || lcut == "2", "{lcut}");
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn least_recently_requested_keys_are_evicted() {
    let (up, mut seen) = Upstream::start().await;
    for k in ["secret-a", "secret-b", "secret-c"] {
        up.publish(k, 1, payload(1, true));
    }
    let p = Proxy::start(&spec_app(
        &up.url(),
        r#","max_sdk_keys":2,"poll_interval":"50ms""#,
    ))
    .await;
    let c = client();
    for k in ["secret-a", "secret-b", "secret-c"] {
        let r = c
            .get(dcs(&p, &format!("/v1/download_config_specs/{k}.json")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // After a poll round, "a" (least recently requested) is gone and no longer polled.
    upstream_polled(&up, &mut seen, "secret-c", 3).await;
    let a = up.requests_for("secret-a");
    upstream_polled(&up, &mut seen, "secret-c", 5).await;
    assert_eq!(
        up.requests_for("secret-a"),
        a,
        "an evicted key is still polled"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_key_upstream_stops_accepting_is_served_stale_or_dropped() {
    for drop in [false, true] {
        let (up, mut seen) = Upstream::start().await;
        up.publish(KEY, 1, payload(1, true));
        let extra = format!(r#","poll_interval":"50ms","drop_unauthorized":{drop}"#);
        let p = Proxy::start(&spec_app(&up.url(), &extra)).await;
        let c = client();
        let url = dcs(&p, &format!("/v1/download_config_specs/{KEY}.json"));
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);

        up.fail_with(Some(401));
        let before = up.requests_for(KEY);
        upstream_polled(&up, &mut seen, KEY, before + 1).await;
        let r = c.get(&url).send().await.unwrap();
        let want = if drop { 401 } else { 200 };
        assert_eq!(r.status(), want, "drop_unauthorized={drop}");
        let ready = c
            .get(dcs(&p, "/v1/ready"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(ready.contains("unauthorized"), "{ready}");
        p.stop().await;
    }
}
