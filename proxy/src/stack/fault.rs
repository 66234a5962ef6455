//! Fault injection, per route: abort a configured share of requests with
//! a status, or delay a share before they go on. A delayed request holds
//! no circuit-breaker slot while it waits (the breaker sits below).

use super::{BoxFuture, Req, Rsp, Step};
use crate::http::error::ProxyError;
use crate::http::vhost::Route;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Service, ServiceExt};

#[derive(Clone)]
pub struct Fault<S> {
    inner: S,
    route: Option<Arc<Route>>,
}

pub fn layer<S>(route: Option<Arc<Route>>) -> impl tower::Layer<S, Service = Fault<S>> + Clone {
    tower::layer::layer_fn(move |inner| Fault {
        inner,
        route: route.clone(),
    })
}

impl<S> Service<Req> for Fault<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(route) = &self.route else {
            return Step::inner(self.inner.call(req));
        };
        if let Some(status) = route.fault_abort() {
            return Step::fail(ProxyError::FaultAbort { status });
        }
        match route.fault_delay() {
            None => Step::inner(self.inner.call(req)),
            Some(delay) => {
                let inner = self.inner.clone();
                let future: BoxFuture = Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    inner.oneshot(req).await
                });
                Step::Boxed { future }
            }
        }
    }
}
