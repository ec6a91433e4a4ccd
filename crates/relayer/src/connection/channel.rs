//! Dialling the backend: a tonic `Channel` over plaintext HTTP/2 or over
//! rustls (configured by [`crate::tls`]), directly or through an HTTP
//! CONNECT tunnel ([`crate::egress`]: TLS then runs inside the tunnel, end
//! to end). One fresh channel per session, so a broken HTTP/2 connection is
//! never reused. [`Endpoints`] holds one [`Dialer`] per backend endpoint and
//! which one is current (failover).

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use crate::config::proxy::ProxyUrl;
use crate::config::{BackendConfig, ConnectionConfig};
use crate::egress::tunnel::TunnelConnector;
use crate::egress::EgressRoute;
use crate::error_chain::error_chain;
use crate::tls::{client_tls_config, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("backend.grpc_endpoint {uri:?} is not a valid URI: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
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
    /// The CONNECT proxy this endpoint is reached through, if any.
    proxy: Option<ProxyUrl>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("uri", &self.uri)
            .field("tls", &self.tls.is_some())
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl Dialer {
    /// `uri` is `http://host:port` or `https://host:port`; `tls` says
    /// which; `route` says whether it goes through a proxy.
    pub fn new(
        uri: &str,
        tls: bool,
        backend: &BackendConfig,
        connection: &ConnectionConfig,
        route: &EgressRoute,
    ) -> Result<Self, DialError> {
        let endpoint = configure(uri, connection)?;
        let host = endpoint.uri().host().unwrap_or_default().to_string();
        let proxy = route.proxy_for(tls, &host).cloned();
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
            proxy,
            connect_timeout: connection.connect_timeout,
        })
    }

    /// The proxy this endpoint goes through (redacted when shown).
    pub fn proxy(&self) -> Option<&ProxyUrl> {
        self.proxy.as_ref()
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
            match (&self.tls, &self.proxy) {
                (None, None) => self.endpoint.connect().await,
                (None, Some(proxy)) => {
                    self.endpoint
                        .connect_with_connector(TunnelConnector::new(proxy.clone()))
                        .await
                }
                (Some(config), Some(proxy)) => {
                    let https = hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config((**config).clone())
                        .https_only()
                        .enable_http2()
                        .wrap_connector(TunnelConnector::new(proxy.clone()));
                    self.plain_endpoint
                        .connect_with_connector(restore_https(https))
                        .await
                }
                (Some(config), None) => {
                    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
                    tcp.enforce_http(false);
                    tcp.set_nodelay(true);
                    tcp.set_connect_timeout(Some(self.connect_timeout));
                    let https = hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config((**config).clone())
                        .https_only()
                        .enable_http2()
                        .wrap_connector(tcp);
                    self.plain_endpoint
                        .connect_with_connector(restore_https(https))
                        .await
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

/// Every backend endpoint, in failover order, and the one the next dial
/// goes to. Lives in the `RelayContext`, so the endpoint the relayer stuck
/// to survives a ConnectionActor restart.
#[derive(Debug)]
pub struct Endpoints {
    dialers: Vec<Dialer>,
    current: std::sync::atomic::AtomicUsize,
}

impl Endpoints {
    /// At least one dialer.
    pub fn new(dialers: Vec<Dialer>) -> Self {
        assert!(!dialers.is_empty(), "at least one backend endpoint");
        Self {
            dialers,
            current: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.dialers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dialers.is_empty()
    }

    pub fn index(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The endpoint the next dial goes to.
    pub fn current(&self) -> &Dialer {
        &self.dialers[self.index() % self.dialers.len()]
    }

    /// Makes `index` current; true if that is a move.
    pub fn set_current(&self, index: usize) -> bool {
        let index = index % self.dialers.len();
        self.current
            .swap(index, std::sync::atomic::Ordering::Relaxed)
            != index
    }

    pub fn all(&self) -> &[Dialer] {
        &self.dialers
    }
}

/// tonic refuses an https:// endpoint unless its own TLS is configured, so
/// the endpoint says http:// and this connector restores https:// before
/// the TLS handshake (which also takes the server name from it).
fn restore_https<S>(
    https: S,
) -> impl tower::Service<http::Uri, Response = S::Response, Error = BoxError, Future = impl Send>
       + Clone
       + Send
where
    S: tower::Service<http::Uri> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send,
{
    tower::service_fn(move |uri: http::Uri| {
        let mut https = https.clone();
        async move {
            let mut parts = uri.into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            let uri = http::Uri::from_parts(parts).map_err(|e| Box::new(e) as BoxError)?;
            tower::Service::call(&mut https, uri)
                .await
                .map_err(Into::into)
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_uri_is_named() {
        let err = Dialer::new(
            "not a uri",
            false,
            &BackendConfig::default(),
            &ConnectionConfig::default(),
            &EgressRoute::direct(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a uri"));
    }
}
