//! Dialling the backend: a tonic `Channel` over plaintext HTTP/2 or over
//! rustls (system roots plus `backend.ca_file`, an optional client
//! certificate, and — only when `backend.tls_verify = false` — no server
//! verification). One fresh channel per session, so a broken HTTP/2
//! connection is never reused.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

use crate::config::{BackendConfig, ConnectionConfig};

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("backend.grpc_endpoint {uri:?} is not a valid URI: {reason}")]
    InvalidUri { uri: String, reason: String },
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
    Tls(String),
    #[error("connect to {uri} failed: {reason}; check backend.grpc_endpoint (or backend.url), that the backend is up, and that a NetworkPolicy allows the egress")]
    Connect { uri: String, reason: String },
    #[error("connect to {uri} timed out after {timeout:?}; check that the backend is reachable from this pod (DNS, firewall, NetworkPolicy) or raise connection.connect_timeout")]
    Timeout { uri: String, timeout: Duration },
}

/// Everything needed to open channels to one backend endpoint.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
pub struct Dialer {
    uri: String,
    endpoint: Endpoint,
    /// The same endpoint addressed as `http://`, for the TLS connector.
    plain_endpoint: Endpoint,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("uri", &self.uri)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Dialer {
    /// `uri` is `http://host:port` or `https://host:port`; `tls` says which.
    pub fn new(
        uri: &str,
        tls: bool,
        backend: &BackendConfig,
        connection: &ConnectionConfig,
    ) -> Result<Self, DialError> {
        let endpoint = configure(uri, connection)?;
        let plain_endpoint = configure(&uri.replacen("https://", "http://", 1), connection)?;
        let tls = if tls {
            Some(Arc::new(client_tls_config(backend)?))
        } else {
            None
        };
        Ok(Self {
            uri: uri.to_string(),
            endpoint,
            plain_endpoint,
            tls,
            connect_timeout: connection.connect_timeout,
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens a new connection (TCP, TLS, HTTP/2), bounded by `connect_timeout`.
    pub async fn dial(&self) -> Result<Channel, DialError> {
        let attempt = async {
            match &self.tls {
                None => self.endpoint.connect().await,
                Some(config) => {
                    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
                    tcp.enforce_http(false);
                    tcp.set_nodelay(true);
                    tcp.set_connect_timeout(Some(self.connect_timeout));
                    let https = hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config((**config).clone())
                        .https_only()
                        .enable_http2()
                        .wrap_connector(tcp);
                    // tonic refuses an https:// endpoint unless its own TLS is
                    // configured, so the endpoint says http:// and this
                    // connector restores https:// before the TLS handshake.
                    let connector = tower::service_fn(move |uri: http::Uri| {
                        let mut https = https.clone();
                        async move {
                            let mut parts = uri.into_parts();
                            parts.scheme = Some(http::uri::Scheme::HTTPS);
                            let uri = http::Uri::from_parts(parts)
                                .map_err(|e| Box::new(e) as BoxError)?;
                            tower::Service::call(&mut https, uri).await
                        }
                    });
                    self.plain_endpoint.connect_with_connector(connector).await
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(err)) => Err(DialError::Connect {
                uri: self.uri.clone(),
                reason: error_chain(&err),
            }),
            Err(_) => Err(DialError::Timeout {
                uri: self.uri.clone(),
                timeout: self.connect_timeout,
            }),
        }
    }
}

fn configure(uri: &str, connection: &ConnectionConfig) -> Result<Endpoint, DialError> {
    Ok(Endpoint::from_shared(uri.to_string())
        .map_err(|err| DialError::InvalidUri {
            uri: uri.to_string(),
            reason: err.to_string(),
        })?
        .connect_timeout(connection.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(connection.http2_keepalive_interval)
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20)))
}

/// The whole `source()` chain in one line: tonic's top-level transport error
/// alone ("transport error") tells a user nothing.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn read_file(key: &'static str, path: &str) -> Result<Vec<u8>, DialError> {
    std::fs::read(path).map_err(|source| DialError::ReadFile {
        key,
        path: path.to_string(),
        source,
    })
}

fn pem_certs(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, DialError> {
    let pem = read_file(key, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(DialError::BadPem {
            key,
            path: path.to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The system's root certificates plus the PEM bundle at `ca_file` (the
/// config key `ca_key`; "" = system roots only).
pub fn trusted_roots(ca_key: &'static str, ca_file: &str) -> Result<RootCertStore, DialError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if !ca_file.is_empty() {
        for cert in pem_certs(ca_key, ca_file)? {
            roots
                .add(cert)
                .map_err(|err| DialError::Tls(format!("{ca_key} {ca_file}: {err}")))?;
        }
    }
    Ok(roots)
}

/// rustls client configuration for `backend`.
pub fn client_tls_config(backend: &BackendConfig) -> Result<ClientConfig, DialError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| DialError::Tls(err.to_string()))?;
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
            .ok_or_else(|| DialError::BadPem {
                key: "backend.client_key_file",
                path: backend.client_key_file.clone(),
                what: "private key",
            })?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|err| DialError::Tls(format!("client certificate: {err}")))?
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

    #[test]
    fn invalid_uri_is_named() {
        let err = Dialer::new(
            "not a uri",
            false,
            &BackendConfig::default(),
            &ConnectionConfig::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a uri"));
    }
}
