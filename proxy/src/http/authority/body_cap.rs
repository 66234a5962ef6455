//! `proxy.http.max_request_body_bytes` for bodies that do not declare
//! their length: a chunked HTTP/1 body, HTTP/2 DATA frames without
//! `content-length`. [`super::admit`] refuses a declared length over the
//! cap before anything is sent; a streamed body can only be counted as it
//! arrives, so [`Capped`] wraps the client's body and fails it with
//! [`OverCap`] at the first frame that takes it past the cap (that frame
//! is never forwarded).
//!
//! Failing the body, rather than ending it early, is what keeps the
//! upstream from taking a truncated body for a whole one: hyper's client
//! stops writing and closes (HTTP/1) or resets (HTTP/2) the upstream
//! stream. Whoever sends the request learns that the cap, not the
//! upstream, broke the exchange from [`over_cap`] (HTTP/1: hyper hands
//! the body's error back as the cause) or from the body's [`Tripped`]
//! flag (HTTP/2: hyper resets the stream and reports only the reset), and
//! answers 413 `body-too-large` when no response has started, or resets
//! the client's stream when one has; either way it is the client's fault
//! (counted in `http_proxy_errors_total`, never in the endpoint's
//! outcomes). The 413 is counted where it is answered; a body that goes
//! over once its response is on the way to the client is counted by the
//! callback [`Tripped::answered`] left for it, exactly once whichever of
//! the two happens first. Depends on `http-body` only.

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

/// What a [`Capped`] body's errors are: [`OverCap`] or the inner body's.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A request body that fails once more than `max` bytes of data went by.
#[derive(Debug)]
pub struct Capped<B> {
    inner: B,
    /// Data bytes still allowed.
    left: u64,
    max: u64,
    /// Set when the cap fails the body; only allocated when there is a cap.
    tripped: Option<Arc<Flag>>,
}

/// Told when a body goes over its cap after its response was answered.
pub type Late = Box<dyn FnOnce(OverCap) + Send>;

/// [`Flag::state`] bits.
const TRIPPED: u8 = 1;
const ANSWERED: u8 = 2;

/// Whether the body went over, and whether its response left already.
#[derive(Default)]
struct Flag {
    state: AtomicU8,
    late: Mutex<Option<Late>>,
}

impl std::fmt::Debug for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flag")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl Flag {
    /// The body went over `max`: tell whoever the answered response left.
    fn trip(&self, max: u64) {
        if self.state.fetch_or(TRIPPED, Ordering::AcqRel) & (TRIPPED | ANSWERED) == ANSWERED {
            if let Some(late) = self.late.lock().unwrap_or_else(|p| p.into_inner()).take() {
                late(OverCap { max });
            }
        }
    }
}

/// Whether a [`Capped`] body went over its cap, readable after the body
/// itself was handed to hyper.
#[derive(Debug, Clone, Default)]
pub struct Tripped(Option<(Arc<Flag>, u64)>);

impl Tripped {
    /// The cap the body went over, if it did.
    pub fn over(&self) -> Option<OverCap> {
        let (flag, max) = self.0.as_ref()?;
        (flag.state.load(Ordering::Acquire) & TRIPPED != 0).then_some(OverCap { max: *max })
    }

    /// The body's response is on its way to the client, so going over
    /// can no longer be answered with 413: `late` is called (once) when
    /// the body goes over, at once if it already has.
    pub fn answered(&self, late: Late) {
        let Some((flag, max)) = self.0.as_ref() else {
            return;
        };
        *flag.late.lock().unwrap_or_else(|p| p.into_inner()) = Some(late);
        if flag.state.fetch_or(ANSWERED, Ordering::AcqRel) & TRIPPED != 0 {
            if let Some(late) = flag.late.lock().unwrap_or_else(|p| p.into_inner()).take() {
                late(OverCap { max: *max });
            }
        }
    }
}

/// The body went over `proxy.http.max_request_body_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body is over the {max} bytes proxy.http.max_request_body_bytes allows")]
pub struct OverCap {
    pub max: u64,
}

impl<B> Capped<B> {
    /// `body`, failing past `max` data bytes (`None`: never).
    pub fn new(body: B, max: Option<u64>) -> Capped<B> {
        Capped {
            inner: body,
            left: max.unwrap_or(u64::MAX),
            max: max.unwrap_or(u64::MAX),
            tripped: max.map(|_| Arc::new(Flag::default())),
        }
    }

    /// Fail past `max` data bytes from now on (before any was read).
    pub fn set_max(&mut self, max: u64) {
        self.left = max;
        self.max = max;
        self.tripped = Some(Arc::new(Flag::default()));
    }

    /// The flag that says whether this body went over its cap.
    pub fn tripped(&self) -> Tripped {
        Tripped(self.tripped.clone().map(|flag| (flag, self.max)))
    }
}

impl<B> Body for Capped<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.remaining() as u64;
            match self.left.checked_sub(len) {
                Some(left) => self.left = left,
                None => {
                    let max = self.max;
                    if let Some(tripped) = &self.tripped {
                        tripped.trip(max);
                    }
                    return Poll::Ready(Some(Err(Box::new(OverCap { max }))));
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The cap, when it is what broke `error` (looked for down its causes:
/// hyper reports a failed request body as its cause).
pub fn over_cap(error: &(dyn StdError + 'static)) -> Option<OverCap> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(over) = e.downcast_ref::<OverCap>() {
            return Some(*over);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    fn chunks(
        sizes: &[usize],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin>
    {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = sizes
            .iter()
            .map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; *n]))))
            .collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", http::HeaderValue::from_static("1"));
        frames.push(Ok(Frame::trailers(trailers)));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
            .block_on(f)
    }

    #[test]
    fn a_body_up_to_the_cap_passes_whole_with_its_trailers() {
        let body = Capped::new(chunks(&[400, 400, 200]), Some(1000));
        let collected = block_on(body.collect()).unwrap_or_else(|e| panic!("{e}"));
        assert!(collected.trailers().is_some());
        assert_eq!(collected.to_bytes().len(), 1000);
        let body = Capped::new(chunks(&[1 << 20]), None);
        assert!(block_on(body.collect()).is_ok());
    }

    #[test]
    fn the_frame_that_goes_over_fails_the_body_and_is_not_passed_on() {
        let mut body = Capped::new(chunks(&[600, 600]), Some(1000));
        let tripped = body.tripped();
        let first = block_on(body.frame());
        let first = first.and_then(Result::ok).and_then(|f| f.into_data().ok());
        assert_eq!(first.map(|d| d.len()), Some(600));
        let second = block_on(body.frame());
        let err = match second {
            Some(Err(e)) => e,
            other => panic!("expected the cap, got {other:?}"),
        };
        assert_eq!(over_cap(&*err), Some(OverCap { max: 1000 }));
        assert_eq!(tripped.over(), Some(OverCap { max: 1000 }));
        assert_eq!(Capped::new(chunks(&[1]), None).tripped().over(), None);
    }

    #[test]
    fn going_over_after_the_answer_is_told_once_whichever_comes_first() {
        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let late = |told: &Arc<std::sync::atomic::AtomicUsize>| -> Late {
            let told = told.clone();
            Box::new(move |over: OverCap| {
                assert_eq!(over.max, 1000);
                told.fetch_add(1, Ordering::SeqCst);
            })
        };
        // Answered, then over.
        let body = Capped::new(chunks(&[600, 600]), Some(1000));
        body.tripped().answered(late(&told));
        assert_eq!(told.load(Ordering::SeqCst), 0);
        let _ = block_on(body.collect());
        assert_eq!(told.load(Ordering::SeqCst), 1);
        // Over, then answered (the response was already under way).
        let body = Capped::new(chunks(&[600, 600]), Some(1000));
        let tripped = body.tripped();
        let _ = block_on(body.collect());
        tripped.answered(late(&told));
        assert_eq!(told.load(Ordering::SeqCst), 2);
        // Never over: never told.
        let body = Capped::new(chunks(&[600]), Some(1000));
        body.tripped().answered(late(&told));
        let _ = block_on(body.collect());
        assert_eq!(told.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn over_cap_is_found_under_other_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("sending failed")]
        struct Wrapper(#[source] BoxError);
        let wrapped = Wrapper(Box::new(OverCap { max: 5 }));
        assert_eq!(over_cap(&wrapped), Some(OverCap { max: 5 }));
        let other = Wrapper("something else".into());
        assert_eq!(over_cap(&other), None);
    }
}
