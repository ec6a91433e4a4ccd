//! The HTTP CONNECT handshake (RFC 9110 §9.3.6): a TCP connection to the
//! proxy, `CONNECT host:port`, optional Basic proxy credentials, and the
//! proxy's answer read up to its blank line. On 2xx the same connection is
//! the tunnel, and TLS to the backend runs inside it end to end; any other
//! answer is an error that names the proxy (redacted) and its status, so
//! `/health` can say "407 Proxy Authentication Required".
//!
//! The answer's parser, [`parse_connect_response`], is a pure function of
//! the bytes read so far (fuzzed: `fuzzing::TARGETS`): bounded to
//! [`MAX_RESPONSE_HEAD_BYTES`], whatever the proxy sends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use consonant_secret::Secret;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::config::proxy::{authority, ProxyUrl};

/// The most of a proxy's answer read before the tunnel starts.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 8 * 1024;

/// The most of the proxy's reason phrase quoted in an error.
const MAX_REASON_CHARS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot reach the proxy {proxy}: {source}; check backend.proxy (or HTTPS_PROXY) and that a NetworkPolicy allows egress to it")]
    Unreachable {
        proxy: String,
        source: std::io::Error,
    },
    #[error("the proxy {proxy} answered {status} {reason} to CONNECT {target}{hint}")]
    Refused {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
        hint: &'static str,
    },
    #[error("the proxy {proxy} sent a malformed answer to CONNECT {target}: {detail}")]
    Malformed {
        proxy: String,
        target: String,
        detail: String,
    },
    #[error("the proxy {proxy} closed the connection before answering CONNECT {target}")]
    Closed { proxy: String, target: String },
    #[error("the proxy {proxy} sent data past its answer to CONNECT {target} before the tunnel's first byte; refusing a tunnel that may hold bytes not from the backend")]
    DataAfterAnswer { proxy: String, target: String },
    #[error("the target {0:?} has no host")]
    NoHost(String),
}

/// A parsed answer head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    pub status: u16,
    pub reason: String,
    /// Bytes of the head, blank line included.
    pub head_len: usize,
}

/// Why an answer head cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// No blank line within [`MAX_RESPONSE_HEAD_BYTES`].
    TooLarge,
    /// The status line is not `HTTP/1.x NNN reason`.
    BadStatusLine(String),
}

/// The proxy's answer so far: `Ok(None)` while the head is incomplete.
pub fn parse_connect_response(buf: &[u8]) -> Result<Option<ConnectResponse>, ResponseError> {
    let window = &buf[..buf.len().min(MAX_RESPONSE_HEAD_BYTES)];
    let Some(end) = find_head_end(window) else {
        return if buf.len() >= MAX_RESPONSE_HEAD_BYTES {
            Err(ResponseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let line_end = window
        .iter()
        .position(|&b| b == b'\n')
        .expect("a head end implies a newline");
    let line = String::from_utf8_lossy(&window[..line_end]);
    let line = line.trim_end_matches('\r');
    let bad = || ResponseError::BadStatusLine(printable(line));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(bad());
    }
    let status = parts.next().unwrap_or_default();
    if status.len() != 3 || !status.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let status: u16 = status.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&status) {
        return Err(bad());
    }
    Ok(Some(ConnectResponse {
        status,
        reason: printable(parts.next().unwrap_or_default()),
        head_len: end,
    }))
}

/// The end of the head: after "\r\n\r\n" (or a bare "\n\n").
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Printable ASCII only, at most [`MAX_REASON_CHARS`]: what the proxy
/// said, safe for a log line.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_REASON_CHARS)
        .collect()
}

/// The CONNECT request for `target` (`host:port`).
pub fn connect_request(target: &str, auth: Option<&Secret>) -> Vec<u8> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = auth {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth.expose());
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// Opens a tunnel to `target` (`host:port`) through `proxy`.
pub async fn open(proxy: &ProxyUrl, target: &str) -> Result<TcpStream, TunnelError> {
    let shown = proxy.redacted();
    let mut stream = TcpStream::connect(proxy.authority())
        .await
        .map_err(|source| TunnelError::Unreachable {
            proxy: shown.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let auth = proxy.basic_auth();
    stream
        .write_all(&connect_request(target, auth.as_ref()))
        .await
        .map_err(|source| TunnelError::Unreachable {
            proxy: shown.clone(),
            source,
        })?;
    // Read in small steps: the backend speaks only after our TLS hello, so
    // nothing may follow the head; reading little keeps it from being lost.
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|source| TunnelError::Unreachable {
                proxy: shown.clone(),
                source,
            })?;
        if read == 0 {
            return Err(TunnelError::Closed {
                proxy: shown,
                target: target.to_string(),
            });
        }
        head.extend_from_slice(&chunk[..read]);
        match parse_connect_response(&head) {
            Ok(None) => continue,
            Ok(Some(answer)) if (200..300).contains(&answer.status) => {
                if head.len() > answer.head_len {
                    return Err(TunnelError::DataAfterAnswer {
                        proxy: shown,
                        target: target.to_string(),
                    });
                }
                return Ok(stream);
            }
            Ok(Some(answer)) => {
                return Err(TunnelError::Refused {
                    proxy: shown,
                    target: target.to_string(),
                    status: answer.status,
                    hint: hint(answer.status, auth.is_some()),
                    reason: answer.reason,
                })
            }
            Err(ResponseError::TooLarge) => {
                return Err(TunnelError::Malformed {
                    proxy: shown,
                    target: target.to_string(),
                    detail: format!("no end of its header within {MAX_RESPONSE_HEAD_BYTES} bytes"),
                })
            }
            Err(ResponseError::BadStatusLine(line)) => {
                return Err(TunnelError::Malformed {
                    proxy: shown,
                    target: target.to_string(),
                    detail: format!("status line {line:?}"),
                })
            }
        }
    }
}

fn hint(status: u16, had_credentials: bool) -> &'static str {
    match (status, had_credentials) {
        (407, false) => "; the proxy wants credentials: put them in the proxy URL (http://user:password@host:port; the chart's backend.proxySecret)",
        (407, true) => "; the proxy refused the credentials in the proxy URL",
        (403, _) => "; the proxy's policy forbids this destination: ask for the backend's host and port to be allowed",
        (500..=599, _) => "; the proxy could not reach the backend (or is failing): check the backend from the proxy's side",
        _ => "",
    }
}

/// A connector for tonic and hyper: every call opens a tunnel through
/// `proxy` to the URI's host and port. TLS (when the URI is https) is laid
/// on top by the caller, so it runs end to end inside the tunnel.
#[derive(Debug, Clone)]
pub struct TunnelConnector {
    proxy: ProxyUrl,
}

impl TunnelConnector {
    pub fn new(proxy: ProxyUrl) -> Self {
        Self { proxy }
    }
}

impl tower::Service<http::Uri> for TunnelConnector {
    type Response = TokioIo<TcpStream>;
    type Error = TunnelError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TunnelError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TunnelError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| TunnelError::NoHost(uri.to_string()))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let stream = open(&proxy, &authority(host, port)).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_proxies_send_them() {
        let ok = |s: u16, r: &str, len: usize| {
            Ok(Some(ConnectResponse {
                status: s,
                reason: r.into(),
                head_len: len,
            }))
        };
        type Parsed = Result<Option<ConnectResponse>, ResponseError>;
        let rows: Vec<(&[u8], Parsed)> = vec![
            (b"HTTP/1.1 200 Connection established\r\n\r\n", ok(200, "Connection established", 39)),
            (b"HTTP/1.0 200 OK\r\nProxy-Agent: tinyproxy/1.11\r\n\r\n", ok(200, "OK", 48)),
            (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n\r\n", ok(407, "Proxy Authentication Required", 83)),
            (b"HTTP/1.1 200\r\n\r\n", ok(200, "", 16)),
            (b"HTTP/1.1 200 OK\n\n", ok(200, "OK", 17)),
            (b"HTTP/1.1 200 OK\r\n", Ok(None)),
            (b"", Ok(None)),
            (b"HTTP/2 200 OK\r\n\r\n", Err(ResponseError::BadStatusLine("HTTP/2 200 OK".into()))),
            (b"SSH-2.0-OpenSSH\r\n\r\n", Err(ResponseError::BadStatusLine("SSH-2.0-OpenSSH".into()))),
            (b"HTTP/1.1 20x OK\r\n\r\n", Err(ResponseError::BadStatusLine("HTTP/1.1 20x OK".into()))),
            (b"HTTP/1.1 999 Nope\r\n\r\n", Err(ResponseError::BadStatusLine("HTTP/1.1 999 Nope".into()))),
            (b"HTTP/1.1 502 Bad\x1b[31m Gateway\r\n\r\n", ok(502, "Bad[31m Gateway", 33)),
        ];
        for (bytes, expected) in rows {
            assert_eq!(
                parse_connect_response(bytes),
                expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn an_endless_head_is_refused_at_the_bound() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() + 13 < MAX_RESPONSE_HEAD_BYTES {
            head.extend_from_slice(b"X-Filler: 1\r\n");
        }
        assert_eq!(parse_connect_response(&head), Ok(None));
        head.resize(MAX_RESPONSE_HEAD_BYTES + 100, b'x');
        assert_eq!(parse_connect_response(&head), Err(ResponseError::TooLarge));
        // A reason phrase is cut to a loggable length.
        let long = format!("HTTP/1.1 403 {}\r\n\r\n", "n".repeat(5000));
        let answer = parse_connect_response(long.as_bytes()).unwrap().unwrap();
        assert_eq!(answer.reason.len(), MAX_REASON_CHARS);
    }

    #[test]
    fn the_request_carries_credentials_only_when_given() {
        let plain = connect_request("backend.example:443", None);
        assert_eq!(
            plain,
            b"CONNECT backend.example:443 HTTP/1.1\r\nHost: backend.example:443\r\n\r\n"
        );
        let auth = Secret::new("Basic dTpw");
        let with = String::from_utf8(connect_request("[::1]:50051", Some(&auth))).unwrap();
        assert!(with.starts_with("CONNECT [::1]:50051 HTTP/1.1\r\n"));
        assert!(with.contains("\r\nProxy-Authorization: Basic dTpw\r\n\r\n"));
    }

    /// Against a stand-in proxy on loopback: each answer becomes the
    /// error /health shows, with the proxy redacted.
    #[tokio::test]
    async fn refusals_name_the_proxy_and_its_answer() {
        let cases: [(&[u8], &str); 4] = [
            (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "answered 407 Proxy Authentication Required to CONNECT backend:443; the proxy refused the credentials"),
            (b"HTTP/1.1 403 Forbidden\r\n\r\n", "answered 403 Forbidden"),
            (b"HTTP/1.1 200 OK\r\n\r\nextra", "sent data past its answer"),
            (b"", "closed the connection before answering"),
        ];
        for (answer, expected) in cases {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let answer = answer.to_vec();
            let server = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let read = socket.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..read]).to_string();
                socket.write_all(&answer).await.unwrap();
                request
            });
            let proxy = ProxyUrl::parse(&format!("http://relay:hunter2@127.0.0.1:{port}")).unwrap();
            let error = open(&proxy, "backend:443").await.unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("http://relay:***@127.0.0.1:"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
            let request = server.await.unwrap();
            assert!(
                request.starts_with("CONNECT backend:443 HTTP/1.1\r\n"),
                "{request}"
            );
            assert!(
                request.contains("Proxy-Authorization: Basic cmVsYXk6aHVudGVyMg==\r\n"),
                "{request}"
            );
        }
        let nobody = ProxyUrl::parse("http://127.0.0.1:1").unwrap();
        let error = open(&nobody, "backend:443").await.unwrap_err().to_string();
        assert!(
            error.contains("cannot reach the proxy http://127.0.0.1:1"),
            "{error}"
        );
    }
}
