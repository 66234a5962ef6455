//! Header handling between client and upstream: hop-by-hop headers are
//! removed (RFC 9110 §7.6.1) except what an upgrade needs, the request is
//! reshaped for the upstream's HTTP version (origin-form + Host for
//! HTTP/1.1, absolute URI / :authority for HTTP/2), and the inbound side
//! appends the client's address to `x-forwarded-for`.

use crate::pool::HttpVersion;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Method, Request, Version};
use std::net::SocketAddr;

/// Headers that describe one hop and must not be forwarded.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
const UPGRADE_BIT: u8 = 1 << 4;
const TE_BIT: u8 = 1 << 5;

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket, h2c…).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

/// Whether the `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Remove hop-by-hop headers. `keep_upgrade` preserves `Upgrade` and
/// `Connection: upgrade`, which an upgrade handshake must carry through.
/// Says whether a `Host` header is left (found in the same pass).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    // One pass over the names (no hashing) finds which are present: most
    // messages carry none, and the rest only `Connection: keep-alive`.
    let mut present = 0u8; // bit i: HOP_BY_HOP[i]; TE_BIT: `TE`
    let mut host = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        } else if name == header::TE {
            present |= TE_BIT;
        } else if name == header::HOST {
            host = true;
        }
    }
    if present == 0 {
        return host;
    }
    // What most HTTP/1.1 messages carry: one `Connection: keep-alive` (or
    // `close`), naming no header. It goes without tokenising the list.
    if present == 1 {
        if let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION) {
            let mut values = connection.iter();
            let only_persistence = values.next().is_some_and(|v| {
                let v = v.as_bytes();
                v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
            }) && values.next().is_none();
            if only_persistence {
                connection.remove_entry_mult();
                return host;
            }
        }
    }
    // Headers named in `Connection` are hop-by-hop too; the tokens that
    // name no header of their own (or one removed below anyway) are skipped.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !["close", "keep-alive", "upgrade"]
                    .iter()
                    .any(|k| t.eq_ignore_ascii_case(k))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(&name);
        }
    }
    let upgrade = (keep_upgrade && present & UPGRADE_BIT != 0)
        .then(|| headers.remove(header::UPGRADE))
        .flatten();
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    // `TE: trailers` is how gRPC clients ask for trailers; anything else
    // goes. (`Connection` may name `TE`, removing it above.)
    // HTTP/2 takes exactly `trailers`, so the one kept is written so.
    if present & TE_BIT != 0 {
        if let Some(te) = headers.get(header::TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(header::TE);
            } else if te.as_bytes() != b"trailers" {
                headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // `Connection` may have named `Host` itself.
    host && (present & 1 == 0 || headers.contains_key(header::HOST))
}

/// A message's declared `Content-Length`, when it is one number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The authority a request is for: the URI's, else the Host header's.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// Reshape `req` for an upstream speaking `version`. `fallback` names the
/// authority when the client gave none (an HTTP/1.0 request without Host).
pub fn prepare_request<B>(
    req: &mut Request<B>,
    version: HttpVersion,
    upgrade: bool,
    fallback: SocketAddr,
) {
    let has_host = strip_hop_by_hop(req.headers_mut(), upgrade);
    match version {
        HttpVersion::Http1 => {
            if !has_host {
                let host = req
                    .uri()
                    .authority()
                    .map(|a| HeaderValue::from_str(a.as_str()))
                    .unwrap_or_else(|| HeaderValue::from_str(&fallback.to_string()));
                if let Ok(host) = host {
                    req.headers_mut().insert(header::HOST, host);
                }
            }
            // HTTP/1.1 to an origin takes origin-form; CONNECT keeps authority-form.
            if req.uri().scheme().is_some() && req.method() != Method::CONNECT {
                let path = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(path);
            }
            *req.version_mut() = Version::HTTP_11;
        }
        HttpVersion::Http2 => {
            let authority = req
                .uri()
                .authority()
                .cloned()
                .or_else(|| {
                    let host = req.headers().get(header::HOST)?;
                    Authority::try_from(host.as_bytes()).ok()
                })
                .or_else(|| Authority::try_from(fallback.to_string()).ok());
            req.headers_mut().remove(header::HOST);
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            if parts.scheme.is_none() {
                parts.scheme = Some(Scheme::HTTP);
            }
            if parts.authority.is_none() {
                parts.authority = authority;
            }
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            *req.version_mut() = Version::HTTP_2;
        }
    }
}

/// Append the client's IP to `x-forwarded-for` (inbound only: the app
/// otherwise sees every request coming from the proxy on loopback).
/// `client` is the IP, formatted once per connection.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    match headers.entry(const { HeaderName::from_static("x-forwarded-for") }) {
        header::Entry::Vacant(vacant) => drop(vacant.insert(client.clone())),
        // Several prior lines are one comma-separated list: join them all.
        header::Entry::Occupied(mut prior) => {
            let mut joined = Vec::new();
            for hop in prior.iter() {
                joined.extend_from_slice(hop.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.as_bytes());
            let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.clone());
            prior.insert(value); // replaces every prior line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_client_to_any_prior_chain() {
        let client = HeaderValue::from_static("10.0.0.7");
        let mut fresh = HeaderMap::new();
        append_forwarded_for(&mut fresh, &client);
        assert_eq!(fresh["x-forwarded-for"], "10.0.0.7");

        let mut chained = HeaderMap::new();
        chained.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        chained.append("x-forwarded-for", HeaderValue::from_static("198.51.100.2"));
        append_forwarded_for(&mut chained, &client);
        // One value: every prior line, in order, then the client.
        let values: Vec<_> = chained.get_all("x-forwarded-for").iter().collect();
        assert_eq!(values, ["192.0.2.1, 198.51.100.2, 10.0.0.7"]);
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(
            h.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert!(h.get("x-app").is_some());
    }

    #[test]
    fn a_lone_persistence_token_is_removed_and_a_second_line_still_read() {
        for value in ["keep-alive", "Keep-Alive", "close"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(value));
            h.insert(header::HOST, HeaderValue::from_static("web"));
            h.insert("x-app", HeaderValue::from_static("kept"));
            assert!(strip_hop_by_hop(&mut h, false), "host found");
            assert!(h.get(header::CONNECTION).is_none(), "{value}");
            assert_eq!(h.len(), 2, "host and x-app left after {value}");
        }
        // A second `Connection` line naming a header: the full path runs.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        assert!(!strip_hop_by_hop(&mut h, false), "no host");
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-secret").is_none());
        assert_eq!(h.len(), 1, "only x-app left");
    }

    #[test]
    fn te_trailers_is_kept_as_http2_spells_it() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("Trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn strips_each_hop_by_hop_header_alone_and_keeps_the_rest() {
        for (name, value) in [
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            h.insert("x-app", HeaderValue::from_static("kept"));
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name} removed");
            assert_eq!(h.len(), 1, "only x-app left after {name}");
        }
    }

    #[test]
    fn keeps_upgrade_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }

    #[test]
    fn reshapes_between_versions() {
        let fallback: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let mut h1 = Request::get("/p?q=1")
            .header("host", "web:80")
            .body(())
            .expect("req");
        prepare_request(&mut h1, HttpVersion::Http2, false, fallback);
        assert_eq!(h1.uri().to_string(), "http://web:80/p?q=1");
        assert!(h1.headers().get("host").is_none());

        let mut h2 = Request::get("http://api/x")
            .version(Version::HTTP_2)
            .body(())
            .expect("req");
        prepare_request(&mut h2, HttpVersion::Http1, false, fallback);
        assert_eq!(h2.uri().to_string(), "/x");
        assert_eq!(
            h2.headers().get("host").map(|v| v.as_bytes()),
            Some(&b"api"[..])
        );
    }

    #[test]
    fn host_is_kept_or_restored_for_http1() {
        let fallback: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let mut kept = Request::get("/p")
            .header("host", "web")
            .body(())
            .expect("req");
        prepare_request(&mut kept, HttpVersion::Http1, false, fallback);
        assert_eq!(kept.headers().get_all("host").iter().count(), 1);

        // `Connection: host` strips the client's Host; HTTP/1.1 still needs one.
        let mut named = Request::get("http://api/x")
            .header("host", "api")
            .header("connection", "host")
            .body(())
            .expect("req");
        prepare_request(&mut named, HttpVersion::Http1, false, fallback);
        assert_eq!(
            named.headers().get("host").map(|v| v.as_bytes()),
            Some(&b"api"[..])
        );
    }
}
