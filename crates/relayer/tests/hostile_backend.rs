//! A compromised or buggy backend against the real relayer binary, over
//! loopback: floods of pings, of duplicates with acks withheld, of commands
//! it never reads the answers to, and manifests built to explode. Every
//! bound is measured from outside (`/proc`), and every answer counted.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::scripted::{self, command_frame, welcome};
use common::*;
use consonant_relayer::proto::{
    backend_frame, command, command_result::Status, error::Code, relayer_frame, Ack, ApplyManifest,
    BackendFrame, Command,
};

/// A UUID-shaped id (36 bytes), distinct for each `n`.
fn uuid_like(n: u64) -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        n >> 32,
        n & 0xffff_ffff_ffff
    )
}

fn ack(seq: u64) -> Result<BackendFrame, tonic::Status> {
    Ok(BackendFrame {
        body: Some(backend_frame::Body::Ack(Ack { acked_seq: seq })),
    })
}

/// Answers counted by what the backend saw.
#[derive(Default)]
struct Seen {
    succeeded: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    accepted: AtomicU64,
}

impl Seen {
    fn count(&self, frame: &consonant_relayer::proto::RelayerFrame) {
        match &frame.body {
            Some(relayer_frame::Body::Result(r)) if r.status == Status::Succeeded as i32 => {
                self.succeeded.fetch_add(1, Relaxed);
            }
            Some(relayer_frame::Body::Result(r))
                if r.error
                    .as_ref()
                    .is_some_and(|e| e.code == Code::Unavailable as i32 && e.retryable) =>
            {
                self.busy.fetch_add(1, Relaxed);
            }
            Some(relayer_frame::Body::Result(_)) => {
                self.other.fetch_add(1, Relaxed);
            }
            Some(relayer_frame::Body::Accepted(_)) => {
                self.accepted.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
}

const MIB: u64 = 1024;

/// protocol.md: the dedup cache holds at most `dedup_max_entries` results
/// in at most `dedup_max_bytes`, stored compactly. A million pings with
/// UUID ids (the defaults keep the last 100,000) leave the relayer within
/// 48 MiB of resident memory; it was 110 MiB with a tree of owned structs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_pings_leave_the_relayer_within_48_mib() {
    const TOTAL: u64 = 1_000_000;
    const OUTSTANDING: u64 = 1_000;
    let results = Arc::new(AtomicU64::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let (counter, start) = (results.clone(), go.clone());
    let grpc = scripted::serve(move |mut inbound, outbound| {
        let (results, start) = (counter.clone(), start.clone());
        async move {
            if !welcome(&mut inbound, &outbound).await {
                return;
            }
            // Idle memory is read first.
            start.notified().await;
            let mut sent = 0;
            while sent < OUTSTANDING {
                sent += 1;
                let _ = outbound
                    .send(command_frame(ping(&uuid_like(sent), b"")))
                    .await;
            }
            while let Ok(Some(frame)) = inbound.message().await {
                if !matches!(frame.body, Some(relayer_frame::Body::Result(_))) {
                    continue;
                }
                let done = results.fetch_add(1, Relaxed) + 1;
                if done % 256 == 0 {
                    let _ = outbound.send(ack(frame.seq)).await;
                }
                if sent < TOTAL {
                    sent += 1;
                    let _ = outbound
                        .send(command_frame(ping(&uuid_like(sent), b"")))
                        .await;
                }
            }
        }
    })
    .await;
    let relayer = Relayer::start(
        RelayerOptions::to(&grpc, "http://127.0.0.1:9")
            .commands("rate_per_second = 100000000\nburst = 100000000"),
    );
    relayer.wait_connected().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_anon = relayer.anon_rss_kib();
    go.notify_one();
    let all = eventually(Duration::from_secs(600), || results.load(Relaxed) >= TOTAL).await;
    assert!(
        all,
        "{} of {TOTAL} results\n{}",
        results.load(Relaxed),
        relayer.output()
    );
    let entries = relayer.metric("consonant_relayer_dedup_entries", "").await;
    assert_eq!(
        entries, 100_000.0,
        "the default dedup_max_entries keeps the last 100,000"
    );
    let dedup_bytes = relayer.metric("consonant_relayer_dedup_bytes", "").await;
    assert!(dedup_bytes <= 64.0 * 1024.0 * 1024.0, "{dedup_bytes}");
    let (rss, anon) = (relayer.rss_kib(), relayer.anon_rss_kib());
    eprintln!("after {TOTAL} pings: VmRSS {rss} KiB, RssAnon {anon} KiB (idle {idle_anon} KiB); dedup holds {dedup_bytes} bytes");
    if cfg!(debug_assertions) {
        // A debug binary maps ~30 MiB more code and allocates more at idle:
        // bound what the pings added instead (the release bound below is
        // what the issue sets; `cargo test --release` checks it).
        let grown = anon.saturating_sub(idle_anon);
        assert!(
            grown <= 24 * MIB,
            "{TOTAL} pings added {grown} KiB of heap (bound 24 MiB)"
        );
    } else {
        assert!(
            rss <= 48 * MIB,
            "RSS after {TOTAL} pings is {} MiB (bound: 48 MiB)",
            rss / MIB
        );
    }
}

/// protocol.md: a duplicate of a finished command while the replay buffer
/// has no room gets no cached result past the buffer's bound — REJECTED /
/// UNAVAILABLE from the headroom while it lasts, then no answer, counted.
/// 300,000 re-sends with acks withheld grew RSS by 111 MiB before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_duplicates_stay_within_the_replay_bound() {
    const RESENDS: u64 = 300_000;
    let seen = Arc::new(Seen::default());
    let sent_all = Arc::new(AtomicU64::new(0));
    let (seen_in, sent_in) = (seen.clone(), sent_all.clone());
    let grpc = scripted::serve(move |mut inbound, outbound| {
        let (seen, sent_all) = (seen_in.clone(), sent_in.clone());
        async move {
            if !welcome(&mut inbound, &outbound).await {
                return;
            }
            let _ = outbound.send(command_frame(ping("done", b"x"))).await;
            // Wait for its result; never ack anything.
            while let Ok(Some(frame)) = inbound.message().await {
                seen.count(&frame);
                if seen.succeeded.load(Relaxed) == 1 {
                    break;
                }
            }
            let reader = tokio::spawn({
                let seen = seen.clone();
                async move {
                    while let Ok(Some(frame)) = inbound.message().await {
                        seen.count(&frame);
                    }
                }
            });
            for _ in 0..RESENDS {
                if outbound
                    .send(command_frame(ping("done", b"x")))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            sent_all.store(1, Relaxed);
            let _ = reader.await;
        }
    })
    .await;
    let relayer = Relayer::start(
        RelayerOptions::to(&grpc, "http://127.0.0.1:9")
            .connection("replay_buffer_bytes = \"4MiB\"\nheartbeat_interval = \"60s\"")
            .commands("rate_per_second = 100000000\nburst = 100000000"),
    );
    relayer.wait_connected().await;
    assert!(
        eventually(Duration::from_secs(10), || seen.succeeded.load(Relaxed)
            >= 1)
        .await
    );
    let before = relayer.anon_rss_kib();
    let dropped = |kind: &'static str| {
        let relayer = &relayer;
        async move {
            relayer
                .metric(
                    "consonant_relayer_answers_dropped_total",
                    &format!("kind=\"{kind}\""),
                )
                .await as u64
        }
    };
    // Every re-send is either answered (cached result or busy) or counted.
    let settled = eventually_async(Duration::from_secs(300), || async {
        sent_all.load(Relaxed) == 1
            // The first success is the original run, not a re-send's answer.
            && dropped("cached_result").await + seen.succeeded.load(Relaxed) > RESENDS
    })
    .await;
    assert!(
        settled,
        "not every re-send was accounted for\n{}",
        relayer.output()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cached = seen.succeeded.load(Relaxed) - 1;
    let busy = seen.busy.load(Relaxed);
    assert_eq!(seen.other.load(Relaxed), 0);
    assert!(
        cached > 0 && cached < RESENDS,
        "cached results answered: {cached}"
    );
    assert!(busy > 0, "the headroom answers busy while it lasts");
    assert_eq!(dropped("cached_result").await, RESENDS - cached);
    assert_eq!(
        dropped("refusal").await,
        RESENDS - cached - busy,
        "whatever got no answer at all is counted"
    );
    let frames = relayer
        .metric("consonant_relayer_replay_buffer_bytes", "")
        .await;
    assert!(
        frames <= 4.0 * 1024.0 * 1024.0,
        "the replay buffer stays within its 4 MiB: {frames}"
    );
    let grown = relayer.anon_rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "{RESENDS} re-sends grew the relayer by {grown} KiB (bound 16 MiB; it was 111 MiB)"
    );
}

/// protocol.md: control frames are bounded too. A backend that sends
/// commands but never reads the stream stalls the relayer's writer; the
/// `CommandAccepted` frames queue up to the control bound and the rest are
/// dropped and counted, the results stay within the replay buffer, and the
/// relayer's memory stays put.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_reads_cannot_grow_the_control_queue() {
    const COMMANDS: u64 = 40_000;
    let sent = Arc::new(AtomicU64::new(0));
    let sent_in = sent.clone();
    let grpc = scripted::serve(move |mut inbound, outbound| {
        let sent = sent_in.clone();
        async move {
            if !welcome(&mut inbound, &outbound).await {
                return;
            }
            // From here on, nothing the relayer writes is read.
            for n in 0..COMMANDS {
                if outbound
                    .send(command_frame(ping(&uuid_like(n), b"x")))
                    .await
                    .is_err()
                {
                    break;
                }
                sent.fetch_add(1, Relaxed);
            }
            tokio::time::sleep(Duration::from_secs(600)).await;
            drop(inbound);
        }
    })
    .await;
    let relayer = Relayer::start(
        RelayerOptions::to(&grpc, "http://127.0.0.1:9")
            .connection("replay_buffer_bytes = \"4MiB\"\nheartbeat_interval = \"60s\"")
            .commands("rate_per_second = 100000000\nburst = 100000000"),
    );
    relayer.wait_connected().await;
    let before = relayer.anon_rss_kib();
    let handled = eventually_async(Duration::from_secs(120), || async {
        let rejected = relayer
            .metric(
                "consonant_relayer_commands_total",
                "action=\"ping\",status=\"rejected\"",
            )
            .await;
        let succeeded = relayer
            .metric(
                "consonant_relayer_commands_total",
                "action=\"ping\",status=\"succeeded\"",
            )
            .await;
        rejected + succeeded >= COMMANDS as f64
    })
    .await;
    assert!(handled, "the relayer kept reading\n{}", relayer.output());
    let control = relayer
        .metric("consonant_relayer_control_queue_frames", "")
        .await;
    let dropped = relayer
        .metric("consonant_relayer_control_frames_dropped_total", "")
        .await;
    assert!(control <= 1024.0, "control queue {control}");
    assert!(dropped > 0.0, "the control bound was reached and counted");
    let buffered = relayer
        .metric("consonant_relayer_replay_buffer_bytes", "")
        .await;
    assert!(buffered <= 4.0 * 1024.0 * 1024.0, "{buffered}");
    let grown = relayer.anon_rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "{COMMANDS} unread commands grew the relayer by {grown} KiB"
    );
}

/// One anchor of `items` items aliased `aliases` times.
fn alias_bomb(items: usize, aliases: usize) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\ndata:\n  a: &a [{}]\n  b: [{}]\n",
        vec!["x"; items].join(","),
        vec!["*a"; aliases].join(",")
    )
}

fn apply(id: &str, manifest: &str) -> Command {
    Command {
        command_id: id.into(),
        action: Some(command::Action::Apply(ApplyManifest {
            manifest: manifest.as_bytes().to_vec().into(),
            namespace: "default".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// protocol.md: a manifest whose aliases expand far beyond its size is
/// REJECTED INVALID_ARGUMENT naming the aliasing, in a few MiB, while
/// heartbeats and other commands go on. The 10 KB bomb (2,000 items
/// aliased 2,000 times) took the relayer to 685 MB in 0.7 s on the thread
/// that runs every actor. Validation comes before the Kubernetes-disabled
/// check, so it is validated here with `kubernetes.enabled = false` too.
#[tokio::test]
async fn an_alias_bomb_is_refused_in_bounded_memory_while_pings_go_on() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let before = relayer.peak_rss_kib();
    let bomb = alias_bomb(2_000, 2_000);
    assert!(bomb.len() < 12 * 1024, "{}", bomb.len());
    let state = backend.state();
    let bombs: Vec<_> = (0..5)
        .map(|i| {
            state
                .submit_command(CLUSTER_ID, apply(&format!("bomb-{i}"), &bomb))
                .unwrap()
        })
        .collect();
    let pings: Vec<_> = (0..50)
        .map(|i| {
            state
                .submit_command(CLUSTER_ID, ping(&format!("p-{i}"), b"x"))
                .unwrap()
        })
        .collect();
    for waiter in bombs {
        let result = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(result.status, Status::Rejected as i32);
        let error = result.error.unwrap();
        assert_eq!(error.code, Code::InvalidArgument as i32);
        assert!(error.message.contains("aliases"), "{}", error.message);
    }
    for waiter in pings {
        let result = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("pings answered meanwhile")
            .unwrap();
        assert_eq!(result.status, Status::Succeeded as i32);
    }
    let grown = relayer.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "five alias bombs raised the peak RSS by {grown} KiB"
    );
    // A valid manifest passes validation and meets the Kubernetes switch.
    let valid = run_command(
        &backend,
        apply(
            "valid",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n",
        ),
    )
    .await;
    let error = valid.error.unwrap();
    assert_eq!(error.code, Code::Unavailable as i32, "{}", error.message);
    assert!(error.message.contains("kubernetes.enabled"));
    let sessions = relayer.metric("consonant_relayer_sessions_total", "").await;
    assert_eq!(
        sessions,
        1.0,
        "the stream never dropped\n{}",
        relayer.output()
    );
}

/// The node budget bounds what any manifest within the frame limit costs:
/// the largest one it admits (99,000 nodes, 4 MiB of text) validates with
/// the peak memory raised by less than 48 MiB, and one more node past the
/// budget is refused before anything is built.
#[tokio::test]
async fn the_largest_manifest_the_budget_admits_validates_in_bounded_memory() {
    let backend = backend().await;
    let relayer = Relayer::start(RelayerOptions::new(&backend));
    relayer.wait_connected().await;
    let before = relayer.peak_rss_kib();
    let manifest = |items: usize| {
        let mut m = String::from(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  list:\n",
        );
        for _ in 0..items {
            m.push_str("  - abcdefghijklmnopqrstuvwxyz0123456789\n");
        }
        m
    };
    let admitted = run_command(&backend, apply("big", &manifest(99_000))).await;
    let error = admitted.error.unwrap();
    // Valid: it passed validation and met the Kubernetes switch.
    assert_eq!(error.code, Code::Unavailable as i32, "{}", error.message);
    let grown = relayer.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 48 * MIB,
        "validating it raised the peak by {grown} KiB"
    );
    let refused = run_command(&backend, apply("bigger", &manifest(101_000))).await;
    let error = refused.error.unwrap();
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(
        error.message.contains("more than 100000 YAML nodes"),
        "{}",
        error.message
    );
}
