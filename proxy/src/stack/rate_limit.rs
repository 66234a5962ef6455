//! Local rate limiting, per route: a token bucket shared by every
//! connection; over the limit a request gets 429 `rate-limited` at once.

use super::{Req, Rsp, Step};
use crate::http::error::ProxyError;
use crate::http::vhost::Route;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    route: Option<Arc<Route>>,
}

pub fn layer<S>(route: Option<Arc<Route>>) -> impl tower::Layer<S, Service = RateLimit<S>> + Clone {
    tower::layer::layer_fn(move |inner| RateLimit {
        inner,
        route: route.clone(),
    })
}

impl<S> Service<Req> for RateLimit<S>
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
        match &self.route {
            Some(route) if !route.take_token() => Step::fail(ProxyError::RateLimited),
            _ => Step::inner(self.inner.call(req)),
        }
    }
}
