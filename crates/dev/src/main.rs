//! `consonant-relayer-dev`, the binary `cargo run` starts from a checkout:
//! the production subcommands plus `dev-backend` and `demo`.

use std::process::ExitCode;

use clap::Parser;
use consonant_relayer::cli::exit_code;
use consonant_relayer::logging;
use consonant_relayer_dev::cli::{dispatch, DevCli};

fn main() -> ExitCode {
    logging::install_crypto_provider();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    exit_code(dispatch(DevCli::parse().command))
}
