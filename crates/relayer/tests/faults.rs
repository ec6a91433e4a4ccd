//! Faults on purpose (issue 17), short versions: the relayer against the
//! reference backend across the fault rig (`common/fault_rig.rs`: real veth
//! links between network namespaces, packets through a userspace netem),
//! with a steady mix of pings, rollout restarts on the real API server and
//! spans while the fault runs, and the invariants checked from outside the
//! relayer afterwards:
//!
//! - every command the test submitted has a final result at the backend,
//!   counted in the backends' frame journal (which outlives a killed
//!   backend), and ran once: `commands_total` over every status equals the
//!   commands sent for a relayer that lived through the fault; for one that
//!   was killed, exactly one result per command;
//! - no rollout restart took effect twice: a rollout restart writes its
//!   command id into the pod template, and a watch the test keeps on the
//!   Deployment records every change of its spec (`common/kube_writes.rs`):
//!   each command took effect at most once, each success exactly once, the
//!   generation moved once per change, and every write the audit log shows
//!   answered 2xx is among them;
//! - every span the relayer accepted arrived exactly once or is counted as
//!   dropped (`TelemetryStats`); a SIGKILLed process loses what it held in
//!   memory, which is counted and reported, never duplicated;
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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault_rig::{report, short_or_long, FaultRig, Journal};
use common::kube_writes::{audit_of_restart, check_restarts_once, restart_writes, SpecHistory};
use common::*;
use consonant_kube_testenv::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{json, Value};

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
/// Rollout restarts carry this prefix; pings the scenario's own.
const RESTART: &str = "restart-";

/// The rig, its backend keeping each relayer's own heartbeat interval
/// (`[connection] heartbeat_interval`, sent in `Hello`): 500 ms here, 2 s
/// where a scenario slows it for a slow link.
fn rig() -> FaultRig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FaultRig::new(None).unwrap_or_else(|why| panic!("{why}"))
}

/// The checks of `common::kube_writes`, table-tested: a second write of
/// one restart, a success never written, a stray write all fail.
#[test]
fn restart_write_checks_catch_a_second_effect() {
    let names = |names: &[&str]| -> Vec<String> { names.iter().map(|s| s.to_string()).collect() };
    let writes = |pairs: &[(&str, usize)]| -> HashMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let sent = names(&["a", "b", "c"]);
    let ok: HashSet<String> = names(&["a", "b"]).into_iter().collect();
    assert_eq!(
        check_restarts_once(&writes(&[("a", 1), ("b", 1)]), &sent, &ok),
        Ok(2)
    );
    // c failed after its write landed: a write without a success.
    assert_eq!(
        check_restarts_once(&writes(&[("a", 1), ("b", 1), ("c", 1)]), &sent, &ok),
        Ok(3)
    );
    for bad in [
        writes(&[("a", 2), ("b", 1)]),
        writes(&[("a", 1)]),
        writes(&[("a", 1), ("b", 1), ("", 1)]),
        writes(&[("a", 1), ("b", 1), ("z", 1)]),
    ] {
        assert!(check_restarts_once(&bad, &sent, &ok).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------- spans

/// Fixed OTLP listen addresses, so a relayer started again listens where
/// the exporter sends (as a pod's Service does).
struct OtlpPorts {
    grpc: SocketAddr,
    http: SocketAddr,
}

impl OtlpPorts {
    fn new() -> Self {
        Self {
            grpc: free_addr(),
            http: free_addr(),
        }
    }

    /// The `[telemetry]` section, with the buffer the RSS bound counts.
    fn section(&self) -> String {
        format!(
            "enabled = true\notlp_grpc_listen = \"{}\"\notlp_http_listen = \"{}\"\nflush_interval = \"100ms\"\nbuffer_bytes = \"8MiB\"",
            self.grpc, self.http
        )
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// Spans the test's exporter got a 200 for, per relayer process: epoch `i`
/// is the `i`-th process the scenario started. The test moves to the next
/// epoch after a process is gone (killed and reaped, or exited) and before
/// it starts the next, so a request whose epoch did not change between its
/// send and its 200 was taken by that epoch's process; one the epoch
/// changed under is counted as straddling (the test cannot tell which
/// process took it; the exporter sends one request at a time, so at most
/// one per change).
#[derive(Default)]
struct SpanLedger {
    epoch: AtomicUsize,
    accepted: Mutex<Vec<u64>>,
    straddled: AtomicU64,
}

impl SpanLedger {
    fn next_epoch(&self) {
        self.epoch.fetch_add(1, Relaxed);
    }

    fn record(&self, sent_in: usize, spans: u64) {
        if self.epoch.load(Relaxed) == sent_in {
            let mut accepted = self.accepted.lock().unwrap();
            if accepted.len() <= sent_in {
                accepted.resize(sent_in + 1, 0);
            }
            accepted[sent_in] += spans;
        } else {
            self.straddled.fetch_add(spans, Relaxed);
        }
    }

    fn accepted_in(&self, epoch: usize) -> u64 {
        self.accepted
            .lock()
            .unwrap()
            .get(epoch)
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.accepted.lock().unwrap().iter().sum::<u64>() + self.straddled.load(Relaxed)
    }
}

/// An OTLP exporter as the collector's behaves: 10-span requests every
/// 50 ms, a refused one (429/503, "retry later", or no answer) sent again
/// until taken.
fn send_spans(
    otlp: String,
    stop: Arc<AtomicBool>,
    ledger: Arc<SpanLedger>,
) -> tokio::task::JoinHandle<()> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    tokio::spawn(async move {
        let client = reqwest::Client::new();
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
                let epoch = ledger.epoch.load(Relaxed);
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
                        ledger.record(epoch, 10);
                        break;
                    }
                    429 | 503 | 0 => tokio::time::sleep(Duration::from_millis(100)).await,
                    other => panic!("OTLP/HTTP answered {other}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// The process's `incarnation` (from `/health`), as its frames carry it.
async fn incarnation_of(relayer: &Relayer) -> String {
    relayer.json("/health").await.expect("/health")["incarnation"]
        .as_str()
        .expect("/health names the incarnation")
        .to_string()
}

/// Every span a live relayer accepted arrived exactly once or is counted as
/// dropped in its `TelemetryStats` (`/metrics`): waits for the journal to
/// settle there; returns the drops.
async fn assert_spans_exact(
    rig: &FaultRig,
    relayer: &Relayer,
    incarnation: &str,
    accepted: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let arrived = rig
            .journal()
            .spans_by_incarnation()
            .get(incarnation)
            .copied()
            .unwrap_or(0);
        let dropped = relayer
            .metric("consonant_relayer_telemetry_items_dropped", "")
            .await as u64;
        assert!(
            arrived <= accepted,
            "{arrived} spans arrived of {accepted} accepted: duplicates"
        );
        if arrived + dropped == accepted {
            return dropped;
        }
        assert!(
            Instant::now() < deadline,
            "{accepted} spans accepted, {arrived} arrived, {dropped} dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Telemetry across relayer processes the scenario killed (or that exited):
/// the last one's spans all arrived or are counted dropped; no process
/// delivered more than it accepted (no span twice); what the others held
/// in memory when they died is lost, counted here and reported. Returns the
/// report's telemetry column.
async fn account_spans_across_processes(
    rig: &FaultRig,
    last: &Relayer,
    incarnations: &[String],
    ledger: &SpanLedger,
) -> String {
    let final_epoch = incarnations.len() - 1;
    let dropped = assert_spans_exact(
        rig,
        last,
        &incarnations[final_epoch],
        ledger.accepted_in(final_epoch),
    )
    .await;
    let arrived = rig.journal().spans_by_incarnation();
    let strangers: Vec<_> = arrived
        .keys()
        .filter(|i| !incarnations.contains(i))
        .collect();
    assert!(
        strangers.is_empty(),
        "spans from unknown incarnations: {strangers:?}"
    );
    let straddled = ledger.straddled.load(Relaxed);
    for (epoch, incarnation) in incarnations[..final_epoch].iter().enumerate() {
        let delivered = arrived.get(incarnation).copied().unwrap_or(0);
        let took = ledger.accepted_in(epoch);
        assert!(
            delivered <= took + straddled,
            "process {epoch} delivered {delivered} spans, accepted {took} (+{straddled} straddling a restart): duplicates"
        );
    }
    let total_arrived: u64 = arrived.values().sum();
    let accepted = ledger.total();
    assert!(
        total_arrived + dropped <= accepted,
        "{total_arrived} spans arrived and {dropped} dropped of {accepted} accepted: duplicates"
    );
    let lost = accepted - total_arrived - dropped;
    format!(
        "{accepted} spans accepted: {total_arrived} arrived once, {dropped} dropped (reported), {lost} lost in the memory of {final_epoch} ended processes"
    )
}

// ------------------------------------------------------------- commands

/// The durable half of a real backend, played by the test: every command it
/// submitted (through the admin API, on the rig's management link, which
/// faults never touch), so it can send again to a restarted backend — which
/// remembers nothing — whatever has no result in the journal yet.
/// Submissions wait out a backend restart.
struct Submitter {
    http: String,
    client: reqwest::Client,
    sent: Mutex<Vec<(String, Value)>>,
}

impl Submitter {
    fn new(http: String) -> Arc<Self> {
        Arc::new(Self {
            http,
            client: reqwest::Client::new(),
            sent: Mutex::new(Vec::new()),
        })
    }

    async fn submit(&self, body: Value) {
        let id = body["command_id"].as_str().expect("command_id").to_string();
        self.sent.lock().unwrap().push((id, body.clone()));
        self.post(&body).await;
    }

    /// Posts until the backend takes it (202); a submission of an id the
    /// backend already has is a no-op there.
    async fn post(&self, body: &Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .client
                .post(format!(
                    "{}/api/v1/clusters/{CLUSTER_ID}/commands",
                    self.http
                ))
                .json(body)
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    assert_eq!(status, 202, "{}", resp.text().await.unwrap_or_default());
                    return;
                }
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "the admin API did not answer for 30 s: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Sends again every command with no result in `journal`; returns how
    /// many.
    async fn resend_unanswered(&self, journal: &Journal) -> usize {
        let answered = journal.results();
        let unanswered: Vec<Value> = self
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| !answered.contains_key(id))
            .map(|(_, body)| body.clone())
            .collect();
        for body in &unanswered {
            self.post(body).await;
        }
        unanswered.len()
    }

    fn ids(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn ping_body(id: &str) -> Value {
    json!({"command_id": id, "ping": {}})
}

fn restart_body(namespace: &str, id: &str) -> Value {
    json!({"command_id": id, "restart": {"target": {
        "api_version": "apps/v1", "kind": "Deployment",
        "namespace": namespace, "name": "web"}}})
}

/// Pings with ids `<prefix>-<n>`, one every `every`, until `stop`.
fn submit_pings(
    submitter: Arc<Submitter>,
    prefix: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Relaxed) {
            submitter.submit(ping_body(&format!("{prefix}-{n}"))).await;
            n += 1;
            tokio::time::sleep(every).await;
        }
    })
}

/// Rollout restarts of `web`, one every `every`, until `stop`: several can
/// be in flight at once.
fn submit_restarts(
    submitter: Arc<Submitter>,
    namespace: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Relaxed) {
            let id = format!("{RESTART}{n}");
            submitter.submit(restart_body(&namespace, &id)).await;
            n += 1;
            tokio::time::sleep(every).await;
        }
    })
}

/// Rollout restarts of `web` one at a time, the next once the journal has
/// a result for the one before, until `stop` — as an orchestrator that
/// sends one state change per object at a time. A relayer process killed
/// mid-restart loses its dedup memory with it; the restart the backend
/// then sends again to the next process is recognised by its own
/// annotation on the object and not written twice. (Two restarts of one
/// object in flight across a crash are the case the protocol leaves open:
/// re-running the older after the newer landed writes again;
/// docs/reliability.md.)
fn submit_restarts_one_at_a_time(
    submitter: Arc<Submitter>,
    journal: std::path::PathBuf,
    namespace: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Relaxed) {
            let id = format!("{RESTART}{n}");
            submitter.submit(restart_body(&namespace, &id)).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !Journal::read(&journal).results().contains_key(&id) {
                assert!(Instant::now() < deadline, "{id} unanswered after 60 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n += 1;
        }
    })
}

/// Waits until every id has a result in the journal; returns the results
/// per command (count, last status).
async fn wait_all_answered(
    rig: &FaultRig,
    ids: &[String],
    within: Duration,
) -> HashMap<String, (u32, String)> {
    let deadline = Instant::now() + within;
    loop {
        let results = rig.journal().results();
        let missing: Vec<&String> = ids.iter().filter(|id| !results.contains_key(*id)).collect();
        if missing.is_empty() {
            return results;
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

/// Commands answered more than once (a result replayed after a lost ack
/// and the dedup cache's answer to the command sent again: at-least-once
/// delivery, which the backend dedups by command id).
fn answered_more_than_once<'a>(
    results: &HashMap<String, (u32, String)>,
    ids: &'a [String],
) -> Vec<&'a String> {
    ids.iter()
        .filter(|id| results.get(*id).is_some_and(|(n, _)| *n > 1))
        .collect()
}

/// The rollout restarts among `ids`.
fn restart_ids(ids: &[String]) -> Vec<String> {
    ids.iter()
        .filter(|id| id.starts_with(RESTART))
        .cloned()
        .collect()
}

/// One run per command in a relayer that lived through the fault:
/// `commands_total` over every status equals the commands sent, per
/// action (a re-run would count twice; a duplicate answered from the dedup
/// cache counts nothing), and none was refused (the limits are raised).
async fn assert_one_run_each(relayer: &Relayer, pings: usize, restarts: usize) {
    let runs = |labels: String| async move {
        relayer
            .metric("consonant_relayer_commands_total", &labels)
            .await as usize
    };
    for (action, sent) in [("ping", pings), ("restart", restarts)] {
        assert_eq!(
            runs(format!("action=\"{action}\",status=\"rejected\"")).await,
            0,
            "{action}s refused"
        );
        assert_eq!(
            runs(format!("action=\"{action}\"")).await,
            sent,
            "one run per {action}"
        );
    }
}

// ----------------------------------------------------------- Kubernetes

/// The sample Deployment `web` in a namespace of its own on the real API
/// server: the object the scenarios' rollout restarts write to, its spec's
/// history followed from its creation (`SpecHistory`).
struct Workload {
    plane: &'static ControlPlane,
    namespace: String,
    generation_before: i64,
    history: SpecHistory,
}

impl Workload {
    async fn create() -> Self {
        let plane = ControlPlane::shared();
        let namespace = plane.namespace("faults").await;
        let web: Deployment =
            serde_yaml_ng::from_str(consonant_kube_sim::SAMPLE_DEPLOYMENT).unwrap();
        let client = plane.client().await;
        let created = kube::Api::<Deployment>::namespaced(client.clone(), &namespace)
            .create(&Default::default(), &web)
            .await
            .expect("create the sample Deployment");
        Self {
            plane,
            namespace,
            generation_before: created.metadata.generation.unwrap_or_default(),
            history: SpecHistory::follow(client, &created),
        }
    }

    async fn generation(&self) -> i64 {
        kube::Api::<Deployment>::namespaced(self.plane.client().await, &self.namespace)
            .get("web")
            .await
            .expect("get web")
            .metadata
            .generation
            .unwrap_or_default()
    }

    /// No rollout restart took effect twice and each success took effect,
    /// by the Deployment's history (every spec change and the restart id it
    /// carried); the audit log's 2xx writes all appear there. Returns a
    /// summary for the report.
    async fn check_effects(
        &self,
        restart_ids: &[String],
        results: &HashMap<String, (u32, String)>,
        relayer_output: &str,
    ) -> String {
        let succeeded: HashSet<String> = restart_ids
            .iter()
            .filter(|id| results.get(*id).is_some_and(|(_, s)| s == "SUCCEEDED"))
            .cloned()
            .collect();
        let generation = self.generation().await;
        let applied = self
            .history
            .applied(generation)
            .await
            .unwrap_or_else(|why| panic!("{why}"));
        let took_effect = check_restarts_once(&applied, restart_ids, &succeeded)
            .unwrap_or_else(|why| {
                // What each witness saw of the commands involved.
                let involved: Vec<&String> = applied.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
                let mut seen = String::new();
                for id in involved {
                    let history: Vec<_> = self.history.changes().into_iter().filter(|(_, i)| i == id).collect();
                    let audit = audit_of_restart(self.plane, &self.namespace, "web", id);
                    let runs: Vec<&str> = relayer_output.lines().filter(|l| l.contains(&format!("={id} ")) || l.ends_with(&format!("={id}"))).collect();
                    seen.push_str(&format!("\n{id}: history {history:?}\n  audit {audit:#?}\n  relayer {runs:#?}\n  result {:?}", results.get(id)));
                }
                panic!("{why}{seen}")
            });
        let moved = generation - self.generation_before;
        assert_eq!(
            moved as usize, took_effect,
            "generation moves vs changes in the history"
        );
        let answered_2xx = restart_writes(self.plane, &self.namespace, "web");
        for (id, n) in &answered_2xx {
            assert!(
                applied.get(id).is_some_and(|a| a >= n),
                "{id}: {n} writes answered 2xx, {:?} in the history",
                applied.get(id)
            );
        }
        let unanswered = took_effect - answered_2xx.values().sum::<usize>();
        format!(
            "{} rollout restarts: {} succeeded, {took_effect} took effect (none twice; {unanswered} without a 2xx answer), generation +{moved}",
            restart_ids.len(),
            succeeded.len()
        )
    }
}

// ------------------------------------------------------------- watching

/// What the relayer did during a scenario, seen from outside by a task
/// that runs beside it.
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

impl Watch {
    /// `/livez` never failed and RSS stayed under its bound; returns the
    /// peak RSS.
    fn check(&self) -> u64 {
        self.stop.store(true, Relaxed);
        assert_eq!(
            self.livez_failures.load(Relaxed),
            0,
            "/livez failed during the fault ({} checks)",
            self.livez_checks.load(Relaxed)
        );
        assert!(self.livez_checks.load(Relaxed) > 10);
        let max_rss_kib = self.max_rss_kib.load(Relaxed);
        assert!(
            max_rss_kib > 0 && max_rss_kib < RSS_BOUND_KIB,
            "RSS {max_rss_kib} KiB (bound {RSS_BOUND_KIB} KiB)"
        );
        max_rss_kib
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

// ------------------------------------------------------------ the mix

/// The steady mix a scenario with one relayer process runs under: pings,
/// rollout restarts of `web` on the real API server and spans, all flowing
/// through the rig while the test breaks the path or the backend; the
/// relayer watched from outside (`/livez`, RSS) throughout.
struct MixedLoad {
    relayer: Arc<Relayer>,
    workload: Workload,
    submitter: Arc<Submitter>,
    ledger: Arc<SpanLedger>,
    watch: Arc<Watch>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    prefix: &'static str,
}

/// What a scenario's mixed load came to, its invariants checked.
struct MixedOutcome {
    commands: usize,
    results: usize,
    redelivered: usize,
    max_rss_kib: u64,
    kube: String,
    telemetry: String,
}

impl MixedLoad {
    /// Starts the relayer (telemetry and Kubernetes on, `connection` as its
    /// `[connection]` section) against the rig's backend, then the load:
    /// a ping every 50 ms (ids start with `prefix`), a rollout restart every
    /// 400 ms, 10 spans every 50 ms.
    async fn start(rig: &FaultRig, connection: &str, prefix: &'static str) -> Self {
        let workload = Workload::create().await;
        let otlp = OtlpPorts::new();
        let mut options = RelayerOptions::to(&rig.grpc_url(), &rig.http_url())
            .connection(connection)
            .commands(COMMANDS)
            .kubernetes(&workload.plane.kubeconfig, false);
        options.telemetry = otlp.section();
        let relayer = Arc::new(Relayer::start(options));
        relayer.wait_connected().await;
        let watch = watch(&relayer);
        let stop = Arc::new(AtomicBool::new(false));
        let submitter = Submitter::new(rig.http_url());
        let ledger = Arc::new(SpanLedger::default());
        let tasks = vec![
            submit_pings(
                submitter.clone(),
                prefix,
                Duration::from_millis(50),
                stop.clone(),
            ),
            send_spans(otlp.url(), stop.clone(), ledger.clone()),
            submit_restarts(
                submitter.clone(),
                workload.namespace.clone(),
                Duration::from_millis(400),
                stop.clone(),
            ),
        ];
        Self {
            relayer,
            workload,
            submitter,
            ledger,
            watch,
            stop,
            tasks,
            prefix,
        }
    }

    /// Stops the load once the fault has healed, waits up to `settle` for
    /// every command's result, and checks the invariants.
    async fn finish(self, rig: &FaultRig, settle: Duration) -> MixedOutcome {
        self.stop.store(true, Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let ids = self.submitter.ids();
        let restart_ids = restart_ids(&ids);
        let pings = ids.iter().filter(|id| id.starts_with(self.prefix)).count();
        let results = wait_all_answered(rig, &ids, settle).await;
        let incarnation = incarnation_of(&self.relayer).await;
        let accepted = self.ledger.total();
        let dropped = assert_spans_exact(rig, &self.relayer, &incarnation, accepted).await;
        self.relayer.wait_connected().await;
        let max_rss_kib = self.watch.check();
        assert_one_run_each(&self.relayer, pings, restart_ids.len()).await;
        let kube = self
            .workload
            .check_effects(&restart_ids, &results, &self.relayer.output())
            .await;
        MixedOutcome {
            commands: ids.len(),
            results: ids.iter().filter(|id| results.contains_key(*id)).count(),
            redelivered: answered_more_than_once(&results, &ids).len(),
            max_rss_kib,
            kube,
            telemetry: format!(
                "{accepted} spans accepted: all arrived once or dropped ({dropped} dropped, reported)"
            ),
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
            &self.telemetry,
        );
    }
}

// ----------------------------------------------------------- scenarios

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
        "black hole: {} commands; {}; reconnected {reconnect:?} after the heal; max RSS {} KiB; wire {}",
        done.commands,
        done.telemetry,
        done.max_rss_kib,
        rig.wire_counters()
    );
    done.report(
        &format!("black hole {hole:?}, then heal"),
        &format!("{reconnect:.2?} after the heal"),
        &format!("{detected:.2?}"),
    );
}

/// 5 % loss with 200 ms ± 100 ms of delay each way (so reordering too) for
/// a while, then a clean path: TCP retransmits under it, heartbeats arrive
/// late but within 3 intervals or the stream is redialled; either way every
/// command ends with a result and runs once.
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
        "loss and delay: {} commands; {}; max RSS {} KiB; wire {}",
        done.commands,
        done.telemetry,
        done.max_rss_kib,
        rig.wire_counters()
    );
    done.report(&format!("5 % loss, 200 ± 100 ms, {lossy:?}"), "—", "—");
}

/// A thin link: 64 kbit/s each way, below what the mix offers (the spans
/// alone are some 80 kbit/s), behind a queue of 10 packets per direction
/// (about 2 s of full-size packets at that rate: a buffer sized for the
/// link, as fq_codel or a sane `limit` keeps it). TCP's congestion control
/// backs off at the tail drops; the relayer's backlog grows in its replay
/// buffer, results wait behind telemetry (reliable frames go in `seq`
/// order), heartbeats (2 s here, as for the lossy link) keep the session;
/// when the link widens, everything drains: every command answered and run
/// once, every span arrived or counted dropped. (With netem's default
/// 1,000-packet queue the uplink's queue grows by seconds every few
/// seconds, the relayer's ACKs of the backend's segments wait behind it and
/// the backend's side stalls: docs/reliability.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thin_link_delays_but_loses_no_command_and_no_span() {
    let mut rig = rig();
    let connection = CONNECTION.replace("\"500ms\"", "\"2s\"");
    let load = MixedLoad::start(&rig, &connection, "bw").await;
    let relayer = load.relayer.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.impair("rate_kbit=64 limit=10");
    let thin = short_or_long(Duration::from_secs(10), Duration::from_secs(300));
    tokio::time::sleep(thin).await;
    let health = relayer.json("/health").await.expect("/health");
    rig.impair("rate_kbit=0 limit=1000");
    let done = load.finish(&rig, Duration::from_secs(120)).await;
    let sessions = relayer.metric("consonant_relayer_sessions_total", "").await;
    eprintln!(
        "thin link: {} commands; {}; max RSS {} KiB; sessions {sessions}; wire {}; health at the end of it {}",
        done.commands,
        done.telemetry,
        done.max_rss_kib,
        rig.wire_counters(),
        health["grpc"]
    );
    done.report(
        &format!("64 kbit/s each way for {thin:?}"),
        &format!("{sessions} sessions in all"),
        "—",
    );
}

/// The backend SIGKILLed and restarted, and the stream reset from the
/// backend's side (`ss -K`), at random moments while the mix flows. The
/// test plays the durable part of a real backend: the journal keeps what
/// each backend acked, and whatever a killed backend had not answered is
/// sent again, with the same id, to the next one. Every command ends with a
/// result and runs once: the relayer answers a re-sent one from its dedup
/// cache; every span arrives once (a batch one backend acked and another
/// got again is deduplicated on `(incarnation, seq)`, as the protocol says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_restarts_and_stream_cuts_lose_no_command_and_run_none_twice() {
    let restarts = short_or_long(4, 20);
    let cuts = short_or_long(6, 50);
    let mut rig = rig();
    let load = MixedLoad::start(&rig, CONNECTION, "rs").await;
    let relayer = load.relayer.clone();
    let mut faults: Vec<bool> = [vec![true; restarts], vec![false; cuts]].concat();
    // A fixed shuffle per run, printed so a failure can be replayed.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("backend restarts and cuts: seed {seed}");
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
    let mut reconnects = Vec::new();
    let mut resent = 0;
    for restart in faults {
        tokio::time::sleep(Duration::from_millis(300 + random(700))).await;
        if restart {
            rig.kill_backend();
            tokio::time::sleep(Duration::from_millis(random(500))).await;
            rig.start_backend();
            // The new backend knows nothing: send it what is unanswered.
            resent += load.submitter.resend_unanswered(&rig.journal()).await;
        } else {
            rig.cut_streams();
        }
        let started = Instant::now();
        relayer.wait_connected().await;
        reconnects.push(started.elapsed());
    }
    let done = load.finish(&rig, Duration::from_secs(30)).await;
    let slowest = reconnects.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= BREAKER_PLUS_BACKOFF_CAP,
        "slowest reconnect {slowest:?} (bound {BREAKER_PLUS_BACKOFF_CAP:?}; seed {seed})"
    );
    eprintln!(
        "restarts and cuts: {} commands, {resent} sent again to a restarted backend; {}; {restarts} restarts, {cuts} cuts; slowest reconnect {slowest:?}; max RSS {} KiB (seed {seed})",
        done.commands, done.telemetry, done.max_rss_kib
    );
    let mut sorted = reconnects.clone();
    sorted.sort();
    done.report(
        &format!("backend SIGKILLed {restarts}×, stream cut {cuts}×"),
        &format!("median {:.2?}, max {slowest:.2?}", sorted[sorted.len() / 2]),
        "—",
    );
}

/// The mix a scenario that ends relayer processes runs under: the relayer
/// is started again by the test (with the same configuration and OTLP
/// ports, as Kubernetes restarts a container), so no `/livez` watch, and
/// rollout restarts one at a time (`submit_restarts_one_at_a_time`).
struct Restartable {
    rig_grpc: String,
    rig_http: String,
    kubeconfig: std::path::PathBuf,
    otlp: OtlpPorts,
}

impl Restartable {
    fn new(rig: &FaultRig, workload: &Workload) -> Self {
        Self {
            rig_grpc: rig.grpc_url(),
            rig_http: rig.http_url(),
            kubeconfig: workload.plane.kubeconfig.clone(),
            otlp: OtlpPorts::new(),
        }
    }

    fn options(&self) -> RelayerOptions {
        let mut options = RelayerOptions::to(&self.rig_grpc, &self.rig_http)
            .connection(CONNECTION)
            .commands(COMMANDS)
            .kubernetes(&self.kubeconfig, false);
        options.telemetry = self.otlp.section();
        options
    }
}

/// The relayer SIGKILLed while the mix flows and started again (a new
/// incarnation, as a pod restart makes one): what the killed process had
/// read but not answered, the backend sends again on the new session, so
/// every command ends with exactly one result at the backend, and no
/// rollout restart is written twice (the process that runs one again finds
/// its annotation already there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayer_killed_mid_command_and_restarted_loses_no_command() {
    let kills = short_or_long(3, 10);
    let rig = rig();
    let workload = Workload::create().await;
    let setup = Restartable::new(&rig, &workload);
    let mut relayer = Relayer::start(setup.options());
    relayer.wait_connected().await;
    let mut incarnations = vec![incarnation_of(&relayer).await];
    let submitter = Submitter::new(rig.http_url());
    let ledger = Arc::new(SpanLedger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = [
        submit_pings(
            submitter.clone(),
            "kill",
            Duration::from_millis(10),
            stop.clone(),
        ),
        send_spans(setup.otlp.url(), stop.clone(), ledger.clone()),
        submit_restarts_one_at_a_time(
            submitter.clone(),
            rig.journal_path(),
            workload.namespace.clone(),
            stop.clone(),
        ),
    ];
    let mut restarts = Vec::new();
    let mut max_rss = 0;
    let mut relayer_outputs = String::new();
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(400 + 200 * round as u64)).await;
        max_rss = max_rss.max(relayer.rss_kib());
        relayer_outputs.push_str(&relayer.output());
        drop(relayer); // SIGKILL, and reaped
        ledger.next_epoch();
        let started = Instant::now();
        relayer = Relayer::start(setup.options());
        relayer.wait_connected().await;
        restarts.push(started.elapsed());
        incarnations.push(incarnation_of(&relayer).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    max_rss = max_rss.max(relayer.rss_kib());
    relayer_outputs.push_str(&relayer.output());
    let ids = submitter.ids();
    let results = wait_all_answered(&rig, &ids, Duration::from_secs(30)).await;
    let twice = answered_more_than_once(&results, &ids);
    assert!(
        twice.is_empty(),
        "commands with more than one result: {twice:?}"
    );
    let restart_ids = restart_ids(&ids);
    let kube = workload
        .check_effects(&restart_ids, &results, &relayer_outputs)
        .await;
    let telemetry = account_spans_across_processes(&rig, &relayer, &incarnations, &ledger).await;
    assert!(max_rss < RSS_BOUND_KIB, "RSS {max_rss} KiB");
    eprintln!(
        "relayer killed {kills} times: {} commands, each one result; {kube}; {telemetry}; connected again after {restarts:?}",
        ids.len()
    );
    report(
        &format!("relayer SIGKILLed {kills}× (pings, {kube})"),
        ids.len(),
        results.len(),
        twice.len(),
        max_rss,
        &format!("max {:.2?} from start", restarts.iter().max().unwrap()),
        "—",
        &telemetry,
    );
}

/// A restart storm: the CommandRouter panics on every batch it reads
/// (`FAILPOINTS`, compiled in with the `failpoints` feature), its
/// supervisor restarts it until the intensity (5 in 60 s) is exceeded, the
/// root escalates and the process exits 70 — and the test starts it again,
/// as Kubernetes restarts a crashed container. The commands the storm
/// swallowed (pings and rollout restarts) are sent again by the backend to
/// the new process and each ends with exactly one result and one run;
/// spans flow throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_storm_ends_in_exit_70_and_a_restart_loses_no_command() {
    let rig = rig();
    let workload = Workload::create().await;
    let setup = Restartable::new(&rig, &workload);
    let mut stormy = Relayer::start(setup.options().env("FAILPOINTS", "router-incoming=panic"));
    stormy.wait_connected().await;
    let mut incarnations = vec![incarnation_of(&stormy).await];
    let submitter = Submitter::new(rig.http_url());
    let ledger = Arc::new(SpanLedger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let spans = send_spans(setup.otlp.url(), stop.clone(), ledger.clone());
    // Commands keep coming until the storm ends the process (each batch
    // the router reads is one panic; the supervisor's backoff between
    // restarts lets commands queue into fewer batches, so a fixed count
    // might not reach the intensity): a ping every 50 ms, every fourth
    // followed by a rollout restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut pings, mut restarts) = (0, 0);
    while stormy.is_running() {
        assert!(
            Instant::now() < deadline,
            "the storm did not end the process in 60 s: {}",
            stormy.output()
        );
        submitter.submit(ping_body(&format!("storm-{pings}"))).await;
        pings += 1;
        if pings % 4 == 0 {
            let id = format!("{RESTART}{restarts}");
            submitter
                .submit(restart_body(&workload.namespace, &id))
                .await;
            restarts += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = stormy.wait_exit(Duration::from_secs(1)).expect("exited");
    assert_eq!(status.code(), Some(70), "{}", stormy.output());
    ledger.next_epoch();
    let calm = Relayer::start(setup.options());
    calm.wait_connected().await;
    incarnations.push(incarnation_of(&calm).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    spans.await.unwrap();
    let ids = submitter.ids();
    let results = wait_all_answered(&rig, &ids, Duration::from_secs(20)).await;
    let twice = answered_more_than_once(&results, &ids);
    assert!(
        twice.is_empty(),
        "commands with more than one result: {twice:?}"
    );
    // Nothing ran in the storm (the router never got a command through),
    // so the calm process ran each command once.
    assert_one_run_each(&calm, pings, restarts).await;
    let restart_ids = restart_ids(&ids);
    let relayer_outputs = stormy.output() + &calm.output();
    let kube = workload
        .check_effects(&restart_ids, &results, &relayer_outputs)
        .await;
    let telemetry = account_spans_across_processes(&rig, &calm, &incarnations, &ledger).await;
    eprintln!("restart storm: {} commands; {kube}; {telemetry}", ids.len());
    report(
        &format!("restart storm: router panics until exit 70, restarted (pings, {kube})"),
        ids.len(),
        results.len(),
        twice.len(),
        calm.rss_kib(),
        "—",
        "—",
        &telemetry,
    );
}
