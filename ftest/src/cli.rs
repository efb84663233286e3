//! The command line: one subcommand per module under `cmd/`.
//!
//! Exit codes: 0 when the command did what it was asked and every check held, 1 when
//! a check failed or something could not be reached (the reason is printed), 2 for a
//! bad command line.

use clap::{Parser, Subcommand};

use crate::cmd::{balancer, completions, echo, ping, simulate, spec_load, spec_upstream};

const ABOUT_AFTER: &str = "\
Quick start (from the repository root, three terminals):
  ftest echo --listen 127.0.0.1:9001,127.0.0.1:9002,localhost:9003
  fproxy --config config.json
  ftest balancer 127.0.0.1:5001 --expect round-robin

See docs/ftest.md for every command, the identity probe and exit codes.";

/// Try, check and load-test fproxy: echo backends, ping, balance checks, load, and a
/// fake Statsig upstream and load for the spec app.
#[derive(Debug, Parser)]
#[command(name = "ftest", version, about, after_help = ABOUT_AFTER)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run echo backends that can say which one they are.
    Echo(echo::Args),
    /// Send data through the proxy and check the echo, like `ping`.
    Ping(ping::Args),
    /// Open connections one after another and judge how they were balanced.
    Balancer(balancer::Args),
    /// Generate load and report throughput, latency percentiles and errors.
    Simulate(simulate::Args),
    /// Serve a fake Statsig upstream (download_config_specs) that can publish versions.
    SpecUpstream(spec_upstream::Args),
    /// Load a spec app over HTTP, or time one update reaching many gRPC streams.
    SpecLoad(spec_load::Args),
    /// Print a shell completion script.
    Completions(completions::Args),
}
