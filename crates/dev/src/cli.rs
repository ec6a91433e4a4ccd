//! `consonant-relayer-dev`: every subcommand of the production binary
//! (`run`, `register`, `check-config`, `keygen`, `sign`) plus `dev-backend` (the reference
//! backend, dev-backend.md's exact command line) and `demo`.

use clap::{Parser, Subcommand};
use consonant_relayer::cli as relayer_cli;

#[derive(Debug, Parser)]
#[command(
    name = "consonant-relayer-dev",
    version,
    about = "Consonant Relayer for development: the relayer's subcommands plus the reference backend and the demo (not the production image's binary)"
)]
pub struct DevCli {
    #[command(subcommand)]
    pub command: DevCommand,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    #[command(flatten)]
    Relayer(relayer_cli::Command),
    /// Run the reference backend (in memory; not a production backend).
    DevBackend(consonant_dev_backend::DevBackendArgs),
    /// Try the relayer on one machine: reference backend + relayer, with copy-paste curl lines.
    Demo(crate::demo::DemoArgs),
}

/// Carries out one command; the `Ok` value is the process exit code.
pub fn dispatch(command: DevCommand) -> anyhow::Result<i32> {
    match command {
        DevCommand::Relayer(command) => relayer_cli::dispatch(command),
        DevCommand::DevBackend(args) => {
            consonant_relayer::logging::init(
                &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                "text",
            );
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(consonant_dev_backend::run(args))?;
            Ok(0)
        }
        DevCommand::Demo(args) => crate::demo::run(args),
    }
}
