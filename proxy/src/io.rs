//! The I/O type every accepted and upstream connection is wrapped in: it
//! replays bytes already read during protocol detection (the prefix) and
//! counts bytes read and written into the connection's metric handles.

use bytes::{Buf, Bytes};
use prometheus::IntCounter;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream with replayed prefix bytes and byte counters.
pub struct CountedIo<T> {
    prefix: Bytes,
    inner: T,
    /// Read and written byte counters; `None` replays the prefix only.
    counters: Option<(IntCounter, IntCounter)>,
    /// Bumped on every read or write that moved bytes, for idle timeouts.
    activity: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl<T> CountedIo<T> {
    /// Wrap `inner`; `prefix` is returned by the first reads. Bytes of the
    /// prefix were already counted by whoever read them.
    pub fn new(inner: T, prefix: Bytes, read_bytes: IntCounter, write_bytes: IntCounter) -> Self {
        CountedIo {
            prefix,
            inner,
            counters: Some((read_bytes, write_bytes)),
            activity: None,
        }
    }

    /// Also bump `activity` whenever bytes move (see the idle timeout).
    pub fn with_activity(mut self, activity: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.activity = Some(activity);
        self
    }

    fn active(&self) {
        if let Some(activity) = &self.activity {
            activity.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Replay `prefix` without counting (a TLS handshake underneath a
    /// stream that is counted above, once the peer's identity is known).
    pub fn uncounted(inner: T, prefix: Bytes) -> Self {
        CountedIo {
            prefix,
            inner,
            counters: None,
            activity: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if !this.prefix.has_remaining() {
                // Release the detection buffer: idle connections are many.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.active();
            if let Some((read, _)) = &this.counters {
                read.inc_by(n as u64);
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            this.active();
            if let Some((_, written)) = &this.counters {
                written.inc_by(*n as u64);
            }
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &result {
            this.active();
            if let Some((_, written)) = &this.counters {
                written.inc_by(*n as u64);
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
