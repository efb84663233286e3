//! The HTTP interface SDKs and operators talk to.
//!
//! Routes (parsed by [`Route::parse`]; empty path segments are ignored, so
//! `//v1/...` works too):
//! - `GET|POST /{v1|v2}/download_config_specs[/{key}[.json|.js]]`
//! - `GET /v1/health` (alive), `/v1/ready` and `/v1/startup` (503 until ready)
//!
//! Serving a cached spec is a map lookup and a reference-counted clone of bytes that
//! were encoded (plain and gzip) once per update.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY,
};
use hyper::{Method, Request, Response, StatusCode};

use super::key::{KeyError, SdkKey};
use super::route::Route;
use super::store::{Api, Key, Spec};
use super::{Missing, Shared};
use crate::loglimit::LogLimit;

pub type Body = Full<Bytes>;

/// Largest POST body read. SDKs send `{"sinceTime": n}`, some with a small
/// `statsigMetadata` object (SDK type, version, session id); a larger body is
/// ignored, as a malformed one is.
const MAX_BODY: usize = 8 * 1024;

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (route, resp) = match (req.method(), Route::parse(req.uri().path())) {
        (&Method::GET, Route::Health) => {
            ("health", json(StatusCode::OK, r#"{"status":"ok"}"#.into()))
        }
        (&Method::GET, Route::Ready) => ("ready", ready(&shared, true)),
        (&Method::GET, Route::Startup) => ("startup", ready(&shared, false)),
        (&Method::GET | &Method::POST, Route::Dcs { api, key }) => {
            ("download_config_specs", dcs(&shared, api, key, req).await)
        }
        _ => ("not_found", not_found()),
    };
    shared.stats.request(route, resp.status().as_str());
    Ok(resp)
}

async fn dcs(
    shared: &Arc<Shared>,
    api: Api,
    from_path: Option<Result<SdkKey, KeyError>>,
    req: Request<Incoming>,
) -> Response<Body> {
    // Header wins over path. Either way the key passed SdkKey::parse, or upstream
    // is not asked.
    let sdk_key = match req.headers().get("statsig-api-key") {
        Some(v) => v
            .to_str()
            .map_err(|_| KeyError::BadCharacter)
            .and_then(SdkKey::parse),
        None => from_path.unwrap_or(Err(KeyError::Empty)),
    };
    let sdk_key = match sdk_key {
        Ok(k) => k,
        Err(e) => {
            static BAD: LogLimit = LogLimit::per_second();
            if let Some(suppressed) = BAD.allow() {
                tracing::debug!(app = %shared.name(), error = %e, suppressed, "malformed SDK key refused");
            }
            return text(StatusCode::UNAUTHORIZED, "Unauthorized: malformed SDK key");
        }
    };
    let gzip = accepts_gzip(req.headers());
    let mut since = query_since(req.uri().query());
    if req.method() == Method::POST {
        // The body is part of the request: it must arrive within the header timeout,
        // or a client announcing a body it never sends would hold the request (and
        // its connection) forever.
        let limit = shared.settings.load().spec.header_timeout;
        let read = Limited::new(req.into_body(), MAX_BODY).collect();
        match tokio::time::timeout(limit, read).await {
            Ok(Ok(body)) => {
                let bytes = body.to_bytes();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    since =
                        since.or_else(|| v.get("sinceTime").and_then(serde_json::Value::as_u64));
                }
            }
            // Too large or broken: answered as if there were none.
            Ok(Err(_)) => {}
            Err(_) => {
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    "Request Timeout: the request body did not arrive within header_timeout",
                )
            }
        }
    }

    let key = Key { api, sdk_key };
    let spec = match super::find(shared, &key).await {
        Ok((_, spec)) => spec,
        Err(m) => return refusal(m),
    };
    if since.is_some_and(|s| spec.lcut <= s) {
        let mut r = json(
            StatusCode::OK,
            Bytes::from_static(br#"{"has_updates":false}"#),
        );
        r.headers_mut()
            .insert("x-since-time", HeaderValue::from(spec.lcut));
        return r;
    }
    serve(&spec, gzip)
}

/// The HTTP answer for a key without a spec: the one place it is decided (gRPC's
/// is [`super::grpc`]'s `status`). Retryable refusals say when to retry.
fn refusal(m: Missing) -> Response<Body> {
    let (status, body, retry_after) = match m {
        Missing::Unauthorized => return unauthorized(),
        Missing::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Upstream unavailable", "5"),
        Missing::OverBudget => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many new SDK keys at once; retry shortly",
            "1",
        ),
    };
    let mut r = text(status, body);
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static(retry_after));
    r
}

fn serve(spec: &Spec, gzip: bool) -> Response<Body> {
    let mut r = Response::new(Full::new(if gzip {
        spec.gzip.clone()
    } else {
        spec.plain.clone()
    }));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-since-time", HeaderValue::from(spec.lcut));
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// Whether `Accept-Encoding` allows gzip (and does not give it q=0).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

fn query_since(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "sinceTime")
        .and_then(|(_, v)| v.parse().ok())
}

/// `/v1/ready`: 200 when every warm key has data and no key is stale; otherwise
/// 503. `/v1/startup` skips the staleness check. The body says, per key, why.
fn ready(shared: &Shared, check_staleness: bool) -> Response<Body> {
    let report = super::readiness(shared, check_staleness);
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_vec(&report).unwrap_or_default();
    json(status, body.into())
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn unauthorized() -> Response<Body> {
    text(StatusCode::UNAUTHORIZED, "Unauthorized")
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "Not Found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip, deflate, br"));
        assert!(h("br;q=1.0, GZIP;q=0.5"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("br, statsig-br"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    /// Each missing spec has one answer: 401 for a key upstream refuses, 503 with
    /// a retry hint while upstream is away or new keys are over budget.
    #[test]
    fn each_missing_spec_maps_to_one_answer() {
        for (m, status, retry_after) in [
            (Missing::Unauthorized, StatusCode::UNAUTHORIZED, None),
            (
                Missing::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("5"),
            ),
            (
                Missing::OverBudget,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("1"),
            ),
        ] {
            let r = refusal(m);
            assert_eq!(r.status(), status, "{m:?}");
            let got = r.headers().get("retry-after").map(|v| v.to_str().unwrap());
            assert_eq!(got, retry_after, "{m:?}");
        }
    }

    #[test]
    fn since_time_from_query() {
        assert_eq!(query_since(Some("a=1&sinceTime=42")), Some(42));
        assert_eq!(query_since(Some("sinceTime=x")), None);
        assert_eq!(query_since(None), None);
    }
}
