//! A tap's query: which records it wants and for how long.
//!
//! `GET /tap?direction=&authority=&path_prefix=&method=&status=&limit=&seconds=`;
//! every parameter is optional and the filters combine with AND:
//! `direction` is `outbound` or `inbound`; `authority` matches the
//! request's authority case-insensitively, and without a port any port;
//! `path_prefix` is a prefix of the (normalised) path; `method` is an
//! HTTP method; `status` is a code (`503`) or a class (`5xx`). `limit`
//! (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) ends the tap after
//! that many records, `seconds` (default [`DEFAULT_SECONDS`], at most
//! [`MAX_SECONDS`]) after that long. Unknown parameters are refused, so a
//! typo does not silently tap everything.

use super::Record;
use crate::Direction;
use std::time::Duration;

pub const DEFAULT_LIMIT: u64 = 100;
pub const MAX_LIMIT: u64 = 10_000;
pub const DEFAULT_SECONDS: u64 = 30;
pub const MAX_SECONDS: u64 = 600;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub direction: Option<Direction>,
    /// Lowercase; `authority_has_port` says whether the port must match too.
    authority: Option<String>,
    authority_has_port: bool,
    path_prefix: Option<String>,
    method: Option<http::Method>,
    status: Option<StatusMatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusMatch {
    Code(u16),
    /// `5xx` is `Class(5)`.
    Class(u16),
}

/// A parsed `/tap` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapQuery {
    pub filter: Filter,
    pub limit: u64,
    pub duration: Duration,
}

impl TapQuery {
    /// Parse a query string (`None`: no `?` at all). The error says which
    /// parameter is wrong and what it takes.
    pub fn parse(query: Option<&str>) -> Result<TapQuery, String> {
        let mut filter = Filter::default();
        let mut limit = DEFAULT_LIMIT;
        let mut seconds = DEFAULT_SECONDS;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            let value = decode(value)?;
            if value.is_empty() {
                return Err(format!("{key} is empty"));
            }
            match key.as_str() {
                "direction" => {
                    filter.direction = Some(match value.as_str() {
                        "outbound" => Direction::Outbound,
                        "inbound" => Direction::Inbound,
                        _ => return Err(format!("direction '{value}': outbound or inbound")),
                    })
                }
                "authority" => {
                    let authority = value.to_ascii_lowercase();
                    filter.authority_has_port = has_port(&authority);
                    filter.authority = Some(authority);
                }
                "path_prefix" => {
                    if !value.starts_with('/') {
                        return Err(format!("path_prefix '{value}' must start with /"));
                    }
                    filter.path_prefix = Some(value);
                }
                "method" => {
                    let method = http::Method::from_bytes(value.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("method '{value}' is not an HTTP method"))?;
                    filter.method = Some(method);
                }
                "status" => filter.status = Some(status(&value)?),
                "limit" => limit = number(&key, &value, MAX_LIMIT)?,
                "seconds" => seconds = number(&key, &value, MAX_SECONDS)?,
                _ => {
                    return Err(format!(
                        "unknown parameter '{key}': direction, authority, path_prefix, method, status, limit, seconds"
                    ))
                }
            }
        }
        Ok(TapQuery {
            filter,
            limit,
            duration: Duration::from_secs(seconds),
        })
    }
}

impl Filter {
    /// Whether a request could match, before its status is known.
    pub fn matches_request(
        &self,
        direction: Direction,
        method: &http::Method,
        authority: Option<&str>,
        path: &str,
    ) -> bool {
        self.direction.is_none_or(|d| d == direction)
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
            && self
                .authority
                .as_deref()
                .is_none_or(|want| authority.is_some_and(|a| self.authority_matches(want, a)))
    }

    /// Whether a finished record matches.
    pub fn matches(&self, record: &Record) -> bool {
        let path = record.path.split('?').next().unwrap_or("");
        let authority = Some(record.authority.as_str()).filter(|a| !a.is_empty());
        self.matches_request(record.direction, &record.method, authority, path)
            && self.status.is_none_or(|status| match status {
                StatusMatch::Code(code) => record.status == code,
                StatusMatch::Class(class) => record.status / 100 == class,
            })
    }

    fn authority_matches(&self, want: &str, authority: &str) -> bool {
        let authority = if self.authority_has_port {
            authority
        } else {
            crate::route::strip_port(authority)
        };
        authority.eq_ignore_ascii_case(want)
    }
}

/// `host:port` or `[v6]:port`, not a bare IPv6 address.
fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

fn status(value: &str) -> Result<StatusMatch, String> {
    let bad = || format!("status '{value}': a code (503) or a class (5xx)");
    let lower = value.to_ascii_lowercase();
    if let Some(class) = lower.strip_suffix("xx") {
        return match class.parse::<u16>() {
            Ok(digit @ 1..=5) if class.len() == 1 => Ok(StatusMatch::Class(digit)),
            _ => Err(bad()),
        };
    }
    match value.parse::<u16>() {
        Ok(code @ 100..=599) => Ok(StatusMatch::Code(code)),
        _ => Err(bad()),
    }
}

fn number(key: &str, value: &str, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n @ 1..) if n <= max => Ok(n),
        _ => Err(format!("{key} '{value}': a whole number from 1 to {max}")),
    }
}

/// Percent-decode a query component (`+` is a space).
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("'{text}' has a bad percent escape"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("'{text}' is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<TapQuery, String> {
        TapQuery::parse(Some(q))
    }

    #[test]
    fn defaults_without_a_query() {
        let q = TapQuery::parse(None).expect("no query is fine");
        assert_eq!(q.filter, Filter::default());
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert_eq!(q.duration, Duration::from_secs(DEFAULT_SECONDS));
    }

    #[test]
    fn parses_every_parameter() {
        let q = parse("direction=inbound&authority=Web.Default%3A8080&path_prefix=%2Fapi+v1&method=post&status=5xx&limit=7&seconds=3")
            .expect("valid");
        assert_eq!(q.filter.direction, Some(Direction::Inbound));
        assert_eq!(q.filter.authority.as_deref(), Some("web.default:8080"));
        assert!(q.filter.authority_has_port);
        assert_eq!(q.filter.path_prefix.as_deref(), Some("/api v1"));
        assert_eq!(q.filter.method, Some(http::Method::POST));
        assert_eq!(q.filter.status, Some(StatusMatch::Class(5)));
        assert_eq!(q.limit, 7);
        assert_eq!(q.duration, Duration::from_secs(3));
        assert_eq!(
            parse("status=404").expect("code").filter.status,
            Some(StatusMatch::Code(404))
        );
    }

    #[test]
    fn refuses_bad_values_naming_the_parameter() {
        for (query, names) in [
            ("direction=sideways", "direction"),
            ("path_prefix=api", "path_prefix"),
            ("method=GE T", "method"),
            ("status=6xx", "status"),
            ("status=99", "status"),
            ("status=abc", "status"),
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("seconds=601", "seconds"),
            ("seconds=-1", "seconds"),
            ("authority=", "authority"),
            ("authorty=web", "authorty"),
            ("path_prefix=%2", "%2"),
        ] {
            let err = parse(query).expect_err(query);
            assert!(err.contains(names), "{query}: {err}");
        }
    }

    #[test]
    fn caps_are_accepted_exactly() {
        let q = parse("limit=10000&seconds=600").expect("at the caps");
        assert_eq!((q.limit, q.duration.as_secs()), (MAX_LIMIT, MAX_SECONDS));
    }

    #[test]
    fn authority_without_a_port_matches_any_port() {
        let get = http::Method::GET;
        let any_port = parse("authority=web.default").expect("valid").filter;
        assert!(any_port.matches_request(Direction::Outbound, &get, Some("WEB.default:80"), "/"));
        assert!(any_port.matches_request(Direction::Outbound, &get, Some("web.default"), "/"));
        assert!(!any_port.matches_request(Direction::Outbound, &get, Some("web.other"), "/"));
        assert!(!any_port.matches_request(Direction::Outbound, &get, None, "/"));
        let one_port = parse("authority=web.default:80").expect("valid").filter;
        assert!(one_port.matches_request(Direction::Outbound, &get, Some("web.default:80"), "/"));
        assert!(!one_port.matches_request(Direction::Outbound, &get, Some("web.default:81"), "/"));
        assert!(!one_port.matches_request(Direction::Outbound, &get, Some("web.default"), "/"));
    }

    #[test]
    fn request_side_filters() {
        let f = parse("direction=outbound&method=GET&path_prefix=/api")
            .expect("valid")
            .filter;
        let get = http::Method::GET;
        assert!(f.matches_request(Direction::Outbound, &get, None, "/api/users"));
        assert!(!f.matches_request(Direction::Inbound, &get, None, "/api/users"));
        assert!(!f.matches_request(Direction::Outbound, &http::Method::POST, None, "/api"));
        assert!(!f.matches_request(Direction::Outbound, &get, None, "/apx"));
    }

    #[test]
    fn has_port_knows_ipv6() {
        assert!(has_port("a:1"));
        assert!(has_port("[::1]:80"));
        assert!(!has_port("[::1]"));
        assert!(!has_port("a"));
        assert!(!has_port("a:"));
    }
}
