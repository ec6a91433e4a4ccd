//! A small workload controller: Deployments and StatefulSets get
//! `spec.replicas` Pods named `<name>-<template hash>-<n>`, DaemonSets one
//! Pod per node, Jobs get one Pod
//! that completes; Pods turn Ready after `SimOptions::ready_delay`; a changed
//! pod template replaces every Pod; owner status (replicas, readyReplicas,
//! conditions, ...) follows the Pods. It reacts to store events and writes
//! through the store directly, so fault switches never affect it.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;

use super::resources::ResourceType;
use super::store::{now_rfc3339, EventType, WatchEvent};
use super::SimState;

/// Workload kinds the controller owns Pods for, by storage key.
const WORKLOADS: [&str; 4] = [
    "apps/deployments",
    "apps/statefulsets",
    "apps/daemonsets",
    "batch/jobs",
];

/// Runs until the simulator shuts down.
pub(crate) async fn run(state: Arc<SimState>) {
    let mut events = state.store.subscribe();
    resync(&state);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            received = events.recv() => match received {
                Ok(ev) => handle(&state, &ev),
                Err(RecvError::Lagged(_)) => resync(&state),
                Err(RecvError::Closed) => return,
            }
        }
    }
}

fn pods(state: &SimState) -> ResourceType {
    state
        .registry
        .lookup("", "v1", "pods")
        .expect("pods registered")
}

/// Reconciles every workload and schedules every pending Pod.
fn resync(state: &Arc<SimState>) {
    for key in WORKLOADS {
        if let Some(rt) = state.type_for_key(key) {
            for obj in state.store.list(&rt, None).0 {
                reconcile(
                    state,
                    &rt,
                    &meta_str(&obj, "namespace"),
                    &meta_str(&obj, "name"),
                );
            }
        }
    }
    for pod in state.store.list(&pods(state), None).0 {
        if is_pending(&pod) {
            schedule_ready(state, &pod);
        }
    }
}

fn handle(state: &Arc<SimState>, ev: &WatchEvent) {
    if WORKLOADS.contains(&ev.resource.as_str()) {
        if ev.event_type != EventType::Deleted {
            if let Some(rt) = state.type_for_key(&ev.resource) {
                reconcile(state, &rt, &ev.namespace, &meta_str(&ev.object, "name"));
            }
        }
        return;
    }
    if ev.resource != "/pods" {
        return;
    }
    if ev.event_type == EventType::Added && is_pending(&ev.object) {
        schedule_ready(state, &ev.object);
    }
    if let Some(owner) = controller_ref(&ev.object) {
        let kind_rt = state.registry.lookup_kind(
            owner["apiVersion"].as_str().unwrap_or_default(),
            owner["kind"].as_str().unwrap_or_default(),
        );
        if let Some(rt) = kind_rt.filter(|rt| WORKLOADS.contains(&rt.storage_key().as_str())) {
            reconcile(
                state,
                &rt,
                &ev.namespace,
                owner["name"].as_str().unwrap_or_default(),
            );
        }
    }
}

fn meta_str(obj: &Value, field: &str) -> String {
    obj["metadata"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn is_pending(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), None | Some("Pending"))
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn controller_ref(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
}

/// The pod-template-hash label value for a template.
pub(crate) fn template_hash(template: &Value) -> String {
    let mut h = DefaultHasher::new();
    template.to_string().hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}

fn pod_index(pod: &Value) -> usize {
    meta_str(pod, "name")
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

fn reconcile(state: &Arc<SimState>, rt: &ResourceType, ns: &str, name: &str) {
    let Some(owner) = state.store.get(rt, ns, name) else {
        return;
    };
    let is_job = rt.kind == "Job";
    let uid = meta_str(&owner, "uid");
    let template = owner["spec"]["template"].clone();
    let hash = template_hash(&template);
    let desired = match rt.kind.as_str() {
        "Job" => 1,
        "DaemonSet" => state.options.node_names.len(),
        _ => owner["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize,
    };
    let pod_rt = pods(state);
    let owned = |state: &SimState| -> Vec<Value> {
        state
            .store
            .list(&pod_rt, Some(ns))
            .0
            .into_iter()
            .filter(|p| controller_ref(p).is_some_and(|r| r["uid"] == uid.as_str()))
            .collect()
    };
    let mut current = Vec::new();
    for pod in owned(state) {
        let stale = pod["metadata"]["labels"]["pod-template-hash"].as_str() != Some(hash.as_str());
        if stale && !is_job {
            let _ = state
                .store
                .delete(&pod_rt, ns, &meta_str(&pod, "name"), false);
        } else {
            current.push(pod);
        }
    }
    current.sort_by_key(pod_index);
    let finished_job = is_job
        && (owner["status"]["succeeded"].as_i64().unwrap_or(0) > 0
            || owner["status"]["failed"].as_i64().unwrap_or(0) > 0);
    if !is_job {
        while current.len() > desired {
            let pod = current.pop().expect("non-empty");
            let _ = state
                .store
                .delete(&pod_rt, ns, &meta_str(&pod, "name"), false);
        }
    }
    if !finished_job {
        let used: BTreeSet<usize> = current.iter().map(pod_index).collect();
        let missing = desired.saturating_sub(current.len());
        for index in (0..).filter(|i| !used.contains(i)).take(missing) {
            let pod = new_pod(state, rt, &owner, &template, &hash, index);
            let _ = state.store.create(&pod_rt, ns, pod, false);
        }
    }
    let pods_now = owned(state);
    let status = if is_job {
        job_status(&owner, &pods_now)
    } else {
        workload_status(rt, &owner, &pods_now, &hash, desired)
    };
    let _ = state.store.update(rt, ns, name, false, |o| {
        o["status"] = status;
        Ok(())
    });
}

fn new_pod(
    state: &SimState,
    rt: &ResourceType,
    owner: &Value,
    template: &Value,
    hash: &str,
    index: usize,
) -> Value {
    let name = meta_str(owner, "name");
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert("pod-template-hash".into(), json!(hash));
    if rt.kind == "Job" {
        labels.insert("job-name".into(), json!(name));
        labels.insert("batch.kubernetes.io/job-name".into(), json!(name));
    }
    let mut spec = template["spec"].as_object().cloned().unwrap_or_default();
    let nodes = &state.options.node_names;
    if !nodes.is_empty() {
        spec.insert("nodeName".into(), json!(nodes[index % nodes.len()]));
    }
    spec.entry("restartPolicy")
        .or_insert(json!(if rt.kind == "Job" { "Never" } else { "Always" }));
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(format!("{name}-{hash}-{index}")));
    metadata.insert("labels".into(), Value::Object(labels));
    if let Some(a) = template["metadata"]["annotations"].as_object() {
        metadata.insert("annotations".into(), Value::Object(a.clone()));
    }
    metadata.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": rt.api_version(), "kind": rt.kind, "name": name,
                "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]),
    );
    json!({"metadata": metadata, "spec": spec,
           "status": {"phase": "Pending", "qosClass": "BestEffort",
                      "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}]}})
}

/// Makes a Pod Running and Ready (or Succeeded, for Job Pods) after the
/// configured delay, unless it was replaced meanwhile.
fn schedule_ready(state: &Arc<SimState>, pod: &Value) {
    let state = state.clone();
    let (ns, name, uid) = (
        meta_str(pod, "namespace"),
        meta_str(pod, "name"),
        meta_str(pod, "uid"),
    );
    let job = controller_ref(pod).is_some_and(|r| r["kind"] == "Job");
    tokio::spawn(async move {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(state.options.ready_delay) => {}
        }
        let pod_rt = pods(&state);
        let _ = state.store.update(&pod_rt, &ns, &name, false, |p| {
            if meta_str(p, "uid") == uid && is_pending(p) {
                p["status"] = started_status(p, job);
            }
            Ok(())
        });
    });
}

/// Whether a container image asks the simulator to crash
/// (its name contains `crash`, e.g. `busybox:crash`).
pub(crate) fn crashes(container: &Value) -> bool {
    container["image"]
        .as_str()
        .is_some_and(|i| i.contains("crash"))
}

fn started_status(pod: &Value, job: bool) -> Value {
    let now = now_rfc3339();
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let crashed = containers.iter().any(crashes);
    let (phase, ready) = match (job, crashed) {
        (true, false) => ("Succeeded", "False"),
        (true, true) => ("Failed", "False"),
        (false, false) => ("Running", "True"),
        (false, true) => ("Running", "False"),
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let crash = crashes(c);
            let (state, last, restarts) = match (job, crash) {
                (true, _) => {
                    let (code, reason) = if crash { (1, "Error") } else { (0, "Completed") };
                    (json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": now, "finishedAt": now}}), json!({}), 0)
                }
                (false, true) => (
                    json!({"waiting": {"reason": "CrashLoopBackOff",
                                       "message": "back-off 40s restarting failed container"}}),
                    json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now}}),
                    3,
                ),
                (false, false) => (json!({"running": {"startedAt": now}}), json!({}), 0),
            };
            let up = !job && !crash;
            json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": up, "started": up,
                   "restartCount": restarts, "state": state, "lastState": last})
        })
        .collect();
    let condition = |t: &str, s: &str| json!({"type": t, "status": s, "lastTransitionTime": now});
    let n = pod_index(pod) % 250 + 2;
    json!({
        "phase": phase,
        "conditions": [condition("PodScheduled", "True"), condition("Initialized", "True"),
                       condition("ContainersReady", ready), condition("Ready", ready)],
        "containerStatuses": statuses,
        "hostIP": "10.0.0.2",
        "podIP": format!("10.244.0.{n}"),
        "startTime": now,
        "qosClass": "BestEffort",
    })
}

/// A condition that keeps its timestamps while its status and reason hold.
fn condition(previous: &Value, kind: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let old = previous["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    if let Some(old) = old.filter(|o| o["status"] == status && o["reason"] == reason) {
        return old.clone();
    }
    let now = now_rfc3339();
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastUpdateTime": now, "lastTransitionTime": now})
}

fn workload_status(
    rt: &ResourceType,
    owner: &Value,
    pods: &[Value],
    hash: &str,
    desired: usize,
) -> Value {
    let name = meta_str(owner, "name");
    let total = pods.len();
    let updated = pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["pod-template-hash"] == hash)
        .count();
    let ready = pods.iter().filter(|p| is_ready(p)).count();
    let previous = &owner["status"];
    let mut status = json!({
        "observedGeneration": owner["metadata"]["generation"],
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
    });
    if rt.kind == "DaemonSet" {
        return json!({
            "observedGeneration": owner["metadata"]["generation"],
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": total,
            "updatedNumberScheduled": updated,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberMisscheduled": 0,
        });
    }
    if rt.kind == "StatefulSet" {
        status["currentReplicas"] = json!(updated);
        status["currentRevision"] = json!(format!("{name}-{hash}"));
        status["updateRevision"] = json!(format!("{name}-{hash}"));
        status["collisionCount"] = json!(0);
        return status;
    }
    if desired > ready {
        status["unavailableReplicas"] = json!(desired - ready);
    }
    let available = ready >= desired;
    let complete = available && updated == desired && total == desired;
    status["conditions"] = json!([
        condition(
            previous,
            "Available",
            available,
            if available {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            if available {
                "Deployment has minimum availability."
            } else {
                "Deployment does not have minimum availability."
            }
        ),
        condition(
            previous,
            "Progressing",
            true,
            if complete {
                "NewReplicaSetAvailable"
            } else {
                "ReplicaSetUpdated"
            },
            &format!(
                "ReplicaSet \"{name}-{hash}\" is {}.",
                if complete { "available" } else { "progressing" }
            )
        ),
    ]);
    status
}

fn job_status(owner: &Value, pods: &[Value]) -> Value {
    let previous = &owner["status"];
    let start = previous["startTime"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(now_rfc3339);
    let succeeded = pods
        .iter()
        .filter(|p| p["status"]["phase"] == "Succeeded")
        .count()
        + previous["succeeded"].as_u64().unwrap_or(0) as usize;
    let active = pods
        .iter()
        .filter(|p| {
            !matches!(
                p["status"]["phase"].as_str(),
                Some("Succeeded") | Some("Failed")
            )
        })
        .count();
    if pods.iter().any(|p| p["status"]["phase"] == "Failed")
        || previous["failed"].as_i64().unwrap_or(0) > 0
    {
        let done = previous["completionTime"].as_str().map(str::to_string);
        let mut status = json!({
            "startTime": start, "failed": 1, "ready": 0,
            "conditions": [
                condition(previous, "FailureTarget", true, "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                condition(previous, "Failed", true, "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            ],
        });
        if let Some(done) = done {
            status["completionTime"] = json!(done);
        }
        return status;
    }
    if succeeded > 0 {
        let done = previous["completionTime"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(now_rfc3339);
        return json!({
            "startTime": start, "completionTime": done, "succeeded": 1, "ready": 0,
            "conditions": [
                condition(previous, "SuccessCriteriaMet", true, "CompletionsReached", "Reached expected number of succeeded pods"),
                condition(previous, "Complete", true, "CompletionsReached", "Reached expected number of succeeded pods"),
            ],
        });
    }
    json!({"startTime": start, "active": active, "ready": pods.iter().filter(|p| is_ready(p)).count()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_is_stable_and_sensitive() {
        let a = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let mut b = a.clone();
        assert_eq!(template_hash(&a), template_hash(&b));
        b["metadata"]["annotations"] = json!({"consonant.xyz/restartedAt": "cmd-1"});
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 8);
    }

    #[test]
    fn conditions_keep_timestamps_while_unchanged() {
        let first = condition(&json!({}), "Available", true, "R", "m");
        let previous = json!({"conditions": [first.clone()]});
        assert_eq!(condition(&previous, "Available", true, "R", "m"), first);
        assert_eq!(
            condition(&previous, "Available", false, "X", "m")["status"],
            "False"
        );
    }
}
