//! [`crate::stack::rescue`]: every error from below becomes the response
//! the client gets: its status, a `strait-proxy-error` header naming the
//! cause, a message; counted in `http_proxy_errors_total`.

use super::support::{client_body, conn, mock, status};
use crate::http::error::{ProxyError, PROXY_ERROR_HEADER};
use crate::stack::rescue::{self, error_response};
use crate::Direction;
use http::{Request, Version};
use tower::{Layer, ServiceExt};

const CONFIG: &str = "clusters:\n  - name: web\n    endpoints: [{address: '127.0.0.1:1'}]\n";

#[test]
fn an_error_becomes_its_status_and_a_header_naming_it() {
    let conn = conn(CONFIG, Direction::Outbound);
    let cases = [
        (
            ProxyError::NoRoute {
                authority: "x".into(),
            },
            404,
            "no-route",
        ),
        (super::support::refused(1), 502, "connect-refused"),
        (
            ProxyError::Overloaded {
                cluster: "web".into(),
                limit: "max_requests",
            },
            503,
            "overloaded",
        ),
        (ProxyError::RateLimited, 429, "rate-limited"),
        (
            ProxyError::FaultAbort {
                status: http::StatusCode::IM_A_TEAPOT,
            },
            418,
            "fault-injected",
        ),
    ];
    for (error, code, reason) in cases {
        let response = error_response(&conn, &error);
        assert_eq!(response.status(), code, "{reason}");
        assert_eq!(response.headers()[PROXY_ERROR_HEADER], reason);
    }
    let text = conn.inputs.metrics.render();
    assert!(
        text.contains("http_proxy_errors_total{direction=\"outbound\",reason=\"no-route\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_layer_answers_for_an_error_in_the_clients_version() {
    let conn = conn(CONFIG, Direction::Outbound);
    let (inner, mut handle) = mock();
    let svc = rescue::layer(conn).layer(inner);
    let (_tx, body) = client_body(None).await;
    let mut req = Request::new(body);
    *req.version_mut() = Version::HTTP_10;
    let future = tokio::spawn(svc.clone().oneshot(req));
    let (_, send) = handle.next_request().await.expect("sent");
    send.send_error(ProxyError::NoEndpoints {
        cluster: "web".into(),
    });
    let response = future.await.expect("task").expect("infallible");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()[PROXY_ERROR_HEADER], "no-endpoints");
    assert_eq!(response.version(), Version::HTTP_10);

    let (_tx, body) = client_body(None).await;
    let future = tokio::spawn(svc.oneshot(Request::new(body)));
    let (_, send) = handle.next_request().await.expect("sent");
    send.send_response(status(204));
    let response = future.await.expect("task").expect("infallible");
    assert_eq!(response.status(), 204);
    assert!(response.headers().get(PROXY_ERROR_HEADER).is_none());
}
