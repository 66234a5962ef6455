//! [`crate::stack::retry`]: which results are tried again, how often, and
//! what stops a retry: attempts, the cluster's `max_retries` and retry
//! budget, a request that cannot be sent again.

use super::support::{
    addr, client_body, cluster, collect, data, get, incoming, mock, nothing_sent, refused, request,
    route, settle, status, streamed, trailers, Handle, Mock,
};
use crate::http::body::UpstreamBody;
use crate::http::error::ProxyError;
use crate::metrics::Metrics;
use crate::route::ClusterState;
use crate::stack::retry::{self, Retrying};
use crate::stack::{Req, Result};
use bytes::Bytes;
use http::Method;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tower::retry::budget::Budget;
use tower::{Layer, Service, ServiceExt};

const CLUSTER: &str = "clusters:\n  - name: web\n    endpoints: [{address: '127.0.0.1:1'}]\n";

/// The retry layer of a route to `web` (with `cluster` fields) whose
/// retry policy is `policy` (a YAML flow mapping).
fn layer(
    cluster_fields: &str,
    policy: &str,
) -> (Retrying<Mock>, Handle, Arc<ClusterState>, Arc<Metrics>) {
    let clusters = format!(
        "clusters:\n  - name: web\n{cluster_fields}    endpoints: [{{address: '127.0.0.1:1'}}]\n"
    );
    let (route, cluster) = route(
        &clusters,
        &format!("        cluster: web\n        retry: {policy}\n"),
    );
    let metrics = Metrics::new();
    let (inner, handle) = mock();
    let svc = retry::layer(Some(route), metrics.clone()).layer(inner);
    (svc, handle, cluster.expect("a forwarding route"), metrics)
}

/// A request whose cluster has been picked (as the split below does).
fn to(cluster: &Arc<ClusterState>, req: Req) -> Req {
    req.state.set_upstream(Some(cluster), None);
    req
}

/// Send `req` and answer its tries with `answers` in turn: how many tries
/// were made, and the result the client got.
async fn tries(
    svc: &mut Retrying<Mock>,
    handle: &mut Handle,
    req: Req,
    answers: Vec<Result>,
) -> (usize, Result) {
    let mut answers = answers.into_iter();
    let mut future = std::pin::pin!(svc.ready().await.expect("ready").call(req));
    let mut made = 0;
    loop {
        tokio::select! {
            result = &mut future => return (made, result),
            Some((_, send)) = handle.next_request() => {
                made += 1;
                match answers.next() {
                    Some(Ok(response)) => send.send_response(response),
                    Some(Err(error)) => send.send_error(error),
                    None => panic!("try {made} was not expected"),
                }
            }
        }
    }
}

fn code(result: &Result) -> u16 {
    match result {
        Ok(response) => response.status().as_u16(),
        Err(e) => e.status().as_u16(),
    }
}

fn grpc(status: &'static str) -> crate::stack::Rsp {
    let mut response = super::support::status(200);
    let headers = response.headers_mut();
    headers.insert("content-type", "application/grpc".parse().expect("value"));
    headers.insert("grpc-status", status.parse().expect("value"));
    response
}

const POLICY: &str = "{attempts: 2, on: [5xx], backoff_base: 10ms, backoff_max: 10ms}";

#[tokio::test(start_paused = true)]
async fn a_matching_failure_is_tried_again_and_the_next_answer_is_returned() {
    let (mut svc, mut handle, web, metrics) = layer("", POLICY);
    let (made, result) = tries(
        &mut svc,
        &mut handle,
        to(&web, get()),
        vec![Ok(status(503)), Ok(status(200))],
    )
    .await;
    assert_eq!((made, code(&result)), (2, 200));
    assert!(metrics.render().contains("retry_total{cluster=\"web\"} 1"));
    assert_eq!(
        web.retrying.load(Ordering::Relaxed),
        0,
        "the max_retries slot is freed"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_attempts_and_the_last_answer_is_returned() {
    let (mut svc, mut handle, web, _) = layer("", POLICY);
    let answers = vec![Ok(status(500)), Ok(status(502)), Ok(status(503))];
    let (made, result) = tries(&mut svc, &mut handle, to(&web, get()), answers).await;
    assert_eq!(
        (made, code(&result)),
        (3, 503),
        "the first try and two retries"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_its_backoff() {
    let (mut svc, mut handle, web, _) = layer(
        "",
        "{attempts: 1, on: [5xx], backoff_base: 40ms, backoff_max: 40ms}",
    );
    let started = tokio::time::Instant::now();
    let (made, _) = tries(
        &mut svc,
        &mut handle,
        to(&web, get()),
        vec![Ok(status(503)), Ok(status(200))],
    )
    .await;
    assert_eq!(made, 2);
    let waited = started.elapsed();
    // Full jitter between half and all of the backoff.
    assert!(
        waited >= std::time::Duration::from_millis(20)
            && waited <= std::time::Duration::from_millis(40),
        "{waited:?}"
    );
}

/// Whether one failure is tried again under `on`.
async fn retried(on: &str, first: Result) -> bool {
    let (mut svc, mut handle, web, _) = layer(
        "",
        &format!("{{attempts: 1, on: {on}, backoff_base: 1ms, backoff_max: 1ms}}"),
    );
    let (made, _) = tries(
        &mut svc,
        &mut handle,
        to(&web, get()),
        vec![first, Ok(status(200))],
    )
    .await;
    made == 2
}

#[tokio::test(start_paused = true)]
async fn only_the_configured_conditions_are_retried() {
    let reset = || Err(ProxyError::UpstreamReset { addr: addr(1) });
    let timeout = || {
        Err(ProxyError::ResponseTimeout {
            addr: addr(1),
            after: std::time::Duration::from_secs(1),
        })
    };
    assert!(retried("[connect-failure]", Err(refused(1))).await);
    assert!(!retried("[connect-failure]", reset()).await);
    assert!(!retried("[connect-failure]", Ok(status(503))).await);
    assert!(retried("[reset]", reset()).await);
    assert!(!retried("[reset]", Err(refused(1))).await);
    assert!(retried("[5xx]", Ok(status(500))).await);
    assert!(retried("[5xx]", timeout()).await, "a timeout is a 504");
    assert!(!retried("[5xx]", Ok(status(404))).await);
    assert!(retried("[gateway-error]", Ok(status(504))).await);
    assert!(!retried("[gateway-error]", Ok(status(500))).await);
    assert!(retried("[429]", Ok(status(429))).await);
    assert!(!retried("[429]", Ok(status(503))).await);
    assert!(retried("[503]", Ok(status(503))).await);
    assert!(!retried("[503]", Ok(status(502))).await);
    assert!(retried("[grpc-unavailable]", Ok(grpc("14"))).await);
    assert!(!retried("[grpc-unavailable]", Ok(grpc("0"))).await);
    assert!(!retried("[grpc-unavailable]", Ok(status(503))).await);
}

#[tokio::test(start_paused = true)]
async fn the_proxys_own_refusals_are_never_retried() {
    let overloaded = || {
        Err(ProxyError::Overloaded {
            cluster: "web".into(),
            limit: "max_pending",
        })
    };
    assert!(!retried("[5xx, gateway-error, 503]", overloaded()).await);
    assert!(
        !retried(
            "[5xx, reset, connect-failure]",
            Err(ProxyError::RequestBody)
        )
        .await
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_limits_retries() {
    // No reserve and no share: the budget never allows one.
    let spent = "    retry_budget: {percent: 0, min_per_second: 0}\n";
    let (mut svc, mut handle, web, metrics) = layer(spent, POLICY);
    let (made, result) = tries(
        &mut svc,
        &mut handle,
        to(&web, get()),
        vec![Ok(status(503))],
    )
    .await;
    assert_eq!((made, code(&result)), (1, 503));
    assert!(metrics
        .render()
        .contains("retry_budget_exhausted_total{cluster=\"web\"} 1"));

    // One retry for every request that deposited, no more.
    let share = "    retry_budget: {percent: 100, min_per_second: 0}\n";
    let (mut svc, mut handle, web, _) = layer(share, POLICY);
    web.retry_budget().1.deposit();
    let answers = vec![Ok(status(503)), Ok(status(503))];
    let (made, result) = tries(&mut svc, &mut handle, to(&web, get()), answers).await;
    assert_eq!(
        (made, code(&result)),
        (2, 503),
        "attempts remained, the budget did not"
    );
}

#[tokio::test(start_paused = true)]
async fn max_retries_zero_means_no_retries() {
    let (mut svc, mut handle, web, _) = layer("    circuit_breaker: {max_retries: 0}\n", POLICY);
    let (made, result) = tries(
        &mut svc,
        &mut handle,
        to(&web, get()),
        vec![Ok(status(503))],
    )
    .await;
    assert_eq!((made, code(&result)), (1, 503));
}

#[tokio::test(start_paused = true)]
async fn a_retry_in_progress_holds_a_max_retries_slot_until_it_ends() {
    let (svc, mut handle, web, _) = layer(
        "    circuit_breaker: {max_retries: 1}\n",
        "{attempts: 1, on: [5xx], backoff_base: 1ms, backoff_max: 1ms}",
    );
    let a = tokio::spawn(svc.clone().oneshot(to(&web, get())));
    let (_, send) = handle.next_request().await.expect("a's first try");
    send.send_response(status(503));
    let (_, a_retry) = handle.next_request().await.expect("a's retry");
    assert_eq!(web.retrying.load(Ordering::Relaxed), 1);
    // Meanwhile b fails too: the one slot is a's, so b gets its failure.
    let b = tokio::spawn(svc.clone().oneshot(to(&web, get())));
    let (_, send) = handle.next_request().await.expect("b's first try");
    send.send_response(status(502));
    assert_eq!(code(&b.await.expect("task")), 502);
    a_retry.send_response(status(200));
    assert_eq!(code(&a.await.expect("task")), 200);
    assert_eq!(web.retrying.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_or_connect_is_never_retried() {
    let (mut svc, mut handle, web, _) = layer("", POLICY);
    let mut upgrade = get();
    let headers = upgrade.http.headers_mut();
    headers.insert("upgrade", "websocket".parse().expect("value"));
    headers.insert("connection", "upgrade".parse().expect("value"));
    let (made, result) = tries(
        &mut svc,
        &mut handle,
        to(&web, upgrade),
        vec![Ok(status(503))],
    )
    .await;
    assert_eq!(
        (made, code(&result)),
        (1, 503),
        "an upgrade takes the connection over"
    );

    let connect = request(Method::CONNECT, UpstreamBody::full(None));
    let (made, result) = tries(
        &mut svc,
        &mut handle,
        to(&web, connect),
        vec![Ok(status(503))],
    )
    .await;
    assert_eq!(
        (made, code(&result)),
        (1, 503),
        "CONNECT is never sent twice"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_over_max_body_is_never_retried() {
    let (mut svc, mut handle, web, _) = layer(
        "",
        "{attempts: 2, on: [5xx], max_body: 4, backoff_base: 1ms, backoff_max: 1ms}",
    );
    let (tx, body) = client_body(None).await;
    let req = to(&web, request(Method::POST, UpstreamBody::stream(body)));
    let mut future = std::pin::pin!(svc.ready().await.expect("ready").call(req));
    tx.send(data("abc")).expect("send");
    tx.send(data("def")).expect("send");
    drop(tx);
    let (mut sent, send) = tokio::select! {
        _ = &mut future => panic!("answered before the try"),
        next = handle.next_request() => next.expect("first try"),
    };
    // The upstream reads the whole body, then fails.
    let (body, _) = collect(sent.http.body_mut()).await.expect("body");
    assert_eq!(body, Bytes::from_static(b"abcdef"));
    send.send_response(status(503));
    assert_eq!(code(&future.await), 503);
    settle().await;
    assert!(nothing_sent(&mut handle), "no second try");
}

#[tokio::test(start_paused = true)]
async fn a_retry_sends_the_client_body_again() {
    let (mut svc, mut handle, web, _) = layer(
        "",
        "{attempts: 1, on: [5xx], max_body: 64, backoff_base: 1ms, backoff_max: 1ms}",
    );
    let (tx, body) = client_body(Some(5)).await;
    let req = to(&web, request(Method::POST, UpstreamBody::stream(body)));
    let mut future = std::pin::pin!(svc.ready().await.expect("ready").call(req));
    let (first, send) = tokio::select! {
        _ = &mut future => panic!("answered before the try"),
        next = handle.next_request() => next.expect("first try"),
    };
    // The upstream fails before reading the body: a length within
    // max_body is enough to try again; the retry waits for the stream.
    send.send_response(status(503));
    drop(first);
    tx.send(data("hel")).expect("send");
    tx.send(data("lo")).expect("send");
    drop(tx);
    let (mut second, send) = tokio::select! {
        _ = &mut future => panic!("answered without a retry"),
        next = handle.next_request() => next.expect("the retry"),
    };
    let (body, _) = collect(second.http.body_mut()).await.expect("body");
    assert_eq!(body, Bytes::from_static(b"hello"));
    send.send_response(status(200));
    assert_eq!(code(&future.await), 200);
}

#[tokio::test(start_paused = true)]
async fn a_grpc_status_in_the_trailers_is_read_ahead_and_retried() {
    let (mut svc, mut handle, web, _) = layer(
        "",
        "{attempts: 1, on: [grpc-unavailable], backoff_base: 1ms, backoff_max: 1ms}",
    );
    let mut future = std::pin::pin!(svc.ready().await.expect("ready").call(to(&web, get())));
    for (message, grpc_status) in [("try 1", "14"), ("try 2", "0")] {
        let (req, send) = tokio::select! {
            _ = &mut future => panic!("answered early"),
            next = handle.next_request() => next.expect("a try"),
        };
        drop(req);
        let (tx, body) = incoming(None).await;
        let mut response = streamed(200, body);
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().expect("value"));
        tx.send(data(message)).expect("send");
        tx.send(trailers("grpc-status", grpc_status)).expect("send");
        send.send_response(response);
    }
    let response = future.await.expect("answered");
    // Nothing read ahead is lost: the client gets the last try whole.
    let (body, trailers) = collect(response.into_body()).await.expect("body");
    assert_eq!(body, Bytes::from_static(b"try 2"));
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    settle().await;
    assert!(nothing_sent(&mut handle));
}

#[tokio::test(start_paused = true)]
async fn a_route_without_a_policy_passes_requests_through() {
    let web = cluster(CLUSTER, "web");
    let (inner, mut handle) = mock();
    let mut svc = retry::layer(None, Metrics::new()).layer(inner);
    let (made, result) = tries(
        &mut svc,
        &mut handle,
        to(&web, get()),
        vec![Ok(status(503))],
    )
    .await;
    assert_eq!((made, code(&result)), (1, 503));
}
