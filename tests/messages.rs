//! Errors the proxy answers with say what to check. An HTTP/2 client on a
//! `protocol: auto` cluster is forwarded as HTTP/2; an upstream that only
//! speaks HTTP/1 answers the HTTP/2 preface with an HTTP/1 400 and the
//! request fails: the 502 must point at the cluster's `protocol`.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Proxy, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that speaks only HTTP/1: whatever arrives gets a 400.
async fn http1_only() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http2_to_an_http1_only_upstream_names_the_cluster_protocol() {
    let upstream = http1_only().await;
    let proxy = Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}clusters:\n  - name: web\n    protocol: auto\n    endpoints: [{{address: '{upstream}'}}]\nroutes:\n  - {{authority: web, cluster: web}}\n"
    ));
    let stream = TcpStream::connect(proxy.outbound)
        .await
        .expect("connect proxy");
    let (mut client, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://web/")
        .body(Full::<Bytes>::default())
        .expect("request");
    let response = client.send_request(req).await.expect("a response");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("set the cluster's `protocol: http1`"),
        "{body}"
    );
}
