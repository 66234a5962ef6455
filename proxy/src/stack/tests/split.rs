//! [`crate::stack::split`]: the cluster a request goes to (the route's
//! weighted split), noted in the request's state, and the first try's
//! deposit into that cluster's retry budget.

use super::support::{addr, cluster, get, mock, nothing_sent, route, status, Handle};
use crate::http::error::ProxyError;
use crate::route::RouteTarget;
use crate::stack::split::{Dispatch, Split, Upstream};
use crate::stack::Req;
use std::sync::{Arc, Mutex};
use tower::retry::budget::Budget;
use tower::{Service, ServiceExt};

const TWO: &str = "clusters:\n  - name: web\n    endpoints: [{address: '127.0.0.1:1'}]\n    retry_budget: {percent: 100, min_per_second: 0}\n  - name: api\n    endpoints: [{address: '127.0.0.1:2'}]\n";

/// A split over `dispatch` whose cluster stacks are the mock, noting each
/// upstream it is made for.
fn split(
    dispatch: Dispatch,
) -> (
    impl Service<crate::stack::Req, Response = crate::stack::Rsp, Error = ProxyError>,
    Handle,
    Arc<Mutex<Vec<String>>>,
) {
    let (inner, handle) = mock();
    let made = Arc::new(Mutex::new(Vec::new()));
    let seen = made.clone();
    let svc = Split::new(dispatch, move |upstream: Upstream| {
        let name = match &upstream {
            Upstream::Cluster(t) => t.cluster.name.to_string(),
            Upstream::Direct(a) => a.to_string(),
        };
        seen.lock().expect("lock").push(name);
        inner.clone()
    });
    (svc, handle, made)
}

/// Send `req` through `svc`, answer it 200 below, and return the request
/// as it arrived there.
async fn through<S>(svc: &mut S, handle: &mut Handle, req: Req) -> Req
where
    S: Service<Req, Response = crate::stack::Rsp, Error = ProxyError>,
{
    let mut future = std::pin::pin!(svc.ready().await.expect("ready").call(req));
    let mut below = None;
    loop {
        tokio::select! {
            result = &mut future => {
                result.expect("answered");
                return below.expect("the request went down");
            }
            Some((req, send)) = handle.next_request() => {
                below = Some(req);
                send.send_response(status(200));
            }
        }
    }
}

#[tokio::test]
async fn the_weighted_split_sends_each_cluster_its_share() {
    let (route, _) = route(
        TWO,
        "        split: [{cluster: web, weight: 1}, {cluster: api, weight: 3}]\n",
    );
    let (mut svc, mut handle, made) = split(Dispatch::Route(route));
    for _ in 0..8 {
        let req = get();
        let state = req.state.clone();
        through(&mut svc, &mut handle, req).await;
        let noted = state.cluster().expect("the cluster is noted");
        assert_eq!(
            Some(&*noted.name),
            made.lock().expect("lock").last().map(String::as_str)
        );
    }
    let made = made.lock().expect("lock");
    let web = made.iter().filter(|c| *c == "web").count();
    assert_eq!((web, made.len() - web), (2, 6), "{made:?}");
}

#[tokio::test]
async fn a_first_try_deposits_into_its_clusters_retry_budget_once() {
    let web = cluster(TWO, "web");
    let target = RouteTarget {
        authority: "web".into(),
        route: "".into(),
        cluster: web.clone(),
    };
    let (mut svc, mut handle, _) = split(Dispatch::Cluster(target));
    let mut req = get();
    req.deposit = true;
    let below = through(&mut svc, &mut handle, req).await;
    assert!(
        !below.deposit,
        "taken: a retry of it will not deposit again"
    );
    let budget = &web.retry_budget().1;
    assert!(budget.withdraw(), "percent 100: one retry per deposit");
    assert!(!budget.withdraw());
    // A request that does not retry deposits nothing.
    through(&mut svc, &mut handle, get()).await;
    assert!(!web.retry_budget().1.withdraw());
}

#[tokio::test]
async fn a_direct_destination_has_no_cluster() {
    let (mut svc, mut handle, made) = split(Dispatch::Direct(addr(9)));
    let req = get();
    let state = req.state.clone();
    through(&mut svc, &mut handle, req).await;
    assert!(state.cluster().is_none());
    assert_eq!(*made.lock().expect("lock"), vec![addr(9).to_string()]);
}

#[tokio::test]
async fn a_local_route_is_never_dispatched() {
    let (route, _) = route(TWO, "        direct_response: {status: 200, body: ok}\n");
    let (mut svc, mut handle, _) = split(Dispatch::Route(route));
    let result = svc.ready().await.expect("ready").call(get()).await;
    assert!(matches!(result, Err(ProxyError::Internal(_))));
    assert!(nothing_sent(&mut handle));
}
