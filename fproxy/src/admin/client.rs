//! A minimal client of the admin API (what `fproxy status` uses): one plain HTTP/1.1
//! request per connection, no TLS (the API is plain HTTP on a local address).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::status::Status;

/// Bounds the whole exchange; the server answers state questions within 5 s.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why the admin API could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the admin API at {addr}: {source} (is fproxy running with an `admin` section?)")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API at {addr}: {reason}")]
    Http { addr: SocketAddr, reason: String },
    #[error("admin API at {addr} did not answer within {TIMEOUT:?}")]
    Timeout { addr: SocketAddr },
    #[error("admin API at {addr} answered {code}: {body}")]
    Status {
        addr: SocketAddr,
        code: u16,
        body: String,
    },
    #[error("admin API at {addr} sent a status that does not parse: {reason}")]
    Decode { addr: SocketAddr, reason: String },
}

/// An answer: status code and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: u16,
    pub body: String,
}

/// Sends `method path` to the admin API at `addr`.
pub async fn request(addr: SocketAddr, method: Method, path: &str) -> Result<Answer, ClientError> {
    tokio::time::timeout(TIMEOUT, exchange(addr, method, path))
        .await
        .unwrap_or(Err(ClientError::Timeout { addr }))
}

async fn exchange(addr: SocketAddr, method: Method, path: &str) -> Result<Answer, ClientError> {
    let http = |e: hyper::Error| ClientError::Http {
        addr,
        reason: e.to_string(),
    };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // Drives the connection; it ends when the request is done and `sender` dropped.
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Http {
            addr,
            reason: e.to_string(),
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let code = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    Ok(Answer {
        code,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET /status`, as the JSON text the server sent.
pub async fn status_json(addr: SocketAddr) -> Result<String, ClientError> {
    let answer = request(addr, Method::GET, "/status").await?;
    if answer.code != 200 {
        return Err(ClientError::Status {
            addr,
            code: answer.code,
            body: answer.body.trim().to_string(),
        });
    }
    Ok(answer.body)
}

/// `GET /status`, parsed.
pub async fn status(addr: SocketAddr) -> Result<Status, ClientError> {
    let body = status_json(addr).await?;
    serde_json::from_str(&body).map_err(|e| ClientError::Decode {
        addr,
        reason: e.to_string(),
    })
}
