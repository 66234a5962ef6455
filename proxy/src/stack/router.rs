//! Routing: which route a request takes, decided on the config snapshot
//! of the moment by the direction's own rules (`route`, from
//! [`crate::outbound`] or [`crate::inbound`]), and the route's stack made
//! for it. An L7 route's request edits apply on the way down and its
//! response edits on the way up; a route that answers itself (direct
//! response, redirect) is answered here.

use super::split::Dispatch;
use super::{call_ready, Finish, Req, Result, Rsp, Step, Then};
use crate::http::body::{ProxyBody, UpstreamBody};
use crate::http::error::ProxyError;
use crate::http::vhost::{self, Route};
use crate::http::{headers, ConnContext};
use crate::route::Snapshot;
use http::Request;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// How a request is answered.
pub enum Routed {
    /// Forward, under the L7 route that matched, if one did.
    Forward(Option<Arc<Route>>, Dispatch),
    /// The route answers itself (direct response or redirect).
    Local(Arc<Route>),
}

/// A direction's routing rules.
pub type Rules =
    fn(&Snapshot, &ConnContext, &Request<UpstreamBody>) -> std::result::Result<Routed, ProxyError>;

#[derive(Clone)]
pub struct Router<M> {
    conn: Arc<ConnContext>,
    rules: Rules,
    make: M,
}

impl<M> Router<M> {
    /// `make` builds the stack of the route taken.
    pub fn new(conn: Arc<ConnContext>, rules: Rules, make: M) -> Router<M> {
        Router { conn, rules, make }
    }
}

impl<M, S> Service<Req> for Router<M>
where
    M: Fn(Option<Arc<Route>>, Dispatch) -> S,
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Step<Then<Step<S::Future>, EditResponse>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let snapshot = self.conn.inputs.snapshot.load();
        let routed = match (self.rules)(&snapshot, &self.conn, &req.http) {
            Ok(routed) => routed,
            Err(e) => return Step::fail(e),
        };
        match routed {
            Routed::Local(route) => {
                let _ = req.state.route.set(route.name.clone());
                let metrics = self.conn.local_metrics(Some(&route.name));
                if req.state.metrics.set(metrics.clone()).is_ok() {
                    metrics.total.inc();
                }
                let answer = local_response(&route, &req.http).map(|mut response| {
                    route.edit_response(response.headers_mut());
                    response
                });
                Step::now(answer)
            }
            Routed::Forward(route, dispatch) => {
                if let Some(route) = &route {
                    let _ = req.state.route.set(route.name.clone());
                    route.edit_request(&mut req.http);
                }
                let stack = (self.make)(route.clone(), dispatch);
                Step::inner(Then::new(call_ready(stack, req), EditResponse(route)))
            }
        }
    }
}

/// The route's response header edits.
pub struct EditResponse(Option<Arc<Route>>);

impl Finish for EditResponse {
    fn finish(self, result: Result) -> Result {
        let Some(route) = self.0 else {
            return result;
        };
        let mut response = result?;
        route.edit_response(response.headers_mut());
        Ok(response)
    }
}

/// A direct response or redirect configured on an L7 route.
fn local_response<B>(route: &Route, req: &Request<B>) -> Result {
    Ok(match &route.action {
        vhost::Action::Direct { status, body } => {
            let mut response = Rsp::new(ProxyBody::Full(Some(body.clone())));
            *response.status_mut() = *status;
            response
        }
        vhost::Action::Redirect { host, path, status } => {
            let authority = headers::authority(req).unwrap_or("");
            let location = vhost::redirect_location(req, authority, host, path);
            let mut response = Rsp::new(ProxyBody::empty());
            *response.status_mut() = *status;
            if let Ok(location) = http::HeaderValue::try_from(location) {
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
            }
            response
        }
        // The rules make `Routed::Local` only of routes that answer themselves.
        vhost::Action::Forward(_) | vhost::Action::OriginalDestination => {
            return Err(ProxyError::Internal(
                "a forwarding route was answered locally",
            ))
        }
    })
}
