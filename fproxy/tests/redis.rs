//! Spec apps sharing one real Redis: layout, leadership, followers, outages.

mod common;

use common::redis_server::RedisServer;
use common::upstream::*;
use common::*;
use fproxy::spec::grpc::proto::statsig_forward_proxy_client::StatsigForwardProxyClient;
use fproxy::spec::grpc::proto::ConfigSpecRequest;
use redis::AsyncCommands;

/// A spec app on `redis`, fetching from `upstream` under a path prefix naming the
/// instance (so the fake upstream can tell instances apart).
fn instance(upstream: &Upstream, redis: &RedisServer, name: &str, extra: &str) -> String {
    format!(
        r#"{{"apps":[{{"name":"spec","kind":"spec","listen":["127.0.0.1:0"],"grpc_listen":["127.0.0.2:0"],
        "upstream":"{}/{name}","poll_interval":"100ms",
        "cache":{{"backend":"redis","url":"{}","leader_ttl":"900ms"{extra}}}}}]}}"#,
        upstream.url(),
        redis.url()
    )
}

fn http_addr(p: &Proxy) -> std::net::SocketAddr {
    *p.first.listeners["spec"]
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.1")
        .unwrap()
}

fn dcs_url(p: &Proxy) -> String {
    format!(
        "http://{}/v1/download_config_specs/{KEY}.json",
        http_addr(p)
    )
}

async fn ready_json(p: &Proxy) -> serde_json::Value {
    let body = reqwest::get(format!("http://{}/v1/ready", http_addr(p)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

async fn is_leader(p: &Proxy) -> bool {
    ready_json(p).await["cache"]["leader"] == true
}

/// A StreamConfigSpec stream for KEY from `p`'s gRPC listener (on 127.0.0.2).
async fn stream_from(
    p: &Proxy,
    since_time: Option<u64>,
) -> tonic::Streaming<fproxy::spec::grpc::proto::ConfigSpecResponse> {
    let grpc = *p.first.listeners["spec"]
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.2")
        .unwrap();
    let mut client = StatsigForwardProxyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client
        .stream_config_spec(ConfigSpecRequest {
            sdk_key: KEY.into(),
            since_time,
            version: None,
            zstd_dict_id: None,
        })
        .await
        .unwrap()
        .into_inner()
}

fn hash_key() -> String {
    format!(
        "statsig|/v1/download_config_specs|plain_text|{}",
        &KEY[..20]
    )
}

/// Waits (bounded, on loopback) until Redis holds `lcut` for the key.
async fn redis_has(redis: &RedisServer, lcut: u64) {
    within("spec written to redis", async {
        loop {
            if let Ok(mut c) = redis.client().await {
                let v: Option<String> = c.hget(hash_key(), "lcut").await.unwrap_or(None);
                if v.as_deref() == Some(lcut.to_string().as_str()) {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits until exactly one of `ps` leads; returns its index.
async fn one_leader(ps: &[&Proxy]) -> usize {
    within("a single leader", async {
        loop {
            let mut leaders = Vec::new();
            for (i, p) in ps.iter().enumerate() {
                if is_leader(p).await {
                    leaders.push(i);
                }
            }
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(leaders.len() < 2, "two leaders at once: {leaders:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_is_readable_by_a_plain_redis_client() {
    let redis = RedisServer::start().await;
    let (up, _seen) = Upstream::start().await;
    let body = payload(1000, true);
    up.publish(KEY, 1000, body.clone());
    let p = Proxy::start(&instance(&up, &redis, "a", r#","legacy_hashed_key":true"#)).await;
    assert_eq!(reqwest::get(dcs_url(&p)).await.unwrap().status(), 200);
    redis_has(&redis, 1000).await;

    let mut c = redis.client().await.unwrap();
    let h: std::collections::HashMap<String, String> = c.hgetall(hash_key()).await.unwrap();
    assert_eq!(h["encoding"], "plain_text");
    assert_eq!(h["lcut"], "1000");
    assert_eq!(h["config"], body);
    let ttl: i64 = c.ttl(hash_key()).await.unwrap();
    assert!(ttl > 86_000, "cache ttl {ttl}");
    // The legacy key, named by base64(sha256(key)).
    let keys: Vec<String> = c
        .keys("statsig|/v1/download_config_specs|plain_text|*=")
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let legacy: String = c.hget(&keys[0], "config").await.unwrap();
    assert_eq!(legacy, body);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_polls_followers_read_redis_and_take_over() {
    let redis = RedisServer::start().await;
    let (up, mut seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let names = ["i0", "i1", "i2"];
    let mut ps = Vec::new();
    for n in names {
        ps.push(Proxy::start(&instance(&up, &redis, n, "")).await);
    }
    for p in &ps {
        assert_eq!(reqwest::get(dcs_url(p)).await.unwrap().status(), 200);
    }
    let refs: Vec<&Proxy> = ps.iter().collect();
    let leader = one_leader(&refs).await;
    redis_has(&redis, 1).await;

    // Over the next 20 upstream requests, only the leader asks.
    let polls = |i: usize| up.requests_for(&format!("/{}/", names[i]));
    let before: Vec<usize> = (0..3).map(polls).collect();
    let total = up.requests_for(KEY);
    upstream_polled(&up, &mut seen, KEY, total + 20).await;
    for i in 0..3 {
        if i == leader {
            assert!(polls(i) >= before[i] + 20, "leader did not poll");
        } else {
            assert_eq!(polls(i), before[i], "follower {} polled upstream", names[i]);
        }
    }

    // An update reaches followers through Redis.
    up.publish(KEY, 2, payload(2, false));
    redis_has(&redis, 2).await;
    for p in &ps {
        within("follower update", async {
            loop {
                let r = reqwest::get(dcs_url(p)).await.unwrap();
                if r.headers()["x-since-time"] == "2" {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    // The leader dies (stops without giving up the key): a follower leads within
    // the leader TTL and polls upstream from then on.
    let dead = ps.remove(leader);
    dead.stop().await;
    let refs: Vec<&Proxy> = ps.iter().collect();
    let new_leader = one_leader(&refs).await;
    let survivor = names
        .iter()
        .filter(|n| **n != names[leader])
        .nth(new_leader)
        .unwrap();
    let before = up.requests_for(&format!("/{survivor}/"));
    let total = up.requests_for(KEY);
    upstream_polled(&up, &mut seen, KEY, total + 3).await;
    assert!(up.requests_for(&format!("/{survivor}/")) >= before + 3);
    for p in ps {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_from_redis_with_upstream_down() {
    let redis = RedisServer::start().await;
    let (up, _seen) = Upstream::start().await;
    let body = payload(5, true);
    up.publish(KEY, 5, body.clone());
    let a = Proxy::start(&instance(&up, &redis, "a", "")).await;
    assert_eq!(reqwest::get(dcs_url(&a)).await.unwrap().status(), 200);
    redis_has(&redis, 5).await;
    a.stop().await;

    up.fail_with(Some(503));
    let b = Proxy::start(&instance(&up, &redis, "b", "")).await;
    let r = reqwest::get(dcs_url(&b)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_no_request_and_the_cache_is_rewritten() {
    let mut redis = RedisServer::start().await;
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 9, payload(9, true));
    let p = Proxy::start(&instance(&up, &redis, "a", "")).await;
    let url = dcs_url(&p);
    let c = reqwest::Client::new();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    redis_has(&redis, 9).await;

    redis.kill();
    for _ in 0..50 {
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    }
    let report = ready_json(&p).await;
    assert_eq!(report["ready"], true, "{report}");
    // Back, empty (as after a flush): the leader writes the spec again.
    redis.restart().await;
    for _ in 0..50 {
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    }
    redis_has(&redis, 9).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_streams_the_update_it_missed() {
    let redis = RedisServer::start().await;
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let a = Proxy::start(&instance(&up, &redis, "a", "")).await;
    assert_eq!(reqwest::get(dcs_url(&a)).await.unwrap().status(), 200);
    redis_has(&redis, 1).await;

    // While "b" is down, the spec changes; "a" writes it to Redis.
    up.publish(KEY, 2, payload(2, false));
    redis_has(&redis, 2).await;
    up.fail_with(Some(503));
    let b = Proxy::start(&instance(&up, &redis, "b", "")).await;
    let mut stream = stream_from(&b, Some(1)).await;
    let first = within("first message", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.last_updated, 2);
    drop(stream);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_redis_operations_and_propagation_are_measured() {
    let redis = RedisServer::start().await;
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let (a, ma) = start_with_metrics(&instance(&up, &redis, "a", "")).await;
    let (b, mb) = start_with_metrics(&instance(&up, &redis, "b", "")).await;
    for p in [&a, &b] {
        assert_eq!(reqwest::get(dcs_url(p)).await.unwrap().status(), 200);
    }
    let app = ("app", "spec");
    let leader_gauge = "fproxy_spec_redis_leader";
    let leader = one_leader(&[&a, &b]).await;
    let (ml, mf) = if leader == 0 { (&ma, &mb) } else { (&mb, &ma) };
    metric_reaches(ml, leader_gauge, &[app], 1.0).await;
    metric_reaches(mf, leader_gauge, &[app], 0.0).await;
    redis_has(&redis, 1).await;

    let ops = "fproxy_spec_redis_operations_total";
    let ok = |op| [app, ("op", op), ("result", "ok")];
    for m in [&ma, &mb] {
        // At least: under load the connection manager may reconnect once more.
        metric_at_least(m, ops, &ok("connect"), 1.0).await;
        metric_at_least(m, ops, &ok("lead"), 1.0).await;
        metric_at_least(m, ops, &ok("subscribe"), 1.0).await;
    }
    // The leader writes and polls registered keys; the follower reads.
    assert!(value(ml, ops, &ok("write")) >= 1.0);
    metric_at_least(ml, ops, &ok("registered"), 1.0).await;
    metric_at_least(mf, ops, &ok("read"), 1.0).await;

    // An update reaches a stream on the follower through Redis, and is timed there.
    let follower = if leader == 0 { &b } else { &a };
    let mut stream = stream_from(follower, None).await;
    within("first message", stream.message())
        .await
        .unwrap()
        .unwrap();
    up.publish(KEY, 2, payload(2, false));
    let pushed = within("update via redis", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pushed.last_updated, 2);
    metric_reaches(
        mf,
        "fproxy_spec_update_propagation_seconds_count",
        &[app],
        1.0,
    )
    .await;
    assert!(!mf.encode().contains(KEY) && !ml.encode().contains(KEY));
    drop(stream);
    a.stop().await;
    b.stop().await;
}
