//! The circuit breaker of a cluster: at most `max_requests` in flight. A
//! request over the limit fails fast with 503 `overloaded` rather than
//! queueing; an admitted one holds its slot until its response stream
//! ends (a long download is still a request in flight). The other limits
//! sit where they are counted: `max_pending` and `max_connections` at the
//! connection pool ([`super::client`]), `max_retries` in [`super::retry`].

use super::{Finish, Req, Result, Rsp, Step, Then};
use crate::http::body::ProxyBody;
use crate::http::error::ProxyError;
use crate::registry::{ClusterState, RequestSlot};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct Breaker<S> {
    inner: S,
    /// None for traffic with no cluster (nothing to break).
    cluster: Option<Arc<ClusterState>>,
}

impl<S> Breaker<S> {
    pub fn new(cluster: Option<Arc<ClusterState>>, inner: S) -> Breaker<S> {
        Breaker { inner, cluster }
    }
}

impl<S> Service<Req> for Breaker<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Step<Then<S::Future, HoldSlot>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let slot = match &self.cluster {
            None => None,
            Some(cluster) => match cluster.try_request() {
                Some(slot) => Some(slot),
                None => {
                    return Step::fail(ProxyError::Overloaded {
                        cluster: cluster.name.to_string(),
                        limit: "max_requests",
                    })
                }
            },
        };
        Step::inner(Then::new(self.inner.call(req), HoldSlot(slot)))
    }
}

/// Moves the slot into the response body, to be freed when it ends.
pub struct HoldSlot(Option<RequestSlot>);

impl Finish for HoldSlot {
    fn finish(self, result: Result) -> Result {
        let Some(slot) = self.0 else {
            return result;
        };
        // A failure frees the slot here.
        let mut response = result?;
        match response.body_mut() {
            ProxyBody::Stream(body) => body.hold(slot),
            ProxyBody::Replayed {
                rest: Some(body), ..
            } => body.hold(slot),
            // Already in memory: the request is over.
            _ => drop(slot),
        }
        Ok(response)
    }
}
