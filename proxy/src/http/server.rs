//! Runs hyper's HTTP/1.1 or HTTP/2 server on a detected connection, with
//! every request going to its direction's tower stack, and shuts the connection down
//! gracefully when the proxy drains (HTTP/1: after the request in flight;
//! HTTP/2: GOAWAY, then open streams finish).

use super::body::ProxyBody;
use super::ConnContext;
use crate::detect::Protocol;
use crate::Direction;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strait_config::HttpSettings;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 streams a client may open and reset before the proxy accepts
/// them (the "rapid reset" flood, CVE-2023-44487): past it, GOAWAY.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 50;

/// HTTP/2 streams the proxy may reset for a client's protocol errors on
/// one connection: past it, GOAWAY (CVE-2024-27316-style floods).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

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
async fn idle(activity: Arc<AtomicU64>, timeout: Duration) {
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
    match ctx.direction() {
        Direction::Outbound => {
            let stack = crate::outbound::stack(ctx);
            let service = service_fn(move |req| stack.clone().oneshot(req));
            serve_with(io, protocol, &limits, service, drain, idle_timeout).await
        }
        Direction::Inbound => {
            let stack = crate::inbound::stack(ctx);
            let service = service_fn(move |req| stack.clone().oneshot(req));
            serve_with(io, protocol, &limits, service, drain, idle_timeout).await
        }
    }
}

/// Serve HTTP on `io` with `service` (a direction's stack).
async fn serve_with<I, S>(
    io: I,
    protocol: Protocol,
    limits: &HttpSettings,
    service: S,
    drain: CancellationToken,
    idle_timeout: (Arc<AtomicU64>, Duration),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(io);
    let result = if protocol == Protocol::Http2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // h2 answers a header block over the list size with 431; streams a
        // client resets before we accept them, and streams we reset for its
        // errors, are bounded so neither flood costs more than a GOAWAY.
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(
                u32::try_from(limits.max_request_headers_bytes).unwrap_or(u32::MAX),
            )
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
        drive!(builder.serve_connection(io, service), drain, idle_timeout)
    } else {
        let mut builder = http1::Builder::new();
        // hyper answers a head over the buffer size, or with more headers
        // than allowed, with 431 (and an over-long target with 414).
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(limits.max_request_headers_bytes)
            .max_headers(limits.max_request_headers);
        drive!(
            builder.serve_connection(io, service).with_upgrades(),
            drain,
            idle_timeout
        )
    };
    if let Err(e) = result {
        // Malformed requests get hyper's 400 and a close; a client reset is routine.
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}
