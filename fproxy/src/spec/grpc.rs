//! The gRPC interface (`statsig_forward_proxy.StatsigForwardProxy`).
//!
//! `getConfigSpec` answers like the HTTP route. `StreamConfigSpec` sends the full
//! current spec first (whatever `sinceTime` says: SDKs reconnect with a stale one),
//! then every newer spec, and a heartbeat `{"has_updates":false}` carrying the lcut of
//! the last full spec sent (a newer lcut would make SDKs skip the next real update).
//!
//! Streams end with UNAVAILABLE, never OK: the Python SDK treats an OK end as final and
//! only reconnects on its next API call, while it retries UNAVAILABLE. That is how a
//! stream past its maximum age (plus or minus 10%) is sent to reconnect, possibly to
//! another instance behind the load balancer, and how shutdown ends streams.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::key::SdkKey;
use super::store::{Api, Key, Spec};
use super::{find, Missing, Shared};
use crate::metrics::spec::grpc_code_name;

pub mod proto {
    tonic::include_proto!("statsig_forward_proxy");
}

use proto::statsig_forward_proxy_server::{StatsigForwardProxy, StatsigForwardProxyServer};
use proto::{config_spec_request::ApiVersion, ConfigSpecRequest, ConfigSpecResponse};

const HEARTBEAT: &[u8] = br#"{"has_updates":false}"#;

/// Largest request message decoded (tonic's default is 4 MiB). A request is a key
/// and a few numbers; up to 100 streams per connection each hold at most this.
const MAX_REQUEST: usize = 8 * 1024;

/// The routes served on gRPC listeners: the proxy service and `grpc.health.v1`.
pub(crate) fn routes(shared: Arc<Shared>) -> tonic::service::Routes {
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::service::Routes::new(
        StatsigForwardProxyServer::new(Service { shared }).max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(health)
}

struct Service {
    shared: Arc<Shared>,
}

fn key_of(req: &ConfigSpecRequest) -> Result<Key, Status> {
    let api = match req.version.and_then(|v| ApiVersion::try_from(v).ok()) {
        Some(ApiVersion::V2) => Api::V2,
        _ => Api::V1,
    };
    // Refused before any lookup: upstream never sees a malformed key.
    let sdk_key = SdkKey::parse(&req.sdk_key)
        .map_err(|e| Status::permission_denied(format!("invalid SDK key: {e}")))?;
    Ok(Key { api, sdk_key })
}

/// The gRPC answer for a key without a spec: the one place it is decided (HTTP's
/// is [`super::http`]'s `refusal`). UNAVAILABLE is what SDKs retry.
fn status(m: Missing) -> Status {
    match m {
        Missing::Unauthorized => Status::permission_denied("SDK key not accepted upstream"),
        Missing::Unavailable => Status::unavailable("upstream unavailable; retry"),
        Missing::OverBudget => Status::unavailable("too many new SDK keys at once; retry shortly"),
    }
}

fn message(spec: &Spec) -> ConfigSpecResponse {
    ConfigSpecResponse {
        spec: spec.plain.clone(),
        last_updated: spec.lcut,
        zstd_dict_id: None,
    }
}

type SpecStream = Pin<Box<dyn Stream<Item = Result<ConfigSpecResponse, Status>> + Send>>;

const GET: &str = "get_config_spec";
const STREAM: &str = "stream_config_spec";

/// Counts an RPC answered with `r` (its error's code, or OK).
fn counted<T>(shared: &Shared, route: &'static str, r: Result<T, Status>) -> Result<T, Status> {
    let code = match &r {
        Ok(_) => "OK",
        Err(s) => grpc_code_name(s.code() as i32),
    };
    shared.stats.request(route, code);
    r
}

impl Service {
    async fn get(
        &self,
        request: Request<ConfigSpecRequest>,
    ) -> Result<Response<ConfigSpecResponse>, Status> {
        let key = key_of(request.get_ref())?;
        let (_, spec) = find(&self.shared, &key).await.map_err(status)?;
        if request
            .get_ref()
            .since_time
            .is_some_and(|s| s > 0 && spec.lcut <= s)
        {
            return Ok(Response::new(ConfigSpecResponse {
                spec: Bytes::from_static(HEARTBEAT),
                last_updated: spec.lcut,
                zstd_dict_id: None,
            }));
        }
        Ok(Response::new(message(&spec)))
    }

    /// Opens a stream. It is counted (in requests) here only when refused; an open
    /// stream is counted when it ends, with the code it ends with.
    async fn stream(
        &self,
        request: Request<ConfigSpecRequest>,
    ) -> Result<Response<SpecStream>, Status> {
        let shared = &self.shared;
        let settings = shared.settings.load_full();
        let key = key_of(request.get_ref())?;
        // Take a slot before any work, so a flood of streams is refused cheaply.
        let max = settings.spec.max_streams;
        if shared
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Status::resource_exhausted(format!(
                "too many streams ({max}); retry later or elsewhere"
            )));
        }
        let slot = StreamSlot::new(shared.clone());
        let (entry, first) = find(shared, &key).await.map_err(status)?;

        let (tx, rx) = mpsc::channel(4);
        let age = settings
            .spec
            .max_stream_age
            .mul_f64(rand::random_range(0.9..=1.1));
        let heartbeat = settings.spec.heartbeat_interval;
        let shared = shared.clone();
        shared.connections.clone().spawn(async move {
            let _slot = slot;
            let _following = entry.follow();
            let mut changes = entry.subscribe();
            let mut sent = first.lcut;
            // How the stream ended, for the requests counter.
            let mut ended = "CANCELLED";
            if tx.send(Ok(message(&first))).await.is_err() {
                shared.stats.request(STREAM, ended);
                return;
            }
            let end = tokio::time::sleep(age);
            tokio::pin!(end);
            let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            loop {
                // When the spec sent this turn arrived, if it is an update: the
                // propagation delay is measured once it is handed to the stream.
                let mut update = None;
                let out = tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let spec = changes.borrow_and_update().1.clone();
                        match spec {
                            Some(spec) if spec.lcut > sent => {
                                sent = spec.lcut;
                                update = Some(spec.received);
                                Ok(message(&spec))
                            }
                            _ => continue,
                        }
                    }
                    _ = beat.tick() => {
                        // A live stream keeps its key from being evicted.
                        entry.touch();
                        Ok(ConfigSpecResponse {
                            spec: Bytes::from_static(HEARTBEAT),
                            last_updated: sent,
                            zstd_dict_id: None,
                        })
                    }
                    _ = &mut end => Err(Status::unavailable("maximum stream age reached; reconnect")),
                    _ = shared.closing.cancelled() => Err(Status::unavailable("server shutting down; reconnect")),
                    _ = tx.closed() => break,
                };
                let last = match &out {
                    Ok(_) => None,
                    Err(s) => Some(grpc_code_name(s.code() as i32)),
                };
                if tx.send(out).await.is_err() {
                    break;
                }
                if let Some(received) = update {
                    shared.stats.propagation.observe(received.elapsed().as_secs_f64());
                }
                if let Some(code) = last {
                    ended = code;
                    break;
                }
            }
            shared.stats.request(STREAM, ended);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl StatsigForwardProxy for Service {
    async fn get_config_spec(
        &self,
        request: Request<ConfigSpecRequest>,
    ) -> Result<Response<ConfigSpecResponse>, Status> {
        let r = self.get(request).await;
        counted(&self.shared, GET, r)
    }

    type StreamConfigSpecStream = SpecStream;

    async fn stream_config_spec(
        &self,
        request: Request<ConfigSpecRequest>,
    ) -> Result<Response<SpecStream>, Status> {
        match self.stream(request).await {
            Ok(r) => Ok(r),
            Err(e) => counted(&self.shared, STREAM, Err(e)),
        }
    }
}

/// Holds one of the app's stream slots (taken by the caller), and counts it in
/// the gauge, until dropped.
struct StreamSlot(Arc<Shared>);

impl StreamSlot {
    fn new(shared: Arc<Shared>) -> StreamSlot {
        shared.stats.streams.inc();
        StreamSlot(shared)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.stats.streams.dec();
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key upstream refuses is PERMISSION_DENIED (retrying will not help); a
    /// missing upstream or a spent new-key budget is UNAVAILABLE, which SDKs retry.
    #[test]
    fn each_missing_spec_maps_to_one_code() {
        for (m, code) in [
            (Missing::Unauthorized, tonic::Code::PermissionDenied),
            (Missing::Unavailable, tonic::Code::Unavailable),
            (Missing::OverBudget, tonic::Code::Unavailable),
        ] {
            assert_eq!(status(m).code(), code, "{m:?}");
        }
    }
}
