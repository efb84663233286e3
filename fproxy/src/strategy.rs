//! Load-balancing strategies: which target a new connection tries first.
//!
//! A strategy only chooses; the proxy does the connecting. When the chosen target
//! fails, the proxy walks on through the list from there (`pick + 1`, `pick + 2`, ...),
//! so every strategy gets failover for free. Strategies are built per routing snapshot
//! from a [`Registry`]; embedders register their own under a name usable in config.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Target;

/// What a strategy may look at when it picks.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    /// The client's address (for hashing strategies).
    pub client: SocketAddr,
    /// The app's targets, never empty.
    pub targets: &'a [Target],
}

/// Chooses the first target for a new connection.
///
/// Called on the accept path from many tasks at once: it must not block or await.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// Index into `pick.targets` of the first target to try.
    fn pick(&self, pick: &Pick<'_>) -> usize;

    /// A connection to `target` was established (load-aware strategies count these).
    fn connected(&self, _target: usize) {}

    /// A connection to `target`, earlier reported by [`Strategy::connected`], closed.
    fn released(&self, _target: usize) {}
}

/// Builds a strategy for an app's target list. Called on every routing change.
pub type Factory = Arc<dyn Fn(&[Target]) -> Arc<dyn Strategy> + Send + Sync>;

/// The strategies known by name. Config validation refuses any other name.
#[derive(Clone)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl Default for Registry {
    /// The built-in strategies.
    fn default() -> Self {
        let mut r = Registry {
            factories: BTreeMap::new(),
        };
        r.register("round_robin", |_| Arc::new(RoundRobin::default()));
        r
    }
}

impl Registry {
    /// Adds (or replaces) a strategy under `name`; config refers to it by that name.
    pub fn register<F>(&mut self, name: &str, factory: F) -> &mut Self
    where
        F: Fn(&[Target]) -> Arc<dyn Strategy> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_string(), Arc::new(factory));
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the named strategy; `None` for an unknown name (validation prevents it).
    pub fn build(&self, name: &str, targets: &[Target]) -> Option<Arc<dyn Strategy>> {
        self.factories.get(name).map(|f| f(targets))
    }
}

/// Each new connection starts at the next target in order: A, B, C, A, ...
///
/// A relaxed atomic counter: no lock on the accept path, and exact order for
/// connections accepted one after another.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn pick(&self, pick: &Pick<'_>) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % pick.targets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_in_order() {
        let targets: Vec<Target> = (1..=3)
            .map(|p| Target::Addr(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let rr = Registry::default().build("round_robin", &targets).unwrap();
        let pick = Pick {
            client: SocketAddr::from(([127, 0, 0, 1], 9)),
            targets: &targets,
        };
        let order: Vec<usize> = (0..7).map(|_| rr.pick(&pick)).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn registry_knows_custom_names() {
        let mut r = Registry::default();
        r.register("first", |_| Arc::new(RoundRobin::default()));
        assert_eq!(r.names().collect::<Vec<_>>(), ["first", "round_robin"]);
        assert!(r.build("nope", &[]).is_none());
    }
}
