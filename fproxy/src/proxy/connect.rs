//! Finding a target that accepts: strategy pick, then failover along the list.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::Route;
use crate::dns::Resolver;
use crate::strategy::Pick;

/// Why no target took a connection. Every attempt happens before a byte of the client's
/// data is read, so retrying on another target (or another instance) is always safe.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no target connected within {deadline:?}; last error: {last}")]
    Exhausted {
        deadline: std::time::Duration,
        last: String,
    },
}

/// A connected target.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    /// Index of the target in the route.
    pub index: usize,
    pub addr: SocketAddr,
    /// Attempts that failed before this one.
    pub retries: u32,
}

/// Tries targets from the strategy's pick onwards, each resolved address in turn,
/// every attempt bounded by the connect timeout and all of them by the deadline.
/// One pass: when every target refused, the client is answered at once rather than
/// held until the deadline.
pub async fn connect(
    route: &Route,
    resolver: &Resolver,
    client: SocketAddr,
) -> Result<Connected, ConnectError> {
    let cfg = &route.config;
    let deadline = Instant::now() + cfg.connect_deadline;
    let n = route.targets.len();
    if n == 0 {
        // Validation forbids this; an embedder building a Config by hand may not.
        return Err(ConnectError::Exhausted {
            deadline: cfg.connect_deadline,
            last: "the app has no targets".into(),
        });
    }
    let first = route.strategy.pick(&Pick {
        client,
        targets: &cfg.targets,
    }) % n;
    let mut retries = 0;
    let mut last = String::from("none tried");

    for step in 0..n {
        let index = (first + step) % n;
        let target = &route.targets[index].target;
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            break;
        };
        let addrs = match timeout(left, resolver.resolve(target)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                last = e.to_string();
                retries += 1;
                continue;
            }
            Err(_) => {
                last = format!("resolve {target}: timed out");
                break;
            }
        };
        for addr in addrs {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            match timeout(left.min(cfg.connect_timeout), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    return Ok(Connected {
                        stream,
                        index,
                        addr,
                        retries,
                    })
                }
                Ok(Err(e)) => last = format!("connect {target} ({addr}): {e}"),
                Err(_) => last = format!("connect {target} ({addr}): timed out"),
            }
            retries += 1;
            tracing::debug!(app = %route.app.name, %client, error = %last, "connect attempt failed");
        }
    }
    Err(ConnectError::Exhausted {
        deadline: cfg.connect_deadline,
        last,
    })
}
