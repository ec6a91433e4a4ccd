//! Watches: `?watch=true` answered with a chunked stream of newline-
//! delimited `{"type": ..., "object": ...}` events, filtered by namespace
//! and selectors, with bookmarks, a timeout, and a 410 `ERROR` event when
//! the requested resourceVersion is older than the kept history.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::api::Params;
use super::resources::ResourceType;
use super::selector::Selector;
use super::status::ApiError;
use super::store::{EventType, WatchEvent, WatchStart};
use super::SimState;

/// How often an idle watch sends a BOOKMARK when bookmarks are allowed.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
/// Watch length when the client sets no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Which events one watch passes on.
struct Filter {
    resource: String,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn selects(&self, obj: &Value) -> bool {
        self.labels.matches_labels(obj) && self.fields.matches_fields(obj)
    }

    /// The event to send for `ev`, if any. An object that stops matching
    /// the selectors is reported DELETED, one that starts matching ADDED.
    fn render(&self, ev: &WatchEvent) -> Option<(EventType, Value)> {
        if ev.resource != self.resource
            || self
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != ev.namespace)
        {
            return None;
        }
        let now = self.selects(&ev.object);
        let before = ev.old.as_ref().map(|o| self.selects(o));
        match (ev.event_type, before, now) {
            (EventType::Modified, Some(true), false) => {
                Some((EventType::Deleted, ev.object.clone()))
            }
            (EventType::Modified, Some(false), true) => Some((EventType::Added, ev.object.clone())),
            (_, _, true) => Some((ev.event_type, ev.object.clone())),
            _ => None,
        }
    }
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn streaming(rx: mpsc::Receiver<Bytes>) -> Response {
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            ReceiverStream::new(rx).map(Ok::<Bytes, Infallible>),
        ))
        .expect("valid response")
}

/// Serves one watch request.
pub(crate) fn serve(
    state: Arc<SimState>,
    rt: &ResourceType,
    namespace: Option<String>,
    q: &Params,
) -> Result<Response, ApiError> {
    let (labels, fields) = q.selectors()?;
    let start = match q.get("resourceVersion") {
        None | Some("") | Some("0") => WatchStart::Initial,
        Some(rv) => WatchStart::After(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = match q.int("timeoutSeconds")? {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        _ => DEFAULT_TIMEOUT,
    };
    let bookmarks = q.get("allowWatchBookmarks") == Some("true");
    let filter = Filter {
        resource: rt.storage_key(),
        namespace,
        labels,
        fields,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let (backlog, live) = match state.store.watch(&filter.resource, start) {
        Ok(v) => v,
        Err(gone) => {
            // The real API answers 200 and then an ERROR event, which makes
            // clients relist.
            let _ = tx.try_send(line("ERROR", &gone.to_status()));
            return Ok(streaming(rx));
        }
    };
    let last_rv = match start {
        WatchStart::Initial => state.store.current_rv(),
        WatchStart::After(rv) => backlog.last().map_or(rv, |e| e.rv.max(rv)),
    };
    let bookmark_object = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {}});
    tokio::spawn(pump(
        state,
        filter,
        backlog,
        live,
        tx,
        last_rv,
        timeout,
        bookmarks.then_some(bookmark_object),
    ));
    Ok(streaming(rx))
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    state: Arc<SimState>,
    filter: Filter,
    backlog: Vec<Arc<WatchEvent>>,
    mut live: broadcast::Receiver<Arc<WatchEvent>>,
    tx: mpsc::Sender<Bytes>,
    mut last_rv: u64,
    timeout: Duration,
    bookmark: Option<Value>,
) {
    for ev in &backlog {
        if let Some((t, obj)) = filter.render(ev) {
            if tx.send(line(t.as_str(), &obj)).await.is_err() {
                return;
            }
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + BOOKMARK_INTERVAL,
        BOOKMARK_INTERVAL,
    );
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = state.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = ticks.tick(), if bookmark.is_some() => {
                let mut obj = bookmark.clone().unwrap_or_default();
                obj["metadata"]["resourceVersion"] = json!(last_rv.to_string());
                if tx.send(line("BOOKMARK", &obj)).await.is_err() {
                    return;
                }
            }
            received = live.recv() => match received {
                Ok(ev) => {
                    // The subscription starts where the backlog ends, so
                    // nothing repeats.
                    last_rv = last_rv.max(ev.rv);
                    if let Some((t, obj)) = filter.render(&ev) {
                        if tx.send(line(t.as_str(), &obj)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let gone = ApiError::gone("the watch fell behind the event stream; relist");
                    let _ = tx.send(line("ERROR", &gone.to_status())).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
