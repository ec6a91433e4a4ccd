//! The relayer's HTTP endpoints on `health.listen`: `/health`, `/livez`,
//! `/readyz`, `/metrics`, `/debug/actors`. Served by axum, the same stack as
//! the OTLP/HTTP receiver (one HTTP server stack in the binary; axum because
//! tonic already brings it and hyper). Handlers ask the current HealthActor
//! through the directory, with a short timeout, so a stuck actor system
//! shows as a failing `/livez` rather than a hung probe.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::actors::directory::HealthInbox;
use crate::actors::messages::{Alive, GetActors, GetHealth, GetReadiness, RenderMetrics};
use crate::actors::Directory;

const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a graceful stop waits for requests in progress.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Routes {
    directory: Directory,
    debug_actors: bool,
}

fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": why })),
    )
        .into_response()
}

/// Asks the current HealthActor one question, within `ASK_TIMEOUT`.
async fn ask<M, F>(routes: &Routes, message: M, pick: F) -> Result<M::Result, &'static str>
where
    M: actix::Message + Send + 'static,
    M::Result: Send,
    F: FnOnce(&HealthInbox) -> &actix::Recipient<M>,
{
    let Some(inbox) = routes.directory.health() else {
        return Err("the HealthActor is not running");
    };
    match tokio::time::timeout(ASK_TIMEOUT, pick(&inbox).send(message)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err("the HealthActor is restarting"),
        Err(_) => Err("the actor system did not answer within 2 s"),
    }
}

/// `/health`'s query: `?connected=true` turns "the stream to the backend is
/// not connected" into 503 (the body is the same), for checks that must
/// fail while the relayer is up but cut off — `helm test` uses it.
#[derive(Debug, Default, serde::Deserialize)]
struct HealthQuery {
    #[serde(default)]
    connected: bool,
}

async fn health(
    State(routes): State<Routes>,
    axum::extract::Query(query): axum::extract::Query<HealthQuery>,
) -> Response {
    let body = match ask(&routes, GetHealth, |inbox| &inbox.health).await {
        Ok(body) => body,
        Err(why) => json!({
            "status": "unhealthy",
            "grpc": {"connected": false, "clusterId": null, "state": "Unknown", "lastError": why},
            "version": env!("CARGO_PKG_VERSION"),
        }),
    };
    let connected = body["grpc"]["connected"].as_bool().unwrap_or(false);
    let status = if query.connected && !connected {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

async fn livez(State(routes): State<Routes>) -> Response {
    match ask(&routes, Alive, |inbox| &inbox.alive).await {
        Ok(()) => "ok".into_response(),
        Err(why) => unavailable(why),
    }
}

async fn readyz(State(routes): State<Routes>) -> Response {
    match ask(&routes, GetReadiness, |inbox| &inbox.readiness).await {
        Ok(Ok(())) => "ready".into_response(),
        Ok(Err(why)) => unavailable(&why),
        Err(why) => unavailable(why),
    }
}

async fn metrics(State(routes): State<Routes>) -> Response {
    match ask(&routes, RenderMetrics, |inbox| &inbox.metrics).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(why) => unavailable(why),
    }
}

async fn actors(State(routes): State<Routes>) -> Response {
    if !routes.debug_actors {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "health.debug_actors is false"})),
        )
            .into_response();
    }
    match ask(&routes, GetActors, |inbox| &inbox.actors).await {
        Ok(body) => Json(body).into_response(),
        Err(why) => unavailable(why),
    }
}

/// The running HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Stops accepting; with `graceful`, waits up to 2 s for requests in
    /// progress.
    pub async fn stop(self, graceful: bool) {
        self.stop.cancel();
        let mut task = self.task;
        if graceful && tokio::time::timeout(STOP_GRACE, &mut task).await.is_ok() {
            return;
        }
        task.abort();
    }
}

/// Binds `listen` (so a bad address fails the start at once) and serves the
/// endpoints on the tokio runtime.
pub fn serve(
    listen: &str,
    directory: Directory,
    debug_actors: bool,
) -> std::io::Result<HttpServer> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/actors", get(actors))
        .with_state(Routes {
            directory,
            debug_actors,
        });
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %err, "the health endpoint server failed");
        }
    });
    Ok(HttpServer { addr, stop, task })
}
