//! What `GET /status` reports, and `fproxy status` prints.
//!
//! Plain data, serialisable both ways, so the CLI reads exactly what the server
//! wrote. SDK keys appear only masked.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The whole daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Rollout number of the running config (1 for the first).
    pub version: u64,
    /// Where configs come from, e.g. `file /etc/fproxy/config.json`.
    pub source: String,
    /// Whether every app is up and, for spec apps, ready (what `/ready` answers).
    pub ready: bool,
    /// The last config seen, whatever its result.
    pub last_reload: Option<Reload>,
    /// The last config refused, with why (kept after later successes).
    pub last_refused: Option<Reload>,
    pub apps: Vec<AppStatus>,
}

/// One config version seen by the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reload {
    /// RFC 3339 time it was seen.
    pub at: String,
    /// `applied`, `unchanged` or `refused`.
    pub result: String,
    /// The running version after it.
    pub version: u64,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// One running app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// `tcp` or `spec`.
    pub kind: String,
    /// Bound listen addresses.
    pub listeners: Vec<SocketAddr>,
    /// Client connections (TCP) or HTTP/gRPC connections (spec) open now.
    pub connections: usize,
    pub ready: bool,
    /// Why the app is not ready, or what is wrong though it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SpecStatus>,
}

/// A TCP app's routing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpStatus {
    pub strategy: String,
    /// One row per endpoint: a target, or one resolved address of a target name.
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The target as configured.
    pub target: String,
    /// The address connected to; `None` for a name not resolved yet.
    pub address: Option<SocketAddr>,
    pub weight: u32,
    /// The active health check's verdict (true when checks are off).
    pub healthy: bool,
    /// Ejected now after consecutive connect failures.
    pub ejected: bool,
    pub ejections: u32,
    pub connections: usize,
}

/// A spec app's cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpecStatus {
    /// `local` or `redis`.
    pub cache: String,
    /// Redis connected (always true for `local`).
    pub cache_connected: bool,
    pub leader: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_error: Option<String>,
    /// Open gRPC streams.
    pub streams: usize,
    pub keys: Vec<KeyStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyStatus {
    /// `v1:secret-abc…`: API version and masked SDK key.
    pub key: String,
    pub warm: bool,
    pub lcut: Option<u64>,
    /// Milliseconds since upstream (or Redis) last confirmed the data.
    pub age_ms: Option<u64>,
    /// `pending`, `ok`, `unauthorized`, `failing: ...`.
    pub upstream: String,
    /// gRPC streams following this key.
    pub streams: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}
