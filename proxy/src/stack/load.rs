//! What the balancer learns from each request to an endpoint: in flight
//! from the call to the response headers, the latency folded into its
//! Peak-EWMA, and the outcome counted for outlier detection (a 5xx or a
//! gateway failure is a failure, a refused connection a connect failure;
//! an ejection is logged and counted). A client's broken request body
//! says nothing about the endpoint and is left out; a request the client
//! gave up on only leaves the in-flight count.

use super::{Finish, Req, Result, Rsp, Then};
use crate::balance::endpoint::{now_ns, Endpoint, Outcome};
use crate::http::error::ProxyError;
use crate::metrics::Metrics;
use crate::registry::ClusterState;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::Service;

#[derive(Clone)]
pub struct Load<S> {
    inner: S,
    /// The endpoint and its cluster; None for traffic with no cluster.
    endpoint: Option<(Arc<ClusterState>, Arc<Endpoint>)>,
    metrics: Arc<Metrics>,
}

impl<S> Load<S> {
    pub fn new(
        endpoint: Option<(Arc<ClusterState>, Arc<Endpoint>)>,
        metrics: Arc<Metrics>,
        inner: S,
    ) -> Load<S> {
        Load {
            inner,
            endpoint,
            metrics,
        }
    }
}

impl<S> Service<Req> for Load<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Then<S::Future, Observe>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some((_, endpoint)) = &self.endpoint {
            endpoint.start();
        }
        let observe = Observe {
            endpoint: self.endpoint.clone(),
            metrics: self.metrics.clone(),
            started_ns: now_ns(),
        };
        Then::new(self.inner.call(req), observe)
    }
}

/// One request to an endpoint, in flight until finished or dropped.
pub struct Observe {
    endpoint: Option<(Arc<ClusterState>, Arc<Endpoint>)>,
    metrics: Arc<Metrics>,
    /// On the balancer's clock ([`now_ns`]), so the end reads it once for
    /// both the latency and the EWMA's decay.
    started_ns: u64,
}

/// What a result says about the endpoint; None: nothing (the client's fault).
pub fn outcome(result: &Result) -> Option<Outcome> {
    let error = match result {
        Ok(response) if response.status().is_server_error() => return Some(Outcome::Failure),
        Ok(_) => return Some(Outcome::Success),
        Err(ProxyError::Unsent { error, .. }) => error,
        Err(error) => error,
    };
    Some(match error {
        ProxyError::RequestBody | ProxyError::BadRequest(_) => return None,
        ProxyError::ConnectRefused(_)
        | ProxyError::ConnectTimeout { .. }
        | ProxyError::Connect { .. } => Outcome::ConnectFailure,
        e if e.status().is_server_error() => Outcome::Failure,
        _ => Outcome::Success,
    })
}

impl Finish for Observe {
    fn finish(mut self, result: Result) -> Result {
        let Some((cluster, endpoint)) = self.endpoint.take() else {
            return result;
        };
        let Some(outcome) = outcome(&result) else {
            endpoint.abandon();
            return result;
        };
        let now = now_ns();
        let latency = Duration::from_nanos(now.saturating_sub(self.started_ns));
        if cluster.balancer().finish(&endpoint, latency, now, outcome) {
            tracing::warn!(target_addr = %endpoint.addr, cluster = %cluster.name, "endpoint ejected by outlier detection");
            self.metrics.ejection(&cluster.name);
        }
        result
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        if let Some((_, endpoint)) = &self.endpoint {
            endpoint.abandon();
        }
    }
}
