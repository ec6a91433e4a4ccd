//! Fault switches (forbidden namespaces, failing the next requests, added
//! latency) and the log of recent requests. Plain state behind a lock; the
//! HTTP middleware consults it on every request.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;

use super::status::ApiError;

/// How many requests [`RequestLog`] keeps.
const REQUEST_LOG_CAP: usize = 1000;

/// One request as the simulator saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path without the query, e.g. `/apis/apps/v1/namespaces/default/deployments`.
    pub path: String,
    /// Raw query string, empty when there is none.
    pub query: String,
}

#[derive(Debug, Default)]
struct FaultState {
    forbidden: BTreeSet<String>,
    fail_next: u32,
    fail_code: u16,
    latency: Duration,
}

/// The fault switches; cheap to clone, all clones share state.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

/// Body of `POST /sim/faults`; every field is optional and they apply in
/// order: clear, forbid, allow, fail_next, latency.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// Reset every switch first.
    #[serde(default)]
    pub clear: bool,
    /// Namespace to answer 403 for.
    pub forbid_namespace: Option<String>,
    /// Namespace to stop forbidding.
    pub allow_namespace: Option<String>,
    /// `{"count": n, "code": 503}`.
    pub fail_next: Option<FailNext>,
    /// Added latency in milliseconds.
    pub latency_ms: Option<u64>,
}

/// The `fail_next` part of [`FaultRequest`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailNext {
    /// How many requests fail.
    pub count: u32,
    /// The HTTP code they fail with (default 503).
    #[serde(default = "default_fail_code")]
    pub code: u16,
}

fn default_fail_code() -> u16 {
    503
}

impl Faults {
    /// Every request in `namespace` answers 403 Forbidden.
    pub fn forbid_namespace(&self, namespace: &str) {
        self.state.lock().forbidden.insert(namespace.to_string());
    }

    /// Undoes [`Faults::forbid_namespace`].
    pub fn allow_namespace(&self, namespace: &str) {
        self.state.lock().forbidden.remove(namespace);
    }

    /// The next `count` requests answer `code` (e.g. 503) with a Status body.
    pub fn fail_next(&self, count: u32, code: u16) {
        let mut s = self.state.lock();
        s.fail_next = count;
        s.fail_code = code;
    }

    /// Adds `latency` to every request.
    pub fn latency(&self, latency: Duration) {
        self.state.lock().latency = latency;
    }

    /// Turns every switch off.
    pub fn clear(&self) {
        *self.state.lock() = FaultState::default();
    }

    /// Applies a `POST /sim/faults` body.
    pub fn apply(&self, req: &FaultRequest) {
        if req.clear {
            self.clear();
        }
        if let Some(ns) = &req.forbid_namespace {
            self.forbid_namespace(ns);
        }
        if let Some(ns) = &req.allow_namespace {
            self.allow_namespace(ns);
        }
        if let Some(f) = &req.fail_next {
            self.fail_next(f.count, f.code);
        }
        if let Some(ms) = req.latency_ms {
            self.latency(Duration::from_millis(ms));
        }
    }

    /// The current settings as JSON (for `GET /sim/faults`).
    pub fn describe(&self) -> serde_json::Value {
        let s = self.state.lock();
        serde_json::json!({
            "forbidden_namespaces": s.forbidden,
            "fail_next": {"count": s.fail_next, "code": s.fail_code},
            "latency_ms": s.latency.as_millis() as u64,
        })
    }

    /// Decides the fate of one request: the latency to add, and the error
    /// to answer instead of serving it (consuming one `fail_next`).
    pub fn check(&self, path: &str) -> (Duration, Option<ApiError>) {
        let mut s = self.state.lock();
        let latency = s.latency;
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return (latency, Some(ApiError::injected(s.fail_code)));
        }
        if let Some(ns) = namespace_of(path).filter(|ns| s.forbidden.contains(*ns)) {
            return (
                latency,
                Some(ApiError::forbidden(format!(
                    "access to namespace \"{ns}\" is forbidden (simulated RBAC: forbid_namespace)"
                ))),
            );
        }
        (latency, None)
    }
}

/// The namespace a request path addresses, if any
/// (`.../namespaces/{ns}` or `.../namespaces/{ns}/...`).
pub(crate) fn namespace_of(path: &str) -> Option<&str> {
    let mut parts = path.split('/').skip_while(|p| *p != "namespaces");
    parts.next()?;
    parts.next().filter(|ns| !ns.is_empty())
}

/// The most recent requests, oldest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestLog {
    entries: Arc<Mutex<VecDeque<RequestRecord>>>,
}

impl RequestLog {
    /// Records one request.
    pub(crate) fn record(&self, method: &str, path: &str, query: &str) {
        let mut e = self.entries.lock();
        if e.len() >= REQUEST_LOG_CAP {
            e.pop_front();
        }
        e.push_back(RequestRecord {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
        });
    }

    /// A copy of the recorded requests.
    pub(crate) fn snapshot(&self) -> Vec<RequestRecord> {
        self.entries.lock().iter().cloned().collect()
    }

    /// Forgets every recorded request.
    pub(crate) fn clear(&self) {
        self.entries.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches() {
        let f = Faults::default();
        assert_eq!(
            namespace_of("/api/v1/namespaces/team-a/pods"),
            Some("team-a")
        );
        assert_eq!(namespace_of("/api/v1/namespaces/team-a"), Some("team-a"));
        assert_eq!(namespace_of("/apis/apps/v1/deployments"), None);
        f.forbid_namespace("team-a");
        assert_eq!(
            f.check("/api/v1/namespaces/team-a/pods").1.unwrap().code,
            403
        );
        assert!(f.check("/api/v1/namespaces/team-b/pods").1.is_none());
        f.fail_next(2, 503);
        assert_eq!(f.check("/version").1.unwrap().code, 503);
        assert_eq!(f.check("/version").1.unwrap().code, 503);
        assert!(f.check("/version").1.is_none());
        f.apply(&serde_json::from_str(r#"{"clear": true, "latency_ms": 5}"#).unwrap());
        assert_eq!(
            f.check("/api/v1/namespaces/team-a/pods"),
            (Duration::from_millis(5), None)
        );
    }
}
