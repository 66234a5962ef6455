//! The HTTP and TCP data path, end to end: the real `strait` binary between
//! real hyper clients and a real hyper upstream. Covers keep-alive pool
//! reuse, h2c, version translation, trailers, hop-by-hop headers, errors
//! as 502/504 responses, opaque TCP with half-close, malformed input,
//! metrics, admin endpoints, config reload and graceful shutdown.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{http_get, metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(clusters: &str) -> String {
    format!("{EPHEMERAL_LISTENERS}{clusters}")
}

/// One cluster `web` at `addr` routed by authority `web`, on the
/// single-worker (current-thread) runtime; the other tests use the default
/// multi-thread one.
fn web_config(addr: SocketAddr, protocol: &str) -> String {
    config(&format!(
        "runtime: {{worker_threads: 1}}\nclusters:\n  - name: web\n    protocol: {protocol}\n    endpoints: [{{address: '{addr}'}}]\nroutes:\n  - authority: web\n    cluster: web\n"
    ))
}

async fn h1(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect proxy");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

async fn h2(addr: SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect proxy");
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::default())
        .expect("request")
}

async fn text(
    response: hyper::Response<hyper::body::Incoming>,
) -> (StatusCode, http::HeaderMap, String) {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http1_keepalive_reuses_one_upstream_connection() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&web_config(upstream.addr, "auto"));
    let mut client = h1(proxy.outbound).await;
    const N: usize = 20;
    for _ in 0..N {
        client.ready().await.expect("ready");
        let (status, _, body) = text(
            client
                .send_request(get("web", "/"))
                .await
                .expect("response"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hello from upstream");
    }
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let m = proxy.metrics();
    let web = ["direction=\"outbound\"", "authority=\"web\""];
    assert_eq!(metric_sum(&m, "request_total", &web), N as f64, "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "response_total",
            &[
                web[0],
                web[1],
                "status_code=\"200\"",
                "classification=\"success\""
            ]
        ),
        N as f64
    );
    assert_eq!(
        metric_sum(&m, "http_pool_checkout_total", &["result=\"reused\""]),
        (N - 1) as f64,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "http_pool_checkout_total", &["result=\"new\""]),
        1.0
    );
    assert_eq!(metric_sum(&m, "tcp_open_total", &["peer=\"dst\""]), 1.0);
    assert_eq!(metric_sum(&m, "response_latency_ms_count", &web), N as f64);
}

#[tokio::test]
async fn h2c_through_the_proxy_and_version_translation() {
    let upstream = Upstream::start().await;
    // auto: HTTP/2 in, HTTP/2 out.
    let proxy = Proxy::start(&web_config(upstream.addr, "auto"));
    let mut client = h2(proxy.outbound).await;
    let req = Request::get("http://web/headers")
        .body(Full::default())
        .expect("req");
    let (status, _, body) = text(client.send_request(req).await.expect("h2 response")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("version: HTTP/2.0"), "{body}");
    drop(proxy);

    // http1 cluster: an HTTP/2 client's request arrives as HTTP/1.1 with Host.
    let proxy = Proxy::start(&web_config(upstream.addr, "http1"));
    let mut client = h2(proxy.outbound).await;
    let req = Request::get("http://web/headers?x=1")
        .body(Full::default())
        .expect("req");
    let (_, _, body) = text(client.send_request(req).await.expect("response")).await;
    assert!(
        body.starts_with("version: HTTP/1.1\nuri: /headers?x=1\n"),
        "{body}"
    );
    assert!(body.contains("host: web\n"), "{body}");
    drop(proxy);

    // http2 cluster: an HTTP/1.1 client's request arrives as HTTP/2 with :authority.
    let proxy = Proxy::start(&web_config(upstream.addr, "http2"));
    let mut client = h1(proxy.outbound).await;
    let (status, _, body) = text(
        client
            .send_request(get("web", "/headers"))
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.starts_with("version: HTTP/2.0\nuri: http://web/headers\n"),
        "{body}"
    );
}

#[tokio::test]
async fn streamed_body_and_trailers_cross_h2() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&web_config(upstream.addr, "http2"));
    let mut client = h2(proxy.outbound).await;
    let req = Request::get("http://web/trailers")
        .body(Full::default())
        .expect("req");
    let response = client.send_request(req).await.expect("response");
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc123"[..])
    );
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"part one, part two")
    );

    // A request body streams to the upstream and back.
    let payload = Bytes::from(vec![b'x'; 256 * 1024]);
    let req = Request::post("http://web/echo")
        .body(Full::new(payload.clone()))
        .expect("req");
    let (status, _, body) = text(client.send_request(req).await.expect("echo")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), payload.len());
}

/// An HTTP/2 upstream that answers one request per connection, then
/// drains it (GOAWAY), as a server does when it shuts down or rotates
/// connections. Returns its address and how many connections it took.
async fn one_request_per_connection_h2(
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let answered = std::sync::Arc::new(tokio::sync::Notify::new());
                let notify = answered.clone();
                let service = hyper::service::service_fn(move |_req| {
                    notify.notify_one();
                    async {
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(
                            "drained after me",
                        ))))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = answered.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn an_http2_upstream_that_drains_gets_the_next_request_on_a_new_connection() {
    let (upstream, connections) = one_request_per_connection_h2().await;
    let proxy = Proxy::start(&web_config(upstream, "http2"));
    let mut client = h1(proxy.outbound).await;
    for i in 0..5 {
        let req = Request::get("http://web/")
            .header("host", "web")
            .body(Full::default())
            .expect("req");
        let (status, _, body) = text(client.send_request(req).await.expect("response")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i}: {body}\n{}",
            proxy.log()
        );
        assert_eq!(body, "drained after me");
    }
    let opened = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=5).contains(&opened), "{opened} upstream connections");
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "response_total", &["status_code=\"502\""]),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_stay_behind_and_inbound_adds_forwarded_for() {
    let upstream = Upstream::start().await;
    let yaml = config(&format!(
        "clusters:\n  - name: app\n    endpoints: [{{address: '{}'}}]\n",
        upstream.addr
    ))
    .replace(
        "inbound: {address: 127.0.0.1, port: 0}",
        "inbound: {address: 127.0.0.1, port: 0, default_cluster: app}",
    );
    let proxy = Proxy::start(&yaml);
    let mut client = h1(proxy.inbound).await;
    let req = Request::get("/headers")
        .header("host", "app")
        .header("connection", "x-hop")
        .header("x-hop", "must not arrive")
        .header("keep-alive", "timeout=5")
        .header("x-app", "arrives")
        .body(Full::default())
        .expect("req");
    let (_, _, body) = text(client.send_request(req).await.expect("response")).await;
    assert!(body.contains("x-app: arrives"), "{body}");
    assert!(!body.contains("x-hop"), "{body}");
    assert!(!body.contains("keep-alive"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "request_total", &["direction=\"inbound\""]),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn upstream_failures_become_502_and_504_with_a_reason() {
    let upstream = Upstream::start().await;
    // A port nothing listens on: bind, learn the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let yaml = config(&format!(
        "clusters:\n  - name: gone\n    endpoints: [{{address: '{closed}'}}]\n  - name: slow\n    response_timeout: 300ms\n    endpoints: [{{address: '{}'}}]\nroutes:\n  - authority: gone\n    cluster: gone\n  - authority: slow\n    cluster: slow\n",
        upstream.addr
    ));
    let proxy = Proxy::start(&yaml);
    let mut client = h1(proxy.outbound).await;

    let (status, headers, body) = text(
        client
            .send_request(get("gone", "/"))
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"connect-refused"[..])
    );
    assert!(body.contains(&closed.to_string()), "{body}");

    client.ready().await.expect("connection survives a 502");
    let started = Instant::now();
    let (status, headers, _) = text(
        client
            .send_request(get("slow", "/hang"))
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"response-timeout"[..])
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    client.ready().await.expect("connection survives a 504");
    let (status, headers, _) = text(
        client
            .send_request(get("nowhere", "/"))
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"no-route"[..])
    );

    let log = proxy.log();
    assert!(
        log.contains("connect-refused") && log.contains(&closed.to_string()),
        "{log}"
    );
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "response_total",
            &["status_code=\"502\"", "classification=\"failure\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "http_proxy_errors_total",
            &["reason=\"response-timeout\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn malformed_http_gets_400_and_the_proxy_keeps_serving() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&web_config(upstream.addr, "auto"));
    let mut raw = TcpStream::connect(proxy.outbound).await.expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nthis is not a header\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut reply))
        .await
        .expect("proxy answers and closes")
        .expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    let mut client = h1(proxy.outbound).await;
    let (status, _, _) = text(
        client
            .send_request(get("web", "/"))
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// Echo server that reads until the client half-closes, then answers with
/// everything it read and closes.
async fn half_close_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                if stream.read_to_end(&mut all).await.is_ok() {
                    let _ = stream.write_all(b"echo: ").await;
                    let _ = stream.write_all(&all).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_echo_with_half_close() {
    let echo = half_close_echo().await;
    let yaml = config(&format!(
        "clusters:\n  - name: echo\n    protocol: opaque\n    endpoints: [{{address: '{echo}'}}]\n"
    ))
    .replace(
        "outbound: {address: 127.0.0.1, port: 0}",
        "outbound: {address: 127.0.0.1, port: 0, default_cluster: echo}",
    );
    let proxy = Proxy::start(&yaml);
    let mut client = TcpStream::connect(proxy.outbound).await.expect("connect");
    let payload = b"\x00\x01binary, not HTTP\xff".repeat(1000);
    client.write_all(&payload).await.expect("write");
    client.shutdown().await.expect("half-close");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut reply))
        .await
        .expect("echo arrives after half-close")
        .expect("read");
    assert_eq!(&reply[..6], b"echo: ");
    assert_eq!(&reply[6..], &payload[..]);
    drop(client);

    // Byte counters carry the exact volume once the connection closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = proxy.metrics();
        let closed = metric_sum(&m, "tcp_close_total", &["peer=\"src\""]);
        if closed >= 1.0 {
            assert_eq!(
                metric_sum(&m, "tcp_read_bytes_total", &["peer=\"src\""]),
                payload.len() as f64,
                "{m}"
            );
            assert_eq!(
                metric_sum(&m, "tcp_write_bytes_total", &["peer=\"src\""]),
                (payload.len() + 6) as f64,
                "{m}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connection never counted as closed:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_families_are_exported_as_prometheus_text() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&web_config(upstream.addr, "auto"));
    let mut client = h1(proxy.outbound).await;
    for _ in 0..3 {
        client.ready().await.expect("ready");
        let _ = text(
            client
                .send_request(get("web", "/"))
                .await
                .expect("response"),
        )
        .await;
    }
    let m = proxy.metrics();
    for (family, kind) in [
        ("request_total", "counter"),
        ("response_total", "counter"),
        ("response_latency_ms", "histogram"),
        ("tcp_open_total", "counter"),
        ("tcp_open_connections", "gauge"),
        ("tcp_read_bytes_total", "counter"),
        ("tcp_write_bytes_total", "counter"),
        ("tcp_close_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
    ] {
        assert!(
            m.contains(&format!("# TYPE {family} {kind}")),
            "{family} missing:\n{m}"
        );
    }
    assert_eq!(
        metric_sum(
            &m,
            "tcp_open_connections",
            &["peer=\"src\"", "direction=\"outbound\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "response_latency_ms_bucket", &["le=\"+Inf\""]),
        3.0,
        "{m}"
    );

    assert_eq!(http_get(proxy.admin, "/ready").0, 200);
    assert_eq!(http_get(proxy.admin, "/live").0, 200);
    let (status, dump) = http_get(proxy.admin, "/config_dump");
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("config_dump is JSON");
    assert_eq!(dump["clusters"][0]["name"], "web");
    assert_eq!(http_get(proxy.admin, "/nope").0, 404);
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let upstream = Upstream::start().await;
    let mut proxy = Proxy::start(&web_config(upstream.addr, "auto"));
    let mut client = h1(proxy.outbound).await;
    let in_flight = tokio::spawn(client.send_request(get("web", "/slow?ms=1500")));
    tokio::time::timeout(Duration::from_secs(10), upstream.started.notified())
        .await
        .expect("request reached the upstream");
    proxy.signal("TERM");
    // New connections are refused once the listeners close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(proxy.outbound).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = in_flight
        .await
        .expect("task")
        .expect("in-flight request completes");
    let (status, _, body) = text(response).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow"));
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = proxy.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not exit after draining"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("join");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn config_reload_applies_good_files_and_refuses_bad_ones() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let proxy = Proxy::start(&web_config(a.addr, "auto"));
    let path = proxy.config_path();
    let mut client = h1(proxy.outbound).await;
    let (status, _, body) = text(
        client
            .send_request(get("web", "/"))
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", proxy.log());
    assert_eq!(a.requests.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A broken file is refused with its line; the old config keeps serving.
    std::fs::write(
        &path,
        web_config(a.addr, "auto") + "proxy:\n  backlog: -1\n",
    )
    .expect("write");
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("config reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.log().contains("proxy.backlog"), "{}", proxy.log());
    client.ready().await.expect("ready");
    let (status, _, _) = text(
        client
            .send_request(get("web", "/"))
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.requests.load(std::sync::atomic::Ordering::SeqCst), 2);

    // A good file moves `web` to the other upstream without a restart.
    std::fs::write(&path, web_config(b.addr, "auto")).expect("write");
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        client.ready().await.expect("ready");
        let _ = text(
            client
                .send_request(get("web", "/"))
                .await
                .expect("response"),
        )
        .await;
        if b.requests.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new config never applied:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A real WebSocket echo server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(&web_config(ws_addr, "http1"));
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async("ws://web/echo", stream)
        .await
        .expect("upgrade through the proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        ws.send(Message::text(format!("text {i}")))
            .await
            .expect("send");
        let back = ws.next().await.expect("frame").expect("frame ok");
        assert_eq!(back, Message::text(format!("text {i}")));
    }
    let blob = vec![7u8; 100_000];
    ws.send(Message::binary(blob.clone()))
        .await
        .expect("send binary");
    let back = ws.next().await.expect("frame").expect("frame ok");
    assert_eq!(back.into_data().as_ref(), &blob[..]);
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn idle_connections_and_stalled_streams_are_closed() {
    let upstream = Upstream::start().await;
    let yaml = web_config(upstream.addr, "auto") + "proxy: {idle_timeout: 300ms}\n";
    let proxy = Proxy::start(&yaml);

    // A keep-alive connection left idle after a request is closed.
    let mut raw = TcpStream::connect(proxy.outbound).await.expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = raw.read(&mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let eof = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("idle connection closed within 5 s");
    assert!(matches!(eof, Ok(0) | Err(_)), "{eof:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // A request whose response never comes is cut off, and the upstream
    // sees it cancelled.
    let mut raw = TcpStream::connect(proxy.outbound).await.expect("connect");
    raw.write_all(b"GET /hang HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .expect("write");
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("stalled stream closed within 5 s");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
