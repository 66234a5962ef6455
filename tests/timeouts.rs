//! Response timeouts through the real proxy, counted from when the request
//! body has been sent (issue #9): a 40 MiB upload at 1 MiB/s passes a 30 s
//! route timeout and a 10 s cluster `response_timeout`; an upload slower
//! than the cluster's `response_timeout` is not cut off; a slow upstream
//! still gets 504 once the body is in; a client's `grpc-timeout` shorter
//! than the route's wins.
//!
//! The upstream here reads the whole request body, then (after
//! `?delay_ms=N`) answers 200 with the number of body bytes it received.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{Proxy, EPHEMERAL_LISTENERS};
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, Infallible>;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Read the whole request body, wait `?delay_ms=N` (default 0), answer
/// 200 with the byte count (400 if the body broke off).
async fn count(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay: u64 = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("delay_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = req.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len()),
            Err(e) => {
                let mut response =
                    Response::new(Full::new(Bytes::from(format!("body broke off: {e}"))));
                *response.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(response);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(delay)).await;
    Ok(Response::new(Full::new(Bytes::from(received.to_string()))))
}

/// A counting upstream (HTTP/1.1 and h2c) on 127.0.0.1:0.
async fn counting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(count))
                    .await;
            });
        }
    });
    addr
}

/// One cluster `svc` (with `cluster_extra` lines) behind a catch-all
/// virtual host whose one route has `route_extra` lines.
fn config(upstream: SocketAddr, cluster_extra: &str, route_extra: &str) -> String {
    format!(
        r#"{EPHEMERAL_LISTENERS}clusters:
  - name: svc
{cluster_extra}    endpoints: [{{address: '{upstream}'}}]
virtual_hosts:
  - name: svc
    domains: ["*"]
    routes:
      - name: upload
        cluster: svc
{route_extra}"#
    )
}

async fn h1(proxy: &Proxy) -> http1::SendRequest<Body> {
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// `total` bytes in `chunk`-sized frames, one every `period` (the load's
/// pace, nothing waits on it).
fn paced(total: usize, chunk: usize, period: Duration) -> Body {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream =
        futures_util::stream::unfold((interval, 0usize), move |(mut interval, sent)| async move {
            if sent >= total {
                return None;
            }
            interval.tick().await;
            let n = chunk.min(total - sent);
            let frame = Frame::data(Bytes::from(vec![b'x'; n]));
            Some((Ok(frame), (interval, sent + n)))
        });
    BodyExt::boxed(StreamBody::new(stream))
}

fn full(data: impl Into<Bytes>) -> Body {
    BodyExt::boxed(Full::new(data.into()))
}

fn post(path: &str, len: usize, body: Body) -> Request<Body> {
    Request::post(path)
        .header("host", "svc")
        .header("content-length", len)
        .body(body)
        .expect("request")
}

/// Status, `strait-proxy-error` and body text.
async fn read(response: Response<Incoming>) -> (StatusCode, Option<String>, String) {
    let status = response.status();
    let reason = response
        .headers()
        .get("strait-proxy-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (status, reason, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_40_mb_upload_at_1_mb_per_second_passes_a_30_s_route_timeout() {
    const TOTAL: usize = 40 * MIB;
    const CHUNK: usize = 64 * KIB;
    // 16 chunks of 64 KiB a second: 1 MiB/s.
    const PERIOD: Duration = Duration::from_micros(62_500);
    let upstream = counting_upstream().await;
    let proxy = Proxy::start(&config(
        upstream,
        "    response_timeout: 10s\n",
        "        timeout: 30s\n",
    ));
    let mut c = h1(&proxy).await;
    c.ready().await.expect("ready");
    let started = Instant::now();
    let exchange = async {
        let response = c
            .send_request(post("/", TOTAL, paced(TOTAL, CHUNK, PERIOD)))
            .await
            .expect("response");
        read(response).await
    };
    let (status, reason, body) = tokio::time::timeout(Duration::from_secs(90), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer in 90 s; log:\n{}", proxy.log()));
    let elapsed = started.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "after {elapsed:?}: {reason:?} {body}"
    );
    assert_eq!(body, TOTAL.to_string(), "bytes the upstream received");
    // The upload itself outlasted both the route's and the cluster's
    // timeout: neither started the clock before the body was sent.
    assert!(
        elapsed > Duration::from_secs(30),
        "the upload took only {elapsed:?}"
    );
}

#[tokio::test]
async fn a_slow_upstream_still_times_out_after_the_body_is_sent() {
    let upstream = counting_upstream().await;
    let proxy = Proxy::start(&config(upstream, "", "        timeout: 300ms\n"));
    let mut c = h1(&proxy).await;
    c.ready().await.expect("ready");
    let started = Instant::now();
    let exchange = async {
        let response = c
            .send_request(post("/?delay_ms=2000", 5, full("hello")))
            .await
            .expect("response");
        read(response).await
    };
    let (status, reason, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer in 10 s");
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(reason.as_deref(), Some("response-timeout"), "{body}");
    assert!(
        elapsed >= Duration::from_millis(300),
        "504 after only {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "504 only after {elapsed:?}"
    );
}

#[tokio::test]
async fn an_upload_slower_than_the_cluster_response_timeout_is_not_cut_off() {
    const TOTAL: usize = 20 * KIB;
    let upstream = counting_upstream().await;
    let proxy = Proxy::start(&config(upstream, "    response_timeout: 500ms\n", ""));
    let mut c = h1(&proxy).await;
    c.ready().await.expect("ready");
    let started = Instant::now();
    // 20 chunks, one every 100 ms: about 2 s of upload.
    let exchange = async {
        let body = paced(TOTAL, KIB, Duration::from_millis(100));
        let response = c
            .send_request(post("/", TOTAL, body))
            .await
            .expect("response");
        read(response).await
    };
    let (status, reason, body) = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("an answer in 20 s");
    let elapsed = started.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "after {elapsed:?}: {reason:?} {body}"
    );
    assert_eq!(body, TOTAL.to_string(), "bytes the upstream received");
    assert!(
        elapsed > Duration::from_millis(1500),
        "the upload took only {elapsed:?}"
    );

    // The cluster's timeout still applies once the body is in.
    c.ready().await.expect("the connection is kept");
    let started = Instant::now();
    let exchange = async {
        let response = c
            .send_request(post("/?delay_ms=3000", 5, full("hello")))
            .await
            .expect("response");
        read(response).await
    };
    let (status, reason, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer in 10 s");
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(reason.as_deref(), Some("response-timeout"), "{body}");
    assert!(
        (Duration::from_millis(500)..Duration::from_millis(2000)).contains(&elapsed),
        "504 after {elapsed:?}"
    );
}

#[tokio::test]
async fn grpc_timeout_shorter_than_the_route_timeout_wins() {
    let upstream = counting_upstream().await;
    let proxy = Proxy::start(&config(upstream, "", "        timeout: 5s\n"));
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let started = Instant::now();
    let exchange = async {
        let req = Request::post("http://svc/pkg.Svc/Method?delay_ms=3000")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "200m")
            .body(full(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .expect("request");
        let response = h2.send_request(req).await.expect("response");
        read(response).await
    };
    let (status, reason, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer in 10 s");
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(reason.as_deref(), Some("response-timeout"), "{body}");
    assert!(
        (Duration::from_millis(200)..Duration::from_millis(1000)).contains(&elapsed),
        "504 after {elapsed:?}"
    );
}

#[tokio::test]
async fn a_request_sent_on_to_another_endpoint_keeps_the_route_timeout() {
    let upstream = counting_upstream().await;
    let closed = support::free_addr();
    // Round robin over a refusing endpoint and a live one: every other
    // request is refused first and sent on to the live one. The route's
    // 5 s bounds every try, not the cluster's 300 ms.
    let yaml = config(
        upstream,
        &format!("    response_timeout: 300ms\n    load_balancer: {{policy: round_robin}}\n    endpoints: [{{address: '{closed}'}}]\n"),
        "        timeout: 5s\n",
    )
    .replace(
        &format!("    endpoints: [{{address: '{closed}'}}]\n    endpoints: [{{address: '{upstream}'}}]\n"),
        &format!("    endpoints: [{{address: '{closed}'}}, {{address: '{upstream}'}}]\n"),
    );
    let proxy = Proxy::start(&yaml);
    let mut c = h1(&proxy).await;
    for i in 0..4 {
        c.ready().await.expect("ready");
        let exchange = async {
            let response = c
                .send_request(post("/?delay_ms=600", 5, full("hello")))
                .await
                .expect("response");
            read(response).await
        };
        let (status, reason, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("an answer in 10 s");
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i}: {reason:?} {body}\n{}",
            proxy.log()
        );
    }
    assert!(
        proxy.log_lines(&["request not sent; trying another endpoint"]) > 0,
        "no request was sent on:\n{}",
        proxy.log()
    );
}
