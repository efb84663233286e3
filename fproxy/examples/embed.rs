//! Embedding fproxy: a custom strategy and a custom config source, public API only.
//!
//! Run it, then type a new config as one line of JSON on stdin to reload live:
//!
//! ```sh
//! cargo run -p fproxy --example embed
//! {"apps":[{"name":"db","listen":["127.0.0.1:6000"],"targets":["127.0.0.1:9002"],"strategy":"primary_backup"}]}
//! ```
//!
//! The `primary_backup` strategy sends every connection to the first target while it
//! accepts; the proxy's failover walks on to the next ones only when it does not.

use std::sync::Arc;

use fproxy::strategy::Pick;
use fproxy::watch::WatchError;
use fproxy::{ConfigSubscriber, Daemon, Registry, Strategy, Subscription, Update, Validator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Always start at the first target.
#[derive(Debug)]
struct PrimaryBackup;

impl Strategy for PrimaryBackup {
    fn pick(&self, _: &Pick<'_>) -> usize {
        0
    }
}

/// Configs from stdin, one JSON document per line, starting with `initial`.
struct Stdin {
    initial: String,
}

impl ConfigSubscriber for Stdin {
    fn subscribe(&self, validator: Validator) -> Result<Subscription, WatchError> {
        let first = validator.parse(&self.initial)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Update::Config(first));
        let task = tokio::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                // Invalid input is sent too: the daemon logs it and keeps running.
                let update = match validator.parse(&line) {
                    Ok(c) => Update::Config(c),
                    Err(e) => Update::Rejected(e),
                };
                if tx.send(update).is_err() {
                    return;
                }
            }
        });
        // Dropping the subscription stops reading stdin.
        Ok(Subscription::new(rx, AbortOnDrop(task)))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let mut registry = Registry::default();
    registry.register("primary_backup", |_targets| Arc::new(PrimaryBackup));
    let daemon = Daemon::new(registry);

    let source = Stdin {
        initial: r#"{"apps":[{"name":"db","listen":["127.0.0.1:6000"],
            "targets":["127.0.0.1:9001","127.0.0.1:9002"],"strategy":"primary_backup"}]}"#
            .into(),
    };
    let subscription = source.subscribe(daemon.validator())?;
    println!("listening on 127.0.0.1:6000; type a config line to reload, Ctrl-C to stop");
    daemon
        .run(subscription, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
