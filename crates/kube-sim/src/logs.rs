//! Pod logs: a few fixed lines per container derived from the pod (start,
//! image, listening, ready), filtered by `tailLines`, `sinceSeconds` and
//! `limitBytes` like the kubelet does. Pure.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::status::ApiError;

/// Query parameters of `GET .../pods/{name}/log`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogQuery {
    /// `container`.
    pub container: Option<String>,
    /// `tailLines`.
    pub tail_lines: Option<i64>,
    /// `sinceSeconds`.
    pub since_seconds: Option<i64>,
    /// `limitBytes`.
    pub limit_bytes: Option<i64>,
}

fn container_names(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The log lines of one container, each with its timestamp.
fn lines_for(pod: &Value, container: &str) -> Vec<(SystemTime, String)> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let created = pod["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let image = pod["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .and_then(|c| c["image"].as_str())
        .unwrap_or("unknown");
    let later = created + Duration::from_secs(1);
    let mut lines = vec![
        (created, format!("{name} started")),
        (created, format!("{name}/{container} running image {image}")),
        (later, format!("{name}/{container} listening on :8080")),
        (later, format!("{name} ready")),
    ];
    let crashed = pod["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .is_some_and(super::controller::crashes);
    if crashed {
        lines.truncate(2);
        lines.push((
            later,
            format!("{name}/{container} fatal: simulated crash (image {image})"),
        ));
        lines.push((later, format!("{name}/{container} exited with code 1")));
    } else if pod["status"]["phase"] == "Succeeded" {
        lines.push((later, format!("{name} completed")));
    }
    lines
        .into_iter()
        .map(|(t, text)| {
            (
                t,
                format!("{} {text}", humantime::format_rfc3339_seconds(t)),
            )
        })
        .collect()
}

/// The log text for `pod`, or the error the real API gives: 400 for a
/// missing or unknown container name, 400 while the pod is still pending.
pub(crate) fn pod_logs(pod: &Value, q: &LogQuery, now: SystemTime) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names = container_names(pod);
    let container = match &q.container {
        Some(c) if names.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}; valid containers: [{}]",
                names.join(" ")
            )))
        }
        None if names.len() == 1 => names[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                names.join(" ")
            )))
        }
    };
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if phase == "Pending" {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    }
    let mut lines = lines_for(pod, &container);
    if let Some(since) = q.since_seconds.filter(|s| *s > 0) {
        let cutoff = now
            .checked_sub(Duration::from_secs(since as u64))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        lines.retain(|(t, _)| *t >= cutoff);
    }
    if let Some(tail) = q.tail_lines.filter(|t| *t >= 0) {
        let skip = lines.len().saturating_sub(tail as usize);
        lines.drain(..skip);
    }
    let mut text: String = lines.into_iter().map(|(_, l)| l + "\n").collect();
    if let Some(limit) = q.limit_bytes.filter(|l| *l > 0) {
        let mut cut = (limit as usize).min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "web-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"containers": [{"name": "app", "image": "nginx:1"}, {"name": "side", "image": "envoy"}]},
               "status": {"phase": "Running"}})
    }

    fn q(container: &str) -> LogQuery {
        LogQuery {
            container: Some(container.into()),
            ..Default::default()
        }
    }

    #[test]
    fn lines_and_filters() {
        let now = humantime::parse_rfc3339("2026-01-01T00:00:10Z").unwrap();
        let all = pod_logs(&pod(), &q("app"), now).unwrap();
        assert_eq!(all.lines().count(), 4);
        assert!(all.starts_with("2026-01-01T00:00:00Z web-1 started\n"));
        let tail = pod_logs(
            &pod(),
            &LogQuery {
                tail_lines: Some(1),
                ..q("app")
            },
            now,
        )
        .unwrap();
        assert_eq!(tail, "2026-01-01T00:00:01Z web-1 ready\n");
        let since = pod_logs(
            &pod(),
            &LogQuery {
                since_seconds: Some(9),
                ..q("app")
            },
            now,
        )
        .unwrap();
        assert_eq!(since.lines().count(), 2);
        let limited = pod_logs(
            &pod(),
            &LogQuery {
                limit_bytes: Some(10),
                ..q("app")
            },
            now,
        )
        .unwrap();
        assert_eq!(limited.len(), 10);
    }

    #[test]
    fn container_errors() {
        let now = SystemTime::now();
        let err = pod_logs(&pod(), &q("nope"), now).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("[app side]"), "{}", err.message);
        assert!(pod_logs(&pod(), &LogQuery::default(), now)
            .unwrap_err()
            .message
            .contains("must be specified"));
        let mut pending = pod();
        pending["status"]["phase"] = json!("Pending");
        assert!(pod_logs(&pending, &q("app"), now)
            .unwrap_err()
            .message
            .contains("waiting to start"));
    }
}
