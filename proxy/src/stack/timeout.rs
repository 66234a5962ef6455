//! Timeouts to response headers, counted from when the request body has
//! been sent (an upload slower than the timeout is not cut off; a server
//! that answers before the body ends is answered at once). While the body
//! is still going up, the same limit applies to its progress: an upstream
//! that takes no body frame for the whole limit (it stopped reading) is
//! timed out as if it had stopped answering.
//!
//! [`Timeout`] is the route's: the route's `timeout` and the client's
//! `grpc-timeout`, whichever is shorter, over every try together. It also
//! tells the tries below what each may take ([`super::Req::try_timeout`]):
//! the retry policy's `per_try_timeout`, or no limit of their own when the
//! route's bounds them; with neither, the cluster's `response_timeout`
//! applies per try (in [`super::client`], through [`deadline`]).

use super::{Req, ReqState, Result, Rsp};
use crate::http::error::ProxyError;
use crate::http::vhost::Route;
use pin_project_lite::pin_project;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::Service;

/// Looked up by a constant name: a `&str` would be parsed on every request.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    route: Option<Arc<Route>>,
    /// Named in the error: where the request was headed.
    addr: SocketAddr,
}

pub fn layer<S>(
    route: Option<Arc<Route>>,
    addr: SocketAddr,
) -> impl tower::Layer<S, Service = Timeout<S>> + Clone {
    tower::layer::layer_fn(move |inner| Timeout {
        inner,
        route: route.clone(),
        addr,
    })
}

impl<S> Service<Req> for Timeout<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError>,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = Deadline<'static, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        let route_timeout = self.route.as_ref().and_then(|r| r.timeout);
        let overall = match (route_timeout, grpc_timeout(&req.http)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let per_try = self
            .route
            .as_ref()
            .and_then(|r| r.retry.as_ref())
            .and_then(|p| p.per_try_timeout);
        if per_try.is_some() || overall.is_some() {
            req.try_timeout = Some(per_try);
        }
        let state = req.state.clone();
        deadline(self.inner.call(req), &state, overall, self.addr, None)
    }
}

/// `future`, failed with a response timeout once `limit` has passed
/// since the request body was sent (no limit: `future` as it is). With
/// `spare`, the timer is borrowed from there and given back at the end.
pub fn deadline<'a, F>(
    future: F,
    state: &Arc<ReqState>,
    limit: Option<Duration>,
    addr: SocketAddr,
    spare: Option<&'a SpareTimer>,
) -> Deadline<'a, F> {
    let timer = match limit {
        None => Timer::Off,
        Some(limit) if state.body_sent() => Timer::Running {
            sleep: sleep_for(spare, limit),
        },
        Some(limit) => {
            let state = state.clone();
            Timer::Waiting {
                start: Box::pin(async move { body_sent_or_stalled(&state, limit).await }),
                limit,
            }
        }
    };
    Deadline {
        future,
        timer,
        limit: limit.unwrap_or_default(),
        addr,
        spare,
    }
}

/// A connection's response timer, kept between its requests. A tokio
/// timer costs a registration in the timer wheel when first polled and a
/// removal when dropped, each under the driver's lock; one that is reset
/// to a later deadline while still registered only moves an atomic. So
/// each try of a connection borrows this one (an HTTP/1 connection has
/// one request at a time; concurrent HTTP/2 streams beyond the first make
/// their own).
#[derive(Default)]
pub struct SpareTimer(std::sync::Mutex<Option<Pin<Box<Sleep>>>>);

impl SpareTimer {
    fn take(&self) -> Option<Pin<Box<Sleep>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether a timer is waiting here to be borrowed.
    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn give_back(&self, sleep: Pin<Box<Sleep>>) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(sleep);
        }
    }
}

/// A timer that fires `limit` from now: the spare one reset, or a new one.
fn sleep_for(spare: Option<&SpareTimer>, limit: Duration) -> Pin<Box<Sleep>> {
    let at = tokio::time::Instant::now() + limit;
    match spare.and_then(SpareTimer::take) {
        Some(mut sleep) => {
            sleep.as_mut().reset(at);
            sleep
        }
        None => Box::pin(tokio::time::sleep_until(at)),
    }
}

enum Timer {
    Off,
    /// The body is still being sent: the clock has not started
    /// (`start` is true when the body stalled instead).
    Waiting {
        start: Pin<Box<dyn Future<Output = bool> + Send>>,
        limit: Duration,
    },
    Running {
        sleep: Pin<Box<Sleep>>,
    },
}

pin_project! {
    pub struct Deadline<'a, F> {
        #[pin]
        future: F,
        timer: Timer,
        limit: Duration,
        addr: SocketAddr,
        spare: Option<&'a SpareTimer>,
    }

    impl<'a, F> PinnedDrop for Deadline<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let (Some(spare), Timer::Running { .. }) = (this.spare, &*this.timer) {
                if let Timer::Running { sleep } = std::mem::replace(this.timer, Timer::Off) {
                    spare.give_back(sleep);
                }
            }
        }
    }
}

impl<F: Future<Output = Result>> Future for Deadline<'_, F> {
    type Output = Result;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result> {
        let this = self.project();
        if let Poll::Ready(result) = this.future.poll(cx) {
            return Poll::Ready(result);
        }
        loop {
            match this.timer {
                Timer::Off => return Poll::Pending,
                Timer::Waiting { start, limit } => {
                    if ready!(start.as_mut().poll(cx)) {
                        // The body stalled for a whole limit: that is the timeout.
                        return Poll::Ready(Err(ProxyError::ResponseTimeout {
                            addr: *this.addr,
                            after: *this.limit,
                        }));
                    }
                    let sleep = sleep_for(*this.spare, *limit);
                    *this.timer = Timer::Running { sleep };
                }
                Timer::Running { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    return Poll::Ready(Err(ProxyError::ResponseTimeout {
                        addr: *this.addr,
                        after: *this.limit,
                    }));
                }
            }
        }
    }
}

/// Completes with false once the request body has been sent, or with
/// true when a whole `limit` passed without a frame of it going upstream.
async fn body_sent_or_stalled(state: &ReqState, limit: Duration) -> bool {
    loop {
        let seen = state.body_progress();
        tokio::select! {
            _ = state.wait_body_sent() => return false,
            _ = tokio::time::sleep(limit) => {
                if state.body_progress() == seen && !state.body_sent() {
                    return true;
                }
            }
        }
    }
}

/// A gRPC client's deadline (`grpc-timeout: 100m`), if it sent one.
pub fn grpc_timeout<B>(req: &http::Request<B>) -> Option<Duration> {
    let value = req.headers().get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    (!timeout.is_zero()).then_some(timeout)
}
