//! `vault-server`: see `vault_server::cli` for the command line.

use std::process::ExitCode;

use clap::Parser;
use vault_server::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match vault_server::run::main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-server: error: {e}");
            ExitCode::FAILURE
        }
    }
}
