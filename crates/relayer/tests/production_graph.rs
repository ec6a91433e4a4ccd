//! The production binary links no test double: the dependency graph of the
//! `consonant-relayer` package (normal and build dependencies, as
//! `cargo build -p consonant-relayer` and docker/Dockerfile resolve it)
//! holds neither the in-memory Kubernetes API, nor the reference backend,
//! nor the demo, nor a second HTTP server stack. (The proto3 JSON mapping is
//! in it since the cluster lock: `consonant-relayer sign` reads and writes
//! commands in that mapping, and the people who hold the keys run the
//! production binary.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `package name → enabled features` of the production package's graph.
fn production_graph() -> BTreeMap<String, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "consonant-relayer",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}|{f}",
        ])
        .current_dir(&workspace)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (package, features) = line.split_once('|')?;
            let name = package.split_whitespace().next()?;
            Some((name.to_string(), features.trim().to_string()))
        })
        .collect()
}

#[test]
fn the_production_package_links_no_simulator_backend_or_demo() {
    let graph = production_graph();
    assert!(graph.contains_key("consonant-relayer"), "{graph:?}");
    assert!(graph.contains_key("consonant-proto"), "{graph:?}");
    for absent in [
        "consonant-kube-sim",
        "consonant-dev-backend",
        "consonant-relayer-dev",
        "consonant-kube-testenv",
        "actix-web",
    ] {
        assert!(
            !graph.contains_key(absent),
            "{absent} is in the production binary's dependency graph"
        );
    }
    let proto_features = &graph["consonant-proto"];
    assert!(
        proto_features
            .split(',')
            .any(|feature| feature == "signing"),
        "the cluster lock needs consonant-proto's signing: {proto_features}"
    );
    // The fail points are a test-only feature.
    assert!(
        !graph["consonant-relayer"].contains("failpoints"),
        "{}",
        graph["consonant-relayer"]
    );
}
