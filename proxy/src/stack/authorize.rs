//! Inbound authorization: the connection's client identity (from mTLS)
//! checked against the policy for the port it was sent to
//! ([`crate::authz`]); unauthenticated paths (health checks) pass. A
//! denial is a 403 with `strait-deny-reason`; both outcomes are counted
//! per (port, identity), handles resolved once per connection.

use super::{Req, Rsp, Step};
use crate::http::error::ProxyError;
use crate::http::ConnContext;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    conn: Arc<ConnContext>,
}

pub fn layer<S>(conn: Arc<ConnContext>) -> impl tower::Layer<S, Service = Authorize<S>> + Clone {
    tower::layer::layer_fn(move |inner| Authorize {
        inner,
        conn: conn.clone(),
    })
}

impl<S> Service<Req> for Authorize<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let snapshot = self.conn.inputs.snapshot.load();
        let policy = &snapshot.config.policy;
        if crate::authz::is_unauthenticated_path(policy, req.http.uri().path()) {
            return Step::inner(self.inner.call(req));
        }
        let port = self.conn.orig_dst.addr.port();
        let identity = self.conn.client_identity();
        let (allow, deny) = self.conn.authz_counters();
        match crate::authz::check(policy, port, identity) {
            Ok(()) => {
                allow.inc();
                Step::inner(self.inner.call(req))
            }
            Err(denied) => {
                deny.inc();
                Step::fail(ProxyError::Forbidden { reason: denied.0 })
            }
        }
    }
}
