//! `demo --script`: each step runs against the live demo over loopback HTTP,
//! the way a person would with curl, and is checked on its data.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::Demo;

type StepResult = Result<String, String>;

/// Runs every step; true when all passed.
pub(super) async fn run(demo: &Demo) -> bool {
    let client = reqwest::Client::new();
    let mut passed = 0;
    let mut failed = 0;
    let steps: Vec<(&str, StepFn)> = vec![
        ("relayer reports a live stream in /health", health_connected),
        ("ping round trip", ping),
        ("/debug/actors lists every actor with its mailbox", actors),
        (
            "apply the sample Deployment (server-side apply)",
            apply_sample,
        ),
        (
            "locked cluster: an unsigned scale is refused",
            unsigned_scale_refused,
        ),
        (
            "scale it to 3, signed, and see 3 running pods",
            scale_to_three,
        ),
        ("read a pod's logs", read_logs),
        ("the backend got a workload.status event", readiness_event),
        ("send 10 OTLP spans; the backend counts them", send_spans),
        (
            "drain, then reconnect with a new session",
            drain_and_reconnect,
        ),
        ("ping after the reconnect", ping),
        (
            "rotate the token: Secret updated, next session uses it",
            rotate_credentials,
        ),
        ("ping with the rotated token", ping),
        ("/metrics counts the commands", metrics),
    ];
    for (name, step) in steps {
        let started = Instant::now();
        let outcome = step(demo, &client).await;
        let latency = started.elapsed();
        match outcome {
            Ok(detail) => {
                passed += 1;
                println!(
                    "PASS  {name:<52} {:>8.1} ms  {detail}",
                    latency.as_secs_f64() * 1e3
                );
            }
            Err(why) => {
                failed += 1;
                println!(
                    "FAIL  {name:<52} {:>8.1} ms  {why}",
                    latency.as_secs_f64() * 1e3
                );
            }
        }
    }
    println!("\ndemo: {passed} passed, {failed} failed");
    failed == 0
}

type StepFn =
    for<'a> fn(&'a Demo, &'a reqwest::Client) -> futures::future::BoxFuture<'a, StepResult>;

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    response
        .json()
        .await
        .map_err(|e| format!("GET {url}: body is not JSON: {e}"))
}

fn health_connected<'a>(
    demo: &'a Demo,
    client: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let body = get_json(client, &format!("{}/health", demo.health)).await?;
        if body["status"] == "healthy"
            && body["grpc"]["connected"] == true
            && body["grpc"]["clusterId"] == demo.cluster_id.as_str()
        {
            Ok(format!("state {}", body["grpc"]["state"]))
        } else {
            Err(format!("unexpected /health: {body}"))
        }
    })
}

fn ping<'a>(
    demo: &'a Demo,
    client: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let url = format!(
            "{}/api/v1/clusters/{}/commands?wait=true&timeout_ms=10000",
            demo.admin, demo.cluster_id
        );
        let response = client
            .post(&url)
            .json(&serde_json::json!({"ping": {"payload": "aGVsbG8="}}))
            .send()
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if status.is_success()
            && body["status"] == "SUCCEEDED"
            && body["output"]["payload_len"] == 5
        {
            Ok("SUCCEEDED, payload_len 5".into())
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    })
}

fn actors<'a>(
    demo: &'a Demo,
    client: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let body = get_json(client, &format!("{}/debug/actors", demo.health)).await?;
        let names: Vec<&str> = body["actors"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["name"].as_str()).collect())
            .unwrap_or_default();
        for expected in [
            "ConnectionActor",
            "CommandRouter",
            "WorkloadExecutor",
            "HealthActor",
        ] {
            if !names.contains(&expected) {
                return Err(format!("{expected} missing from {names:?}"));
            }
        }
        Ok(format!("{} actors", names.len()))
    })
}

fn drain_and_reconnect<'a>(
    demo: &'a Demo,
    client: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let before = demo.relayer.rc.link.read().session_id.clone();
        let url = format!("{}/api/v1/clusters/{}/drain", demo.admin, demo.cluster_id);
        let response = client.post(&url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("POST {url}: HTTP {}", response.status()));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut saw_drain = false;
        while Instant::now() < deadline {
            let link = demo.relayer.rc.link.read().clone();
            saw_drain |= !link.connected;
            if saw_drain && link.connected && link.session_id != before {
                return Ok(format!(
                    "new session {}",
                    link.session_id.unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("no new session within 10 s".into())
    })
}

/// `POST /rotate`: the relayer writes the new token into the cluster Secret
/// and reconnects with it; the demo then syncs the Secret into the files
/// (kubelet's part) and checks the Secret and the files hold a new token and
/// a new session is up.
fn rotate_credentials<'a>(
    demo: &'a Demo,
    client: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let (_, before) = demo.sync_mount().await.map_err(|e| format!("{e:#}"))?;
        let session_before = demo.relayer.rc.link.read().session_id.clone();
        let url = format!("{}/api/v1/clusters/{}/rotate", demo.admin, demo.cluster_id);
        let response = client.post(&url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("POST {url}: HTTP {}", response.status()));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let (_, now) = demo.sync_mount().await.map_err(|e| format!("{e:#}"))?;
            let link = demo.relayer.rc.link.read().clone();
            let current = demo.relayer.rc.credentials.current().map(|c| c.token);
            if now != before
                && current.as_ref() == Some(&now)
                && link.connected
                && link.session_id != session_before
                && !demo.relayer.rc.credentials.rotation_pending()
            {
                return Ok(format!(
                    "Secret {}/{} holds the new token; new session {}",
                    super::SECRET_NAMESPACE,
                    super::SECRET_NAME,
                    link.session_id.unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("the Secret was not updated, or no session on the new token, within 10 s".into())
    })
}

fn metrics<'a>(
    demo: &'a Demo,
    client: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let url = format!("{}/metrics", demo.health);
        let text = client
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(
                    "consonant_relayer_commands_total{action=\"ping\",status=\"succeeded\"}",
                )
            })
            .ok_or("no ping counter in /metrics")?;
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if count >= 2.0 {
            Ok(format!("{count} pings succeeded"))
        } else {
            Err(format!("expected at least 2 pings, metrics say: {line}"))
        }
    })
}

fn apply_sample<'a>(
    demo: &'a Demo,
    _: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let result = demo.apply_sample().await.map_err(|e| e.to_string())?;
        let applied = &result["output"]["applied"][0];
        Ok(format!(
            "{} {}/{} applied",
            applied["kind"], applied["namespace"], applied["name"]
        )
        .replace('"', ""))
    })
}

fn unsigned_scale_refused<'a>(
    demo: &'a Demo,
    _: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let target = serde_json::json!({"api_version": "apps/v1", "kind": "Deployment", "namespace": "default", "name": "web"});
        let (status, result) = demo
            .send(&serde_json::json!({"scale": {"target": target, "replicas": 3}}))
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success()
            && result["status"] == "REJECTED"
            && result["error"]["code"] == "SIGNATURE_INVALID"
        {
            Ok("REJECTED SIGNATURE_INVALID, nothing ran".into())
        } else {
            Err(format!(
                "expected REJECTED SIGNATURE_INVALID, got HTTP {status}: {result}"
            ))
        }
    })
}

fn scale_to_three<'a>(
    demo: &'a Demo,
    _: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let target = serde_json::json!({"api_version": "apps/v1", "kind": "Deployment", "namespace": "default", "name": "web"});
        let scaled = demo
            .command(serde_json::json!({"scale": {"target": target, "replicas": 3}}))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let running = running_pods(demo).await?;
            if running.len() == 3 {
                return Ok(format!(
                    "replicas {} → 3, pods running",
                    scaled["output"]["previous_replicas"]
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("3 pods were not running within 10 s".into())
    })
}

async fn running_pods(demo: &Demo) -> Result<Vec<String>, String> {
    let listed = demo
        .command(serde_json::json!({"list": {"api_version": "v1", "kind": "Pod", "namespace": "default", "label_selector": "app=web"}}))
        .await
        .map_err(|e| e.to_string())?;
    Ok(listed["output"]["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

fn read_logs<'a>(
    demo: &'a Demo,
    _: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let pod = running_pods(demo)
            .await?
            .into_iter()
            .next()
            .ok_or("no running pod")?;
        let logs = demo
            .command(
                serde_json::json!({"logs": {"namespace": "default", "pod": pod, "tail_lines": 5}}),
            )
            .await
            .map_err(|e| e.to_string())?;
        let lines = logs["output"]["lines"].as_u64().unwrap_or(0);
        if lines > 0 {
            Ok(format!("{lines} lines from {pod}"))
        } else {
            Err(format!("no log lines: {logs}"))
        }
    })
}

fn readiness_event<'a>(
    demo: &'a Demo,
    client: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        let url = format!(
            "{}/api/v1/clusters/{}/events?limit=100",
            demo.admin, demo.cluster_id
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let events = get_json(client, &url).await?;
            if let Some(event) = events.as_array().and_then(|list| {
                list.iter()
                    .rev()
                    .find(|e| e["kind"] == "workload.status" && e["object"]["name"] == "web")
            }) {
                return Ok(format!(
                    "workload.status for Deployment web: {}",
                    event["payload"]
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("no workload.status event for web within 10 s".into())
    })
}

fn send_spans<'a>(
    demo: &'a Demo,
    client: &'a reqwest::Client,
) -> futures::future::BoxFuture<'a, StepResult> {
    Box::pin(async move {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        use prost::Message;
        let telemetry_url = format!(
            "{}/api/v1/clusters/{}/telemetry",
            demo.admin, demo.cluster_id
        );
        let before = get_json(client, &telemetry_url).await?["spans"]
            .as_u64()
            .unwrap_or(0);
        let spans = (0..10u64)
            .map(|i| Span {
                trace_id: vec![7; 16],
                span_id: (i + 1).to_be_bytes().to_vec(),
                name: format!("agent.step.{i}"),
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let response = client
            .post(format!("{}/v1/traces", demo.otlp_http))
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("OTLP/HTTP answered {}", response.status()));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let spans = get_json(client, &telemetry_url).await?["spans"]
                .as_u64()
                .unwrap_or(0);
            if spans >= before + 10 {
                return Ok(format!("{} spans counted by the backend", spans - before));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("the backend did not count 10 spans within 10 s".into())
    })
}
