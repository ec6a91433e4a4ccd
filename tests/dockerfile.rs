//! The image build's dependency layer (docker/Dockerfile) compiles the
//! dependencies against stub sources from `docker/stub-sources.sh`. No
//! Docker engine runs here, so this checks the part that breaks silently:
//! with only the files the Dockerfile copies plus the stubs, the manifest
//! loads (every `[[bench]]` and target has its file) and the lock file is
//! used as is.

use std::path::Path;
use std::process::Command;

#[test]
fn the_dependency_layer_manifest_loads_with_stub_sources() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for file in ["Cargo.toml", "Cargo.lock", "build.rs"] {
        std::fs::copy(repo.join(file), dir.path().join(file)).unwrap();
    }
    let stub = Command::new("sh")
        .arg(repo.join("docker/stub-sources.sh"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        stub.status.success(),
        "{}",
        String::from_utf8_lossy(&stub.stderr)
    );
    // `cargo build` parses the manifest strictly (a declared target without
    // its file is an error) before compiling anything; asking for an
    // example that does not exist stops it right after that parse.
    let probe = Command::new(env!("CARGO"))
        .args([
            "check",
            "--locked",
            "--offline",
            "--example",
            "manifest-probe",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(
        stderr.contains("no example target named `manifest-probe`"),
        "the Dockerfile's dependency layer would fail: {stderr}"
    );
    for bench in ["relay", "kubernetes", "telemetry"] {
        assert!(
            dir.path().join(format!("benches/{bench}.rs")).exists(),
            "stub for bench {bench}"
        );
    }
}

#[test]
fn the_dockerfile_uses_the_stub_script_and_the_ci_build_command() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/Dockerfile"))
            .unwrap();
    assert!(dockerfile.contains("COPY docker/stub-sources.sh"));
    assert_eq!(
        dockerfile
            .matches("&& cargo build --release --locked")
            .count(),
        2,
        "both build steps run the command CI runs"
    );
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains("EXPOSE 8080 4317 4318"));
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .unwrap();
    assert!(ignore.contains("!docker/stub-sources.sh"));
}
