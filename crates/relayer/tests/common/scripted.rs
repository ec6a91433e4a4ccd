//! A scripted backend for hostile-backend tests: a bare relay-protocol
//! server on loopback whose every stream runs the test's script — what a
//! compromised or buggy backend could send, frame by frame, with nothing of
//! the reference backend's good manners (it acks only when told to, and
//! reads only when it wants).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use consonant_relayer::proto::{
    backend_frame, relay_service_server, BackendFrame, RelayerFrame, Welcome,
};
use futures::Stream;
use tokio::sync::mpsc;

pub(crate) type Outbound = mpsc::Sender<Result<BackendFrame, tonic::Status>>;
pub(crate) type Inbound = tonic::Streaming<RelayerFrame>;
type Script =
    Arc<dyn Fn(Inbound, Outbound) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Scripted {
    script: Script,
}

type BackendStream = Pin<Box<dyn Stream<Item = Result<BackendFrame, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl relay_service_server::RelayService for Scripted {
    type ConnectStream = BackendStream;

    async fn connect(
        &self,
        request: tonic::Request<tonic::Streaming<RelayerFrame>>,
    ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn((self.script)(request.into_inner(), tx));
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Serves `script` on a loopback port; returns the gRPC URL.
pub(crate) async fn serve<F, Fut>(script: F) -> String
where
    F: Fn(Inbound, Outbound) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let script: Script = Arc::new(move |inbound, outbound| Box::pin(script(inbound, outbound)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(relay_service_server::RelayServiceServer::new(Scripted {
                script,
            }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    format!("http://{addr}")
}

/// Waits for `Hello` and answers `Welcome`; false if the stream ended first.
pub(crate) async fn welcome(inbound: &mut Inbound, outbound: &Outbound) -> bool {
    let Ok(Some(_hello)) = inbound.message().await else {
        return false;
    };
    let welcome = BackendFrame {
        body: Some(backend_frame::Body::Welcome(Welcome {
            session_id: "scripted".into(),
            ..Default::default()
        })),
    };
    outbound.send(Ok(welcome)).await.is_ok()
}

/// A frame carrying `command`.
pub(crate) fn command_frame(
    command: consonant_relayer::proto::Command,
) -> Result<BackendFrame, tonic::Status> {
    Ok(BackendFrame {
        body: Some(backend_frame::Body::Command(command)),
    })
}
