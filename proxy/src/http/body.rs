//! The body types strait sends: a body streamed from the other side
//! (frame by frame, trailers included), or a few bytes held in memory (a
//! response the proxy writes itself, or a request body buffered so it can
//! be replayed on a retry). An enum rather than a boxed trait object, so
//! the hot path allocates nothing for it.

use super::stream_end::Tracked;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A streamed body `B`, or bytes in memory, or frames already read from
/// a stream (held back for a retry decision) replayed before the rest of it.
pub enum StreamOrBytes<B> {
    Stream(B),
    Full(Option<Bytes>),
    Replayed {
        frames: std::collections::VecDeque<Frame<Bytes>>,
        rest: Option<B>,
    },
}

/// Every response body: the upstream's, or one the proxy wrote.
pub type ProxyBody = StreamOrBytes<Tracked>;

/// Every request body sent upstream: the client's stream, or bytes
/// buffered for replay.
pub type UpstreamBody = StreamOrBytes<Incoming>;

impl<B> StreamOrBytes<B> {
    pub fn text(text: impl Into<Bytes>) -> Self {
        StreamOrBytes::Full(Some(text.into()))
    }

    pub fn empty() -> Self {
        StreamOrBytes::Full(None)
    }
}

impl<B> Body for StreamOrBytes<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            StreamOrBytes::Stream(body) => Pin::new(body).poll_frame(cx),
            StreamOrBytes::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            StreamOrBytes::Replayed { frames, rest } => match frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => match rest {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    None => Poll::Ready(None),
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StreamOrBytes::Stream(body) => body.is_end_stream(),
            StreamOrBytes::Full(data) => data.is_none(),
            StreamOrBytes::Replayed { frames, rest } => {
                frames.is_empty() && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StreamOrBytes::Stream(body) => body.size_hint(),
            StreamOrBytes::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            StreamOrBytes::Replayed { .. } => SizeHint::default(),
        }
    }
}
