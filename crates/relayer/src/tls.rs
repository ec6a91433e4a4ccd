//! TLS client setup shared by every outbound connection (the backend's gRPC
//! stream, `register`'s HTTPS client, the span exporter): the system roots
//! plus a private CA bundle, an optional client certificate, and — only when
//! `backend.tls_verify = false` — no server verification. Errors name the
//! config key and the file.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::BackendConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} file {path}: {source}; fix the path or mount the file")]
    ReadFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{key} file {path} holds no usable PEM {what}; check that it is a PEM file")]
    BadPem {
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("TLS setup failed: {0}; check backend.ca_file, backend.client_cert_file and backend.client_key_file")]
    Setup(String),
}

fn read_file(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        key,
        path: path.to_string(),
        source,
    })
}

fn pem_certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(key, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            key,
            path: path.to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The system's root certificates plus the PEM bundle at `ca_file` (the
/// config key `ca_key`; "" = system roots only).
pub fn trusted_roots(ca_key: &'static str, ca_file: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if !ca_file.is_empty() {
        for cert in pem_certs(ca_key, ca_file)? {
            roots
                .add(cert)
                .map_err(|err| TlsError::Setup(format!("{ca_key} {ca_file}: {err}")))?;
        }
    }
    Ok(roots)
}

/// rustls client configuration for `backend`.
pub fn client_tls_config(backend: &BackendConfig) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Setup(err.to_string()))?;
    let builder = if backend.tls_verify {
        builder.with_root_certificates(trusted_roots("backend.ca_file", &backend.ca_file)?)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = if backend.client_cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = pem_certs("backend.client_cert_file", &backend.client_cert_file)?;
        let key_pem = read_file("backend.client_key_file", &backend.client_key_file)?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .ok()
            .flatten()
            .ok_or_else(|| TlsError::BadPem {
                key: "backend.client_key_file",
                path: backend.client_key_file.clone(),
                what: "private key",
            })?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|err| TlsError::Setup(format!("client certificate: {err}")))?
    };
    // ALPN `h2` is added by the HTTPS connector (`enable_http2`); it refuses
    // a configuration that already names protocols.
    Ok(config)
}

/// `backend.tls_verify = false`: accept any server certificate. Only for
/// development; the relayer warns loudly in its log and in `/health`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_names_the_key_and_path() {
        let backend = BackendConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..Default::default()
        };
        let err = client_tls_config(&backend).unwrap_err().to_string();
        assert!(
            err.contains("backend.ca_file") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn ca_file_without_pem_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let backend = BackendConfig {
            ca_file: path.display().to_string(),
            ..Default::default()
        };
        let err = client_tls_config(&backend).unwrap_err().to_string();
        assert!(err.contains("no usable PEM certificate"), "{err}");
    }

    #[test]
    fn insecure_config_builds_without_roots() {
        let backend = BackendConfig {
            tls_verify: false,
            ..Default::default()
        };
        assert!(client_tls_config(&backend)
            .unwrap()
            .alpn_protocols
            .is_empty());
    }
}
