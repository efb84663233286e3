//! One module per command. New commands (the spec app's, for one) get their own
//! module here, an entry in [`crate::cli::Command`] and an arm in [`dispatch`].

pub mod balancer;
pub mod completions;
pub mod echo;
pub mod ping;
pub mod simulate;

use crate::cli::Command;

/// Runs an async command.
pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Echo(args) => echo::run(&args).await,
        Command::Ping(args) => ping::run(&args).await,
        Command::Balancer(args) => balancer::run(&args).await,
        Command::Simulate(args) => simulate::run(&args).await,
        Command::Completions(args) => completions::run(&args),
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. Without signal handlers it never
/// completes, and the process dies on the signal the default way.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
