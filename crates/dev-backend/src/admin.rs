//! The admin HTTP API (axum), JSON in and out, exactly as `dev-backend.md`
//! lists it, plus test/debug endpoints that are NOT part of the contract:
//!
//! - `GET /api/v1/clusters/{id}/frames` → `{"frames": [{"incarnation", "seq",
//!   "kind": "result|event|telemetry", "command_id"?}], "duplicates": n}`:
//!   reliable frames in arrival order (duplicates excluded, counted).
//! - `GET|POST /api/v1/debug/faults` with `{"withhold_acks": bool, "silent":
//!   bool, "reject_all": "UNAUTHENTICATED"|"UNAVAILABLE"|"RESOURCE_EXHAUSTED"|null,
//!   "end_streams": bool}`; a partial body updates only the given fields;
//!   `end_streams` is one-shot (ends every open stream with UNAVAILABLE).
//! - `GET /api/v1/debug/stats` → `{"connect_attempts", "sessions_started", ...}`;
//!   every `Connect` call counts, accepted or not.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::hub::{ClusterError, CommandView, DevBackendState, FaultsUpdate, RegisterError};
use consonant_proto as proto;

type AppState = Arc<DevBackendState>;

/// The admin router over the shared state.
pub(crate) fn router(state: Arc<DevBackendState>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/api/v1/clusters", post(register).get(list_clusters))
        .route(
            "/api/v1/clusters/{cluster_id}",
            axum::routing::delete(revoke),
        )
        .route(
            "/api/v1/clusters/{cluster_id}/commands",
            post(submit_command),
        )
        .route(
            "/api/v1/clusters/{cluster_id}/commands/{command_id}",
            get(get_command),
        )
        .route("/api/v1/clusters/{cluster_id}/events", get(events))
        .route("/api/v1/clusters/{cluster_id}/telemetry", get(telemetry))
        .route("/api/v1/clusters/{cluster_id}/drain", post(drain))
        .route("/api/v1/clusters/{cluster_id}/rotate", post(rotate))
        .route("/api/v1/clusters/{cluster_id}/frames", get(frames))
        .route("/api/v1/debug/faults", post(set_faults).get(get_faults))
        .route("/api/v1/debug/stats", get(stats))
        .with_state(state)
}

/// An error answer: `{"error": "..."}` with a status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<ClusterError> for ApiError {
    fn from(err: ClusterError) -> Self {
        let status = match err {
            ClusterError::Unknown(_) => StatusCode::NOT_FOUND,
            ClusterError::Revoked(_) => StatusCode::CONFLICT,
        };
        ApiError(status, err.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {err}")))
}

/// Rejects query strings that do not parse, with the reason.
fn query<T: serde::de::DeserializeOwned + Default>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|err| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid query string: {}", err.body_text()),
        )
    })
}

#[derive(Deserialize)]
struct RegisterBody {
    name: Option<String>,
}

async fn register(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // The token is checked before the body so that a wrong token never
    // learns anything about names.
    let body: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            if bearer.is_none_or(str::is_empty) {
                return Err(ApiError(
                    StatusCode::UNAUTHORIZED,
                    RegisterError::WrongBootstrapToken.to_string(),
                ));
            }
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {err}"),
            ));
        }
    };
    let name = serde_json::from_value::<RegisterBody>(body)
        .ok()
        .and_then(|b| b.name)
        .unwrap_or_default();
    match state.register(Some(bearer), &name) {
        Ok((cluster_id, token)) => Ok((
            StatusCode::CREATED,
            Json(json!({"cluster_id": cluster_id, "cluster_token": token.expose()})),
        )
            .into_response()),
        Err(err) => {
            let status = match err {
                RegisterError::WrongBootstrapToken => StatusCode::UNAUTHORIZED,
                RegisterError::BootstrapTokenUsed => StatusCode::FORBIDDEN,
                RegisterError::InvalidName(_) => StatusCode::UNPROCESSABLE_ENTITY,
                RegisterError::NameTaken(_) => StatusCode::CONFLICT,
            };
            Err(ApiError(status, err.to_string()))
        }
    }
}

async fn list_clusters(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.list_clusters()))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SubmitQuery {
    wait: bool,
    timeout_ms: Option<u64>,
}

async fn submit_command(
    State(state): State<AppState>,
    Path(cluster_id): Path<String>,
    q: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> ApiResult {
    let q = query(q)?;
    state.cluster(&cluster_id)?;
    let value: Value = parse_json(&body)?;
    if !value.is_object() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the body must be one Command as a JSON object, e.g. {\"ping\": {}}".into(),
        ));
    }
    let command: proto::Command = serde_json::from_value(value).map_err(|err| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not a Command in the proto3 JSON mapping: {err}"),
        )
    })?;
    if !q.wait {
        let command_id = state.submit(&cluster_id, command, None)?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"command_id": command_id})),
        )
            .into_response());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let command_id = state.submit(&cluster_id, command, Some(tx))?;
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000));
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(result)) => Ok((StatusCode::OK, Json(result_json(&result))).into_response()),
        Ok(Err(_)) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("command {command_id} was dropped before it finished"))),
        Err(_) => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "command {command_id} has no result after {} ms; it stays queued, poll GET /api/v1/clusters/{cluster_id}/commands/{command_id}",
                timeout.as_millis()
            ),
        )),
    }
}

/// A `CommandResult` in proto3 JSON (`commandId`, `status`, `error`,
/// `outputJson`, ...) plus `output`: `output_json` parsed (null when empty,
/// the text when it is not JSON), and `command_id` as an alias.
pub(crate) fn result_json(result: &proto::CommandResult) -> Value {
    let mut value = serde_json::to_value(result).unwrap_or_else(|_| json!({}));
    let output = if result.output_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&result.output_json).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&result.output_json).into_owned())
        })
    };
    if let Value::Object(map) = &mut value {
        map.insert("output".into(), output);
        // Convenience alias matching the 202 answer's `command_id`.
        map.insert(
            "command_id".into(),
            Value::String(result.command_id.clone()),
        );
    }
    value
}

async fn get_command(
    State(state): State<AppState>,
    Path((cluster_id, command_id)): Path<(String, String)>,
) -> ApiResult {
    match state.command(&cluster_id, &command_id)? {
        Some(view) => Ok(Json(command_json(&view)).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("command {command_id:?} is unknown for cluster {cluster_id:?} (or was forgotten; the newest 100000 are kept)"),
        )),
    }
}

fn command_json(view: &CommandView) -> Value {
    json!({
        "command_id": view.command_id,
        "action": view.action,
        "state": view.state,
        "attempts": view.attempts,
        "submitted_at": view.submitted_at,
        "result": view.result.as_ref().map(result_json),
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EventsQuery {
    limit: Option<usize>,
}

async fn events(
    State(state): State<AppState>,
    Path(cluster_id): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let limit = query(q)?.limit.unwrap_or(100);
    let events: Vec<Value> = state
        .events(&cluster_id, limit)?
        .iter()
        .map(|event| {
            let mut value = serde_json::to_value(event).unwrap_or_else(|_| json!({}));
            if let (Value::Object(map), Ok(payload)) = (
                &mut value,
                serde_json::from_slice::<Value>(&event.payload_json),
            ) {
                map.insert("payload".into(), payload);
            }
            value
        })
        .collect();
    Ok(Json(Value::Array(events)).into_response())
}

async fn telemetry(State(state): State<AppState>, Path(cluster_id): Path<String>) -> ApiResult {
    Ok(Json(state.telemetry(&cluster_id)?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DrainQuery {
    reconnect_after_ms: Option<u32>,
}

async fn drain(
    State(state): State<AppState>,
    Path(cluster_id): Path<String>,
    q: Result<Query<DrainQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let reconnect_after_ms = query(q)?.reconnect_after_ms.unwrap_or(1000);
    let sessions = state.drain(&cluster_id, reconnect_after_ms)?;
    tracing::info!(cluster_id, sessions, reconnect_after_ms, "drain sent");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"sessions": sessions, "reconnect_after_ms": reconnect_after_ms})),
    )
        .into_response())
}

async fn rotate(State(state): State<AppState>, Path(cluster_id): Path<String>) -> ApiResult {
    let (token, sessions) = state.rotate(&cluster_id)?;
    Ok(Json(json!({"sessions": sessions, "cluster_token": token.expose()})).into_response())
}

async fn revoke(State(state): State<AppState>, Path(cluster_id): Path<String>) -> ApiResult {
    let ended = state.revoke(&cluster_id)?;
    Ok(
        Json(json!({"cluster_id": cluster_id, "revoked": true, "sessions_ended": ended}))
            .into_response(),
    )
}

async fn frames(State(state): State<AppState>, Path(cluster_id): Path<String>) -> ApiResult {
    Ok(Json(state.frames(&cluster_id)?).into_response())
}

async fn set_faults(State(state): State<AppState>, body: Bytes) -> ApiResult {
    let update: FaultsUpdate = if body.iter().all(u8::is_ascii_whitespace) {
        FaultsUpdate::default()
    } else {
        parse_json(&body)?
    };
    Ok(Json(state.set_faults(update)).into_response())
}

async fn get_faults(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.faults()))
}

async fn stats(State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.stats()))
}
