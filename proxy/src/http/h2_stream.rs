//! An HTTP/2 stream's body both ways, for the server
//! ([`super::h2_server`]) and the client ([`crate::pool`]'s `h2`):
//! [`H2Recv`] reads one, giving the flow-control window back as it goes;
//! [`SendPipe`] writes one under the stream's window. Capacity is asked
//! for only once a chunk is in hand, never ahead of it: a reservation
//! held while a body waits pins the connection's window, which stalls
//! every other stream with a peer that sends WINDOW_UPDATE only once its
//! window is used up (what hyper learned in its issue 4003).

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// An HTTP/2 stream's body as it arrives: DATA (the flow-control window
/// given back as each frame is read), then trailers. Shared by the server
/// (requests) and the client (responses, [`crate::pool::h2`]).
pub struct H2Recv {
    recv: RecvStream,
    data_done: bool,
    /// Bytes still expected, when the message gave a Content-Length.
    remaining: Option<u64>,
}

impl H2Recv {
    pub fn new(recv: RecvStream, content_length: Option<u64>) -> H2Recv {
        H2Recv {
            recv,
            data_done: false,
            remaining: content_length,
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = self.remaining.as_mut() {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A body being copied onto an HTTP/2 stream as the window allows.
pub struct SendPipe<B> {
    body: B,
    stream: SendStream<Bytes>,
    /// A chunk waiting for capacity, and whether it ends the body.
    waiting: Option<(Bytes, bool)>,
}

/// How a [`SendPipe`] stopped.
pub enum Piped<E> {
    /// The body went out whole (trailers included).
    Done,
    /// The peer reset or closed the stream first.
    Closed(h2::Error),
    /// The body failed; the stream is left for the caller to reset.
    Failed(E),
}

impl<B> SendPipe<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    pub fn new(body: B, stream: SendStream<Bytes>) -> SendPipe<B> {
        SendPipe {
            body,
            stream,
            waiting: None,
        }
    }

    /// Copy as far as the body and the window allow.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Piped<B::Error>> {
        loop {
            // Registered first, so a reset wakes the task while it waits.
            if let Poll::Ready(reset) = self.stream.poll_reset(cx) {
                return Poll::Ready(Piped::Closed(match reset {
                    Ok(reason) => reason.into(),
                    Err(e) => e,
                }));
            }
            if let Some((data, end)) = self.waiting.take() {
                if !data.is_empty() && self.stream.capacity() == 0 {
                    self.waiting = Some((data, end));
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Poll::Ready(Piped::Closed(e)),
                        None => return Poll::Ready(Piped::Closed(Reason::CANCEL.into())),
                    }
                }
                match self.stream.send_data(data, end) {
                    Err(e) => return Poll::Ready(Piped::Closed(e)),
                    Ok(()) if end => return Poll::Ready(Piped::Done),
                    Ok(()) => continue,
                }
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    let _ = self.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(Piped::Done);
                }
                Some(Err(e)) => return Poll::Ready(Piped::Failed(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        // An empty chunk needs no capacity.
                        if !data.is_empty() {
                            self.stream.reserve_capacity(data.len());
                        }
                        self.waiting = Some((data, self.body.is_end_stream()));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = self.stream.send_trailers(trailers);
                            return Poll::Ready(Piped::Done);
                        }
                    }
                },
            }
        }
    }

    /// Reset the stream (the body failed, or the request was abandoned).
    pub fn reset(&mut self, reason: Reason) {
        self.stream.send_reset(reason);
    }
}
