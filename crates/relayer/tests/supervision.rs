//! Supervision in the real binary: fail points (the `fail` crate, compiled
//! in with `--features failpoints`) make actors panic on cue, and the tests
//! check that supervisors restart them without losing frames, and that a
//! tree that keeps failing ends the process with a non-zero code.
#![cfg(feature = "failpoints")]

mod common;

use std::time::Duration;

use common::*;
use consonant_relayer::proto::command_result::Status;

#[tokio::test]
async fn panicking_connection_actor_is_restarted_and_unacked_frames_survive() {
    let backend = backend().await;
    let (grpc, http) = (backend.grpc_addr, backend.http_addr);
    // The first session end panics the ConnectionActor.
    let relayer = Relayer::start(
        RelayerOptions::new(&backend).env("FAILPOINTS", "connection-session-ended=1*panic"),
    );
    relayer.wait_connected().await;
    pings_with_acks_withheld(&backend, "p", 10).await;
    // Backend gone (with nothing acked): the session ends, the actor panics.
    backend.shutdown().await;
    let actors_ok = |relayer: &Relayer| {
        let relayer_health = relayer.health.clone();
        async move {
            let body: serde_json::Value = reqwest::get(format!("{relayer_health}/debug/actors"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["actors"]
                .as_array()?
                .iter()
                .find(|a| a["name"] == "ConnectionActor")
                .cloned()
        }
    };
    let mut restarted = None;
    for _ in 0..100 {
        if let Some(actor) = actors_ok(&relayer).await {
            if actor["restarts"].as_u64().unwrap_or(0) >= 1 {
                restarted = Some(actor);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let actor =
        restarted.unwrap_or_else(|| panic!("ConnectionActor not restarted\n{}", relayer.output()));
    assert_eq!(actor["restarts"], 1, "{actor}");
    let output = relayer.output();
    assert!(
        output.contains("child failed") && output.contains("panicked"),
        "the supervisor saw the panic as a failure\n{output}"
    );
    // A fresh backend on the same ports receives every unacked result.
    let revived = backend_on(Some(grpc), Some(http)).await;
    relayer.wait_connected().await;
    let all = eventually(Duration::from_secs(10), || {
        let frames = revived.state().frames(CLUSTER_ID).unwrap();
        (0..10).all(|i| {
            frames
                .frames
                .iter()
                .any(|f| f.command_id.as_deref() == Some(&format!("p-{i}")))
        })
    })
    .await;
    assert!(
        all,
        "unacked frames lost across the restart\n{}",
        relayer.output()
    );
    assert!(
        relayer
            .metric(
                "consonant_relayer_actor_restarts",
                "actor=\"ConnectionActor\""
            )
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn panicking_router_restarts_with_its_dependents_and_commands_still_run() {
    let backend = backend().await;
    // The router's first batch panics: rest_for_one restarts it and the ConnectionActor.
    let relayer =
        Relayer::start(RelayerOptions::new(&backend).env("FAILPOINTS", "router-incoming=1*panic"));
    relayer.wait_connected().await;
    // That command was read but never answered: the backend re-sends it on the next session.
    let result = run_command(&backend, ping("survivor", b"abc")).await;
    assert_eq!(result.status, Status::Succeeded as i32);
    let actors = relayer.json("/debug/actors").await.unwrap();
    let restarts = |name: &str| {
        actors["actors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["restarts"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(restarts("CommandRouter"), 1);
    assert_eq!(
        restarts("ConnectionActor"),
        1,
        "rest_for_one restarts what depends on the router"
    );
    assert_eq!(restarts("WorkloadExecutor"), 0, "but nothing before it");
}

#[tokio::test]
async fn restart_intensity_exceeded_escalates_and_the_process_exits_non_zero() {
    let backend = backend().await;
    // Every /health request panics the HealthActor; the root allows 5 restarts in 60 s.
    let mut relayer =
        Relayer::start(RelayerOptions::new(&backend).env("FAILPOINTS", "health-request=panic"));
    relayer.wait_health(Duration::from_secs(10), |_| true).await;
    let mut status = None;
    for _ in 0..400 {
        let _ = relayer.get("/health").await;
        if let Some(exit) = relayer.wait_exit(Duration::from_millis(50)) {
            status = Some(exit);
            break;
        }
    }
    let status = status.unwrap_or_else(|| panic!("the relayer kept running\n{}", relayer.output()));
    assert_eq!(status.code(), Some(70), "{}", relayer.output());
    assert!(relayer.output().contains("restart intensity exceeded"));
}

/// The invariant actors.md states: every command that ran gets exactly one
/// result, whatever restarts happen in between, and the in-flight gauges
/// return to zero. Kubernetes commands against the real API server are held
/// running (`executor-run-delay`) while the router panics (its batch is
/// lost and re-sent by the backend), the WorkloadExecutor panics on an
/// `Execute` (its command was never run: REJECTED/UNAVAILABLE, retried by
/// this test as a backend would), and the ConnectionActor panics at a drain.
#[tokio::test]
async fn every_command_that_ran_gets_exactly_one_result_whatever_restarts() {
    use consonant_kube_testenv::ControlPlane;
    use consonant_relayer::proto::{command, Command};
    let plane = ControlPlane::shared();
    let backend = backend().await;
    let relayer = Relayer::start(
        RelayerOptions::new(&backend)
            .kubernetes(&plane.kubeconfig, false)
            .env(
                "FAILPOINTS",
                "executor-run-delay=return(400);router-incoming=4*off->1*panic->off;executor-execute=7*off->1*panic->off;connection-session-ended=1*panic->off",
            ),
    );
    relayer.wait_connected().await;
    let shared = backend.state().clone();
    let submit = move |id: String| {
        let state = shared.clone();
        async move {
            // Retry what was refused retryably (never run), as a backend does.
            let mut answers = Vec::new();
            for _ in 0..60 {
                let waiter = state
                    .submit_command(
                        CLUSTER_ID,
                        Command {
                            command_id: id.clone(),
                            action: Some(command::Action::ClusterInfo(Default::default())),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                let result = tokio::time::timeout(Duration::from_secs(60), waiter)
                    .await
                    .expect("every command is answered")
                    .unwrap();
                let retry = result.status == Status::Rejected as i32
                    && result.error.as_ref().is_some_and(|e| e.retryable);
                answers.push(result);
                if !retry {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (id, answers)
        }
    };
    let mut waves = Vec::new();
    for wave in 0..4 {
        let ids: Vec<String> = (0..6).map(|i| format!("inv-{wave}-{i}")).collect();
        waves.push(tokio::spawn(futures::future::join_all(
            ids.into_iter().map(submit.clone()),
        )));
        tokio::time::sleep(Duration::from_millis(200)).await;
        if wave == 2 {
            // The session ends while commands run: the ConnectionActor panics.
            backend.state().drain(CLUSTER_ID, 0).unwrap();
        }
    }
    let mut outcomes = Vec::new();
    for wave in waves {
        outcomes.extend(wave.await.unwrap());
    }
    let output = relayer.output();
    for (id, answers) in &outcomes {
        let last = answers.last().unwrap();
        assert_eq!(
            last.status,
            Status::Succeeded as i32,
            "{id}: {answers:?}\n{output}"
        );
        let ran = output
            .lines()
            .filter(|line| {
                line.contains("audit")
                    && line.contains(&format!("command_id={id} "))
                    && line.contains("succeeded")
            })
            .count();
        assert_eq!(ran, 1, "{id} ran {ran} times\n{output}");
    }
    let restarts = |name: &'static str| {
        let relayer = &relayer;
        async move {
            relayer
                .metric(
                    "consonant_relayer_actor_restarts",
                    &format!("actor=\"{name}\""),
                )
                .await
        }
    };
    assert!(restarts("CommandRouter").await >= 1.0, "{output}");
    assert!(restarts("WorkloadExecutor").await >= 1.0, "{output}");
    assert!(restarts("ConnectionActor").await >= 1.0, "{output}");
    let settled = eventually_async(Duration::from_secs(10), || async {
        relayer
            .metric("consonant_relayer_commands_in_flight", "")
            .await
            == 0.0
            && relayer
                .metric("consonant_relayer_commands_validating", "")
                .await
                == 0.0
    })
    .await;
    assert!(settled, "the in-flight gauges return to zero\n{output}");
}
