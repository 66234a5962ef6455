//! The HTTP/2 client, for plain HTTP/2 upstreams and the mesh hop, on the
//! `h2` crate directly. A request's own task opens its stream and awaits
//! the response on it: nothing sits between the two. (hyper's HTTP/2
//! client hands each request to the connection's task over a channel,
//! spawns a task per request to await its response, and hands the
//! response back over a oneshot: callgrind counted those ~4,500
//! instructions per request on the mesh hop's client side.)
//!
//! The connection's task drives the connection's I/O and, while streams
//! are open, a keep-alive PING that closes a connection whose peer stopped
//! answering. A request body is sent from the request's task as far as it
//! can go at once (all of it, when it is already in memory), and from a
//! task of its own only when it has to wait for the client or the window.

use super::UpstreamError;
use crate::http::authority::body_cap::BoxError;
use crate::http::body::UpstreamBody;
use crate::http::h2_stream::{H2Recv, Piped, SendPipe};
use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use h2::{Ping, PingPong, Reason, SendStream};
use http::{header, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

/// How often an HTTP/2 connection with open streams is PINGed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a PING may go unanswered before the connection is closed.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The sending side of one upstream HTTP/2 connection, shared by every
/// request on it (cloning is cheap).
#[derive(Clone)]
pub struct H2Sender {
    send: SendRequest<Bytes>,
    /// Set when the connection has ended or takes no new stream. Held by
    /// every handle and every response body, so its count is also how
    /// many requests are in flight: the connection PINGs only while one
    /// is, and an idle connection is left to close.
    closed: Arc<AtomicBool>,
}

/// Open HTTP/2 on `io` and spawn the connection's task, which holds
/// `guard` (metrics, connection slot) for the connection's life.
pub async fn handshake<I, G>(io: I, addr: SocketAddr, guard: G) -> Result<H2Sender, h2::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    // hyper's client defaults, which this client replaced: 2 MiB stream
    // and 5 MiB connection windows, 1 MiB of send buffer per stream.
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .initial_max_send_streams(100)
        .max_frame_size(16 << 10)
        .max_header_list_size(16 << 10)
        .max_send_buffer_size(1 << 20)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let sender = H2Sender {
        send,
        closed: Arc::new(AtomicBool::new(false)),
    };
    let users = Arc::downgrade(&sender.closed);
    let ping = connection.ping_pong();
    tokio::spawn(async move {
        let _guard = guard;
        let ended = match ping {
            Some(ping) => drive(&mut connection, ping, &users, addr).await,
            None => connection.await.map_err(BoxError::from),
        };
        if let Some(closed) = users.upgrade() {
            closed.store(true, Ordering::Release);
        }
        if let Err(e) = ended {
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// Drive `connection` to its end, PINGing it every
/// [`KEEP_ALIVE_INTERVAL`] while requests are in flight; a PING left
/// unanswered for [`KEEP_ALIVE_TIMEOUT`] ends it.
async fn drive<I>(
    connection: &mut Connection<I, Bytes>,
    mut ping: PingPong,
    users: &std::sync::Weak<AtomicBool>,
    addr: SocketAddr,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut awaiting_pong = false;
    let mut next = Instant::now() + KEEP_ALIVE_INTERVAL;
    loop {
        tokio::select! {
            ended = &mut *connection => return Ok(ended?),
            pong = poll_fn(|cx| ping.poll_pong(cx)), if awaiting_pong => {
                pong?;
                awaiting_pong = false;
                next = Instant::now() + KEEP_ALIVE_INTERVAL;
            }
            _ = sleep_until(next) => {
                if awaiting_pong {
                    keep_alive_timed_out(addr);
                    return Err(format!("no answer to a keep-alive PING within {KEEP_ALIVE_TIMEOUT:?}").into());
                }
                // The pool's handle is one user; more are requests.
                if users.strong_count() > 1 {
                    ping.send_ping(Ping::opaque())?;
                    awaiting_pong = true;
                    next = Instant::now() + KEEP_ALIVE_TIMEOUT;
                } else {
                    next = Instant::now() + KEEP_ALIVE_INTERVAL;
                }
            }
        }
    }
}

static KEEP_ALIVE_LOG: std::sync::LazyLock<crate::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| crate::log_limit::LogLimit::new(crate::log_limit::INTERVAL));

/// Say (rate limited per upstream) that a connection was closed for an
/// unanswered PING: its requests fail with a broken connection, which
/// alone would not say why.
fn keep_alive_timed_out(addr: SocketAddr) {
    let decision = KEEP_ALIVE_LOG.check("keep-alive-timeout", addr);
    if let crate::log_limit::Decision::Log { suppressed } = decision {
        tracing::warn!(
            %addr,
            suppressed,
            "upstream HTTP/2 connection closed: no answer to a keep-alive PING within {KEEP_ALIVE_TIMEOUT:?}, so its requests in flight fail; check that the upstream is up and not overloaded ({suppressed} more like it not logged since the last line)"
        );
    }
}

impl H2Sender {
    /// Whether the connection has ended (its task is gone).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Send `request` on a new stream and await the response's head. A
    /// connection that can take no new stream (the peer sent GOAWAY, or it
    /// failed) is marked closed and the request handed back unsent.
    /// Takes the request's own clone of the sender (its checkout's).
    pub async fn send(
        self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<H2Body>, (UpstreamError, Option<Request<UpstreamBody>>)> {
        let H2Sender { mut send, closed } = self;
        if let Err(e) = poll_fn(|cx| send.poll_ready(cx)).await {
            closed.store(true, Ordering::Release);
            return Err((e.into(), Some(request)));
        }
        let (head, body) = request.into_parts();
        let mut request = Request::from_parts(head, ());
        let end_of_stream = body.is_end_stream();
        if end_of_stream
            && matches!(
                *request.method(),
                Method::POST | Method::PUT | Method::PATCH
            )
        {
            // What hyper's client sent for an empty body with defined meaning.
            request
                .headers_mut()
                .entry(header::CONTENT_LENGTH)
                .or_insert(http::HeaderValue::from_static("0"));
        }
        let (response, stream) = send
            .send_request(request, end_of_stream)
            .map_err(|e| (e.into(), None))?;
        let mut sending = match end_of_stream {
            true => None,
            false => Some(send_body(body, stream)),
        };
        let response = response.await.map_err(|e| {
            let broke = sending.as_ref().map(|s| s.client_body_broke());
            match broke {
                Some(true) => (UpstreamError::RequestBody, None),
                _ => (UpstreamError::Http2(e), None),
            }
        })?;
        // The response came: the body goes on (an upstream may answer
        // before it has read the whole request).
        if let Some(sending) = sending.as_mut() {
            sending.keep_going();
        }
        let content_length = crate::http::headers::content_length(response.headers());
        Ok(response.map(|recv| H2Body {
            recv: H2Recv::new(recv, content_length),
            _connection: closed,
        }))
    }
}

/// A request body being sent, as its request's task sees it.
struct SendingBody {
    /// Set when the client's own body failed (not the upstream).
    broke: Arc<AtomicBool>,
    /// Dropped unsent once the response has come; sent (dropped with the
    /// request's future) when the request is abandoned before it, which
    /// resets the stream instead of sending the rest of the body.
    abandon: Option<oneshot::Sender<()>>,
}

impl SendingBody {
    fn client_body_broke(&self) -> bool {
        self.broke.load(Ordering::Acquire)
    }

    fn keep_going(&mut self) {
        self.abandon = None;
    }
}

impl Drop for SendingBody {
    fn drop(&mut self) {
        if let Some(abandon) = self.abandon.take() {
            let _ = abandon.send(());
        }
    }
}

/// Start sending `body` on `stream`: polled once here (a body already in
/// memory goes out at once), then on a task of its own if it must wait.
fn send_body(body: UpstreamBody, stream: SendStream<Bytes>) -> SendingBody {
    let broke = Arc::new(AtomicBool::new(false));
    let (abandon, abandoned) = oneshot::channel();
    let mut pipe = Box::pin(pipe(body, stream, broke.clone(), abandoned));
    let waker = std::task::Waker::noop();
    if pipe
        .as_mut()
        .poll(&mut Context::from_waker(waker))
        .is_pending()
    {
        tokio::spawn(pipe);
    }
    SendingBody {
        broke,
        abandon: Some(abandon),
    }
}

/// Copy `body` onto `stream` as the stream's window allows
/// ([`SendPipe`]). A client body that fails resets the stream (CANCEL)
/// and sets `broke`; a reset from the upstream stops the copy; so does
/// the request being abandoned before its response (a timeout, the
/// client gone), with a CANCEL.
async fn pipe(
    body: UpstreamBody,
    stream: SendStream<Bytes>,
    broke: Arc<AtomicBool>,
    abandoned: oneshot::Receiver<()>,
) {
    let mut abandoned = Some(abandoned);
    let mut pipe = SendPipe::new(body, stream);
    let piped = poll_fn(|cx| {
        if is_abandoned(&mut abandoned, cx) {
            return Poll::Ready(None);
        }
        pipe.poll(cx).map(Some)
    })
    .await;
    match piped {
        None => pipe.reset(Reason::CANCEL),
        Some(Piped::Done) => {}
        Some(Piped::Closed(e)) => tracing::debug!(
            error = %e,
            "upstream HTTP/2 stream closed while the request body was sent"
        ),
        Some(Piped::Failed(e)) => {
            client_body_failed(&e, &broke);
            pipe.reset(Reason::CANCEL);
        }
    }
}

/// Whether the request was abandoned before its response; once the
/// response has come (the sender dropped unsent) it is no longer watched.
fn is_abandoned(abandoned: &mut Option<oneshot::Receiver<()>>, cx: &mut Context<'_>) -> bool {
    let Some(rx) = abandoned.as_mut() else {
        return false;
    };
    match Pin::new(rx).poll(cx) {
        Poll::Ready(Ok(())) => true,
        Poll::Ready(Err(_)) => {
            *abandoned = None;
            false
        }
        Poll::Pending => false,
    }
}

/// A client body read error (the client's malformed chunk or reset, as
/// hyper reports it) is the client's fault; a cap tripped is handled by
/// the caller from the body cap's own flag.
fn client_body_failed(e: &BoxError, broke: &AtomicBool) {
    tracing::debug!(error = %e, "the request body failed while it was sent upstream");
    if crate::http::error::is_client_body_error(&**e) {
        broke.store(true, Ordering::Release);
    }
}

/// An upstream HTTP/2 response body: its DATA (the window given back as
/// each frame is read), then its trailers.
pub struct H2Body {
    recv: H2Recv,
    /// Counts this request as in flight on its connection (see [`H2Sender`]).
    _connection: Arc<AtomicBool>,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match ready!(self.get_mut().recv.poll_frame(cx)) {
            // RST_STREAM(NO_ERROR) after a complete response: the
            // upstream answered early and needs no more of the request.
            Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            frame => Poll::Ready(frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.recv.size_hint()
    }
}

#[cfg(test)]
#[path = "h2_tests.rs"]
mod tests;
