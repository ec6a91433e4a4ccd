//! TLS to the backend with rustls: a private CA through `backend.ca_file`,
//! a certificate from an unknown CA refused with a clear error, and
//! `tls_verify = false` connecting with a loud warning in the log and in
//! `/health`. The backend's certificates come from `rcgen`.

mod common;

use std::time::Duration;

use common::*;
use consonant_dev_backend::{self as devbackend, DevBackendHandle, DevBackendOptions, ServerTls};
use consonant_relayer::credentials::Secret;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(common_name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

async fn tls_backend(pki: &Pki) -> DevBackendHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    devbackend::start(DevBackendOptions {
        grpc_listen: free_addr(),
        http_listen: free_addr(),
        clusters: vec![(CLUSTER_ID.to_string(), Secret::new(TOKEN))],
        grpc_tls: Some(ServerTls {
            cert_pem: pki.cert_pem.clone(),
            key_pem: pki.key_pem.clone(),
        }),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn options(backend: &DevBackendHandle, backend_toml: &str) -> RelayerOptions {
    let mut options = RelayerOptions::new(backend);
    options.extra = String::new();
    options.grpc_url = backend.grpc_url();
    options.backend_extra = backend_toml.to_string();
    options
}

#[tokio::test]
async fn private_ca_in_ca_file_is_trusted() {
    let pki = pki("consonant test CA");
    let backend = tls_backend(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let relayer = Relayer::start(options(
        &backend,
        &format!("ca_file = \"{}\"", ca.display()),
    ));
    let health = relayer.wait_connected().await;
    assert_eq!(health["grpc"]["tls"], true);
    assert_eq!(health["warnings"], serde_json::json!([]));
    let result = run_command(&backend, ping("over-tls", b"secure")).await;
    assert_eq!(result.status, 1);
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_refused_with_the_reason() {
    let served = pki("the server's CA");
    let other = pki("some other CA");
    let backend = tls_backend(&served).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &other.ca_pem).unwrap();
    let relayer = Relayer::start(options(
        &backend,
        &format!("ca_file = \"{}\"", ca.display()),
    ));
    let health = relayer
        .wait_health(Duration::from_secs(10), |h| {
            h["grpc"]["lastError"].as_str().is_some()
        })
        .await;
    let error = health["grpc"]["lastError"].as_str().unwrap();
    assert!(
        error.contains("UnknownIssuer") || error.contains("certificate"),
        "{error}"
    );
    assert_eq!(health["grpc"]["connected"], false);
}

#[tokio::test]
async fn tls_verify_false_connects_with_a_loud_warning() {
    let served = pki("untrusted CA");
    let backend = tls_backend(&served).await;
    let relayer = Relayer::start(options(&backend, "tls_verify = false"));
    let health = relayer.wait_connected().await;
    let warnings = health["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{health}");
    assert!(warnings[0]
        .as_str()
        .unwrap()
        .contains("tls_verify is false"));
    assert_eq!(health["grpc"]["tlsVerify"], false);
    assert!(
        relayer.output().contains("NOT verified"),
        "{}",
        relayer.output()
    );
}
