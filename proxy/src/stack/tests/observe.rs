//! [`crate::stack::observe`]: off, a request is not captured at all (the
//! layers below are not asked to count for it); with a tap open, only a
//! request its filter could match is, and its record is emitted when the
//! response stream ends, with the bytes that passed.

use super::support::{conn, data, get, incoming, mock, status, streamed};
use crate::observe::filter::TapQuery;
use crate::stack::observe;
use crate::Direction;
use http::Uri;
use tower::{Layer, ServiceExt};

const CONFIG: &str = "clusters:\n  - name: web\n    endpoints: [{address: '127.0.0.1:1'}]\n";

fn at(path: &str) -> crate::stack::Req {
    let mut req = get();
    *req.http.uri_mut() = Uri::try_from(format!("http://web{path}")).expect("uri");
    req
}

#[tokio::test]
async fn off_nothing_is_captured() {
    let conn = conn(CONFIG, Direction::Outbound);
    let (inner, mut handle) = mock();
    let svc = observe::layer(conn).layer(inner);
    let future = tokio::spawn(svc.oneshot(get()));
    let (req, send) = handle.next_request().await.expect("sent");
    assert!(!req.state.tally.is_on(), "the layers below count nothing");
    send.send_response(status(200));
    assert_eq!(future.await.expect("task").expect("answered").status(), 200);
}

#[tokio::test]
async fn only_requests_a_tap_could_match_are_captured_and_recorded_at_stream_end() {
    let conn = conn(CONFIG, Direction::Outbound);
    let filter = TapQuery::parse(Some("path_prefix=/match"))
        .expect("query")
        .filter;
    let (_tap, mut records) = conn.inputs.observe.open_tap(filter, 10, 8);
    let (inner, mut handle) = mock();
    let svc = observe::layer(conn).layer(inner);

    let other = tokio::spawn(svc.clone().oneshot(at("/other")));
    let (req, send) = handle.next_request().await.expect("sent");
    assert!(!req.state.tally.is_on(), "no tap could match /other");
    send.send_response(status(200));
    drop(other.await.expect("task").expect("answered"));

    let matching = tokio::spawn(svc.oneshot(at("/match/1")));
    let (req, send) = handle.next_request().await.expect("sent");
    assert!(req.state.tally.is_on());
    let (body_tx, body) = incoming(None).await;
    send.send_response(streamed(201, body));
    let response = matching.await.expect("task").expect("answered");
    assert_eq!(response.status(), 201);
    assert!(records.try_recv().is_err(), "not before the stream ends");
    body_tx.send(data("twelve bytes")).expect("send");
    drop(body_tx);
    let (bytes, _) = super::support::collect(response.into_body())
        .await
        .expect("body");
    assert_eq!(bytes.len(), 12);
    let record = records.try_recv().expect("recorded at the end");
    assert_eq!(record.path, "/match/1");
    assert_eq!(record.status, 201);
    assert_eq!(record.response_bytes, 12);
    assert!(!record.stream_broken);
    assert!(records.try_recv().is_err(), "/other was never recorded");
}

#[tokio::test]
async fn a_request_cancelled_before_its_response_is_still_recorded() {
    let conn = conn(CONFIG, Direction::Outbound);
    let filter = TapQuery::parse(Some("path_prefix=/slow"))
        .expect("query")
        .filter;
    let (_tap, mut records) = conn.inputs.observe.open_tap(filter, 10, 8);
    let (inner, mut handle) = mock();
    let svc = observe::layer(conn).layer(inner);
    let pending = tokio::spawn(svc.oneshot(at("/slow")));
    let (_req, _send) = handle.next_request().await.expect("sent");
    // The client goes away while the upstream has not answered.
    pending.abort();
    assert!(pending.await.is_err_and(|e| e.is_cancelled()));
    let record = records.try_recv().expect("recorded when dropped");
    assert_eq!(record.path, "/slow");
    assert_eq!(record.status, 0);
    assert_eq!(record.error, Some("request cancelled before the response"));
    assert!(record.stream_broken);
}
