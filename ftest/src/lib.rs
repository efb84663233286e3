//! ftest: try, check and load-test fproxy (or any TCP echo path, or anything serving
//! Statsig's `download_config_specs`).
//!
//! The binary is a thin shell over this library so the integration tests can call
//! the same functions the commands use. One module per command lives under
//! [`cmd`]; what several commands share (addresses, the identity probe, test data,
//! one echo round trip) has its own module.

pub mod cli;
pub mod cmd;
pub mod exchange;
pub mod http;
pub mod latency;
pub mod net;
pub mod payload;
pub mod probe;

pub use cli::Cli;

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    use anyhow::Context;
    // Completions need no runtime; everything else is async networking.
    if let cli::Command::Completions(args) = &cli.command {
        return cmd::completions::run(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(cmd::dispatch(cli.command))
}
