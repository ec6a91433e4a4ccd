//! Which Kubernetes API requests the client may send again by itself.
//!
//! kube's client retries every request answered 429, 503 or 504, whatever
//! its method (`Config::default_retry`). For a write that is not safe: a
//! 504 (the API server's own request timeout) or a 503 can come after the
//! write reached etcd, and sending it again applies it again — for a
//! rollout restart, after another restart landed in between, a second
//! rollout. The fault soak saw exactly that (docs/reliability.md): one
//! restart command, one run, two writes of its annotation.
//!
//! **Invariant: the client repeats a request only when it cannot have taken
//! effect.** Reads (GET, HEAD) are retried on 429, 503 and 504, as kube
//! does; a write only on 429, which the API server's flow control answers
//! before the request is handled. Any other failure of a write goes back to
//! the command as it is (FAILED, `retryable` in its error), and whoever
//! sent the command decides.

use http::{Method, Request, Response, StatusCode};
use kube::client::retry::RetryPolicy;
use kube::client::Body;
use tower::retry::Policy;
use tower::BoxError;

/// Whether a request with `method`, answered `status`, may be sent again.
pub fn may_retry(method: &Method, status: StatusCode) -> bool {
    let read = method == Method::GET || method == Method::HEAD;
    match status {
        StatusCode::TOO_MANY_REQUESTS => true,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => read,
        _ => false,
    }
}

/// kube's server-aware backoff ([`RetryPolicy::server_retry`]: 5 ms
/// doubling, `Retry-After` honoured), for the requests [`may_retry`]
/// allows.
#[derive(Clone)]
pub struct SafeRetry(RetryPolicy);

impl SafeRetry {
    pub fn new() -> Self {
        Self(RetryPolicy::server_retry())
    }
}

impl Default for SafeRetry {
    fn default() -> Self {
        Self::new()
    }
}

impl<Res> Policy<Request<Body>, Response<Res>, BoxError> for SafeRetry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<Res>, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if may_retry(req.method(), response.status()) => self.0.retry(req, result),
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        <RetryPolicy as Policy<Request<Body>, Response<Res>, BoxError>>::clone_request(
            &mut self.0,
            req,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_cannot_have_taken_effect_are_sent_again() {
        let table = [
            (Method::GET, 429, true),
            (Method::GET, 503, true),
            (Method::GET, 504, true),
            (Method::HEAD, 504, true),
            (Method::GET, 500, false),
            (Method::GET, 200, false),
            (Method::PATCH, 429, true),
            (Method::PATCH, 503, false),
            (Method::PATCH, 504, false),
            (Method::POST, 504, false),
            (Method::PUT, 503, false),
            (Method::DELETE, 504, false),
            (Method::DELETE, 429, true),
            (Method::PATCH, 200, false),
        ];
        for (method, status, retried) in table {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(may_retry(&method, status), retried, "{method} {status}");
        }
    }
}
