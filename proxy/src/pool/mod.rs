//! Per-endpoint upstream connection pools. HTTP/1 keeps a LIFO list of
//! idle keep-alive connections (newest first: warm, least likely to have
//! been closed by the peer), returned when a response body ends, but only
//! if the request body was fully written by then: an upstream that answers
//! early while a slow client still streams its body would otherwise hand
//! the next request a connection stuck behind that body, so such a
//! connection is closed once the body is done instead. HTTP/2
//! keeps one multiplexed connection per endpoint, with one connect in
//! flight at a time (its client is [`h2`]). Idle connections past their
//! timeout are reaped.

mod h2;

use crate::http::body::UpstreamBody;
use crate::io::CountedIo;
use crate::metrics::{Metrics, TcpMetrics, TlsStatus};
use crate::socket::{self, ConnectError};
use crate::tls::{MeshProtocol, Tls};
use crate::Direction;
use bytes::Bytes;
use h2::{H2Body, H2Sender};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

/// The HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// A cluster's cap on open upstream connections (circuit breaker). The
/// count outlives config reloads; a reload changes only the cap.
#[derive(Debug)]
pub struct ConnectionLimit {
    pub open: Arc<AtomicUsize>,
    max: AtomicUsize,
}

/// One open connection under a [`ConnectionLimit`]; freed when dropped
/// (with the connection task that holds it).
#[derive(Debug)]
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionLimit {
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            open: Arc::new(AtomicUsize::new(0)),
            max: AtomicUsize::new(max),
        }
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    fn acquire(&self) -> Option<ConnectionSlot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max() {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.open.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Pool-wide settings, from the proxy config.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub tcp_keepalive: Duration,
}

/// Why no upstream connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: UpstreamError,
    },
    #[error("mTLS handshake with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("the cluster's circuit_breaker.max_connections is reached")]
    TooManyConnections,
}

/// Why an exchange with an upstream failed, in either HTTP version.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    #[error("HTTP/2: {0}")]
    Http2(#[from] ::h2::Error),
    /// The client's request body failed while it was sent to an HTTP/2
    /// upstream (the client's fault, not the upstream's).
    #[error("the client's request body failed while it was sent")]
    RequestBody,
}

/// All endpoint pools of one direction.
pub struct Pools {
    direction: Direction,
    settings: PoolSettings,
    metrics: Arc<Metrics>,
    /// The workload identity, for endpoints reached over mTLS.
    tls: Option<Arc<Tls>>,
    /// Pools of targets outside any cluster (original destinations, the
    /// local app), looked up by key.
    endpoints: Mutex<HashMap<PoolKey, Arc<EndpointPool>>>,
    /// Pools owned by cluster endpoints, for the idle reaper.
    owned: Mutex<Vec<Weak<EndpointPool>>>,
}

/// Connections are shared only between requests to the same address, in
/// the same HTTP version, expecting the same peer identity.
type PoolKey = (SocketAddr, HttpVersion, Option<Arc<str>>);

impl Pools {
    pub fn new(
        direction: Direction,
        settings: PoolSettings,
        metrics: Arc<Metrics>,
        tls: Option<Arc<Tls>>,
    ) -> Arc<Pools> {
        Arc::new(Pools {
            direction,
            settings,
            metrics,
            tls,
            endpoints: Mutex::new(HashMap::new()),
            owned: Mutex::new(Vec::new()),
        })
    }

    /// The pool for `addr` spoken to in `version`, over mTLS to a peer
    /// proving `mesh` when set; created on first use.
    pub fn endpoint(
        &self,
        addr: SocketAddr,
        version: HttpVersion,
        mesh: Option<&Arc<str>>,
    ) -> Arc<EndpointPool> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        endpoints
            .entry((addr, version, mesh.cloned()))
            .or_insert_with(|| self.new_pool(addr, version, mesh))
            .clone()
    }

    /// A pool owned by a cluster endpoint (which keeps it for its life);
    /// the reaper still closes its idle connections.
    pub fn create(
        &self,
        addr: SocketAddr,
        version: HttpVersion,
        mesh: Option<&Arc<str>>,
    ) -> Arc<EndpointPool> {
        let pool = self.new_pool(addr, version, mesh);
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.push(Arc::downgrade(&pool));
        pool
    }

    fn new_pool(
        &self,
        addr: SocketAddr,
        version: HttpVersion,
        mesh: Option<&Arc<str>>,
    ) -> Arc<EndpointPool> {
        Arc::new(EndpointPool {
            addr,
            version,
            mesh: mesh.cloned(),
            tls: self.tls.clone(),
            direction: self.direction,
            settings: self.settings,
            metrics: self.metrics.clone(),
            reused: self.metrics.pool_checkout(self.direction, addr, "reused"),
            opened: self.metrics.pool_checkout(self.direction, addr, "new"),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            h2_connect: tokio::sync::Mutex::new(()),
        })
    }

    /// Close idle connections past the idle timeout and forget pools that
    /// nobody references and that hold nothing.
    pub fn reap(&self) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        endpoints.retain(|_, pool| {
            pool.reap();
            Arc::strong_count(pool) > 1 || !pool.is_empty()
        });
        drop(endpoints);
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.retain(|weak| match weak.upgrade() {
            Some(pool) => {
                pool.reap();
                true
            }
            None => false,
        });
    }

    /// Run [`Pools::reap`] periodically until the pools are dropped.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = (self.settings.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(pools) => pools.reap(),
                    None => return,
                }
            }
        });
    }
}

struct IdleH1 {
    sender: http1::SendRequest<SentBody>,
    since: Instant,
}

/// Connections to one endpoint in one HTTP version.
pub struct EndpointPool {
    addr: SocketAddr,
    version: HttpVersion,
    /// The identity the endpoint must prove; connections are mTLS when set.
    mesh: Option<Arc<str>>,
    tls: Option<Arc<Tls>>,
    direction: Direction,
    settings: PoolSettings,
    metrics: Arc<Metrics>,
    reused: IntCounter,
    opened: IntCounter,
    idle: Mutex<Vec<IdleH1>>,
    h2: Mutex<Option<H2Sender>>,
    /// Held while an HTTP/2 connect is in flight, so callers share one.
    h2_connect: tokio::sync::Mutex<()>,
}

/// A connection checked out for one request.
pub struct Checkout {
    sender: Sender,
    pool: Arc<EndpointPool>,
    reused: bool,
}

enum Sender {
    H1(http1::SendRequest<SentBody>),
    H2(H2Sender),
}

/// A request that failed before it was written, handed back for a retry.
pub struct NotSent(pub Request<UpstreamBody>);

impl EndpointPool {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Plain (not meshed) HTTP/2: a failure may be an HTTP/1-only upstream.
    pub fn plain_http2(&self) -> bool {
        self.version == HttpVersion::Http2 && self.mesh.is_none()
    }

    fn is_empty(&self) -> bool {
        self.idle.lock().map(|i| i.is_empty()).unwrap_or(true)
            && self.h2.lock().map(|h| h.is_none()).unwrap_or(true)
    }

    fn reap(&self) {
        let timeout = self.settings.idle_timeout;
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
        }
        if let Ok(mut h2) = self.h2.lock() {
            if h2.as_ref().is_some_and(|s| s.is_closed()) {
                *h2 = None;
            }
        }
    }

    /// Take a connection: a ready idle one, the shared HTTP/2 one, or a new
    /// one. `dedicated` always opens a fresh HTTP/1 connection that is
    /// never pooled (for upgrades, which take the connection over).
    pub async fn checkout(
        self: &Arc<Self>,
        connect_timeout: Duration,
        dedicated: bool,
        limit: Option<&ConnectionLimit>,
    ) -> Result<Checkout, PoolError> {
        // Connecting is boxed: its future (TCP, TLS, handshake) is several
        // KiB, and every request's future would otherwise carry (and move)
        // it although most requests reuse a connection.
        if dedicated {
            let sender = Box::pin(self.connect_h1(connect_timeout, limit)).await?;
            return Ok(self.checked_out(Sender::H1(sender), false));
        }
        match self.version {
            HttpVersion::Http1 => {
                while let Some(mut idle) = self.pop_idle() {
                    if idle.since.elapsed() >= self.settings.idle_timeout {
                        continue;
                    }
                    if idle.sender.ready().await.is_ok() {
                        return Ok(self.checked_out(Sender::H1(idle.sender), true));
                    }
                }
                let sender = Box::pin(self.connect_h1(connect_timeout, limit)).await?;
                Ok(self.checked_out(Sender::H1(sender), false))
            }
            HttpVersion::Http2 => {
                if let Some(sender) = self.shared_h2() {
                    return Ok(self.checked_out(Sender::H2(sender), true));
                }
                let _connecting = self.h2_connect.lock().await;
                if let Some(sender) = self.shared_h2() {
                    return Ok(self.checked_out(Sender::H2(sender), true));
                }
                let sender = Box::pin(self.connect_h2(connect_timeout, limit)).await?;
                if let Ok(mut h2) = self.h2.lock() {
                    *h2 = Some(sender.clone());
                }
                Ok(self.checked_out(Sender::H2(sender), false))
            }
        }
    }

    /// A connection for a request that a reused one handed back unsent:
    /// a fresh HTTP/1 connection, or the endpoint's HTTP/2 connection (a
    /// new one, unless another request has opened it already).
    pub async fn checkout_fresh(
        self: &Arc<Self>,
        connect_timeout: Duration,
        limit: Option<&ConnectionLimit>,
    ) -> Result<Checkout, PoolError> {
        let http1 = self.version == HttpVersion::Http1;
        self.checkout(connect_timeout, http1, limit).await
    }

    /// A connection slot under `limit`, when there is one.
    fn slot(&self, limit: Option<&ConnectionLimit>) -> Result<Option<ConnectionSlot>, PoolError> {
        match limit {
            None => Ok(None),
            Some(limit) => limit
                .acquire()
                .map(Some)
                .ok_or(PoolError::TooManyConnections),
        }
    }

    fn checked_out(self: &Arc<Self>, sender: Sender, reused: bool) -> Checkout {
        if reused {
            self.reused.inc();
        } else {
            self.opened.inc();
        }
        Checkout {
            sender,
            pool: self.clone(),
            reused,
        }
    }

    fn pop_idle(&self) -> Option<IdleH1> {
        self.idle.lock().ok()?.pop()
    }

    fn shared_h2(&self) -> Option<H2Sender> {
        let h2 = self.h2.lock().ok()?;
        h2.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn checkin(&self, sender: http1::SendRequest<SentBody>) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.settings.max_idle_per_endpoint {
                idle.push(IdleH1 {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    async fn open(
        &self,
        connect_timeout: Duration,
    ) -> Result<(TokioIo<CountedIo<tokio::net::TcpStream>>, TcpMetrics), PoolError> {
        let stream =
            socket::connect(self.addr, connect_timeout, self.settings.tcp_keepalive).await?;
        let status = TlsStatus::NoIdentity("not_meshed");
        let tcp = self
            .metrics
            .tcp_connection(self.direction, "dst", self.addr, &status);
        let io = tcp.counted(stream, Bytes::new());
        Ok((TokioIo::new(io), tcp))
    }

    async fn connect_h1(
        &self,
        connect_timeout: Duration,
        limit: Option<&ConnectionLimit>,
    ) -> Result<http1::SendRequest<SentBody>, PoolError> {
        let slot = self.slot(limit)?;
        // The metrics guard (and the slot) live as long as the connection task.
        let (io, tcp) = self.open(connect_timeout).await?;
        let guard = (tcp, slot);
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| PoolError::Handshake {
                addr: self.addr,
                source: source.into(),
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(
        &self,
        connect_timeout: Duration,
        limit: Option<&ConnectionLimit>,
    ) -> Result<H2Sender, PoolError> {
        let slot = self.slot(limit)?;
        match (&self.mesh, &self.tls) {
            (Some(identity), Some(tls)) => {
                let (io, tcp) = self.open_mesh(connect_timeout, tls, identity).await?;
                self.handshake_h2(io, (tcp, slot)).await
            }
            (Some(identity), None) => Err(PoolError::Tls {
                addr: self.addr,
                reason: format!(
                    "the cluster expects identity '{identity}' but this proxy has no identity configured"
                ),
            }),
            (None, _) => {
                let (io, tcp) = self.open(connect_timeout).await?;
                self.handshake_h2(io, (tcp, slot)).await
            }
        }
    }

    /// Open an mTLS connection to a meshed endpoint, verifying its identity.
    async fn open_mesh(
        &self,
        connect_timeout: Duration,
        tls: &Tls,
        identity: &Arc<str>,
    ) -> Result<
        (
            TokioIo<CountedIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>,
            TcpMetrics,
        ),
        PoolError,
    > {
        let stream =
            socket::connect(self.addr, connect_timeout, self.settings.tcp_keepalive).await?;
        let stream = crate::tls::connect(tls, identity, MeshProtocol::Http2, self.addr, stream)
            .await
            .map_err(|reason| PoolError::Tls {
                addr: self.addr,
                reason,
            })?;
        let status = TlsStatus::Mesh {
            client_id: None,
            server_id: Some(identity.clone()),
        };
        let tcp = self
            .metrics
            .tcp_connection(self.direction, "dst", self.addr, &status);
        let io = tcp.counted(stream, Bytes::new());
        Ok((TokioIo::new(io), tcp))
    }

    async fn handshake_h2<I>(
        &self,
        io: TokioIo<I>,
        guard: (TcpMetrics, Option<ConnectionSlot>),
    ) -> Result<H2Sender, PoolError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // The metrics guard lives as long as the connection task.
        h2::handshake(io.into_inner(), self.addr, guard)
            .await
            .map_err(|source| PoolError::Handshake {
                addr: self.addr,
                source: source.into(),
            })
    }
}

impl Checkout {
    /// Whether this connection had carried requests before.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Send `request`. A pooled HTTP/1 connection that turns out closed
    /// hands the unsent request back as [`NotSent`] so the caller can try a
    /// fresh connection. The response body returns the connection to the
    /// pool when it ends (`pool_on_end`).
    pub async fn send(
        self,
        request: Request<UpstreamBody>,
        pool_on_end: bool,
    ) -> Result<Response<PooledBody>, (UpstreamError, Option<NotSent>)> {
        match self.sender {
            Sender::H2(sender) => match sender.send(request).await {
                Ok(response) => {
                    Ok(response.map(|body| PooledBody::new(Received::Http2(body), None)))
                }
                Err((e, unsent)) => Err((e, unsent.map(NotSent))),
            },
            Sender::H1(mut sender) => {
                let written = Arc::new(AtomicBool::new(false));
                let request = request.map(|body| SentBody::new(body, written.clone()));
                let result = sender.try_send_request(request).await;
                match result {
                    Ok(response) => {
                        let checkin = pool_on_end.then(|| Checkin {
                            sender,
                            pool: self.pool.clone(),
                            written,
                        });
                        Ok(response.map(|body| PooledBody::new(Received::Http1(body), checkin)))
                    }
                    Err(mut e) => {
                        let unsent = e
                            .take_message()
                            .map(|req| NotSent(req.map(|body| body.inner)));
                        Err((e.into_error().into(), unsent))
                    }
                }
            }
        }
    }
}

/// A request body on its way to an HTTP/1 upstream, noting in `written`
/// when hyper has taken its last frame.
pub struct SentBody {
    inner: UpstreamBody,
    written: Arc<AtomicBool>,
}

impl SentBody {
    fn new(inner: UpstreamBody, written: Arc<AtomicBool>) -> SentBody {
        if inner.is_end_stream() {
            written.store(true, Ordering::Release);
        }
        SentBody { inner, written }
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = crate::http::authority::body_cap::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.written.store(true, Ordering::Release),
            Some(Ok(_)) if this.inner.is_end_stream() => {
                this.written.store(true, Ordering::Release)
            }
            Some(_) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What returns an HTTP/1 connection to its pool when a response ends.
struct Checkin {
    sender: http1::SendRequest<SentBody>,
    pool: Arc<EndpointPool>,
    /// Set once the request body was fully handed to the connection.
    written: Arc<AtomicBool>,
}

/// An upstream response body that puts its HTTP/1 connection back in the
/// pool once the body has been read to its end, if the request body was
/// fully written by then; otherwise the connection is let go, and closes
/// when the slow body is done (it is never handed to another request).
pub struct PooledBody {
    inner: Received,
    checkin: Option<Checkin>,
}

/// A response body as the upstream's HTTP version delivers it.
enum Received {
    Http1(Incoming),
    Http2(H2Body),
}

impl PooledBody {
    fn new(inner: Received, checkin: Option<Checkin>) -> Self {
        let mut body = PooledBody { inner, checkin };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    /// A response body on no pooled connection, for the stack's unit tests.
    #[cfg(test)]
    pub(crate) fn unpooled(inner: Incoming) -> Self {
        PooledBody::new(Received::Http1(inner), None)
    }

    fn finish(&mut self) {
        let Some(checkin) = self.checkin.take() else {
            return;
        };
        if checkin.written.load(Ordering::Acquire) {
            checkin.pool.checkin(checkin.sender);
        } else {
            tracing::debug!(addr = %checkin.pool.addr, "response ended before the request body was written; not pooling the connection");
        }
    }
}

impl Body for Received {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            Received::Http1(body) => Pin::new(body).poll_frame(cx).map_err(UpstreamError::from),
            Received::Http2(body) => Pin::new(body).poll_frame(cx).map_err(UpstreamError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Received::Http1(body) => body.is_end_stream(),
            Received::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Http1(body) => body.size_hint(),
            Received::Http2(body) => body.size_hint(),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.finish(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.finish(),
            Some(Ok(_)) => {}
            // A broken body means a broken connection: never pool it.
            Some(Err(_)) => this.checkin = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
