//! Limits on how long and how many clients the OTLP/HTTP receiver serves
//! (protocol.md, "Answers to edge cases"): a connection that sends no
//! complete request headers within [`HEADER_READ_TIMEOUT`] is closed
//! (hyper answers 408), a request body that stalls for
//! [`BODY_STALL_TIMEOUT`] ends the request with 408, and at most
//! [`MAX_CONNECTIONS`] connections are served at once — further ones wait
//! in the listen backlog until one closes. The gRPC receiver has the same
//! connection cap, a stream cap per connection and a request timeout. A
//! slow or hostile OTLP client can hold neither memory nor tasks for long.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Complete request headers must arrive within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body may pause this long between two pieces, no longer.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// HTTP/2 streams per connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The message a stalled body ends with (the handler answers 408 for it).
pub const STALLED: &str = "the request body stalled";

/// A request body that fails once no piece arrived for `stall`.
pub struct StallTimeout {
    inner: Body,
    stall: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl StallTimeout {
    pub fn new(inner: Body, stall: Duration) -> Self {
        Self {
            inner,
            stall,
            deadline: Box::pin(tokio::time::sleep(stall)),
        }
    }
}

impl HttpBody for StallTimeout {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.stall;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(format!(
                    "{STALLED}: nothing arrived for {:?}",
                    self.stall
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps every request's body in a [`StallTimeout`].
pub async fn limit_body_stalls(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    next.run(request.map(|body| Body::new(StallTimeout::new(body, BODY_STALL_TIMEOUT))))
        .await
}

/// A gRPC request (an export) may take this long, body included; a stalled
/// one ends with DEADLINE_EXCEEDED.
pub const GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An accepted connection that holds one of [`MAX_CONNECTIONS`] places until
/// it closes (the gRPC receiver's connection cap).
pub struct Permitted {
    tcp: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Permitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Permitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Permitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

/// The listener's connections, at most [`MAX_CONNECTIONS`] open at once:
/// at the cap it stops accepting until one closes.
pub fn capped_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<Permitted>> {
    let places = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    futures::stream::unfold((listener, places), |(listener, places)| async move {
        let permit = places.clone().acquire_owned().await.ok()?;
        let accepted = listener.accept().await.map(|(tcp, _)| {
            let _ = tcp.set_nodelay(true);
            Permitted {
                tcp,
                _permit: permit,
            }
        });
        Some((accepted, (listener, places)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_that_pauses_too_long_fails_and_one_that_keeps_coming_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let body = Body::new(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ));
        let mut body = StallTimeout::new(body, Duration::from_millis(300));
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
            // Then silence, with the sender kept open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"x"));
        }
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.to_string().contains(STALLED), "{error}");
        feeder.abort();
    }
}
