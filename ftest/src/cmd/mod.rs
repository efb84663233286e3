//! One module per command. New commands get their own module here, an entry in
//! [`crate::cli::Command`] and an arm in [`dispatch`].

pub mod balancer;
pub mod completions;
pub mod echo;
pub mod ping;
pub mod simulate;
pub mod spec_load;
pub mod spec_upstream;

use crate::cli::Command;

/// Runs an async command.
pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Echo(args) => echo::run(&args).await,
        Command::Ping(args) => ping::run(&args).await,
        Command::Balancer(args) => balancer::run(&args).await,
        Command::Simulate(args) => simulate::run(&args).await,
        Command::SpecUpstream(args) => spec_upstream::run(&args).await,
        Command::SpecLoad(args) => spec_load::run(&args).await,
        Command::Completions(args) => completions::run(&args),
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal sent right after a
/// command printed that it is ready is not missed. Without signal handlers it never
/// completes, and the process dies on the signal the default way.
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        match handlers {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}
