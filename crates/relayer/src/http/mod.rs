//! The relayer's HTTP endpoints on `health.listen` (actix-web): `/health`,
//! `/livez`, `/readyz`, `/metrics`, `/debug/actors`. Handlers ask the
//! current HealthActor through the directory, with a short timeout, so a
//! stuck actor system shows as a failing `/livez` rather than a hung probe.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};

use crate::actors::health_actor::{Alive, GetActors, GetHealth, GetReadiness, RenderMetrics};
use crate::actors::Directory;

const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Routes {
    directory: Directory,
    debug_actors: bool,
}

fn unavailable(why: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": why }))
}

macro_rules! ask {
    ($routes:expr, $msg:expr) => {{
        match $routes.directory.health() {
            None => Err("the HealthActor is not running"),
            Some(health) => match tokio::time::timeout(ASK_TIMEOUT, health.send($msg)).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(_)) => Err("the HealthActor is restarting"),
                Err(_) => Err("the actor system did not answer within 2 s"),
            },
        }
    }};
}

async fn health(routes: web::Data<Routes>) -> HttpResponse {
    match ask!(routes, GetHealth) {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(why) => HttpResponse::Ok().json(serde_json::json!({
            "status": "unhealthy",
            "grpc": {"connected": false, "clusterId": null, "state": "Unknown", "lastError": why},
            "version": env!("CARGO_PKG_VERSION"),
        })),
    }
}

async fn livez(routes: web::Data<Routes>) -> HttpResponse {
    match ask!(routes, Alive) {
        Ok(()) => HttpResponse::Ok().body("ok"),
        Err(why) => unavailable(why),
    }
}

async fn readyz(routes: web::Data<Routes>) -> HttpResponse {
    match ask!(routes, GetReadiness) {
        Ok(Ok(())) => HttpResponse::Ok().body("ready"),
        Ok(Err(why)) => unavailable(&why),
        Err(why) => unavailable(why),
    }
}

async fn metrics(routes: web::Data<Routes>) -> HttpResponse {
    match ask!(routes, RenderMetrics) {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(why) => unavailable(why),
    }
}

async fn debug_actors_route(routes: web::Data<Routes>) -> HttpResponse {
    if !routes.debug_actors {
        return HttpResponse::NotFound()
            .json(serde_json::json!({"error": "health.debug_actors is false"}));
    }
    match ask!(routes, GetActors) {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(why) => unavailable(why),
    }
}

/// Binds `listen` and returns the server (to spawn) and the bound address.
pub fn serve(
    listen: &str,
    directory: Directory,
    debug_actors: bool,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let routes = web::Data::new(Routes {
        directory,
        debug_actors,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(routes.clone())
            .route("/health", web::get().to(health))
            .route("/livez", web::get().to(livez))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .route("/debug/actors", web::get().to(debug_actors_route))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no address bound"))?;
    Ok((server.run(), addr))
}
