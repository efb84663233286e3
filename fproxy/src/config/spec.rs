//! Settings of a spec app: a Statsig-compatible config-spec cache.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigError, Fields, RawApp};
use crate::spec::key::SdkKey;

/// Defaults of the optional spec fields. Documented in `docs/spec.md`.
pub mod defaults {
    use std::time::Duration;

    pub const UPSTREAM: &str = "https://api.statsigcdn.com";
    pub const POLL_INTERVAL: Duration = Duration::from_secs(10);
    pub const FETCH_CONCURRENCY: usize = 64;
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_SDK_KEYS: usize = 1000;
    pub const STALE_AFTER: Duration = Duration::from_secs(300);
    pub const MAX_STREAMS: usize = 10_000;
    pub const MAX_STREAM_AGE: Duration = Duration::from_secs(30 * 60);
    pub const HEARTBEAT: Duration = Duration::from_secs(30);
    pub const REJECTED_KEY_TTL: Duration = Duration::from_secs(60);
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Per app, HTTP and gRPC together. Each SDK instance holds a connection (a
    /// stream, or keep-alive polls), so this matches `MAX_STREAMS`: a fleet of
    /// 10,000 SDKs fits. fproxy raises the soft fd limit to the hard one at start
    /// (524288 under systemd, 1048576 under Docker by default) and warns when the
    /// limit cannot carry what the config allows.
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const MAX_REJECTED_KEYS: usize = 10_000;
    pub const NEW_KEY_FETCHES_PER_SECOND: u32 = 20;
    /// 50 MiB: far above any real spec, far below what hurts.
    pub const MAX_SPEC_SIZE: usize = 50 * 1024 * 1024;
    pub const REDIS_PREFIX: &str = "statsig";
    pub const REDIS_CACHE_TTL: Duration = Duration::from_secs(86_400);
    pub const REDIS_LEADER_TTL: Duration = Duration::from_secs(70);
    pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
}

/// Where specs are cached besides process memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cache {
    /// In process only.
    Local,
    /// Shared through Redis by every instance pointing at it.
    Redis(RedisConfig),
}

/// A Redis cache shared by many instances.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) URL, possibly with user and password.
    pub url: String,
    /// First segment of every key (`statsig` gives the Statsig SDK adapter layout).
    pub prefix: String,
    /// Expiry of cached specs.
    pub cache_ttl: Duration,
    /// Expiry of the leader key; a follower takes over this long after a leader dies.
    pub leader_ttl: Duration,
    pub connect_timeout: Duration,
    /// Also write the legacy key named by the SDK key's SHA-256 (older adapters).
    pub legacy_hashed_key: bool,
}

impl std::fmt::Debug for RedisConfig {
    /// Never prints the URL's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("cache_ttl", &self.cache_ttl)
            .field("leader_ttl", &self.leader_ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("legacy_hashed_key", &self.legacy_hashed_key)
            .finish()
    }
}

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// The `cache` object as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    backend: String,
    #[serde(default)]
    url: Option<String>,
    /// Name of an environment variable holding the URL (keeps secrets out of config).
    #[serde(default)]
    url_env: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    cache_ttl: Option<String>,
    #[serde(default)]
    leader_ttl: Option<String>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    legacy_hashed_key: Option<bool>,
}

impl Cache {
    fn validate(raw: Option<RawCache>, f: &Fields<'_>) -> Result<Cache, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Cache::Local);
        };
        match raw.backend.as_str() {
            "local" => return Ok(Cache::Local),
            "redis" => {}
            other => {
                return Err(f.err(
                    "cache.backend",
                    format!("unknown cache backend {other:?} (known: local, redis)"),
                ))
            }
        }
        let url = match (raw.url, raw.url_env) {
            (Some(_), Some(_)) => {
                return Err(f.err("cache.url", "set `url` or `url_env`, not both"))
            }
            (Some(u), None) => u,
            (None, Some(var)) => std::env::var(&var).map_err(|_| {
                f.err(
                    "cache.url_env",
                    format!("environment variable {var} is not set"),
                )
            })?,
            (None, None) => {
                return Err(f.err("cache.url", "a redis cache needs `url` or `url_env`"))
            }
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(f.err(
                "cache.url",
                format!("{} is not a redis:// or rediss:// URL", redact_url(&url)),
            ));
        }
        let prefix = raw.prefix.unwrap_or_else(|| defaults::REDIS_PREFIX.into());
        if prefix.is_empty() || prefix.contains('|') {
            return Err(f.err("cache.prefix", "must be non-empty and without `|`"));
        }
        let cache_ttl = f.duration("cache.cache_ttl", raw.cache_ttl, defaults::REDIS_CACHE_TTL)?;
        let leader_ttl = f.duration(
            "cache.leader_ttl",
            raw.leader_ttl,
            defaults::REDIS_LEADER_TTL,
        )?;
        if leader_ttl < std::time::Duration::from_millis(300) {
            return Err(f.err("cache.leader_ttl", "must be at least 300ms"));
        }
        let connect_timeout = f.duration(
            "cache.connect_timeout",
            raw.connect_timeout,
            defaults::REDIS_CONNECT_TIMEOUT,
        )?;
        Ok(Cache::Redis(RedisConfig {
            url,
            prefix,
            cache_ttl,
            leader_ttl,
            connect_timeout,
            legacy_hashed_key: raw.legacy_hashed_key.unwrap_or(false),
        }))
    }
}

/// A validated spec app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecConfig {
    /// gRPC listen addresses (HTTP ones are the app's `listen`).
    pub grpc_listen: Vec<SocketAddr>,
    /// Base URL specs are fetched from, without a trailing slash.
    pub upstream: String,
    pub poll_interval: Duration,
    /// Upstream fetches in flight at once.
    pub fetch_concurrency: usize,
    pub request_timeout: Duration,
    /// SDK keys fetched at start; readiness waits for them.
    pub warm_keys: Vec<SdkKey>,
    /// Distinct SDK keys kept; past it the least recently requested are evicted.
    pub max_sdk_keys: usize,
    /// A key whose last successful upstream check is older than this makes the app
    /// not ready.
    pub stale_after: Duration,
    /// Concurrent gRPC streams; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Streams are ended cleanly after about this long (plus or minus 10%), so
    /// clients reconnect and spread over instances.
    pub max_stream_age: Duration,
    pub heartbeat_interval: Duration,
    /// On 401/403 from upstream, drop the key's data instead of serving it stale.
    pub drop_unauthorized: bool,
    /// How long a key upstream rejected is answered 401 without asking again.
    pub rejected_key_ttl: Duration,
    /// Rejected keys remembered at most; past it the oldest are forgotten.
    pub max_rejected_keys: usize,
    /// First fetches of keys the app does not know, per second (and at once);
    /// requests over it get 503 / UNAVAILABLE without asking upstream.
    pub new_key_fetches_per_second: u32,
    /// Largest upstream response body read (bytes, after decompression).
    pub max_spec_size: usize,
    pub cache: Cache,
    /// A connection must send a whole request head within this of connecting (or
    /// of the first byte of its next request).
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub keepalive_timeout: Duration,
    /// Open connections, HTTP and gRPC together; more are closed at once.
    pub max_connections: usize,
}

impl SpecConfig {
    pub(super) fn validate(raw: &mut RawApp, f: &Fields<'_>) -> Result<SpecConfig, ConfigError> {
        let grpc_listen = f.addresses(
            &std::mem::take(&mut raw.grpc_listen),
            &std::mem::take(&mut raw.grpc_ports),
            "grpc_listen",
            "grpc_ports",
        )?;
        let upstream = raw
            .upstream
            .take()
            .unwrap_or_else(|| defaults::UPSTREAM.into());
        let upstream = upstream.trim_end_matches('/').to_string();
        let host = upstream
            .strip_prefix("http://")
            .or_else(|| upstream.strip_prefix("https://"));
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
            return Err(f.err(
                "upstream",
                format!("{upstream:?} is not an http:// or https:// URL"),
            ));
        }
        let poll_interval = f.duration(
            "poll_interval",
            raw.poll_interval.take(),
            defaults::POLL_INTERVAL,
        )?;
        let fetch_concurrency = at_least_one(
            f,
            "fetch_concurrency",
            raw.fetch_concurrency.take(),
            defaults::FETCH_CONCURRENCY,
            10_000,
        )?;
        let request_timeout = f.duration(
            "request_timeout",
            raw.request_timeout.take(),
            defaults::REQUEST_TIMEOUT,
        )?;
        let warm_keys = std::mem::take(&mut raw.warm_keys)
            .iter()
            .enumerate()
            .map(|(i, k)| {
                SdkKey::parse(k).map_err(|e| f.err(&format!("warm_keys[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_sdk_keys = at_least_one(
            f,
            "max_sdk_keys",
            raw.max_sdk_keys.take(),
            defaults::MAX_SDK_KEYS,
            1_000_000,
        )?;
        if warm_keys.len() > max_sdk_keys {
            return Err(f.err(
                "warm_keys",
                format!(
                    "{} keys, more than max_sdk_keys ({max_sdk_keys})",
                    warm_keys.len()
                ),
            ));
        }
        let stale_after =
            f.duration("stale_after", raw.stale_after.take(), defaults::STALE_AFTER)?;
        let max_streams = at_least_one(
            f,
            "max_streams",
            raw.max_streams.take(),
            defaults::MAX_STREAMS,
            1_000_000,
        )?;
        let max_stream_age = f.duration(
            "max_stream_age",
            raw.max_stream_age.take(),
            defaults::MAX_STREAM_AGE,
        )?;
        let rejected_key_ttl = f.duration(
            "rejected_key_ttl",
            raw.rejected_key_ttl.take(),
            defaults::REJECTED_KEY_TTL,
        )?;
        let header_timeout = f.duration(
            "header_timeout",
            raw.header_timeout.take(),
            defaults::HEADER_TIMEOUT,
        )?;
        let keepalive_timeout = f.duration(
            "keepalive_timeout",
            raw.keepalive_timeout.take(),
            defaults::KEEPALIVE_TIMEOUT,
        )?;
        // A gRPC stream writes nothing between updates but its heartbeats, and a
        // connection that writes nothing for keepalive_timeout is cut as stalled:
        // the default stays below it, a value set must.
        let heartbeat_set = raw.heartbeat_interval.is_some();
        let heartbeat_interval = f.duration(
            "heartbeat_interval",
            raw.heartbeat_interval.take(),
            // Never zero: it drives a tokio interval.
            defaults::HEARTBEAT.min((keepalive_timeout / 2).max(Duration::from_millis(1))),
        )?;
        if heartbeat_set && heartbeat_interval >= keepalive_timeout {
            return Err(f.err(
                "heartbeat_interval",
                format!(
                    "{heartbeat_interval:?} is not below keepalive_timeout ({keepalive_timeout:?}): \
                     a gRPC stream's connection would be closed as stalled between heartbeats"
                ),
            ));
        }
        let max_connections = at_least_one(
            f,
            "max_connections",
            raw.max_connections.take(),
            defaults::MAX_CONNECTIONS,
            1_000_000,
        )?;
        Ok(SpecConfig {
            header_timeout,
            keepalive_timeout,
            max_connections,
            grpc_listen,
            upstream,
            poll_interval,
            fetch_concurrency,
            request_timeout,
            warm_keys,
            max_sdk_keys,
            stale_after,
            max_streams,
            max_stream_age,
            heartbeat_interval,
            drop_unauthorized: raw.drop_unauthorized.take().unwrap_or(false),
            rejected_key_ttl,
            max_rejected_keys: at_least_one(
                f,
                "max_rejected_keys",
                raw.max_rejected_keys.take(),
                defaults::MAX_REJECTED_KEYS,
                1_000_000,
            )?,
            new_key_fetches_per_second: f.number(
                "new_key_fetches_per_second",
                raw.new_key_fetches_per_second.take(),
                defaults::NEW_KEY_FETCHES_PER_SECOND,
                1..=100_000,
            )?,
            max_spec_size: at_least_one(
                f,
                "max_spec_size",
                raw.max_spec_size.take(),
                defaults::MAX_SPEC_SIZE,
                // 4 GiB: a cap must stay a cap, and `usize` arithmetic sane.
                4 << 30,
            )?,
            cache: Cache::validate(raw.cache.take(), f)?,
        })
    }
}

/// 1 to `max`: these size semaphores and tables, which refuse (or panic on) more.
fn at_least_one(
    f: &Fields<'_>,
    name: &str,
    v: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    f.number(name, v, default, 1..=max)
}
