//! Protocol detection: read the client's first bytes (with a timeout) and
//! decide between HTTP/2 prior knowledge, HTTP/1.x, a TLS ClientHello, or
//! opaque TCP. The bytes read are handed back so they can be replayed to
//! whoever handles the connection.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes read before giving up on HTTP/1 and calling it opaque: a
/// request line longer than this is not worth proxying as HTTP.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tls,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1",
            Protocol::Http2 => "h2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Classify a connection's first bytes; `None` means "need more bytes".
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let first = *buf.first()?;
    // TLS record header: handshake (22), version major 3.
    if first == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    classify_http1(buf)
}

/// An HTTP/1 request line: `METHOD SP target SP HTTP/1.x CRLF`.
fn classify_http1(buf: &[u8]) -> Option<Protocol> {
    const MAX_METHOD: usize = 20;
    let method_len = buf.iter().position(|&b| b == b' ');
    let method = &buf[..method_len.unwrap_or(buf.len())];
    if method.len() > MAX_METHOD || !method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-') {
        return Some(Protocol::Opaque);
    }
    let Some(method_len) = method_len else {
        return None; // still reading the method
    };
    if method_len == 0 {
        return Some(Protocol::Opaque);
    }
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
                Some(Protocol::Http1)
            } else {
                Some(Protocol::Opaque)
            }
        }
        None if buf.len() >= MAX_DETECT_BYTES => Some(Protocol::Opaque),
        None => None,
    }
}

/// The outcome of reading a connection's first bytes.
#[derive(Debug)]
pub enum Detected {
    /// The protocol, and the bytes read to learn it.
    Protocol(Protocol, Bytes),
    /// The client closed before sending anything.
    Closed,
}

/// Read until the protocol is known. A client that sends nothing within
/// `timeout` (a server-speaks-first protocol on a port not listed as
/// opaque, say) is treated as opaque so the server gets to speak.
pub async fn detect(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        let protocol = match read {
            Err(_elapsed) => Some(Protocol::Opaque),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) if buf.is_empty() => return Ok(Detected::Closed),
            Ok(Ok(0)) => Some(classify(&buf).unwrap_or(Protocol::Opaque)),
            Ok(Ok(_)) => classify(&buf),
        };
        if let Some(protocol) = protocol {
            return Ok(Detected::Protocol(protocol, buf.freeze()));
        }
        if buf.len() >= MAX_DETECT_BYTES {
            return Ok(Detected::Protocol(Protocol::Opaque, buf.freeze()));
        }
        buf.reserve(1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b""), None);
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"GET / HTTP/1.0\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /very/long"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(Protocol::Tls)
        );
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(b"hello world\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET / SOMETHING\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(&[0u8, 1, 2]), Some(Protocol::Opaque));
    }
}
