//! Faults on purpose (issue 17), short versions: the relayer against the
//! reference backend across the fault rig (`common/fault_rig.rs`: real veth
//! links between network namespaces, packets through a userspace netem),
//! with a steady stream of commands while the fault runs, and the
//! invariants checked from outside the relayer afterwards:
//!
//! - every command the test submitted has exactly one result at the
//!   backend (counted in the backend's record of reliable frames, where a
//!   second result for one command would show as a second frame);
//! - `/livez` never failed (polled every 100 ms throughout);
//! - the relayer's RSS (from `/proc`) stayed under `replay_buffer_bytes +
//!   telemetry.buffer_bytes + dedup_max_bytes + 40 MiB`;
//! - after the fault heals, the relayer is connected again within one
//!   breaker period plus the backoff cap.
//!
//! Needs root (the rig says why when it cannot be built). Its own test
//! binary: the rig re-runs it as the backend process
//! (`fault_rig_backend_process`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fault_rig::{backend_json, report, results_per_command, short_or_long, FaultRig};
use common::*;
use serde_json::json;

/// The rig's backend process: returns at once unless the rig started it.
#[test]
fn fault_rig_backend_process() {
    common::fault_rig::backend_process();
}

/// Tight timings so a scenario takes seconds: dead streams are found after
/// 3 heartbeats (1.5 s), reconnects back off to at most 2 s, the breaker
/// opens for 2 s.
const CONNECTION: &str = r#"
heartbeat_interval = "500ms"
backoff_base = "100ms"
backoff_max = "2s"
breaker_open_duration = "2s"
replay_buffer_bytes = "8MiB"
"#;
/// The rate limit and the in-flight bound raised out of the way: after an
/// outage the backend sends its backlog at once (thousands of commands
/// after the 2-minute black hole), and the defaults (50/s with a burst of
/// 100; 64 in flight) answer part of it RATE_LIMITED or UNAVAILABLE,
/// retryable — results the backend replaces by sending the command again.
/// These scenarios count final results and runs per command, so they leave
/// load shedding to its own tests (`stream.rs`, `hostile_backend.rs`).
const COMMANDS: &str = r#"
dedup_max_bytes = "8MiB"
rate_per_second = 100000
burst = 100000
max_in_flight = 10000
"#;
const BREAKER_PLUS_BACKOFF_CAP: Duration = Duration::from_secs(4);
/// replay (8 MiB) + telemetry buffer (8 MiB) + dedup (8 MiB) + 40 MiB.
const RSS_BOUND_KIB: u64 = (8 + 8 + 8 + 40) * 1024;

/// Telemetry on (OTLP/HTTP on a loopback port), with the buffer the RSS
/// bound counts; returns the options and the OTLP/HTTP base URL.
fn with_telemetry(options: RelayerOptions) -> (RelayerOptions, String) {
    let otlp = free_addr();
    let mut options = options;
    options.telemetry = format!(
        "enabled = true\notlp_grpc_listen = \"{}\"\notlp_http_listen = \"{otlp}\"\nflush_interval = \"100ms\"\nbuffer_bytes = \"8MiB\"",
        free_addr()
    );
    (options, format!("http://{otlp}"))
}

/// An OTLP exporter as the collector's behaves: 10-span requests every
/// 50 ms, a refused one (429/503, "retry later") sent again until taken.
/// Returns the spans the relayer accepted.
fn send_spans(otlp: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut accepted = 0u64;
        let mut batch = 0u64;
        while !stop.load(Relaxed) {
            let spans = (0..10u64)
                .map(|i| Span {
                    trace_id: vec![7; 16],
                    span_id: (batch * 10 + i + 1).to_be_bytes().to_vec(),
                    name: "agent.step".into(),
                    ..Default::default()
                })
                .collect();
            let body = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec();
            batch += 1;
            loop {
                let status = client
                    .post(format!("{otlp}/v1/traces"))
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                match status {
                    200 => {
                        accepted += 10;
                        break;
                    }
                    429 | 503 | 0 => tokio::time::sleep(Duration::from_millis(100)).await,
                    other => panic!("OTLP/HTTP answered {other}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        accepted
    })
}

/// Every accepted span arrived exactly once or is counted as dropped in
/// the `TelemetryStats` the relayer reports: waits for the backend's count
/// to settle there.
async fn assert_telemetry_accounted(http: &str, accepted: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = backend_json(http, &format!("/api/v1/clusters/{CLUSTER_ID}/telemetry")).await;
        let spans = t["spans"].as_u64().unwrap_or(0);
        let dropped = t["dropped_reported"].as_u64().unwrap_or(0);
        assert!(
            spans <= accepted,
            "{spans} spans arrived of {accepted} accepted: duplicates ({t})"
        );
        if spans + dropped == accepted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{accepted} spans accepted, {spans} arrived, {dropped} reported dropped ({t})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rig() -> FaultRig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FaultRig::new(Some(500)).unwrap_or_else(|why| panic!("{why}"))
}

/// What the relayer and the backend did during a scenario, gathered by
/// tasks that run beside it.
#[derive(Default)]
struct Watch {
    livez_failures: AtomicU64,
    livez_checks: AtomicU64,
    max_rss_kib: AtomicU64,
    stop: AtomicBool,
}

fn watch(relayer: &Arc<Relayer>) -> Arc<Watch> {
    let watch = Arc::new(Watch::default());
    let (w, r) = (watch.clone(), relayer.clone());
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        while !w.stop.load(Relaxed) {
            let ok = client
                .get(format!("{}/livez", r.health))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .map(|resp| resp.status().is_success())
                .unwrap_or(false);
            w.livez_checks.fetch_add(1, Relaxed);
            if !ok {
                w.livez_failures.fetch_add(1, Relaxed);
            }
            w.max_rss_kib.fetch_max(r.rss_kib(), Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    watch
}

/// Submits pings with the test's own ids through the admin API (on the
/// rig's management link, which faults never touch), one every `every`,
/// until `stop`; returns the ids submitted.
fn submit_pings(
    http: String,
    prefix: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut ids = Vec::new();
        let mut i = 0;
        while !stop.load(Relaxed) {
            let id = format!("{prefix}-{i}");
            let resp = client
                .post(format!("{http}/api/v1/clusters/{CLUSTER_ID}/commands"))
                .json(&json!({"command_id": id, "ping": {}}))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("the admin API answers on the management link");
            assert_eq!(
                resp.status().as_u16(),
                202,
                "{}",
                resp.text().await.unwrap()
            );
            ids.push(id);
            i += 1;
            tokio::time::sleep(every).await;
        }
        ids
    })
}

/// The sample Deployment `web`, created in a namespace of its own on the
/// real API server; returns the namespace.
async fn sample_deployment(plane: &consonant_kube_testenv::ControlPlane) -> String {
    use k8s_openapi::api::apps::v1::Deployment;
    let ns = plane.namespace("faults").await;
    let web: Deployment = serde_yaml_ng::from_str(consonant_kube_sim::SAMPLE_DEPLOYMENT).unwrap();
    kube::Api::<Deployment>::namespaced(plane.client().await, &ns)
        .create(&Default::default(), &web)
        .await
        .expect("create the sample Deployment");
    ns
}

/// Rollout restarts of `web` through the admin API, one every `every`,
/// until `stop`; returns the ids submitted.
fn submit_restarts(
    http: String,
    namespace: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut ids = Vec::new();
        while !stop.load(Relaxed) {
            let id = format!("restart-{}", ids.len());
            let body = json!({"command_id": id, "restart": {"target": {
                "api_version": "apps/v1", "kind": "Deployment",
                "namespace": namespace, "name": "web"}}});
            let resp = client
                .post(format!("{http}/api/v1/clusters/{CLUSTER_ID}/commands"))
                .json(&body)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("the admin API answers on the management link");
            assert_eq!(
                resp.status().as_u16(),
                202,
                "{}",
                resp.text().await.unwrap()
            );
            ids.push(id);
            tokio::time::sleep(every).await;
        }
        ids
    })
}

/// No command ran twice, though the backend sent again the ones a fault
/// swallowed: runs plus refusals add up to the commands sent (a re-run would
/// count twice; a duplicate answered from the dedup cache counts nothing),
/// and the API server saw at most one write per rollout restart. Returns a
/// summary for the report.
async fn kube_effects(
    relayer: &Relayer,
    plane: &consonant_kube_testenv::ControlPlane,
    namespace: &str,
    generation_before: i64,
    restart_ids: &[String],
    pings_sent: usize,
) -> String {
    let outcomes = |action: &'static str, status: &'static str| async move {
        let labels = if status.is_empty() {
            format!("action=\"{action}\"")
        } else {
            format!("action=\"{action}\",status=\"{status}\"")
        };
        relayer
            .metric("consonant_relayer_commands_total", &labels)
            .await as usize
    };
    let succeeded = outcomes("restart", "succeeded").await;
    let refused = outcomes("restart", "rejected").await;
    assert_eq!(
        refused + outcomes("ping", "rejected").await,
        0,
        "nothing refused (the limits are raised for these scenarios)"
    );
    assert_eq!(
        outcomes("restart", "").await,
        restart_ids.len(),
        "one outcome per rollout restart"
    );
    assert_eq!(
        outcomes("ping", "").await,
        pings_sent,
        "one outcome per ping"
    );
    // Every write carries its command's id into the pod template, so a
    // write that repeated an earlier command's would leave the generation
    // behind the count of writes. A restart that timed out or failed after
    // its write reached the API server is a write without a success.
    let writes = patches_of_web(plane, namespace);
    let moved = generation_of_web(plane, namespace).await - generation_before;
    assert_eq!(
        moved as usize, writes,
        "generation moves vs API writes to web"
    );
    assert!(
        writes >= succeeded && writes <= restart_ids.len(),
        "{writes} API writes for {} restarts, {succeeded} succeeded",
        restart_ids.len()
    );
    format!(
        "{} rollout restarts: {succeeded} succeeded, {refused} refused, {writes} API writes, generation +{moved}",
        restart_ids.len()
    )
}

/// `web`'s `metadata.generation`.
async fn generation_of_web(plane: &consonant_kube_testenv::ControlPlane, namespace: &str) -> i64 {
    use k8s_openapi::api::apps::v1::Deployment;
    kube::Api::<Deployment>::namespaced(plane.client().await, namespace)
        .get("web")
        .await
        .expect("get web")
        .metadata
        .generation
        .unwrap_or_default()
}

/// The API server's writes (`patch`) to `web` in `namespace`, from its
/// audit log: one per rollout restart that took effect.
fn patches_of_web(plane: &consonant_kube_testenv::ControlPlane, namespace: &str) -> usize {
    plane
        .audit_events()
        .iter()
        .filter(|e| {
            e["verb"] == "patch"
                && e["stage"] == "ResponseComplete"
                && e["objectRef"]["resource"] == "deployments"
                && e["objectRef"]["namespace"] == namespace
                && e["objectRef"]["name"] == "web"
                && e["objectRef"]["subresource"].is_null()
                && e["responseStatus"]["code"]
                    .as_u64()
                    .is_some_and(|c| c < 300)
        })
        .count()
}

/// Waits until every id has a completed result at the backend; panics with
/// the ones missing.
async fn wait_all_completed(http: &str, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let counts = results_per_command(http).await;
        let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} commands have no result after {within:?}: {:?}",
            missing.len(),
            ids.len(),
            &missing[..missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_connected_within(relayer: &Relayer, within: Duration) -> Duration {
    let started = Instant::now();
    relayer
        .wait_health(within + Duration::from_secs(10), |h| {
            h["grpc"]["connected"] == true
        })
        .await;
    started.elapsed()
}

/// The steady mix a network-fault scenario runs under: pings, rollout
/// restarts of `web` on the real API server and spans, all flowing through
/// the rig while the test breaks the path; the relayer watched from outside
/// (`/livez`, RSS) throughout.
struct MixedLoad {
    relayer: Arc<Relayer>,
    plane: &'static consonant_kube_testenv::ControlPlane,
    namespace: String,
    generation_before: i64,
    watch: Arc<Watch>,
    stop: Arc<AtomicBool>,
    pings: tokio::task::JoinHandle<Vec<String>>,
    spans: tokio::task::JoinHandle<u64>,
    restarts: tokio::task::JoinHandle<Vec<String>>,
}

/// What a scenario's mixed load came to, its invariants checked.
struct MixedOutcome {
    commands: usize,
    results: usize,
    redelivered: usize,
    accepted_spans: u64,
    max_rss_kib: u64,
    kube: String,
}

impl MixedLoad {
    /// Starts the relayer (telemetry and Kubernetes on, `connection` as its
    /// `[connection]` section) against the rig's backend, then the load;
    /// command ids start with `prefix`.
    async fn start(rig: &FaultRig, connection: &str, prefix: &'static str) -> Self {
        let plane = consonant_kube_testenv::ControlPlane::shared();
        let namespace = sample_deployment(plane).await;
        let generation_before = generation_of_web(plane, &namespace).await;
        let (options, otlp) = with_telemetry(
            RelayerOptions::to(&rig.grpc_url(), &rig.http_url())
                .connection(connection)
                .commands(COMMANDS)
                .kubernetes(&plane.kubeconfig, false),
        );
        let relayer = Arc::new(Relayer::start(options));
        relayer.wait_connected().await;
        let watch = watch(&relayer);
        let stop = Arc::new(AtomicBool::new(false));
        let pings = submit_pings(
            rig.http_url(),
            prefix,
            Duration::from_millis(50),
            stop.clone(),
        );
        let spans = send_spans(otlp, stop.clone());
        let restarts = submit_restarts(
            rig.http_url(),
            namespace.clone(),
            Duration::from_millis(400),
            stop.clone(),
        );
        Self {
            relayer,
            plane,
            namespace,
            generation_before,
            watch,
            stop,
            pings,
            spans,
            restarts,
        }
    }

    /// Stops the load once the fault has healed, waits up to `settle` for
    /// every command's result, and checks the invariants: every accepted
    /// span arrived once or is reported dropped, one run per command and at
    /// most one API write per rollout restart, `/livez` never failed, RSS
    /// under its bound, connected again.
    async fn finish(self, rig: &FaultRig, settle: Duration) -> MixedOutcome {
        self.stop.store(true, Relaxed);
        let mut ids = self.pings.await.unwrap();
        let accepted_spans = self.spans.await.unwrap();
        let restart_ids = self.restarts.await.unwrap();
        let pings_sent = ids.len();
        ids.extend(restart_ids.iter().cloned());
        wait_all_completed(&rig.http_url(), &ids, settle).await;
        assert_telemetry_accounted(&rig.http_url(), accepted_spans).await;
        self.relayer.wait_connected().await;
        self.watch.stop.store(true, Relaxed);
        let kube = kube_effects(
            &self.relayer,
            self.plane,
            &self.namespace,
            self.generation_before,
            &restart_ids,
            pings_sent,
        )
        .await;
        // Results are delivered at least once: a result lost with the
        // stream is replayed on the next session, and if the backend sent
        // the command again meanwhile, the dedup cache answers it too — the
        // same result twice, for the backend to dedup by command id. Runs
        // are what must be one per command (checked above); re-deliveries
        // are counted.
        let counts = results_per_command(&rig.http_url()).await;
        let redelivered = counts.values().filter(|n| **n > 1).count();
        assert_eq!(
            self.watch.livez_failures.load(Relaxed),
            0,
            "/livez failed during the fault ({} checks)",
            self.watch.livez_checks.load(Relaxed)
        );
        assert!(self.watch.livez_checks.load(Relaxed) > 50);
        let max_rss_kib = self.watch.max_rss_kib.load(Relaxed);
        assert!(
            max_rss_kib > 0 && max_rss_kib < RSS_BOUND_KIB,
            "RSS {max_rss_kib} KiB (bound {RSS_BOUND_KIB} KiB)"
        );
        MixedOutcome {
            commands: ids.len(),
            results: counts.len(),
            redelivered,
            accepted_spans,
            max_rss_kib,
            kube,
        }
    }
}

impl MixedOutcome {
    fn report(&self, fault: &str, reconnects: &str, detection: &str) {
        report(
            &format!("{fault} (pings, {})", self.kube),
            self.commands,
            self.results,
            self.redelivered,
            self.max_rss_kib,
            reconnects,
            detection,
            &format!("{} spans accepted, all accounted for", self.accepted_spans),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_then_heal_loses_no_command_and_runs_none_twice() {
    let mut rig = rig();
    let load = MixedLoad::start(&rig, CONNECTION, "bh").await;
    let relayer = load.relayer.clone();

    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.black_hole(true);
    let dark = Instant::now();
    // Dead-stream detection: no frame for 3 heartbeat intervals (1.5 s).
    relayer
        .wait_health(Duration::from_secs(10), |h| h["grpc"]["connected"] == false)
        .await;
    let detected = dark.elapsed();
    // Then long enough for the relayer's redials to fail into the breaker
    // (6 s; the soak: 2 minutes).
    let hole = short_or_long(Duration::from_secs(6), Duration::from_secs(120));
    tokio::time::sleep(hole.saturating_sub(detected)).await;
    let during = relayer.json("/health").await.expect("/health");
    assert_eq!(
        during["grpc"]["connected"], false,
        "the relayer still sees the black hole: {during}"
    );
    rig.black_hole(false);
    let reconnect = wait_connected_within(&relayer, BREAKER_PLUS_BACKOFF_CAP).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The backlog arrives at once after the heal: after the 2-minute hole,
    // some 300 rollout restarts, each a new ReplicaSet for the controller
    // manager and the API server on the same 2 cores, take minutes to settle.
    let settle = short_or_long(Duration::from_secs(20), Duration::from_secs(300));
    let done = load.finish(&rig, settle).await;
    assert!(
        reconnect <= BREAKER_PLUS_BACKOFF_CAP,
        "connected again {reconnect:?} after the heal (bound {BREAKER_PLUS_BACKOFF_CAP:?})"
    );
    eprintln!(
        "black hole: {} commands, each one result; {} spans accounted for; reconnected {reconnect:?} after the heal; max RSS {} KiB; wire {}",
        done.commands,
        done.accepted_spans,
        done.max_rss_kib,
        rig.wire_counters()
    );
    done.report(
        &format!("black hole {hole:?}, then heal"),
        &format!("{reconnect:.2?} after the heal"),
        &format!("{detected:.2?}"),
    );
}

/// The pings the relayer ran (`commands_total`, status `succeeded`): a
/// duplicate answered from the dedup cache is not a run, nor is a command
/// refused before it ran (after an outage the backend sends its backlog at
/// once, and the rate limit answers part of it RateLimited, retryable; the
/// backend sends those again).
async fn pings_executed(relayer: &Relayer) -> f64 {
    relayer
        .metric(
            "consonant_relayer_commands_total",
            "action=\"ping\",status=\"succeeded\"",
        )
        .await
}

/// Ids whose command has a final result at the backend now.
async fn completed(http: &str, ids: &[String]) -> Vec<String> {
    let counts = results_per_command(http).await;
    ids.iter()
        .filter(|id| counts.contains_key(*id))
        .cloned()
        .collect()
}

async fn submit(client: &reqwest::Client, http: &str, id: &str) {
    let resp = client
        .post(format!("{http}/api/v1/clusters/{CLUSTER_ID}/commands"))
        .json(&json!({"command_id": id, "ping": {}}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the admin API answers on the management link");
    assert_eq!(
        resp.status().as_u16(),
        202,
        "{}",
        resp.text().await.unwrap()
    );
}

/// The backend SIGKILLed and restarted, and the stream reset from the
/// backend's side (`ss -K`), at random moments while pings flow. The test
/// plays the durable part of a real backend: whatever a killed backend had
/// not answered is sent again, with the same id, to the next one. Every
/// ping ends with a result and none runs twice: the relayer answers a
/// re-sent one from its dedup cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_restarts_and_stream_cuts_lose_no_command_and_run_none_twice() {
    let restarts = short_or_long(4, 20);
    let cuts = short_or_long(6, 50);
    let mut rig = rig();
    let http = rig.http_url();
    let relayer = Arc::new(Relayer::start(
        RelayerOptions::to(&rig.grpc_url(), &http)
            .connection(CONNECTION)
            .commands(COMMANDS),
    ));
    relayer.wait_connected().await;
    let watch = watch(&relayer);
    let client = reqwest::Client::new();
    let mut faults: Vec<bool> = [vec![true; restarts], vec![false; cuts]].concat();
    // A fixed shuffle per run, printed so a failure can be replayed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut state = seed | 1;
    let mut random = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for i in (1..faults.len()).rev() {
        faults.swap(i, random(i as u64 + 1) as usize);
    }
    let mut ids: Vec<String> = Vec::new();
    let mut done: std::collections::HashSet<String> = Default::default();
    let mut reconnects = Vec::new();
    let mut next = 0;
    for restart in faults {
        // Pings for 300–1,000 ms, one every 20 ms.
        let until = Instant::now() + Duration::from_millis(300 + random(700));
        while Instant::now() < until {
            let id = format!("rs-{next}");
            next += 1;
            submit(&client, &http, &id).await;
            ids.push(id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done.extend(completed(&http, &ids).await);
        if restart {
            rig.kill_backend();
            tokio::time::sleep(Duration::from_millis(random(500))).await;
            rig.start_backend();
            // The new backend knows nothing: send it what is unanswered.
            for id in ids.iter().filter(|id| !done.contains(*id)) {
                submit(&client, &http, id).await;
            }
        } else {
            rig.cut_streams();
        }
        let started = Instant::now();
        relayer.wait_connected().await;
        reconnects.push(started.elapsed());
    }
    // Every id is answered: by a backend that is gone (seen before it went)
    // or by this one.
    let unanswered: Vec<String> = ids
        .iter()
        .filter(|id| !done.contains(*id))
        .cloned()
        .collect();
    wait_all_completed(&http, &unanswered, Duration::from_secs(20)).await;
    watch.stop.store(true, Relaxed);

    let executed = pings_executed(&relayer).await;
    assert_eq!(
        executed,
        ids.len() as f64,
        "pings executed by the relayer vs distinct pings sent (seed {seed})"
    );
    let slowest = reconnects.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= BREAKER_PLUS_BACKOFF_CAP,
        "slowest reconnect {slowest:?} (bound {BREAKER_PLUS_BACKOFF_CAP:?}; seed {seed})"
    );
    assert_eq!(
        watch.livez_failures.load(Relaxed),
        0,
        "/livez failed ({} checks; seed {seed})",
        watch.livez_checks.load(Relaxed)
    );
    let max_rss = watch.max_rss_kib.load(Relaxed);
    assert!(max_rss > 0 && max_rss < RSS_BOUND_KIB, "RSS {max_rss} KiB");
    eprintln!(
        "restarts and cuts: {} pings, {} answered before the last fault, {executed} executed; {restarts} restarts, {cuts} cuts; slowest reconnect {slowest:?}; max RSS {max_rss} KiB (seed {seed})",
        ids.len(),
        done.len()
    );
    let mut sorted = reconnects.clone();
    sorted.sort();
    report(
        &format!("backend SIGKILLed {restarts}×, stream cut {cuts}×"),
        ids.len(),
        ids.len(),
        executed as usize - ids.len(),
        max_rss,
        &format!("median {:.2?}, max {slowest:.2?}", sorted[sorted.len() / 2]),
        "—",
        "—",
    );
}

/// 5 % loss with 200 ms ± 100 ms of delay each way (so reordering too) for
/// a while, then a clean path: TCP retransmits under it, heartbeats arrive
/// late but within 3 intervals or the stream is redialled; either way every
/// ping ends with exactly one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_delay_and_reordering_lose_no_command_and_run_none_twice() {
    let mut rig = rig();
    // Slower heartbeats than the other scenarios: a 500 ms interval with
    // 600 ms round trips and retransmissions would be a test of the
    // heartbeat setting, not of the relayer.
    let connection = CONNECTION.replace("\"500ms\"", "\"2s\"");
    let load = MixedLoad::start(&rig, &connection, "ld").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.impair("delay_ms=200 jitter_ms=100 loss=0.05");
    let lossy = short_or_long(Duration::from_secs(8), Duration::from_secs(300));
    tokio::time::sleep(lossy).await;
    rig.impair("delay_ms=0 jitter_ms=0 loss=0");
    let done = load.finish(&rig, Duration::from_secs(30)).await;
    eprintln!(
        "loss and delay: {} commands, each one result; {} spans accounted for; max RSS {} KiB; wire {}",
        done.commands,
        done.accepted_spans,
        done.max_rss_kib,
        rig.wire_counters()
    );
    done.report(&format!("5 % loss, 200 ± 100 ms, {lossy:?}"), "—", "—");
}

/// The relayer SIGKILLed while pings flow and started again (a new
/// incarnation, as a pod restart makes one): what the killed process had
/// read but not answered, the backend sends again on the new session, so
/// every ping ends with exactly one result at the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayer_killed_mid_command_and_restarted_loses_no_command() {
    let kills = short_or_long(3, 10);
    let rig = rig();
    let options = || {
        RelayerOptions::to(&rig.grpc_url(), &rig.http_url())
            .connection(CONNECTION)
            .commands(COMMANDS)
    };
    let mut relayer = Relayer::start(options());
    relayer.wait_connected().await;
    let stop = Arc::new(AtomicBool::new(false));
    let pings = submit_pings(
        rig.http_url(),
        "kill",
        Duration::from_millis(10),
        stop.clone(),
    );
    let mut restarts = Vec::new();
    let mut max_rss = 0;
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(400 + 200 * round as u64)).await;
        max_rss = max_rss.max(relayer.rss_kib());
        drop(relayer); // SIGKILL
        let started = Instant::now();
        relayer = Relayer::start(options());
        relayer.wait_connected().await;
        restarts.push(started.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    let ids = pings.await.unwrap();
    wait_all_completed(&rig.http_url(), &ids, Duration::from_secs(20)).await;
    let counts = results_per_command(&rig.http_url()).await;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "commands with more than one result: {twice:?}"
    );
    eprintln!(
        "relayer killed {kills} times: {} pings, each one result; connected again after {restarts:?}",
        ids.len()
    );
    report(
        &format!("relayer SIGKILLed {kills}×"),
        ids.len(),
        counts.len(),
        twice.len(),
        max_rss,
        &format!("max {:.2?} from start", restarts.iter().max().unwrap()),
        "—",
        "—",
    );
}

/// A restart storm: the CommandRouter panics on every batch it reads
/// (`FAILPOINTS`, compiled in with the `failpoints` feature), its
/// supervisor restarts it until the intensity (5 in 60 s) is exceeded, the
/// root escalates and the process exits 70 — and the test starts it again,
/// as Kubernetes restarts a crashed container. The pings the storm
/// swallowed are re-sent by the backend to the new process and each ends
/// with exactly one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_storm_ends_in_exit_70_and_a_restart_loses_no_command() {
    let backend = backend().await;
    let http = backend.http_url();
    let mut stormy = Relayer::start(
        RelayerOptions::new(&backend)
            .connection(CONNECTION)
            .env("FAILPOINTS", "router-incoming=panic"),
    );
    stormy.wait_connected().await;
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..20).map(|i| format!("storm-{i}")).collect();
    for id in &ids {
        submit(&client, &http, id).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = stormy
        .wait_exit(Duration::from_secs(30))
        .expect("the storm ends the process");
    assert_eq!(status.code(), Some(70), "{}", stormy.output());
    let calm = Relayer::start(RelayerOptions::new(&backend).connection(CONNECTION));
    calm.wait_connected().await;
    wait_all_completed(&http, &ids, Duration::from_secs(20)).await;
    let counts = results_per_command(&http).await;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "commands with more than one result: {twice:?}"
    );
    assert_eq!(pings_executed(&calm).await, ids.len() as f64);
    report(
        "restart storm: router panics until exit 70, restarted",
        ids.len(),
        counts.len(),
        twice.len(),
        calm.rss_kib(),
        "—",
        "—",
        "—",
    );
}
