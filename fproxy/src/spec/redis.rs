//! A Redis cache shared by many instances of a spec app.
//!
//! - Layout (what Statsig SDK data adapters read): a hash per key at
//!   `{prefix}|/{v}/download_config_specs|plain_text|{first 20 chars of the SDK key}`
//!   with fields `encoding` (`plain_text`), `lcut` and `config`; optionally also the
//!   legacy `{prefix}|/v1/download_config_specs|plain_text|{base64(sha256(key))}`.
//! - One leader, elected with `SET {prefix}_forward_proxy::leader ID NX PX ttl` and
//!   renewed by a compare-and-expire script, polls upstream and writes. A write script
//!   checks leadership and only ever replaces a hash with a newer lcut.
//! - Followers do not poll upstream: they read Redis when the leader publishes a
//!   change on `{prefix}_forward_proxy::updates`, and on every poll round as a
//!   fallback. Keys first requested on a follower are registered in a sorted set the
//!   leader polls, so upstream sees about one instance's worth of requests.
//! - Redis being down never stops serving: every instance keeps its memory and polls
//!   upstream itself; when Redis is back the leader checks the lcut stored for each
//!   key and writes again whatever is missing or older (a flushed Redis heals).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::key::SdkKey;
use super::store::{Api, Key, Spec};
use crate::config::spec::{redact_url, RedisConfig};
use crate::metrics::spec::RedisHandles;

/// Keys registered more recently than this are polled by the leader.
const REGISTRY_WINDOW: Duration = Duration::from_secs(24 * 3600);

const WRITE: &str = r#"
if redis.call('GET', ARGV[5]) ~= ARGV[6] then return -1 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'lcut') or '0')
if cur >= tonumber(ARGV[1]) then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 0
end
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'encoding', 'plain_text', 'lcut', ARGV[1], 'config', ARGV[2])
  redis.call('EXPIRE', KEYS[i], ARGV[3])
end
redis.call('PUBLISH', ARGV[4], KEYS[1])
return 1
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis is not connected")]
    NotConnected,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis holds a bad entry: {0}")]
    Bad(String),
}

/// One instance's handle on the shared cache.
pub struct RedisCache {
    cfg: RedisConfig,
    /// This instance's identity in the leader key.
    id: String,
    conn: ArcSwapOption<ConnectionManager>,
    leader: AtomicBool,
    /// Last failure, for readiness reports (`None` when fine).
    error: Mutex<Option<String>>,
    /// True once the first connection attempt has finished, whatever its outcome.
    attempted: tokio::sync::watch::Sender<bool>,
    metrics: RedisHandles,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("url", &redact_url(&self.cfg.url))
            .field("id", &self.id)
            .finish()
    }
}

impl RedisCache {
    pub fn new(cfg: RedisConfig, metrics: RedisHandles) -> Arc<RedisCache> {
        let id = format!(
            "{}-{}-{:016x}",
            hostname(),
            std::process::id(),
            rand::random::<u64>()
        );
        Arc::new(RedisCache {
            cfg,
            id,
            conn: ArcSwapOption::empty(),
            leader: AtomicBool::new(false),
            error: Mutex::new(Some("connecting".into())),
            attempted: tokio::sync::watch::channel(false).0,
            metrics,
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Stops counting as leader (the app stopped using this cache). The leader key
    /// in Redis expires by itself.
    pub fn resign(&self) {
        self.leader.store(false, Ordering::Relaxed);
        self.metrics.leader.set(0);
    }

    pub fn is_connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Waits, at most the connect timeout, for the first connection attempt to end.
    /// A request that arrives while the instance is still connecting then reads
    /// Redis before asking upstream, which is what a cold start with upstream down
    /// relies on.
    pub async fn first_attempt(&self) {
        let mut done = self.attempted.subscribe();
        let _ = tokio::time::timeout(self.cfg.connect_timeout, done.wait_for(|d| *d)).await;
    }

    /// `None` when the last operation worked, else why it did not.
    pub fn error(&self) -> Option<String> {
        crate::sync::lock(&self.error).clone()
    }

    /// Counts operation `op` and remembers its failure (or that it worked).
    fn record<T>(&self, op: &'static str, r: Result<T, CacheError>) -> Result<T, CacheError> {
        self.metrics.op(op, r.is_ok());
        self.remember(r)
    }

    fn remember<T>(&self, r: Result<T, CacheError>) -> Result<T, CacheError> {
        let mut e = crate::sync::lock(&self.error);
        match &r {
            Ok(_) => *e = None,
            Err(err) => {
                if e.is_none() {
                    tracing::warn!(error = %err, "redis unavailable; serving from memory");
                }
                *e = Some(err.to_string());
            }
        }
        r
    }

    fn conn(&self) -> Result<ConnectionManager, CacheError> {
        self.conn
            .load()
            .as_deref()
            .cloned()
            .ok_or(CacheError::NotConnected)
    }

    /// Connects, retrying until it works or `stop`; the connection manager then
    /// reconnects by itself after any later outage.
    pub async fn connect(self: Arc<Self>, stop: CancellationToken) {
        let mut wait = Duration::from_millis(100);
        loop {
            let attempt = self.try_connect().await;
            self.metrics.op("connect", attempt.is_ok());
            match attempt {
                Ok(c) => {
                    tracing::info!(url = %redact_url(&self.cfg.url), "redis connected");
                    self.conn.store(Some(Arc::new(c)));
                    self.attempted.send_replace(true);
                    return;
                }
                Err(e) => {
                    // Counted above already.
                    let _ = self.remember::<()>(Err(e));
                    self.attempted.send_replace(true);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn try_connect(&self) -> Result<ConnectionManager, CacheError> {
        let client = redis::Client::open(self.cfg.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.cfg.connect_timeout))
            .set_response_timeout(Some(self.cfg.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        Ok(ConnectionManager::new_with_config(client, config).await?)
    }

    fn leader_key(&self) -> String {
        format!("{}_forward_proxy::leader", self.cfg.prefix)
    }

    pub fn channel(&self) -> String {
        format!("{}_forward_proxy::updates", self.cfg.prefix)
    }

    fn registry_key(&self) -> String {
        format!("{}_forward_proxy::keys", self.cfg.prefix)
    }

    /// The hash an SDK adapter reads for `key`.
    pub fn hash_key(&self, key: &Key) -> String {
        let short: String = key.sdk_key.as_str().chars().take(20).collect();
        format!(
            "{}|/{}/download_config_specs|plain_text|{short}",
            self.cfg.prefix,
            key.api.path()
        )
    }

    fn legacy_key(&self, key: &Key) -> String {
        let digest = sha2::Sha256::digest(key.sdk_key.as_str().as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        format!(
            "{}|/{}/download_config_specs|plain_text|{b64}",
            self.cfg.prefix,
            key.api.path()
        )
    }

    /// One leadership step: renew if leader, else try to become it. Returns whether
    /// this instance leads now, and whether any instance does (`false` when Redis
    /// could not be asked).
    pub async fn elect(&self) -> (bool, bool) {
        let r = self.try_elect().await;
        let (me, any) = self.record("lead", r).unwrap_or_default();
        let was = self.leader.swap(me, Ordering::Relaxed);
        // Set on every step, not only on changes, so the gauge heals after a
        // reload that swapped caches.
        self.metrics.leader.set(i64::from(me));
        if was != me {
            tracing::info!(leader = me, id = %self.id, "redis leadership changed");
        }
        (me, any)
    }

    async fn try_elect(&self) -> Result<(bool, bool), CacheError> {
        let mut c = self.conn()?;
        let ttl_ms = self.cfg.leader_ttl.as_millis() as u64;
        if self.is_leader() {
            let renewed: i64 = redis::Script::new(RENEW)
                .key(self.leader_key())
                .arg(&self.id)
                .arg(ttl_ms)
                .invoke_async(&mut c)
                .await?;
            if renewed == 1 {
                return Ok((true, true));
            }
        }
        let set: Option<String> = redis::cmd("SET")
            .arg(self.leader_key())
            .arg(&self.id)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut c)
            .await?;
        Ok((set.is_some(), true))
    }

    /// Writes `spec` if this instance leads and Redis holds no newer one; tells
    /// followers. Returns whether it wrote.
    pub async fn write(&self, key: &Key, spec: &Spec) -> Result<bool, CacheError> {
        let r = self.try_write(key, spec).await;
        self.record("write", r)
    }

    async fn try_write(&self, key: &Key, spec: &Spec) -> Result<bool, CacheError> {
        let mut c = self.conn()?;
        let write = redis::Script::new(WRITE);
        let mut script = write.prepare_invoke();
        script.key(self.hash_key(key));
        if self.cfg.legacy_hashed_key && key.api == Api::V1 {
            script.key(self.legacy_key(key));
        }
        let written: i64 = script
            .arg(spec.lcut)
            .arg(spec.plain.as_ref())
            .arg(self.cfg.cache_ttl.as_secs().max(1))
            .arg(self.channel())
            .arg(self.leader_key())
            .arg(&self.id)
            .invoke_async(&mut c)
            .await?;
        if written < 0 {
            // Another instance took over.
            self.leader.store(false, Ordering::Relaxed);
            self.metrics.leader.set(0);
        }
        Ok(written == 1)
    }

    /// The lcut Redis holds for `key`.
    pub async fn lcut(&self, key: &Key) -> Result<Option<u64>, CacheError> {
        let r = async {
            let mut c = self.conn()?;
            let v: Option<String> = c.hget(self.hash_key(key), "lcut").await?;
            v.map(|s| {
                s.parse()
                    .map_err(|_| CacheError::Bad(format!("lcut {s:?}")))
            })
            .transpose()
        }
        .await;
        self.record("read", r)
    }

    /// The spec Redis holds for `key`, if it is newer than `than`.
    pub async fn read_newer(
        &self,
        key: &Key,
        than: u64,
    ) -> Result<Option<(u64, Bytes)>, CacheError> {
        let r = async {
            let mut c = self.conn()?;
            let (lcut, config): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
                .arg(self.hash_key(key))
                .arg("lcut")
                .arg("config")
                .query_async(&mut c)
                .await?;
            let (Some(lcut), Some(config)) = (lcut, config) else {
                return Ok(None);
            };
            let lcut: u64 = lcut
                .parse()
                .map_err(|_| CacheError::Bad(format!("lcut {lcut:?}")))?;
            Ok((lcut > than).then(|| (lcut, Bytes::from(config))))
        }
        .await;
        self.record("read", r)
    }

    /// Removes `key`'s entries (for keys upstream rejects, when configured so).
    pub async fn delete(&self, key: &Key) -> Result<(), CacheError> {
        let r = async {
            let mut c = self.conn()?;
            let _: i64 = c.del(&[self.hash_key(key), self.legacy_key(key)]).await?;
            Ok(())
        }
        .await;
        self.record("delete", r)
    }

    /// Asks the leader to poll `key` too.
    pub async fn register(&self, key: &Key) -> Result<(), CacheError> {
        let r = async {
            let mut c = self.conn()?;
            let now = unix_secs();
            let member = format!("{}|{}", key.api.path(), key.sdk_key.as_str());
            let _: i64 = c.zadd(self.registry_key(), member, now).await?;
            Ok(())
        }
        .await;
        self.record("register", r)
    }

    /// Keys any instance registered recently (older ones are pruned).
    pub async fn registered(&self) -> Result<Vec<Key>, CacheError> {
        let r = async {
            let mut c = self.conn()?;
            let cutoff = unix_secs().saturating_sub(REGISTRY_WINDOW.as_secs());
            let _: i64 = c.zrembyscore(self.registry_key(), 0, cutoff).await?;
            let members: Vec<String> = c.zrange(self.registry_key(), 0, -1).await?;
            Ok(members
                .iter()
                .filter_map(|m| {
                    let (api, sdk_key) = m.split_once('|')?;
                    let api = match api {
                        "v1" => Api::V1,
                        "v2" => Api::V2,
                        _ => return None,
                    };
                    // Anyone with access to Redis can write here: the same
                    // check as for keys from clients.
                    Some(Key {
                        api,
                        sdk_key: SdkKey::parse(sdk_key).ok()?,
                    })
                })
                .collect())
        }
        .await;
        self.record("registered", r)
    }

    /// Calls `changed` with each hash key the leader announces, until `stop`;
    /// resubscribes after Redis outages.
    pub async fn follow(self: Arc<Self>, stop: CancellationToken, changed: impl Fn(String) + Send) {
        use tokio_stream::StreamExt;
        loop {
            let sub = async {
                let client = redis::Client::open(self.cfg.url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(self.channel()).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let subscribed = tokio::time::timeout(self.cfg.connect_timeout, sub).await;
            self.metrics
                .op("subscribe", matches!(subscribed, Ok(Ok(_))));
            if let Ok(Ok(pubsub)) = subscribed {
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        m = messages.next() => match m {
                            Some(m) => {
                                if let Ok(name) = m.get_payload::<String>() {
                                    changed(name);
                                }
                            }
                            None => break, // connection lost
                        },
                    }
                }
            }
            // Redis is down (or the subscription broke): try again shortly.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "fproxy".into())
}
