//! One authority and one path per request, decided once before routing
//! and authorization, and carried unchanged to the upstream.
//!
//! A request may name its authority twice (the URI's authority, from an
//! absolute-form target or HTTP/2's `:authority`, and the `Host` header),
//! and if routing read one while the upstream read the other, a virtual
//! host's rules could be bypassed by naming another. So [`admit`] refuses
//! (400) an HTTP/1.1 request with no `Host`, any request with more than one
//! `Host`, and any whose URI authority and `Host` disagree (RFC 9112 §3.2,
//! RFC 9113 §8.3.1); when both are present, `Host` is rewritten to the
//! URI's bytes so both say the same. One trailing dot on the host is
//! dropped (`web.` is `web`), so routing and the upstream see one name.
//!
//! The path is canonicalised as the config asks (`proxy.http`:
//! percent-decoding of unreserved characters, merging of slashes, removal
//! of `.`/`..` segments), and the request is forwarded with the path that
//! routing and policy saw. Request limits that hyper does not enforce
//! itself are checked here too: URI length (414), header count (431) and a
//! declared body length (413); a body that does not declare its length is
//! capped as it streams by [`body_cap`]. Depends on the config model and
//! [`super::error`] only.

pub mod body_cap;

use super::error::{BadRequest, ProxyError};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Request, Version};
use std::borrow::Cow;
use strait_config::HttpSettings;

/// Check and canonicalise `req` before anything reads its authority or path.
pub fn admit<B>(req: &mut Request<B>, settings: &HttpSettings) -> Result<(), ProxyError> {
    // An HTTP/2 CONNECT would tunnel in the stream (RFC 9113 §8.5), which
    // strait does not do: refused rather than sent on as a plain request.
    if req.method() == Method::CONNECT && req.version() == Version::HTTP_2 {
        return Err(BadRequest::ConnectOverHttp2.into());
    }
    limits(req, settings)?;
    one_authority(req)?;
    if let Some(path) = normalize(req, settings) {
        set_path(req, &path);
    }
    Ok(())
}

fn limits<B>(req: &Request<B>, settings: &HttpSettings) -> Result<(), ProxyError> {
    let uri = req.uri();
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > settings.max_uri_bytes {
        return Err(BadRequest::UriTooLong {
            len: uri_len,
            max: settings.max_uri_bytes,
        }
        .into());
    }
    let count = req.headers().len();
    if count > settings.max_request_headers {
        return Err(BadRequest::TooManyHeaders {
            count,
            max: settings.max_request_headers,
        }
        .into());
    }
    if let Some(max) = settings.max_request_body_bytes {
        let declared = super::headers::content_length(req.headers());
        if let Some(len) = declared.filter(|len| *len > max) {
            return Err(BadRequest::BodyTooLarge { len, max }.into());
        }
    }
    Ok(())
}

fn one_authority<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::DuplicateHost.into());
    }
    if req.version() == Version::HTTP_11 && first.is_none() {
        return Err(BadRequest::MissingHost.into());
    }
    let host_present = first.is_some();
    // An empty Host is what HTTP/1.1 sends when the target has no authority.
    let host = match first.filter(|h| !h.is_empty()) {
        Some(value) => {
            let authority = std::str::from_utf8(value.as_bytes())
                .ok()
                .filter(|h| !h.contains('@'))
                .and_then(|h| h.parse::<Authority>().ok())
                .ok_or(BadRequest::InvalidHost)?;
            Some(authority)
        }
        None => None,
    };
    let default_port = match req.uri().scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    if let (Some(uri), Some(host)) = (req.uri().authority(), host.as_ref()) {
        if !same_authority(uri, host, default_port) {
            return Err(BadRequest::AuthorityMismatch {
                uri: uri.to_string(),
                host: host.to_string(),
            }
            .into());
        }
    }
    // The URI's authority is the one routing reads first: make the Host
    // header carry exactly it, without a trailing dot. (The Host header's
    // text is `host`'s: an authority keeps the bytes it was parsed from.)
    let Some(chosen) = req.uri().authority().or(host.as_ref()) else {
        return Ok(());
    };
    let canonical = strip_trailing_dot(chosen.as_str());
    let uri_differs = req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str() != canonical);
    let host_differs = host_present && host.as_ref().is_none_or(|h| h.as_str() != canonical);
    if !(uri_differs || host_differs) {
        return Ok(());
    }
    let canonical = canonical.into_owned();
    if uri_differs {
        if let Ok(authority) = canonical.parse::<Authority>() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.authority = Some(authority);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    if host_differs {
        if let Ok(value) = HeaderValue::from_str(&canonical) {
            req.headers_mut().insert(header::HOST, value);
        }
    }
    Ok(())
}

/// `web.:80` → `web:80`; one trailing dot only, and never the whole host.
fn strip_trailing_dot(authority: &str) -> Cow<'_, str> {
    let host = crate::route::strip_port(authority);
    match host.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() && !stripped.ends_with('.') => {
            Cow::Owned(format!("{stripped}{}", &authority[host.len()..]))
        }
        _ => Cow::Borrowed(authority),
    }
}

/// Whether two authorities name the same host and port: host compared
/// without case and without one trailing dot, a missing port being the
/// scheme's default.
fn same_authority(a: &Authority, b: &Authority, default_port: u16) -> bool {
    let host = |a: &Authority| {
        let h = a.host();
        h.strip_suffix('.')
            .filter(|s| !s.is_empty())
            .unwrap_or(h)
            .to_ascii_lowercase()
    };
    let port = |a: &Authority| a.port_u16().unwrap_or(default_port);
    host(a) == host(b) && port(a) == port(b)
}

/// The canonical form of the request's path, when it differs.
fn normalize<B>(req: &Request<B>, settings: &HttpSettings) -> Option<String> {
    if req.method() == Method::CONNECT {
        return None;
    }
    let path = req.uri().path();
    if !path.starts_with('/') {
        return None;
    }
    let decode = settings.decode_unreserved && path.contains('%');
    let merge = settings.merge_slashes && path.contains("//");
    let dots = settings.normalize_path && (path.contains("/.") || decode);
    if !(decode || merge || dots) {
        return None;
    }
    let mut out = if decode {
        decode_unreserved(path)
    } else {
        path.to_string()
    };
    if settings.merge_slashes {
        while out.contains("//") {
            out = out.replace("//", "/");
        }
    }
    if settings.normalize_path {
        out = remove_dot_segments(&out);
    }
    (out != path).then_some(out)
}

/// `%41` → `A`, `%7e` → `~`; reserved and other escapes are kept as sent.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (hi * 16 + lo) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                    i += 3;
                    continue;
                }
            }
        }
        // Every byte of a valid URI path is ASCII.
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the
/// segment before it (never climbing above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

fn set_path<B>(req: &mut Request<B>, path: &str) {
    let with_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let Ok(pq) = PathAndQuery::try_from(with_query) else {
        return;
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HttpSettings {
        strait_config::Config::from_yaml("")
            .map(|c| c.proxy.http)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::get(uri).version(version);
        for h in hosts {
            builder = builder.header("host", *h);
        }
        builder.body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn reason(r: Result<(), ProxyError>) -> &'static str {
        r.err().map_or("ok", |e| e.reason())
    }

    #[test]
    fn http1_needs_exactly_one_host_that_agrees() {
        let s = settings();
        let mut r = req(Version::HTTP_11, "/", &[]);
        assert_eq!(reason(admit(&mut r, &s)), "missing-host");
        let mut r = req(Version::HTTP_11, "/", &["a", "b"]);
        assert_eq!(reason(admit(&mut r, &s)), "duplicate-host");
        let mut r = req(Version::HTTP_11, "http://admin.internal/x", &["public"]);
        assert_eq!(reason(admit(&mut r, &s)), "authority-mismatch");
        let mut r = req(Version::HTTP_11, "/", &["a b"]);
        assert_eq!(reason(admit(&mut r, &s)), "invalid-host");
        // Same host in another case, default port spelled out: one authority.
        let mut r = req(Version::HTTP_11, "http://Web:80/x", &["web"]);
        assert_eq!(reason(admit(&mut r, &s)), "ok");
        assert_eq!(r.headers()["host"], "Web:80");
        // HTTP/1.0 may leave Host out.
        let mut r = req(Version::HTTP_10, "/", &[]);
        assert_eq!(reason(admit(&mut r, &s)), "ok");
    }

    #[test]
    fn http2_host_must_match_authority() {
        let s = settings();
        let mut r = req(Version::HTTP_2, "http://web/x", &["admin"]);
        assert_eq!(reason(admit(&mut r, &s)), "authority-mismatch");
        let mut r = req(Version::HTTP_2, "http://web/x", &["WEB."]);
        assert_eq!(reason(admit(&mut r, &s)), "ok");
        let mut r = req(Version::HTTP_2, "http://web/x", &[]);
        assert_eq!(reason(admit(&mut r, &s)), "ok");
    }

    #[test]
    fn one_trailing_dot_is_dropped() {
        let s = settings();
        let mut r = req(Version::HTTP_11, "/", &["web.example.:8080"]);
        assert_eq!(reason(admit(&mut r, &s)), "ok");
        assert_eq!(r.headers()["host"], "web.example:8080");
        let mut r = req(Version::HTTP_2, "http://web./", &[]);
        assert_eq!(reason(admit(&mut r, &s)), "ok");
        assert_eq!(r.uri().authority().map(|a| a.as_str()), Some("web"));
        assert_eq!(strip_trailing_dot("web.."), "web..");
        assert_eq!(strip_trailing_dot("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn paths_are_canonical_for_routing() {
        let s = settings();
        let cases = [
            ("/a/b", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2E/admin?x=/../", "/admin?x=/../"),
            ("//admin//x", "/admin/x"),
            ("/a/./b/.", "/a/b/"),
            ("/../../etc", "/etc"),
            ("/%41%7e%2F", "/A~%2F"),
            ("/a/..", "/"),
            ("/%", "/%"),
        ];
        for (sent, routed) in cases {
            let mut r = req(Version::HTTP_11, sent, &["web"]);
            assert_eq!(reason(admit(&mut r, &s)), "ok", "{sent}");
            assert_eq!(r.uri().to_string(), routed, "{sent}");
        }
        let off = HttpSettings {
            normalize_path: false,
            merge_slashes: false,
            decode_unreserved: false,
            ..settings()
        };
        let mut r = req(Version::HTTP_11, "//a/../%41", &["web"]);
        assert_eq!(reason(admit(&mut r, &off)), "ok");
        assert_eq!(r.uri().to_string(), "//a/../%41");
    }

    #[test]
    fn limits_have_their_statuses() {
        let s = HttpSettings {
            max_uri_bytes: 16,
            max_request_headers: 2,
            max_request_body_bytes: Some(10),
            ..settings()
        };
        let mut r = req(Version::HTTP_11, "/0123456789abcdef", &["web"]);
        let e = admit(&mut r, &s).err();
        assert_eq!(e.map(|e| e.status().as_u16()), Some(414));
        let mut r = req(Version::HTTP_11, "/", &["web"]);
        r.headers_mut().insert("a", HeaderValue::from_static("1"));
        r.headers_mut().insert("b", HeaderValue::from_static("1"));
        let e = admit(&mut r, &s).err();
        assert_eq!(e.map(|e| e.status().as_u16()), Some(431));
        let mut r = req(Version::HTTP_11, "/", &["web"]);
        r.headers_mut()
            .insert("content-length", HeaderValue::from_static("11"));
        let e = admit(&mut r, &s).err();
        assert_eq!(e.map(|e| e.status().as_u16()), Some(413));
    }
}
