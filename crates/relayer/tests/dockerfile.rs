//! The image build's dependency layer (docker/Dockerfile) compiles the
//! dependencies against stub sources from `docker/stub-sources.sh`. No
//! Docker engine runs here, so this checks the part that breaks silently:
//! with only the files the Dockerfile's first stage copies plus the stubs,
//! the workspace loads (every member and every declared target has its
//! file) and the lock file is used as is.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The first stage's `COPY` lines, as (source, destination) pairs.
fn first_stage_copies(dockerfile: &str) -> Vec<(String, String)> {
    dockerfile
        .lines()
        .take_while(|line| !line.starts_with("# 2."))
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|args| !args.contains("stub-sources.sh"))
        .flat_map(|args| {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let (dest, sources) = parts.split_last().unwrap();
            sources
                .iter()
                .map(|source| (source.to_string(), dest.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_dependency_layer_workspace_loads_with_stub_sources() {
    let repo = repo();
    let dockerfile = std::fs::read_to_string(repo.join("docker/Dockerfile")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copies = first_stage_copies(&dockerfile);
    assert!(copies.len() >= 7, "{copies:?}");
    for (source, dest) in &copies {
        let from = repo.join(source);
        let dest = dir.path().join(dest.trim_start_matches("./"));
        if from.is_dir() {
            copy_dir(&from, &dest);
        } else if dest.to_string_lossy().ends_with('/') || dest == dir.path() {
            std::fs::create_dir_all(&dest).unwrap();
            std::fs::copy(&from, dest.join(from.file_name().unwrap())).unwrap();
        } else {
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&from, &dest).unwrap();
        }
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
    // `cargo check` loads the whole workspace strictly (a member or declared
    // target without its file is an error) before compiling anything;
    // asking for an example that does not exist stops it right after that.
    let probe = Command::new(env!("CARGO"))
        .args([
            "check",
            "--locked",
            "--offline",
            "-p",
            "consonant-relayer",
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
            dir.path()
                .join(format!("crates/relayer/benches/{bench}.rs"))
                .exists(),
            "stub for bench {bench}"
        );
    }
    assert!(dir.path().join("crates/dev/src/main.rs").exists());
    // A build script decides how its crate compiles or links (the
    // relayer's sets its link options): the dependency layer must have
    // each one, or the image's binary would be built without it.
    for entry in std::fs::read_dir(repo.join("crates")).unwrap() {
        let crate_dir = entry.unwrap().path();
        if crate_dir.join("build.rs").exists() {
            let relative = crate_dir.strip_prefix(&repo).unwrap().join("build.rs");
            assert!(
                dir.path().join(&relative).exists(),
                "the Dockerfile's first stage does not copy {}",
                relative.display()
            );
        }
    }
}

#[test]
fn the_dockerfile_builds_only_the_production_package() {
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY docker/stub-sources.sh"));
    assert_eq!(
        dockerfile
            .matches("&& cargo build --profile production --locked -p consonant-relayer \\")
            .count(),
        2,
        "both build steps build the production package alone, with the production profile"
    );
    assert_eq!(
        dockerfile.matches("&& cargo ").count(),
        2,
        "no other cargo step"
    );
    assert!(dockerfile.contains("cp target/production/consonant-relayer /consonant-relayer"));
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains("EXPOSE 8080 4317 4318"));
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.contains("!docker/stub-sources.sh"));
    assert!(ignore.contains("!crates/"));
}
