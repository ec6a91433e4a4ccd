//! Commands through the whole Kubernetes path — reference backend → relayer
//! (release binary, its own process) → in-memory Kubernetes API → back —
//! for `get` and `scale`, beside `ping` in the same run, each with 1 and
//! with 64 commands in flight. The executor must not serialise requests:
//! throughput at 64 in flight should be well above 1 in flight.
//!
//! Run: `cargo bench -p consonant-relayer --bench kubernetes` (`RELAY_BENCH_SECS` sets the window).

mod support;

use std::time::{Duration, Instant};

use consonant_dev_backend::{self as devbackend, DevBackendHandle, DevBackendOptions};
use consonant_kube_sim::{SimCluster, SimOptions};
use consonant_relayer::credentials::Secret;
use consonant_relayer::proto::{
    command, ApplyManifest, Command, GetResource, ObjectRef, Ping, ScaleWorkload,
};
use futures::stream::{FuturesUnordered, StreamExt};
use support::*;

const ROUNDS: usize = 3;

const WEB: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n        - name: web\n          image: nginx:1.27\n";

fn web() -> Option<ObjectRef> {
    Some(ObjectRef {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        namespace: "default".into(),
        name: "web".into(),
        uid: String::new(),
    })
}

fn command(kind: &str, i: u64) -> Command {
    let action = match kind {
        "ping" => command::Action::Ping(Ping {
            payload: vec![7u8; 64].into(),
        }),
        "get" => command::Action::Get(GetResource { target: web() }),
        // Same count every time: the API call happens, the pods do not churn.
        "scale" => command::Action::Scale(ScaleWorkload {
            target: web(),
            replicas: 1,
        }),
        other => unreachable!("{other}"),
    };
    Command {
        command_id: format!("{kind}-{i:016x}"),
        action: Some(action),
        ..Default::default()
    }
}

/// Commands/s with `in_flight` outstanding over `window`, and per-command latencies.
async fn measure(
    backend: &DevBackendHandle,
    kind: &str,
    in_flight: usize,
    window: Duration,
    next: &mut u64,
) -> (f64, Vec<Duration>) {
    let state = backend.state().clone();
    let mut pending = FuturesUnordered::new();
    let submit = |next: &mut u64| {
        *next += 1;
        let started = Instant::now();
        let rx = state.submit_command(CLUSTER, command(kind, *next)).unwrap();
        async move {
            let result = rx.await.expect("a result");
            assert_eq!(result.status, 1, "{kind}: {result:?}");
            started.elapsed()
        }
    };
    for _ in 0..in_flight {
        pending.push(submit(next));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    while let Some(latency) = pending.next().await {
        latencies.push(latency);
        if started.elapsed() < window {
            pending.push(submit(next));
        }
    }
    (
        latencies.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
    )
}

fn main() {
    runtime().block_on(async {
        let window = window();
        let sim = SimCluster::start(SimOptions::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        let backend = devbackend::start(DevBackendOptions {
            clusters: vec![(CLUSTER.to_string(), Secret::new(TOKEN))],
            ..Default::default()
        })
        .await
        .unwrap();
        let kubernetes = format!("enabled = true\nkubeconfig = \"{}\"\nleader_election = false\nwatch_label_selector = \"bench=none\"", kubeconfig.display());
        let _relayer = start_relayer(&backend, dir.path(), &kubernetes).await;
        let mut next = 0u64;
        // The Kubernetes client is built right after start; wait for it.
        let apply = Command {
            command_id: "apply-web".into(),
            action: Some(command::Action::Apply(ApplyManifest {
                manifest: WEB.as_bytes().to_vec().into(),
                namespace: "default".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let result = backend.state().submit_command(CLUSTER, apply.clone()).unwrap().await.unwrap();
            if result.status == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "apply never succeeded: {result:?}");
            backend.state().forget_command(CLUSTER, "apply-web");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("kubernetes bench: window {window:?}, {ROUNDS} rounds, median (min – max)\n");
        println!("{:<8} {:>24} {:>24} {:>14} {:>16}", "action", "1 in flight (cmds/s)", "64 in flight (cmds/s)", "64 / 1", "p99 @1 (µs)");
        for kind in ["ping", "get", "scale"] {
            let _ = measure(&backend, kind, 8, Duration::from_millis(300), &mut next).await; // warm-up
            let (mut one, mut many, mut p99) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let (rate, mut latencies) = measure(&backend, kind, 1, window, &mut next).await;
                one.push(rate);
                p99.push(percentile(&mut latencies, 0.99).as_secs_f64() * 1e6);
                many.push(measure(&backend, kind, 64, window, &mut next).await.0);
            }
            let (o, omin, omax) = spread(&mut one);
            let (m, mmin, mmax) = spread(&mut many);
            let (p, _, _) = spread(&mut p99);
            println!(
                "{kind:<8} {:>24} {:>24} {:>14.1} {:>16.0}",
                format!("{o:.0} ({omin:.0} – {omax:.0})"),
                format!("{m:.0} ({mmin:.0} – {mmax:.0})"),
                m / o,
                p
            );
        }
        backend.shutdown().await;
        sim.shutdown().await;
    });
}
