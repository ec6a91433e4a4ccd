//! Turns observed Kubernetes objects into `ClusterEvent`s: readiness changes of
//! workloads (`workload.status`) and failing Pods (`pod.failed`).
//!
//! Pure logic: no I/O and no clock — the caller passes the observation time.
//!
//! # What is reported
//!
//! - `workload.status` when the readiness of a Deployment, StatefulSet, Job or
//!   kagent.dev Agent changes. An object is *known* once its controller wrote a
//!   status and its desired count is known (for Agents: a `Ready` condition
//!   with status `True` or `False`). The first sight of a known object counts
//!   as a change, ready or not, so the backend learns the current state after
//!   a relayer (or leader) start; an unknown object (just created, no status
//!   yet) is reported once its status appears. The same readiness is never
//!   reported twice in a row.
//! - `pod.failed` once per (pod uid, container, reason, restart count) when a
//!   container is OOMKilled or in CrashLoopBackOff, and once per pod when its
//!   phase is `Failed`. A container that is both (waiting in CrashLoopBackOff
//!   after an OOM kill) is reported as `OOMKilled`, the cause, not the symptom.
//!   An OOM kill seen in `state.terminated` belongs to the *next* restart
//!   count, so seeing it again in `lastState.terminated` after the restart
//!   is not a second report.
//! - Deleted objects are forgotten; no event.
//!
//! # Memory
//!
//! One entry per workload with a known state and per Pod that failed. Entries
//! go on delete, on a re-list that no longer contains them
//! ([`EventDetector::relist_done`]), and when the map is full (an arbitrary
//! entry is evicted and counted in [`EventDetector::evicted`]; the worst
//! outcome is one repeated event for that object).

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use serde_json::json;

use crate::proto::{ClusterEvent, ObjectRef};

/// `ClusterEvent.kind` for a readiness change of a workload.
pub const WORKLOAD_STATUS: &str = "workload.status";
/// `ClusterEvent.kind` for a Pod that failed (CrashLoopBackOff, OOMKilled, phase Failed).
pub const POD_FAILED: &str = "pod.failed";
/// Default bound on remembered objects.
pub const DEFAULT_CAPACITY: usize = 50_000;
/// The API version of kagent.dev Agents that are watched.
pub const AGENT_API_VERSION: &str = "kagent.dev/v1alpha2";
/// The kind of kagent.dev Agents.
pub const AGENT_KIND: &str = "Agent";

const OOM_KILLED: &str = "OOMKilled";
const CRASH_LOOP: &str = "CrashLoopBackOff";
const POD_PHASE_FAILED: &str = "Failed";

/// One object as delivered by a watch, of any watched kind.
#[derive(Clone, Debug)]
pub enum Watched {
    Deployment(Deployment),
    StatefulSet(StatefulSet),
    Job(Job),
    Pod(Pod),
    /// A kagent.dev Agent (`kagent.dev/v1alpha2`).
    Agent(DynamicObject),
}

/// The kinds of [`Watched`] objects, one watch stream each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchedKind {
    Deployment,
    StatefulSet,
    Job,
    Pod,
    Agent,
}

impl Watched {
    /// Which watch this object came from.
    pub fn kind(&self) -> WatchedKind {
        match self {
            Watched::Deployment(_) => WatchedKind::Deployment,
            Watched::StatefulSet(_) => WatchedKind::StatefulSet,
            Watched::Job(_) => WatchedKind::Job,
            Watched::Pod(_) => WatchedKind::Pod,
            Watched::Agent(_) => WatchedKind::Agent,
        }
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Watched::Deployment(o) => &o.metadata,
            Watched::StatefulSet(o) => &o.metadata,
            Watched::Job(o) => &o.metadata,
            Watched::Pod(o) => &o.metadata,
            Watched::Agent(o) => &o.metadata,
        }
    }

    fn uid(&self) -> Option<&str> {
        self.meta().uid.as_deref().filter(|uid| !uid.is_empty())
    }

    /// The `ObjectRef` naming this object in a `ClusterEvent`.
    pub fn object_ref(&self) -> ObjectRef {
        use k8s_openapi::Resource;
        let (api_version, kind) = match self {
            Watched::Deployment(_) => (Deployment::API_VERSION, Deployment::KIND),
            Watched::StatefulSet(_) => (StatefulSet::API_VERSION, StatefulSet::KIND),
            Watched::Job(_) => (Job::API_VERSION, Job::KIND),
            Watched::Pod(_) => (Pod::API_VERSION, Pod::KIND),
            Watched::Agent(_) => (AGENT_API_VERSION, AGENT_KIND),
        };
        let meta = self.meta();
        ObjectRef {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }
}

/// Remembers, per object uid, what was last reported, and turns observed
/// objects into `ClusterEvent`s. See the module docs for the rules.
#[derive(Debug)]
pub struct EventDetector {
    memory: HashMap<String, Entry>,
    capacity: usize,
    evicted: u64,
    /// Per kind, bumped when a re-list starts; entries seen in it carry it.
    epochs: HashMap<WatchedKind, u64>,
}

#[derive(Debug)]
struct Entry {
    kind: WatchedKind,
    epoch: u64,
    state: Remembered,
}

#[derive(Debug)]
enum Remembered {
    Workload(Readiness),
    /// The failures already reported for this Pod, pruned to those that are
    /// still current (restart count not yet passed).
    Pod(Vec<FailureKey>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Ready,
    NotReady,
    /// A Job that failed for good.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FailureKey {
    /// Empty for the Pod-level `Failed` phase.
    container: String,
    reason: &'static str,
    restarts: i32,
}

/// A workload's readiness with the figures for the event payload.
struct WorkloadStatus {
    readiness: Readiness,
    replicas: Option<i32>,
    ready_replicas: Option<i32>,
    reason: String,
    /// Extra payload fields (Job counters).
    extra: serde_json::Map<String, serde_json::Value>,
}

struct PodFailure {
    key: FailureKey,
    /// The reason shown in the payload (the Pod's `status.reason` for phase Failed).
    reason: String,
    restart_count: i32,
    message: String,
}

impl Default for EventDetector {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl EventDetector {
    /// A detector remembering at most [`DEFAULT_CAPACITY`] objects.
    pub fn new() -> Self {
        Self::default()
    }

    /// A detector remembering at most `capacity` objects (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            memory: HashMap::new(),
            capacity: capacity.max(1),
            evicted: 0,
            epochs: HashMap::new(),
        }
    }

    /// Number of remembered objects.
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    /// How many entries were evicted because the map was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// An object was added, modified, or listed: returns the events it causes
    /// (usually none), stamped with `now_unix_ms`.
    pub fn applied(&mut self, obj: &Watched, now_unix_ms: i64) -> Vec<ClusterEvent> {
        let Some(uid) = obj.uid() else {
            return Vec::new();
        };
        let kind = obj.kind();
        let epoch = self.epoch(kind);
        if let Some(entry) = self.memory.get_mut(uid) {
            entry.epoch = epoch;
        }
        let mut events = Vec::new();
        match obj {
            Watched::Pod(pod) => {
                let failures = pod_failures(pod);
                let mut reported = match self.memory.get(uid) {
                    Some(Entry {
                        state: Remembered::Pod(keys),
                        ..
                    }) => keys.clone(),
                    _ => Vec::new(),
                };
                prune_passed(&mut reported, pod);
                for failure in failures {
                    if reported.contains(&failure.key) {
                        continue;
                    }
                    let payload = json!({
                        "reason": failure.reason,
                        "container": failure.key.container,
                        "restart_count": failure.restart_count,
                        "message": failure.message,
                    });
                    events.push(event(POD_FAILED, obj, &payload, now_unix_ms));
                    reported.push(failure.key);
                }
                if reported.is_empty() {
                    self.memory.remove(uid);
                } else {
                    self.remember(uid, kind, Remembered::Pod(reported));
                }
            }
            _ => {
                let Some(status) = workload_status(obj) else {
                    return events;
                };
                let last = match self.memory.get(uid) {
                    Some(Entry {
                        state: Remembered::Workload(last),
                        ..
                    }) => Some(*last),
                    _ => None,
                };
                if last != Some(status.readiness) {
                    let mut payload = serde_json::Map::new();
                    payload.insert(
                        "ready".into(),
                        (status.readiness == Readiness::Ready).into(),
                    );
                    payload.insert("replicas".into(), status.replicas.into());
                    payload.insert("ready_replicas".into(), status.ready_replicas.into());
                    payload.insert("reason".into(), status.reason.into());
                    payload.extend(status.extra);
                    let payload = serde_json::Value::Object(payload);
                    events.push(event(WORKLOAD_STATUS, obj, &payload, now_unix_ms));
                    self.remember(uid, kind, Remembered::Workload(status.readiness));
                }
            }
        }
        events
    }

    /// An object was deleted: forget it.
    pub fn deleted(&mut self, obj: &Watched) {
        if let Some(uid) = obj.uid() {
            self.memory.remove(uid);
        }
    }

    /// A watch of `kind` restarted and is listing all objects again.
    pub fn relist_started(&mut self, kind: WatchedKind) {
        *self.epochs.entry(kind).or_default() += 1;
    }

    /// The re-list of `kind` is complete: forget the objects of that kind it
    /// did not contain (deleted while the watch was down).
    pub fn relist_done(&mut self, kind: WatchedKind) {
        let epoch = self.epoch(kind);
        self.memory
            .retain(|_, entry| entry.kind != kind || entry.epoch == epoch);
    }

    fn epoch(&self, kind: WatchedKind) -> u64 {
        self.epochs.get(&kind).copied().unwrap_or_default()
    }

    fn remember(&mut self, uid: &str, kind: WatchedKind, state: Remembered) {
        let epoch = self.epoch(kind);
        if let Some(entry) = self.memory.get_mut(uid) {
            entry.state = state;
            return;
        }
        if self.memory.len() >= self.capacity {
            if let Some(victim) = self.memory.keys().next().cloned() {
                self.memory.remove(&victim);
                self.evicted += 1;
            }
        }
        self.memory
            .insert(uid.to_string(), Entry { kind, epoch, state });
    }
}

fn event(kind: &str, obj: &Watched, payload: &serde_json::Value, now_unix_ms: i64) -> ClusterEvent {
    ClusterEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        kind: kind.to_string(),
        object: Some(obj.object_ref()),
        payload_json: serde_json::to_vec(payload).unwrap_or_default().into(),
        observed_at_unix_ms: now_unix_ms,
    }
}

/// The readiness of a workload, or `None` while it is unknown.
fn workload_status(obj: &Watched) -> Option<WorkloadStatus> {
    match obj {
        Watched::Deployment(d) => {
            let status = d.status.as_ref()?;
            let desired = d.spec.as_ref()?.replicas?;
            let ready_replicas = status.ready_replicas.unwrap_or(0);
            let observed = match (status.observed_generation, d.metadata.generation) {
                (_, None) => true,
                (Some(observed), Some(generation)) => observed >= generation,
                (None, Some(_)) => false,
            };
            let (readiness, reason) = if !observed {
                (Readiness::NotReady, "NotObserved")
            } else if ready_replicas == desired {
                (Readiness::Ready, "Ready")
            } else {
                (Readiness::NotReady, "ReplicasNotReady")
            };
            Some(replica_status(readiness, desired, ready_replicas, reason))
        }
        Watched::StatefulSet(s) => {
            let status = s.status.as_ref()?;
            let desired = s.spec.as_ref()?.replicas?;
            let ready_replicas = status.ready_replicas.unwrap_or(0);
            let (readiness, reason) = if ready_replicas == desired {
                (Readiness::Ready, "Ready")
            } else {
                (Readiness::NotReady, "ReplicasNotReady")
            };
            Some(replica_status(readiness, desired, ready_replicas, reason))
        }
        Watched::Job(job) => job_status(job),
        Watched::Agent(agent) => {
            let ready = agent
                .data
                .pointer("/status/conditions")?
                .as_array()?
                .iter()
                .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"))?;
            let readiness = match ready.get("status").and_then(|s| s.as_str()) {
                Some("True") => Readiness::Ready,
                Some("False") => Readiness::NotReady,
                _ => return None,
            };
            let reason = ready
                .get("reason")
                .and_then(|r| r.as_str())
                .filter(|r| !r.is_empty())
                .unwrap_or(if readiness == Readiness::Ready {
                    "Ready"
                } else {
                    "NotReady"
                });
            Some(WorkloadStatus {
                readiness,
                replicas: None,
                ready_replicas: None,
                reason: reason.to_string(),
                extra: serde_json::Map::new(),
            })
        }
        Watched::Pod(_) => None,
    }
}

fn replica_status(readiness: Readiness, desired: i32, ready: i32, reason: &str) -> WorkloadStatus {
    WorkloadStatus {
        readiness,
        replicas: Some(desired),
        ready_replicas: Some(ready),
        reason: reason.to_string(),
        extra: serde_json::Map::new(),
    }
}

/// A Job is ready once complete, failed once it gave up, not ready while it
/// has active Pods; unknown otherwise (not started yet, between retries).
fn job_status(job: &Job) -> Option<WorkloadStatus> {
    let status = job.status.as_ref()?;
    let spec = job.spec.as_ref();
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == kind && c.status == "True")
    };
    let completions = spec.and_then(|s| s.completions);
    let backoff_limit = spec.and_then(|s| s.backoff_limit).unwrap_or(6);
    let active = status.active.unwrap_or(0);
    let succeeded = status.succeeded.unwrap_or(0);
    let failed = status.failed.unwrap_or(0);
    let (readiness, reason) =
        if condition("Complete") || (active == 0 && succeeded >= completions.unwrap_or(1)) {
            (Readiness::Ready, "Complete")
        } else if condition("Failed") || failed > backoff_limit {
            (Readiness::Failed, "Failed")
        } else if active > 0 {
            (Readiness::NotReady, "Running")
        } else {
            return None;
        };
    let mut extra = serde_json::Map::new();
    extra.insert("active".into(), active.into());
    extra.insert("succeeded".into(), succeeded.into());
    extra.insert("failed".into(), failed.into());
    Some(WorkloadStatus {
        readiness,
        replicas: completions,
        ready_replicas: Some(succeeded),
        reason: reason.to_string(),
        extra,
    })
}

fn container_statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    let init = status.and_then(|s| s.init_container_statuses.as_ref());
    let main = status.and_then(|s| s.container_statuses.as_ref());
    init.into_iter().flatten().chain(main.into_iter().flatten())
}

/// The failures visible in this Pod's status right now.
fn pod_failures(pod: &Pod) -> Vec<PodFailure> {
    let mut failures = Vec::new();
    for cs in container_statuses(pod) {
        let rc = cs.restart_count;
        let terminated = cs.state.as_ref().and_then(|s| s.terminated.as_ref());
        let last_terminated = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
        let oom = |t: &&k8s_openapi::api::core::v1::ContainerStateTerminated| {
            t.reason.as_deref() == Some(OOM_KILLED)
        };
        // An OOM kill in the current state is counted by the restart that follows it.
        let failure = terminated
            .filter(oom)
            .map(|t| (OOM_KILLED, rc.saturating_add(1), &t.message))
            .or_else(|| {
                last_terminated
                    .filter(oom)
                    .map(|t| (OOM_KILLED, rc, &t.message))
            })
            .or_else(|| {
                waiting
                    .filter(|w| w.reason.as_deref() == Some(CRASH_LOOP))
                    .map(|w| (CRASH_LOOP, rc, &w.message))
            });
        if let Some((reason, restarts, message)) = failure {
            failures.push(PodFailure {
                key: FailureKey {
                    container: cs.name.clone(),
                    reason,
                    restarts,
                },
                reason: reason.to_string(),
                restart_count: rc,
                message: message.clone().unwrap_or_default(),
            });
        }
    }
    let status = pod.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) == Some(POD_PHASE_FAILED) {
        let status = status.expect("phase came from status");
        failures.push(PodFailure {
            key: FailureKey {
                container: String::new(),
                reason: POD_PHASE_FAILED,
                restarts: 0,
            },
            reason: status
                .reason
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| POD_PHASE_FAILED.to_string()),
            restart_count: 0,
            message: status.message.clone().unwrap_or_default(),
        });
    }
    failures
}

/// Drops remembered container failures whose restart count has been passed
/// (they can never be seen again) and those of containers no longer listed.
fn prune_passed(reported: &mut Vec<FailureKey>, pod: &Pod) {
    reported.retain(|key| {
        key.container.is_empty()
            || container_statuses(pod)
                .any(|cs| cs.name == key.container && cs.restart_count <= key.restarts)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const NOW: i64 = 1_700_000_000_000;

    fn deployment(uid: &str, replicas: i32, ready: i32, generation: i64, observed: i64) -> Watched {
        Watched::Deployment(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "apps", "uid": uid, "generation": generation},
                "spec": {"replicas": replicas, "selector": {}, "template": {}},
                "status": {"readyReplicas": ready, "observedGeneration": observed},
            }))
            .unwrap(),
        )
    }

    fn statefulset(uid: &str, replicas: i32, ready: i32) -> Watched {
        Watched::StatefulSet(
            serde_json::from_value(json!({
                "metadata": {"name": "db", "namespace": "apps", "uid": uid},
                "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": "db"},
                "status": {"replicas": replicas, "readyReplicas": ready},
            }))
            .unwrap(),
        )
    }

    fn job(uid: &str, status: Value) -> Watched {
        Watched::Job(
            serde_json::from_value(json!({
                "metadata": {"name": "migrate", "namespace": "apps", "uid": uid},
                "spec": {"completions": 1, "template": {}},
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn pod(uid: &str, status: Value) -> Watched {
        Watched::Pod(
            serde_json::from_value(json!({
                "metadata": {"name": "web-1", "namespace": "apps", "uid": uid},
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn crashloop(restarts: i32) -> Value {
        json!({"phase": "Running", "containerStatuses": [{
            "name": "app", "image": "app:1", "imageID": "", "ready": false, "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {"terminated": {"reason": "Error", "exitCode": 1}},
        }]})
    }

    fn running_after(restarts: i32, last_reason: &str) -> Value {
        json!({"phase": "Running", "containerStatuses": [{
            "name": "app", "image": "app:1", "imageID": "", "ready": true, "restartCount": restarts,
            "state": {"running": {}},
            "lastState": {"terminated": {"reason": last_reason, "exitCode": 137}},
        }]})
    }

    fn oom_now(restarts: i32) -> Value {
        json!({"phase": "Running", "containerStatuses": [{
            "name": "app", "image": "app:1", "imageID": "", "ready": false, "restartCount": restarts,
            "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
        }]})
    }

    fn agent(uid: &str, ready: &str) -> Watched {
        Watched::Agent(
            serde_json::from_value(json!({
                "apiVersion": AGENT_API_VERSION, "kind": AGENT_KIND,
                "metadata": {"name": "helper", "namespace": "kagent", "uid": uid},
                "status": {"conditions": [{"type": "Accepted", "status": "True"},
                                          {"type": "Ready", "status": ready, "reason": "DeploymentReady"}]},
            }))
            .unwrap(),
        )
    }

    /// Feeds `steps` in order through one detector; after each step, the
    /// events must match the expectations one to one: every key of an
    /// expectation (`kind` for the event kind, the rest payload fields) must
    /// equal the event's.
    fn check(steps: &[(Watched, Vec<Value>)]) {
        let mut detector = EventDetector::new();
        for (i, (obj, expected)) in steps.iter().enumerate() {
            let events = detector.applied(obj, NOW);
            assert_eq!(events.len(), expected.len(), "step {i}: got {events:?}");
            for (event, expected) in events.iter().zip(expected) {
                assert!(
                    uuid::Uuid::parse_str(&event.event_id).is_ok(),
                    "step {i}: event_id"
                );
                assert_eq!(event.observed_at_unix_ms, NOW);
                assert_eq!(event.object.as_ref(), Some(&obj.object_ref()));
                let mut actual: Value = serde_json::from_slice(&event.payload_json).unwrap();
                actual["kind"] = event.kind.clone().into();
                for (key, want) in expected.as_object().unwrap() {
                    assert_eq!(&actual[key], want, "step {i}: field {key} of {actual}");
                }
            }
        }
    }

    fn status(ready: bool) -> Value {
        json!({"kind": WORKLOAD_STATUS, "ready": ready})
    }

    fn failed(reason: &str, restarts: i32) -> Value {
        json!({"kind": POD_FAILED, "reason": reason, "container": "app", "restart_count": restarts})
    }

    #[test]
    fn deployment_readiness_changes() {
        check(&[
            (
                deployment("d1", 3, 3, 1, 1),
                vec![
                    json!({"kind": WORKLOAD_STATUS, "ready": true, "replicas": 3, "ready_replicas": 3, "reason": "Ready"}),
                ],
            ),
            (deployment("d1", 3, 3, 1, 1), vec![]),
            // Scaled up: the controller has not observed the new generation yet.
            (
                deployment("d1", 5, 3, 2, 1),
                vec![json!({"kind": WORKLOAD_STATUS, "ready": false, "reason": "NotObserved"})],
            ),
            (deployment("d1", 5, 4, 2, 2), vec![]),
            (deployment("d1", 5, 5, 2, 2), vec![status(true)]),
        ]);
    }

    #[test]
    fn first_sight_not_ready_is_reported_unknown_is_not() {
        let mut no_status = deployment("d2", 2, 0, 1, 1);
        if let Watched::Deployment(d) = &mut no_status {
            d.status = None;
        }
        check(&[
            (no_status, vec![]),
            (
                deployment("d2", 2, 0, 1, 1),
                vec![
                    json!({"kind": WORKLOAD_STATUS, "ready": false, "ready_replicas": 0, "reason": "ReplicasNotReady"}),
                ],
            ),
        ]);
    }

    #[test]
    fn statefulset_readiness() {
        check(&[
            (statefulset("s1", 2, 1), vec![status(false)]),
            (statefulset("s1", 2, 2), vec![status(true)]),
            (statefulset("s1", 2, 2), vec![]),
        ]);
    }

    #[test]
    fn job_running_then_succeeded_or_failed() {
        check(&[
            (job("j1", json!({})), vec![]),
            (
                job("j1", json!({"active": 1})),
                vec![json!({"kind": WORKLOAD_STATUS, "ready": false, "reason": "Running"})],
            ),
            (
                job(
                    "j1",
                    json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
                ),
                vec![
                    json!({"kind": WORKLOAD_STATUS, "ready": true, "reason": "Complete", "succeeded": 1}),
                ],
            ),
            (job("j1", json!({"succeeded": 1})), vec![]),
        ]);
        check(&[
            (job("j2", json!({"active": 1})), vec![status(false)]),
            (
                job(
                    "j2",
                    json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True"}]}),
                ),
                vec![
                    json!({"kind": WORKLOAD_STATUS, "ready": false, "reason": "Failed", "failed": 7}),
                ],
            ),
        ]);
    }

    #[test]
    fn agent_ready_condition() {
        check(&[
            (agent("a1", "Unknown"), vec![]),
            (
                agent("a1", "False"),
                vec![json!({"kind": WORKLOAD_STATUS, "ready": false, "replicas": null})],
            ),
            (
                agent("a1", "True"),
                vec![json!({"kind": WORKLOAD_STATUS, "ready": true, "reason": "DeploymentReady"})],
            ),
            (agent("a1", "True"), vec![]),
        ]);
    }

    #[test]
    fn crashloop_once_per_restart_count() {
        check(&[
            (pod("p1", json!({"phase": "Running"})), vec![]),
            (
                pod("p1", crashloop(3)),
                vec![
                    json!({"kind": POD_FAILED, "reason": "CrashLoopBackOff", "container": "app", "restart_count": 3, "message": "back-off 10s"}),
                ],
            ),
            (pod("p1", crashloop(3)), vec![]),
            (pod("p1", crashloop(4)), vec![failed("CrashLoopBackOff", 4)]),
            (pod("p1", crashloop(4)), vec![]),
        ]);
    }

    #[test]
    fn oom_killed_once_per_kill() {
        check(&[
            (pod("p2", oom_now(0)), vec![failed("OOMKilled", 0)]),
            // The same kill, now in lastState after the restart.
            (pod("p2", running_after(1, "OOMKilled")), vec![]),
            (pod("p2", running_after(1, "OOMKilled")), vec![]),
            (
                pod("p2", running_after(2, "OOMKilled")),
                vec![failed("OOMKilled", 2)],
            ),
            (pod("p2", running_after(3, "Error")), vec![]),
        ]);
    }

    #[test]
    fn failed_phase_once() {
        let evicted = json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"});
        check(&[
            (
                pod("p3", json!({"phase": "Failed"})),
                vec![
                    json!({"kind": POD_FAILED, "reason": "Failed", "container": "", "restart_count": 0}),
                ],
            ),
            (pod("p3", json!({"phase": "Failed"})), vec![]),
        ]);
        check(&[(
            pod("p4", evicted),
            vec![json!({"kind": POD_FAILED, "reason": "Evicted", "message": "low on memory"})],
        )]);
    }

    #[test]
    fn delete_forgets_and_state_is_reported_again() {
        let mut detector = EventDetector::new();
        let ready = deployment("d3", 1, 1, 1, 1);
        assert_eq!(detector.applied(&ready, NOW).len(), 1);
        assert_eq!(detector.len(), 1);
        detector.deleted(&ready);
        assert!(detector.is_empty());
        assert_eq!(detector.applied(&ready, NOW).len(), 1);
    }

    #[test]
    fn healthy_pods_take_no_memory() {
        let mut detector = EventDetector::new();
        assert!(detector
            .applied(&pod("p5", running_after(0, "Completed")), NOW)
            .is_empty());
        assert!(detector.is_empty());
    }

    #[test]
    fn relist_forgets_objects_it_no_longer_lists() {
        let mut detector = EventDetector::new();
        let kept = deployment("d4", 1, 1, 1, 1);
        let gone = deployment("d5", 1, 1, 1, 1);
        let pod_failed = pod("p6", json!({"phase": "Failed"}));
        detector.applied(&kept, NOW);
        detector.applied(&gone, NOW);
        detector.applied(&pod_failed, NOW);
        detector.relist_started(WatchedKind::Deployment);
        assert!(detector.applied(&kept, NOW).is_empty());
        detector.relist_done(WatchedKind::Deployment);
        assert_eq!(detector.len(), 2, "d5 forgotten, the Pod untouched");
        assert!(detector.applied(&kept, NOW).is_empty());
        assert_eq!(detector.applied(&gone, NOW).len(), 1);
    }

    #[test]
    fn capacity_evicts_and_counts() {
        let mut detector = EventDetector::with_capacity(2);
        for uid in ["a", "b", "c"] {
            detector.applied(&deployment(uid, 1, 1, 1, 1), NOW);
        }
        assert_eq!(detector.len(), 2);
        assert_eq!(detector.evicted(), 1);
    }

    #[test]
    fn object_ref_names_the_object() {
        let obj = deployment("d6", 1, 1, 1, 1);
        let r = obj.object_ref();
        assert_eq!(
            (
                r.api_version.as_str(),
                r.kind.as_str(),
                r.namespace.as_str(),
                r.name.as_str(),
                r.uid.as_str()
            ),
            ("apps/v1", "Deployment", "apps", "web", "d6")
        );
        assert_eq!(
            agent("a2", "True").object_ref().api_version,
            AGENT_API_VERSION
        );
    }
}
