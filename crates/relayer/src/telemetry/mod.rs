//! Telemetry forwarding: OTLP/gRPC and OTLP/HTTP receivers for agents'
//! traces, metrics and logs ([`grpc`], [`http`]), the [`TelemetrySink`] they
//! push into, item counting ([`count`]) and the pure [`Coalescer`] that packs
//! accepted requests into relay-protocol `TelemetryBatch`es.

pub mod coalesce;
pub mod count;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod request;
pub mod sink;
pub mod slow_clients;
pub mod split;
pub mod wire;

pub use coalesce::{Coalescer, Now};
pub use count::ItemCount;
pub use grpc::{serve_grpc, services};
pub use http::{router, serve_http};
pub use ingest::{IngestCounters, IngestSink};
pub use request::{forward, OtlpRequest};
pub use sink::{Refusal, Signal, TelemetrySink};
pub use split::{Piece, Rejected, Split, SplitRequest};

/// Default largest export request the receivers accept (16 MiB), after
/// decompression.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Why a receiver could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen for OTLP/{protocol} on {addr}: {source}; check [telemetry].otlp_{protocol}_listen and that the port is free")]
    Bind {
        /// "grpc" or "http".
        protocol: &'static str,
        /// The address from the configuration.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gRPC server failed while serving.
    #[error("OTLP/gRPC receiver failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP server failed while serving.
    #[error("OTLP/HTTP receiver failed: {0}")]
    Http(#[source] std::io::Error),
}

/// A running receiver: its bound address and the task serving it, which
/// ends after the shutdown future completes and in-flight requests finish.
#[derive(Debug)]
pub struct Receiver {
    /// The address actually bound (port 0 resolved).
    pub local_addr: std::net::SocketAddr,
    /// The server task.
    pub task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// Binds a receiver's listener, naming the protocol and address on failure.
pub(crate) async fn bind(
    protocol: &'static str,
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), ServeError> {
    let bind_error = |source| ServeError::Bind {
        protocol,
        addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local_addr))
}
