//! strait's HTTP/2 server, with a raw `h2` client where the test needs to
//! reset a stream: a response the proxy writes itself is sent as a
//! response (its HTTP/1 `Connection` header dropped, `Date` and
//! `Content-Length` added), a client that resets its stream mid-body never
//! has its request reach the upstream whole, and one that resets before
//! the response cancels the upstream's request.

mod support;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::Reason;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{Proxy, EPHEMERAL_LISTENERS};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

fn config(upstream: SocketAddr, proxy: &str) -> String {
    format!(
        "{EPHEMERAL_LISTENERS}{proxy}clusters:\n  - name: web\n    protocol: http1\n    endpoints: [{{address: '{upstream}'}}]\nroutes:\n  - authority: web\n    cluster: web\n"
    )
}

/// A raw HTTP/2 client connection to `addr`, and its task (which ends
/// when the connection does).
async fn h2_connection(
    addr: SocketAddr,
) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(addr).await.expect("connect proxy");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (client, tokio::spawn(connection))
}

async fn h2_client(addr: SocketAddr) -> SendRequest<Bytes> {
    h2_connection(addr).await.0
}

/// Wait (5 s at most) until the upstream has seen a `/hang` request dropped.
async fn wait_for_cancellation(upstream: &Upstream, proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream never saw the cancellation\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request(method: &str, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(format!("http://web{path}"))
        .body(())
        .expect("request")
}

async fn read_all(response: http::Response<h2::RecvStream>) -> (http::response::Parts, String) {
    let (head, mut body) = response.into_parts();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (head, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn a_response_the_proxy_writes_is_sent_as_one_over_http2() {
    let upstream = Upstream::start().await;
    // A target longer than this is the client's error (414), which the
    // proxy answers itself, with `Connection: close` for HTTP/1 clients.
    let proxy = Proxy::start(&config(
        upstream.addr,
        "proxy:\n  http: {max_uri_bytes: 64}\n",
    ));
    let mut client = h2_client(proxy.outbound).await;
    let long = format!("/{}", "x".repeat(100));
    let (response, _) = client
        .send_request(request("GET", &long), true)
        .expect("send");
    let (head, text) = read_all(response.await.expect("a response, not a reset")).await;
    assert_eq!(head.status, StatusCode::URI_TOO_LONG, "{text}");
    assert!(
        head.headers.get("connection").is_none(),
        "{:?}",
        head.headers
    );
    assert!(head.headers.contains_key("date"), "{:?}", head.headers);
    assert_eq!(
        head.headers["content-length"],
        text.len().to_string().as_str(),
        "{text}"
    );
    assert_eq!(head.headers["strait-proxy-error"], "uri-too-long");

    // The connection goes on serving.
    let mut client = client.ready().await.expect("connection still open");
    let (response, _) = client
        .send_request(request("GET", "/"), true)
        .expect("send");
    let (head, _) = read_all(response.await.expect("response")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);
}

/// What [`body_reporting_upstream`] saw of a request.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Its head arrived.
    Head,
    /// Its body arrived whole.
    Whole(String),
    /// Its body broke off.
    Broken(String),
}

/// An HTTP/1 upstream that reports each request's head as it arrives,
/// then whether its body arrived whole or broken off, and answers after.
async fn body_reporting_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (report, reports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let report = report.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let report = report.clone();
                    let _ = report.send(Seen::Head);
                    async move {
                        let body = match req.into_body().collect().await {
                            Ok(body) => {
                                Seen::Whole(String::from_utf8_lossy(&body.to_bytes()).into_owned())
                            }
                            Err(e) => Seen::Broken(e.to_string()),
                        };
                        let _ = report.send(body);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, reports)
}

/// The upstream's next report, within 5 s.
async fn next_seen(reports: &mut mpsc::UnboundedReceiver<Seen>, proxy: &Proxy) -> Option<Seen> {
    tokio::time::timeout(Duration::from_secs(5), reports.recv())
        .await
        .unwrap_or_else(|_| panic!("the upstream reported nothing within 5 s\n{}", proxy.log()))
}

#[tokio::test]
async fn a_client_reset_mid_body_never_reaches_the_upstream_as_a_whole_body() {
    let (upstream, mut reports) = body_reporting_upstream().await;
    let proxy = Proxy::start(&config(upstream, ""));
    let client = h2_client(proxy.outbound).await;

    // A whole body first: the upstream gets it.
    let mut client = client.ready().await.expect("ready");
    let (response, mut body) = client
        .send_request(request("POST", "/whole"), false)
        .expect("send");
    body.send_data(Bytes::from_static(b"hello"), true)
        .expect("data");
    let (head, _) = read_all(response.await.expect("response")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(next_seen(&mut reports, &proxy).await, Some(Seen::Head));
    assert_eq!(
        next_seen(&mut reports, &proxy).await,
        Some(Seen::Whole("hello".into()))
    );

    // Then a body the client gives up on: part of it, then RST_STREAM.
    let mut client = client.ready().await.expect("ready");
    let (_response, mut body) = client
        .send_request(request("POST", "/cut"), false)
        .expect("send");
    body.send_data(Bytes::from_static(b"hel"), false)
        .expect("data");
    assert_eq!(next_seen(&mut reports, &proxy).await, Some(Seen::Head));
    body.send_reset(Reason::CANCEL);
    let report = next_seen(&mut reports, &proxy).await;
    assert!(
        matches!(report, Some(Seen::Broken(_))),
        "the upstream took a cut-off body as whole: {report:?}\n{}",
        proxy.log()
    );
}

#[tokio::test]
async fn a_client_reset_before_the_response_cancels_the_upstream_request() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&config(upstream.addr, ""));
    let mut client = h2_client(proxy.outbound).await;
    let (response, _) = client
        .send_request(request("GET", "/hang"), true)
        .expect("send");
    tokio::time::timeout(Duration::from_secs(5), upstream.started.notified())
        .await
        .expect("the request reached the upstream within 5 s");
    drop(response);
    // h2's client resets a stream whose response and body are dropped.
    drop(client);
    wait_for_cancellation(&upstream, &proxy).await;
}

#[tokio::test]
async fn idle_http2_connections_and_stalled_streams_are_closed() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&config(upstream.addr, "proxy: {idle_timeout: 300ms}\n"));

    // A connection left idle after a request: GOAWAY, then closed.
    let (mut client, connection) = h2_connection(proxy.outbound).await;
    // The last activity the idle timer counts from comes after this.
    let started = Instant::now();
    let (response, _) = client
        .send_request(request("GET", "/"), true)
        .expect("send");
    let (head, _) = read_all(response.await.expect("response")).await;
    assert_eq!(head.status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("idle connection closed within 5 s");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A stream whose response never comes: the connection goes quiet, is
    // told GOAWAY, and is closed one more timeout later; the upstream sees
    // its request cancelled.
    let (mut client, connection) = h2_connection(proxy.outbound).await;
    let (_response, _) = client
        .send_request(request("GET", "/hang"), true)
        .expect("send");
    // Closed outright, so the client's side may end with an I/O error.
    let _ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("a connection with a stalled stream closed within 5 s")
        .expect("connection task");
    wait_for_cancellation(&upstream, &proxy).await;
}

#[tokio::test]
async fn a_slow_response_body_pins_none_of_the_connection_window() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&config(upstream.addr, ""));
    let client = h2_client(proxy.outbound).await;

    // A response whose body waits for ours: /echo answers at once and
    // sends our body back as it comes. Ours never comes.
    let mut client = client.ready().await.expect("ready");
    let (slow, _slow_body) = client
        .send_request(request("POST", "/echo"), false)
        .expect("send");
    let slow = slow.await.expect("the slow response's head");
    assert_eq!(slow.status(), StatusCode::OK);

    // A large response on the same connection, read the way some peers
    // do: no WINDOW_UPDATE until the connection's whole window (65,535
    // bytes) has arrived. Capacity held back for the slow stream would
    // leave it one byte short for ever.
    const SIZE: usize = 100_000;
    let mut client = client.ready().await.expect("ready");
    let (large, mut large_body) = client
        .send_request(request("POST", "/echo"), false)
        .expect("send");
    large_body
        .send_data(Bytes::from(vec![b'x'; SIZE]), true)
        .expect("data");
    let mut recv = large.await.expect("the large response's head").into_body();
    let (mut got, mut unreleased) = (0, 0);
    while got < SIZE {
        let chunk = tokio::time::timeout(Duration::from_secs(5), recv.data())
            .await
            .unwrap_or_else(|_| panic!("stalled after {got} bytes\n{}", proxy.log()))
            .expect("more data")
            .expect("data");
        got += chunk.len();
        unreleased += chunk.len();
        if unreleased >= 65_535 || got == SIZE {
            let _ = recv.flow_control().release_capacity(unreleased);
            unreleased = 0;
        }
    }
    assert_eq!(got, SIZE);
}

#[tokio::test]
async fn connect_over_http2_is_refused_with_501() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&config(upstream.addr, ""));
    let mut client = h2_client(proxy.outbound).await;
    let connect = Request::builder()
        .method("CONNECT")
        .uri("web:80")
        .body(())
        .expect("request");
    let (response, _) = client.send_request(connect, false).expect("send");
    let (head, text) = read_all(response.await.expect("a response, not a reset")).await;
    assert_eq!(head.status, StatusCode::NOT_IMPLEMENTED, "{text}");
    assert_eq!(head.headers["strait-proxy-error"], "connect-over-http2");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 0);
}
