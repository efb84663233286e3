//! Target name resolution.
//!
//! TCP apps resolve their target names in the background and again when the
//! answer's TTL runs out (see `proxy::discover`); a connection resolves a name
//! itself only before that first answer. Lookups go through hickory's in-process
//! cache. IP-literal targets never touch the resolver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::Target;
use crate::metrics::DnsLabels;

/// A name's addresses and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<SocketAddr>,
    /// Time left before the record expires (0 for IP literals' non-answers).
    pub ttl: Duration,
}

/// Why a target's name gave no address.
#[derive(Debug, thiserror::Error)]
#[error("resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

/// A shared, caching resolver. Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
    lookups: Option<Family<DnsLabels, Counter>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// Uses the system's resolver config (`/etc/resolv.conf`, `/etc/hosts`). When that
    /// cannot be read, logs why and falls back to hickory's defaults, so a daemon whose
    /// targets are all IP literals still starts on a host without DNS.
    pub fn from_system() -> Self {
        let mut builder = match TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read system DNS config; using defaults");
                TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioConnectionProvider::default(),
                )
            }
        };
        // Ask for both families: a name served only on IPv6 (or only on IPv4) must
        // still connect, and the proxy tries each address in turn.
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Resolver {
            inner: Arc::new(builder.build()),
            lookups: None,
        }
    }

    /// Asks only the given name servers (plain UDP/TCP DNS), with no hosts file:
    /// for embedders with their own DNS, and tests that run a DNS server.
    pub fn with_nameservers(servers: &[SocketAddr]) -> Self {
        let mut group = NameServerConfigGroup::new();
        for s in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[s.ip()],
                s.port(),
                true,
            ));
        }
        let config = ResolverConfig::from_parts(None, vec![], group);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Our own refresh schedule decides when to ask again; a cached answer
        // must not outlive what the server said.
        builder.options_mut().cache_size = 0;
        Resolver {
            inner: Arc::new(builder.build()),
            lookups: None,
        }
    }

    /// Counts every lookup by host and result in `lookups`.
    pub fn count_lookups(mut self, lookups: Family<DnsLabels, Counter>) -> Self {
        self.lookups = Some(lookups);
        self
    }

    /// Every address of `target`, in the order to try them.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, ResolveError> {
        self.lookup(target).await.map(|a| a.addrs)
    }

    /// Every address of `target`, with the time the answer may be used for.
    pub async fn lookup(&self, target: &Target) -> Result<Answer, ResolveError> {
        let (host, port) = match target {
            Target::Addr(a) => {
                return Ok(Answer {
                    addrs: vec![*a],
                    ttl: Duration::MAX,
                })
            }
            Target::Name { host, port } => (host, *port),
        };
        let result = self
            .inner
            .lookup_ip(host.as_str())
            .await
            .map_err(|e| e.to_string())
            .and_then(|lookup| {
                let addrs: Vec<SocketAddr> =
                    lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                if addrs.is_empty() {
                    return Err("no addresses".to_string());
                }
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                Ok(Answer { addrs, ttl })
            });
        if let Some(family) = &self.lookups {
            let result = if result.is_ok() { "ok" } else { "error" };
            family
                .get_or_create(&DnsLabels {
                    host: host.clone(),
                    result,
                })
                .inc();
        }
        result.map_err(|reason| ResolveError {
            host: host.clone(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_and_literals_resolve_offline() {
        let r = Resolver::from_system();
        let lit = Target::Addr("[::1]:80".parse().unwrap());
        assert_eq!(
            r.resolve(&lit).await.unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        let name = Target::Name {
            host: "localhost".into(),
            port: 81,
        };
        let addrs = r.resolve(&name).await.unwrap();
        assert!(
            addrs.contains(&"127.0.0.1:81".parse().unwrap()),
            "{addrs:?}"
        );
    }
}
