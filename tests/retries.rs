//! Retries through the real proxy, counted at a real upstream: a service
//! failing 30% of requests looks healthy to the client with retries on; a
//! service failing all of them sees no more retries than the budget
//! allows; a small POST body is replayed, a large one is not.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use support::upstream::{Behaviour, Upstream};
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::net::TcpStream;

fn config(upstream: &Upstream, budget: &str, retry: &str) -> String {
    format!(
        r#"{EPHEMERAL_LISTENERS}clusters:
  - name: svc
    retry_budget: {budget}
    endpoints: [{{address: '{}'}}]
virtual_hosts:
  - name: svc
    domains: ["*"]
    routes:
      - name: retried
        cluster: svc
        retry: {retry}
"#,
        upstream.addr
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

async fn send(
    c: &mut http1::SendRequest<Full<Bytes>>,
    method: http::Method,
    body: Bytes,
) -> StatusCode {
    c.ready().await.expect("ready");
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "svc")
        .header("content-length", body.len())
        .body(Full::new(body))
        .expect("request");
    let response = c.send_request(req).await.expect("response");
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test]
async fn thirty_percent_failures_are_hidden_by_retries() {
    let upstream = Upstream::start_with(Behaviour {
        fail_pattern: Some((10, 3)),
        ..Behaviour::default()
    })
    .await;
    let proxy = Proxy::start(&config(
        &upstream,
        "{percent: 100, min_per_second: 100}",
        "{attempts: 3, on: ['503'], backoff_base: 1ms, backoff_max: 5ms}",
    ));
    let mut c = client(&proxy).await;
    const N: usize = 1000;
    let mut ok = 0;
    for _ in 0..N {
        if send(&mut c, http::Method::GET, Bytes::new()).await == StatusCode::OK {
            ok += 1;
        }
    }
    assert!(ok as f64 / N as f64 >= 0.999, "{ok} of {N} succeeded");
    let m = proxy.metrics();
    assert!(
        metric_sum(&m, "retry_total", &["cluster=\"svc\""]) >= 300.0,
        "{m}"
    );
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let upstream = Upstream::start_with(Behaviour {
        status: Some(503),
        ..Behaviour::default()
    })
    .await;
    let proxy = Proxy::start(&config(
        &upstream,
        "{percent: 20, min_per_second: 1, window: 10s}",
        "{attempts: 3, on: [5xx], backoff_base: 1ms, backoff_max: 2ms}",
    ));
    let mut c = client(&proxy).await;
    const N: usize = 200;
    for _ in 0..N {
        assert_eq!(
            send(&mut c, http::Method::GET, Bytes::new()).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let seen = upstream.requests.load(Ordering::SeqCst);
    // 20% of the requests plus one a second over the 10 s window.
    assert!(
        seen <= N + N / 5 + 10,
        "{seen} requests reached the failing upstream"
    );
    assert!(seen > N, "no retry was made at all");
    let m = proxy.metrics();
    assert!(
        metric_sum(&m, "retry_budget_exhausted_total", &["cluster=\"svc\""]) > 0.0,
        "{m}"
    );
}

#[tokio::test]
async fn small_bodies_are_replayed_large_ones_are_not() {
    let upstream = Upstream::start_with(Behaviour {
        status: Some(503),
        ..Behaviour::default()
    })
    .await;
    let proxy = Proxy::start(&config(
        &upstream,
        "{percent: 1000, min_per_second: 1000}",
        "{attempts: 2, on: [503], backoff_base: 1ms, backoff_max: 2ms}",
    ));
    let mut c = client(&proxy).await;
    send(&mut c, http::Method::POST, Bytes::from(vec![b'x'; 1024])).await;
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        3,
        "a 1 KiB POST is tried three times"
    );
    send(
        &mut c,
        http::Method::POST,
        Bytes::from(vec![b'x'; 1024 * 1024]),
    )
    .await;
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        4,
        "a 1 MiB POST is tried once"
    );
}

#[tokio::test]
async fn the_route_timeout_bounds_all_tries_together() {
    let upstream = Upstream::start().await;
    let yaml = config(
        &upstream,
        "{percent: 1000, min_per_second: 1000}",
        "{attempts: 5, on: [gateway-error], per_try_timeout: 200ms, backoff_base: 1ms, backoff_max: 2ms}",
    )
    .replace("        cluster: svc\n        retry:", "        cluster: svc\n        timeout: 500ms\n        retry:");
    let proxy = Proxy::start(&yaml);
    let mut c = client(&proxy).await;
    c.ready().await.expect("ready");
    let started = std::time::Instant::now();
    let req = Request::get("/hang")
        .header("host", "svc")
        .body(Full::default())
        .expect("request");
    let response = c.send_request(req).await.expect("response");
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_millis(1500),
        "took {elapsed:?}"
    );
    // Tries of 200 ms within a 500 ms budget: the third one is cut short.
    let tries = upstream.requests.load(Ordering::SeqCst);
    assert!((2..=3).contains(&tries), "{tries} tries");
}

#[tokio::test]
async fn grpc_status_in_trailers_is_retried() {
    let upstream = Upstream::start().await;
    let yaml = config(
        &upstream,
        "{percent: 100, min_per_second: 100}",
        "{attempts: 3, on: [grpc-unavailable], backoff_base: 1ms, backoff_max: 2ms}",
    )
    .replace("    endpoints:", "    protocol: http2\n    endpoints:");
    let proxy = Proxy::start(&yaml);
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    const N: usize = 50;
    for _ in 0..N {
        let req = Request::post("http://svc/grpc-flaky")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .expect("request");
        let response = h2.send_request(req).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        assert_eq!(
            collected.to_bytes().len(),
            5,
            "the message is replayed intact"
        );
    }
    // Every third-in-ten failure was retried away.
    assert!(upstream.requests.load(Ordering::SeqCst) > N);
}
