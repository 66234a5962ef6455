//! Request metrics: `request_total`, `response_latency_ms` (to response
//! headers) and `response_total` (when the response stream ends, so a
//! gRPC status in the trailers or a stream broken midway classifies it).
//!
//! The labels name where the request went, which only an inner layer
//! knows: the endpoint layer ([`super::endpoint_metrics`]) or a local
//! answer puts its handles in [`super::ReqState::metrics`] and counts the
//! request there; a request answered before any of them (refused,
//! rate limited, no route) is counted here under the connection's own
//! target and the route that matched, if one did.

use super::{Finish, Req, ReqState, Result, Rsp, Then};
use crate::http::error::ProxyError;
use crate::http::stream_end::{track, ResponseEnd};
use crate::http::ConnContext;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    conn: Arc<ConnContext>,
}

pub fn layer<S>(
    conn: Arc<ConnContext>,
) -> impl tower::Layer<S, Service = RequestMetrics<S>> + Clone {
    tower::layer::layer_fn(move |inner| RequestMetrics {
        inner,
        conn: conn.clone(),
    })
}

impl<S> Service<Req> for RequestMetrics<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Then<S::Future, Record>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let record = Record {
            state: req.state.clone(),
            conn: self.conn.clone(),
        };
        Then::new(self.inner.call(req), record)
    }
}

/// Counts one request's response.
pub struct Record {
    state: Arc<ReqState>,
    conn: Arc<ConnContext>,
}

impl Finish for Record {
    fn finish(self, result: Result) -> Result {
        let state = &self.state;
        let metrics = match state.metrics.get() {
            Some(metrics) => metrics.clone(),
            None => {
                let local = self.conn.local_metrics(state.route.get());
                local.total.inc();
                local
            }
        };
        metrics
            .latency_ms
            .observe(state.started.elapsed().as_secs_f64() * 1000.0);
        match result {
            Ok(mut response) => {
                if let Some(cap) = state.body_cap.get() {
                    super::admit::answered(cap, &self.conn);
                }
                let end = ResponseEnd::new(metrics, response.status().as_u16(), response.headers());
                track(&mut response, end);
                Ok(response)
            }
            Err(e) => {
                metrics.response(e.status().as_u16(), e.is_failure());
                Err(e)
            }
        }
    }
}
