//! The body of a client's request as the stack sees it: hyper's stream for
//! HTTP/1, the `h2` stream for HTTP/2 (served by [`super::h2_server`]).
//! Either fails with a [`ClientBodyError`], which is how a broken request
//! body is told from the upstream's failure ([`super::error::is_client_body_error`]).

use bytes::Bytes;
use h2::RecvStream;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pub enum ClientBody {
    Http1(Incoming),
    Http2(H2Recv),
}

/// The client's own request body failing: hyper's error reading an
/// HTTP/1 stream (a malformed chunk, the connection gone), or an HTTP/2
/// stream the client reset or whose framing h2 refused.
#[derive(Debug)]
pub enum ClientBodyError {
    Http1(hyper::Error),
    Http2(h2::Error),
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientBodyError::Http1(e) => write!(f, "client request body: {e}"),
            ClientBodyError::Http2(e) => write!(f, "client request body: {e}"),
        }
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientBodyError::Http1(e) => Some(e),
            ClientBodyError::Http2(e) => Some(e),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(ClientBodyError::Http1),
            // Any reset before the end is the request cut short, never
            // its end: the upstream must not take a truncated body as whole.
            ClientBody::Http2(body) => body.poll_frame(cx).map_err(ClientBodyError::Http2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Http1(body) => body.is_end_stream(),
            ClientBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Http1(body) => body.size_hint(),
            ClientBody::Http2(body) => body.size_hint(),
        }
    }
}

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
