//! [`crate::stack::balance`]: the endpoint a request goes to, and for a
//! request that was never sent (no connection), another endpoint.

use super::support::{addr, cluster, get, mock, refused, status, unsent, web_cluster, Handle};
use crate::http::error::ProxyError;
use crate::http::Target;
use crate::route::RouteTarget;
use crate::stack::balance::{Balance, MAX_UNSENT_TRIES};
use crate::stack::split::Upstream;
use crate::stack::Result;
use std::net::SocketAddr;
use tower::{Service, ServiceExt};

fn upstream(endpoints: u16) -> Upstream {
    Upstream::Cluster(RouteTarget {
        authority: "web".into(),
        route: "".into(),
        cluster: cluster(&web_cluster(endpoints, ""), "web"),
    })
}

/// Send a request through `upstream`'s balancer; `answer` answers each
/// try (given the endpoint it went to and the request). The endpoints
/// tried, in order, and the result.
async fn send(
    upstream: Upstream,
    mut answer: impl FnMut(SocketAddr, crate::stack::Req) -> Result,
) -> (Vec<SocketAddr>, Result) {
    let (inner, mut handle): (_, Handle) = mock();
    let mut svc = Balance::new(upstream, addr(40000).ip(), "".into(), move |_: Target| {
        inner.clone()
    });
    let mut future = std::pin::pin!(svc.ready().await.expect("ready").call(get()));
    let mut tried = Vec::new();
    loop {
        tokio::select! {
            result = &mut future => return (tried, result),
            Some((req, send)) = handle.next_request() => {
                let endpoint = req.state.upstream().1.expect("the endpoint is noted");
                tried.push(endpoint);
                match answer(endpoint, req) {
                    Ok(response) => send.send_response(response),
                    Err(error) => send.send_error(error),
                }
            }
        }
    }
}

#[tokio::test]
async fn a_request_no_endpoint_took_goes_to_others_at_most_max_unsent_tries() {
    let (tried, result) = send(upstream(5), |a, req| Err(unsent(refused(a.port()), req))).await;
    assert_eq!(tried.len(), MAX_UNSENT_TRIES);
    let mut distinct = tried.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        tried.len(),
        "never one already tried: {tried:?}"
    );
    match result {
        Err(ProxyError::ConnectRefused(a)) => {
            assert_eq!(a, tried[2], "the last failure, unwrapped")
        }
        _ => panic!("the connect failure is returned"),
    }
}

#[tokio::test]
async fn the_next_endpoint_may_answer() {
    let mut made = 0;
    let (tried, result) = send(upstream(3), |a, req| {
        made += 1;
        match made {
            1 => Err(unsent(refused(a.port()), req)),
            _ => Ok(status(200)),
        }
    })
    .await;
    assert_eq!(tried.len(), 2);
    assert_ne!(tried[0], tried[1]);
    assert_eq!(result.expect("answered").status(), 200);
}

#[tokio::test]
async fn with_fewer_endpoints_than_tries_each_is_tried_once() {
    let (tried, result) = send(upstream(2), |a, req| Err(unsent(refused(a.port()), req))).await;
    assert_eq!(tried.len(), 2);
    assert_ne!(tried[0], tried[1]);
    assert!(matches!(result, Err(ProxyError::ConnectRefused(_))));
}

#[tokio::test]
async fn an_unsent_request_for_another_reason_is_not_moved() {
    let overloaded = || ProxyError::Overloaded {
        cluster: "web".into(),
        limit: "max_pending",
    };
    let (tried, result) = send(upstream(3), |_, req| Err(unsent(overloaded(), req))).await;
    assert_eq!(tried.len(), 1);
    assert!(matches!(
        result,
        Err(ProxyError::Overloaded {
            limit: "max_pending",
            ..
        })
    ));
}

#[tokio::test]
async fn other_errors_and_answers_are_returned_as_they_are() {
    let (tried, result) = send(upstream(3), |a, _| {
        Err(ProxyError::UpstreamReset { addr: a })
    })
    .await;
    assert_eq!(tried.len(), 1);
    assert!(matches!(result, Err(ProxyError::UpstreamReset { addr: a }) if a == tried[0]));
    let (tried, result) = send(upstream(3), |_, _| Ok(status(503))).await;
    assert_eq!(
        (tried.len(), result.expect("answer").status().as_u16()),
        (1, 503)
    );
}

#[tokio::test]
async fn a_direct_destination_has_nowhere_else_to_go() {
    let (tried, result) = send(Upstream::Direct(addr(9)), |a, req| {
        Err(unsent(refused(a.port()), req))
    })
    .await;
    assert_eq!(tried, vec![addr(9)]);
    assert!(matches!(result, Err(ProxyError::ConnectRefused(a)) if a == addr(9)));
}

#[tokio::test]
async fn a_cluster_with_no_endpoints_fails_with_no_endpoints() {
    // A DNS name not resolved (yet): no addresses.
    let unresolved = "clusters:\n  - name: web\n    endpoints: [{address: 'web.invalid:80'}]\n";
    let upstream = Upstream::Cluster(RouteTarget {
        authority: "web".into(),
        route: "".into(),
        cluster: cluster(unresolved, "web"),
    });
    let (tried, result) = send(upstream, |_, _| Ok(status(200))).await;
    assert!(tried.is_empty());
    assert!(matches!(result, Err(ProxyError::NoEndpoints { cluster }) if cluster == "web"));
}
