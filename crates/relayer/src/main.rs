//! `consonant-relayer`, the production binary (the only one the image
//! ships): parses the command line and hands off to the library.

use std::process::ExitCode;

use clap::Parser;
use consonant_relayer::cli::{dispatch, exit_code, Cli};
use consonant_relayer::logging;

fn main() -> ExitCode {
    logging::install_crypto_provider();
    // Test builds only: fail points configured by the FAILPOINTS variable.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    exit_code(dispatch(Cli::parse().command))
}
