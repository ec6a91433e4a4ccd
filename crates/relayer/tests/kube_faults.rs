//! Faults on purpose (issue 17), the control-plane part: the real
//! kube-apiserver stopped for a few seconds and started again while
//! rollout restarts are in flight and the relayer watches workloads, then
//! etcd stopped and started again. Its own test binary: restarting the API
//! server would disturb the other tests sharing its control plane. Short
//! version (one round of outages) in the test command; `scripts/soak` runs
//! it with the rest (`CONSONANT_SOAK=1`: several rounds).
//!
//! What the outages look like from the relayer: on SIGTERM kube-apiserver
//! stops listening at once and finishes the requests it has, but does not
//! exit while clients keep watches open (the relayer's among them): the
//! relayer's watches hang, silent, until the script SIGKILLs it 10 s later
//! (see `scripts/kube-testenv`); then it stays stopped [`API_SERVER_DOWN`]
//! and serves again a little before its `/readyz` says so. etcd, on
//! SIGTERM, goes on serving the API server's connection for some 9 s while
//! it drains, then is gone for [`ETCD_DOWN`] and its start; the API server
//! holds the requests meanwhile.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::fault_rig::{report, results_per_command, short_or_long};
use common::kube_writes::{check_restarts_once, restart_writes};
use common::*;
use consonant_dev_backend::DevBackendHandle;
use consonant_kube_testenv::{ControlPlane, Restarted};
use consonant_relayer::proto::{command, command_result::Status, Command, CommandResult};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;

const CONNECTION: &str = r#"
heartbeat_interval = "500ms"
backoff_base = "100ms"
backoff_max = "2s"
breaker_open_duration = "2s"
"#;

/// How long kube-apiserver stays stopped (after it exited) in each round.
const API_SERVER_DOWN: Duration = Duration::from_secs(3);
/// How long etcd stays stopped in each round.
const ETCD_DOWN: Duration = Duration::from_secs(2);
/// The pace of rollout restarts, kept up through the outages.
const SPACING: Duration = Duration::from_millis(200);
/// Rollout restarts sent once the control plane is back, per round.
const AFTER: usize = 5;

/// One rollout restart sent, and what became of it.
struct Sent {
    id: String,
    at: Instant,
    status: i32,
}

/// When one round's outages were, as seen here.
struct Outages {
    /// From SIGTERM (kube-apiserver stops listening at once) until its
    /// `/readyz` answered again.
    api_server: (Instant, Instant),
    api_server_measured: Restarted,
    /// From etcd's exit until it was healthy again (after SIGTERM it goes
    /// on serving the API server's connection while it drains).
    etcd: (Instant, Instant),
    etcd_measured: Restarted,
}

fn restart_command(id: &str, namespace: &str) -> Command {
    Command {
        command_id: id.to_string(),
        action: Some(command::Action::Restart(
            consonant_relayer::proto::RestartWorkload {
                target: Some(consonant_relayer::proto::ObjectRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    namespace: namespace.to_string(),
                    name: "web".into(),
                    uid: String::new(),
                }),
            },
        )),
        ..Default::default()
    }
}

/// A Deployment's readiness as the relayer's detector defines it
/// (`watch/detect.rs`): known once its controller wrote a status and the
/// desired count is set; ready when the controller observed the current
/// generation and every desired replica is ready.
fn ready_per_detector(deployment: &Deployment) -> Option<bool> {
    let status = deployment.status.as_ref()?;
    let desired = deployment.spec.as_ref()?.replicas?;
    let observed = match (status.observed_generation, deployment.metadata.generation) {
        (_, None) => true,
        (Some(observed), Some(generation)) => observed >= generation,
        (None, Some(_)) => false,
    };
    Some(observed && status.ready_replicas.unwrap_or(0) == desired)
}

/// `component` stopped for `down` and started again (off the async
/// threads: the script blocks): when it was told to stop, what the script
/// measured, and when it was back.
async fn outage(component: &'static str, down: Duration) -> (Instant, Restarted, Instant) {
    let stop = Instant::now();
    let measured = tokio::task::spawn_blocking(move || {
        ControlPlane::shared().restart_after_down(component, down)
    })
    .await
    .unwrap();
    (stop, measured, Instant::now())
}

/// One round: rollout restarts every [`SPACING`] while kube-apiserver is
/// stopped for [`API_SERVER_DOWN`] and started again, then etcd for
/// [`ETCD_DOWN`], and [`AFTER`] more once both are back. Waits for every
/// result.
async fn round(backend: &DevBackendHandle, namespace: &str, round: usize) -> (Vec<Sent>, Outages) {
    let faults = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (stop, api_server_measured, back) = outage("kube-apiserver", API_SERVER_DOWN).await;
        let api_server = (stop, back);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (stop, etcd_measured, back) = outage("etcd", ETCD_DOWN).await;
        Outages {
            api_server,
            api_server_measured,
            etcd: (stop + etcd_measured.stopping, back),
            etcd_measured,
        }
    });
    let state = backend.state().clone();
    let mut waiters = Vec::new();
    let mut after = 0;
    while after < AFTER {
        if faults.is_finished() {
            after += 1;
        }
        let id = format!("restart-{round}-{}", waiters.len());
        let waiter = state
            .submit_command(CLUSTER_ID, restart_command(&id, namespace))
            .expect("submit");
        waiters.push((id, Instant::now(), waiter));
        tokio::time::sleep(SPACING).await;
    }
    let outages = faults.await.unwrap();
    let mut sent = Vec::new();
    for (id, at, waiter) in waiters {
        let result: CommandResult = tokio::time::timeout(Duration::from_secs(90), waiter)
            .await
            .unwrap_or_else(|_| panic!("{id} is answered"))
            .expect("result sender kept");
        sent.push(Sent {
            id,
            at,
            status: result.status,
        });
    }
    (sent, outages)
}

/// The results in the order sent, one letter each (S succeeded, F failed,
/// T timed out, ? other), with `[` `]` around those sent while
/// kube-apiserver was out and `{` `}` around those sent while etcd was down.
fn timeline(sent: &[Sent], outages: &[Outages]) -> String {
    let within = |at: Instant, (from, to): (Instant, Instant)| at >= from && at <= to;
    let mut line = String::new();
    let mut open = None;
    for s in sent {
        let now = if outages.iter().any(|o| within(s.at, o.api_server)) {
            Some(('[', ']'))
        } else if outages.iter().any(|o| within(s.at, o.etcd)) {
            Some(('{', '}'))
        } else {
            None
        };
        if now != open {
            if let Some((_, close)) = open {
                line.push(close);
            }
            if let Some((start, _)) = now {
                line.push(start);
            }
            open = now;
        }
        line.push(match Status::try_from(s.status) {
            Ok(Status::Succeeded) => 'S',
            Ok(Status::Failed) => 'F',
            Ok(Status::TimedOut) => 'T',
            _ => '?',
        });
    }
    if let Some((_, close)) = open {
        line.push(close);
    }
    line
}

/// "succeeded 3, failed 2, timed out 0" for these commands.
fn tally<'a>(sent: impl Iterator<Item = &'a Sent>) -> (usize, String) {
    let mut counts: HashMap<i32, usize> = HashMap::new();
    let mut n = 0;
    for s in sent {
        *counts.entry(s.status).or_default() += 1;
        n += 1;
    }
    let count = |status: Status| counts.get(&(status as i32)).copied().unwrap_or(0);
    (
        n,
        format!(
            "{} succeeded, {} failed, {} timed out",
            count(Status::Succeeded),
            count(Status::Failed),
            count(Status::TimedOut)
        ),
    )
}

/// kube-apiserver stopped mid-command and mid-watch, then etcd, while
/// rollout restarts of one Deployment flow:
/// - every restart has exactly one result, SUCCEEDED, FAILED or TIMED_OUT
///   (those the outage hit among them);
/// - per the API server's audit log, no restart was written twice, every
///   one that SUCCEEDED was written once, and nothing else wrote; the
///   Deployment's generation moved once per write (a restart writes its
///   command id into the pod template; one that failed because the API
///   server went away mid-request may or may not have been applied);
/// - the watches resumed: a Deployment made after the outages is reported
///   ready exactly once, `web` never had the same readiness reported twice
///   in a row (the re-lists after the restarts included), and once the
///   rollouts settled its last reported readiness is the API server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_stopped_mid_command_and_mid_watch_then_etcd_restarted() {
    let rounds = short_or_long(1, 4);
    let plane = ControlPlane::shared();
    let ns = plane.namespace("faults").await;
    let backend = backend().await;
    let relayer = Relayer::start(
        RelayerOptions::new(&backend)
            .connection(CONNECTION)
            .kubernetes(&plane.kubeconfig, false),
    );
    relayer.wait_connected().await;
    let apply = Command {
        command_id: "apply-web".into(),
        ..apply_manifest(&ns, consonant_kube_sim::SAMPLE_DEPLOYMENT)
    };
    let applied = run_command(&backend, apply).await;
    assert_eq!(applied.status, Status::Succeeded as i32, "{applied:?}");
    // The watch is up and has reported web before the first outage.
    assert!(
        eventually(Duration::from_secs(30), || readiness_reported(
            &backend, &ns, "web"
        )
        .last()
            == Some(&true))
        .await,
        "web reported ready before the outages: {:?}",
        readiness_reported(&backend, &ns, "web")
    );
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(plane.client().await, &ns);
    let generation = |d: &Deployment| d.metadata.generation.unwrap_or_default();
    let before = generation(&deployments.get("web").await.unwrap());
    let watch_failures_before = relayer.output().matches("watch failed").count();

    let started = Instant::now();
    let mut sent = Vec::new();
    let mut outages = Vec::new();
    for r in 0..rounds {
        let (round_sent, round_outages) = round(&backend, &ns, r).await;
        sent.extend(round_sent);
        outages.push(round_outages);
    }

    // Exactly one final result each (a retryable REJECTED, which the
    // backend answers by sending the command again, is not final).
    let counts = results_per_command(&backend.http_url()).await;
    for s in &sent {
        if counts.get(&s.id) != Some(&1) {
            let frames = common::fault_rig::backend_json(
                &backend.http_url(),
                &format!("/api/v1/clusters/{CLUSTER_ID}/frames"),
            )
            .await;
            let of_it: Vec<&Value> = frames["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["command_id"] == s.id.as_str())
                .collect();
            let output = relayer.output();
            let said: Vec<&str> = output
                .lines()
                .filter(|l| l.contains(&format!("command_id={} ", s.id)))
                .collect();
            panic!(
                "{}: {:?} final results; its frames {of_it:#?}; the relayer on it {said:#?}",
                s.id,
                counts.get(&s.id)
            );
        }
        assert!(
            [Status::Succeeded, Status::Failed, Status::TimedOut]
                .iter()
                .any(|status| *status as i32 == s.status),
            "{} ended {:?}",
            s.id,
            Status::try_from(s.status)
        );
    }
    let in_window = |s: &Sent, (from, to): (Instant, Instant)| s.at >= from && s.at <= to;
    let (hit_api, hit_api_tally) = tally(
        sent.iter()
            .filter(|s| outages.iter().any(|o| in_window(s, o.api_server))),
    );
    let (hit_etcd, hit_etcd_tally) = tally(
        sent.iter()
            .filter(|s| outages.iter().any(|o| in_window(s, o.etcd))),
    );
    let (_, all_tally) = tally(sent.iter());
    assert!(
        hit_api > 0,
        "some rollout restarts were sent while the API server was down"
    );
    // Once both are back, rollout restarts work again: the last of each
    // round (sent at least 4 spacings after etcd was back) succeeded.
    for o in &outages {
        let last = sent
            .iter()
            .rfind(|s| s.at > o.etcd.1)
            .expect("restarts sent after the outages");
        assert_eq!(
            last.status,
            Status::Succeeded as i32,
            "{} (after the outages) did not succeed",
            last.id
        );
    }

    // No restart written twice, each success written once, nothing else
    // written but the apply of web.
    let ids: Vec<String> = sent.iter().map(|s| s.id.clone()).collect();
    let succeeded: HashSet<String> = sent
        .iter()
        .filter(|s| s.status == Status::Succeeded as i32)
        .map(|s| s.id.clone())
        .collect();
    let mut writes = restart_writes(plane, &ns, "web");
    assert_eq!(
        writes.remove(""),
        Some(1),
        "the apply of web is the one write of web that is not a restart"
    );
    let total_writes = check_restarts_once(&writes, &ids, &succeeded)
        .unwrap_or_else(|why| panic!("{why}\nwrites: {writes:?}"));
    let lost_answers = writes.keys().filter(|id| !succeeded.contains(*id)).count();
    // The API server answers again (etcd may take a moment after its restart).
    let mut after = None;
    for _ in 0..60 {
        if let Ok(d) = deployments.get("web").await {
            after = Some(generation(&d));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let moved = after.expect("the API server answers after the restarts") - before;
    assert_eq!(
        moved, total_writes as i64,
        "the generation moved once per restart written"
    );

    // Mid-watch: a workload made after the outages is reported, once.
    let web2 = consonant_kube_sim::SAMPLE_DEPLOYMENT
        .replace("name: web", "name: web2")
        .replace("app: web", "app: web2");
    let apply2 = Command {
        command_id: "apply-web2".into(),
        ..apply_manifest(&ns, &web2)
    };
    let applied = run_command(&backend, apply2).await;
    assert_eq!(applied.status, Status::Succeeded as i32, "{applied:?}");
    let web2_ready = || {
        readiness_reported(&backend, &ns, "web2")
            .iter()
            .filter(|ready| **ready)
            .count()
    };
    assert!(
        eventually(Duration::from_secs(60), || web2_ready() >= 1).await,
        "web2, made after the outages, is reported ready: {:?}\n{}",
        readiness_reported(&backend, &ns, "web2"),
        relayer.output()
    );
    // Once the rollouts settled (the API server says web is ready), the
    // last readiness reported for web is the same.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (agreed, api_ready) = loop {
        let reported = readiness_reported(&backend, &ns, "web").last().copied();
        let api_ready = deployments
            .get("web")
            .await
            .ok()
            .as_ref()
            .and_then(ready_per_detector);
        if api_ready == Some(true) && reported == Some(true) {
            break (true, api_ready);
        }
        if Instant::now() > deadline {
            break (false, api_ready);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let web_reported = readiness_reported(&backend, &ns, "web");
    assert!(
        agreed,
        "web settled and its last reported readiness is the API server's: API {api_ready:?}, reported {web_reported:?}"
    );
    // Never the same readiness twice in a row, re-lists included.
    if let Some(i) = (1..web_reported.len()).find(|&i| web_reported[i] == web_reported[i - 1]) {
        panic!(
            "web's readiness {} was reported twice in a row (events {} and {} of {web_reported:?})",
            web_reported[i],
            i - 1,
            i
        );
    }
    assert_eq!(
        web2_ready(),
        1,
        "web2 reported ready exactly once: {:?}",
        readiness_reported(&backend, &ns, "web2")
    );
    let watch_failures = relayer.output().matches("watch failed").count() - watch_failures_before;
    assert!(
        watch_failures > 0,
        "the outages broke the relayer's watches (which then resumed):\n{}",
        relayer.output()
    );

    let seconds = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let list =
        |f: &dyn Fn(&Outages) -> String| outages.iter().map(f).collect::<Vec<_>>().join(", ");
    // SIGTERM makes kube-apiserver stop listening at once; it exits once
    // its open watches ended (or at the script's SIGKILL, 10 s later).
    let api_out = list(&|o| {
        let m = o.api_server_measured;
        format!(
            "{} ({} exiting + {} stopped and starting)",
            seconds(m.stopping + m.down),
            seconds(m.stopping),
            seconds(m.down)
        )
    });
    let etcd_out = list(&|o| {
        format!(
            "{} (after {} draining)",
            seconds(o.etcd_measured.down),
            seconds(o.etcd_measured.stopping)
        )
    });
    let summary = format!(
        "{} rollout restarts: {all_tally}; {hit_api} sent while kube-apiserver was out ({hit_api_tally}), {hit_etcd} while etcd was down ({hit_etcd_tally}); {total_writes} API writes ({lost_answers} by restarts not answered SUCCEEDED), generation +{moved}; web: {} workload.status events, never the same readiness twice in a row, the last = the API server's; web2 (made after) reported ready once; {watch_failures} watch failures, resumed",
        sent.len(),
        web_reported.len(),
    );
    eprintln!(
        "kube-apiserver out {api_out} (kept stopped {}), then etcd down {etcd_out} (kept stopped {}), ×{rounds}, in {:.1} s: {summary}\nresults in the order sent: {}",
        seconds(API_SERVER_DOWN),
        seconds(ETCD_DOWN),
        started.elapsed().as_secs_f64(),
        timeline(&sent, &outages),
    );
    report(
        &format!(
            "kube-apiserver stopped {} mid-command and mid-watch, then etcd {}, ×{rounds}, under rollout restarts",
            seconds(API_SERVER_DOWN),
            seconds(ETCD_DOWN)
        ),
        sent.len(),
        sent.iter().filter(|s| counts.contains_key(&s.id)).count(),
        0,
        relayer.rss_kib(),
        "—",
        "—",
        &summary,
    );
}
