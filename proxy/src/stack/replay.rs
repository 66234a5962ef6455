//! A request body that can be sent more than once: the client's stream
//! goes upstream as it arrives (nothing is read whole before the first
//! try), and what passes is kept, up to the retry policy's `max_body`, so
//! a retry sends it again and then goes on reading where the last try
//! stopped. Past `max_body` the copy is dropped and the request can no
//! longer be retried; the stream itself goes on unharmed.

use crate::http::client_body::ClientBody;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// What every try of one request shares.
struct Shared<B> {
    /// Data frames seen so far, in order (empty once capped).
    kept: Vec<Bytes>,
    kept_len: usize,
    max: usize,
    /// More than `max` passed: nothing can be replayed any more.
    capped: bool,
    /// The stream declared a length within `max`: it cannot cap later.
    bounded: bool,
    trailers: Option<HeaderMap>,
    /// The client's stream ended; `kept` (and `trailers`) is all of it.
    complete: bool,
    /// The client's stream, while no try is reading it.
    source: Option<B>,
    /// A try waiting for the one that holds the stream to read on or let go.
    waiting: Option<std::task::Waker>,
}

impl<B> Shared<B> {
    fn wake(&mut self) {
        if let Some(waker) = self.waiting.take() {
            waker.wake();
        }
    }
}

/// One try's view of the body.
pub struct ReplayBody<B = ClientBody> {
    shared: Arc<Mutex<Shared<B>>>,
    /// The next kept frame this try sends.
    next: usize,
    /// The client's stream, while this try reads it.
    source: Option<B>,
    trailers_sent: bool,
}

impl<B: Body + Unpin> ReplayBody<B> {
    /// Keep up to `max` bytes of `source` for replays.
    pub fn new(source: B, max: usize) -> ReplayBody<B> {
        let complete = source.is_end_stream();
        let bounded = source.size_hint().upper().is_some_and(|n| n <= max as u64);
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                kept: Vec::new(),
                kept_len: 0,
                max,
                capped: false,
                bounded,
                trailers: None,
                complete,
                source: Some(source),
                waiting: None,
            })),
            next: 0,
            source: None,
            trailers_sent: false,
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared<B>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new try from the start of the body.
    pub fn replay(&self) -> ReplayBody<B> {
        ReplayBody {
            shared: self.shared.clone(),
            next: 0,
            source: None,
            trailers_sent: false,
        }
    }

    /// Whether a new try could send the whole body: nothing was dropped,
    /// and nothing will be (the stream ended, or declared a length within
    /// the limit). The rest of the stream may still be held by the last
    /// try, which lets go of it when hyper is done with that try; the new
    /// one waits for it.
    pub fn can_replay(&self) -> bool {
        let shared = self.shared();
        !shared.capped && (shared.complete || shared.bounded)
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let mut shared = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        if !shared.capped {
            if let Some(data) = shared.kept.get(this.next) {
                this.next += 1;
                return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
            }
        }
        if shared.complete {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        if this.source.is_none() {
            this.source = shared.source.take();
        }
        let Some(source) = this.source.as_mut() else {
            // The last try still holds the stream: wait for it to read on
            // or let go. (A capped body is never retried.)
            shared.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let frame = match Pin::new(source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !shared.capped {
                        shared.kept_len += data.len();
                        if shared.kept_len > shared.max {
                            shared.capped = true;
                            shared.kept = Vec::new();
                        } else {
                            shared.kept.push(data.clone());
                            this.next += 1;
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    shared.complete = true;
                    this.trailers_sent = true;
                }
                if this.source.as_ref().is_some_and(|s| s.is_end_stream()) {
                    shared.complete = true;
                }
            }
            None => shared.complete = true,
            // A broken client stream cannot be replayed either.
            Some(Err(_)) => shared.capped = true,
        }
        shared.wake();
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.shared();
        if shared.complete {
            let kept_sent = shared.capped || self.next >= shared.kept.len();
            return kept_sent && (self.trailers_sent || shared.trailers.is_none());
        }
        false
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.shared();
        match (&shared.source, &self.source) {
            (Some(source), _) | (None, Some(source)) if self.next >= shared.kept.len() => {
                source.size_hint()
            }
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        // Hand the stream back for the next try to go on reading.
        if let Some(source) = self.source.take() {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.source = Some(source);
            shared.wake();
        }
    }
}
