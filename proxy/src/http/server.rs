//! Runs hyper's HTTP/1.1 server or strait's HTTP/2 server
//! ([`super::h2_server`]) on a detected connection, with every request
//! going to its direction's tower stack, and shuts the connection down
//! gracefully when the proxy drains (HTTP/1: after the request in flight;
//! HTTP/2: GOAWAY, then open streams finish).
//!
//! The protocol-level limits live here, as builder settings from
//! `proxy.http`: the HTTP/1 head size and field count, the HTTP/2 header
//! list, concurrent streams, reset-stream floods and keep-alive PINGs;
//! PING, SETTINGS and empty-DATA floods are watched below h2 by
//! [`super::flood`].
//! What hyper and h2 refuse on their own never reaches the stack,
//! so it is counted from the error the connection ends with: an HTTP/1
//! head hyper answered with 400/414/431 in `http_proxy_errors_total`
//! ([`http1_refused`]), an HTTP/2 connection closed by an error (a
//! flood's GOAWAY `ENHANCE_YOUR_CALM`, a `PROTOCOL_ERROR`, a PING left
//! unanswered) in `http2_connection_errors_total`
//! ([`super::h2_server::ended_label`]).

use super::body::ProxyBody;
use super::client_body::ClientBody;
use super::flood::{self, FloodGuard};
use super::ConnContext;
use crate::detect::Protocol;
use crate::metrics::Metrics;
use crate::Direction;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use std::cell::RefCell;
use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
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
            serve_with(io, &limits, stack, drain, idle_timeout, counters).await
        }
        Direction::Inbound => {
            let stack = crate::inbound::stack(ctx);
            serve_with(io, &limits, stack, drain, idle_timeout, counters).await
        }
    }
}

/// Serve HTTP on `io` with `stack`, one direction's.
async fn serve_with<I, S>(
    io: Watched<I>,
    limits: &HttpSettings,
    stack: S,
    drain: CancellationToken,
    idle_timeout: (Arc<AtomicU64>, Duration),
    (metrics, direction): (Arc<Metrics>, Direction),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<ClientBody>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
{
    let service = PerConnection(RefCell::new(stack));
    let Watched { io, flood } = io;
    if let Some(report) = flood {
        let io = FloodGuard::new(io, flood::Limits::from_settings(limits), report);
        let call = move |req| service.call_stack(req);
        // Boxed, so an HTTP/1 connection's task does not carry its size.
        let served = Box::pin(super::h2_server::serve(
            io,
            limits,
            call,
            drain,
            idle_timeout,
        ))
        .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "client HTTP/2 connection ended with an error");
            if let Some((reason, sender)) = super::h2_server::ended_label(&e) {
                metrics.http2_connection_error(direction, reason, sender);
            }
        }
        return;
    }
    let mut builder = http1::Builder::new();
    // hyper answers a head over the buffer size, or with more headers
    // than allowed, with 431 (and an over-long target with 414).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(limits.max_request_headers_bytes)
        .max_headers(limits.max_request_headers);
    // Served by `park`, which releases hyper's buffers while idle; boxed
    // like HTTP/2, so each connection holds only its protocol's state.
    let served = Box::pin(super::park::serve(
        builder,
        io,
        service,
        HEADER_READ_TIMEOUT,
        drain,
        idle_timeout,
    ))
    .await;
    if let Err(e) = served {
        // Malformed requests get hyper's 400 and a close; a client reset is routine.
        tracing::debug!(error = %e, "client connection ended with an error");
        if let Some(reason) = http1_refused(&e) {
            metrics.proxy_error(direction, reason);
        }
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

impl<S> PerConnection<S>
where
    S: tower::Service<Request<ClientBody>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone,
{
    fn call_stack(
        &self,
        req: Request<ClientBody>,
    ) -> Called<S::Future, Oneshot<S, Request<ClientBody>>> {
        // Borrowed for this call only: calls come from the connection's
        // task, never re-entrantly.
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

impl<S> hyper::service::Service<Request<Incoming>> for PerConnection<S>
where
    S: tower::Service<Request<ClientBody>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Called<S::Future, Oneshot<S, Request<ClientBody>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.call_stack(req.map(ClientBody::Http1))
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
