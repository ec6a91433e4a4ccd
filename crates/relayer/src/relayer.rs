//! Assembling and running one relayer: configuration → dialer, credentials,
//! shared context → the supervision tree and the HTTP endpoints; then
//! waiting for SIGTERM/Ctrl-C (graceful stop, exit 0) or for the root
//! supervisor to give up (exit 70, so Kubernetes restarts the pod).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use crate::actors::tree::relayer_tree;
use crate::actors::RelayContext;
use crate::config::{ConfigError, RelayerConfig};
use crate::connection::channel::{DialError, Dialer, Endpoints};
use crate::credentials::{CredentialStore, WatchHandle};
use crate::egress::EgressRoute;
use crate::supervisor::{Escalation, Stop, Supervisor};

/// Exit code when the supervision tree gives up (EX_SOFTWARE).
pub const EXIT_ESCALATED: i32 = 70;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    #[error("invalid [commands] configuration: {0}")]
    Commands(String),
    #[error("cannot listen on health.listen {listen}: {source}; pick a free address or port")]
    Listen {
        listen: String,
        source: std::io::Error,
    },
}

/// A started relayer inside the current actix system.
pub struct RunningRelayer {
    pub rc: Arc<RelayContext>,
    pub root: Addr<Supervisor>,
    pub http_addr: SocketAddr,
    http: crate::http::HttpServer,
    _watch: Option<WatchHandle>,
}

impl RunningRelayer {
    /// Starts the tree and the HTTP server on the current actix arbiter.
    pub fn start(config: RelayerConfig, on_escalate: Escalation) -> Result<Self, StartError> {
        let route = EgressRoute::from_config(&config.backend.proxy)?;
        let dialers = config
            .backend
            .grpc_targets()?
            .iter()
            .map(|target| {
                Dialer::new(
                    &target.uri,
                    target.tls,
                    &config.backend,
                    &config.connection,
                    &route,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        for dialer in &dialers {
            match dialer.proxy() {
                Some(proxy) => {
                    tracing::info!(endpoint = dialer.uri(), %proxy, source = route.source(), "the backend is reached through an HTTP CONNECT proxy")
                }
                None if route.has_proxy() => tracing::info!(
                    endpoint = dialer.uri(),
                    "the backend is reached directly (NO_PROXY)"
                ),
                None => {}
            }
        }
        let endpoints = Endpoints::new(dialers);
        let credentials = Arc::new(CredentialStore::new(&config.credentials));
        match credentials.load() {
            Ok(loaded) => {
                tracing::info!(cluster_id = %loaded.cluster_id, "cluster credentials loaded")
            }
            Err(err) => {
                tracing::error!(error = %err, "cluster credentials not available yet; will retry before every dial")
            }
        }
        let watch = match credentials.watch() {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::warn!(error = %err, "credential files are not watched; they are still re-read before every dial");
                None
            }
        };
        let listen = config.health.listen.clone();
        let debug_actors = config.health.debug_actors;
        let rc = Arc::new(
            RelayContext::new(config, endpoints, credentials).map_err(StartError::Commands)?,
        );
        if let Some(warning) = &rc.insecure_warning {
            tracing::warn!("{warning}");
        }
        let root = Supervisor::start_root(relayer_tree(&rc), rc.board.clone(), on_escalate);
        let http = crate::http::serve(&listen, rc.directory.clone(), debug_actors)
            .map_err(|source| StartError::Listen { listen, source })?;
        let http_addr = http.addr;
        tracing::info!(
            version = rc.identity.version,
            incarnation = %rc.identity.incarnation,
            instance_id = %rc.identity.instance_id,
            backend = %rc.endpoints.current().uri(),
            endpoints = rc.endpoints.len(),
            health = %http_addr,
            "relayer started"
        );
        Ok(Self {
            rc,
            root,
            http_addr,
            http,
            _watch: watch,
        })
    }

    /// Stops the tree (the stream closes cleanly) and the HTTP server.
    pub async fn shutdown(self) {
        self.root.do_send(Stop);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.root.connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.http.stop(true).await;
    }
}

/// Runs a relayer until SIGTERM/Ctrl-C or escalation; returns the exit code.
pub async fn run_until_signal(config: RelayerConfig) -> Result<i32, StartError> {
    let (escalated_tx, escalated_rx) = tokio::sync::oneshot::channel::<String>();
    let escalated_tx = Rc::new(RefCell::new(Some(escalated_tx)));
    let on_escalate: Escalation = Rc::new(move |reason: &str| {
        if let Some(tx) = escalated_tx.borrow_mut().take() {
            let _ = tx.send(reason.to_string());
        }
    });
    let relayer = RunningRelayer::start(config, on_escalate)?;
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutdown requested; closing the stream");
            relayer.shutdown().await;
            tracing::info!("stopped");
            Ok(0)
        }
        reason = escalated_rx => {
            let reason = reason.unwrap_or_else(|_| "root supervisor stopped".into());
            tracing::error!(%reason, exit_code = EXIT_ESCALATED, "supervision tree gave up; exiting so Kubernetes restarts the pod");
            relayer.http.stop(false).await;
            Ok(EXIT_ESCALATED)
        }
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The runtime every command runs on: actix's system arbiter on the main
/// thread for the actors, tokio's multi-thread pool for sockets and sessions.
///
/// The pool has **one** worker unless `TOKIO_WORKER_THREADS` (tokio's own
/// variable) says otherwise. The relayer's work is hand-offs between
/// sockets, the outbox and the actors; with a worker per core, each OTLP
/// request or command woke a parked worker on the other core (a futex wake
/// and a context switch, the largest item in its profile). One worker
/// spends a third less CPU per span and a tenth less per command, at the
/// same or better throughput (benches/README.md, issue 16). What takes CPU
/// on it is bounded per request or command (gzip and splitting up to
/// `telemetry.max_request_bytes`, a signature check ≈ 40 µs); Kubernetes
/// calls wait on the API server, and manifests are validated on the
/// blocking pool.
pub fn system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            builder.worker_threads(1);
        }
        builder
            .enable_all()
            .thread_name("relayer-io")
            .build()
            .expect("building the tokio runtime needs only memory and threads")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several relayers start and stop in one process (tests, benches, the
    /// demo): once stopped, nothing keeps the shared context alive — no
    /// reference cycle through the telemetry sink, the directory or a task.
    #[actix_rt::test]
    async fn a_stopped_relayer_frees_its_context() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("clusterId"), "cls_unit").unwrap();
        std::fs::write(dir.path().join("clusterToken"), "unit-token-unit-token").unwrap();
        let mut config = RelayerConfig::default();
        config.cluster.name = "unit".into();
        // Nothing listens there: the connection keeps backing off.
        config.backend.url = "http://127.0.0.1:9".into();
        config.credentials.cluster_id_file = dir.path().join("clusterId");
        config.credentials.cluster_token_file = dir.path().join("clusterToken");
        config.kubernetes.enabled = false;
        config.health.listen = "127.0.0.1:0".into();
        config.telemetry.otlp_grpc_listen = "127.0.0.1:0".into();
        config.telemetry.otlp_http_listen = "127.0.0.1:0".into();
        let relayer = RunningRelayer::start(config, Rc::new(|_: &str| {})).unwrap();
        let context = Arc::downgrade(&relayer.rc);
        // Let every actor start and the receivers bind.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(Arc::strong_count(&relayer.rc) > 1, "the actors share it");
        relayer.shutdown().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while context.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            context.strong_count(),
            0,
            "something still holds the RelayContext after shutdown"
        );
    }
}
