//! A small HTTP/1.1 client for the spec commands, over hyper: one kept-alive
//! connection that sends requests in turn ([`Conn`]), and one-off requests to a URL
//! ([`fetch`]). Plain `http://` only: it talks to fproxy, nginx and `ftest
//! spec-upstream` on the local network.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::exchange::TryError;
use crate::net::{self, Family};

/// One HTTP/1.1 connection; requests go one after another.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// Drives the connection; aborted when the connection is dropped.
    task: JoinHandle<()>,
    pub addr: SocketAddr,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// Connects (TCP_NODELAY) and does the HTTP/1.1 handshake, within `limit`.
    pub async fn open(addr: SocketAddr, limit: Duration) -> Result<Conn, TryError> {
        let stream = net::connect(addr, limit).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| hyper_error("connect", addr, &e))?;
        let task = tokio::spawn(async move {
            // Its errors show up on the request in flight.
            let _ = conn.await;
        });
        Ok(Conn { sender, task, addr })
    }

    /// Whether the connection can take another request (false once the server
    /// closed it, e.g. after `Connection: close`).
    pub async fn ready(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }

    /// Sends one request and returns the response head; the body is read by the
    /// caller (see [`read_body`] and [`count_body`]).
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, TryError> {
        let what = format!("{} {}", req.method(), req.uri());
        self.sender
            .send_request(req)
            .await
            .map_err(|e| hyper_error(&what, self.addr, &e))
    }
}

/// A request for `path` on `addr`, with a Host header.
pub fn request(
    method: Method,
    addr: SocketAddr,
    host: &str,
    path: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = path
        .parse::<Uri>()
        .with_context(|| format!("`{path}` is not a valid request path"))?;
    let host = HeaderValue::from_str(host).or_else(|_| HeaderValue::from_str(&addr.to_string()))?;
    req.headers_mut().insert(HOST, host);
    Ok(req)
}

/// Reads a whole response body.
pub async fn read_body(body: Incoming, what: &str, addr: SocketAddr) -> Result<Bytes, TryError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| hyper_error(what, addr, &e))
}

/// Reads a response body frame by frame without keeping it; returns its length.
pub async fn count_body(mut body: Incoming, what: &str, addr: SocketAddr) -> Result<u64, TryError> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| hyper_error(what, addr, &e))?;
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

/// A hyper error as a [`TryError`] of the right kind, saying what failed and where.
pub fn hyper_error(what: &str, addr: SocketAddr, e: &hyper::Error) -> TryError {
    use crate::exchange::Failure;
    // The I/O error underneath, if any, says best what happened.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return TryError::io(what, addr, io);
        }
        source = s.source();
    }
    let (kind, text) = if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        (
            Failure::Reset,
            "connection closed before the response was complete".to_string(),
        )
    } else if e.is_timeout() {
        (Failure::Timeout, "timed out".to_string())
    } else {
        (Failure::Other, e.to_string())
    };
    TryError::new(kind, format!("{what} {addr}: {text}"))
}

/// An answer to [`fetch`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// A header's value as text (empty when absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Where an `http://host:port/path` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port` (port 80 when the URL has none).
    pub authority: String,
    pub path: String,
}

/// Parses an `http://` URL.
pub fn parse_url(url: &str) -> anyhow::Result<Url> {
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("`{url}`: only http:// URLs are supported, not {other}://"),
        None => bail!("`{url}` has no scheme (expected http://host:port/path)"),
    }
    let Some(auth) = uri.authority() else {
        bail!("`{url}` has no host");
    };
    let authority = match auth.port_u16() {
        Some(_) => auth.as_str().to_string(),
        None => format!("{}:80", auth.host()),
    };
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(Url { authority, path })
}

/// One request to `url` on a connection of its own; the whole answer, whatever its
/// status. `body` is sent as JSON when not empty.
pub async fn fetch(
    method: Method,
    url: &str,
    body: &str,
    limit: Duration,
) -> anyhow::Result<Response> {
    let u = parse_url(url)?;
    let addr = net::resolve(&u.authority, Family::Any)
        .await?
        .first()
        .copied()
        .with_context(|| format!("resolve {}: no address", u.authority))?;
    let what = format!("{method} {url}");
    let exchange = async {
        let mut conn = Conn::open(addr, limit)
            .await
            .map_err(|e| anyhow!("{what}: {e}"))?;
        let mut req = request(
            method.clone(),
            addr,
            &u.authority,
            &u.path,
            Bytes::copy_from_slice(body.as_bytes()),
        )?;
        if !body.is_empty() {
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let resp = conn.send(req).await.map_err(|e| anyhow!("{what}: {e}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_body(resp.into_body(), &what, addr)
            .await
            .map_err(|e| anyhow!("{what}: {e}"))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(r) => r,
        Err(_) => bail!("{what}: no answer within {}", net::fmt_duration(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:9000/__publish").unwrap();
        assert_eq!(u.authority, "127.0.0.1:9000");
        assert_eq!(u.path, "/__publish");
        let u = parse_url("http://localhost").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("localhost:80", "/")
        );
        assert!(parse_url("https://x:1/")
            .unwrap_err()
            .to_string()
            .contains("only http://"));
        assert!(parse_url("127.0.0.1:9000/__publish").is_err());
    }
}
