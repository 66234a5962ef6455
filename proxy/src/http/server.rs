//! Runs hyper's HTTP/1.1 or HTTP/2 server on a detected connection, with
//! every request going to its direction's tower stack, and shuts the connection down
//! gracefully when the proxy drains (HTTP/1: after the request in flight;
//! HTTP/2: GOAWAY, then open streams finish).
//!
//! The protocol-level limits live here, as builder settings from
//! `proxy.http`: the HTTP/1 head size and field count, the HTTP/2 header
//! list, concurrent streams, reset-stream floods and keep-alive PINGs;
//! PING, SETTINGS and empty-DATA floods are watched below h2 by
//! [`super::flood`].
//! What hyper and h2 refuse on their own never reaches the stack,
//! so it is counted from the error the connection ends with
//! ([`count_ended`]): an HTTP/1 head hyper answered with 400/414/431 in
//! `http_proxy_errors_total`, an HTTP/2 connection closed by an error
//! (a flood's GOAWAY `ENHANCE_YOUR_CALM`, a `PROTOCOL_ERROR`, a PING left
//! unanswered) in `http2_connection_errors_total`.

use super::body::ProxyBody;
use super::flood::{self, FloodGuard};
use super::ConnContext;
use crate::detect::Protocol;
use crate::metrics::Metrics;
use crate::Direction;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use strait_config::HttpSettings;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tower::util::Oneshot;
use tower::ServiceExt;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Drive a hyper connection to completion. When the proxy drains, or the
/// connection moves no bytes for the idle timeout, it shuts down
/// gracefully (HTTP/1: after the request in flight; HTTP/2: GOAWAY); a
/// connection still idle one more timeout later (a stalled stream) is
/// closed outright.
macro_rules! drive {
    ($conn:expr, $drain:expr, $idle:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let (activity, timeout) = $idle;
        tokio::select! {
            // The connection first: one accepted before the drain but
            // detected after it still has its request read (and answered
            // with `Connection: close`) before the shutdown applies.
            biased;
            result = conn.as_mut() => result,
            _ = $drain.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = idle(activity.clone(), timeout) => {
                tracing::debug!(?timeout, "closing an idle client connection");
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    result = conn.as_mut() => result,
                    _ = idle(activity, timeout) => Ok(()),
                }
            }
        }
    }};
}

/// Completes once `activity` has not moved for a whole `timeout`.
pub(super) async fn idle(activity: Arc<AtomicU64>, timeout: Duration) {
    let mut seen = activity.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Serve HTTP on `io` until the client closes or the proxy drains.
pub async fn serve<I>(
    io: I,
    protocol: Protocol,
    ctx: Arc<ConnContext>,
    drain: CancellationToken,
    idle_timeout: (Arc<AtomicU64>, Duration),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.inputs.snapshot.load().config.proxy.http.clone();
    let counters = (ctx.inputs.metrics.clone(), ctx.direction());
    // Only HTTP/2 is watched for control-frame floods.
    let io = Watched {
        io,
        flood: (protocol == Protocol::Http2).then(|| flood::Report {
            metrics: ctx.inputs.metrics.clone(),
            direction: ctx.direction(),
            client: ctx.client,
        }),
    };
    match ctx.direction() {
        Direction::Outbound => {
            let stack = crate::outbound::stack(ctx);
            serve_with(io, protocol, &limits, stack, drain, idle_timeout, counters).await
        }
        Direction::Inbound => {
            let stack = crate::inbound::stack(ctx);
            serve_with(io, protocol, &limits, stack, drain, idle_timeout, counters).await
        }
    }
}

/// Serve HTTP on `io` with `stack`, one direction's.
async fn serve_with<I, S>(
    io: Watched<I>,
    protocol: Protocol,
    limits: &HttpSettings,
    stack: S,
    drain: CancellationToken,
    idle_timeout: (Arc<AtomicU64>, Duration),
    (metrics, direction): (Arc<Metrics>, Direction),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
{
    let service = PerConnection(RefCell::new(stack));
    let Watched { io, flood } = io;
    let result = if let Some(report) = flood {
        let io = TokioIo::new(FloodGuard::new(
            io,
            flood::Limits::from_settings(limits),
            report,
        ));
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // h2 answers a header block over the list size with 431; streams a
        // client resets before we accept them (rapid reset), and streams we
        // reset for its errors, are bounded so neither flood costs more
        // than a GOAWAY. A PING left unanswered closes the connection.
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(
                u32::try_from(limits.max_request_headers_bytes).unwrap_or(u32::MAX),
            )
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(limits.max_local_error_reset_streams)
            .keep_alive_interval(limits.http2_keep_alive_interval)
            .keep_alive_timeout(limits.http2_keep_alive_timeout);
        // Boxed, so an HTTP/1 connection's task does not carry its size.
        Box::pin(async move { drive!(builder.serve_connection(io, service), drain, idle_timeout) })
            .await
    } else {
        let mut builder = http1::Builder::new();
        // hyper answers a head over the buffer size, or with more headers
        // than allowed, with 431 (and an over-long target with 414).
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(limits.max_request_headers_bytes)
            .max_headers(limits.max_request_headers);
        // Served by `park`, which releases hyper's buffers while idle;
        // boxed like HTTP/2, so each connection holds only its protocol's state.
        Box::pin(super::park::serve(
            builder,
            io,
            service,
            HEADER_READ_TIMEOUT,
            drain,
            idle_timeout,
        ))
        .await
    };
    if let Err(e) = result {
        // Malformed requests get hyper's 400 and a close; a client reset is routine.
        tracing::debug!(error = %e, "client connection ended with an error");
        count_ended(&metrics, direction, protocol, &e);
    }
}

/// A client connection's I/O and, for HTTP/2, who hears of a flood.
struct Watched<I> {
    io: I,
    flood: Option<flood::Report>,
}

/// A connection's stack as hyper's service. hyper calls through `&self`,
/// tower through `&mut self`: hyper calls from the connection's task,
/// never re-entrantly, so the one stack is borrowed for each call rather
/// than cloned. Every layer is always ready (limits fail fast, they do
/// not wait); a layer that is not is served by a clone that waits.
struct PerConnection<S>(RefCell<S>);

impl<S> hyper::service::Service<Request<Incoming>> for PerConnection<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Called<S::Future, Oneshot<S, Request<Incoming>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // Borrowed for this call only: hyper never calls re-entrantly.
        let mut stack = self.0.borrow_mut();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Called::Now {
                future: stack.call(req),
            },
            _ => Called::WhenReady {
                future: stack.clone().oneshot(req),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = CalledProj]
    enum Called<F, W> {
        Now { #[pin] future: F },
        WhenReady { #[pin] future: W },
    }
}

impl<F, W, T> std::future::Future for Called<F, W>
where
    F: std::future::Future<Output = T>,
    W: std::future::Future<Output = T>,
{
    type Output = T;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.project() {
            CalledProj::Now { future } => future.poll(cx),
            CalledProj::WhenReady { future } => future.poll(cx),
        }
    }
}

/// Count a client connection that ended with `e`, when hyper or h2
/// refused something on their own: an HTTP/1 head hyper answered itself
/// (400, 414, 431) or let time out, or an HTTP/2 connection error. A
/// client that merely went away is not counted.
fn count_ended(metrics: &Metrics, direction: Direction, protocol: Protocol, e: &hyper::Error) {
    if protocol == Protocol::Http2 {
        if let Some((reason, sender)) = http2_ended(e) {
            metrics.http2_connection_error(direction, reason, sender);
        }
    } else if let Some(reason) = http1_refused(e) {
        metrics.proxy_error(direction, reason);
    }
}

/// The `http_proxy_errors_total` reason of an HTTP/1 head hyper refused.
fn http1_refused(e: &hyper::Error) -> Option<&'static str> {
    if e.is_parse_too_large() {
        // hyper has no predicate of its own for the target that is too
        // long (414): only its message tells it from a head that is (431).
        return Some(if e.to_string().starts_with("URI too long") {
            "uri-too-long"
        } else {
            "headers-too-large"
        });
    }
    if e.is_parse() {
        return Some("malformed-request");
    }
    e.is_timeout().then_some("request-head-timeout")
}

/// The reason and sender of an HTTP/2 connection that ended by an error:
/// the GOAWAY's error code, or a PING the client never answered.
fn http2_ended(e: &hyper::Error) -> Option<(&'static str, &'static str)> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_io() || h2.is_reset() {
                return None;
            }
            let sender = if h2.is_remote() { "client" } else { "proxy" };
            return h2.reason().map(|r| (reason_name(r), sender));
        }
        cause = err.source();
    }
    e.is_timeout().then_some(("keep_alive_timeout", "proxy"))
}

/// An HTTP/2 error code as a label (RFC 9113 §7).
fn reason_name(reason: h2::Reason) -> &'static str {
    match reason {
        h2::Reason::NO_ERROR => "no_error",
        h2::Reason::PROTOCOL_ERROR => "protocol_error",
        h2::Reason::INTERNAL_ERROR => "internal_error",
        h2::Reason::FLOW_CONTROL_ERROR => "flow_control_error",
        h2::Reason::SETTINGS_TIMEOUT => "settings_timeout",
        h2::Reason::STREAM_CLOSED => "stream_closed",
        h2::Reason::FRAME_SIZE_ERROR => "frame_size_error",
        h2::Reason::REFUSED_STREAM => "refused_stream",
        h2::Reason::CANCEL => "cancel",
        h2::Reason::COMPRESSION_ERROR => "compression_error",
        h2::Reason::CONNECT_ERROR => "connect_error",
        h2::Reason::ENHANCE_YOUR_CALM => "enhance_your_calm",
        h2::Reason::INADEQUATE_SECURITY => "inadequate_security",
        h2::Reason::HTTP_1_1_REQUIRED => "http_1_1_required",
        _ => "unknown",
    }
}
