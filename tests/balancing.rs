//! Load balancing, circuit breaking and outlier ejection through the real
//! proxy, proven by counting what real upstreams received: weighted round
//! robin splits by weight; Peak-EWMA steers away from a slow endpoint;
//! least-request and ring hash behave; over the circuit breaker's limit
//! requests fail fast with 503 `overloaded` (a streaming response holds its
//! slot until it ends); an endpoint returning 5xx is
//! ejected, and returns after its ejection time.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::upstream::{Behaviour, Upstream};
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::net::TcpStream;

fn cluster_config(lb: &str, extra: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("{{address: '{a}', weight: {w}}}"))
        .collect();
    format!(
        "{}clusters:\n  - name: svc\n    load_balancer: {lb}\n{extra}    endpoints: [{}]\n",
        EPHEMERAL_LISTENERS.replace(
            "outbound: {address: 127.0.0.1, port: 0}",
            "outbound: {address: 127.0.0.1, port: 0, default_cluster: svc}"
        ),
        eps.join(", ")
    )
}

async fn client(proxy: &Proxy) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn get(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap) {
    let mut req = Request::get(path).header("host", "svc");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender.ready().await.expect("ready");
    let response = sender
        .send_request(req.body(Full::default()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let _ = response.into_body().collect().await;
    (status, headers)
}

#[tokio::test]
async fn weighted_round_robin_follows_weights_within_two_percent() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let proxy = Proxy::start(&cluster_config(
        "{policy: round_robin}",
        "",
        &[(a.addr, 3), (b.addr, 1)],
    ));
    let mut c = client(&proxy).await;
    const N: usize = 10_000;
    for _ in 0..N {
        assert_eq!(get(&mut c, "/", &[]).await.0, StatusCode::OK);
    }
    let share = a.requests.load(Ordering::SeqCst) as f64 / N as f64;
    assert!((share - 0.75).abs() <= 0.02, "a got {share}");
}

#[tokio::test]
async fn peak_ewma_sends_most_traffic_to_the_fast_endpoint() {
    let fast = Upstream::start().await;
    let slow = Upstream::start_with(Behaviour {
        delay: Duration::from_millis(50),
        ..Behaviour::default()
    })
    .await;
    let proxy = Proxy::start(&cluster_config(
        "{policy: peak_ewma}",
        "",
        &[(fast.addr, 1), (slow.addr, 1)],
    ));
    // Eight concurrent clients, 40 requests each.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = client(&proxy).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                assert_eq!(get(&mut c, "/", &[]).await.0, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let (f, s) = (
        fast.requests.load(Ordering::SeqCst),
        slow.requests.load(Ordering::SeqCst),
    );
    let share = f as f64 / (f + s) as f64;
    assert!(share >= 0.8, "fast endpoint got {share} ({f} vs {s})");
}

#[tokio::test]
async fn ring_hash_keeps_a_key_on_one_endpoint() {
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let eps: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr, 1)).collect();
    let proxy = Proxy::start(&cluster_config(
        "{policy: ring_hash, hash_header: x-user}",
        "",
        &eps,
    ));
    let mut c = client(&proxy).await;
    for _ in 0..30 {
        get(&mut c, "/", &[("x-user", "alice")]).await;
    }
    let counts: Vec<usize> = ups
        .iter()
        .map(|u| u.requests.load(Ordering::SeqCst))
        .collect();
    assert_eq!(counts.iter().filter(|n| **n > 0).count(), 1, "{counts:?}");
    for i in 0..60 {
        get(&mut c, "/", &[("x-user", &format!("user-{i}"))]).await;
    }
    let spread: Vec<usize> = ups
        .iter()
        .map(|u| u.requests.load(Ordering::SeqCst))
        .collect();
    assert!(
        spread.iter().all(|n| *n > 0),
        "60 keys should reach every endpoint: {spread:?}"
    );
}

#[tokio::test]
async fn circuit_breaker_overflow_fails_fast() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&cluster_config(
        "{policy: least_request}",
        "    circuit_breaker: {max_requests: 2}\n",
        &[(up.addr, 1)],
    ));
    let mut hanging = Vec::new();
    for _ in 0..2 {
        let mut c = client(&proxy).await;
        hanging.push(tokio::spawn(async move { get(&mut c, "/hang", &[]).await }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.requests.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "hanging requests never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = client(&proxy).await;
    let started = Instant::now();
    let (status, headers) = get(&mut c, "/", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"overloaded"[..])
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    for h in hanging {
        h.abort();
    }
}

#[tokio::test]
async fn failing_endpoint_is_ejected_and_returns() {
    let good = Upstream::start().await;
    let bad = Upstream::start_with(Behaviour {
        status: Some(503),
        ..Behaviour::default()
    })
    .await;
    let proxy = Proxy::start(&cluster_config(
        "{policy: round_robin}",
        "    outlier_detection: {consecutive_failures: 3, base_ejection_time: 1s, max_ejection_percent: 50}\n",
        &[(good.addr, 1), (bad.addr, 1)],
    ));
    let mut c = client(&proxy).await;
    for _ in 0..40 {
        get(&mut c, "/", &[]).await;
    }
    // Round robin: the bad endpoint saw 3 requests, then was ejected.
    assert_eq!(bad.requests.load(Ordering::SeqCst), 3);
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "endpoint_ejections_total", &["cluster=\"svc\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "cluster_endpoints",
            &["cluster=\"svc\"", "state=\"ejected\""]
        ),
        1.0,
        "{m}"
    );
    // After the ejection time it is picked again (and, still failing, ejected for longer).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "cluster_endpoints",
            &["cluster=\"svc\"", "state=\"active\""]
        ),
        2.0,
        "{m}"
    );
    for _ in 0..10 {
        get(&mut c, "/", &[]).await;
    }
    assert!(
        bad.requests.load(Ordering::SeqCst) > 3,
        "the endpoint never came back"
    );
}

#[tokio::test]
async fn endpoints_refusing_connections_leave_rotation_without_configuration() {
    let good = Upstream::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let proxy = Proxy::start(&cluster_config(
        "{policy: round_robin}",
        "",
        &[(good.addr, 1), (closed, 1)],
    ));
    let mut c = client(&proxy).await;
    for _ in 0..30 {
        // A refused connect sent nothing, so the request goes to the
        // other endpoint: the client never sees the refusal.
        assert_eq!(get(&mut c, "/", &[]).await.0, StatusCode::OK);
    }
    assert_eq!(good.requests.load(Ordering::SeqCst), 30);
    // Three refusals took the endpoint out of rotation.
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(&m, "endpoint_ejections_total", &["cluster=\"svc\""]),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn connection_limit_fails_fast_and_frees_on_close() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&cluster_config(
        "{policy: round_robin}",
        "    protocol: http1\n    circuit_breaker: {max_connections: 1}\n",
        &[(up.addr, 1)],
    ));
    // One request holds the only upstream connection.
    let mut first = client(&proxy).await;
    let hanging = tokio::spawn(async move { get(&mut first, "/hang", &[]).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.requests.load(Ordering::SeqCst) < 1 {
        assert!(
            Instant::now() < deadline,
            "the hanging request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut second = client(&proxy).await;
    let (status, headers) = get(&mut second, "/", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"overloaded"[..])
    );
    hanging.abort();
    // Once the client gives up, the connection (and its slot) goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = get(&mut second, "/", &[]).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connection slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ring_hash_on_source_ip_is_sticky_per_client() {
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let eps: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr, 1)).collect();
    let proxy = Proxy::start(&cluster_config(
        "{policy: ring_hash, hash_source_ip: true}",
        "",
        &eps,
    ));
    // Fresh connections each time, all from 127.0.0.1: one endpoint takes them all.
    for _ in 0..20 {
        let mut c = client(&proxy).await;
        assert_eq!(get(&mut c, "/", &[]).await.0, StatusCode::OK);
    }
    let counts: Vec<usize> = ups
        .iter()
        .map(|u| u.requests.load(Ordering::SeqCst))
        .collect();
    assert_eq!(counts.iter().filter(|n| **n > 0).count(), 1, "{counts:?}");
}

/// An upstream that sends a response's headers at once and holds its body
/// back until the connection closes.
async fn headers_then_stall() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                // Hold the body: read until the proxy gives up on us.
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_streaming_response_holds_its_circuit_breaker_slot_until_it_ends() {
    let up = headers_then_stall().await;
    let proxy = Proxy::start(&cluster_config(
        "{policy: round_robin}",
        "    circuit_breaker: {max_requests: 1}\n",
        &[(up, 1)],
    ));
    // The first response's headers arrive; its body is still streaming.
    let mut first = client(&proxy).await;
    first.ready().await.expect("ready");
    let req = Request::get("/")
        .header("host", "svc")
        .body(Full::default())
        .expect("request");
    let streaming = first.send_request(req).await.expect("response headers");
    assert_eq!(streaming.status(), StatusCode::OK);
    // So the cluster is at its limit: the next request fails fast.
    let mut second = client(&proxy).await;
    let (status, headers) = get(&mut second, "/", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", proxy.log());
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"overloaded"[..])
    );
    // Dropping the unfinished stream frees the slot.
    drop(streaming);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = client(&proxy).await;
        c.ready().await.expect("ready");
        let req = Request::get("/")
            .header("host", "svc")
            .body(Full::default())
            .expect("request");
        let response = c.send_request(req).await.expect("response");
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hello-world upstream that can be killed outright: its listener and
/// every connection are dropped at once, as when its process dies.
struct Killable {
    addr: SocketAddr,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Killable {
    async fn start() -> Killable {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (seen, held) = (requests.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let service = hyper::service::service_fn(move |_req| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::from(
                            "hi",
                        )))
                    }
                });
                let conn = tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                held.lock().expect("tasks").push(conn.abort_handle());
            }
        });
        tasks.lock().expect("tasks").push(accept.abort_handle());
        Killable {
            addr,
            requests,
            tasks,
        }
    }

    fn kill(&self) {
        for task in self.tasks.lock().expect("tasks").drain(..) {
            task.abort();
        }
    }
}

#[tokio::test]
async fn a_killed_endpoint_costs_no_request_without_a_retry_policy() {
    let (a, b) = (Killable::start().await, Killable::start().await);
    // No retry policy and no outlier detection: only the rule that a
    // request never sent may go to another endpoint keeps these whole.
    let proxy = Proxy::start(&cluster_config(
        "{policy: round_robin}",
        "    protocol: http1\n",
        &[(a.addr, 1), (b.addr, 1)],
    ));
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(&proxy).await);
    }
    // Warm: both endpoints serve, and the proxy pools connections to each.
    for c in clients.iter_mut() {
        for _ in 0..10 {
            assert_eq!(get(c, "/", &[]).await.0, StatusCode::OK);
        }
    }
    assert!(a.requests.load(Ordering::SeqCst) > 0 && b.requests.load(Ordering::SeqCst) > 0);
    b.kill();
    // Wait until the proxy has seen its pooled connections to the dead
    // endpoint close: a request written into a connection at the very
    // moment it dies was sent, and without a retry policy may fail.
    let dead = format!("target_addr=\"{}\"", b.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_sum(
        &proxy.metrics(),
        "tcp_open_connections",
        &["peer=\"dst\"", &dead],
    ) > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the proxy never saw the connections close"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every request after the kill still succeeds, pooled connections to
    // the dead endpoint and refused connects notwithstanding.
    let mut tasks = Vec::new();
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..50 {
                if get(&mut c, "/", &[]).await.0 != StatusCode::OK {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.expect("client task");
    }
    assert_eq!(failed, 0, "{}", proxy.log());
}
