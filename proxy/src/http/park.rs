//! HTTP/1 client connections that give their buffers back while idle.
//!
//! hyper's HTTP/1 connection keeps an 8 KiB read buffer and an 8 KiB
//! header write buffer for its whole life, which is most of what an idle
//! keep-alive connection costs. So a connection that has had nothing in
//! flight and moved no bytes for [`PARK_AFTER`] is *parked*: hyper is
//! told to shut down gracefully (an idle hyper connection then finishes at
//! once, see `disable_keep_alive`), its I/O, unread bytes and service are
//! taken back with `into_parts` — the socket stays open, because
//! [`ParkableIo`] ignores the shutdown hyper asks for while parking — and
//! the task holds only the socket until the client sends again. Then a
//! new hyper connection serves it, with the bytes already read replayed
//! first. The client sees one uninterrupted keep-alive connection.
//!
//! Requests in flight are counted ([`Tracked`]: from the service call to
//! the end of the response body), so a long-poll that moves no bytes is
//! never parked. The cost on the request path is that count (two relaxed
//! atomics and an `Arc` clone); a parked connection costs one read with a
//! stack buffer and a new hyper connection when it wakes.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection stays idle, with nothing in flight, before its
/// hyper connection (and buffers) are released. Long enough that a busy
/// keep-alive connection never parks between requests.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The first read of a parked connection that wakes: its bytes are kept
/// (exactly sized) and replayed to the new hyper connection.
const WAKE_READ: usize = 1024;

/// What the serving loop, the I/O and the requests of one connection share.
#[derive(Default)]
struct Shared {
    /// Requests whose response has not ended.
    in_flight: AtomicUsize,
    /// Requests whose head was read, ever (a head stall ends with one).
    heads: AtomicU64,
    /// Set while hyper is being shut down to park: its shutdown of the
    /// I/O is then ignored.
    parking: AtomicBool,
    /// How many times the connection parked (read by tests and logs).
    parked: AtomicU64,
}

/// Serve HTTP/1 on `io` with `builder` until the client closes, the proxy
/// drains, or the connection stays idle for `timeout` (then it is shut
/// down gracefully, and closed if still open one more `timeout` later).
pub async fn serve<I, S, B>(
    builder: http1::Builder,
    io: I,
    service: S,
    header_read_timeout: Duration,
    drain: CancellationToken,
    (activity, timeout): (Arc<AtomicU64>, Duration),
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_shared(
        Arc::new(Shared::default()),
        builder,
        io,
        service,
        header_read_timeout,
        drain,
        (activity, timeout),
    )
    .await
}

async fn serve_shared<I, S, B>(
    shared: Arc<Shared>,
    builder: http1::Builder,
    io: I,
    service: S,
    header_read_timeout: Duration,
    drain: CancellationToken,
    (activity, timeout): (Arc<AtomicU64>, Duration),
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut io = ParkableIo {
        inner: io,
        replay: Bytes::new(),
        shared: shared.clone(),
    };
    let mut service = Tracked {
        inner: service,
        shared: shared.clone(),
    };
    // When a request head first stalled across a park: hyper's header
    // timer restarts with each hyper connection, so it is enforced here
    // across them (on tokio's clock, which tests can pause).
    let mut head_stalled_since: Option<Instant> = None;
    loop {
        let heads_before = shared.heads.load(Ordering::Relaxed);
        // Boxed: while parked, the task holds none of it.
        let conn = Box::new(
            builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let parts = match run(conn, &shared, &drain, &activity, timeout).await {
            Ran::Done(result) => return result,
            Ran::Parked(parts) => parts,
        };
        shared.parking.store(false, Ordering::Relaxed);
        let parked = shared.parked.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::trace!(parked, "parked an idle connection");
        io = parts.io.into_inner();
        service = parts.service;
        io.replay = unless_empty(parts.read_buf);
        if shared.heads.load(Ordering::Relaxed) != heads_before {
            // A head completed since the last park: any stall before it ended.
            head_stalled_since = None;
        }
        if !io.replay.is_empty() {
            // Parked halfway through a request head.
            let since = *head_stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() > header_read_timeout {
                tracing::debug!("closing a client connection whose request head stalled");
                return Ok(());
            }
        } else {
            head_stalled_since = None;
            // Parked: wait for the client with the socket only.
            tokio::select! {
                read = wake(&mut io.inner) => match read {
                    Ok(Some(bytes)) => io.replay = bytes,
                    // The client closed, or the connection broke: done.
                    Ok(None) | Err(_) => return Ok(()),
                },
                _ = drain.cancelled() => return Ok(()),
                _ = tokio::time::sleep(timeout.saturating_sub(PARK_AFTER)) => {
                    tracing::debug!(?timeout, "closing an idle client connection");
                    return Ok(());
                }
            }
        }
    }
}

enum Ran<P> {
    Done(Result<(), hyper::Error>),
    Parked(P),
}

type Conn<I, S> = http1::UpgradeableConnection<TokioIo<ParkableIo<I>>, Tracked<S>>;
type Parts<I, S> = http1::Parts<TokioIo<ParkableIo<I>>, Tracked<S>>;

/// Drive one hyper connection until it ends or is parked.
async fn run<I, S, B>(
    mut conn: Box<Conn<I, S>>,
    shared: &Shared,
    drain: &CancellationToken,
    activity: &Arc<AtomicU64>,
    timeout: Duration,
) -> Ran<Parts<I, S>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // One timer serves both the idle timeout and parking: it is polled
    // on every wakeup of a busy connection, so one costs half of two.
    let mut quiet = Quiet::new(activity, timeout);
    let tick = tokio::time::sleep_until(quiet.next());
    tokio::pin!(tick);
    // The connection is shut down gracefully for one of three reasons.
    let (mut draining, mut idled, mut parking) = (false, false, false);
    loop {
        tokio::select! {
            // The connection first: one accepted before the drain but
            // detected after it still has its request read (and answered
            // with `Connection: close`) before the shutdown applies.
            biased;
            result = &mut *conn => {
                return match (result, parking) {
                    (Ok(()), true) => match (*conn).into_parts() {
                        Some(parts) => Ran::Parked(parts),
                        None => Ran::Done(Ok(())), // upgraded meanwhile
                    },
                    (result, _) => Ran::Done(result),
                };
            }
            _ = drain.cancelled(), if !draining => {
                draining = true;
                shared.parking.store(false, Ordering::Relaxed);
                parking = false;
                Pin::new(&mut *conn).graceful_shutdown();
            }
            _ = &mut tick, if !draining => {
                let may_park = !(idled || parking) && shared.in_flight.load(Ordering::Relaxed) == 0;
                match quiet.check(activity, may_park) {
                    Some(Quietly::Idle) if idled => {
                        // Still open a whole timeout after the graceful
                        // shutdown: a stalled response; close outright.
                        return Ran::Done(Ok(()));
                    }
                    Some(Quietly::Idle) => {
                        tracing::debug!(?timeout, "closing an idle client connection");
                        idled = true;
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
                    Some(Quietly::Park) => {
                        parking = true;
                        shared.parking.store(true, Ordering::Relaxed);
                        Pin::new(&mut *conn).graceful_shutdown();
                    }
                    None => {}
                }
                tick.as_mut().reset(quiet.next());
            }
        }
    }
}

/// The connection's idle and park windows, on one timer. Each window
/// ends after its length with no bytes moved in it (as `server::idle`):
/// the idle window after `timeout`, the park window after [`PARK_AFTER`]
/// (and only with nothing in flight).
struct Quiet {
    timeout: Duration,
    idle: (u64, Instant),
    park: (u64, Instant),
}

enum Quietly {
    Idle,
    Park,
}

impl Quiet {
    fn new(activity: &AtomicU64, timeout: Duration) -> Quiet {
        let (seen, now) = (activity.load(Ordering::Relaxed), Instant::now());
        Quiet {
            timeout,
            idle: (seen, now + timeout),
            park: (seen, now + PARK_AFTER),
        }
    }

    /// When the next window ends.
    fn next(&self) -> Instant {
        self.idle.1.min(self.park.1)
    }

    /// Close the windows that have ended (opening the next ones), and say
    /// whether one ended quiet; the idle window first.
    fn check(&mut self, activity: &AtomicU64, may_park: bool) -> Option<Quietly> {
        let (now, seen) = (Instant::now(), activity.load(Ordering::Relaxed));
        let mut ended = None;
        if now >= self.idle.1 {
            if seen == self.idle.0 {
                ended = Some(Quietly::Idle);
            }
            self.idle = (seen, now + self.timeout);
        }
        if now >= self.park.1 {
            if ended.is_none() && may_park && seen == self.park.0 {
                ended = Some(Quietly::Park);
            }
            self.park = (seen, now + PARK_AFTER);
        }
        ended
    }
}

/// `bytes`, or none at all when empty: an empty read buffer handed back
/// by hyper still owns its 8 KiB allocation, which a parked connection
/// must not keep. (Moved in, so it is dropped here, not at the end of the
/// caller's scope.)
fn unless_empty(bytes: Bytes) -> Bytes {
    if bytes.is_empty() {
        Bytes::new()
    } else {
        bytes
    }
}

/// Wait for a parked connection's next bytes: `None` when the client closed.
async fn wake<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<Option<Bytes>> {
    poll_fn(|cx| {
        // On the stack only while polled: a parked task holds no buffer.
        let mut buf = [0u8; WAKE_READ];
        let mut read = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
        Poll::Ready(Ok(
            (!read.filled().is_empty()).then(|| Bytes::copy_from_slice(read.filled()))
        ))
    })
    .await
}

/// The connection's I/O as hyper sees it: replays the bytes read before
/// this hyper connection started, and ignores hyper's shutdown while
/// parking (the socket outlives the hyper connection).
struct ParkableIo<I> {
    inner: I,
    replay: Bytes,
    shared: Arc<Shared>,
}

impl<I: AsyncRead + Unpin> AsyncRead for ParkableIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            if this.replay.is_empty() {
                this.replay = Bytes::new(); // release the buffer
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ParkableIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.parking.load(Ordering::Relaxed) {
            // hyper has flushed (it does before shutting down); the
            // socket stays open for the client's next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The service, counting each request in flight until its response ends.
struct Tracked<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<InFlightBody<B>>;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        self.shared.heads.fetch_add(1, Ordering::Relaxed);
        InFlightFuture {
            future: self.inner.call(req),
            guard: Some(InFlight(self.shared.clone())),
        }
    }
}

/// One request in flight, until dropped.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The service's future; its response body carries the request's
    /// [`InFlight`] on.
    pub struct InFlightFuture<F> {
        #[pin]
        future: F,
        guard: Option<InFlight>,
    }
}

impl<F, B, E> Future for InFlightFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<InFlightBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(result.map(|response| {
            response.map(|body| InFlightBody {
                body,
                _guard: guard,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body whose request is in flight until it is dropped.
    pub struct InFlightBody<B> {
        #[pin]
        body: B,
        _guard: Option<InFlight>,
    }
}

impl<B: Body> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[path = "park_tests.rs"]
mod tests;
