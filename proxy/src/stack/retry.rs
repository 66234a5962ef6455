//! Retries, per route: `tower::retry::Retry` driven by the route's
//! policy. A result is tried again when it meets one of the policy's
//! conditions (`retry_on`), attempts remain, the request can be sent
//! again (not an upgrade; its body replayable: see [`super::replay`]),
//! the cluster's `max_retries` circuit breaker has room and its retry
//! budget allows; after an exponential, jittered backoff it goes to a
//! freshly picked endpoint. Nothing is retried once response headers
//! have gone to the client: the decision is made before that (for gRPC,
//! whose status may come in the trailers, the response is read ahead up
//! to `max_body` to find it, see [`ReadAhead`]).

use super::replay::ReplayBody;
use super::{Req, Result, Rsp, Step};
use crate::http::body::{ProxyBody, UpstreamBody};
use crate::http::error::ProxyError;
use crate::http::stream_end::grpc_status;
use crate::http::vhost::Route;
use crate::metrics::Metrics;
use crate::registry::ClusterState;
use http::{Method, Request};
use http_body::Body;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use strait_config::{RetryOn, RetryPolicy};
use tower::retry::budget::Budget;
use tower::Service;

/// The route's retries around `S`, or `S` as it is for a route without
/// (which then pays nothing for the layer).
#[derive(Clone)]
pub enum Retrying<S> {
    Retry {
        retry: tower::retry::Retry<Policy, ReadAhead<S>>,
        policy: Arc<RetryPolicy>,
    },
    Pass(S),
}

pin_project_lite::pin_project! {
    #[project = RetryingProj]
    pub enum RetryingFuture<S>
    where
        S: Service<Req, Response = Rsp, Error = ProxyError>,
        S: Clone,
        S: Send,
        S: 'static,
        S::Future: Send,
    {
        // Boxed: it holds a copy of the request, and every layer above
        // would otherwise carry (and move) that size on routes that never retry.
        Retry { future: Pin<Box<tower::retry::future::ResponseFuture<Policy, ReadAhead<S>, Req>>> },
        Pass { #[pin] future: S::Future },
    }
}

impl<S> std::future::Future for RetryingFuture<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Output = Result;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result> {
        match self.project() {
            RetryingProj::Retry { future } => future.as_mut().poll(cx),
            RetryingProj::Pass { future } => future.poll(cx),
        }
    }
}

pub fn layer<S>(
    route: Option<Arc<Route>>,
    metrics: Arc<Metrics>,
) -> impl tower::Layer<S, Service = Retrying<S>> + Clone {
    tower::layer::layer_fn(
        move |inner| match route.as_ref().and_then(|r| r.retry.clone()) {
            None => Retrying::Pass(inner),
            Some(policy) => Retrying::Retry {
                retry: tower::retry::Retry::new(
                    Policy {
                        policy: policy.clone(),
                        metrics: metrics.clone(),
                        attempt: 0,
                        slot: None,
                    },
                    ReadAhead { inner },
                ),
                policy,
            },
        },
    )
}

impl<S> Service<Req> for Retrying<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = RetryingFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        match self {
            Retrying::Retry { retry, .. } => retry.poll_ready(cx),
            Retrying::Pass(inner) => inner.poll_ready(cx),
        }
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let (retry, policy) = match self {
            Retrying::Pass(inner) => {
                return RetryingFuture::Pass {
                    future: inner.call(req),
                }
            }
            Retrying::Retry { retry, policy } => (retry, policy),
        };
        // The budget is a share of the requests that could be
        // retried: only they deposit, once their cluster is picked.
        req.deposit = true;
        req.retrying = true;
        if can_retry(&req.http) {
            let body = std::mem::replace(req.http.body_mut(), UpstreamBody::full(None));
            *req.http.body_mut() = match body.take_stream() {
                Ok((stream, state)) => {
                    let mut body = UpstreamBody::replay(ReplayBody::new(stream, policy.max_body));
                    if let Some(state) = state {
                        body.report_to(state);
                    }
                    body
                }
                Err(body) => body,
            };
            if policy.attempts > 0 && wants_grpc(&policy.on) {
                req.read_ahead = Some(policy.max_body);
            }
        }
        RetryingFuture::Retry {
            future: Box::pin(retry.call(req)),
        }
    }
}

/// Not an upgrade (which takes the connection over), and a method that
/// is safe to send again, or a body that will say whether it replays.
fn can_retry<B: Body>(req: &Request<B>) -> bool {
    if req.headers().contains_key(http::header::UPGRADE) || req.method() == Method::CONNECT {
        return false;
    }
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    idempotent || req.method() == Method::POST || req.method() == Method::PATCH
}

/// One request's retry state (tower clones the policy for each request).
pub struct Policy {
    policy: Arc<RetryPolicy>,
    metrics: Arc<Metrics>,
    /// Retries made so far.
    attempt: u32,
    /// The `max_retries` slot of the retry in progress.
    slot: Option<RetrySlot>,
}

impl Clone for Policy {
    // A clone starts a new request: it holds no retry slot of its own.
    fn clone(&self) -> Self {
        Policy {
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            attempt: self.attempt,
            slot: None,
        }
    }
}

impl tower::retry::Policy<Req, Rsp, ProxyError> for Policy {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, next: &mut Req, result: &mut Result) -> Option<Self::Future> {
        let policy = &self.policy;
        let trailer_status = match result {
            Ok(response) => response.extensions().get::<TrailerStatus>().map(|s| s.0),
            Err(_) => None,
        };
        if !should_retry(result, trailer_status, &policy.on) || !next.http.body().can_replay() {
            return None;
        }
        let cluster = next.state.cluster()?;
        // The slot is held through the retry's own try, until the next.
        self.slot = None;
        let Some(slot) = RetrySlot::enter(&cluster) else {
            tracing::debug!(cluster = %cluster.name, "circuit breaker: max_retries in progress; returning the failure");
            return None;
        };
        if !cluster.retry_budget().1.withdraw() {
            self.metrics.retry_budget_exhausted(&cluster.name);
            tracing::debug!(cluster = %cluster.name, "retry budget exhausted; returning the failure");
            return None;
        }
        self.metrics.retry(&cluster.name);
        next.state.tally.note_retry();
        self.slot = Some(slot);
        let delay = backoff(policy, self.attempt);
        self.attempt += 1;
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let policy = &self.policy;
        // An upgrade's client side went with the first try.
        if self.attempt >= policy.attempts || !can_retry(&req.http) {
            return None;
        }
        let body = req.http.body().try_clone()?;
        let mut http = Request::new(body);
        *http.method_mut() = req.http.method().clone();
        *http.uri_mut() = req.http.uri().clone();
        *http.version_mut() = req.http.version();
        *http.headers_mut() = req.http.headers().clone();
        // The try after the next is the last: no use reading it ahead.
        let last = self.attempt + 1 >= policy.attempts;
        Some(Req {
            http: Box::new(http),
            state: req.state.clone(),
            try_timeout: req.try_timeout,
            read_ahead: if last { None } else { req.read_ahead },
            deposit: false,
            retrying: true,
        })
    }
}

/// A slot under a cluster's `max_retries`, released on drop.
struct RetrySlot(Arc<ClusterState>);

impl RetrySlot {
    fn enter(cluster: &Arc<ClusterState>) -> Option<RetrySlot> {
        let max = cluster.settings().circuit_breaker.max_retries;
        if cluster.retrying.fetch_add(1, Ordering::AcqRel) >= max {
            cluster.retrying.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RetrySlot(cluster.clone()))
    }
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gRPC status a read-ahead found in a response's trailers.
#[derive(Debug, Clone, Copy)]
struct TrailerStatus(u32);

/// Below the retry: reads a gRPC response ahead to its trailers (up to
/// [`Req::read_ahead`] bytes) so the retry decision can see its status.
/// Nothing read is lost: the frames are replayed to the client first.
#[derive(Clone)]
pub struct ReadAhead<S> {
    inner: S,
}

impl<S> Service<Req> for ReadAhead<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Send + 'static,
    S::Future: Send,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Step<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(max_body) = req.read_ahead else {
            return Step::inner(self.inner.call(req));
        };
        let state = req.state.clone();
        let future = self.inner.call(req);
        Step::Boxed {
            future: Box::pin(async move {
                let response = future.await?;
                if !is_grpc_awaiting_trailers(&response) {
                    return Ok(response);
                }
                let addr = state.upstream().1.unwrap_or(([0, 0, 0, 0], 0).into());
                read_ahead_for_trailers(response, max_body, addr).await
            }),
        }
    }
}

fn wants_grpc(on: &[RetryOn]) -> bool {
    on.iter().any(|c| matches!(c, RetryOn::Grpc(_)))
}

/// A gRPC response whose status is still to come in its trailers.
fn is_grpc_awaiting_trailers(response: &Rsp) -> bool {
    response.status() == http::StatusCode::OK
        && grpc_status(response.headers()).is_none()
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Read a response's frames until its trailers, holding at most
/// `max_body` bytes; past that, stop looking and let the rest stream.
async fn read_ahead_for_trailers(
    response: Rsp,
    max_body: usize,
    addr: std::net::SocketAddr,
) -> Result {
    let (mut parts, mut body) = response.into_parts();
    let mut frames = std::collections::VecDeque::new();
    let mut held = 0usize;
    let mut status = None;
    let mut finished = false;
    while held <= max_body && status.is_none() {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    status = grpc_status(trailers);
                }
                held += frame.data_ref().map_or(0, |d| d.len());
                frames.push_back(frame);
            }
            // A broken body is the upstream resetting the stream.
            Some(Err(_)) => return Err(ProxyError::UpstreamReset { addr }),
            None => {
                finished = true;
                break;
            }
        }
    }
    let rest = match body {
        ProxyBody::Stream(stream) if !finished => Some(stream),
        _ => None,
    };
    if let Some(status) = status {
        parts.extensions.insert(TrailerStatus(status));
    }
    let body = ProxyBody::Replayed { frames, rest };
    Ok(Rsp::from_parts(parts, body))
}

/// Whether a try's result meets one of the policy's retry conditions.
fn should_retry(result: &Result, trailer_status: Option<u32>, on: &[RetryOn]) -> bool {
    let (status, connect_failure, reset, grpc) = match result {
        Ok(response) => {
            let grpc = grpc_status(response.headers()).or(trailer_status);
            (response.status(), false, false, grpc)
        }
        Err(e) => {
            // Local decisions are never worth another try.
            if matches!(e, ProxyError::Overloaded { .. } | ProxyError::RequestBody) {
                return false;
            }
            let reset = matches!(
                e,
                ProxyError::Upstream { .. } | ProxyError::UpstreamReset { .. }
            );
            (e.status(), e.is_connect_failure(), reset, None)
        }
    };
    on.iter().any(|cond| match cond {
        RetryOn::ConnectFailure => connect_failure,
        RetryOn::Reset => reset,
        RetryOn::ServerError => status.is_server_error(),
        RetryOn::GatewayError => matches!(status.as_u16(), 502..=504),
        RetryOn::Status(code) => status.as_u16() == *code,
        RetryOn::Grpc(code) => grpc == Some(*code),
    })
}

/// Exponential backoff with full jitter between half and all of it.
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .backoff_base
        .saturating_mul(1u32 << attempt.min(16))
        .min(policy.backoff_max);
    exp.mul_f64(0.5 + fastrand::f64() / 2.0)
}
