//! [`crate::stack::request_metrics`] and [`crate::stack::endpoint_metrics`]:
//! a request is counted once, under the labels of the first endpoint it
//! was sent to, or under the connection's own when no endpoint saw it.

use super::support::{addr, conn, get, mock, status};
use crate::http::error::ProxyError;
use crate::http::Target;
use crate::stack::endpoint_metrics::EndpointMetrics;
use crate::stack::request_metrics;
use crate::Direction;
use tower::{Layer, Service, ServiceExt};

const CONFIG: &str = "clusters:\n  - name: web\n    endpoints: [{address: '127.0.0.1:1'}]\n";

fn target(port: u16) -> Target {
    Target {
        addr: addr(port),
        authority: "web".into(),
        route: "".into(),
        cluster: None,
        endpoint: None,
    }
}

#[tokio::test]
async fn the_first_endpoint_names_the_request_and_counts_it_once() {
    let conn = conn(CONFIG, Direction::Outbound);
    let (inner, mut handle) = mock();
    let mut first = EndpointMetrics::new(conn.clone(), target(1), inner.clone());
    let mut retry = EndpointMetrics::new(conn.clone(), target(2), inner);
    let req = get();
    let state = req.state.clone();
    let _a = first.ready().await.expect("ready").call(req);
    let (req, _) = handle.next_request().await.expect("sent");
    let handles = state.metrics.get().expect("named").clone();
    assert_eq!(handles.key().target, addr(1));
    assert_eq!(handles.total.get(), 1);
    // A retry to another endpoint keeps the first's labels and count.
    let _b = retry.ready().await.expect("ready").call(req);
    let _ = handle.next_request().await.expect("sent");
    assert_eq!(state.metrics.get().expect("named").key().target, addr(1));
    assert_eq!(handles.total.get(), 1);
}

#[tokio::test]
async fn a_response_is_counted_under_the_endpoints_labels() {
    let conn = conn(CONFIG, Direction::Outbound);
    let (inner, mut handle) = mock();
    let svc = request_metrics::layer(conn.clone()).layer(EndpointMetrics::new(
        conn.clone(),
        target(1),
        inner,
    ));
    let future = tokio::spawn(svc.oneshot(get()));
    let (_, send) = handle.next_request().await.expect("sent");
    send.send_response(status(503));
    let response = future.await.expect("task").expect("answered");
    drop(response);
    let text = conn.inputs.metrics.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("response_total{") && l.contains("status_code=\"503\""))
        .unwrap_or_else(|| panic!("no 503 counted:\n{text}"));
    assert!(
        line.contains("127.0.0.1:1") && line.contains("failure") && line.ends_with(" 1"),
        "{line}"
    );
}

#[tokio::test]
async fn a_request_refused_before_any_endpoint_is_counted_under_the_connections_target() {
    let conn = conn(CONFIG, Direction::Outbound);
    let (inner, mut handle) = mock();
    let svc = request_metrics::layer(conn.clone()).layer(inner);
    let future = tokio::spawn(svc.oneshot(get()));
    let (_, send) = handle.next_request().await.expect("sent");
    send.send_error(ProxyError::RateLimited);
    assert!(future.await.expect("task").is_err());
    let local = conn.local_metrics(None);
    assert_eq!(local.key().target, conn.orig_dst.addr);
    assert_eq!(local.total.get(), 1);
    let text = conn.inputs.metrics.render();
    assert!(
        text.lines().any(|l| l.starts_with("response_total{")
            && l.contains("status_code=\"429\"")
            && l.contains("success")),
        "a policy refusal is not a failure:\n{text}"
    );
}
