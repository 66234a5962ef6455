//! Trace context on the wire: W3C `traceparent` (`tracestate` is never
//! read or touched), B3 single (`b3`) and multi (`x-b3-*`) headers, and
//! `x-request-id`. Reading ([`Incoming::read`]) allocates nothing; a
//! malformed header is treated as absent, never as a failure. Writing
//! changes only what a hop is entitled to: the span id it sends on (and,
//! in B3, the parent span id), in each format the request arrived with.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A 128-bit trace id; a 64-bit B3 id is its low half.
pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// The span a request arrived under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The caller's sampling decision; `None` defers it to this hop.
    pub sampled: Option<bool>,
}

/// What a request's headers say about its trace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub traceparent: Option<W3c>,
    pub b3: Option<B3Single>,
    pub b3_multi: Option<B3Multi>,
    /// A sampling decision that came without ids (`b3: 0`, or
    /// `x-b3-sampled` alone).
    pub decision_only: Option<bool>,
    pub has_request_id: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W3c {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub flags: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B3Single {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampling: Option<B3Sampling>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct B3Multi {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: Option<bool>,
}

/// B3's sampling state: `0`, `1` or `d` (debug, which implies sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Sampling {
    Deny,
    Accept,
    Debug,
}

impl B3Sampling {
    fn parse(s: &str) -> Option<B3Sampling> {
        match s {
            "0" => Some(B3Sampling::Deny),
            "1" => Some(B3Sampling::Accept),
            "d" => Some(B3Sampling::Debug),
            _ => None,
        }
    }

    fn sampled(self) -> bool {
        self != B3Sampling::Deny
    }
}

/// Which trace formats a request's header names show, seen in one pass
/// over the names (no hashing): most requests carry no trace context, and
/// seven lookups would each hash a name.
#[derive(Default)]
struct Seen {
    request_id: bool,
    w3c: bool,
    b3: bool,
    b3_multi: bool,
}

impl Seen {
    /// Note `name`; whether its value names this one request (an id, see
    /// [`unique`]).
    fn note(&mut self, name: &HeaderName) -> bool {
        let name = name.as_str();
        if name == REQUEST_ID.as_str() {
            self.request_id = true;
            true
        } else if name == TRACEPARENT.as_str() {
            self.w3c = true;
            true
        } else if name == B3.as_str() {
            self.b3 = true;
            true
        } else if name.starts_with("x-b3-") {
            self.b3_multi = true;
            let ids = [&B3_TRACE_ID, &B3_SPAN_ID, &B3_PARENT_SPAN_ID];
            ids.iter().any(|id| id.as_str() == name)
        } else {
            false
        }
    }
}

impl Incoming {
    pub fn read(headers: &HeaderMap) -> Incoming {
        let mut seen = Seen::default();
        for name in headers.keys() {
            seen.note(name);
        }
        Incoming::parse(headers, seen)
    }

    /// [`Incoming::read`], marking the ids the request came with
    /// never-indexed (see [`unique`]) in the same pass; the rest of its
    /// headers repeat and keep being indexed.
    pub fn read_marking_ids(headers: &mut HeaderMap) -> Incoming {
        let mut seen = Seen::default();
        for (name, value) in headers.iter_mut() {
            if seen.note(name) {
                value.set_sensitive(true);
            }
        }
        Incoming::parse(headers, seen)
    }

    fn parse(headers: &HeaderMap, seen: Seen) -> Incoming {
        // Only the formats present are looked up: a mesh hop carries
        // `traceparent` alone, and each lookup hashes a name.
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let mut incoming = Incoming {
            traceparent: seen
                .w3c
                .then(|| text(&TRACEPARENT))
                .flatten()
                .and_then(parse_traceparent),
            has_request_id: seen.request_id,
            ..Incoming::default()
        };
        if let Some(b3) = seen.b3.then(|| text(&B3)).flatten() {
            match parse_b3_single(b3) {
                Some(B3Parsed::Context(single)) => incoming.b3 = Some(single),
                Some(B3Parsed::DecisionOnly(sampling)) => {
                    incoming.decision_only = Some(sampling.sampled())
                }
                None => {}
            }
        }
        if !seen.b3_multi {
            return incoming;
        }
        let sampled = b3_multi_sampled(text(&B3_SAMPLED), text(&B3_FLAGS));
        let ids = text(&B3_TRACE_ID)
            .and_then(parse_b3_trace_id)
            .zip(text(&B3_SPAN_ID).and_then(|s| hex_id::<8>(s, true)));
        match ids {
            Some((trace_id, span_id)) => {
                incoming.b3_multi = Some(B3Multi {
                    trace_id,
                    span_id,
                    sampled,
                })
            }
            None => incoming.decision_only = incoming.decision_only.or(sampled),
        }
        incoming
    }

    /// The span the request arrived under: `traceparent` first, then
    /// `b3`, then `x-b3-*`.
    pub fn parent(&self) -> Option<Parent> {
        if let Some(w3c) = self.traceparent {
            return Some(Parent {
                trace_id: w3c.trace_id,
                span_id: w3c.parent_id,
                sampled: Some(w3c.flags & 1 == 1),
            });
        }
        if let Some(b3) = self.b3 {
            return Some(Parent {
                trace_id: b3.trace_id,
                span_id: b3.span_id,
                sampled: b3.sampling.map(B3Sampling::sampled),
            });
        }
        self.b3_multi.map(|m| Parent {
            trace_id: m.trace_id,
            span_id: m.span_id,
            sampled: m.sampled,
        })
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; a later
/// version may append fields, which are ignored. Lowercase hex only, and
/// neither id may be all zeros.
pub fn parse_traceparent(value: &str) -> Option<W3c> {
    let value = value.trim();
    let bytes = value.as_bytes();
    if bytes.len() < 55 || !value.is_ascii() {
        return None;
    }
    let version = hex_id::<1>(&value[0..2], false)?[0];
    if version == 0xff || (version == 0 && bytes.len() != 55) {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    Some(W3c {
        trace_id: hex_id::<16>(&value[3..35], false)?,
        parent_id: hex_id::<8>(&value[36..52], false)?,
        flags: hex_id::<1>(&value[53..55], false)?[0],
    })
}

enum B3Parsed {
    Context(B3Single),
    DecisionOnly(B3Sampling),
}

/// `<trace id>-<span id>[-<sampling>[-<parent span id>]]`, or a sampling
/// state alone.
fn parse_b3_single(value: &str) -> Option<B3Parsed> {
    let value = value.trim();
    if let Some(sampling) = B3Sampling::parse(value) {
        return Some(B3Parsed::DecisionOnly(sampling));
    }
    let mut parts = value.split('-');
    let trace_id = parse_b3_trace_id(parts.next()?)?;
    let span_id = hex_id::<8>(parts.next()?, true)?;
    let sampling = match parts.next() {
        Some(s) => Some(B3Sampling::parse(s)?),
        None => None,
    };
    if let Some(parent) = parts.next() {
        hex_id::<8>(parent, true)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Parsed::Context(B3Single {
        trace_id,
        span_id,
        sampling,
    }))
}

/// B3 trace ids are 16 or 32 hex digits.
fn parse_b3_trace_id(s: &str) -> Option<TraceId> {
    match s.len() {
        32 => hex_id::<16>(s, true),
        16 => {
            let low = hex_id::<8>(s, true)?;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

/// `x-b3-flags: 1` is debug, which implies sampled; `x-b3-sampled` is
/// `1`/`0` (older clients send `true`/`false`).
fn b3_multi_sampled(sampled: Option<&str>, flags: Option<&str>) -> Option<bool> {
    if flags.map(str::trim) == Some("1") {
        return Some(true);
    }
    match sampled.map(str::trim)? {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Exactly `2 * N` hex digits, not all zero. `any_case` admits uppercase
/// (B3 is lenient; W3C is not).
fn hex_id<const N: usize>(s: &str, any_case: bool) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    // One table lookup per digit and one check at the end: ids are read
    // on every traced request.
    let mut out = [0u8; N];
    let mut seen = 0u8;
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let (high, low) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        seen |= high | low;
        out[i] = (high & 0x0f) << 4 | (low & 0x0f);
    }
    if seen & NOT_HEX != 0 || (!any_case && seen & UPPERCASE != 0) {
        return None;
    }
    // A one-byte field (version, flags) may be zero; an id may not.
    if N > 1 && out.iter().all(|&b| b == 0) {
        return None;
    }
    Some(out)
}

/// Flags in [`HEX_VALUE`] beside a digit's value (the low four bits).
const UPPERCASE: u8 = 0x40;
const NOT_HEX: u8 = 0x80;

/// Each byte's value as a hex digit, flagged when uppercase or not a digit.
static HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = (10 + i as u8) | UPPERCASE;
        i += 1;
    }
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// Lowercase hex of `bytes`, for logs and tests.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// A header value that names one request (an id): marked so HPACK sends
/// it as a literal "never indexed". Indexing a value that never repeats
/// only churns both ends' tables: on a mesh connection each such insert
/// evicts a reusable entry and lengthens the encoder's walk of entries
/// with the same name, thousands of instructions a request.
fn unique(bytes: &[u8]) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_bytes(bytes).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The two hex digits of every byte: one lookup per byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    pairs
};

/// Hex of `bytes` into `out` from `at` (every request without a context
/// pays for 52 digits, so the loop is written to need no bounds checks).
fn put_hex(out: &mut [u8], at: usize, bytes: &[u8]) {
    let Some(digits) = out.get_mut(at..at + 2 * bytes.len()) else {
        return;
    };
    for (pair, b) in digits.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// A fresh `traceparent` for a trace that starts here (built on the
/// stack: every request without a context pays for it).
pub fn new_traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> Option<HeaderValue> {
    let mut out = *b"00-________________________________-________________-00";
    put_hex(&mut out, 3, trace_id);
    put_hex(&mut out, 36, span_id);
    if sampled {
        out[54] = b'1';
    }
    unique(&out)
}

/// The request's `traceparent` with this hop's span as the parent: the
/// trace id and flags stay as they came.
fn with_parent_id(w3c: &W3c, span_id: &SpanId) -> Option<HeaderValue> {
    let mut out = *b"00-________________________________-________________-__";
    put_hex(&mut out, 3, &w3c.trace_id);
    put_hex(&mut out, 36, span_id);
    put_hex(&mut out, 53, &[w3c.flags]);
    unique(&out)
}

/// `b3` with this hop's span id and the caller's span as its parent; the
/// trace id keeps its spelling and the sampling state stays. Without a
/// sampling state B3 has no place for a parent id, so none is written.
fn b3_single_with_span(original: &str, b3: &B3Single, span_id: &SpanId) -> Option<HeaderValue> {
    let trace_id = original.trim().split('-').next()?;
    let mut out = Vec::with_capacity(trace_id.len() + 40);
    out.extend_from_slice(trace_id.as_bytes());
    out.push(b'-');
    push_hex(&mut out, span_id);
    if let Some(sampling) = b3.sampling {
        out.extend_from_slice(match sampling {
            B3Sampling::Deny => b"-0-",
            B3Sampling::Accept => b"-1-",
            B3Sampling::Debug => b"-d-",
        });
        push_hex(&mut out, &b3.span_id);
    }
    unique(&out)
}

fn hex_header(id: &[u8]) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(id.len() * 2);
    push_hex(&mut out, id);
    unique(&out)
}

/// Make this hop's span (`span_id`, a child of `parent`) the parent of
/// what is sent on, in every format the request carries `parent`'s trace
/// in. A format that carries another trace (or was malformed) is left
/// exactly as it came.
pub fn rewrite(headers: &mut HeaderMap, incoming: &Incoming, parent: &Parent, span_id: &SpanId) {
    let same_trace = |trace_id: &TraceId| *trace_id == parent.trace_id;
    if let Some(w3c) = incoming.traceparent.filter(|w| same_trace(&w.trace_id)) {
        if let Some(value) = with_parent_id(&w3c, span_id) {
            headers.insert(TRACEPARENT, value);
        }
    }
    if let Some(b3) = incoming.b3.filter(|b| same_trace(&b.trace_id)) {
        let value = headers
            .get(B3)
            .and_then(|v| v.to_str().ok())
            .and_then(|original| b3_single_with_span(original, &b3, span_id));
        if let Some(value) = value {
            headers.insert(B3, value);
        }
    }
    if let Some(multi) = incoming.b3_multi.filter(|m| same_trace(&m.trace_id)) {
        if let (Some(span), Some(parent)) = (hex_header(span_id), hex_header(&multi.span_id)) {
            headers.insert(B3_SPAN_ID, span);
            headers.insert(B3_PARENT_SPAN_ID, parent);
        }
    }
}

/// A random (version 4) UUID for `x-request-id`.
pub fn new_request_id(random: u128) -> Option<HeaderValue> {
    let mut bytes = random.to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = *b"________-____-____-____-____________";
    put_hex(&mut out, 0, &bytes[0..4]);
    put_hex(&mut out, 9, &bytes[4..6]);
    put_hex(&mut out, 14, &bytes[6..8]);
    put_hex(&mut out, 19, &bytes[8..10]);
    put_hex(&mut out, 24, &bytes[10..16]);
    unique(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn traceparent_parses() {
        let w3c = parse_traceparent(TP).unwrap();
        assert_eq!(to_hex(&w3c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&w3c.parent_id), "00f067aa0ba902b7");
        assert_eq!(w3c.flags, 1);
        // A later version may carry more fields after the four it shares.
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future";
        assert_eq!(parse_traceparent(future), Some(w3c));
    }

    #[test]
    fn malformed_traceparent_is_absent() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
            let incoming = Incoming::read(&headers(&[("traceparent", bad)]));
            assert_eq!(incoming.parent(), None, "{bad:?}");
        }
    }

    #[test]
    fn b3_single_forms() {
        let read = |v: &str| Incoming::read(&headers(&[("b3", v)]));
        let full = read("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90");
        let b3 = full.b3.unwrap();
        assert_eq!(to_hex(&b3.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(to_hex(&b3.span_id), "e457b5a2e4d86bd1");
        assert_eq!(b3.sampling, Some(B3Sampling::Accept));
        assert_eq!(full.parent().unwrap().sampled, Some(true));
        // 64-bit trace id, no sampling state: deferred.
        let short = read("64fe8b2a57d3eff7-e457b5a2e4d86bd1");
        let parent = short.parent().unwrap();
        assert_eq!(to_hex(&parent.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(parent.sampled, None);
        assert_eq!(
            read("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")
                .parent()
                .unwrap()
                .sampled,
            Some(true)
        );
        // B3 admits uppercase ids (W3C does not: see above).
        let upper = read("64FE8B2A57D3EFF7-E457B5A2E4D86BD1");
        assert_eq!(to_hex(&upper.parent().unwrap().span_id), "e457b5a2e4d86bd1");
        // A decision alone.
        let deny = read("0");
        assert_eq!((deny.parent(), deny.decision_only), (None, Some(false)));
        for bad in [
            "1-2",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
            "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz",
            "64fe8b2a57d3eff-e457b5a2e4d86bd1",
        ] {
            assert_eq!(read(bad), Incoming::default(), "{bad}");
        }
    }

    #[test]
    fn b3_multi_and_precedence() {
        let multi = Incoming::read(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "0"),
        ]));
        let parent = multi.parent().unwrap();
        assert_eq!(to_hex(&parent.span_id), "a2fb4a1d1a96d312");
        assert_eq!(parent.sampled, Some(false));
        let debug = Incoming::read(&headers(&[
            ("x-b3-traceid", "48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ]));
        assert_eq!(debug.parent().unwrap().sampled, Some(true));
        let both = Incoming::read(&headers(&[
            ("traceparent", TP),
            ("x-b3-traceid", "48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]));
        assert_eq!(to_hex(&both.parent().unwrap().span_id), "00f067aa0ba902b7");
    }

    #[test]
    fn rewrite_sets_only_the_span_ids() {
        let mut map = headers(&[
            ("traceparent", TP),
            ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
            ("x-request-id", "abc"),
        ]);
        let incoming = Incoming::read(&map);
        let parent = incoming.parent().unwrap();
        let span = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        rewrite(&mut map, &incoming, &parent, &span);
        let get = |n: &str| map.get(n).unwrap().to_str().unwrap();
        assert_eq!(
            get("traceparent"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1122334455667788-01"
        );
        assert_eq!(get("tracestate"), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(
            get("b3"),
            "4bf92f3577b34da6a3ce929d0e0e4736-1122334455667788-1-00f067aa0ba902b7"
        );
        assert_eq!(get("x-b3-traceid"), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(get("x-b3-spanid"), "1122334455667788");
        assert_eq!(get("x-b3-parentspanid"), "00f067aa0ba902b7");
        assert_eq!(get("x-b3-sampled"), "1");
        assert_eq!(get("x-request-id"), "abc");
        assert_eq!(map.len(), 8);
    }

    #[test]
    fn rewrite_leaves_another_trace_alone() {
        let other = "64fe8b2a57d3eff7-e457b5a2e4d86bd1";
        let mut map = headers(&[("traceparent", TP), ("b3", other)]);
        let incoming = Incoming::read(&map);
        rewrite(&mut map, &incoming, &incoming.parent().unwrap(), &[1; 8]);
        assert_eq!(map.get("b3").unwrap(), other);
        // Without a sampling state, B3 single has no room for a parent.
        let mut map = headers(&[("b3", other)]);
        let incoming = Incoming::read(&map);
        rewrite(&mut map, &incoming, &incoming.parent().unwrap(), &[1; 8]);
        assert_eq!(map.get("b3").unwrap(), "64fe8b2a57d3eff7-0101010101010101");
    }

    #[test]
    fn fresh_headers() {
        let tp = new_traceparent(&[0xab; 16], &[0xcd; 8], true).unwrap();
        assert_eq!(parse_traceparent(tp.to_str().unwrap()).unwrap().flags, 1);
        let id = new_request_id(u128::MAX).unwrap();
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = new_request_id(0).unwrap();
        assert_eq!(id, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn per_request_ids_are_never_indexed() {
        let fresh = [
            new_traceparent(&[0xab; 16], &[0xcd; 8], false).unwrap(),
            new_request_id(7).unwrap(),
            hex_header(&[1; 8]).unwrap(),
        ];
        assert!(fresh.iter().all(HeaderValue::is_sensitive));
        let mut map = headers(&[
            ("traceparent", TP),
            ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
            ("x-request-id", "abc"),
            ("user-agent", "curl"),
        ]);
        Incoming::read_marking_ids(&mut map);
        for (name, value) in &map {
            let repeats = ["x-b3-sampled", "user-agent"].contains(&name.as_str());
            assert_eq!(value.is_sensitive(), !repeats, "{name}");
        }
    }
}
