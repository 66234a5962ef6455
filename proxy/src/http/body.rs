//! The body types strait sends. Upstream: the client's stream, a few
//! bytes in memory, or a [`ReplayBody`] (the client's stream, kept while
//! it passes so a retry can send it again); each marks its request's
//! body as sent when it ends, which is when timeouts start. Downstream:
//! the upstream's stream, bytes the proxy wrote itself, or frames read
//! ahead for a retry decision replayed before the rest. Enums rather than
//! boxed trait objects, so the hot path allocates nothing for them.

use super::authority::body_cap::{BoxError, Capped, Tripped};
use super::client_body::ClientBody;
use super::stream_end::Tracked;
use crate::pool::UpstreamError;
use crate::stack::replay::ReplayBody;
use crate::stack::ReqState;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

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

/// Every response body: the upstream's, or one the proxy wrote. The
/// upstream's is boxed: a response moves through every layer's future on
/// its way out, and a pointer moves cheaper than the tracked stream.
pub type ProxyBody = StreamOrBytes<Box<Tracked>>;

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
    B: Body<Data = Bytes, Error = UpstreamError> + Unpin,
{
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
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

/// Every request body sent upstream.
pub struct UpstreamBody {
    source: Source,
    /// Told when the body has been sent to its end.
    state: Option<Arc<ReqState>>,
    /// Data bytes this copy has sent, told to the observe layer's tally.
    sent_bytes: u64,
}

enum Source {
    /// The client's stream, under `proxy.http.max_request_body_bytes`.
    Stream(Capped<ClientBody>),
    Full(Option<Bytes>),
    Replay(ReplayBody<Capped<ClientBody>>),
}

impl UpstreamBody {
    pub fn stream(body: ClientBody) -> UpstreamBody {
        UpstreamBody::from(Source::Stream(Capped::new(body, None)))
    }

    /// Fail the client's stream past `max` data bytes; the flag says
    /// whether it did.
    pub fn cap(&mut self, max: u64) -> Option<Tripped> {
        let Source::Stream(body) = &mut self.source else {
            return None;
        };
        body.set_max(max);
        Some(body.tripped())
    }

    pub fn full(data: Option<Bytes>) -> UpstreamBody {
        UpstreamBody::from(Source::Full(data))
    }

    pub fn replay(body: ReplayBody<Capped<ClientBody>>) -> UpstreamBody {
        UpstreamBody::from(Source::Replay(body))
    }

    fn from(source: Source) -> UpstreamBody {
        UpstreamBody {
            source,
            state: None,
            sent_bytes: 0,
        }
    }

    /// Tell `state` when this body has been sent whole (at once if it is empty).
    pub fn report_to(&mut self, state: Arc<ReqState>) {
        if self.is_end_stream() {
            state.mark_body_sent();
        } else {
            self.state = Some(state);
        }
    }

    /// The client's stream, when this body is still exactly that (not
    /// yet made replayable).
    pub fn take_stream(self) -> Result<(Capped<ClientBody>, Option<Arc<ReqState>>), UpstreamBody> {
        match self.source {
            Source::Stream(body) => Ok((body, self.state)),
            source => Err(UpstreamBody {
                source,
                state: self.state,
                sent_bytes: self.sent_bytes,
            }),
        }
    }

    /// Whether this body replays, and could be sent again from the start.
    pub fn can_replay(&self) -> bool {
        match &self.source {
            Source::Replay(body) => body.can_replay(),
            Source::Full(_) => true,
            Source::Stream(body) => body.is_end_stream(),
        }
    }

    /// Another copy of a replayable body, for the next try.
    pub fn try_clone(&self) -> Option<UpstreamBody> {
        let source = match &self.source {
            Source::Replay(body) => Source::Replay(body.replay()),
            Source::Full(data) => Source::Full(data.clone()),
            Source::Stream(body) if body.is_end_stream() => Source::Full(None),
            Source::Stream(_) => return None,
        };
        Some(UpstreamBody {
            source,
            state: self.state.clone(),
            sent_bytes: 0,
        })
    }

    fn sent(&mut self) {
        if let Some(state) = self.state.take() {
            state.tally.note_request_bytes(self.sent_bytes);
            state.mark_body_sent();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(match &mut this.source {
            Source::Stream(body) => Pin::new(body).poll_frame(cx),
            Source::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Source::Replay(body) => Pin::new(body).poll_frame(cx),
        });
        if let Some(Ok(data)) = &frame {
            this.sent_bytes += data.data_ref().map_or(0, |d| d.len() as u64);
        }
        match &frame {
            None => this.sent(),
            Some(Ok(_)) if this.is_end_stream() => this.sent(),
            Some(Ok(_)) => {
                if let Some(state) = &this.state {
                    state.note_body_progress();
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Stream(body) => body.is_end_stream(),
            Source::Full(data) => data.is_none(),
            Source::Replay(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Stream(body) => body.size_hint(),
            Source::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Source::Replay(body) => body.size_hint(),
        }
    }
}
