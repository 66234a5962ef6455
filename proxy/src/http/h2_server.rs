//! The HTTP/2 server for client connections, on the `h2` crate directly.
//! The connection's task accepts streams, drives the connection's I/O and
//! its keep-alive PINGs, and shuts it down gracefully (GOAWAY, open
//! streams finish) when the proxy drains or the connection idles. Each
//! stream runs on a task of its own (streams proceed concurrently, on any
//! worker) that awaits the stack's response, sends its head and pipes its
//! body under the stream's flow control ([`super::h2_stream::SendPipe`]);
//! a client that resets the stream first cancels the request.
//!
//! (hyper's HTTP/2 server, which this replaced, did the same with more per
//! stream: a second pass stripping connection headers the stack already
//! strips, a task future that carries hyper's whole stream state machine,
//! and the request body behind hyper's own body type.)

use super::body::ProxyBody;
use super::client_body::ClientBody;
use super::h2_stream::{H2Recv, Piped, SendPipe};
use super::headers;
use crate::pool::UpstreamError;
use bytes::Bytes;
use h2::server::{Connection, SendResponse};
use h2::{Ping, Reason, RecvStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strait_config::HttpSettings;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How long a connection closed for an unanswered PING may take to send
/// its GOAWAY.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);

/// How a client's HTTP/2 connection ended, when not cleanly.
#[derive(Debug)]
pub enum Ended {
    /// h2's error: the client's or the proxy's GOAWAY, or the I/O.
    Error(h2::Error),
    /// A keep-alive PING went unanswered.
    KeepAliveTimeout,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Error(e) => e.fmt(f),
            Ended::KeepAliveTimeout => f.write_str("a keep-alive PING went unanswered"),
        }
    }
}

/// Serve HTTP/2 on `io`, each request answered by `call`, until the
/// client closes, the proxy drains, or the connection idles out
/// (`idle`: its activity counter and timeout; a connection still idle
/// one more timeout after its GOAWAY is closed outright).
pub fn serve<I, C, F>(
    io: I,
    limits: &HttpSettings,
    call: C,
    drain: CancellationToken,
    (activity, idle_timeout): (Arc<AtomicU64>, Duration),
) -> Serving<I, C>
where
    I: AsyncRead + AsyncWrite + Unpin,
    C: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    // hyper's server defaults, which this server replaced (1 MiB stream and
    // connection windows, 400 KiB of send buffer per stream), and the
    // proxy's limits: h2 answers a header block over the list size with
    // 431; streams a client resets before they are accepted (rapid
    // reset), and streams reset for the client's errors, are bounded so
    // neither flood costs more than a GOAWAY.
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16 << 10)
        .max_send_buffer_size(400 << 10)
        .max_header_list_size(u32::try_from(limits.max_request_headers_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.max_local_error_reset_streams));
    Serving {
        phase: Phase::Handshaking(builder.handshake(io)),
        call,
        drained: drain.cancelled_owned(),
        drain_seen: false,
        idle: IdleTimer::new(activity.clone(), idle_timeout),
        idle_closing: false,
        keep_alive: KeepAlive::new(
            limits.http2_keep_alive_interval,
            limits.http2_keep_alive_timeout,
            activity,
        ),
        ending: None,
    }
}

/// A connection before and after its handshake, in one place (each is
/// over a KiB).
enum Phase<I> {
    Handshaking(h2::server::Handshake<I, Bytes>),
    Serving(Connection<I, Bytes>),
}

pin_project_lite::pin_project! {
    /// A client's HTTP/2 connection being served ([`serve`]). Written out
    /// rather than `async` so it holds each piece of state once: it is
    /// allocated for the connection's whole life.
    pub struct Serving<I, C> {
        phase: Phase<I>,
        call: C,
        #[pin]
        drained: WaitForCancellationFutureOwned,
        drain_seen: bool,
        #[pin]
        idle: IdleTimer,
        idle_closing: bool,
        keep_alive: KeepAlive,
        // Set once a PING went unanswered: the GOAWAY is being flushed.
        ending: Option<Ended>,
    }
}

impl<I, C, F> Future for Serving<I, C>
where
    I: AsyncRead + AsyncWrite + Unpin,
    C: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    type Output = Result<(), Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        let mut this = self.project();
        if let Phase::Handshaking(handshake) = this.phase {
            match Pin::new(handshake).poll(cx) {
                Poll::Ready(Ok(mut conn)) => {
                    // A drain seen while the preface was read applies now.
                    if this.drained.as_mut().poll(cx).is_ready() {
                        *this.drain_seen = true;
                        conn.graceful_shutdown();
                    }
                    this.keep_alive.start(&mut conn);
                    *this.phase = Phase::Serving(conn);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Ended::Error(e))),
                Poll::Pending => {
                    return match this.idle.poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        let Phase::Serving(conn) = this.phase else {
            return Poll::Ready(Ok(()));
        };
        if this.ending.is_some() {
            // The GOAWAY goes out, or the flush's time runs out.
            if conn.poll_closed(cx).is_ready() || this.keep_alive.poll_timer(cx).is_ready() {
                return Poll::Ready(Err(this.ending.take().unwrap_or(Ended::KeepAliveTimeout)));
            }
            return Poll::Pending;
        }
        if !*this.drain_seen && this.drained.as_mut().poll(cx).is_ready() {
            *this.drain_seen = true;
            conn.graceful_shutdown();
        }
        if this.idle.as_mut().poll(cx).is_ready() {
            if *this.idle_closing {
                tracing::debug!(timeout = ?this.idle.timeout, "closing a client connection still idle after its GOAWAY");
                return Poll::Ready(Ok(()));
            }
            tracing::debug!(timeout = ?this.idle.timeout, "closing an idle client connection");
            *this.idle_closing = true;
            conn.graceful_shutdown();
            this.idle.as_mut().rearm();
            let _ = this.idle.as_mut().poll(cx);
        }
        if let Poll::Ready(ended) = this.keep_alive.poll(cx) {
            conn.abrupt_shutdown(Reason::NO_ERROR);
            this.keep_alive.flush_deadline(cx);
            *this.ending = Some(ended);
            if conn.poll_closed(cx).is_ready() {
                return Poll::Ready(Err(this.ending.take().unwrap_or(Ended::KeepAliveTimeout)));
            }
            return Poll::Pending;
        }
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    start_stream(request, respond, this.call)
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Ended::Error(e))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Completes once a connection's activity counter has not moved for a
    /// whole timeout.
    struct IdleTimer {
        activity: Arc<AtomicU64>,
        timeout: Duration,
        seen: u64,
        #[pin]
        sleep: Sleep,
    }
}

impl IdleTimer {
    fn new(activity: Arc<AtomicU64>, timeout: Duration) -> IdleTimer {
        IdleTimer {
            seen: activity.load(Ordering::Relaxed),
            activity,
            timeout,
            sleep: sleep(timeout),
        }
    }

    /// Start a new whole timeout from now.
    fn rearm(self: Pin<&mut Self>) {
        let this = self.project();
        *this.seen = this.activity.load(Ordering::Relaxed);
        this.sleep.reset(Instant::now() + *this.timeout);
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            let now = this.activity.load(Ordering::Relaxed);
            if now == *this.seen {
                return Poll::Ready(());
            }
            *this.seen = now;
            this.sleep.as_mut().reset(Instant::now() + *this.timeout);
        }
    }
}

/// Keep-alive PINGs (`proxy.http.http2_keep_alive_interval`): one after
/// each interval in which the connection moved no bytes (as hyper's
/// server did, so a client busy uploading is not asked to answer behind
/// its own DATA); one left unanswered for the timeout ends the connection.
struct KeepAlive {
    ping: Option<h2::PingPong>,
    interval: Option<Duration>,
    timeout: Duration,
    awaiting_pong: bool,
    /// The connection's I/O counter, and its value at the last tick.
    activity: Arc<AtomicU64>,
    seen: u64,
    /// Set only when keep-alive is on.
    timer: Option<Pin<Box<Sleep>>>,
}

impl KeepAlive {
    fn new(interval: Option<Duration>, timeout: Duration, activity: Arc<AtomicU64>) -> KeepAlive {
        KeepAlive {
            ping: None,
            interval,
            timeout,
            awaiting_pong: false,
            seen: activity.load(Ordering::Relaxed),
            activity,
            timer: None,
        }
    }

    /// Begin on the connection, once its handshake is done.
    fn start<I: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Connection<I, Bytes>) {
        if let Some(interval) = self.interval {
            self.ping = conn.ping_pong();
            self.timer = Some(Box::pin(sleep(interval)));
        }
    }

    /// Ready with why the connection must end: a PING went unanswered,
    /// or could not be sent. Pending otherwise (always, when off).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        let (Some(ping), Some(interval), Some(timer)) =
            (self.ping.as_mut(), self.interval, self.timer.as_mut())
        else {
            return Poll::Pending;
        };
        loop {
            if self.awaiting_pong {
                match ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting_pong = false;
                        timer.as_mut().reset(Instant::now() + interval);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Ended::Error(e)),
                    Poll::Pending => {}
                }
            }
            ready!(timer.as_mut().poll(cx));
            if self.awaiting_pong {
                return Poll::Ready(Ended::KeepAliveTimeout);
            }
            let now = self.activity.load(Ordering::Relaxed);
            if now != self.seen {
                self.seen = now;
                timer.as_mut().reset(Instant::now() + interval);
                continue;
            }
            if let Err(e) = ping.send_ping(Ping::opaque()) {
                return Poll::Ready(Ended::Error(e));
            }
            self.awaiting_pong = true;
            timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }

    /// Time the GOAWAY's flush from now.
    fn flush_deadline(&mut self, cx: &mut Context<'_>) {
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().reset(Instant::now() + GOAWAY_FLUSH);
            let _ = timer.as_mut().poll(cx);
        }
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Hand `request` to the stack and spawn the task that answers it.
fn start_stream<C, F>(request: Request<RecvStream>, respond: SendResponse<Bytes>, call: &mut C)
where
    C: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let content_length = headers::content_length(request.headers());
    let request = request.map(|recv| ClientBody::Http2(H2Recv::new(recv, content_length)));
    tokio::spawn(Answer::Waiting {
        response: call(request),
        respond: Some(respond),
    });
}

pin_project_lite::pin_project! {
    /// A stream's task: await the stack's response (dropped if the client
    /// resets the stream first), send its head, then its body. Written
    /// out rather than `async`, so the stack's future is stored once: the
    /// task is moved several times as it is spawned.
    #[project = AnswerProj]
    enum Answer<F> {
        Waiting { #[pin] response: F, respond: Option<SendResponse<Bytes>> },
        Sending { pipe: SendPipe<ProxyBody> },
        Done,
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let next = match self.as_mut().project() {
                AnswerProj::Waiting { response, respond } => {
                    let Some(reply) = respond.as_mut() else {
                        return Poll::Ready(());
                    };
                    let response = match response.poll(cx) {
                        Poll::Ready(Ok(response)) => response,
                        Poll::Pending => {
                            if let Poll::Ready(reset) = reply.poll_reset(cx) {
                                tracing::debug!(
                                    ?reset,
                                    "client reset the stream before its response"
                                );
                                return Poll::Ready(());
                            }
                            return Poll::Pending;
                        }
                    };
                    let Some(reply) = respond.take() else {
                        return Poll::Ready(());
                    };
                    match send_head(reply, response) {
                        Some(pipe) => Answer::Sending { pipe },
                        None => Answer::Done,
                    }
                }
                AnswerProj::Sending { pipe } => {
                    match ready!(pipe.poll(cx)) {
                        Piped::Done => {}
                        Piped::Closed(e) => tracing::debug!(
                            error = %e,
                            "client stream closed while the response body was sent"
                        ),
                        Piped::Failed(e) => {
                            tracing::debug!(error = %e, "the response body failed while it was sent");
                            pipe.reset(reset_reason(&e));
                        }
                    }
                    return Poll::Ready(());
                }
                AnswerProj::Done => return Poll::Ready(()),
            };
            self.set(next);
        }
    }
}

/// Send `response`'s head; what is left is its body's pipe, if any.
fn send_head(
    mut reply: SendResponse<Bytes>,
    response: Response<ProxyBody>,
) -> Option<SendPipe<ProxyBody>> {
    let (mut head, body) = response.into_parts();
    let end_of_stream = body.is_end_stream();
    prepare_head(&mut head.headers, &body, end_of_stream);
    match reply.send_response(Response::from_parts(head, ()), end_of_stream) {
        Ok(stream) if !end_of_stream => Some(SendPipe::new(body, stream)),
        Ok(_) => None,
        Err(e) => {
            // The client is told at once, not when the request's last
            // handle is dropped.
            tracing::debug!(error = %e, "the response head could not be sent");
            reply.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// What HTTP/2 requires of a response head, and what hyper's server
/// added: no connection-specific header (a local error response carries
/// `Connection: close` for HTTP/1 clients), a `Date`, and a
/// `Content-Length` when the body's size is known.
fn prepare_head(headers: &mut HeaderMap, body: &ProxyBody, end_of_stream: bool) {
    headers::strip_hop_by_hop(headers, false);
    // `TE` means something in a request only; `h2` refuses it otherwise.
    headers.remove(header::TE);
    if let header::Entry::Vacant(date) = headers.entry(header::DATE) {
        date.insert(http_date());
    }
    if !end_of_stream {
        if let Some(len) = body.size_hint().exact() {
            if let header::Entry::Vacant(length) = headers.entry(header::CONTENT_LENGTH) {
                length.insert(HeaderValue::from(len));
            }
        }
    }
}

/// The current time as an HTTP date, formatted once a second per thread.
fn http_date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| {
        if *at != second {
            if let Ok(formatted) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                *value = formatted;
                *at = second;
            }
        }
        value.clone()
    })
}

/// The reset a failed response body gives the client: the upstream's
/// HTTP/2 reason when it reset its stream, else INTERNAL_ERROR.
fn reset_reason(e: &UpstreamError) -> Reason {
    match e {
        UpstreamError::Http2(e) => e.reason().unwrap_or(Reason::INTERNAL_ERROR),
        _ => Reason::INTERNAL_ERROR,
    }
}

/// The `http2_connection_errors_total` reason and sender of a connection
/// that ended by an error: the GOAWAY's error code, or a PING the client
/// never answered. A client that merely went away is not counted.
pub fn ended_label(ended: &Ended) -> Option<(&'static str, &'static str)> {
    match ended {
        Ended::KeepAliveTimeout => Some(("keep_alive_timeout", "proxy")),
        Ended::Error(e) if e.is_io() || e.is_reset() => None,
        Ended::Error(e) => {
            let sender = if e.is_remote() { "client" } else { "proxy" };
            e.reason().map(|r| (reason_name(r), sender))
        }
    }
}

/// An HTTP/2 error code as a label (RFC 9113 §7).
fn reason_name(reason: Reason) -> &'static str {
    match reason {
        Reason::NO_ERROR => "no_error",
        Reason::PROTOCOL_ERROR => "protocol_error",
        Reason::INTERNAL_ERROR => "internal_error",
        Reason::FLOW_CONTROL_ERROR => "flow_control_error",
        Reason::SETTINGS_TIMEOUT => "settings_timeout",
        Reason::STREAM_CLOSED => "stream_closed",
        Reason::FRAME_SIZE_ERROR => "frame_size_error",
        Reason::REFUSED_STREAM => "refused_stream",
        Reason::CANCEL => "cancel",
        Reason::COMPRESSION_ERROR => "compression_error",
        Reason::CONNECT_ERROR => "connect_error",
        Reason::ENHANCE_YOUR_CALM => "enhance_your_calm",
        Reason::INADEQUATE_SECURITY => "inadequate_security",
        Reason::HTTP_1_1_REQUIRED => "http_1_1_required",
        _ => "unknown",
    }
}
