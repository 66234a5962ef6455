//! Names the request's metric labels after the endpoint it is sent to:
//! the first try's endpoint puts its handles in
//! [`super::ReqState::metrics`] and counts the request in
//! `request_total`; [`super::request_metrics`] records the response under
//! the same handles. The handles belong to the endpoint (evicted with it)
//! and are looked up once per connection and endpoint, never per request.

use super::{Req, Rsp};
use crate::http::error::ProxyError;
use crate::http::{ConnContext, Target};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct EndpointMetrics<S> {
    inner: S,
    conn: Arc<ConnContext>,
    target: Target,
}

impl<S> EndpointMetrics<S> {
    pub fn new(conn: Arc<ConnContext>, target: Target, inner: S) -> EndpointMetrics<S> {
        EndpointMetrics {
            inner,
            conn,
            target,
        }
    }
}

impl<S> Service<Req> for EndpointMetrics<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if req.state.metrics.get().is_none() {
            let handles = self.conn.request_metrics(&self.target);
            if req.state.metrics.set(handles.clone()).is_ok() {
                handles.total.inc();
            }
        }
        if req.state.tally.is_on() && !req.retrying {
            // The observe layer's record names this try's endpoint (a
            // retrying route's layers note it already).
            let target = &self.target;
            req.state
                .set_upstream(target.cluster.as_ref(), Some(target.addr));
        }
        self.inner.call(req)
    }
}
