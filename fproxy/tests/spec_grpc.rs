//! The spec app over gRPC, with the generated client, against a real local upstream.

mod common;

use common::upstream::*;
use common::*;
use fproxy::spec::grpc::proto::statsig_forward_proxy_client::StatsigForwardProxyClient;
use tonic::transport::Channel;
use tonic::Code;

fn grpc_app(upstream: &str, extra: &str) -> String {
    format!(
        r#"{{"apps":[{{"name":"spec","kind":"spec","grpc_listen":["127.0.0.1:0"],"upstream":"{upstream}"{extra}}}]}}"#
    )
}

async fn connect(p: &Proxy) -> StatsigForwardProxyClient<Channel> {
    StatsigForwardProxyClient::connect(format!("http://{}", p.addr("spec")))
        .await
        .unwrap()
}

#[tokio::test]
async fn get_config_spec_and_unknown_keys() {
    let (up, _seen) = Upstream::start().await;
    let body = payload(100, true);
    up.publish(KEY, 100, body.clone());
    let p = Proxy::start(&grpc_app(&up.url(), "")).await;
    let mut c = connect(&p).await;
    let r = c.get_config_spec(req(KEY)).await.unwrap().into_inner();
    assert_eq!(r.last_updated, 100);
    assert_eq!(String::from_utf8(r.spec.to_vec()).unwrap(), body);

    let err = c.get_config_spec(req("secret-nobody")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn stream_sends_current_spec_then_each_update() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let p = Proxy::start(&grpc_app(&up.url(), r#","poll_interval":"50ms""#)).await;
    let mut c = connect(&p).await;
    // A stale sinceTime (as SDKs send on reconnect) still gets the full spec first.
    let mut stream = c.stream_config_spec(req(KEY)).await.unwrap().into_inner();
    let first = within("first message", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.last_updated, 1);
    assert_eq!(
        String::from_utf8(first.spec.to_vec()).unwrap(),
        payload(1, true)
    );

    let newer = payload(2, false);
    up.publish(KEY, 2, newer.clone());
    let pushed = within("pushed update", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pushed.last_updated, 2);
    assert_eq!(String::from_utf8(pushed.spec.to_vec()).unwrap(), newer);

    // Shutdown ends the stream with a status SDKs retry.
    let stopping = tokio::spawn(p.stop());
    let end = within("stream end", stream.message()).await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable);
    drop(stream);
    drop(c);
    within("stop", stopping).await.unwrap();
}

#[tokio::test]
async fn stream_cap_answers_resource_exhausted() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 1, payload(1, true));
    let p = Proxy::start(&grpc_app(&up.url(), r#","max_streams":1"#)).await;
    let mut c = connect(&p).await;
    let mut held = c.stream_config_spec(req(KEY)).await.unwrap().into_inner();
    within("first", held.message()).await.unwrap().unwrap();
    let refused = c.stream_config_spec(req(KEY)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // Closing the held stream frees the slot (the server notices asynchronously).
    drop(held);
    let mut ok = false;
    for _ in 0..200 {
        match c.stream_config_spec(req(KEY)).await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
        }
        tokio::task::yield_now().await;
    }
    assert!(ok, "the slot was never freed");
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn heartbeat_repeats_the_last_lcut_on_paused_time() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 7, payload(7, true));
    let p = Proxy::start(&grpc_app(&up.url(), "")).await;
    let mut c = connect(&p).await;
    let mut stream = c.stream_config_spec(req(KEY)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    // From here on the clock only moves when everything is idle: the 30 s
    // heartbeat arrives without waiting 30 s.
    tokio::time::pause();
    let beat = stream.message().await.unwrap().unwrap();
    assert_eq!(beat.spec.as_ref(), br#"{"has_updates":false}"#);
    assert_eq!(beat.last_updated, 7);
    tokio::time::resume();
    drop(stream);
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn streams_end_at_max_age_so_clients_rebalance() {
    let (up, _seen) = Upstream::start().await;
    up.publish(KEY, 7, payload(7, true));
    let p = Proxy::start(&grpc_app(&up.url(), r#","max_stream_age":"10s""#)).await;
    let mut c = connect(&p).await;
    let mut stream = c.stream_config_spec(req(KEY)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    tokio::time::pause();
    // Before the 30 s heartbeat, the stream (9-11 s old) is ended.
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable);
    assert!(
        end.message().contains("maximum stream age"),
        "{}",
        end.message()
    );
    tokio::time::resume();
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn reload_of_upstream_keeps_streams_open() {
    let (up1, _s1) = Upstream::start().await;
    let (up2, _s2) = Upstream::start().await;
    up1.publish(KEY, 1, payload(1, true));
    up2.publish(KEY, 2, payload(2, false));
    let mut p = Proxy::start(&grpc_app(&up1.url(), r#","poll_interval":"1h""#)).await;
    let mut c = connect(&p).await;
    let mut stream = c.stream_config_spec(req(KEY)).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().last_updated, 1);

    // New upstream and interval: the open stream carries on and gets the new data.
    p.reload_ok(&grpc_app(&up2.url(), r#","poll_interval":"50ms""#))
        .await;
    let pushed = within("update from the new upstream", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pushed.last_updated, 2);
    drop(stream);
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn grpc_health_check_serves() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let (up, _seen) = Upstream::start().await;
    let p = Proxy::start(&grpc_app(&up.url(), "")).await;
    let channel = Channel::from_shared(format!("http://{}", p.addr("spec")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel);
    let r = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, 1, "not SERVING: {r:?}");
    drop(h);
    p.stop().await;
}
