//! One request's tries at its upstream: the circuit-breaker slots it holds,
//! the balancer's view of each try (in flight, latency, outcome, outlier
//! ejection), and retries: when the route's policy says a result is worth
//! another try, the request is safe to replay (an idempotent method, or a
//! body small enough to have been buffered), and the cluster's retry
//! budget has room, it goes again to a freshly picked endpoint after an
//! exponential, jittered backoff. Nothing is retried once the response
//! headers have gone to the client: the decision is made before that.

use super::body::ProxyBody;
use super::body::UpstreamBody;
use super::error::ProxyError;
use super::{forward, ConnContext, Target};
use crate::balance::endpoint::Outcome;
use crate::pool::{EndpointPool, HttpVersion};
use crate::route::Snapshot;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strait_config::{RetryOn, RetryPolicy};
use tower::retry::budget::Budget;
use tracing::{debug, warn};

/// A slot under a circuit-breaker limit, released on drop.
pub(super) struct Limit<'a>(Option<&'a std::sync::atomic::AtomicUsize>);

impl<'a> Limit<'a> {
    /// Take a slot of `counter`, unless `max` are taken.
    pub(super) fn enter(
        counter: &'a std::sync::atomic::AtomicUsize,
        max: usize,
    ) -> Option<Limit<'a>> {
        use std::sync::atomic::Ordering;
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Limit(Some(counter)))
    }

    pub(super) fn none() -> Limit<'a> {
        Limit(None)
    }
}

impl Drop for Limit<'_> {
    fn drop(&mut self) {
        if let Some(counter) = self.0 {
            counter.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// One request to a cluster endpoint, for its balancer: in flight from
/// `start`, latency and outcome at `finish`; a request abandoned on the
/// way (the client left) only leaves the in-flight count.
struct EndpointAttempt<'a> {
    target: &'a Target,
    started: Instant,
    finished: bool,
}

impl<'a> EndpointAttempt<'a> {
    fn start(target: &'a Target) -> EndpointAttempt<'a> {
        if let Some(endpoint) = &target.endpoint {
            endpoint.start();
        }
        EndpointAttempt {
            target,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Record the outcome; true when it ejected the endpoint.
    fn finish(&mut self, outcome: Outcome) -> bool {
        self.finished = true;
        let (Some(cluster), Some(endpoint)) = (&self.target.cluster, &self.target.endpoint) else {
            if let Some(endpoint) = &self.target.endpoint {
                endpoint.abandon();
            }
            return false;
        };
        cluster
            .balancer()
            .finish(endpoint, self.started.elapsed(), outcome)
    }
}

impl Drop for EndpointAttempt<'_> {
    fn drop(&mut self) {
        if let (false, Some(endpoint)) = (self.finished, &self.target.endpoint) {
            endpoint.abandon();
        }
    }
}

/// A failed try, with the request handed back when it never reached the
/// upstream (no connection could be had), so it can go elsewhere.
pub(super) struct TryError {
    pub error: ProxyError,
    pub unsent: Option<Request<UpstreamBody>>,
}

impl From<ProxyError> for TryError {
    fn from(error: ProxyError) -> TryError {
        TryError {
            error,
            unsent: None,
        }
    }
}

/// How many endpoints a request that could not be sent anywhere tries.
const MAX_UNSENT_TRIES: usize = 3;

/// Forward `req` to `target`, retrying per `retry` when it allows.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    ctx: &ConnContext,
    snapshot: &Snapshot,
    target: &Target,
    version: HttpVersion,
    pool: &Arc<EndpointPool>,
    req: Request<Incoming>,
    timeout: Option<Duration>,
    retry: Option<&RetryPolicy>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // The budget is a share of the requests that could be retried: only
    // they deposit (the clock read and lock stay off other requests).
    if let (Some(_), Some(cluster)) = (retry, target.cluster.as_ref()) {
        cluster.retry_budget().1.deposit();
    }
    let replayable = retry.is_some_and(|policy| can_replay(&req, policy));
    let (Some(policy), true) = (retry, replayable) else {
        return unless_unsent(ctx, snapshot, target, version, pool, req, timeout).await;
    };
    let (parts, body) = req.into_parts();
    // Bounded by content-length (checked in can_replay) and by the limit.
    let body = match http_body_util::Limited::new(body, policy.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            debug!(error = %e, "request body could not be buffered for retries");
            return Err(ProxyError::RequestBody);
        }
    };
    let per_try = policy.per_try_timeout.or(timeout);
    let tries = async {
        let mut current = target.clone();
        let mut attempt = 0;
        // Held (not read): dropping it frees the circuit-breaker slot.
        let mut _retry_slot: Option<Limit<'_>> = None;
        loop {
            let endpoint_pool = match (attempt, &current.endpoint) {
                (0, _) => pool.clone(),
                (_, Some(endpoint)) => endpoint
                    .pool(&ctx.inputs.pools, ctx.direction(), version)
                    .clone(),
                (_, None) => {
                    ctx.inputs
                        .pools
                        .endpoint(current.addr, version, current.mesh_identity())
                }
            };
            let request = rebuild(&parts, &body);
            let result = once(
                ctx,
                snapshot,
                &current,
                version,
                &endpoint_pool,
                request,
                per_try,
            )
            .await
            .map_err(|e| e.error);
            let last = attempt >= policy.attempts;
            // A gRPC status may only come in the trailers: read ahead for it.
            let (result, trailer_status) = match result {
                Ok(response)
                    if !last && wants_grpc(&policy.on) && is_grpc_awaiting_trailers(&response) =>
                {
                    match read_ahead_for_trailers(response, policy.max_body).await {
                        Ok((response, status)) => (Ok(response), status),
                        Err(()) => (Err(ProxyError::UpstreamReset { addr: current.addr }), None),
                    }
                }
                other => (other, None),
            };
            if last || !should_retry(&result, trailer_status, &policy.on) {
                return result;
            }
            let cluster = match &current.cluster {
                Some(cluster) => cluster.clone(),
                None => return result,
            };
            // The slot is held through the retry's own try, until the next one.
            let slot = target
                .cluster
                .as_deref()
                .and_then(|c| Limit::enter(&c.retrying, c.settings().circuit_breaker.max_retries));
            if slot.is_none() {
                debug!(cluster = %cluster.name, "circuit breaker: max_retries in progress; returning the failure");
                return result;
            }
            _retry_slot = slot;
            if !cluster.retry_budget().1.withdraw() {
                ctx.inputs.metrics.retry_budget_exhausted(&cluster.name);
                debug!(cluster = %cluster.name, "retry budget exhausted; returning the failure");
                return result;
            }
            ctx.inputs.metrics.retry(&cluster.name);
            tokio::time::sleep(backoff(policy, attempt)).await;
            attempt += 1;
            // Another endpoint, picked afresh (the failed one is likelier to fail).
            if let Some(endpoint) = cluster.balancer().pick(None) {
                current.addr = endpoint.addr;
                current.endpoint = Some(endpoint.clone());
            }
        }
    };
    // The route's timeout bounds every try together, backoffs included.
    match timeout {
        Some(overall) => {
            tokio::time::timeout(overall, tries)
                .await
                .unwrap_or(Err(ProxyError::ResponseTimeout {
                    addr: target.addr,
                    after: overall,
                }))
        }
        None => tries.await,
    }
}

/// Forward once, with no retry policy; but a request that could not be
/// sent at all (the endpoint refused or timed out the connection) goes to
/// another of the cluster's endpoints: nothing reached the upstream, so
/// any method is safe to send again.
async fn unless_unsent(
    ctx: &ConnContext,
    snapshot: &Snapshot,
    target: &Target,
    version: HttpVersion,
    pool: &Arc<EndpointPool>,
    req: Request<Incoming>,
    timeout: Option<Duration>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut req = req.map(UpstreamBody::Stream);
    let mut current = target.clone();
    let mut pool = pool.clone();
    let mut tried = vec![target.addr];
    loop {
        let error = match once(ctx, snapshot, &current, version, &pool, req, timeout).await {
            Ok(response) => return Ok(response),
            Err(TryError {
                error,
                unsent: Some(unsent),
            }) if is_connect_failure(&error) && tried.len() < MAX_UNSENT_TRIES => {
                req = unsent;
                error
            }
            Err(e) => return Err(e.error),
        };
        let Some(cluster) = current.cluster.clone() else {
            return Err(error);
        };
        let balancer = cluster.balancer();
        // Another endpoint than those tried, if the balancer offers one.
        let next = (0..balancer.len() * 2)
            .filter_map(|_| balancer.pick(None))
            .find(|e| !tried.contains(&e.addr))
            .cloned();
        let Some(endpoint) = next else {
            return Err(error);
        };
        debug!(failed = %current.addr, next = %endpoint.addr, error = %error, "request not sent; trying another endpoint");
        tried.push(endpoint.addr);
        pool = endpoint
            .pool(&ctx.inputs.pools, ctx.direction(), version)
            .clone();
        current.addr = endpoint.addr;
        current.endpoint = Some(endpoint);
    }
}

fn is_connect_failure(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::ConnectRefused(_)
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::TlsHandshake { .. }
    )
}

/// One try, with its balancer bookkeeping.
async fn once(
    ctx: &ConnContext,
    snapshot: &Snapshot,
    target: &Target,
    version: HttpVersion,
    pool: &Arc<EndpointPool>,
    req: Request<UpstreamBody>,
    timeout: Option<Duration>,
) -> Result<Response<ProxyBody>, TryError> {
    let mut attempt = EndpointAttempt::start(target);
    let result = forward(ctx, snapshot, target, version, pool, req, timeout).await;
    // A client's broken body says nothing about the endpoint: left out of
    // its outcomes (dropping the attempt only ends its in-flight count).
    if matches!(
        result,
        Err(TryError {
            error: ProxyError::RequestBody,
            ..
        })
    ) {
        return result;
    }
    let outcome = match &result {
        Ok(response) if response.status().is_server_error() => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(TryError {
            error:
                ProxyError::ConnectRefused(_)
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::Connect { .. },
            ..
        }) => Outcome::ConnectFailure,
        Err(e) if e.error.status().is_server_error() => Outcome::Failure,
        Err(_) => Outcome::Success,
    };
    if attempt.finish(outcome) {
        let cluster = target.cluster.as_ref().map_or("", |c| &*c.name);
        warn!(target_addr = %target.addr, %cluster, "endpoint ejected by outlier detection");
        ctx.inputs.metrics.ejection(cluster);
    }
    result
}

/// Idempotent and bodiless, or a body small enough to buffer.
fn can_replay(req: &Request<Incoming>, policy: &RetryPolicy) -> bool {
    if req.headers().contains_key(http::header::UPGRADE) || req.method() == Method::CONNECT {
        return false;
    }
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    if req.body().is_end_stream() {
        return idempotent || req.method() == Method::POST || req.method() == Method::PATCH;
    }
    let length = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    matches!(length, Some(n) if n <= policy.max_body)
}

fn rebuild(parts: &http::request::Parts, body: &Bytes) -> Request<UpstreamBody> {
    let body = (!body.is_empty()).then(|| body.clone());
    let mut req = Request::new(UpstreamBody::Full(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

fn wants_grpc(on: &[RetryOn]) -> bool {
    on.iter().any(|c| matches!(c, RetryOn::Grpc(_)))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A gRPC response whose status is still to come in its trailers.
fn is_grpc_awaiting_trailers(response: &Response<ProxyBody>) -> bool {
    response.status() == http::StatusCode::OK
        && grpc_status(response.headers()).is_none()
        && response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Read a response's frames until its trailers, holding at most
/// `max_body` bytes; past that, or at a body error, stop looking and let
/// the rest stream. Nothing read is lost: the frames are replayed first.
async fn read_ahead_for_trailers(
    response: Response<ProxyBody>,
    max_body: usize,
) -> Result<(Response<ProxyBody>, Option<u32>), ()> {
    let (parts, mut body) = response.into_parts();
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
            Some(Err(_)) => return Err(()),
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
    let body = ProxyBody::Replayed { frames, rest };
    Ok((Response::from_parts(parts, body), status))
}

/// Whether a try's result meets one of the policy's retry conditions.
fn should_retry(
    result: &Result<Response<ProxyBody>, ProxyError>,
    trailer_status: Option<u32>,
    on: &[RetryOn],
) -> bool {
    let (status, connect_failure, reset, grpc) = match result {
        Ok(response) => {
            let grpc = grpc_status(response.headers()).or(trailer_status);
            (response.status(), false, false, grpc)
        }
        Err(e) => {
            let connect = matches!(
                e,
                ProxyError::ConnectRefused(_)
                    | ProxyError::ConnectTimeout { .. }
                    | ProxyError::Connect { .. }
                    | ProxyError::Handshake { .. }
                    | ProxyError::TlsHandshake { .. }
            );
            let reset = matches!(
                e,
                ProxyError::Upstream { .. } | ProxyError::UpstreamReset { .. }
            );
            // Local decisions are never worth another try.
            if matches!(e, ProxyError::Overloaded { .. } | ProxyError::RequestBody) {
                return false;
            }
            (e.status(), connect, reset, None)
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
