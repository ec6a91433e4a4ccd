//! The production command line — `run`, `register`, `check-config`,
//! `keygen`, `sign`, `--version` — and [`dispatch`], which carries one out. This is the
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
    /// Make an Ed25519 key pair for the cluster lock: PREFIX.key (private, PKCS#8 PEM, mode 0600) and PREFIX.pub; prints the public key in the ed25519:… form commands.verify_keys takes. See docs/cluster-lock.md.
    Keygen(KeygenArgs),
    /// Sign one command (proto3 JSON, e.g. {"scale": {…}}) for one cluster; prints the signed command as JSON for the backend. See docs/cluster-lock.md.
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write: PREFIX.key and PREFIX.pub (never overwritten).
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The private key (PKCS#8 PEM, from keygen or `openssl genpkey -algorithm ed25519`).
    #[arg(long, value_name = "FILE")]
    pub key_file: PathBuf,
    /// The key's id in the relayer's commands.verify_keys.
    #[arg(long, value_name = "ID")]
    pub key_id: String,
    /// The cluster the command is for (its cluster_id): the signature is valid there only.
    #[arg(long, value_name = "ID")]
    pub cluster_id: String,
    /// Sets deadline_unix_ms to now + TTL (e.g. 5m) when the command has none; at most the relayer's commands.dedup_retention (10m by default).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// The command as JSON; - or nothing reads standard input.
    #[arg(value_name = "FILE|-")]
    pub file: Option<PathBuf>,
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
        Command::Keygen(args) => {
            let public = crate::keytool::keygen(&args.out)?;
            eprintln!(
                "wrote {0}.key (the private key, mode 0600: keep it with the signer, never on the backend) and {0}.pub",
                args.out.display()
            );
            println!("{public}");
            Ok(0)
        }
        Command::Sign(args) => {
            let (what, json) = match args.file.as_deref() {
                None => ("standard input".to_string(), read_stdin()?),
                Some(path) if path.as_os_str() == "-" => {
                    ("standard input".to_string(), read_stdin()?)
                }
                Some(path) => (
                    path.display().to_string(),
                    std::fs::read_to_string(path).map_err(|source| {
                        crate::keytool::KeyToolError::Read {
                            what: path.display().to_string(),
                            source,
                        }
                    })?,
                ),
            };
            let request = crate::keytool::SignRequest {
                key_file: &args.key_file,
                key_id: &args.key_id,
                cluster_id: &args.cluster_id,
                ttl: args.ttl,
            };
            println!("{}", crate::keytool::sign(&request, &what, &json)?);
            Ok(0)
        }
    }
}

fn read_stdin() -> Result<String, crate::keytool::KeyToolError> {
    use std::io::Read as _;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|source| crate::keytool::KeyToolError::Read {
            what: "standard input".into(),
            source,
        })?;
    Ok(text)
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
