//! The README's main command, played as CI can: `consonant-relayer-dev demo
//! --script` runs the whole scenario (reference backend, in-memory
//! Kubernetes API, register, relayer) on loopback and exits 0 only if every
//! step passed. The demo prefers its documented ports and falls back to
//! free ones, so it runs beside other tests.

use std::process::Command;

#[test]
fn demo_script_passes_every_step() {
    let out = Command::new(env!("CARGO_BIN_EXE_consonant-relayer-dev"))
        .args(["demo", "--script"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo --script failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    let passed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("PASS "))
        .collect();
    assert!(
        !stdout.lines().any(|line| line.starts_with("FAIL ")),
        "{stdout}"
    );
    for step in [
        "ping round trip",
        "apply the sample Deployment",
        "scale it to 3",
        "send 10 OTLP spans",
        "drain, then reconnect",
        "rotate the token",
    ] {
        assert!(
            passed.iter().any(|line| line.contains(step)),
            "step {step:?} did not pass:\n{stdout}"
        );
    }
}
