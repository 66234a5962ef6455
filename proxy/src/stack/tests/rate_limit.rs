//! [`crate::stack::rate_limit`]: a route's token bucket; over it, 429 at
//! once. (The bucket refills on `std::time::Instant`, not tokio's clock,
//! so refilling cannot be tested with paused time: only the burst is.)

use super::support::{get, mock, nothing_sent, route, status, web_cluster};
use crate::http::error::ProxyError;
use crate::stack::rate_limit;
use tower::{Layer, ServiceExt};

#[tokio::test]
async fn past_the_burst_a_request_is_refused_without_being_sent() {
    let limit = "        rate_limit: {requests_per_second: 0.001, burst: 2}\n";
    let (route, _) = route(
        &web_cluster(1, ""),
        &format!("        cluster: web\n{limit}"),
    );
    let (inner, mut handle) = mock();
    let svc = rate_limit::layer(Some(route)).layer(inner);
    for _ in 0..2 {
        let future = tokio::spawn(svc.clone().oneshot(get()));
        let (_, send) = handle.next_request().await.expect("within the burst");
        send.send_response(status(200));
        assert!(future.await.expect("task").is_ok());
    }
    // Every connection's stack shares the route's bucket: a clone too.
    assert!(matches!(
        svc.clone().oneshot(get()).await,
        Err(ProxyError::RateLimited)
    ));
    assert!(nothing_sent(&mut handle));
}

#[tokio::test]
async fn a_route_without_a_limit_lets_everything_through() {
    let (route, _) = route(&web_cluster(1, ""), "        cluster: web\n");
    let (inner, mut handle) = mock();
    let svc = rate_limit::layer(Some(route)).layer(inner);
    for _ in 0..50 {
        let future = tokio::spawn(svc.clone().oneshot(get()));
        let (_, send) = handle.next_request().await.expect("sent");
        send.send_response(status(200));
        assert!(future.await.expect("task").is_ok());
    }
}
