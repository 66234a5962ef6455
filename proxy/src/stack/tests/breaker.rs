//! [`crate::stack::breaker`]: at most `max_requests` in flight per
//! cluster; over it, fail fast; a slot is held until the response ends.

use super::support::{
    cluster, collect, data, get, incoming, mock, nothing_sent, status, streamed, web_cluster,
};
use crate::http::error::ProxyError;
use crate::route::ClusterState;
use crate::stack::breaker::Breaker;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tower::{Service, ServiceExt};

fn web(max_requests: usize) -> Arc<ClusterState> {
    let fields = format!("    circuit_breaker: {{max_requests: {max_requests}}}\n");
    cluster(&web_cluster(1, &fields), "web")
}

fn in_flight(cluster: &ClusterState) -> usize {
    cluster.active.load(Ordering::Relaxed)
}

#[tokio::test]
async fn over_max_requests_a_request_fails_fast_without_reaching_the_cluster() {
    let web = web(1);
    let (inner, mut handle) = mock();
    let mut svc = Breaker::new(Some(web.clone()), inner);
    let first = svc.ready().await.expect("ready").call(get());
    let (_, send) = handle.next_request().await.expect("the first went down");
    assert_eq!(in_flight(&web), 1);
    match svc.ready().await.expect("ready").call(get()).await {
        Err(ProxyError::Overloaded { cluster, limit }) => {
            assert_eq!((cluster.as_str(), limit), ("web", "max_requests"));
        }
        _ => panic!("the second request is refused at once"),
    }
    assert!(nothing_sent(&mut handle), "never sent");
    send.send_response(status(200));
    assert_eq!(first.await.expect("answered").status(), 200);
    assert_eq!(in_flight(&web), 0, "a body in memory ends the request");
    // The slot is free again.
    let again = svc.ready().await.expect("ready").call(get());
    let (_, send) = handle.next_request().await.expect("admitted");
    send.send_response(status(204));
    assert_eq!(again.await.expect("answered").status(), 204);
}

#[tokio::test]
async fn the_slot_is_held_until_the_response_stream_ends() {
    let web = web(1);
    let (inner, mut handle) = mock();
    let mut svc = Breaker::new(Some(web.clone()), inner);
    let future = svc.ready().await.expect("ready").call(get());
    let (_, send) = handle.next_request().await.expect("request");
    let (tx, body) = incoming(None).await;
    send.send_response(streamed(200, body));
    let response = future.await.expect("headers");
    assert_eq!(
        in_flight(&web),
        1,
        "a download in progress is a request in flight"
    );
    assert!(svc.ready().await.expect("ready").call(get()).await.is_err());
    tx.send(data("payload")).expect("send");
    drop(tx);
    let (body, _) = collect(response.into_body()).await.expect("body");
    assert_eq!(&body[..], b"payload");
    assert_eq!(in_flight(&web), 0);
}

#[tokio::test]
async fn a_client_that_drops_the_response_frees_the_slot() {
    let web = web(1);
    let (inner, mut handle) = mock();
    let mut svc = Breaker::new(Some(web.clone()), inner);
    let future = svc.ready().await.expect("ready").call(get());
    let (_, send) = handle.next_request().await.expect("request");
    let (_tx, body) = incoming(None).await;
    send.send_response(streamed(200, body));
    let response = future.await.expect("headers");
    assert_eq!(in_flight(&web), 1);
    drop(response);
    assert_eq!(in_flight(&web), 0);
}

#[tokio::test]
async fn a_failure_frees_the_slot_at_once() {
    let web = web(1);
    let (inner, mut handle) = mock();
    let mut svc = Breaker::new(Some(web.clone()), inner);
    let future = svc.ready().await.expect("ready").call(get());
    let (_, send) = handle.next_request().await.expect("request");
    send.send_error(super::support::refused(1));
    assert!(future.await.is_err());
    assert_eq!(in_flight(&web), 0);
}

#[tokio::test]
async fn a_request_given_up_before_its_answer_frees_the_slot() {
    let web = web(1);
    let (inner, mut handle) = mock();
    let mut svc = Breaker::new(Some(web.clone()), inner);
    let future = svc.ready().await.expect("ready").call(get());
    let _held = handle.next_request().await.expect("request");
    assert_eq!(in_flight(&web), 1);
    drop(future);
    assert_eq!(in_flight(&web), 0);
}

#[tokio::test]
async fn traffic_with_no_cluster_has_nothing_to_break() {
    let (inner, mut handle) = mock();
    let mut svc = Breaker::new(None, inner);
    let first = svc.ready().await.expect("ready").call(get());
    let second = svc.ready().await.expect("ready").call(get());
    for _ in 0..2 {
        let (_, send) = handle.next_request().await.expect("both go down");
        send.send_response(status(200));
    }
    assert!(first.await.is_ok() && second.await.is_ok());
}
