//! The registration HTTP client (reqwest over rustls): one `POST
//! /api/v1/clusters` per [`RegistrationClient::attempt`], answered as
//! registered, refused for good (401/403/409/422, TLS), or worth retrying
//! (429, 5xx, network); and [`register_with_retries`], which retries with
//! jittered backoff — honouring `Retry-After` — inside a total time budget.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;

use super::body::{Registration, RegistrationRequest};
use super::error::{backend_message, RegisterError};
use super::tls;
use crate::backoff::Backoff;
use crate::config::BackendConfig;
use crate::credentials::Secret;
use crate::egress::EgressRoute;
use crate::{error_chain::error_chain, tls::client_tls_config};

/// Backoff between attempts: full jitter from 500 ms, doubling, capped.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// One attempt never waits longer than this for an answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a refusal message should name (the fix is in these).
#[derive(Debug, Clone)]
pub struct RefusalContext {
    pub cluster_name: String,
    /// `namespace/name` of the cluster Secret.
    pub secret: String,
    /// The config file, for 422.
    pub config: String,
    /// `--timeout` as given, for the message when it is spent.
    pub timeout: Duration,
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    Registered(Registration),
    /// Not worth retrying.
    Failed(RegisterError),
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

pub struct RegistrationClient {
    http: reqwest::Client,
    url: String,
    endpoint: String,
    host: String,
    ca_file: String,
    /// The proxy registration goes through (redacted), and the target it
    /// is asked to CONNECT to.
    proxy: Option<(String, String)>,
}

impl RegistrationClient {
    /// Trusts the system roots plus `backend.ca_file` (and presents
    /// `backend.client_cert_file` when set), exactly like the gRPC dialer;
    /// `backend.tls_verify = false` accepts any certificate, with a warning.
    pub fn new(backend: &BackendConfig, connect_timeout: Duration) -> Result<Self, RegisterError> {
        crate::logging::install_crypto_provider();
        let url = backend.url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&url).map_err(|err| {
            RegisterError::Usage(format!(
                "backend.url {url:?} is not a valid URL ({err}); set it to the backend's base URL, e.g. https://backend.company.com"
            ))
        })?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .user_agent(concat!("consonant-relayer/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the bootstrap token somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            // The proxy is chosen by `crate::egress`, exactly as for the
            // gRPC stream; reqwest's own reading of the environment is off.
            .no_proxy();
        let route = EgressRoute::from_config(&backend.proxy)
            .map_err(|err| RegisterError::Usage(err.to_string()))?;
        let mut through = None;
        if let Some(proxy) = route.proxy_for(parsed.scheme() == "https", &host) {
            let port = parsed.port_or_known_default().unwrap_or(443);
            through = Some((
                proxy.redacted(),
                crate::config::proxy::authority(&host, port),
            ));
            tracing::info!(%proxy, source = route.source(), "registering through an HTTP CONNECT proxy");
            let mut via =
                reqwest::Proxy::all(format!("http://{}", proxy.authority())).map_err(|err| {
                    RegisterError::Usage(format!(
                        "cannot use the proxy {proxy}: {}",
                        error_chain(&err)
                    ))
                })?;
            if let Some((user, password)) = proxy.expose_credentials() {
                via = via.basic_auth(user, password);
            }
            builder = builder.proxy(via);
        }
        match parsed.scheme() {
            "https" => {
                if !backend.tls_verify {
                    tracing::warn!(
                        url = %url,
                        "backend.tls_verify is false: the backend's certificate is NOT verified, so anyone on the network path can impersonate the backend and steal the bootstrap token; set backend.tlsVerify=true (backend.tls_verify = true) and backend.caFile (backend.ca_file) for a private CA"
                    );
                }
                builder = builder.tls_backend_preconfigured(client_tls_config(backend)?);
            }
            "http" => tracing::warn!(
                url = %url,
                "backend.url is plain http://: the bootstrap token and the cluster credentials cross the network unencrypted; use https:// outside development"
            ),
            other => {
                return Err(RegisterError::Usage(format!(
                    "backend.url {url:?} has scheme {other:?}; use https:// (or http:// for a development backend)"
                )))
            }
        }
        let http = builder.build().map_err(|err| {
            RegisterError::Usage(format!(
                "cannot build the HTTP client for backend.url {url:?}: {}",
                error_chain(&err)
            ))
        })?;
        Ok(Self {
            http,
            endpoint: format!("{url}/api/v1/clusters"),
            url,
            host,
            ca_file: backend.ca_file.clone(),
            proxy: through,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One `POST /api/v1/clusters`, waiting at most `timeout` for the answer.
    pub async fn attempt(
        &self,
        body: &RegistrationRequest,
        token: &Secret,
        timeout: Duration,
        context: &RefusalContext,
    ) -> Attempt {
        let mut auth = match HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
            Ok(value) => value,
            Err(_) => {
                return Attempt::Failed(RegisterError::Usage(
                    "the bootstrap token holds characters not allowed in an HTTP header".into(),
                ))
            }
        };
        // Marked sensitive so no HTTP stack ever prints it, at any log level.
        auth.set_sensitive(true);
        let sent = self
            .http
            .post(&self.endpoint)
            .header(AUTHORIZATION, auth)
            .json(body)
            .timeout(timeout)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => return self.transport_error(&err),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(err) => {
                return Attempt::Retry {
                    reason: format!(
                        "HTTP {status}, then reading the body failed: {}",
                        error_chain(&err)
                    ),
                    retry_after,
                }
            }
        };
        if status.is_success() {
            return match Registration::parse(&bytes) {
                Ok(registration) => Attempt::Registered(registration),
                Err(why) => Attempt::Failed(RegisterError::UnexpectedAnswer {
                    url: self.endpoint.clone(),
                    status: status.to_string(),
                    message: why,
                }),
            };
        }
        let message = backend_message(&String::from_utf8_lossy(&bytes));
        let failed = match status {
            StatusCode::UNAUTHORIZED => RegisterError::TokenRefused { message },
            StatusCode::FORBIDDEN => RegisterError::TokenForbidden {
                message,
                secret: context.secret.clone(),
            },
            StatusCode::CONFLICT => RegisterError::NameTaken {
                name: context.cluster_name.clone(),
                message,
            },
            StatusCode::UNPROCESSABLE_ENTITY => RegisterError::InvalidRequest {
                message,
                config: context.config.clone(),
            },
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
                return Attempt::Retry {
                    reason: format!("HTTP {status}: {message}"),
                    retry_after,
                }
            }
            s if s.is_server_error() => {
                return Attempt::Retry {
                    reason: format!("HTTP {status}: {message}"),
                    retry_after,
                }
            }
            _ => RegisterError::UnexpectedAnswer {
                url: self.endpoint.clone(),
                status: status.to_string(),
                message,
            },
        };
        Attempt::Failed(failed)
    }

    fn transport_error(&self, err: &reqwest::Error) -> Attempt {
        if let Some(failure) = tls::classify(err, &self.url, &self.host, &self.ca_file) {
            return Attempt::Failed(RegisterError::Tls(failure));
        }
        let chain = error_chain(err);
        if let Some((proxy, target)) = &self.proxy {
            // reqwest's CONNECT: 407 is final (credentials will not appear
            // by themselves); other refusals may be a proxy hiccup.
            if chain.contains("proxy authorization required") {
                return Attempt::Failed(RegisterError::ProxyAuth {
                    proxy: proxy.clone(),
                    target: target.clone(),
                });
            }
            if chain.contains("tunnel error") {
                return Attempt::Retry {
                    reason: format!("the proxy {proxy} did not open a tunnel to {target} ({chain}): its policy may forbid the backend, or it cannot reach it"),
                    retry_after: None,
                };
            }
        }
        let what = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connect failed"
        } else {
            "request failed"
        };
        Attempt::Retry {
            reason: format!("{what}: {}", error_chain(err)),
            retry_after: None,
        }
    }
}

/// Registers, retrying 429, 5xx and network errors with jittered backoff
/// (at least `Retry-After` when the backend sends one) until `budget` is
/// spent. 401/403/409/422, TLS failures and undefined answers end at once.
pub async fn register_with_retries(
    client: &RegistrationClient,
    body: &RegistrationRequest,
    token: &Secret,
    budget: Duration,
    context: &RefusalContext,
) -> Result<Registration, RegisterError> {
    let deadline = Instant::now() + budget;
    let timeout_flag = context.timeout;
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = remaining.clamp(Duration::from_millis(100), ATTEMPT_TIMEOUT);
        tracing::debug!(attempt = attempts, endpoint = %client.endpoint(), "registering");
        let (reason, retry_after) = match client.attempt(body, token, timeout, context).await {
            Attempt::Registered(registration) => return Ok(registration),
            Attempt::Failed(err) => return Err(err),
            Attempt::Retry {
                reason,
                retry_after,
            } => (reason, retry_after),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let delay = retry_delay(backoff.next_delay(), retry_after);
        if delay >= remaining {
            return Err(RegisterError::Unreachable {
                url: client.endpoint().to_string(),
                budget: timeout_flag,
                attempts,
                last: reason,
            });
        }
        tracing::warn!(
            attempt = attempts,
            %reason,
            retry_in_ms = delay.as_millis() as u64,
            remaining_ms = remaining.as_millis() as u64,
            "registration attempt failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// The wait before the next attempt: the jittered backoff, but never less
/// than the backend's `Retry-After`.
pub fn retry_delay(jittered: Duration, retry_after: Option<Duration>) -> Duration {
    retry_after.map_or(jittered, |after| after.max(jittered))
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_as_seconds_or_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let check = |value: &str, expected: Option<Duration>| {
            assert_eq!(parse_retry_after(value, now), expected, "{value}");
        };
        check("3", Some(Duration::from_secs(3)));
        check(" 0 ", Some(Duration::ZERO));
        check(
            &httpdate::fmt_http_date(now + Duration::from_secs(7)),
            Some(Duration::from_secs(7)),
        );
        check(
            &httpdate::fmt_http_date(now - Duration::from_secs(7)),
            Some(Duration::ZERO),
        );
        check("soon", None);
    }

    #[test]
    fn retry_after_is_a_floor_for_the_jittered_delay() {
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(ms(300), None), ms(300));
        assert_eq!(retry_delay(ms(300), Some(ms(2000))), ms(2000));
        assert_eq!(retry_delay(ms(3000), Some(ms(2000))), ms(3000));
    }

    #[test]
    fn urls_that_cannot_work_are_usage_errors() {
        let check = |url: &str, needle: &str| {
            let backend = BackendConfig {
                url: url.into(),
                ..Default::default()
            };
            let err = RegistrationClient::new(&backend, Duration::from_secs(1))
                .err()
                .expect("refused");
            assert_eq!(err.exit_code(), super::super::error::exit::USAGE);
            assert!(err.to_string().contains(needle), "{err}");
        };
        check("not a url", "not a valid URL");
        check("ftp://backend", "scheme \"ftp\"");
    }
}
