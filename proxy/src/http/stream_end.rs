//! What must wait for a response stream to end rather than for its
//! headers: counting `response_total` (a gRPC call's outcome is only known
//! from `grpc-status`, often in the trailers; a stream that breaks midway
//! is a failure) and releasing the circuit-breaker slot the request held
//! (a long download is still a request in flight). [`Tracked`] wraps an
//! upstream response body and does both exactly once: at the end of the
//! stream, at a stream error, or when the client drops the body early.
//! Outer layers may ask to hear of the end too: a [`StreamWatch`] (the
//! trace layer's span, the observe layer's record, only for a request
//! being traced or recorded) is told the same moment, with the data bytes
//! that passed.
//!
//! Depends on: [`crate::metrics`], [`crate::registry`] (the slot).

use super::body::ProxyBody;
use crate::metrics::RequestMetrics;
use crate::pool::{PooledBody, UpstreamError};
use crate::registry::RequestSlot;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// What to record when a response ends.
pub struct ResponseEnd {
    metrics: Arc<RequestMetrics>,
    status: u16,
    /// Set for gRPC responses: the `grpc-status` seen so far, if any.
    grpc: Option<Option<u32>>,
}

impl ResponseEnd {
    /// `headers` are the response's: a gRPC response is recognised by
    /// its content type, and a trailers-only one carries its status there.
    pub fn new(metrics: Arc<RequestMetrics>, status: u16, headers: &HeaderMap) -> ResponseEnd {
        let is_grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        ResponseEnd {
            metrics,
            status,
            grpc: is_grpc.then(|| grpc_status(headers)),
        }
    }

    /// Note trailers as they pass.
    pub fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(seen) = self.grpc.as_mut() {
            *seen = seen.or(grpc_status(trailers));
        }
    }

    /// Record the outcome: `broken` when the stream failed midway.
    pub fn finish(self, broken: bool) {
        let grpc_failed = matches!(self.grpc, Some(status) if status.unwrap_or(2) != 0);
        let failure = broken || self.status >= 500 || grpc_failed;
        self.metrics.response(self.status, failure);
    }
}

/// Record `end` when the response stream ends: the upstream's stream,
/// or (after a retry's read-ahead) the frames held back and the rest.
pub fn track(response: &mut http::Response<ProxyBody>, mut end: ResponseEnd) {
    match response.body_mut() {
        ProxyBody::Stream(body) => body.track(end),
        ProxyBody::Replayed { frames, rest } => {
            for trailers in frames.iter().filter_map(|f| f.trailers_ref()) {
                end.trailers(trailers);
            }
            match rest {
                Some(body) => body.track(end),
                None => end.finish(false),
            }
        }
        ProxyBody::Full(_) => end.finish(false),
    }
}

/// Told once when a response stream ends: the data bytes sent to the
/// client and whether the stream broke (failed, or was dropped early).
pub trait StreamWatch: Send + Sync {
    fn ended(self: Box<Self>, bytes: u64, broken: bool);
}

/// Tell `watch` when the response stream ends (at once for a body the
/// proxy wrote itself).
pub fn watch(response: &mut http::Response<ProxyBody>, watch: Box<dyn StreamWatch>) {
    match response.body_mut() {
        ProxyBody::Stream(body) => body.watch(watch, 0),
        ProxyBody::Replayed { frames, rest } => {
            let held: u64 = frames
                .iter()
                .filter_map(|f| f.data_ref())
                .map(|d| d.len() as u64)
                .sum();
            match rest {
                Some(body) => body.watch(watch, held),
                None => watch.ended(held, false),
            }
        }
        ProxyBody::Full(data) => watch.ended(data.as_ref().map_or(0, |d| d.len() as u64), false),
    }
}

/// A gRPC status from headers or trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(const { http::HeaderName::from_static("grpc-status") })
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// An upstream response body that records its [`ResponseEnd`] once.
pub struct Tracked {
    inner: PooledBody,
    end: Option<ResponseEnd>,
    /// The circuit-breaker slot, released with the stream.
    slot: Option<RequestSlot>,
    /// Outer layers' business at the end (see [`watch`]) and the data
    /// bytes so far, counted only while watched.
    watched: Vec<Box<dyn StreamWatch>>,
    bytes: u64,
}

impl Tracked {
    pub fn new(inner: PooledBody) -> Tracked {
        Tracked {
            inner,
            end: None,
            slot: None,
            watched: Vec::new(),
            bytes: 0,
        }
    }

    /// Tell `watch` when this body ends, counting from `bytes`.
    pub fn watch(&mut self, watch: Box<dyn StreamWatch>, bytes: u64) {
        if self.inner.is_end_stream() {
            watch.ended(bytes, false);
        } else {
            self.bytes = bytes;
            self.watched.push(watch);
        }
    }

    /// Hold `slot` until this body ends.
    pub fn hold(&mut self, slot: RequestSlot) {
        if !self.inner.is_end_stream() {
            self.slot = Some(slot);
        }
    }

    /// Record `end` when this body ends (at once if it already has).
    pub fn track(&mut self, end: ResponseEnd) {
        if self.inner.is_end_stream() {
            end.finish(false);
        } else {
            self.end = Some(end);
        }
    }

    fn finish(&mut self, broken: bool) {
        self.slot = None;
        if let Some(end) = self.end.take() {
            end.finish(broken);
        }
        for watch in self.watched.drain(..) {
            watch.ended(self.bytes, broken);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), false) = (frame.data_ref(), this.watched.is_empty()) {
                    this.bytes += data.len() as u64;
                }
                if let (Some(trailers), Some(end)) = (frame.trailers_ref(), this.end.as_mut()) {
                    end.trailers(trailers);
                }
                if this.inner.is_end_stream() {
                    this.finish(false);
                }
            }
            Some(Err(_)) => this.finish(true),
            None => this.finish(false),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The client went away before the end: the stream did not complete.
        self.finish(true);
    }
}
