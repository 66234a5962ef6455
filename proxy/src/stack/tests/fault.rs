//! [`crate::stack::fault`]: a route's injected faults: abort a share of
//! requests with a status, or delay a share before they go on.

use super::support::{get, mock, nothing_sent, route, settle, status, web_cluster};
use crate::http::error::ProxyError;
use crate::stack::fault;
use std::time::Duration;
use tower::{Layer, ServiceExt};

fn faulty(fault: &str) -> std::sync::Arc<crate::http::vhost::Route> {
    route(
        &web_cluster(1, ""),
        &format!("        cluster: web\n        fault: {fault}\n"),
    )
    .0
}

#[tokio::test]
async fn an_abort_answers_with_its_status_and_sends_nothing() {
    let (inner, mut handle) = mock();
    let svc = fault::layer(Some(faulty("{abort: {status: 503, percent: 100}}"))).layer(inner);
    match svc.oneshot(get()).await {
        Err(ProxyError::FaultAbort { status }) => assert_eq!(status, 503),
        _ => panic!("aborted"),
    }
    assert!(nothing_sent(&mut handle));
}

#[tokio::test(start_paused = true)]
async fn a_delay_holds_the_request_back_for_its_duration() {
    let (inner, mut handle) = mock();
    let svc = fault::layer(Some(faulty("{delay: {fixed: 1s, percent: 100}}"))).layer(inner);
    let task = tokio::spawn(svc.oneshot(get()));
    settle().await;
    tokio::time::advance(Duration::from_millis(999)).await;
    settle().await;
    assert!(nothing_sent(&mut handle), "not before the delay");
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    let (_, send) = match handle.poll_request() {
        std::task::Poll::Ready(Some(next)) => next,
        _ => panic!("sent once the delay is over"),
    };
    send.send_response(status(200));
    assert_eq!(task.await.expect("task").expect("answer").status(), 200);
}

#[tokio::test]
async fn a_fault_at_zero_percent_never_fires() {
    let (inner, mut handle) = mock();
    let route = faulty("{abort: {status: 500, percent: 0}, delay: {fixed: 1h, percent: 0}}");
    let svc = fault::layer(Some(route)).layer(inner);
    for _ in 0..20 {
        let future = tokio::spawn(svc.clone().oneshot(get()));
        let (_, send) = handle.next_request().await.expect("sent at once");
        send.send_response(status(200));
        assert!(future.await.expect("task").is_ok());
    }
}
