//! Which cluster a request goes to: the route's weighted split (smooth
//! weighted round robin over its clusters), a simple route's one cluster,
//! or no cluster at all (an original destination or the local app). The
//! cluster's stack is made here for the one picked, so a route refers to
//! its clusters by identity and a cluster's endpoints can change without
//! the route being rebuilt.

use super::{Req, Rsp};
use crate::http::error::ProxyError;
use crate::http::vhost::{Action, Route};
use crate::route::RouteTarget;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::retry::budget::Budget;
use tower::Service;

/// Where a routed request goes.
#[derive(Clone)]
pub enum Dispatch {
    /// An L7 route that forwards: its split picks the cluster.
    Route(Arc<Route>),
    /// One cluster (a simple route or a listener's default cluster).
    Cluster(RouteTarget),
    /// No cluster: straight to this address.
    Direct(SocketAddr),
}

/// What a cluster stack is made for.
#[derive(Clone)]
pub enum Upstream {
    Cluster(RouteTarget),
    Direct(SocketAddr),
}

#[derive(Clone)]
pub struct Split<M> {
    dispatch: Dispatch,
    make: M,
}

impl<M> Split<M> {
    /// `make` builds the stack of the cluster (or address) picked.
    pub fn new(dispatch: Dispatch, make: M) -> Split<M> {
        Split { dispatch, make }
    }
}

impl<M, S> Service<Req> for Split<M>
where
    M: Fn(Upstream) -> S,
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = super::Step<S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let upstream = match &self.dispatch {
            Dispatch::Route(route) => match &route.action {
                Action::Forward(split) => match split.pick() {
                    Some(target) => Upstream::Cluster(target.clone()),
                    None => {
                        return super::Step::fail(ProxyError::NoEndpoints {
                            cluster: route.name.to_string(),
                        })
                    }
                },
                // The router answers local routes itself.
                _ => {
                    return super::Step::fail(ProxyError::Internal(
                        "a route that answers itself reached the cluster split",
                    ))
                }
            },
            Dispatch::Cluster(target) => Upstream::Cluster(target.clone()),
            Dispatch::Direct(addr) => Upstream::Direct(*addr),
        };
        if let (Upstream::Cluster(target), true) = (&upstream, req.retrying) {
            req.state.set_upstream(Some(&target.cluster), None);
            if std::mem::take(&mut req.deposit) {
                target.cluster.retry_budget().1.deposit();
            }
        }
        super::call_ready((self.make)(upstream), req)
    }
}
