//! The real API server's writes per command, read from its audit log: the
//! test environment audits patches of Deployments at Request level
//! (`scripts/kube-testenv`), and a rollout restart writes its own command
//! id into the pod template (`consonant.xyz/restartedAt`), so each write
//! names the command that made it. The fault scenarios (issue 17) check
//! from there that no rollout restart took effect twice.

use std::collections::{HashMap, HashSet};

use consonant_kube_testenv::ControlPlane;

const RESTART_ANNOTATION: &str = "consonant.xyz/restartedAt";

/// Successful patches of the Deployment `namespace/name`, counted by the
/// restart command id each one wrote; a patch that wrote no restart
/// annotation counts under `""`.
pub(crate) fn restart_writes(
    plane: &ControlPlane,
    namespace: &str,
    name: &str,
) -> HashMap<String, usize> {
    let mut writes = HashMap::new();
    for event in plane.audit_events() {
        let object = &event["objectRef"];
        let applied = event["verb"] == "patch"
            && event["stage"] == "ResponseComplete"
            && object["resource"] == "deployments"
            && object["namespace"] == namespace
            && object["name"] == name
            && object["subresource"].is_null()
            && event["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|code| code < 300);
        if !applied {
            continue;
        }
        let id = event["requestObject"]["spec"]["template"]["metadata"]["annotations"]
            [RESTART_ANNOTATION]
            .as_str()
            .unwrap_or_default();
        *writes.entry(id.to_string()).or_insert(0) += 1;
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
