//! The body of a client's request as the stack sees it: hyper's stream for
//! HTTP/1, the `h2` stream for HTTP/2 (served by [`super::h2_server`]).
//! Either fails with a [`ClientBodyError`], which is how a broken request
//! body is told from the upstream's failure ([`super::error::is_client_body_error`]).

use super::h2_stream::H2Recv;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

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
