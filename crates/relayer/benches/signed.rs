//! The cluster lock's cost per command: pings signed by a trusted key
//! against unsigned pings, through the same locked relayer (release binary,
//! its own process) in the same run. Signed pings are verified (Ed25519
//! over the signing input, the deadline, the replay guard) before they run;
//! unsigned ones pass the lock because `signed_actions` does not name
//! `ping`. Every command is signed before its round starts, so the load
//! generator's signing is not measured.
//!
//! Each round sends `COMMANDS` of each kind with `IN_FLIGHT` outstanding,
//! the kinds alternating; medians and the min–max spread of `ROUNDS`.
//!
//! Run: `cargo bench -p consonant-relayer --bench signed`.

use std::time::{Duration, Instant};

use consonant_dev_backend::{self as devbackend, DevBackendHandle, DevBackendOptions};
use consonant_relayer::clock::now_unix_ms;
use consonant_relayer::credentials::Secret;
use consonant_relayer::proto::signing::{generate, parse_public_key, verify, Signer};
use consonant_relayer::proto::{command, command_result::Status, Command, Ping};
use futures::stream::{FuturesUnordered, StreamExt};

mod support;

use support::*;

const IN_FLIGHT: usize = 1_000;
const COMMANDS: usize = 40_000;
const ROUNDS: usize = 3;

fn ping(i: usize, round: usize, kind: &str) -> Command {
    Command {
        command_id: format!("{kind}-{round}-{i:08}"),
        // Within the relayer's dedup_retention (10 min), as the lock requires.
        deadline_unix_ms: now_unix_ms() + 300_000,
        action: Some(command::Action::Ping(Ping {
            payload: vec![7u8; 64].into(),
        })),
        ..Default::default()
    }
}

/// Sends every command with `IN_FLIGHT` outstanding; commands per second.
async fn run(backend: &DevBackendHandle, commands: Vec<Command>) -> f64 {
    let state = backend.state().clone();
    let mut queue = commands.into_iter();
    let mut pending = FuturesUnordered::new();
    for command in queue.by_ref().take(IN_FLIGHT) {
        pending.push(state.submit_command(CLUSTER, command).unwrap());
    }
    let started = Instant::now();
    let mut done = 0usize;
    while let Some(result) = pending.next().await {
        let result = result.expect("a result");
        assert_eq!(result.status, Status::Succeeded as i32, "{result:?}");
        done += 1;
        if let Some(command) = queue.next() {
            pending.push(state.submit_command(CLUSTER, command).unwrap());
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    runtime().block_on(async {
        println!("signed bench: {COMMANDS} pings per kind and round, {IN_FLIGHT} in flight, {ROUNDS} rounds\n");
        let signer = Signer::from_pem("bench", generate().unwrap().0.as_bytes()).unwrap();
        let backend = devbackend::start(DevBackendOptions {
            clusters: vec![(CLUSTER.to_string(), Secret::new(TOKEN))],
            ..Default::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sections = format!(
            "verify_keys = {{ bench = \"{}\" }}\nsigned_actions = [\"scale\"]\ndedup_max_entries = 1000000\n[telemetry]\nenabled = false\n[kubernetes]\nenabled = false\n",
            signer.public_key()
        );
        let process = spawn_relayer_with(&backend.http_url(), &backend.grpc_url(), dir.path(), &sections);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !backend.state().list_clusters().iter().any(|c| c.cluster_id == CLUSTER && c.connected) {
            assert!(Instant::now() < deadline, "the relayer did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Warm-up.
        run(&backend, (0..5_000).map(|i| ping(i, 99, "warm")).collect()).await;

        let mut unsigned = Vec::new();
        let mut signed = Vec::new();
        for round in 0..ROUNDS {
            let plain: Vec<Command> = (0..COMMANDS).map(|i| ping(i, round, "plain")).collect();
            unsigned.push(run(&backend, plain).await);
            let sealed: Vec<Command> = (0..COMMANDS)
                .map(|i| signer.sign(&ping(i, round, "signed"), CLUSTER))
                .collect();
            signed.push(run(&backend, sealed).await);
        }
        let rss = rss_kib(process.0.id());
        drop(process);
        backend.shutdown().await;

        // The signature check alone, in this process, for comparison.
        let key = parse_public_key(&signer.public_key()).unwrap();
        let sample = signer.sign(&ping(0, 0, "verify"), CLUSTER);
        let sealed = sample.signed.unwrap();
        let mut verify_us = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..5_000 {
                assert!(verify(&key, CLUSTER, &sealed.command, &sealed.signature));
            }
            verify_us.push(started.elapsed().as_secs_f64() * 1e6 / 5_000.0);
        }

        let row = |name: &str, values: &mut Vec<f64>| {
            let (median, min, max) = spread(values);
            println!("{name:<28} {median:>12.0} cmds/s (min {min:.0}, max {max:.0})");
            median
        };
        let u = row("unsigned ping throughput", &mut unsigned);
        let s = row("signed ping throughput", &mut signed);
        println!();
        println!("signed / unsigned            {:>12.2}", s / u);
        println!(
            "verification cost, derived  {:>12.1} µs per command (1/signed − 1/unsigned, wall clock)",
            (1.0 / s - 1.0 / u) * 1e6
        );
        let (v, v_min, v_max) = spread(&mut verify_us);
        println!("Ed25519 verify alone (ring)  {v:>12.1} µs per signature (min {v_min:.1}, max {v_max:.1})");
        if let Some(rss) = rss {
            println!("relayer RSS after the load   {:>12.1} MiB", rss as f64 / 1024.0);
        }
    });
}
