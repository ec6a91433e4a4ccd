//! The HTTP surface: discovery routes, `/sim/faults`, and one fallback that
//! parses Kubernetes resource paths and dispatches to [`super::api`] or
//! [`super::watch`]. A middleware applies the fault switches and records
//! every request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::api::{self, Params};
use super::discovery;
use super::faults::FaultRequest;
use super::resources::{ResourceType, Subresource};
use super::status::ApiError;
use super::{watch, SimState};

/// The router for one simulator.
pub(crate) fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(core_versions))
        .route("/apis", get(groups))
        .route("/sim/faults", get(faults_get).post(faults_post))
        .fallback(resources)
        .layer(middleware::from_fn_with_state(state.clone(), faults_layer))
        .with_state(state)
}

async fn faults_layer(State(state): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/sim/") {
        return next.run(req).await;
    }
    state.requests.record(
        req.method().as_str(),
        &path,
        req.uri().query().unwrap_or_default(),
    );
    let (latency, error) = state.faults.check(&path);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match error {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    }
}

async fn version(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(discovery::version(&state.options.kubernetes_version))
}

async fn core_versions(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(discovery::core_versions(&state.address()))
}

async fn groups(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(discovery::group_list(&state.registry))
}

async fn faults_get(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(state.faults.describe())
}

async fn faults_post(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultRequest>(&body) {
        Ok(req) => {
            state.faults.apply(&req);
            Json(state.faults.describe()).into_response()
        }
        Err(e) => ApiError::bad_request(format!(
            "invalid fault request: {e}; expected e.g. {{\"forbid_namespace\": \"ns\"}}, \
             {{\"fail_next\": {{\"count\": 2, \"code\": 503}}}}, {{\"latency_ms\": 100}} or {{\"clear\": true}}"
        ))
        .into_response(),
    }
}

/// What a resource path addresses.
enum Target {
    Collection {
        rt: ResourceType,
        ns: Option<String>,
    },
    Object {
        rt: ResourceType,
        ns: String,
        name: String,
        sub: Option<String>,
    },
}

fn parse_target(
    state: &SimState,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Target, ApiError> {
    let lookup = |plural: &str| state.registry.lookup(group, version, plural);
    if let ["namespaces", ns, plural, tail @ ..] = rest {
        if let Some(rt) = lookup(plural).filter(|rt| rt.namespaced) {
            let ns = ns.to_string();
            return match tail {
                [] => Ok(Target::Collection { rt, ns: Some(ns) }),
                [name] => Ok(Target::Object {
                    rt,
                    ns,
                    name: name.to_string(),
                    sub: None,
                }),
                [name, sub] => Ok(Target::Object {
                    rt,
                    ns,
                    name: name.to_string(),
                    sub: Some(sub.to_string()),
                }),
                _ => Err(ApiError::no_route()),
            };
        }
    }
    let [plural, tail @ ..] = rest else {
        return Err(ApiError::no_route());
    };
    let rt = lookup(plural).ok_or_else(ApiError::no_route)?;
    match (rt.namespaced, tail) {
        (_, []) => Ok(Target::Collection { rt, ns: None }),
        (false, [name]) => Ok(Target::Object {
            rt,
            ns: String::new(),
            name: name.to_string(),
            sub: None,
        }),
        (false, [name, sub]) => Ok(Target::Object {
            rt,
            ns: String::new(),
            name: name.to_string(),
            sub: Some(sub.to_string()),
        }),
        _ => Err(ApiError::no_route()),
    }
}

fn json_response(code: u16, value: Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        Json(value),
    )
        .into_response()
}

async fn resources(
    State(state): State<Arc<SimState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch(state, &method, &uri, &headers, &body) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn dispatch(
    state: Arc<SimState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group] => {
            return discovery::group(&state.registry, group)
                .map(|v| json_response(200, v))
                .ok_or_else(ApiError::no_route)
        }
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return discovery::resource_list(&state.registry, group, version)
            .map(|v| json_response(200, v))
            .ok_or_else(ApiError::no_route);
    }
    let q = Params(
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
            .map(|q| q.0)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?,
    );
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let st = state.as_ref();
    match parse_target(st, group, version, rest)? {
        Target::Collection { rt, ns } => match *method {
            Method::GET if q.watch() => watch::serve(state.clone(), &rt, ns, &q),
            Method::GET => Ok(json_response(200, api::list(st, &rt, ns.as_deref(), &q)?)),
            Method::POST => match (&ns, rt.namespaced) {
                (Some(ns), true) => Ok(json_response(201, api::create(st, &rt, ns, body, &q)?)),
                (None, false) => Ok(json_response(201, api::create(st, &rt, "", body, &q)?)),
                _ => Err(ApiError::method_not_allowed(format!(
                    "POST is not supported on {} without a namespace",
                    rt.group_resource()
                ))),
            },
            Method::DELETE => Ok(json_response(
                200,
                api::delete_collection(st, &rt, ns.as_deref(), body, &q)?,
            )),
            _ => Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on a collection"
            ))),
        },
        Target::Object {
            rt,
            ns,
            name,
            sub: None,
        } => match *method {
            Method::GET => Ok(json_response(200, api::get(st, &rt, &ns, &name)?)),
            Method::PUT => Ok(json_response(
                200,
                api::replace(st, &rt, &ns, &name, body, &q)?,
            )),
            Method::PATCH => {
                let (code, obj) = api::patch(st, &rt, &ns, &name, content_type, body, &q)?;
                Ok(json_response(code, obj))
            }
            Method::DELETE => Ok(json_response(
                200,
                api::delete(st, &rt, &ns, &name, body, &q)?,
            )),
            _ => Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on an object"
            ))),
        },
        Target::Object {
            rt,
            ns,
            name,
            sub: Some(sub),
        } => {
            let patch_type = (*method == Method::PATCH).then_some(content_type);
            match (sub.as_str(), method.clone()) {
                ("status", Method::GET) if rt.has(Subresource::Status) => {
                    Ok(json_response(200, api::get(st, &rt, &ns, &name)?))
                }
                ("status", Method::PUT | Method::PATCH) if rt.has(Subresource::Status) => {
                    Ok(json_response(
                        200,
                        api::write_status(st, &rt, &ns, &name, patch_type, body, &q)?,
                    ))
                }
                ("scale", Method::GET) if rt.has(Subresource::Scale) => Ok(json_response(
                    200,
                    api::scale_of(&api::get(st, &rt, &ns, &name)?),
                )),
                ("scale", Method::PUT | Method::PATCH) if rt.has(Subresource::Scale) => {
                    Ok(json_response(
                        200,
                        api::write_scale(st, &rt, &ns, &name, patch_type, body, &q)?,
                    ))
                }
                ("log", Method::GET) if rt.has(Subresource::Log) => {
                    let text = api::logs(st, &rt, &ns, &name, &q)?;
                    Ok(Response::builder()
                        .header(CONTENT_TYPE, "text/plain")
                        .body(Body::from(text))
                        .expect("valid response"))
                }
                _ => Err(ApiError::no_route()),
            }
        }
    }
}
