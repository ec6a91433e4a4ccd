//! The relay spine end to end: the relayer binary against the reference
//! backend over loopback — handshake, ping, dedup, replay, reconnect,
//! backoff, breaker, credentials, heartbeats, drain, shutdown.

mod common;

use std::time::Duration;

use common::*;
use consonant_dev_backend::{FaultsUpdate, RejectCode};
use consonant_relayer::proto::{command_result::Status, error::Code};

#[tokio::test]
async fn handshake_carries_identity_and_metadata() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    let health = relayer.wait_connected().await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["grpc"]["clusterId"], CLUSTER_ID);
    assert_eq!(health["grpc"]["state"], "Streaming");
    assert!(health["grpc"]["lastError"].is_null());
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

    let clusters = backend.state().list_clusters();
    let cluster = clusters
        .iter()
        .find(|c| c.cluster_id == CLUSTER_ID)
        .unwrap();
    assert!(cluster.connected);
    let session = &cluster.sessions[0];
    assert_eq!(
        session.instance_id, "relayer-test-0",
        "instance_id is the pod name"
    );
    assert_eq!(
        uuid::Uuid::parse_str(&session.incarnation)
            .unwrap()
            .get_version_num(),
        4
    );
    let hello = backend
        .state()
        .last_hello(CLUSTER_ID)
        .expect("the backend kept the Hello");
    assert_eq!(hello.protocol_version, 1);
    assert_eq!(hello.relayer_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.capabilities, vec!["ping".to_string()]);
    assert_eq!(hello.heartbeat_interval_ms, 10_000);
    assert_eq!(
        hello.labels.get("cluster.name").map(String::as_str),
        Some("test-cluster")
    );
    assert_eq!(
        hello.labels.get("cluster.region").map(String::as_str),
        Some("local")
    );
    assert_eq!(
        hello.labels.get("cluster.environment").map(String::as_str),
        Some("test")
    );
    assert_eq!(hello.labels.get("team").map(String::as_str), Some("relay"));
}

#[tokio::test]
async fn ping_round_trip_reports_payload_length() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let result = run_command(&backend, ping("ping-1", b"hello world")).await;
    assert_eq!(result.command_id, "ping-1");
    assert_eq!(result.status, Status::Succeeded as i32);
    let output: serde_json::Value = serde_json::from_slice(&result.output_json).unwrap();
    assert_eq!(output, serde_json::json!({"payload_len": 11}));
    assert!(result.finished_at_unix_ms >= result.started_at_unix_ms);

    // The admin HTTP API gives the same answer, with `output` parsed.
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/clusters/{CLUSTER_ID}/commands?wait=true",
            backend.http_url()
        ))
        .json(&serde_json::json!({"ping": {"payload": "AAEC"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["status"], "SUCCEEDED");
    assert_eq!(response["output"]["payload_len"], 3);
    assert!(
        relayer
            .metric(
                "consonant_relayer_commands_total",
                "action=\"ping\",status=\"succeeded\""
            )
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn duplicate_of_a_finished_command_gets_the_cached_result() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let first = run_command(&backend, ping("dup-1", b"abc")).await;
    // The same id again (the backend forgets it finished, as after its own crash).
    backend.state().forget_command(CLUSTER_ID, "dup-1");
    let second = run_command(&backend, ping("dup-1", b"a much longer payload")).await;
    assert_eq!(second, first, "the cached result, not a second execution");
    assert_eq!(
        relayer
            .metric("consonant_relayer_commands_total", "action=\"ping\"")
            .await,
        1.0
    );
}

#[tokio::test]
async fn invalid_commands_are_rejected_with_the_protocol_codes() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let no_action = consonant_relayer::proto::Command {
        command_id: "no-action".into(),
        ..Default::default()
    };
    let result = run_command(&backend, no_action).await;
    assert_eq!(result.status, Status::Rejected as i32);
    let error = result.error.unwrap();
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(error.message.contains("no action"), "{}", error.message);

    let mut late = ping("late", b"");
    late.deadline_unix_ms = 1_000;
    let result = run_command(&backend, late).await;
    assert_eq!(result.status, Status::Rejected as i32);
    assert_eq!(result.error.unwrap().code, Code::DeadlineExceeded as i32);

    let kube = consonant_relayer::proto::Command {
        command_id: "kube-off".into(),
        action: Some(consonant_relayer::proto::command::Action::ClusterInfo(
            Default::default(),
        )),
        ..Default::default()
    };
    let result = run_command(&backend, kube).await;
    assert_eq!(result.status, Status::Rejected as i32);
    let error = result.error.unwrap();
    assert_eq!(error.code, Code::Unavailable as i32);
    assert!(
        !error.retryable,
        "kubernetes.enabled = false is not retryable"
    );

    // A rejected command was never tried: the same id may run later.
    backend.state().forget_command(CLUSTER_ID, "late");
    let retried = run_command(&backend, ping("late", b"xy")).await;
    assert_eq!(retried.status, Status::Succeeded as i32);
}

#[tokio::test]
async fn replayed_frames_arrive_in_order_and_never_twice_after_the_ack() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    pings_with_acks_withheld(&backend, "r", 20).await;
    assert!(
        relayer
            .metric("consonant_relayer_replay_buffer_frames", "")
            .await
            >= 20.0,
        "unacked results stay buffered"
    );
    // Kill the stream; acks flow again on the next session.
    backend.state().set_faults(FaultsUpdate {
        withhold_acks: Some(false),
        end_streams: Some(true),
        ..Default::default()
    });
    assert!(
        eventually(Duration::from_secs(15), || backend
            .state()
            .stats()
            .sessions_started
            >= 2)
        .await
    );
    relayer.wait_connected().await;
    let _ = run_command(&backend, ping("after", b"")).await;
    let mut trimmed = false;
    for _ in 0..100 {
        if relayer
            .metric("consonant_relayer_replay_buffer_frames", "")
            .await
            == 0.0
        {
            trimmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(trimmed, "the ack trimmed the replay buffer");
    let frames = backend.state().frames(CLUSTER_ID).unwrap();
    let seqs: Vec<u64> = frames.frames.iter().map(|f| f.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in seq order: {seqs:?}"
    );
    let ids: Vec<_> = frames
        .frames
        .iter()
        .filter_map(|f| f.command_id.clone())
        .collect();
    for i in 0..20 {
        assert_eq!(
            ids.iter().filter(|id| ***id == *format!("r-{i}")).count(),
            1,
            "r-{i} exactly once"
        );
    }
}

#[tokio::test]
async fn backend_restart_on_the_same_port_loses_no_result() {
    let backend = backend().await;
    let (grpc, http) = (backend.grpc_addr, backend.http_addr);
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    pings_with_acks_withheld(&backend, "k", 10).await;
    // The backend dies with every result unacknowledged, then comes back
    // empty on the same ports: the relayer must replay all ten.
    backend.shutdown().await;
    relayer
        .wait_health(Duration::from_secs(10), |h| h["grpc"]["connected"] == false)
        .await;
    let revived = backend_on(Some(grpc), Some(http)).await;
    relayer.wait_connected().await;
    let arrived = eventually(Duration::from_secs(10), || {
        let frames = revived.state().frames(CLUSTER_ID).unwrap();
        (0..10).all(|i| {
            frames
                .frames
                .iter()
                .any(|f| f.command_id.as_deref() == Some(&format!("k-{i}")))
        })
    })
    .await;
    assert!(
        arrived,
        "every result replayed to the restarted backend: {:?}",
        revived.state().frames(CLUSTER_ID).unwrap().frames
    );
    let seqs: Vec<u64> = revived
        .state()
        .frames(CLUSTER_ID)
        .unwrap()
        .frames
        .iter()
        .map(|f| f.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "replayed in seq order: {seqs:?}"
    );
}

#[tokio::test]
async fn backoff_bounds_dial_attempts_during_an_outage() {
    let backend = backend().await;
    backend.state().set_faults(FaultsUpdate {
        reject_all: Some(Some(RejectCode::Unavailable)),
        ..Default::default()
    });
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let attempts = backend.state().stats().connect_attempts;
    // base 500 ms with full jitter, then the breaker opens after 5 failures for 30 s.
    assert!(
        (2..=8).contains(&attempts),
        "{attempts} dial attempts in 10 s"
    );
    let health = relayer.json("/health").await.unwrap();
    assert_eq!(health["grpc"]["connected"], false);
    assert!(
        health["grpc"]["lastError"]
            .as_str()
            .unwrap()
            .contains("Unavailable"),
        "{health}"
    );
}

#[tokio::test]
async fn breaker_opens_after_threshold_then_probes_once_half_open() {
    let backend = backend().await;
    backend.state().set_faults(FaultsUpdate {
        reject_all: Some(Some(RejectCode::Unavailable)),
        ..Default::default()
    });
    let relayer = Relayer::start(
        RelayerOptions::new(&backend)
            .connection("breaker_failure_threshold = 3\nbreaker_open_duration = \"3s\"\nbackoff_base = \"50ms\"\nbackoff_max = \"100ms\""),
    );
    let open = relayer
        .wait_health(Duration::from_secs(10), |h| h["grpc"]["breaker"] == "open")
        .await;
    assert_eq!(
        open["status"], "unhealthy",
        "an open breaker is unhealthy: {open}"
    );
    let at_open = backend.state().stats().connect_attempts;
    assert_eq!(at_open, 3, "threshold reached");
    let actors = relayer.json("/debug/actors").await.unwrap();
    let connection = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ConnectionActor")
        .unwrap()
        .clone();
    assert_eq!(connection["state"], "BreakerOpen");
    // While open: no dial. After the open period: exactly one probe, which fails and reopens.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(backend.state().stats().connect_attempts, at_open);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        backend.state().stats().connect_attempts,
        at_open + 1,
        "one half-open probe"
    );
    // The backend recovers: the next probe closes the breaker.
    backend.state().set_faults(FaultsUpdate {
        reject_all: Some(None),
        ..Default::default()
    });
    let healthy = relayer
        .wait_health(Duration::from_secs(10), |h| h["grpc"]["connected"] == true)
        .await;
    assert_eq!(healthy["grpc"]["breaker"], "closed");
}

#[tokio::test]
async fn wrong_token_shows_in_health_and_a_fixed_file_recovers() {
    let backend = backend().await;
    let mut options = RelayerOptions::new(&backend);
    options.token = "wrong-token-wrong-token".into();
    let mut relayer = Relayer::start(options);
    let health = relayer
        .wait_health(Duration::from_secs(10), |h| {
            h["grpc"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("Unauthenticated"))
        })
        .await;
    assert_eq!(health["status"], "unhealthy");
    assert!(health["grpc"]["lastError"]
        .as_str()
        .unwrap()
        .contains("clusterToken"));
    assert!(
        relayer.is_running(),
        "a refused token never kills the process"
    );
    let livez = relayer.get("/livez").await.unwrap();
    assert_eq!(
        livez.status(),
        200,
        "liveness does not depend on the backend"
    );
    // The mounted Secret is fixed: the relayer re-reads it and connects.
    std::fs::write(relayer.creds_dir().join("clusterToken"), TOKEN).unwrap();
    relayer
        .wait_health(Duration::from_secs(40), |h| h["grpc"]["connected"] == true)
        .await;
    assert!(
        !relayer.output().contains("wrong-token-wrong-token"),
        "no token in any log line"
    );
    assert!(!relayer.output().contains(TOKEN));
}

#[tokio::test]
async fn silent_backend_is_detected_after_three_heartbeat_intervals() {
    let backend = backend().await;
    let relayer =
        Relayer::start(RelayerOptions::new(&backend).connection("heartbeat_interval = \"300ms\""));
    relayer.wait_connected().await;
    backend.state().set_faults(FaultsUpdate {
        silent: Some(true),
        ..Default::default()
    });
    // The relayer hears nothing for 3 × 300 ms, gives up on the stream and dials again.
    assert!(
        eventually(Duration::from_secs(5), || backend
            .state()
            .stats()
            .sessions_started
            >= 2)
        .await,
        "no reconnect after a silent backend\n{}",
        relayer.output()
    );
    assert!(
        relayer
            .output()
            .contains("no frame from the backend for 900ms (3 heartbeat intervals)"),
        "{}",
        relayer.output()
    );
    backend.state().set_faults(FaultsUpdate {
        silent: Some(false),
        ..Default::default()
    });
    relayer.wait_connected().await;
    assert!(backend.state().stats().sessions_started >= 2);
}

#[tokio::test]
async fn drain_rejects_late_commands_and_reconnects() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    let first = relayer.wait_connected().await;
    let drained = backend.state().drain(CLUSTER_ID, 300).unwrap();
    assert_eq!(drained, 1);
    let again = relayer
        .wait_health(Duration::from_secs(10), |h| {
            h["grpc"]["connected"] == true && h["grpc"]["sessionId"] != first["grpc"]["sessionId"]
        })
        .await;
    assert_eq!(again["status"], "healthy");
    // A drained stream is not a failure: no breaker count.
    assert_eq!(
        relayer
            .metric("consonant_relayer_breaker_state", "state=\"closed\"")
            .await,
        1.0
    );
    let result = run_command(&backend, ping("after-drain", b"ok")).await;
    assert_eq!(result.status, Status::Succeeded as i32);
}

#[tokio::test]
async fn sigterm_closes_the_stream_and_exits_zero() {
    let backend = backend().await;
    let mut relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let status = relayer
        .terminate(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", relayer.output());
    assert!(
        eventually(Duration::from_secs(5), || !backend.state().list_clusters()
            [0]
        .connected)
        .await
    );
}

/// A hostile or buggy backend rotates to a token that could never be sent
/// in a header: the relayer ignores it (protocol.md, edge cases), says why
/// in `/health`, keeps its token, and later sessions still get in.
#[tokio::test]
async fn a_rotated_token_that_is_not_a_valid_token_is_ignored() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let bad = "valid-looking-prefix\r\nx-injected: yes";
    assert_eq!(
        backend
            .state()
            .send_rotation_unchecked(CLUSTER_ID, bad)
            .unwrap(),
        1
    );
    let health = relayer
        .wait_health(Duration::from_secs(10), |h| {
            h["grpc"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("ignored RotateCredentials"))
        })
        .await;
    assert!(
        health["grpc"]["lastError"]
            .as_str()
            .unwrap()
            .contains("not visible ASCII"),
        "{health}"
    );
    assert_eq!(health["grpc"]["connected"], true, "no reconnect for it");
    let result = run_command(&backend, ping("after-bad-rotation", b"x")).await;
    assert_eq!(result.status, Status::Succeeded as i32);
    // The next session presents the token it had: the backend lets it in.
    backend.state().drain(CLUSTER_ID, 100).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || backend
            .state()
            .stats()
            .sessions_started
            >= 2)
        .await
    );
    relayer.wait_connected().await;
    let result = run_command(&backend, ping("after-reconnect", b"x")).await;
    assert_eq!(result.status, Status::Succeeded as i32);
    assert!(
        !relayer.output().contains("x-injected"),
        "the refused token never reaches the log"
    );
}

/// `command_id`s of a megabyte (protocol.md: at most 128 bytes) are
/// refused with an empty id: they never reach the dedup cache or a log
/// line, so thirty of them neither grow the relayer's memory nor its log.
#[tokio::test]
async fn huge_command_ids_are_refused_without_keeping_or_logging_them() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let before = relayer.rss_kib();
    let log_before = relayer.output().len();
    let _waiters: Vec<_> = (0..30)
        .map(|i| {
            let id = format!("{i:02}{}", "i".repeat(1 << 20));
            backend
                .state()
                .submit_command(CLUSTER_ID, ping(&id, b""))
                .unwrap()
        })
        .collect();
    let refused = eventually_async(Duration::from_secs(20), || async {
        relayer
            .metric(
                "consonant_relayer_commands_total",
                "action=\"ping\",status=\"rejected\"",
            )
            .await
            >= 30.0
    })
    .await;
    assert!(refused, "every one refused");
    let grown_kib = relayer.rss_kib().saturating_sub(before);
    assert!(
        grown_kib < 16 * 1024,
        "30 MB of ids grew the relayer by {grown_kib} KiB (bound: 16 MiB; it was ~93 MB)"
    );
    let logged = &relayer.output()[log_before..];
    assert!(
        logged.len() < 64 * 1024 && !logged.contains(&"i".repeat(129)),
        "the ids reached the log: {} bytes written",
        logged.len()
    );
    assert_eq!(relayer.wait_connected().await["grpc"]["connected"], true);
}

/// `/health?connected=true` answers 503 while the stream to the backend is
/// down (the body is the same), so a check — `helm test` — fails for a
/// relayer that is up but cut off; plain `/health` always answers 200.
#[tokio::test]
async fn health_can_require_a_connected_stream() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let status = |path: &'static str| {
        let relayer = &relayer;
        async move { relayer.get(path).await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(status("/health?connected=true").await, Some(200));
    backend.shutdown().await;
    let cut_off = eventually_async(Duration::from_secs(15), || async {
        status("/health?connected=true").await == Some(503)
    })
    .await;
    assert!(cut_off, "{}", relayer.output());
    assert_eq!(status("/health").await, Some(200));
    let body = relayer.json("/health?connected=true").await.unwrap();
    assert_eq!(body["grpc"]["connected"], false, "{body}");
}
