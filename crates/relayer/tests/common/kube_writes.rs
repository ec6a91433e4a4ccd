//! The real API server's writes per command. A rollout restart writes its
//! own command id into the pod template (`consonant.xyz/restartedAt`), so
//! each write names the command that made it; two witnesses count them:
//!
//! - the audit log ([`restart_writes`]): the test environment audits
//!   patches of Deployments at Request level (`scripts/kube-testenv`), so
//!   each patch the API server answered 2xx is there with its body. A patch
//!   the API server applied but answered otherwise (its own request timeout
//!   under load, a client that went away) is not counted there;
//! - the object's history ([`SpecHistory`]): a watch the test keeps on the
//!   Deployment from its creation records every change of its spec (each a
//!   new `generation`) with the restart id it carried — what took effect,
//!   whatever the answer was.
//!
//! The fault scenarios (issue 17) check from there that no rollout restart
//! took effect twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use consonant_kube_testenv::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;

use consonant_relayer::kube::actions::RESTART_ANNOTATION;

/// The audit log's patches of the Deployment `namespace/name` itself (not
/// a subresource), whatever their answer.
fn patches(plane: &ControlPlane, namespace: &str, name: &str) -> Vec<serde_json::Value> {
    plane
        .audit_events()
        .into_iter()
        .filter(|event| {
            let object = &event["objectRef"];
            event["verb"] == "patch"
                && event["stage"] == "ResponseComplete"
                && object["resource"] == "deployments"
                && object["namespace"] == namespace
                && object["name"] == name
                && object["subresource"].is_null()
        })
        .collect()
}

/// The restart command id a patch wrote (`""`: none).
fn restart_id(patch: &serde_json::Value) -> &str {
    patch["requestObject"]["spec"]["template"]["metadata"]["annotations"][RESTART_ANNOTATION]
        .as_str()
        .unwrap_or_default()
}

/// Patches of the Deployment `namespace/name` answered 2xx, counted by the
/// restart command id each one wrote; a patch that wrote no restart
/// annotation counts under `""`.
pub(crate) fn restart_writes(
    plane: &ControlPlane,
    namespace: &str,
    name: &str,
) -> HashMap<String, usize> {
    let mut writes = HashMap::new();
    for patch in patches(plane, namespace, name) {
        if patch["responseStatus"]["code"]
            .as_u64()
            .is_some_and(|code| code < 300)
        {
            *writes.entry(restart_id(&patch).to_string()).or_insert(0) += 1;
        }
    }
    writes
}

/// No restart took effect twice, and each one that succeeded took effect:
/// every id in `ids` was written at most once, every id in `succeeded`
/// exactly once (by this run of it or an earlier one whose result was
/// lost), and nothing else was written. Returns the number of writes.
pub(crate) fn check_restarts_once(
    writes: &HashMap<String, usize>,
    ids: &[String],
    succeeded: &HashSet<String>,
) -> Result<usize, String> {
    let sent: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let twice: Vec<_> = writes.iter().filter(|(_, n)| **n > 1).collect();
    if !twice.is_empty() {
        return Err(format!("restarts written more than once: {twice:?}"));
    }
    let unknown: Vec<_> = writes
        .keys()
        .filter(|id| !sent.contains(id.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "writes to the Deployment by no restart of this test: {unknown:?}"
        ));
    }
    let unwritten: Vec<_> = succeeded
        .iter()
        .filter(|id| !writes.contains_key(*id))
        .collect();
    if !unwritten.is_empty() {
        return Err(format!(
            "restarts answered SUCCEEDED that the API server never saw written: {unwritten:?}"
        ));
    }
    Ok(writes.values().sum())
}

/// Every change of one Deployment's spec since the test created it, from a
/// watch the test keeps open (resumed from the last resourceVersion when
/// the server ends it): `(generation, restart id it carried)`, one per
/// generation. A generation seen to skip, or a watch that can no longer
/// resume (410), is a gap: the history then cannot attribute every change,
/// and [`SpecHistory::applied`] says so instead of guessing.
pub(crate) struct SpecHistory {
    from: i64,
    changes: Arc<Mutex<Vec<(i64, String)>>>,
    gaps: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SpecHistory {
    /// Follows `created` (as the create call returned it) from its
    /// resourceVersion on.
    pub(crate) fn follow(client: kube::Client, created: &Deployment) -> Self {
        use futures::StreamExt;
        use kube::api::{WatchEvent, WatchParams};
        let namespace = created.metadata.namespace.clone().unwrap_or_default();
        let name = created.metadata.name.clone().unwrap_or_default();
        let mut version = created
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let mut generation = created.metadata.generation.unwrap_or_default();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let gaps = Arc::new(Mutex::new(Vec::new()));
        let (seen, missed) = (changes.clone(), gaps.clone());
        let task = tokio::spawn(async move {
            let api: kube::Api<Deployment> = kube::Api::namespaced(client, &namespace);
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(290);
            loop {
                let Ok(stream) = api.watch(&params, &version).await else {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                };
                let mut stream = stream.boxed();
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Added(d) | WatchEvent::Modified(d)) => {
                            version = d.metadata.resource_version.clone().unwrap_or_default();
                            let now = d.metadata.generation.unwrap_or_default();
                            if now > generation {
                                if now != generation + 1 {
                                    missed
                                        .lock()
                                        .unwrap()
                                        .push(format!("generation {generation} → {now}"));
                                }
                                let id = d
                                    .spec
                                    .as_ref()
                                    .and_then(|spec| spec.template.metadata.as_ref())
                                    .and_then(|meta| meta.annotations.as_ref())
                                    .and_then(|a| a.get(RESTART_ANNOTATION))
                                    .cloned()
                                    .unwrap_or_default();
                                seen.lock().unwrap().push((now, id));
                                generation = now;
                            }
                        }
                        Ok(WatchEvent::Bookmark(b)) => version = b.metadata.resource_version,
                        Ok(WatchEvent::Deleted(_)) => return,
                        Ok(WatchEvent::Error(e)) => {
                            if e.code == 410 {
                                missed
                                    .lock()
                                    .unwrap()
                                    .push(format!("watch expired at {version}: {}", e.message));
                                return;
                            }
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        });
        Self {
            from: created.metadata.generation.unwrap_or_default(),
            changes,
            gaps,
            task,
        }
    }

    /// Times the spec changed to each restart id (`""`: a change that
    /// carried none), once `settled` changes were seen — the generation the
    /// test read at the end — or an error naming the gap.
    pub(crate) async fn applied(&self, settled: i64) -> Result<HashMap<String, usize>, String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(gap) = self.gaps.lock().unwrap().first() {
                return Err(format!("the Deployment's history has a gap: {gap}"));
            }
            let changes = self.changes.lock().unwrap().clone();
            if changes.last().map_or(self.from, |(g, _)| *g) >= settled {
                let mut applied = HashMap::new();
                for (_, id) in changes {
                    *applied.entry(id).or_insert(0) += 1;
                }
                return Ok(applied);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "the watch saw generation {:?} of {settled} after 30 s",
                    changes.last()
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl SpecHistory {
    /// The changes as seen: `(generation, restart id)`, for a failure's
    /// message.
    pub(crate) fn changes(&self) -> Vec<(i64, String)> {
        self.changes.lock().unwrap().clone()
    }
}

/// The audit log's patches of `namespace/name` that wrote restart `id`,
/// whatever their answer: time, code, user agent (for a failure's message).
pub(crate) fn audit_of_restart(
    plane: &ControlPlane,
    namespace: &str,
    name: &str,
    id: &str,
) -> Vec<String> {
    patches(plane, namespace, name)
        .iter()
        .filter(|patch| restart_id(patch) == id)
        .map(|patch| {
            format!(
                "{} {} {}",
                patch["requestReceivedTimestamp"],
                patch["responseStatus"]["code"],
                patch["userAgent"]
            )
        })
        .collect()
}

impl Drop for SpecHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}
