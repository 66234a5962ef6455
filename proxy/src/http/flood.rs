//! HTTP/2 control-frame flood limits for client connections: PING and
//! SETTINGS frames (not their acknowledgements) and empty DATA frames
//! that do not end their stream, each counted per
//! `proxy.http.http2_flood_window`, and WINDOW_UPDATE frames against the
//! DATA frames the proxy sent (Envoy's rule: over the connection's life,
//! at most 5 + 2 × (streams + N × DATA frames sent); a client only needs
//! to open windows for data it was sent). h2 answers every PING and SETTINGS
//! and has no hook to refuse a client that sends them without end (it
//! only stops reading while one answer is unwritten, which bounds memory,
//! not work), so [`FloodGuard`] watches the connection's bytes below h2.
//!
//! The guard passes every byte through untouched. It follows the frame
//! boundaries only: the 24-byte client preface, then each frame's 9-byte
//! header (length, type, flags, stream), skipping payloads unread — no
//! HPACK, no frame contents. Over a limit it stops handing bytes to h2,
//! writes its own GOAWAY `ENHANCE_YOUR_CALM` (when h2 is between frames
//! on the write side, which it follows the same way, so the GOAWAY never
//! lands inside one of h2's frames), shuts the write side, discards what
//! the client still sends for a moment (so the close does not become a
//! TCP reset that loses the GOAWAY), and then fails the connection's I/O,
//! which ends it. The flood is reported once through [`OnFlood`]: the
//! server counts it in `http2_connection_errors_total` with reason
//! `ping_flood`, `settings_flood`, `empty_data_flood` or
//! `window_update_flood` and logs it rate limited.
//!
//! Cost on the normal path: a few integer operations per read and write
//! and per frame header; the clock is read only when a count passes its
//! limit (the window rolls lazily then). Depends on tokio's I/O traits;
//! [`Report`] on [`crate::metrics`] and [`crate::log_limit`].

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use strait_config::HttpSettings;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The client connection preface (RFC 9113 §3.4), before the first frame.
const PREFACE_LEN: u32 = 24;
const HEAD_LEN: usize = 9;
/// Frame types and flags (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// How long, and how many bytes, the client's further bytes are read and
/// dropped after the GOAWAY before the connection is closed.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// Which flood limit a client went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Ping = 0,
    Settings = 1,
    EmptyData = 2,
    WindowUpdate = 3,
}

impl Flood {
    /// The `http2_connection_errors_total` reason.
    pub fn reason(self) -> &'static str {
        match self {
            Flood::Ping => "ping_flood",
            Flood::Settings => "settings_flood",
            Flood::EmptyData => "empty_data_flood",
            Flood::WindowUpdate => "window_update_flood",
        }
    }
}

impl fmt::Display for Flood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flood::Ping => "PING",
            Flood::Settings => "SETTINGS",
            Flood::EmptyData => "empty DATA",
            Flood::WindowUpdate => "WINDOW_UPDATE",
        })
    }
}

/// The limits; `u32::MAX` (or 0 for the WINDOW_UPDATE rule) for one that is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub window: Duration,
    /// PING, SETTINGS and empty DATA frames per window, indexed by [`Flood`].
    pub max: [u32; 3],
    /// WINDOW_UPDATE frames allowed per DATA frame sent.
    pub window_updates_per_data: u32,
}

impl Limits {
    pub fn from_settings(s: &HttpSettings) -> Limits {
        let on = |n: u32| if n == 0 { u32::MAX } else { n };
        Limits {
            window: s.http2_flood_window,
            max: [
                on(s.http2_max_ping_frames),
                on(s.http2_max_settings_frames),
                on(s.http2_max_empty_data_frames),
            ],
            window_updates_per_data: s.http2_max_window_updates_per_data_frame,
        }
    }

    /// What `flood` went over, for the log and the connection's error.
    pub fn describe(&self, flood: Flood) -> String {
        match self.max.get(flood as usize) {
            Some(max) => format!("over {max} frames in {:?}", self.window),
            None => format!(
                "over 5 + 2 × (streams + {} × DATA frames sent)",
                self.window_updates_per_data
            ),
        }
    }
}

/// Told once when a connection goes over a limit.
pub trait OnFlood: Unpin {
    fn flooded(&mut self, flood: Flood, limits: &Limits);
}

impl<F: FnMut(Flood) + Unpin> OnFlood for F {
    fn flooded(&mut self, flood: Flood, _: &Limits) {
        self(flood)
    }
}

/// Counts a flood in `http2_connection_errors_total` (sender `proxy`)
/// and logs it, one line per reason and client address per
/// [`crate::log_limit::INTERVAL`].
pub struct Report {
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub direction: crate::Direction,
    pub client: std::net::SocketAddr,
}

static FLOOD_LOG: std::sync::LazyLock<crate::log_limit::LogLimit> =
    std::sync::LazyLock::new(|| crate::log_limit::LogLimit::new(crate::log_limit::INTERVAL));

impl OnFlood for Report {
    fn flooded(&mut self, flood: Flood, limits: &Limits) {
        let reason = flood.reason();
        self.metrics
            .http2_connection_error(self.direction, reason, "proxy");
        // Keyed by address, not port: a flood over many connections is one line.
        let key = std::net::SocketAddr::new(self.client.ip(), 0);
        if let crate::log_limit::Decision::Log { suppressed } = FLOOD_LOG.check(reason, key) {
            tracing::warn!(
                client = %self.client,
                reason,
                suppressed,
                "HTTP/2 {flood} flood: {}, GOAWAY ENHANCE_YOUR_CALM ({suppressed} more like it not logged since the last line)",
                limits.describe(flood)
            );
        }
    }
}

/// A frame's 9-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHead {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; HEAD_LEN]) -> FrameHead {
        FrameHead {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// Where a byte stream is in its frames: bytes of a payload (or of the
/// preface) still to skip, or part of a header.
#[derive(Debug)]
struct Frames {
    skip: u32,
    head: [u8; HEAD_LEN],
    have: u8,
}

impl Frames {
    fn new(skip: u32) -> Frames {
        Frames {
            skip,
            head: [0; HEAD_LEN],
            have: 0,
        }
    }

    fn between_frames(&self) -> bool {
        self.skip == 0 && self.have == 0
    }

    /// Follow `bytes`, calling `each` with every header completed in
    /// them; stops at the first `Some` it returns.
    fn walk<T>(
        &mut self,
        mut bytes: &[u8],
        mut each: impl FnMut(FrameHead) -> Option<T>,
    ) -> Option<T> {
        loop {
            if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                self.skip -= n as u32;
                bytes = &bytes[n..];
            }
            if bytes.is_empty() {
                return None;
            }
            // The usual case: a whole header in this read, parsed in place.
            if self.have == 0 {
                if let Some((head, rest)) = bytes.split_first_chunk::<HEAD_LEN>() {
                    let head = FrameHead::parse(head);
                    bytes = rest;
                    self.skip = head.len;
                    if let Some(found) = each(head) {
                        return Some(found);
                    }
                    continue;
                }
            }
            let have = usize::from(self.have);
            let take = (HEAD_LEN - have).min(bytes.len());
            self.head[have..have + take].copy_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if have + take < HEAD_LEN {
                self.have = (have + take) as u8;
                return None;
            }
            self.have = 0;
            let head = FrameHead::parse(&self.head);
            self.skip = head.len;
            if let Some(found) = each(head) {
                return Some(found);
            }
        }
    }
}

/// The counts in the current window.
#[derive(Debug)]
struct Window {
    started: Instant,
    counts: [u32; 3],
}

impl Window {
    /// Count `head` if it is a frame a flood is made of.
    fn count(&mut self, head: FrameHead, limits: &Limits) -> Option<Flood> {
        let flood = match head.kind {
            PING if head.flags & ACK == 0 => Flood::Ping,
            SETTINGS if head.flags & ACK == 0 => Flood::Settings,
            DATA if head.len == 0 && head.flags & END_STREAM == 0 => Flood::EmptyData,
            _ => return None,
        };
        let i = flood as usize;
        self.counts[i] = self.counts[i].saturating_add(1);
        if self.counts[i] <= limits.max[i] {
            return None;
        }
        // Over the limit: a flood, unless the window is over (rolled now).
        let now = Instant::now();
        if now.duration_since(self.started) < limits.window {
            return Some(flood);
        }
        self.started = now;
        self.counts = [0; 3];
        self.counts[i] = 1;
        None
    }
}

/// What the WINDOW_UPDATE rule counts, over the connection's life.
#[derive(Debug, Default)]
struct Lifetime {
    /// HEADERS frames from the client (streams opened, and trailers).
    streams: u64,
    /// DATA frames the proxy wrote.
    data_sent: u64,
    window_updates: u64,
}

impl Lifetime {
    /// Count a client frame; a WINDOW_UPDATE flood when the client opened
    /// more windows than the data it was sent can explain.
    fn count(&mut self, head: FrameHead, limits: &Limits) -> Option<Flood> {
        match head.kind {
            HEADERS => self.streams += 1,
            WINDOW_UPDATE if limits.window_updates_per_data > 0 => {
                self.window_updates += 1;
                let per_data = u64::from(limits.window_updates_per_data);
                let allowed = 5 + 2 * (self.streams + per_data * self.data_sent);
                if self.window_updates > allowed {
                    return Some(Flood::WindowUpdate);
                }
            }
            _ => {}
        }
        None
    }
}

/// Refusing a flooding client, step by step.
enum Refusal {
    /// Writing the GOAWAY (`sent` bytes of it so far), then flushing and
    /// shutting the write side.
    GoAway {
        frame: [u8; HEAD_LEN + 8],
        sent: usize,
    },
    /// Dropping what the client still sends, until it closes or the
    /// deadline passes.
    Linger {
        until: Pin<Box<Sleep>>,
        dropped: usize,
    },
    Closed,
}

/// A client HTTP/2 connection's I/O, watched for control-frame floods.
pub struct FloodGuard<I, R> {
    inner: I,
    limits: Limits,
    read: Frames,
    write: Frames,
    window: Window,
    lifetime: Lifetime,
    /// The highest stream the client opened: the GOAWAY's last stream.
    last_stream: u32,
    /// Boxed: only a flooding connection pays for it.
    refusing: Option<Box<(Flood, Refusal)>>,
    report: R,
}

impl<I, R> FloodGuard<I, R> {
    /// Watch `inner`, a server connection whose client preface is still
    /// to come, reporting a flood to `report`.
    pub fn new(inner: I, limits: Limits, report: R) -> FloodGuard<I, R> {
        FloodGuard {
            inner,
            limits,
            read: Frames::new(PREFACE_LEN),
            write: Frames::new(0),
            window: Window {
                started: Instant::now(),
                counts: [0; 3],
            },
            lifetime: Lifetime::default(),
            last_stream: 0,
            refusing: None,
            report,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin, R: OnFlood> FloodGuard<I, R> {
    /// Refuse the client; ready (with the error the connection's I/O then
    /// fails with) once the refusal is over.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some((flood, refusal)) = self.refusing.as_deref_mut() else {
            return Poll::Ready(io::Error::other("HTTP/2 flood guard: not refusing"));
        };
        let mut inner = Pin::new(&mut self.inner);
        loop {
            match refusal {
                Refusal::GoAway { frame, sent } if *sent < frame.len() => {
                    match ready!(inner.as_mut().poll_write(cx, &frame[*sent..])) {
                        Ok(0) | Err(_) => *refusal = Refusal::Closed,
                        Ok(n) => *sent += n,
                    }
                }
                Refusal::GoAway { .. } => {
                    ready!(inner.as_mut().poll_flush(cx)).ok();
                    ready!(inner.as_mut().poll_shutdown(cx)).ok();
                    *refusal = Refusal::Linger {
                        until: Box::pin(tokio::time::sleep(LINGER)),
                        dropped: 0,
                    };
                }
                Refusal::Linger { until, dropped } => {
                    if until.as_mut().poll(cx).is_ready() || *dropped >= LINGER_BYTES {
                        *refusal = Refusal::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 4096];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(inner.as_mut().poll_read(cx, &mut buf)) {
                        Ok(()) if !buf.filled().is_empty() => *dropped += buf.filled().len(),
                        _ => *refusal = Refusal::Closed,
                    }
                }
                Refusal::Closed => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("HTTP/2 {flood} flood: {}", self.limits.describe(*flood)),
                    ))
                }
            }
        }
    }

    /// Start refusing the client for `flood`.
    fn refuse(&mut self, flood: Flood) {
        self.report.flooded(flood, &self.limits);
        // A GOAWAY inside one of h2's half-written frames would corrupt
        // it: then the connection is only closed.
        let refusal = if self.write.between_frames() {
            let mut frame = [0u8; HEAD_LEN + 8];
            frame[2] = 8;
            frame[3] = 0x7;
            frame[HEAD_LEN..HEAD_LEN + 4].copy_from_slice(&self.last_stream.to_be_bytes());
            frame[HEAD_LEN + 4..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
            Refusal::GoAway { frame, sent: 0 }
        } else {
            Refusal::Closed
        };
        self.refusing = Some(Box::new((flood, refusal)));
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin, R: OnFlood> AsyncRead for FloodGuard<I, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            return this.poll_refuse(cx).map(Err);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let (window, lifetime, limits, last_stream) = (
            &mut this.window,
            &mut this.lifetime,
            &this.limits,
            &mut this.last_stream,
        );
        let flood = this.read.walk(&buf.filled()[before..], |head| {
            if head.kind == HEADERS {
                *last_stream = (*last_stream).max(head.stream);
            }
            window
                .count(head, limits)
                .or_else(|| lifetime.count(head, limits))
        });
        match flood {
            None => Poll::Ready(Ok(())),
            Some(flood) => {
                // h2 never sees the read that went over.
                buf.set_filled(before);
                this.refuse(flood);
                this.poll_refuse(cx).map(Err)
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin, R: OnFlood> AsyncWrite for FloodGuard<I, R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            return this.poll_refuse(cx).map(Err);
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        let data_sent = &mut this.lifetime.data_sent;
        this.write
            .walk(&buf[..n], |head| count_data(head, data_sent));
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            return this.poll_refuse(cx).map(Err);
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for buf in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(buf.len());
            let data_sent = &mut this.lifetime.data_sent;
            this.write
                .walk(&buf[..take], |head| count_data(head, data_sent));
            left -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            return this.poll_refuse(cx).map(Err);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.refusing.is_some() {
            // The refusal shuts the write side itself.
            ready!(this.poll_refuse(cx));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Count a DATA frame the proxy writes (what WINDOW_UPDATEs answer).
fn count_data(head: FrameHead, data_sent: &mut u64) -> Option<()> {
    if head.kind == DATA {
        *data_sent += 1;
    }
    None
}

#[cfg(test)]
#[path = "flood_tests.rs"]
mod tests;
