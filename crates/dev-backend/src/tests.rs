//! Integration-style tests: the backend on 127.0.0.1:0, the generated tonic
//! client playing the relayer, reqwest on the admin API.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::*;
use consonant_proto::{
    self as proto, backend_frame::Body as Out, relay_service_client::RelayServiceClient,
    relayer_frame::Body as In,
};

const CLUSTER: &str = "cls_test";
const TOKEN: &str = "test-token-0123456789abcdefghijklmnop";
const WAIT: Duration = Duration::from_secs(10);

async fn backend(opts: DevBackendOptions) -> DevBackendHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let handle = start(opts).await.expect("backend starts");
    handle.state().add_cluster(CLUSTER, Secret::new(TOKEN));
    handle
}

fn hello(incarnation: &str) -> proto::Hello {
    proto::Hello {
        cluster_id: CLUSTER.into(),
        instance_id: "relayer-0".into(),
        incarnation: incarnation.into(),
        relayer_version: "0.1.0".into(),
        protocol_version: proto::PROTOCOL_VERSION,
        leader: true,
        heartbeat_interval_ms: 10_000,
        ..Default::default()
    }
}

fn frame(seq: u64, body: In) -> proto::RelayerFrame {
    proto::RelayerFrame {
        seq,
        body: Some(body),
    }
}

/// A fake relayer session: the request half and the response stream.
struct Relayer {
    tx: mpsc::Sender<proto::RelayerFrame>,
    rx: Streaming<proto::BackendFrame>,
}

impl Relayer {
    async fn send(&self, frame: proto::RelayerFrame) {
        self.tx.send(frame).await.expect("request stream open");
    }

    /// The next frame that is not a heartbeat.
    async fn next(&mut self) -> Result<Out, Status> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.rx.message())
                .await
                .expect("a frame in time")?;
            match frame.and_then(|f| f.body) {
                Some(Out::Heartbeat(_)) => continue,
                Some(body) => return Ok(body),
                None => return Err(Status::unknown("stream ended")),
            }
        }
    }
}

async fn connect(
    handle: &DevBackendHandle,
    cluster: &str,
    token: &str,
    first: proto::RelayerFrame,
) -> Result<Relayer, Status> {
    let channel = tonic::transport::Endpoint::from_shared(handle.grpc_url())
        .unwrap()
        .connect()
        .await
        .expect("dial");
    let mut client = RelayServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.unwrap(); // Hello is queued before awaiting the response.
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
        .metadata_mut()
        .insert("x-consonant-cluster-id", cluster.parse().unwrap());
    let rx = client.connect(request).await?.into_inner();
    Ok(Relayer { tx, rx })
}

async fn session(handle: &DevBackendHandle, incarnation: &str) -> (Relayer, proto::Welcome) {
    let mut relayer = connect(
        handle,
        CLUSTER,
        TOKEN,
        frame(0, In::Hello(hello(incarnation))),
    )
    .await
    .expect("accepted");
    match relayer.next().await.expect("welcome") {
        Out::Welcome(welcome) => (relayer, welcome),
        other => panic!("expected Welcome first, got {other:?}"),
    }
}

fn succeeded(command_id: &str, output: Value) -> proto::CommandResult {
    proto::CommandResult {
        command_id: command_id.into(),
        status: proto::command_result::Status::Succeeded as i32,
        output_json: serde_json::to_vec(&output).unwrap().into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn ping_through_the_admin_api_round_trips() {
    let handle = backend(DevBackendOptions::default()).await;
    let (mut relayer, welcome) = session(&handle, "inc-1").await;
    assert!(
        uuid::Uuid::parse_str(&welcome.session_id).is_ok(),
        "{welcome:?}"
    );
    assert_eq!(
        (
            welcome.acked_seq,
            welcome.heartbeat_interval_ms,
            welcome.max_frame_bytes
        ),
        (0, 0, 0)
    );

    let url = format!(
        "{}/api/v1/clusters/{CLUSTER}/commands?wait=true&timeout_ms=10000",
        handle.http_url()
    );
    let http = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"ping": {}}))
            .send()
            .await
    });
    let command = match relayer.next().await.unwrap() {
        Out::Command(command) => command,
        other => panic!("expected the ping, got {other:?}"),
    };
    assert!(matches!(
        command.action,
        Some(proto::command::Action::Ping(_))
    ));
    let id = command.command_id.clone();
    relayer
        .send(frame(
            0,
            In::Accepted(proto::CommandAccepted {
                command_id: id.clone(),
            }),
        ))
        .await;
    relayer
        .send(frame(
            1,
            In::Result(succeeded(&id, json!({"payload_len": 0}))),
        ))
        .await;

    let response = http.await.unwrap().expect("http answer");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["output"], json!({"payload_len": 0}), "{body}");
    assert_eq!(body["status"], "SUCCEEDED");
    assert_eq!(
        body["commandId"].as_str().or(body["command_id"].as_str()),
        Some(id.as_str()),
        "{body}"
    );
    assert!(matches!(
        relayer.next().await.unwrap(),
        Out::Ack(proto::Ack { acked_seq: 1 })
    ));

    // A replayed result is a duplicate: counted, acked again, not logged twice.
    relayer
        .send(frame(
            1,
            In::Result(succeeded(&id, json!({"payload_len": 0}))),
        ))
        .await;
    assert!(matches!(
        relayer.next().await.unwrap(),
        Out::Ack(proto::Ack { acked_seq: 1 })
    ));
    let frames: Value = reqwest::get(format!(
        "{}/api/v1/clusters/{CLUSTER}/frames",
        handle.http_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(frames["duplicates"], 1);
    assert_eq!(
        frames["frames"],
        json!([{"incarnation": "inc-1", "seq": 1, "kind": "result", "command_id": id, "status": "SUCCEEDED"}])
    );
    let state: Value = reqwest::get(format!(
        "{}/api/v1/clusters/{CLUSTER}/commands/{id}",
        handle.http_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(state["state"], "completed", "{state}");
    handle.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_version_and_first_frame_are_refused() {
    let handle = backend(DevBackendOptions::default()).await;
    let hello_frame = || frame(0, In::Hello(hello("inc-1")));
    let code = |r: Result<Relayer, Status>| r.err().map(|s| s.code());
    assert_eq!(
        code(connect(&handle, CLUSTER, "wrong", hello_frame()).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(connect(&handle, "cls_nope", TOKEN, hello_frame()).await),
        Some(Code::Unauthenticated)
    );
    let mut v2 = hello("inc-1");
    v2.protocol_version = 2;
    let status = connect(&handle, CLUSTER, TOKEN, frame(0, In::Hello(v2)))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains('2') && status.message().contains('1'),
        "{}",
        status.message()
    );
    let beat = frame(0, In::Heartbeat(proto::Heartbeat::default()));
    assert_eq!(
        code(connect(&handle, CLUSTER, TOKEN, beat).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(handle.state().stats().connect_attempts, 4);
    assert_eq!(handle.state().stats().sessions_started, 0);
}

#[tokio::test]
async fn revoke_ends_streams_and_refuses_new_ones() {
    let handle = backend(DevBackendOptions::default()).await;
    let (mut relayer, _) = session(&handle, "inc-1").await;
    let response = reqwest::Client::new()
        .delete(format!("{}/api/v1/clusters/{CLUSTER}", handle.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        relayer.next().await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let again = connect(&handle, CLUSTER, TOKEN, frame(0, In::Hello(hello("inc-1")))).await;
    assert_eq!(again.err().map(|s| s.code()), Some(Code::PermissionDenied));
}

#[tokio::test]
async fn telemetry_is_counted_from_otlp_once_per_seq() {
    let handle = backend(DevBackendOptions::default()).await;
    let mut h = hello("inc-1");
    h.telemetry_stats = Some(proto::TelemetryStats {
        batches_dropped: 1,
        items_dropped: 7,
    });
    let mut relayer = connect(&handle, CLUSTER, TOKEN, frame(0, In::Hello(h)))
        .await
        .unwrap();
    assert!(matches!(relayer.next().await.unwrap(), Out::Welcome(_)));
    let otlp = super::otlp::tests::trace_request(3);
    let batch = proto::TelemetryBatch {
        signal: proto::telemetry_batch::Signal::Traces as i32,
        item_count: 6,
        otlp: otlp.clone().into(),
        ..Default::default()
    };
    relayer.send(frame(1, In::Telemetry(batch.clone()))).await;
    relayer.send(frame(1, In::Telemetry(batch))).await;
    loop {
        if let Out::Ack(ack) = relayer.next().await.unwrap() {
            assert_eq!(ack.acked_seq, 1);
            break;
        }
    }
    let body: Value = reqwest::get(format!(
        "{}/api/v1/clusters/{CLUSTER}/telemetry",
        handle.http_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        body,
        json!({"batches": 1, "spans": 6, "metric_points": 0, "log_records": 0, "bytes": otlp.len(), "dropped_reported": 7})
    );
}

#[tokio::test]
async fn unaccepted_commands_are_queued_and_resent_on_the_next_session() {
    let handle = backend(DevBackendOptions::default()).await;
    let ping = proto::Command {
        command_id: "cmd-1".into(),
        action: Some(proto::command::Action::Ping(proto::Ping::default())),
        ..Default::default()
    };
    let result = handle.state().submit_command(CLUSTER, ping).unwrap();
    let (mut first, _) = session(&handle, "inc-1").await;
    assert!(matches!(first.next().await.unwrap(), Out::Command(c) if c.command_id == "cmd-1"));
    drop(first);
    // The backend notices the closed stream; then a new session gets it again.
    let second = loop {
        let (mut relayer, _) = session(&handle, "inc-1").await;
        if let Out::Command(c) = relayer.next().await.unwrap() {
            assert_eq!(c.command_id, "cmd-1");
            break relayer;
        }
    };
    second
        .send(frame(
            1,
            In::Result(succeeded("cmd-1", json!({"payload_len": 0}))),
        ))
        .await;
    let result = tokio::time::timeout(WAIT, result).await.unwrap().unwrap();
    assert_eq!(result.command_id, "cmd-1");
}

#[tokio::test]
async fn registration_follows_the_protocol() {
    let opts = DevBackendOptions {
        bootstrap_tokens: vec![Secret::new("boot-a"), Secret::new("boot-b")],
        ..Default::default()
    };
    let handle = backend(opts).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/clusters", handle.http_url());
    let register = |token: &'static str, body: Value| {
        let request = client.post(&url).bearer_auth(token).json(&body);
        async move { request.send().await.unwrap() }
    };
    let prod = json!({"name": "prod-us-east-1", "region": "us-east-1"});
    assert_eq!(register("nope", prod.clone()).await.status(), 401);
    let created = register("boot-a", prod.clone()).await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    assert!(body["cluster_id"].as_str().unwrap().starts_with("cls_"));
    assert!(body["cluster_token"].as_str().unwrap().len() >= 32);
    assert_eq!(
        register("boot-a", json!({"name": "other"})).await.status(),
        403
    );
    assert_eq!(register("boot-b", prod).await.status(), 409);
    assert_eq!(
        register("boot-b", json!({"name": "Not_DNS"}))
            .await
            .status(),
        422
    );
    let bad_json = client
        .post(&url)
        .bearer_auth("boot-b")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let clusters: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(clusters.as_array().unwrap().len(), 2, "{clusters}");
    let missing = client
        .get(format!("{url}/cls_missing/telemetry"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("cls_missing"));
}

#[tokio::test]
async fn rotation_keeps_the_old_token_until_the_new_one_connects() {
    let handle = backend(DevBackendOptions::default()).await;
    let (mut relayer, _) = session(&handle, "inc-1").await;
    let (new_token, told) = handle.state().rotate(CLUSTER).unwrap();
    assert_eq!(told, 1);
    match relayer.next().await.unwrap() {
        Out::RotateCredentials(r) => assert_eq!(r.cluster_token, new_token.expose()),
        other => panic!("expected RotateCredentials, got {other:?}"),
    }
    let hello_frame = || frame(0, In::Hello(hello("inc-1")));
    assert!(connect(&handle, CLUSTER, TOKEN, hello_frame())
        .await
        .is_ok());
    assert!(connect(&handle, CLUSTER, new_token.expose(), hello_frame())
        .await
        .is_ok());
    let old = connect(&handle, CLUSTER, TOKEN, hello_frame()).await;
    assert_eq!(old.err().map(|s| s.code()), Some(Code::Unauthenticated));
}

#[tokio::test]
async fn faults_reject_connects_and_are_counted() {
    let handle = backend(DevBackendOptions::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/debug/faults", handle.http_url());
    let faults: Value = client
        .post(&url)
        .json(&json!({"reject_all": "UNAVAILABLE"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        faults,
        json!({"withhold_acks": false, "silent": false, "reject_all": "UNAVAILABLE"})
    );
    let refused = connect(&handle, CLUSTER, TOKEN, frame(0, In::Hello(hello("inc-1")))).await;
    assert_eq!(refused.err().map(|s| s.code()), Some(Code::Unavailable));
    client
        .post(&url)
        .json(&json!({"reject_all": null}))
        .send()
        .await
        .unwrap();
    let (mut relayer, _) = session(&handle, "inc-1").await;
    client
        .post(&url)
        .json(&json!({"end_streams": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(relayer.next().await.unwrap_err().code(), Code::Unavailable);
    let stats: Value = client
        .get(format!("{}/api/v1/debug/stats", handle.http_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["connect_attempts"], 2);
    assert_eq!(stats["sessions_started"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pings_in_flight_complete_with_batched_acks() {
    const N: u64 = 5_000;
    let handle = backend(DevBackendOptions::default()).await;
    let (mut relayer, _) = session(&handle, "inc-1").await;
    let fake = tokio::spawn(async move {
        let (mut seq, mut acked, mut acks) = (0u64, 0u64, 0u64);
        while acked < N {
            match relayer.next().await.unwrap() {
                Out::Command(command) => {
                    seq += 1;
                    let id = command.command_id;
                    relayer
                        .send(frame(
                            0,
                            In::Accepted(proto::CommandAccepted {
                                command_id: id.clone(),
                            }),
                        ))
                        .await;
                    relayer
                        .send(frame(
                            seq,
                            In::Result(succeeded(&id, json!({"payload_len": 0}))),
                        ))
                        .await;
                }
                Out::Ack(ack) => {
                    assert!(ack.acked_seq > acked, "acks move forward");
                    (acked, acks) = (ack.acked_seq, acks + 1);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        acks
    });
    let started = std::time::Instant::now();
    let waiters: Vec<_> = (0..N)
        .map(|_| {
            let ping = proto::Command {
                action: Some(proto::command::Action::Ping(proto::Ping::default())),
                ..Default::default()
            };
            handle.state().submit_command(CLUSTER, ping).unwrap()
        })
        .collect();
    for waiter in waiters {
        let result = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
        assert_eq!(
            result.status,
            proto::command_result::Status::Succeeded as i32
        );
    }
    let elapsed = started.elapsed();
    let acks = tokio::time::timeout(WAIT, fake).await.unwrap().unwrap();
    eprintln!("{N} pings in {elapsed:?}, {acks} acks");
    assert!(acks <= N, "acks are cumulative");
    assert_eq!(handle.state().stats().results_received, N);
}

#[tokio::test]
async fn shutdown_and_drop_end_streams_with_unavailable() {
    let handle = backend(DevBackendOptions::default()).await;
    let (mut relayer, _) = session(&handle, "inc-1").await;
    let started = std::time::Instant::now();
    handle.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "graceful shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(relayer.next().await.unwrap_err().code(), Code::Unavailable);

    let handle = backend(DevBackendOptions::default()).await;
    let (mut relayer, _) = session(&handle, "inc-1").await;
    let state = handle.state().clone();
    drop(handle);
    assert_eq!(relayer.next().await.unwrap_err().code(), Code::Unavailable);
    let refused = state.authenticate(CLUSTER, TOKEN).err().map(|s| s.code());
    assert_eq!(
        refused,
        Some(Code::Unavailable),
        "new streams are refused after drop"
    );
}

#[test]
fn command_line_matches_the_spec() {
    use clap::{CommandFactory, Parser};
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DevBackendArgs,
    }
    let cli = Cli::try_parse_from([
        "dev-backend",
        "--grpc-listen",
        "127.0.0.1:0",
        "--bootstrap-token",
        "a",
        "--bootstrap-token",
        "b",
        "--cluster",
        "cls_1=tok1",
        "--cluster",
        "cls_2=tok2",
        "--heartbeat-interval",
        "2s",
    ])
    .unwrap();
    assert_eq!(cli.args.grpc_listen.port(), 0);
    assert_eq!(cli.args.http_listen, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(cli.args.bootstrap_tokens, ["a", "b"]);
    assert_eq!(
        cli.args.clusters,
        [
            ("cls_1".into(), "tok1".into()),
            ("cls_2".into(), "tok2".into())
        ]
    );
    assert_eq!(cli.args.heartbeat_interval, Some(Duration::from_secs(2)));
    assert!(Cli::try_parse_from(["dev-backend", "--cluster", "no-token"]).is_err());
    // The signing key comes with its id, or not at all.
    let signing = Cli::try_parse_from([
        "dev-backend",
        "--signing-key",
        "ops.key",
        "--signing-key-id",
        "ops",
    ])
    .unwrap();
    assert_eq!(signing.args.signing_key_id.as_deref(), Some("ops"));
    assert!(Cli::try_parse_from(["dev-backend", "--signing-key", "ops.key"]).is_err());
    assert!(Cli::try_parse_from(["dev-backend", "--signing-key-id", "ops"]).is_err());
    let missing = DevBackendOptions::try_from(signing.args)
        .unwrap_err()
        .to_string();
    assert!(missing.starts_with("--signing-key ops.key: "), "{missing}");
    let help = Cli::command().render_long_help().to_string();
    for needle in [
        "reference implementation",
        "in memory only",
        "not a production backend",
        "--cluster <ID=TOKEN>",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
}

#[tokio::test]
async fn drain_reaches_every_session_and_holds_new_commands_for_the_next() {
    let handle = backend(DevBackendOptions::default()).await;
    let (mut relayer, _) = session(&handle, "inc-1").await;
    let url = format!(
        "{}/api/v1/clusters/{CLUSTER}/drain?reconnect_after_ms=5",
        handle.http_url()
    );
    let response = reqwest::Client::new().post(url).send().await.unwrap();
    assert_eq!(response.status(), 202);
    match relayer.next().await.unwrap() {
        Out::Drain(drain) => assert_eq!(
            (drain.reason.as_str(), drain.reconnect_after_ms),
            ("requested by admin", 5)
        ),
        other => panic!("expected Drain, got {other:?}"),
    }
    let ping = proto::Command {
        command_id: "after-drain".into(),
        action: Some(proto::command::Action::Ping(proto::Ping::default())),
        ..Default::default()
    };
    let _result = handle.state().submit_command(CLUSTER, ping).unwrap();
    let (mut next, _) = session(&handle, "inc-1").await;
    assert!(matches!(next.next().await.unwrap(), Out::Command(c) if c.command_id == "after-drain"));
    drop(relayer);
}

#[tokio::test]
async fn commands_without_wait_and_timeouts_and_events() {
    let handle = backend(DevBackendOptions::default()).await;
    let client = reqwest::Client::new();
    let base = format!("{}/api/v1/clusters/{CLUSTER}", handle.http_url());
    let queued = client
        .post(format!("{base}/commands"))
        .json(&json!({"ping": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);
    let id = queued.json::<Value>().await.unwrap()["command_id"]
        .as_str()
        .unwrap()
        .to_string();
    let state: Value = client
        .get(format!("{base}/commands/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (state["state"].as_str(), state["action"].as_str()),
        (Some("queued"), Some("ping")),
        "{state}"
    );
    let late = client
        .post(format!("{base}/commands?wait=true&timeout_ms=50"))
        .json(&json!({"scale": {"target": {"api_version": "apps/v1", "kind": "Deployment", "namespace": "default", "name": "web"}, "replicas": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), 504);
    let bad = client
        .post(format!("{base}/commands"))
        .json(&json!({"warp": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("warp"));

    let (relayer, _) = session(&handle, "inc-1").await;
    let event = proto::ClusterEvent {
        event_id: "ev-1".into(),
        kind: "pod.failed".into(),
        payload_json: br#"{"reason": "OOMKilled"}"#.to_vec().into(),
        ..Default::default()
    };
    relayer.send(frame(1, In::Event(event))).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let events = loop {
        let events: Value = client
            .get(format!("{base}/events?limit=10"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !events.as_array().unwrap().is_empty() || tokio::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(events[0]["kind"], "pod.failed");
    assert_eq!(events[0]["payload"], json!({"reason": "OOMKilled"}));
}

#[tokio::test]
async fn a_standby_replica_gets_no_commands_while_the_leader_is_connected() {
    let handle = backend(DevBackendOptions::default()).await;
    let (mut leader, _) = session(&handle, "inc-leader").await;
    let mut standby_hello = hello("inc-standby");
    standby_hello.leader = false;
    let mut standby = connect(&handle, CLUSTER, TOKEN, frame(0, In::Hello(standby_hello)))
        .await
        .unwrap();
    assert!(matches!(standby.next().await.unwrap(), Out::Welcome(_)));
    let ping = proto::Command {
        command_id: "to-leader".into(),
        action: Some(proto::command::Action::Ping(proto::Ping::default())),
        ..Default::default()
    };
    let _result = handle.state().submit_command(CLUSTER, ping).unwrap();
    assert!(matches!(leader.next().await.unwrap(), Out::Command(c) if c.command_id == "to-leader"));
    let quiet = tokio::time::timeout(Duration::from_millis(200), standby.next()).await;
    assert!(quiet.is_err(), "standby got {quiet:?}");
}

#[tokio::test]
async fn unacknowledged_commands_move_to_the_remaining_session() {
    let handle = backend(DevBackendOptions::default()).await;
    let (mut leader, _) = session(&handle, "inc-leader").await;
    let mut standby_hello = hello("inc-standby");
    standby_hello.leader = false;
    let mut standby = connect(&handle, CLUSTER, TOKEN, frame(0, In::Hello(standby_hello)))
        .await
        .unwrap();
    assert!(matches!(standby.next().await.unwrap(), Out::Welcome(_)));
    let ping = proto::Command {
        command_id: "moves".into(),
        action: Some(proto::command::Action::Ping(proto::Ping::default())),
        ..Default::default()
    };
    let _result = handle.state().submit_command(CLUSTER, ping).unwrap();
    assert!(matches!(leader.next().await.unwrap(), Out::Command(c) if c.command_id == "moves"));
    drop(leader);
    assert!(matches!(standby.next().await.unwrap(), Out::Command(c) if c.command_id == "moves"));
}
