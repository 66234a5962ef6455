//! Limits that hyper and h2 enforce before a request reaches the proxy's
//! own code, black box: the real `strait` binary, raw HTTP/2 frames over
//! TCP for the floods a well-behaved client library will not send, and
//! the counters an operator watches (`http2_connection_errors_total`,
//! `http_proxy_errors_total`). Part of issue #10; `tests/edge.rs` holds
//! the limits the proxy answers itself, `tests/h2_flood.rs` the PING,
//! SETTINGS and empty-DATA floods.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::edge::*;
use support::upstream::Upstream;
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_rapid_reset_flood_gets_goaway_and_is_counted_while_others_are_served() {
    let upstream = Upstream::start().await;
    // 40 resets: under the default of 50, over the configured 10.
    let proxy = Proxy::start(&config(
        upstream.addr,
        "max_pending_accept_reset_streams: 10",
    ));

    // A well-behaved client, connected before the flood.
    let mut good = h2_client(proxy.outbound).await;
    assert_eq!(h2_get(&mut good).await, StatusCode::OK);

    // The flood: each stream opened and cancelled at once, all in one write.
    let mut flood = raw_h2(proxy.outbound).await;
    let mut bytes = Vec::new();
    for i in 0..40u32 {
        let id = 1 + 2 * i;
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, GET_WEB));
        bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The proxy may close before it has read everything.
    let _ = flood.write_all(&bytes).await;
    let code = goaway_code(&mut flood, Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "{}", proxy.log());
    let metrics = wait_for_metric(
        &proxy,
        "http2_connection_errors_total",
        &[
            "direction=\"outbound\"",
            "reason=\"enhance_your_calm\"",
            "sender=\"proxy\"",
        ],
        1.0,
    )
    .await;
    assert_eq!(
        metric_sum(&metrics, "http2_connection_errors_total", &[]),
        1.0,
        "only the flooding connection is counted:\n{metrics}"
    );

    // The other client was never disturbed, and new ones are served.
    for _ in 0..10 {
        assert_eq!(h2_get(&mut good).await, StatusCode::OK);
    }
    let mut fresh = h2_client(proxy.outbound).await;
    assert_eq!(h2_get(&mut fresh).await, StatusCode::OK);
}

#[tokio::test]
async fn an_unanswered_keep_alive_ping_closes_the_connection_and_is_counted() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&config(
        upstream.addr,
        "http2_keep_alive_interval: 200ms, http2_keep_alive_timeout: 200ms",
    ));
    // A client that completes the preface and then stops answering.
    let mut silent = raw_h2(proxy.outbound).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pinged = false;
    while let Some((kind, flags, _)) = next_frame(&mut silent, deadline).await {
        pinged |= kind == PING && flags & 0x1 == 0;
    }
    assert!(pinged, "no PING before the close:\n{}", proxy.log());
    assert!(
        Instant::now() < deadline,
        "the connection was not closed within 5 s"
    );
    wait_for_metric(
        &proxy,
        "http2_connection_errors_total",
        &["reason=\"keep_alive_timeout\"", "sender=\"proxy\""],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_broken_preface_is_counted_as_a_protocol_error() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&config(upstream.addr, ""));
    let mut stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        .await
        .expect("write");
    let code = goaway_code(&mut stream, Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(code, Some(0x1), "GOAWAY(PROTOCOL_ERROR)");
    wait_for_metric(
        &proxy,
        "http2_connection_errors_total",
        &["reason=\"protocol_error\"", "sender=\"proxy\""],
        1.0,
    )
    .await;
}

/// Send raw bytes on a fresh connection and read what comes back until the
/// proxy closes or 5 s pass.
async fn raw_http1(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The proxy may answer and close before it has read everything.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn heads_hyper_refuses_by_itself_are_counted() {
    let upstream = Upstream::start().await;
    // A 128 KiB head, so that hyper's own 64 KiB target limit is reachable.
    let proxy = Proxy::start(&config(
        upstream.addr,
        "max_request_headers_bytes: 131072, max_uri_bytes: 65534",
    ));
    let head = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: web\r\n{extra}Connection: close\r\n\r\n")
    };
    let cases = [
        // Over the 128 KiB head: 431.
        (
            head("/", &format!("X-Big: {}\r\n", "x".repeat(200 * 1024))),
            431,
            "headers-too-large",
        ),
        // A 70,000-byte target inside the head: hyper's 414.
        (
            head(&format!("/{}", "a".repeat(70_000)), ""),
            414,
            "uri-too-long",
        ),
        // A field name with a space: hyper's 400.
        (head("/", "Bad Header: x\r\n"), 400, "malformed-request"),
    ];
    for (request, status, reason) in &cases {
        let response = raw_http1(proxy.outbound, request.as_bytes()).await;
        assert_eq!(status_of(&response), *status, "{reason}: {response}");
        let label = format!("reason=\"{reason}\"");
        wait_for_metric(
            &proxy,
            "http_proxy_errors_total",
            &["direction=\"outbound\"", &label],
            1.0,
        )
        .await;
    }
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// An HTTP/1 and h2c upstream that reads each request's whole body before
/// it answers `got N` (so the proxy's answer comes first when the body
/// breaks), counting requests.
async fn collecting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let text = match req.into_body().collect().await {
                            Ok(body) => format!("got {}", body.to_bytes().len()),
                            Err(e) => format!("broken body: {e}"),
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, requests)
}

/// `n` chunks of `size` bytes as a chunked HTTP/1 POST to `web`.
fn chunked_post(n: usize, size: usize) -> Vec<u8> {
    let mut out =
        b"POST /collect HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..n {
        out.extend(format!("{size:x}\r\n").into_bytes());
        out.extend(vec![b'x'; size]);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n\r\n");
    out
}

#[tokio::test]

async fn a_streamed_body_over_the_cap_gets_413_and_never_blames_the_endpoint() {
    let (upstream, requests) = collecting_upstream().await;
    let yaml = format!(
        "{EPHEMERAL_LISTENERS}proxy:\n  http: {{max_request_body_bytes: 1000}}\nclusters:\n  - name: web\n    outlier_detection: {{consecutive_failures: 1}}\n    endpoints: [{{address: '{upstream}'}}]\nroutes:\n  - authority: web\n    cluster: web\n"
    );
    let proxy = Proxy::start(&yaml);

    // HTTP/1, chunked: 800 bytes pass, 1200 do not.
    let response = raw_http1(proxy.outbound, &chunked_post(2, 400)).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.ends_with("got 800"), "{response}");
    let response = raw_http1(proxy.outbound, &chunked_post(2, 600)).await;
    assert_eq!(status_of(&response), 413, "{response}");
    assert!(
        response.contains("strait-proxy-error: body-too-large"),
        "{response}"
    );

    // HTTP/2, DATA frames without content-length.
    let mut h2 = h2_client(proxy.outbound).await;
    let frames = (0..2).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 600])))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post("http://web/collect")
        .body(body)
        .expect("request");
    let response = h2.send_request(req).await.expect("h2 POST answered");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Counted as the client's, and the endpoint is still in rotation.
    let metrics = wait_for_metric(
        &proxy,
        "http_proxy_errors_total",
        &["reason=\"body-too-large\""],
        2.0,
    )
    .await;
    assert_eq!(
        metric_sum(&metrics, "endpoint_ejections_total", &[]),
        0.0,
        "{metrics}"
    );
    let response = raw_http1(proxy.outbound, &chunked_post(1, 10)).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(requests.load(Ordering::SeqCst) >= 2);
}

// --- A streamed body over the cap after the response started ------------

#[tokio::test]
async fn a_body_over_the_cap_after_the_response_started_is_counted_and_reset() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        "{EPHEMERAL_LISTENERS}proxy:\n  http: {{max_request_body_bytes: 1000}}\nclusters:\n  - name: web\n    outlier_detection: {{consecutive_failures: 1}}\n    endpoints: [{{address: '{}'}}]\nroutes:\n  - authority: web\n    cluster: web\n",
        upstream.addr
    );
    let proxy = Proxy::start(&yaml);
    let mut h2 = h2_client(proxy.outbound).await;

    // `/echo` answers at once and streams the body back: the response has
    // started (headers and the first 600 bytes back) before the body goes over.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)),
            rx,
        ))
    });
    let req = Request::post("http://web/echo")
        .body(http_body_util::StreamBody::new(Box::pin(frames)))
        .expect("request");
    let pending = tokio::spawn(async move { h2.send_request(req).await });
    tx.send(Bytes::from(vec![b'a'; 600]))
        .await
        .expect("first chunk");
    let response = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("answered within 5 s")
        .expect("task")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("echo within 5 s");
    let first = first.and_then(Result::ok).and_then(|f| f.into_data().ok());
    assert_eq!(first.map(|d| d.len()), Some(600));

    // Now 600 more: over the 1000-byte cap with no 413 possible.
    tx.send(Bytes::from(vec![b'b'; 600]))
        .await
        .expect("second chunk");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut echoed = 0;
    let ended = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, body.frame()).await {
            Err(_) => panic!("the stream was not reset within 5 s:\n{}", proxy.log()),
            Ok(Some(Ok(frame))) => echoed += frame.data_ref().map_or(0, |d| d.len()),
            Ok(Some(Err(e))) => break Some(e),
            Ok(None) => break None,
        }
    };
    assert!(ended.is_some(), "the response ended cleanly, as if whole");
    assert_eq!(echoed, 0, "nothing past the cap was forwarded");
    let metrics = wait_for_metric(
        &proxy,
        "http_proxy_errors_total",
        &["direction=\"outbound\"", "reason=\"body-too-large\""],
        1.0,
    )
    .await;
    assert_eq!(
        metric_sum(
            &metrics,
            "http_proxy_errors_total",
            &["reason=\"body-too-large\""]
        ),
        1.0,
        "{metrics}"
    );
    drop(tx);

    // HTTP/1, chunked: the connection is closed before the response's
    // last chunk, so the client cannot take the response for a whole one.
    let mut client = TcpStream::connect(proxy.outbound).await.expect("connect");
    let head = "POST /echo HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = |byte: u8| format!("258\r\n{}\r\n", (byte as char).to_string().repeat(600));
    client
        .write_all(format!("{head}{}", chunk(b'a')).as_bytes())
        .await
        .expect("head and first chunk");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains(&"a".repeat(600)) {
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!(
                "no echo within 5 s ({other:?}): {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The proxy may close before it has read everything.
    let _ = client.write_all(chunk(b'b').as_bytes()).await;
    loop {
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("not closed within 5 s: {}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("bbbb"),
        "nothing past the cap was forwarded: {text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the response ended as if whole: {text}"
    );
    let metrics = wait_for_metric(
        &proxy,
        "http_proxy_errors_total",
        &["direction=\"outbound\"", "reason=\"body-too-large\""],
        2.0,
    )
    .await;
    assert_eq!(
        metric_sum(&metrics, "endpoint_ejections_total", &[]),
        0.0,
        "never counted against the endpoint:\n{metrics}"
    );
}
