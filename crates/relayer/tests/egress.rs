//! Egress the way enterprises run it (config.md "Egress: proxy and endpoint
//! failover"), against real peers: two reference backends for failover,
//! and (with the real tinyproxy, `tests/common/proxy.rs`) the proxy.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `[backend] grpc_endpoints` over `backends`, with a quick breaker (2
/// failures) and a short backoff, so a dead endpoint is left fast.
fn failover_options(backends: &[&consonant_dev_backend::DevBackendHandle]) -> RelayerOptions {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.grpc_url()))
        .collect();
    let mut options = RelayerOptions::new(backends[0]).connection(
        "backoff_base = \"50ms\"\nbackoff_max = \"200ms\"\nbreaker_failure_threshold = 2\nbreaker_open_duration = \"30s\"\nconnect_timeout = \"1s\"",
    );
    options.grpc_url = String::new();
    options.backend_extra = format!("grpc_endpoints = [{}]", endpoints.join(", "));
    options
}

fn endpoint(health: &Value) -> String {
    health["grpc"]["endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The first backend dies with results unacknowledged: the relayer moves to
/// the second well within one breaker period (30 s), replays there what the
/// first never acked, and counts the failover. When the first comes back
/// the relayer stays where it is (sticky); when the second dies it wraps
/// around to the first.
#[tokio::test]
async fn failover_to_the_next_endpoint_replays_and_sticks() {
    let first = backend().await;
    let second = backend().await;
    let (first_grpc, first_http) = (first.grpc_addr, first.http_addr);
    let first_url = first.grpc_url();
    let second_url = second.grpc_url();
    let relayer = Relayer::start(failover_options(&[&first, &second]));
    let health = relayer.wait_connected().await;
    assert_eq!(endpoint(&health), first_url);
    assert!(first.state().last_hello(CLUSTER_ID).is_some());
    assert!(
        second.state().last_hello(CLUSTER_ID).is_none(),
        "no session to the second yet"
    );

    pings_with_acks_withheld(&first, "f", 10).await;
    let died = Instant::now();
    first.shutdown().await;
    relayer
        .wait_health(Duration::from_secs(25), |h| {
            h["grpc"]["connected"] == true && endpoint(h) == second_url
        })
        .await;
    let moved_after = died.elapsed();
    assert!(moved_after < Duration::from_secs(30), "{moved_after:?}");
    // Everything the first never acknowledged arrives at the second.
    let replayed = eventually(Duration::from_secs(10), || {
        let frames = second.state().frames(CLUSTER_ID).unwrap();
        (0..10).all(|i| {
            frames
                .frames
                .iter()
                .any(|f| f.command_id.as_deref() == Some(format!("f-{i}").as_str()))
        })
    })
    .await;
    assert!(replayed, "{:?}", second.state().frames(CLUSTER_ID));
    assert_eq!(
        relayer
            .metric("consonant_relayer_endpoint_failovers_total", "")
            .await,
        1.0
    );
    let actors = relayer.json("/debug/actors").await.unwrap();
    let connection = actors["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ConnectionActor")
        .unwrap();
    assert_eq!(connection["details"]["endpoint"], second_url.as_str());
    assert_eq!(connection["details"]["endpoint_index"], 1);
    assert_eq!(
        connection["details"]["endpoints"],
        serde_json::json!([first_url, second_url])
    );

    // The first comes back: the relayer stays on the second.
    let revived = backend_on(Some(first_grpc), Some(first_http)).await;
    let result = run_command(&second, ping("on-second", b"")).await;
    assert_eq!(result.command_id, "on-second");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        endpoint(&relayer.json("/health").await.unwrap()),
        second_url
    );
    assert!(
        revived.state().last_hello(CLUSTER_ID).is_none(),
        "sticky: no session to the first"
    );

    // The second dies: wrap around to the first.
    second.shutdown().await;
    relayer
        .wait_health(Duration::from_secs(25), |h| {
            h["grpc"]["connected"] == true && endpoint(h) == first_url
        })
        .await;
    let result = run_command(&revived, ping("back-on-first", b"")).await;
    assert_eq!(result.command_id, "back-on-first");
    assert_eq!(
        relayer
            .metric("consonant_relayer_endpoint_failovers_total", "")
            .await,
        2.0
    );
}

// ---------------------------------------------------------------- proxy

use common::proxy::Tinyproxy;
use consonant_dev_backend::{self as devbackend, DevBackendHandle, DevBackendOptions, ServerTls};
use consonant_relayer::credentials::Secret;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A reference backend serving gRPC over TLS as `localhost` (a private CA),
/// and the CA's PEM in a file for `backend.ca_file`.
async fn tls_backend(dir: &std::path::Path) -> (DevBackendHandle, std::path::PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "egress test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = devbackend::start(DevBackendOptions {
        clusters: vec![(CLUSTER_ID.to_string(), Secret::new(TOKEN))],
        grpc_tls: Some(ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (backend, ca_file)
}

/// The backend's `host:port` as a CONNECT names it.
fn connect_target(backend: &DevBackendHandle) -> String {
    backend
        .grpc_url()
        .split_once("://")
        .map(|(_, rest)| rest.to_string())
        .unwrap()
}

/// Everything the relayer shows about itself, to check no secret is in it.
async fn everything_shown(relayer: &Relayer) -> String {
    format!(
        "{}\n{}\n{}",
        relayer.output(),
        relayer.json("/health").await.unwrap_or_default(),
        relayer.json("/debug/actors").await.unwrap_or_default()
    )
}

/// TLS to the backend end to end inside the proxy's tunnel: the relayer is
/// connected, the proxy's log holds the CONNECT to the backend, the
/// backend's certificate was checked by its name (a private CA trusted
/// through `ca_file`), and commands flow.
#[tokio::test]
async fn the_stream_goes_through_the_proxy_with_tls_inside() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, ca_file) = tls_backend(dir.path()).await;
    let proxy = Tinyproxy::start();
    let relayer = Relayer::start({
        let mut options = RelayerOptions::new(&backend);
        options.backend_extra = format!(
            "ca_file = \"{}\"\nproxy = \"{}\"",
            ca_file.display(),
            proxy.url()
        );
        options
    });
    let health = relayer.wait_connected().await;
    assert_eq!(health["grpc"]["tls"], true);
    assert_eq!(health["grpc"]["proxy"], proxy.url());
    assert_eq!(proxy.connects(), [connect_target(&backend)]);
    let result = run_command(&backend, ping("through-the-proxy", b"tunnelled")).await;
    assert_eq!(result.output_json.as_ref(), br#"{"payload_len":9}"#);
}

/// A proxy that wants credentials: without them, `/health` names the 407
/// and the relayer keeps backing off; with them in the URL (from the
/// environment here, as HTTPS_PROXY), it connects — and the password is in
/// no log line, no `/health`, no `/debug/actors`, no `check-config`.
#[tokio::test]
async fn proxy_credentials_work_and_never_show() {
    const PASSWORD: &str = "s3cret-proxy-pass";
    let backend = backend().await;
    let proxy = Tinyproxy::with_basic_auth("relay", PASSWORD);

    let without = Relayer::start(
        RelayerOptions::new(&backend)
            .connection("backoff_base = \"100ms\"\nbackoff_max = \"500ms\"")
            .env("HTTP_PROXY", &proxy.url()),
    );
    let health = without
        .wait_health(Duration::from_secs(15), |h| {
            h["grpc"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("407"))
        })
        .await;
    let error = health["grpc"]["lastError"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "the proxy {} answered 407 Proxy Authentication Required to CONNECT {}",
            proxy.url(),
            connect_target(&backend)
        )),
        "{error}"
    );
    assert!(error.contains("the proxy wants credentials"), "{error}");
    assert_eq!(health["grpc"]["connected"], false);
    drop(without);

    let with = Relayer::start(
        RelayerOptions::new(&backend).env("http_proxy", &proxy.url_with_credentials()),
    );
    let health = with.wait_connected().await;
    assert_eq!(
        health["grpc"]["proxy"],
        format!("http://relay:***@127.0.0.1:{}", proxy.port())
    );
    let result = run_command(&backend, ping("with-credentials", b"")).await;
    assert_eq!(result.command_id, "with-credentials");
    let shown = everything_shown(&with).await;
    assert!(!shown.contains(PASSWORD), "{shown}");

    // check-config with the proxy in the file prints it redacted.
    let config = with.dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"c\"\n[backend]\nurl = \"https://b.example\"\nproxy = \"{}\"\n",
            proxy.url_with_credentials()
        ),
    )
    .unwrap();
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_consonant-relayer"))
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(checked.status.success());
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(
        printed.contains("proxy = \"http://relay:***@127.0.0.1:"),
        "{printed}"
    );
    assert!(!printed.contains(PASSWORD), "{printed}");
}

/// `NO_PROXY` keeps a backend direct even with HTTPS_PROXY set, and
/// `backend.proxy = "none"` ignores the environment altogether: the proxy
/// sees no CONNECT either way.
#[tokio::test]
async fn no_proxy_and_none_go_direct() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, ca_file) = tls_backend(dir.path()).await;
    let proxy = Tinyproxy::start();
    let ca = format!("ca_file = \"{}\"", ca_file.display());
    let bypassed = Relayer::start({
        let mut options = RelayerOptions::new(&backend)
            .env("HTTPS_PROXY", &proxy.url())
            .env("NO_PROXY", "example.org, localhost");
        options.backend_extra = ca.clone();
        options
    });
    let health = bypassed.wait_connected().await;
    assert_eq!(health["grpc"]["proxy"], serde_json::Value::Null);
    drop(bypassed);
    let none = Relayer::start({
        let mut options = RelayerOptions::new(&backend).env("HTTPS_PROXY", &proxy.url());
        options.backend_extra = format!("{ca}\nproxy = \"none\"");
        options
    });
    none.wait_connected().await;
    assert!(proxy.connects().is_empty(), "{:?}", proxy.connects());
}

/// The proxy goes away: the stream drops, `/health` says the proxy cannot
/// be reached, the relayer backs off; commands submitted meanwhile wait at
/// the backend. The proxy comes back: the relayer reconnects through it and
/// every command runs, none lost, none twice.
#[tokio::test]
async fn the_proxy_going_away_and_coming_back_loses_nothing() {
    let backend = backend().await;
    let mut proxy = Tinyproxy::start();
    let relayer = Relayer::start({
        let mut options = RelayerOptions::new(&backend).connection(
            "backoff_base = \"100ms\"\nbackoff_max = \"1s\"\nbreaker_failure_threshold = 1000",
        );
        options.backend_extra = format!("proxy = \"{}\"", proxy.url());
        options
    });
    relayer.wait_connected().await;
    let before = run_command(&backend, ping("before", b"")).await;
    assert_eq!(before.command_id, "before");

    proxy.stop();
    relayer
        .wait_health(Duration::from_secs(20), |h| {
            h["grpc"]["connected"] == false
                && h["grpc"]["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot reach the proxy"))
        })
        .await;
    let waiting: Vec<_> = (0..10)
        .map(|i| {
            backend
                .state()
                .submit_command(CLUSTER_ID, ping(&format!("during-{i}"), b"x"))
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    proxy.start_again();
    relayer.wait_connected().await;
    for waiter in waiting {
        let result = tokio::time::timeout(Duration::from_secs(15), waiter)
            .await
            .expect("a result after the proxy came back")
            .unwrap();
        assert_eq!(result.status, 1, "{result:?}");
    }
    let frames = backend.state().frames(CLUSTER_ID).unwrap();
    for i in 0..10 {
        let id = format!("during-{i}");
        let results = frames
            .frames
            .iter()
            .filter(|f| f.command_id.as_deref() == Some(id.as_str()))
            .count();
        assert_eq!(results, 1, "{id}: {:?}", frames.frames);
    }
    assert!(
        proxy.connects().len() >= 2,
        "a new tunnel after the restart: {:?}",
        proxy.connects()
    );
}
