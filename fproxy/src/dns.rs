//! Target name resolution.
//!
//! Names are resolved when a connection needs them, through hickory's in-process
//! cache: answers are reused until their TTL runs out and looked up again after, so a
//! DNS change reaches new connections without a restart. IP-literal targets never
//! touch the resolver.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_resolver::config::{LookupIpStrategy, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

use crate::config::Target;

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
        }
    }

    /// Every address of `target`, in the order to try them.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, ResolveError> {
        match target {
            Target::Addr(a) => Ok(vec![*a]),
            Target::Name { host, port } => {
                let lookup =
                    self.inner
                        .lookup_ip(host.as_str())
                        .await
                        .map_err(|e| ResolveError {
                            host: host.clone(),
                            reason: e.to_string(),
                        })?;
                let addrs: Vec<SocketAddr> =
                    lookup.iter().map(|ip| SocketAddr::new(ip, *port)).collect();
                if addrs.is_empty() {
                    return Err(ResolveError {
                        host: host.clone(),
                        reason: "no addresses".into(),
                    });
                }
                Ok(addrs)
            }
        }
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
