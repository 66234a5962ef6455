//! The outermost layer: takes the client's request, starts the request's
//! shared state ([`super::ReqState`]) on the current config snapshot, and
//! turns every error from below into the response the client gets: the
//! error's status, a `strait-proxy-error` header naming the cause, and a
//! message saying what to check. The failure is counted in
//! `http_proxy_errors_total` and logged once per reason and target per
//! interval ([`crate::log_limit`]).

use super::{Req, Result, Rsp};
use crate::http::body::{ProxyBody, UpstreamBody};
use crate::http::client_body::ClientBody;
use crate::http::error::ProxyError;
use crate::http::ConnContext;
use http::{Request, Version};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
    conn: Arc<ConnContext>,
}

pub fn layer<S>(conn: Arc<ConnContext>) -> impl tower::Layer<S, Service = Rescue<S>> + Clone {
    tower::layer::layer_fn(move |inner| Rescue {
        inner,
        conn: conn.clone(),
    })
}

impl<S> Service<Request<ClientBody>> for Rescue<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        // Every layer below is always ready: limits fail fast instead.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ClientBody>) -> Self::Future {
        let version = req.version();
        let req = Req::new(req.map(UpstreamBody::stream));
        RescueFuture {
            future: self.inner.call(req),
            version,
            conn: self.conn.clone(),
        }
    }
}

pin_project! {
    pub struct RescueFuture<F> {
        #[pin]
        future: F,
        version: Version,
        conn: Arc<ConnContext>,
    }
}

impl<F: Future<Output = Result>> Future for RescueFuture<F> {
    type Output = std::result::Result<Rsp, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match ready!(this.future.poll(cx)) {
            Ok(response) => response,
            Err(err) => error_response(this.conn, &err),
        };
        // The client hears the version it spoke, whatever went upstream.
        *response.version_mut() = *this.version;
        Poll::Ready(Ok(response))
    }
}

/// The response for `err`, logged (rate limited) and counted.
pub fn error_response(conn: &ConnContext, err: &ProxyError) -> Rsp {
    match err {
        // Configured outcomes, not failures: keep them out of the warnings.
        ProxyError::RateLimited | ProxyError::FaultAbort { .. } => {
            tracing::debug!(
                reason = err.reason(),
                "request answered by the route's policy"
            )
        }
        _ => crate::log_limit::request_failed(err.addr().unwrap_or(conn.orig_dst.addr), err),
    }
    conn.inputs
        .metrics
        .proxy_error(conn.direction(), err.reason());
    err.to_response(ProxyBody::text)
}
