//! `lab`: the perflab harness. `./scripts/run-matrix.sh` is its entry point; this only
//! parses the command line and hands it to [`lab::commands`].
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = lab::cli::Cli::parse();
    match lab::commands::dispatch(&cli.command) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(lab::commands::error_code(&e))
        }
    }
}
