//! fproxy: a programmable L4 proxy with live, zero-downtime reloads.
//!
//! Data flows one way: a [`watch::ConfigSubscriber`] produces validated
//! [`config::Config`]s, the [`daemon::Daemon`] diffs each against what runs and rolls
//! out only the apps that changed, and each app ([`proxy::TcpApp`]) serves from an
//! immutable routing snapshot.
//!
//! Embedding: build a [`strategy::Registry`] (register your own [`strategy::Strategy`]),
//! create a [`daemon::Daemon`], subscribe to any [`watch::ConfigSubscriber`] with
//! [`daemon::Daemon::validator`], and [`daemon::Daemon::run`] it. See
//! `examples/embed.rs`.

pub mod admin;
pub mod app;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod error;
pub mod fdlimit;
pub mod listener;
pub mod loglimit;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod spec;
pub mod strategy;
pub(crate) mod sync;
pub mod watch;

pub use config::{AppConfig, Config, ConfigError, Target, Validator};
pub use daemon::{Applied, Daemon, Event};
pub use strategy::{Registry, Strategy};
pub use watch::{ConfigSubscriber, FileWatcher, Subscription, Update};
