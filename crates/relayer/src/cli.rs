//! The production command line — `run`, `register`, `check-config`,
//! `--version` — and [`dispatch`], which carries one out. This is the
//! binary's edge: errors become `anyhow` here and nowhere deeper. The
//! developer binary (`consonant-relayer-dev`) embeds [`Command`] and adds
//! `dev-backend` and `demo`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::Layer;

use crate::observability::SpanExport;
use crate::{config, logging, relayer};

#[derive(Debug, Parser)]
#[command(
    name = "consonant-relayer",
    version,
    about = "Cluster-resident agent: one outbound gRPC stream to a Consonant backend, commands against the Kubernetes API, agent telemetry forwarded"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relayer with a configuration file.
    Run(ConfigArg),
    /// Register the cluster with the backend (the chart's pre-install hook): bootstrap token in, cluster Secret out. Exit codes: docs/register.md.
    Register(crate::register::RegisterArgs),
    /// Validate a configuration file and print the effective configuration (secrets redacted).
    CheckConfig(ConfigArg),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The relayer's TOML configuration (the chart mounts it at /etc/consonant/relayer.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Carries out one command; the `Ok` value is the process exit code.
pub fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::CheckConfig(args) => {
            let cfg = config::load(&args.config)?;
            println!(
                "# {} is valid; effective configuration:",
                args.config.display()
            );
            print!("{}", config::redacted_toml(&cfg));
            Ok(0)
        }
        Command::Run(args) => {
            let cfg = config::load(&args.config)?;
            let export = SpanExport::start(&cfg)?;
            let layer = export.as_ref().map(|export| export.layer().boxed());
            logging::init_with(&cfg.logging.level, &cfg.logging.format, layer);
            if let Some(export) = &export {
                tracing::info!(endpoint = export.endpoint(), protocol = %cfg.tracing.otlp_protocol, "exporting command spans over OTLP");
            }
            let code = relayer::system().block_on(relayer::run_until_signal(cfg));
            if let Some(export) = export {
                export.shutdown();
            }
            Ok(code?)
        }
        Command::Register(args) => Ok(i32::from(crate::register::run(args))),
    }
}

/// The exit status for what [`dispatch`] returned: the code, or 1 with the
/// error printed as one readable line.
pub fn exit_code(result: anyhow::Result<i32>) -> std::process::ExitCode {
    match result {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
