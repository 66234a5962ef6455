//! The L7 data path as tower layers. Each direction assembles its stack in
//! one place ([`crate::outbound::stack`], [`crate::inbound::stack`]); this
//! module holds what every layer shares: the request type that flows down
//! the stack ([`Req`]), its per-request state ([`ReqState`]), and the two
//! small futures most layers return ([`Step`], [`Then`]), so a layer that
//! only looks at a request on its way down or a response on its way up
//! allocates nothing.
//!
//! Layers, outermost first: [`rescue`], [`admit`], [`trace`], [`request_metrics`],
//! [`observe`], [`authorize`] (inbound), [`router`]; per route [`fault`],
//! [`rate_limit`], [`timeout`], [`retry`], [`split`]; per cluster
//! [`breaker`], [`balance`]; per endpoint [`load`], [`endpoint_metrics`],
//! [`headers`], [`client`].

pub mod admit;
pub mod authorize;
pub mod balance;
pub mod breaker;
pub mod client;
pub mod endpoint_metrics;
pub mod fault;
pub mod headers;
pub mod load;
pub mod observe;
pub mod rate_limit;
pub mod replay;
pub mod request_metrics;
pub mod rescue;
pub mod retry;
pub mod router;
pub mod split;
pub mod timeout;
pub mod trace;

use crate::http::body::{ProxyBody, UpstreamBody};
use crate::http::error::ProxyError;
use crate::metrics::RequestMetrics;
use crate::registry::ClusterState;
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What every layer below [`rescue`] answers.
pub type Rsp = Response<ProxyBody>;
pub type Result = std::result::Result<Rsp, ProxyError>;
pub type BoxFuture = Pin<Box<dyn Future<Output = Result> + Send>>;

/// A request on its way down the stack: the HTTP request and what the
/// layers learn about it.
pub struct Req {
    /// Boxed: a `Req` moves into every layer's call and future, and a
    /// pointer is cheaper to move than the request's 320 bytes.
    pub http: Box<Request<UpstreamBody>>,
    pub state: Arc<ReqState>,
    /// The time one try may wait for response headers, set by the route
    /// (`None`: no per-try limit, the route's own timeout bounds it);
    /// unset, the cluster's `response_timeout` applies.
    pub try_timeout: Option<Option<Duration>>,
    /// For a try whose gRPC status a retry decision needs: how much of
    /// the response may be read ahead to find it in the trailers.
    pub read_ahead: Option<usize>,
    /// A first try on a route that retries: it pays into its cluster's
    /// retry budget (see [`split`]).
    pub deposit: bool,
    /// On a route that retries: the layers below note where each try
    /// goes ([`ReqState::set_upstream`]) for the retry policy to read.
    pub retrying: bool,
}

impl Req {
    pub fn new(mut http: Request<UpstreamBody>) -> Req {
        let state = Arc::new(ReqState::new());
        http.body_mut().report_to(state.clone());
        Req {
            http: Box::new(http),
            state,
            try_timeout: None,
            read_ahead: None,
            deposit: false,
            retrying: false,
        }
    }
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Req")
            .field("method", self.http.method())
            .field("uri", self.http.uri())
            .finish()
    }
}

/// Per-request state shared by every layer and every try.
pub struct ReqState {
    pub started: Instant,
    /// The metric handles the request counts under, decided by the first
    /// layer that knows its labels (an endpoint, a local answer).
    pub metrics: OnceLock<Arc<RequestMetrics>>,
    /// The `route` label of the L7 route that matched, if one did.
    pub route: OnceLock<Arc<str>>,
    /// Whether the client's streamed body went over the configured cap.
    pub body_cap: OnceLock<crate::http::authority::body_cap::Tripped>,
    /// What the observe layer needs counted (retries, body bytes,
    /// connect time), when the request is being recorded.
    pub tally: crate::observe::Tally,
    /// The cluster and endpoint of the latest try.
    upstream: Mutex<(Option<Arc<ClusterState>>, Option<SocketAddr>)>,
    /// Set once the request body has been sent whole (timeouts start then).
    body_sent: AtomicBool,
    body_sent_notify: Notify,
    /// Frames of the request body sent so far: while the body is still
    /// being sent, progress is what keeps a timeout from starting.
    body_progress: AtomicU64,
}

impl ReqState {
    pub fn new() -> ReqState {
        ReqState {
            started: Instant::now(),
            metrics: OnceLock::new(),
            route: OnceLock::new(),
            body_cap: OnceLock::new(),
            tally: Default::default(),
            upstream: Mutex::new((None, None)),
            body_sent: AtomicBool::new(false),
            body_sent_notify: Notify::new(),
            body_progress: AtomicU64::new(0),
        }
    }

    /// Note where the latest try goes.
    pub fn set_upstream(&self, cluster: Option<&Arc<ClusterState>>, addr: Option<SocketAddr>) {
        let mut upstream = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cluster) = cluster {
            if !upstream.0.as_ref().is_some_and(|c| Arc::ptr_eq(c, cluster)) {
                upstream.0 = Some(cluster.clone());
            }
        }
        if addr.is_some() {
            upstream.1 = addr;
        }
    }

    /// The cluster and endpoint of the latest try.
    pub fn upstream(&self) -> (Option<Arc<ClusterState>>, Option<SocketAddr>) {
        self.upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cluster of the latest try.
    pub fn cluster(&self) -> Option<Arc<ClusterState>> {
        self.upstream().0
    }

    /// Note that the request body has been sent to its end.
    pub fn mark_body_sent(&self) {
        if !self.body_sent.swap(true, Ordering::AcqRel) {
            self.body_sent_notify.notify_waiters();
        }
    }

    /// Note that a frame of the request body went upstream.
    pub fn note_body_progress(&self) {
        self.body_progress.fetch_add(1, Ordering::Relaxed);
    }

    pub fn body_progress(&self) -> u64 {
        self.body_progress.load(Ordering::Relaxed)
    }

    pub fn body_sent(&self) -> bool {
        self.body_sent.load(Ordering::Acquire)
    }

    /// Completes once the request body has been sent.
    pub async fn wait_body_sent(&self) {
        loop {
            let notified = self.body_sent_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.body_sent() {
                return;
            }
            notified.await;
        }
    }
}

impl Default for ReqState {
    fn default() -> Self {
        ReqState::new()
    }
}

pin_project! {
    /// A layer's answer: the inner service's future, an answer known at
    /// once, or (rarely: a fault delay) a boxed future.
    #[project = StepProj]
    pub enum Step<F> {
        Inner { #[pin] future: F },
        Now { answer: Option<Result> },
        Boxed { future: BoxFuture },
    }
}

impl<F> Step<F> {
    pub fn inner(future: F) -> Step<F> {
        Step::Inner { future }
    }

    pub fn now(answer: Result) -> Step<F> {
        Step::Now {
            answer: Some(answer),
        }
    }

    pub fn fail(error: ProxyError) -> Step<F> {
        Step::now(Err(error))
    }
}

impl<F: Future<Output = Result>> Future for Step<F> {
    type Output = Result;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result> {
        match self.project() {
            StepProj::Inner { future } => future.poll(cx),
            StepProj::Now { answer } => Poll::Ready(
                answer
                    .take()
                    .unwrap_or_else(|| Err(ProxyError::Internal("answer polled twice"))),
            ),
            StepProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

/// Call `service`, made for this one request. Every layer of the stack is
/// always ready (limits fail fast rather than wait), so readiness is
/// checked once, without a waker, and the service is dropped once called:
/// unlike `oneshot`, the future does not carry it.
pub fn call_ready<S>(mut service: S, req: Req) -> Step<S::Future>
where
    S: tower::Service<Req, Response = Rsp, Error = ProxyError>,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => Step::inner(service.call(req)),
        Poll::Ready(Err(e)) => Step::fail(e),
        Poll::Pending => Step::fail(ProxyError::Internal("a stack layer was not ready")),
    }
}

/// What a layer does with the inner service's result on the way up.
pub trait Finish {
    fn finish(self, result: Result) -> Result;
}

pin_project! {
    /// The inner future, then `finish` on its result (exactly once; a
    /// future dropped before it completes drops `finish` unrun).
    pub struct Then<F, H> {
        #[pin]
        future: F,
        finish: Option<H>,
    }
}

impl<F, H> Then<F, H> {
    pub fn new(future: F, finish: H) -> Then<F, H> {
        Then {
            future,
            finish: Some(finish),
        }
    }
}

impl<F: Future<Output = Result>, H: Finish> Future for Then<F, H> {
    type Output = Result;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        Poll::Ready(match this.finish.take() {
            Some(finish) => finish.finish(result),
            None => result,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
