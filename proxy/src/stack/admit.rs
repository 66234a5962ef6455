//! Admission at the edge, before anything reads the request: one
//! authority per request, the configured size limits, and path
//! normalisation ([`crate::http::authority`]); a streamed body is held
//! to `max_request_body_bytes` as it passes
//! ([`crate::http::authority::body_cap`]). A refused request is the
//! client's fault: a 4xx, never forwarded, never counted against an
//! endpoint. A streamed body that goes over its cap once the response is
//! on its way to the client can no longer get 413: its stream is reset,
//! and [`answered`] has it counted and logged then.

use super::{Req, Rsp, Step};
use crate::http::authority;
use crate::http::authority::body_cap::Tripped;
use crate::http::error::{BadRequest, ProxyError};
use crate::http::ConnContext;
use crate::route::Snapshot;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    snapshot: Arc<ArcSwap<Snapshot>>,
}

pub fn layer<S>(
    snapshot: Arc<ArcSwap<Snapshot>>,
) -> impl tower::Layer<S, Service = Admit<S>> + Clone {
    tower::layer::layer_fn(move |inner| Admit {
        inner,
        snapshot: snapshot.clone(),
    })
}

impl<S> Service<Req> for Admit<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let settings = &self.snapshot.load().config.proxy.http;
        if let Err(e) = authority::admit(&mut req.http, settings) {
            return Step::fail(e);
        }
        if let Some(max) = settings.max_request_body_bytes {
            if let Some(tripped) = req.http.body_mut().cap(max) {
                let _ = req.state.body_cap.set(tripped);
            }
        }
        Step::inner(self.inner.call(req))
    }
}

/// The request's response is leaving for the client: if its streamed
/// body goes over the cap from now on (or already did, too late for the
/// 413), count and log `body-too-large` then, as the 413 would have been.
pub fn answered(cap: &Tripped, conn: &Arc<ConnContext>) {
    let conn = conn.clone();
    cap.answered(Box::new(move |over| {
        let err = ProxyError::from(BadRequest::StreamedBodyTooLarge { max: over.max });
        crate::log_limit::request_failed(conn.orig_dst.addr, &err);
        conn.inputs
            .metrics
            .proxy_error(conn.direction(), err.reason());
    }));
}
