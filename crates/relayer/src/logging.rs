//! Logging setup: `tracing` to stderr as JSON or text, filtered by
//! `logging.level` (a level or an EnvFilter string), optionally an extra
//! layer (the OTLP span export, see `observability`), and panics logged as
//! errors so they reach the log pipeline and not only raw stderr.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// A layer added beside the log output, with its own filter.
pub type ExtraLayer = Box<dyn Layer<Registry> + Send + Sync + 'static>;

/// Installs the global subscriber; a second call is a no-op.
pub fn init(level: &str, format: &str) {
    init_with(level, format, None);
}

/// [`init`] plus `extra` (e.g. the span export layer), which sees spans
/// whatever `logging.level` says.
pub fn init_with(level: &str, format: &str, extra: Option<ExtraLayer>) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output: ExtraLayer = if format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_target(true)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_target(true)
            .with_filter(filter)
            .boxed()
    };
    let mut layers = vec![output];
    layers.extend(extra);
    let _ = tracing_subscriber::registry().with(layers).try_init();
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(%location, panic = %message, "panic");
    }));
}

/// Makes rustls usable: kube and reqwest pull in different crypto providers,
/// and rustls panics when more than one is compiled in and none is chosen.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
