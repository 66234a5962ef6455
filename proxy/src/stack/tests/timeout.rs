//! [`crate::stack::timeout`]: the route's deadline to response headers,
//! counted from when the request body has been sent; `grpc-timeout`;
//! what each try below may take.

use super::support::{addr, get, mock, poll_with, request, route, status, web_cluster, Flag};
use crate::http::body::UpstreamBody;
use crate::http::error::ProxyError;
use crate::stack::timeout::{self, grpc_timeout};
use crate::stack::Req;
use bytes::Bytes;
use http::Method;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// A route forwarding to `web` with these extra fields.
fn route_with(fields: &str) -> std::sync::Arc<crate::http::vhost::Route> {
    route(
        &web_cluster(1, ""),
        &format!("        cluster: web\n{fields}"),
    )
    .0
}

/// A POST whose body has not been sent yet.
fn upload() -> Req {
    request(
        Method::POST,
        UpstreamBody::full(Some(Bytes::from_static(b"x"))),
    )
}

fn with_grpc_timeout(mut req: Req, value: &'static str) -> Req {
    req.http
        .headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static(value));
    req
}

fn assert_timed_out(result: crate::stack::Result, after: Duration) {
    match result {
        Err(ProxyError::ResponseTimeout {
            addr: a,
            after: got,
        }) => {
            assert_eq!(a, addr(80), "the error names where the request was headed");
            assert_eq!(got, after);
        }
        Err(e) => panic!("expected a response timeout, got {e}"),
        Ok(r) => panic!("expected a response timeout, got {}", r.status()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_the_upstream_stops_taking_times_out_after_the_limit() {
    let (inner, mut handle) = mock();
    let mut svc = timeout::layer(Some(route_with("        timeout: 1s\n")), addr(80)).layer(inner);
    let req = upload();
    let state = req.state.clone();
    let mut future = Box::pin(svc.ready().await.expect("ready").call(req));
    let _held = handle.next_request().await.expect("the request went down");
    let flag = Flag::new();
    state.note_body_progress();
    assert!(poll_with(&mut future, &flag).is_pending());
    tokio::time::advance(900 * MS).await;
    state.note_body_progress();
    assert!(
        poll_with(&mut future, &flag).is_pending(),
        "it moved within the limit"
    );
    // No frame taken for a whole limit: the upstream stopped reading.
    tokio::time::advance(1100 * MS).await;
    assert!(
        poll_with(&mut future, &flag).is_pending(),
        "it moved within the last window of one limit"
    );
    tokio::time::advance(1100 * MS).await;
    match poll_with(&mut future, &flag) {
        std::task::Poll::Ready(result) => assert_timed_out(result, Duration::from_secs(1)),
        std::task::Poll::Pending => panic!("a stalled body must time out"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_clock_starts_only_when_the_request_body_has_been_sent() {
    let (inner, mut handle) = mock();
    let mut svc = timeout::layer(Some(route_with("        timeout: 1s\n")), addr(80)).layer(inner);
    let req = upload();
    let state = req.state.clone();
    assert!(!state.body_sent());
    let mut future = Box::pin(svc.ready().await.expect("ready").call(req));
    let _held = handle.next_request().await.expect("the request went down");
    let flag = Flag::new();
    assert!(poll_with(&mut future, &flag).is_pending());

    // A slow upload is not cut off, however long it takes, while it moves.
    for _ in 0..120 {
        state.note_body_progress();
        tokio::time::advance(500 * MS).await;
        assert!(poll_with(&mut future, &flag).is_pending());
    }

    state.mark_body_sent();
    assert!(flag.take(), "sending the body wakes the deadline");
    assert!(poll_with(&mut future, &flag).is_pending());
    tokio::time::advance(999 * MS).await;
    assert!(
        poll_with(&mut future, &flag).is_pending(),
        "not before the limit"
    );
    tokio::time::advance(MS).await;
    assert!(flag.take(), "the timer wakes the request");
    match poll_with(&mut future, &flag) {
        std::task::Poll::Ready(result) => assert_timed_out(result, Duration::from_secs(1)),
        std::task::Poll::Pending => panic!("the deadline passed"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_before_the_deadline_is_the_answer() {
    let (inner, mut handle) = mock();
    let mut svc = timeout::layer(Some(route_with("        timeout: 1s\n")), addr(80)).layer(inner);
    let future = svc.ready().await.expect("ready").call(upload());
    let (_, send) = handle.next_request().await.expect("request");
    // The server may answer before the body has even been sent.
    send.send_response(status(201));
    assert_eq!(future.await.expect("answered").status(), 201);
}

#[tokio::test(start_paused = true)]
async fn an_empty_body_counts_as_sent_at_once() {
    let (inner, mut handle) = mock();
    let mut svc = timeout::layer(Some(route_with("        timeout: 1s\n")), addr(80)).layer(inner);
    let future = tokio::spawn(svc.ready().await.expect("ready").call(get()));
    let _held = handle.next_request().await.expect("request");
    let started = tokio::time::Instant::now();
    assert_timed_out(future.await.expect("task"), Duration::from_secs(1));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn without_a_limit_nothing_times_out() {
    let (inner, mut handle) = mock();
    let mut svc = timeout::layer(None, addr(80)).layer(inner);
    let mut future = Box::pin(svc.ready().await.expect("ready").call(get()));
    let (_, send) = handle.next_request().await.expect("request");
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    assert!(poll_with(&mut future, &Flag::new()).is_pending());
    send.send_response(status(200));
    assert_eq!(future.await.expect("answered").status(), 200);
}

#[test]
fn grpc_timeout_is_digits_and_a_unit() {
    let cases = [
        ("100m", Some(100 * MS)),
        ("3S", Some(Duration::from_secs(3))),
        ("2M", Some(Duration::from_secs(120))),
        ("1H", Some(Duration::from_secs(3600))),
        ("250u", Some(Duration::from_micros(250))),
        ("999n", Some(Duration::from_nanos(999))),
        // Zero means no deadline rather than one already passed.
        ("0S", None),
        ("", None),
        ("m", None),
        ("10", None),
        ("10s", None),
        ("-1S", None),
        ("1.5S", None),
        (" 1S", None),
    ];
    for (value, expected) in cases {
        let req = http::Request::get("/")
            .header("grpc-timeout", value)
            .body(())
            .expect("request");
        assert_eq!(grpc_timeout(&req), expected, "grpc-timeout: {value:?}");
    }
    let none = http::Request::get("/").body(()).expect("request");
    assert_eq!(grpc_timeout(&none), None);
    // An absurd value saturates instead of overflowing.
    let huge = http::Request::get("/")
        .header("grpc-timeout", "18446744073709551615H")
        .body(())
        .expect("request");
    assert!(grpc_timeout(&huge).is_some());
}

/// How long a request waits before it times out, and the limit it names.
async fn time_to_timeout(route: Option<&str>, grpc: Option<&'static str>) -> Duration {
    let (inner, mut handle) = mock();
    let mut svc = timeout::layer(route.map(route_with), addr(80)).layer(inner);
    let req = match grpc {
        Some(value) => with_grpc_timeout(get(), value),
        None => get(),
    };
    let started = tokio::time::Instant::now();
    let future = tokio::spawn(svc.ready().await.expect("ready").call(req));
    let _held = handle.next_request().await.expect("request");
    let waited = match future.await.expect("task") {
        Err(ProxyError::ResponseTimeout { after, .. }) => after,
        _ => panic!("expected a response timeout"),
    };
    assert_eq!(started.elapsed(), waited, "it fires at the limit it names");
    waited
}

#[tokio::test(start_paused = true)]
async fn the_shorter_of_the_route_timeout_and_grpc_timeout_applies() {
    let route = Some("        timeout: 1s\n");
    assert_eq!(time_to_timeout(route, Some("200m")).await, 200 * MS);
    assert_eq!(
        time_to_timeout(route, Some("5S")).await,
        Duration::from_secs(1)
    );
    assert_eq!(time_to_timeout(route, None).await, Duration::from_secs(1));
    // Inbound (no route): the client's deadline alone.
    assert_eq!(time_to_timeout(None, Some("300m")).await, 300 * MS);
    // A route without a timeout of its own: the client's deadline.
    assert_eq!(time_to_timeout(Some(""), Some("40m")).await, 40 * MS);
}

/// What the layer tells the tries below they may take.
async fn try_timeout(route: Option<&str>, grpc: Option<&'static str>) -> Option<Option<Duration>> {
    let (inner, mut handle) = mock();
    let mut svc = timeout::layer(route.map(route_with), addr(80)).layer(inner);
    let req = match grpc {
        Some(value) => with_grpc_timeout(get(), value),
        None => get(),
    };
    let _future = svc.ready().await.expect("ready").call(req);
    let (req, _) = handle.next_request().await.expect("request");
    req.try_timeout
}

#[tokio::test]
async fn each_try_is_told_its_own_limit() {
    let retry = "        retry: {attempts: 2, on: [5xx], per_try_timeout: 250ms}\n";
    // The retry policy's per_try_timeout, with or without a route timeout.
    assert_eq!(try_timeout(Some(retry), None).await, Some(Some(250 * MS)));
    let both = format!("        timeout: 2s\n{retry}");
    assert_eq!(try_timeout(Some(&both), None).await, Some(Some(250 * MS)));
    // The route's timeout bounds every try together: no per-try limit.
    assert_eq!(
        try_timeout(Some("        timeout: 2s\n"), None).await,
        Some(None)
    );
    assert_eq!(try_timeout(None, Some("1S")).await, Some(None));
    let retry_only = "        retry: {attempts: 2, on: [5xx]}\n        timeout: 2s\n";
    assert_eq!(try_timeout(Some(retry_only), None).await, Some(None));
    // Neither: unset, so the cluster's response_timeout applies per try.
    assert_eq!(try_timeout(Some(""), None).await, None);
    assert_eq!(try_timeout(None, None).await, None);
}

/// One try through `deadline` with the connection's spare timer: how long
/// it took and what it gave.
async fn timed_try(
    spare: &timeout::SpareTimer,
    limit: Duration,
    answer: Option<crate::stack::Result>,
) -> (Duration, crate::stack::Result) {
    let req = get();
    let started = tokio::time::Instant::now();
    let inner = async move {
        match answer {
            Some(result) => result,
            None => std::future::pending().await,
        }
    };
    let result = timeout::deadline(inner, &req.state, Some(limit), addr(80), Some(spare)).await;
    (started.elapsed(), result)
}

#[tokio::test(start_paused = true)]
async fn a_connections_tries_share_one_timer_and_each_gets_its_own_limit() {
    let spare = timeout::SpareTimer::default();
    let (_, answered) = timed_try(&spare, Duration::from_secs(10), Some(Ok(status(200)))).await;
    assert_eq!(answered.expect("answered").status(), 200);
    assert!(spare.is_held(), "the timer is given back for the next try");
    // An earlier deadline than the one the timer last had.
    let (took, result) = timed_try(&spare, Duration::from_secs(1), None).await;
    assert_timed_out(result, Duration::from_secs(1));
    assert_eq!(took, Duration::from_secs(1));
    assert!(spare.is_held(), "a timed-out try gives it back too");
    // A later one, long after the last fired.
    tokio::time::advance(Duration::from_secs(30)).await;
    let (took, result) = timed_try(&spare, Duration::from_secs(3), None).await;
    assert_timed_out(result, Duration::from_secs(3));
    assert_eq!(took, Duration::from_secs(3));
}
