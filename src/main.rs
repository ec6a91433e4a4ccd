//! The `consonant-relayer` binary: parses the command line and hands off to
//! the library. Errors end here as one readable message and exit code 1.

use std::process::ExitCode;

use clap::Parser;
use consonant_relayer::cli::{Cli, Command};
use consonant_relayer::observability::SpanExport;
use consonant_relayer::{config, logging, relayer};
use tracing_subscriber::Layer;

fn main() -> ExitCode {
    logging::install_crypto_provider();
    // Test builds only: fail points configured by the FAILPOINTS variable.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<i32> {
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
        Command::Register(args) => Ok(i32::from(consonant_relayer::register::run(args))),
        Command::DevBackend(args) => {
            logging::init(
                &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                "text",
            );
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(consonant_relayer::devbackend::run(args))?;
            Ok(0)
        }
        Command::Demo(args) => consonant_relayer::demo::run(args),
    }
}
