//! The command line: `run`, `register`, `check-config`, `dev-backend`, `demo`, `--version`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Run the reference backend (in memory; not a production backend).
    DevBackend(crate::devbackend::DevBackendArgs),
    /// Try the relayer on one machine: reference backend + relayer, with copy-paste curl lines.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The relayer's TOML configuration (the chart mounts it at /etc/consonant/relayer.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}
