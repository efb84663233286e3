//! `ftest completions SHELL`: print a completion script generated from the CLI.

use clap::CommandFactory;
use clap_complete::Shell;

const EXAMPLES: &str = "\
Examples:
  ftest completions bash > ~/.local/share/bash-completion/completions/ftest
  ftest completions zsh > ~/.zfunc/_ftest
  ftest completions fish > ~/.config/fish/completions/ftest.fish";

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The shell to generate for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ftest", &mut out);
    // Written in one go so a closed pipe is an error, not a panic.
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(&out)
        .map_err(|e| anyhow::anyhow!("write completions: {}", crate::net::describe(&e)))
}
