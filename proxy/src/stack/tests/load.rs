//! [`crate::stack::load`]: what the balancer learns from each request to
//! an endpoint: its in-flight count and its outcome.

use super::support::{addr, cluster, get, mock, refused, status, unsent, web_cluster};
use crate::balance::endpoint::{Endpoint, Outcome};
use crate::http::error::ProxyError;
use crate::metrics::Metrics;
use crate::route::ClusterState;
use crate::stack::load::{outcome, Load};
use crate::stack::Result;
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceExt};

fn endpoint() -> (Arc<ClusterState>, Arc<Endpoint>) {
    let web = cluster(&web_cluster(2, ""), "web");
    let first = web.balancer().endpoints()[0].clone();
    (web, first)
}

#[tokio::test]
async fn a_request_is_in_flight_from_the_call_to_its_answer() {
    let (web, endpoint) = endpoint();
    let (inner, mut handle) = mock();
    let mut svc = Load::new(Some((web, endpoint.clone())), Metrics::new(), inner);
    assert_eq!(endpoint.inflight(), 0);
    let future = svc.ready().await.expect("ready").call(get());
    assert_eq!(endpoint.inflight(), 1);
    let (_, send) = handle.next_request().await.expect("request");
    send.send_response(status(200));
    future.await.expect("answered");
    assert_eq!(endpoint.inflight(), 0);
}

#[tokio::test]
async fn a_request_given_up_leaves_the_in_flight_count() {
    let (web, endpoint) = endpoint();
    let (inner, mut handle) = mock();
    let mut svc = Load::new(Some((web, endpoint.clone())), Metrics::new(), inner);
    let future = svc.ready().await.expect("ready").call(get());
    let _held = handle.next_request().await.expect("request");
    assert_eq!(endpoint.inflight(), 1);
    drop(future);
    assert_eq!(endpoint.inflight(), 0);
}

#[test]
fn outcomes_classify_results() {
    let timeout = ProxyError::ResponseTimeout {
        addr: addr(1),
        after: Duration::from_secs(1),
    };
    let connect_timeout = ProxyError::ConnectTimeout {
        addr: addr(1),
        after: Duration::from_secs(1),
    };
    let cases: Vec<(Result, Option<Outcome>)> = vec![
        (Ok(status(200)), Some(Outcome::Success)),
        (Ok(status(404)), Some(Outcome::Success)),
        (Ok(status(500)), Some(Outcome::Failure)),
        (Ok(status(503)), Some(Outcome::Failure)),
        (Err(refused(1)), Some(Outcome::ConnectFailure)),
        (Err(connect_timeout), Some(Outcome::ConnectFailure)),
        (
            Err(unsent(refused(1), get())),
            Some(Outcome::ConnectFailure),
        ),
        (Err(timeout), Some(Outcome::Failure)),
        (
            Err(ProxyError::UpstreamReset { addr: addr(1) }),
            Some(Outcome::Failure),
        ),
        // The client's broken body says nothing about the endpoint.
        (Err(ProxyError::RequestBody), None),
        (Err(unsent(ProxyError::RequestBody, get())), None),
    ];
    for (result, expected) in cases {
        let shown = match &result {
            Ok(r) => r.status().to_string(),
            Err(e) => e.reason().to_string(),
        };
        assert_eq!(outcome(&result), expected, "{shown}");
    }
}

/// Answer `n` requests to the endpoint with `error`.
async fn fail(n: usize, error: fn() -> ProxyError) -> (Arc<Endpoint>, Arc<Metrics>) {
    let (web, endpoint) = endpoint();
    let metrics = Metrics::new();
    let (inner, mut handle) = mock();
    let mut svc = Load::new(Some((web, endpoint.clone())), metrics.clone(), inner);
    for _ in 0..n {
        let future = svc.ready().await.expect("ready").call(get());
        let (_, send) = handle.next_request().await.expect("request");
        send.send_error(error());
        assert!(future.await.is_err());
    }
    assert_eq!(endpoint.inflight(), 0);
    (endpoint, metrics)
}

#[tokio::test]
async fn connect_failures_eject_the_endpoint_and_count_the_ejection() {
    let (endpoint, metrics) = fail(3, || refused(1)).await;
    assert!(endpoint.is_ejected());
    assert!(metrics
        .render()
        .contains("endpoint_ejections_total{cluster=\"web\"} 1"));
}

#[tokio::test]
async fn a_client_body_error_is_left_out() {
    let (endpoint, metrics) = fail(10, || ProxyError::RequestBody).await;
    assert!(!endpoint.is_ejected());
    assert!(!metrics.render().contains("endpoint_ejections_total{"));
}

#[tokio::test]
async fn traffic_with_no_cluster_is_passed_through() {
    let (inner, mut handle) = mock();
    let mut svc = Load::new(None, Metrics::new(), inner);
    let future = svc.ready().await.expect("ready").call(get());
    let (_, send) = handle.next_request().await.expect("request");
    send.send_response(status(502));
    assert_eq!(future.await.expect("answer").status(), 502);
}
