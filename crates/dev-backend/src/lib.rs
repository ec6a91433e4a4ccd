//! The reference backend (`consonant-relayer-dev dev-backend`): the
//! backend side of the relay protocol (`protocol.md`), in memory, one
//! process, real sockets. Not a production backend. Used by `demo`, by the
//! project's tests and benchmarks (in process, via [`start`]) and as a
//! counterpart for teams writing a backend.
//!
//! Modules: `hub` (the shared state and its in-process API, split by job
//! into submodules: registry, registration, credentials, sessions, connect,
//! inbound frames, commands, dedup, frame log, events, telemetry, faults,
//! stats), `grpc` (`RelayService/Connect`), `admin` (the admin HTTP API; its
//! module docs list the extra test/debug endpoints that are not part of the
//! contract), `otlp` (counting OTLP items).
//!
//! Test/debug endpoints, NOT part of the contract in `dev-backend.md`:
//! `GET /api/v1/clusters/{id}/frames` (reliable frames in arrival order plus
//! a duplicate count), `GET|POST /api/v1/debug/faults` (withhold acks, go
//! silent, refuse new streams, end open streams) and `GET /api/v1/debug/stats`
//! (every `Connect` attempt counted, accepted or not).
//!
//! Behaviour beyond the spec tables: a command answered REJECTED with
//! `retryable = true` is not final; it is re-sent after 1 s and on the next
//! session. Sessions that were sent `Drain` get no new commands. A session
//! with no frame from the relayer for 3 heartbeat intervals is ended with
//! UNAVAILABLE.

mod admin;
mod grpc;
mod hub;
mod otlp;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use hub::{
    ClusterError, ClusterView, CommandState, CommandView, DevBackendState, Faults, FaultsUpdate,
    FrameKind, FrameRecord, FramesView, RegisterError, RejectCode, SessionView, StatsView,
    TelemetryCounters,
};
pub use otlp::{count as count_otlp, OtlpCounts, OtlpError};

use consonant_proto::relay_service_server::RelayServiceServer;
use consonant_proto::signing::Signer;
use consonant_secret::Secret;

/// How long `shutdown` waits for the servers before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Command line of `consonant-relayer-dev dev-backend` (dev-backend.md's exact flags).
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Run the reference backend: a reference implementation of the backend side of the relay protocol, \
             in memory only, for demos, tests and development. Not a production backend.",
    long_about = "Run the reference backend: a reference implementation of the backend side of the relay \
                  protocol (gRPC RelayService plus the admin HTTP API), in memory only, one process. \
                  Everything is lost when it exits. It is not a production backend: no persistence, \
                  no TLS, no multi-tenancy."
)]
pub struct DevBackendArgs {
    /// Address of the gRPC RelayService.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Address of the admin HTTP API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    pub http_listen: SocketAddr,
    /// Accepted registration bootstrap token, single-use (repeatable; none given = accept any non-empty bearer).
    #[arg(
        long = "bootstrap-token",
        value_name = "TOKEN",
        env = "CONSONANT_DEV_BOOTSTRAP_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub bootstrap_tokens: Vec<String>,
    /// Pre-registered cluster as ID=TOKEN (repeatable).
    #[arg(
        long = "cluster",
        value_name = "ID=TOKEN",
        env = "CONSONANT_DEV_CLUSTERS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_cluster
    )]
    pub clusters: Vec<(String, String)>,
    /// Heartbeat interval imposed on both sides (sent in Welcome), e.g. 10s; default: the relayer's.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Sign every command the admin API takes unsigned with this Ed25519 private key (PKCS#8 PEM, from `consonant-relayer keygen`), for the cluster it is sent to; commands given already signed pass as they are. A stand-in for an approval service: a real backend never holds the keys.
    #[arg(long, value_name = "FILE", requires = "signing_key_id")]
    pub signing_key: Option<std::path::PathBuf>,
    /// The key id of --signing-key in the relayers' commands.verify_keys.
    #[arg(long, value_name = "ID", requires = "signing_key")]
    pub signing_key_id: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("{err}; expected a duration like \"500ms\", \"10s\" or \"5m\""))
}

fn parse_cluster(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((id, token)) if !id.trim().is_empty() && !token.trim().is_empty() => {
            Ok((id.trim().to_string(), token.trim().to_string()))
        }
        _ => Err(format!(
            "expected ID=TOKEN, e.g. cls_demo=secret-token, got {:?}",
            redact_token(text)
        )),
    }
}

fn redact_token(text: &str) -> String {
    match text.split_once('=') {
        Some((id, _)) => format!("{id}=***"),
        None => text.to_string(),
    }
}

/// Options for [`start`].
#[derive(Debug, Clone)]
pub struct DevBackendOptions {
    /// gRPC listen address (port 0 picks a free port).
    pub grpc_listen: SocketAddr,
    /// Admin HTTP listen address (port 0 picks a free port).
    pub http_listen: SocketAddr,
    /// Single-use bootstrap tokens; empty = accept any non-empty bearer.
    pub bootstrap_tokens: Vec<Secret>,
    /// Pre-registered clusters `(cluster_id, token)`.
    pub clusters: Vec<(String, Secret)>,
    /// Heartbeat interval imposed in `Welcome`; `None` keeps the relayer's.
    pub heartbeat_interval: Option<Duration>,
    /// Serve gRPC over TLS with this certificate chain and key (PEM). In
    /// process only (tests of the relayer's TLS settings); the command line
    /// serves plaintext.
    pub grpc_tls: Option<ServerTls>,
    /// `Welcome.max_frame_bytes` to announce, also enforced on what the
    /// backend reads; `None` announces 0 (the protocol's 4 MiB). In process
    /// only (tests of the relayer honouring a smaller limit).
    pub max_frame_bytes: Option<u32>,
    /// Signs every command submitted unsigned for the cluster it goes to
    /// (a missing deadline becomes [`SIGNED_COMMAND_TTL`] from now);
    /// commands submitted already signed pass as given.
    pub signer: Option<Arc<Signer>>,
    /// Appends every reliable frame kept (after dedup) to this file as a
    /// JSON line before acking it, as a durable backend stores what it
    /// acks. In process only (the fault tests, which SIGKILL the backend
    /// and still count what it had acked).
    pub frame_journal: Option<std::path::PathBuf>,
}

/// The deadline the backend gives a command it signs that has none: well
/// within the relayer's default `commands.dedup_retention` (10 minutes).
pub const SIGNED_COMMAND_TTL: Duration = Duration::from_secs(300);

/// A PEM certificate chain and private key for the gRPC listener.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls { .. }")
    }
}

impl Default for DevBackendOptions {
    /// Both listeners on 127.0.0.1 with free ports, no tokens, no clusters.
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bootstrap_tokens: Vec::new(),
            clusters: Vec::new(),
            heartbeat_interval: None,
            grpc_tls: None,
            max_frame_bytes: None,
            signer: None,
            frame_journal: None,
        }
    }
}

impl TryFrom<DevBackendArgs> for DevBackendOptions {
    type Error = DevBackendError;

    fn try_from(args: DevBackendArgs) -> Result<Self, DevBackendError> {
        let signer = match (&args.signing_key, &args.signing_key_id) {
            (Some(path), Some(key_id)) => {
                let pem = std::fs::read(path).map_err(|error| {
                    DevBackendError::SigningKey(format!("{}: {error}", path.display()))
                })?;
                let signer = Signer::from_pem(key_id, &pem).map_err(|error| {
                    DevBackendError::SigningKey(format!("{}: {error}", path.display()))
                })?;
                Some(Arc::new(signer))
            }
            _ => None,
        };
        Ok(Self {
            grpc_listen: args.grpc_listen,
            http_listen: args.http_listen,
            bootstrap_tokens: args.bootstrap_tokens.into_iter().map(Secret::new).collect(),
            clusters: args
                .clusters
                .into_iter()
                .map(|(id, token)| (id, Secret::new(token)))
                .collect(),
            heartbeat_interval: args.heartbeat_interval,
            grpc_tls: None,
            max_frame_bytes: None,
            signer,
            frame_journal: None,
        })
    }
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevBackendError {
    #[error("--signing-key {0}")]
    SigningKey(String),
    #[error("the gRPC TLS certificate or key is unusable: {0}")]
    Tls(String),
    #[error(
        "cannot listen for {what} on {addr}: {source}; pick another address with --{what}-listen"
    )]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the frame journal {path}: {source}; give a path in a writable directory that exists")]
    Journal {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running backend. Dropping it stops the servers (abruptly);
/// [`DevBackendHandle::shutdown`] stops them gracefully.
#[derive(Debug)]
pub struct DevBackendHandle {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    grpc_tls: bool,
    state: Arc<DevBackendState>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl DevBackendHandle {
    /// The in-process API: register clusters, submit commands, read what arrived.
    pub fn state(&self) -> &Arc<DevBackendState> {
        &self.state
    }

    /// URL of the gRPC listener: `https://localhost:PORT` when it serves
    /// TLS (the test certificates name `localhost`), else `http://ADDR`.
    pub fn grpc_url(&self) -> String {
        if self.grpc_tls {
            format!("https://localhost:{}", self.grpc_addr.port())
        } else {
            format!("http://{}", self.grpc_addr)
        }
    }

    /// `http://` URL of the admin HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Ends open streams with UNAVAILABLE, stops both servers and waits
    /// (at most 5 s) for them.
    pub async fn shutdown(mut self) {
        self.state.stop();
        let _ = self.shutdown_tx.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for DevBackendHandle {
    /// Same as `shutdown` without waiting: streams end with UNAVAILABLE,
    /// new ones are refused, and the servers finish in the background.
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            self.state.stop();
            let _ = self.shutdown_tx.send(true);
        }
    }
}

/// Binds both listeners and serves until the handle is shut down or dropped.
pub async fn start(opts: DevBackendOptions) -> Result<DevBackendHandle, DevBackendError> {
    let journal = opts.frame_journal.as_deref();
    let state =
        DevBackendState::new(opts.bootstrap_tokens, opts.signer, journal).map_err(|source| {
            DevBackendError::Journal {
                path: opts.frame_journal.clone().unwrap_or_default(),
                source,
            }
        })?;
    let state = Arc::new(state);
    for (id, token) in opts.clusters {
        state.add_cluster(&id, token);
    }
    let grpc_listener = TcpListener::bind(opts.grpc_listen)
        .await
        .map_err(|source| DevBackendError::Bind {
            what: "grpc",
            addr: opts.grpc_listen,
            source,
        })?;
    let http_listener = TcpListener::bind(opts.http_listen)
        .await
        .map_err(|source| DevBackendError::Bind {
            what: "http",
            addr: opts.http_listen,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| DevBackendError::Bind {
            what: "grpc",
            addr: opts.grpc_listen,
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| DevBackendError::Bind {
            what: "http",
            addr: opts.http_listen,
            source,
        })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let service =
        grpc::RelayServiceImpl::new(state.clone(), opts.heartbeat_interval, opts.max_frame_bytes);
    let max_decoding = opts.max_frame_bytes.map_or(4 << 20, |max| max as usize);
    let grpc_tls = opts.grpc_tls.is_some();
    let mut server = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = &opts.grpc_tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|err| DevBackendError::Tls(err.to_string()))?;
    }
    // Nagle off on every accepted stream: without it small frames wait for
    // the peer's delayed ACK (~40 ms per round trip).
    let incoming =
        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc_task = tokio::spawn({
        let stop = stopped(shutdown_rx.clone());
        async move {
            let result = server
                .add_service(
                    RelayServiceServer::new(service)
                        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                        .max_decoding_message_size(max_decoding),
                )
                .serve_with_incoming_shutdown(incoming, stop)
                .await;
            if let Err(err) = result {
                tracing::error!("dev-backend gRPC server failed: {err}");
            }
        }
    });
    let router = admin::router(state.clone());
    let http_task = tokio::spawn({
        let stop = stopped(shutdown_rx);
        async move {
            if let Err(err) = axum::serve(http_listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!("dev-backend admin HTTP server failed: {err}");
            }
        }
    });
    Ok(DevBackendHandle {
        grpc_addr,
        http_addr,
        grpc_tls,
        state,
        shutdown_tx,
        tasks: vec![grpc_task, http_task],
    })
}

/// Runs `dev-backend` until Ctrl-C or SIGTERM.
pub async fn run(args: DevBackendArgs) -> anyhow::Result<()> {
    let handle = start(DevBackendOptions::try_from(args)?).await?;
    tracing::info!(
        grpc = %handle.grpc_addr, http = %handle.http_addr,
        "reference backend listening (in memory only, not a production backend)"
    );
    wait_for_signal().await;
    tracing::info!("shutting down the reference backend");
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
