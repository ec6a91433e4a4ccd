//! The tinyproxy harness (`tests/common/proxy.rs`) against the real proxy,
//! without the relayer: CONNECT requests are written by hand over a raw
//! TcpStream, so these tests show what the proxy does, not what our client
//! does. A tunnel reaches a local echo server and is logged; basic auth
//! answers 407 without credentials and 200 with them; `stop()` refuses
//! connections and `start_again()` serves again on the same port.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::proxy::{basic_authorization, parse_connects, Tinyproxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WITHIN: Duration = Duration::from_secs(10);

/// A TCP echo server on 127.0.0.1, for as long as the test's runtime runs.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every request `200 ok`.
async fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut socket).await.is_some() {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    addr
}

/// Reads an HTTP head up to and including the blank line, byte by byte so
/// that nothing after it (tunnelled bytes) is consumed.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Writes `CONNECT target` (with `Proxy-Authorization: authorization` when
/// given) to the proxy by hand; returns the status code, the response head
/// and the stream (a tunnel when the status is 200).
async fn connect(
    proxy: SocketAddr,
    target: &str,
    authorization: Option<&str>,
) -> (u16, String, TcpStream) {
    let mut stream = tokio::time::timeout(WITHIN, TcpStream::connect(proxy))
        .await
        .expect("connect to the proxy in time")
        .expect("connect to the proxy");
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(authorization) = authorization {
        request.push_str(&format!("Proxy-Authorization: {authorization}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(WITHIN, read_head(&mut stream))
        .await
        .expect("the proxy answers the CONNECT in time")
        .expect("a complete response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    (status, head, stream)
}

/// Sends bytes through a tunnel to the echo server and expects them back.
async fn echo_through(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(WITHIN, stream.read_exact(&mut back))
        .await
        .expect("the echo comes back in time")
        .expect("read the echo");
    assert_eq!(back, payload);
}

#[tokio::test]
async fn connect_tunnels_to_a_local_echo_server_and_is_logged() {
    let echo = echo_server().await;
    let proxy = Tinyproxy::start();
    assert_eq!(proxy.url(), format!("http://127.0.0.1:{}", proxy.port()));
    assert!(proxy.proxy_authorization().is_none());

    let target = echo.to_string();
    let (status, head, mut tunnel) = connect(proxy.addr(), &target, None).await;
    assert_eq!(status, 200, "{head}\n{}", proxy.log());
    echo_through(&mut tunnel, b"hello through tinyproxy").await;
    echo_through(&mut tunnel, &[0u8, 1, 2, 255, 254, 13, 10, 13, 10]).await;
    drop(tunnel);

    assert_eq!(proxy.connects(), vec![target], "{}", proxy.log());
}

#[tokio::test]
async fn basic_auth_answers_407_without_credentials_and_200_with_them() {
    let echo = echo_server().await;
    let proxy = Tinyproxy::with_basic_auth("relay-user", "s3cret.pass");
    let target = echo.to_string();
    let authorization = proxy.proxy_authorization().unwrap();
    assert_eq!(
        authorization,
        basic_authorization("relay-user", "s3cret.pass")
    );
    assert_eq!(
        proxy.url_with_credentials(),
        format!("http://relay-user:s3cret.pass@127.0.0.1:{}", proxy.port())
    );

    let (status, head, _) = connect(proxy.addr(), &target, None).await;
    assert_eq!(status, 407, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm="),
        "{head}"
    );

    // Wrong credentials: tinyproxy 1.11.1 answers 401 (later releases 407);
    // either way, no tunnel.
    let wrong = basic_authorization("relay-user", "wrong");
    let (status, head, _) = connect(proxy.addr(), &target, Some(&wrong)).await;
    assert!(status == 401 || status == 407, "{head}");

    let (status, head, mut tunnel) = connect(proxy.addr(), &target, Some(&authorization)).await;
    assert_eq!(status, 200, "{head}\n{}", proxy.log());
    echo_through(&mut tunnel, b"authenticated bytes").await;

    // Every CONNECT is logged, refused ones included.
    assert_eq!(
        proxy.connects(),
        vec![target.clone(), target.clone(), target]
    );
}

/// The credentials URL is what an HTTP client takes as its proxy: reqwest
/// sends them as Proxy-Authorization (here for a plain-HTTP request, which
/// the proxy forwards), and without them the proxy answers 407.
#[tokio::test]
async fn reqwest_passes_with_the_credentials_url_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = http_server().await;
    let proxy = Tinyproxy::with_basic_auth("alice", "pw-1");
    let get = |proxy_url: String| async move {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(proxy_url).unwrap())
            .timeout(WITHIN)
            .build()
            .unwrap()
            .get(format!("http://{server}/"))
            .send()
            .await
            .expect("a response through the proxy")
    };
    let response = get(proxy.url_with_credentials()).await;
    assert_eq!(response.status(), 200, "{}", proxy.log());
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(get(proxy.url()).await.status(), 407);
    // Plain-HTTP requests are not CONNECTs.
    assert!(proxy.connects().is_empty(), "{}", proxy.log());
}

#[tokio::test]
async fn stop_refuses_connections_and_start_again_serves_on_the_same_port() {
    let echo = echo_server().await;
    let mut proxy = Tinyproxy::start();
    let port = proxy.port();
    let target = echo.to_string();

    let (status, _, mut tunnel) = connect(proxy.addr(), &target, None).await;
    assert_eq!(status, 200);
    echo_through(&mut tunnel, b"before").await;

    proxy.stop();
    assert!(!proxy.is_running());
    // The open tunnel died with the proxy...
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WITHIN, tunnel.read(&mut buf))
        .await
        .expect("the tunnel closes in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // ...and new connections are refused.
    let refused = TcpStream::connect(proxy.addr()).await;
    assert!(refused.is_err(), "the stopped proxy's port still accepts");

    proxy.start_again();
    assert!(proxy.is_running());
    assert_eq!(proxy.port(), port);
    let (status, head, mut tunnel) = connect(proxy.addr(), &target, None).await;
    assert_eq!(status, 200, "{head}\n{}", proxy.log());
    echo_through(&mut tunnel, b"after").await;

    // The log spans both runs.
    assert_eq!(proxy.connects(), vec![target.clone(), target]);
}

#[test]
fn parses_connect_targets_from_the_log() {
    let log = "\
NOTICE    Dec 05 05:24:49.132 [2613]: Initializing tinyproxy ...
CONNECT   Dec 05 05:24:49.720 [2613]: Connect (file descriptor 5): 127.0.0.1
CONNECT   Dec 05 05:24:49.720 [2613]: Request (file descriptor 5): CONNECT 127.0.0.1:23456 HTTP/1.1
CONNECT   Dec 05 05:24:49.721 [2613]: Request (file descriptor 6): GET http://example.com/ HTTP/1.1
CONNECT   Dec 05 05:24:49.723 [2613]: Request (file descriptor 5): CONNECT [::1]:443 HTTP/1.1
CONNECT   Dec 05 05:24:49.724 [2613]: Request (file descriptor 7): CONNECT api.example.com:443 HTTP/1.0
";
    assert_eq!(
        parse_connects(log),
        vec!["127.0.0.1:23456", "[::1]:443", "api.example.com:443"]
    );
}
