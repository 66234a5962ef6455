//! Protocol detection: read the client's first bytes (with a timeout) and
//! decide between HTTP/2 prior knowledge, HTTP/1.x, a TLS ClientHello, or
//! opaque TCP. The bytes read are handed back so they can be replayed to
//! whoever handles the connection.
//!
//! Opaque TCP skips every L7 rule, so detection must never be a way
//! around them: bytes that look like HTTP go to the HTTP server even when
//! they will not parse there (an unknown version such as `HTTP/1.2`, an
//! HTTP/0.9 request line, a request line longer than we read, a client
//! that stalls or half-closes mid-line), and hyper refuses them with 400;
//! a broken HTTP/2 preface is answered with GOAWAY(PROTOCOL_ERROR) (see
//! [`GOAWAY_PROTOCOL_ERROR`]). Only bytes that do not look like HTTP at all
//! are opaque.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most bytes read before giving up on HTTP/1 and calling it opaque: a
/// request line longer than this is not worth proxying as HTTP.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// The first line of [`H2_PREFACE`]: a client that sends it means HTTP/2.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// What a server sends a client whose HTTP/2 preface is broken: its own
/// (empty) SETTINGS preface, then GOAWAY(last stream 0, PROTOCOL_ERROR),
/// RFC 9113 §3.4 and §6.8. h2 closes such a connection without a word.
pub const GOAWAY_PROTOCOL_ERROR: &[u8] = &[
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, empty, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id 0
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Starts like the HTTP/2 preface but is not it.
    BadPreface,
    Tls,
    Opaque,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1",
            Protocol::Http2 => "h2",
            Protocol::BadPreface => "h2 (invalid preface)",
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
    if buf.starts_with(H2_PREFACE_LINE) {
        return Some(Protocol::BadPreface);
    }
    classify_http1(buf)
}

/// What to make of `buf` when no more bytes will come (the client went
/// quiet past the timeout, or half-closed): what [`classify`] says, else
/// HTTP when it has begun like HTTP, else opaque.
pub fn classify_final(buf: &[u8]) -> Protocol {
    if let Some(protocol) = classify(buf) {
        return protocol;
    }
    if !buf.is_empty() && H2_PREFACE.starts_with(buf) {
        return Protocol::BadPreface;
    }
    match split_method(buf) {
        Some((_, rest)) if begins_like_target(rest) => Protocol::Http1,
        _ => Protocol::Opaque,
    }
}

/// `METHOD SP rest`: an upper-case token of at most 20 bytes, then a space.
fn split_method(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = buf.iter().position(|&b| b == b' ')?;
    let (method, rest) = (&buf[..space], &buf[space + 1..]);
    (space > 0 && space <= 20 && method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-'))
        .then_some((method, rest))
}

/// The start of a request target: origin-form, absolute-form or `*`.
fn begins_like_target(rest: &[u8]) -> bool {
    rest.starts_with(b"/")
        || rest.starts_with(b"*")
        || rest.starts_with(b"http://")
        || rest.starts_with(b"https://")
}

/// After the method: `target SP HTTP/x.y` in any version, or an
/// HTTP/0.9 `target` alone. Not necessarily valid: hyper is the judge.
fn looks_like_request(rest: &[u8]) -> bool {
    let mut tokens = rest.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let Some(target) = tokens.next() else {
        return false;
    };
    let mut rest = tokens.peekable();
    match rest.peek() {
        None => begins_like_target(target),
        Some(_) => rest.any(|t| t.starts_with(b"HTTP/")),
    }
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
            if line.ends_with(b" HTTP/1.1")
                || line.ends_with(b" HTTP/1.0")
                || looks_like_request(&line[method_len + 1..])
            {
                Some(Protocol::Http1)
            } else {
                Some(Protocol::Opaque)
            }
        }
        None if buf.len() >= MAX_DETECT_BYTES => match split_method(buf) {
            Some((_, rest)) if begins_like_target(rest) => Some(Protocol::Http1),
            _ => Some(Protocol::Opaque),
        },
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
            Err(_elapsed) => Some(classify_final(&buf)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) if buf.is_empty() => return Ok(Detected::Closed),
            Ok(Ok(0)) => Some(classify_final(&buf)),
            Ok(Ok(_)) => classify(&buf),
        };
        if let Some(protocol) = protocol {
            return Ok(Detected::Protocol(protocol, buf.freeze()));
        }
        if buf.len() >= MAX_DETECT_BYTES {
            let protocol = classify_final(&buf);
            return Ok(Detected::Protocol(protocol, buf.freeze()));
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
        assert_eq!(classify(b"SET key value\r\n"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GET key\r\n"), Some(Protocol::Opaque));
    }

    #[test]
    fn http_that_will_not_parse_is_still_http() {
        for bytes in [
            &b"GET / HTTP/1.2\r\n"[..],
            b"GET / HTTP/2.0\r\n",
            b"GET /index.html\r\n",
            b"POST http://a/ HTTP/9\n",
            b"GET / HTTP/1.1 \r\n",
        ] {
            let shown = String::from_utf8_lossy(bytes);
            assert_eq!(classify(bytes), Some(Protocol::Http1), "{shown}");
        }
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Some(Protocol::BadPreface)
        );
        // A request line longer than detection reads is still HTTP.
        let mut long = b"GET /".to_vec();
        long.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(classify(&long), Some(Protocol::Http1));
        // A client that stalls or half-closes mid-line.
        assert_eq!(classify_final(b"GET /adm"), Protocol::Http1);
        assert_eq!(classify_final(b"PRI * HT"), Protocol::BadPreface);
        assert_eq!(classify_final(b"GE"), Protocol::Opaque);
        assert_eq!(classify_final(b"hello"), Protocol::Opaque);
    }
}
