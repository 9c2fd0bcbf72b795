//! `vault-server`: see `vault_server::cli` for the command line.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use vault_server::cli::Cli;

fn main() -> ExitCode {
    // First, while this is the only thread.
    let env_passphrases = vault_server::run::take_env_passphrases();
    let cli = Cli::parse();
    match vault_server::run::main(cli, env_passphrases) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed stderr must not turn the exit code into a panic's.
            let _ = writeln!(std::io::stderr(), "vault-server: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
