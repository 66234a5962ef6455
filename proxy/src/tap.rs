//! `GET /tap` on the admin port: a live stream of the requests flowing
//! through the proxy, one JSON line per request when its response ends
//! (metadata only, never bodies), for requests matching the query's
//! filters ([`crate::observe::filter`] documents them and their limits).
//!
//! The stream ends after `limit` records, after `seconds`, or when the
//! client goes away; each of these closes the tap, so the data path stops
//! paying for it. Several taps can be open at once. A reader that falls
//! behind loses records (counted in `tap_dropped_total`) once its queue
//! of [`QUEUE`] records is full; the data path never waits for it.
//! Taps are served to loopback clients only: paths and identities are
//! not for the network to read.

use crate::observe::filter::TapQuery;
use crate::observe::{format, Observers, Record, TapGuard};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio::time::Sleep;

/// Records queued per tap before newer ones are dropped.
pub const QUEUE: usize = 256;

/// Lines sent in one write at most, when many are queued at once.
const BATCH: usize = 64;

/// An admin response: bytes in memory, or a tap's stream.
pub type AdminBody = Either<Full<Bytes>, TapBody>;

/// Answer `GET /tap?...`: an error in plain text, or the tap's stream.
pub fn serve<B>(
    observers: &Arc<Observers>,
    peer: SocketAddr,
    req: &Request<B>,
) -> Response<AdminBody> {
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    if !peer.ip().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "tap is served to loopback only\n".into(),
        );
    }
    let query = match TapQuery::parse(req.uri().query()) {
        Ok(query) => query,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad tap query: {e}\n")),
    };
    let (guard, rx) = observers.open_tap(query.filter, query.limit, QUEUE);
    let body = TapBody {
        rx,
        remaining: query.limit,
        deadline: Box::pin(tokio::time::sleep(query.duration)),
        _guard: guard,
    };
    let mut response = Response::new(Either::Right(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

fn text(status: StatusCode, message: String) -> Response<AdminBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(message))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A tap's response body: JSON lines until its limit or deadline. When
/// hyper drops it (done, or the client went away) the guard closes the tap.
pub struct TapBody {
    rx: mpsc::Receiver<Arc<Record>>,
    remaining: u64,
    deadline: Pin<Box<Sleep>>,
    _guard: TapGuard,
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 || this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        let first = match this.rx.poll_recv(cx) {
            Poll::Ready(Some(record)) => record,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let mut lines = format::json(&first);
        this.remaining -= 1;
        let mut batched = 1;
        while this.remaining > 0 && batched < BATCH {
            let Ok(record) = this.rx.try_recv() else {
                break;
            };
            lines.push_str(&format::json(&record));
            this.remaining -= 1;
            batched += 1;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(lines)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
