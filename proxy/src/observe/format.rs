//! A [`Record`] as a line: JSON (the tap's format and the access log's
//! default) or Apache's combined log format followed by strait's own
//! fields as `key=value` pairs (a combined-format parser that stops after
//! the user agent reads it unchanged). Formatting runs off the data path:
//! on the access log's writer thread, or in the tap's reader.

use super::Record;
use serde::Serialize;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: String,
    direction: &'static str,
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    duration_ms: f64,
    request_bytes: u64,
    response_bytes: u64,
    route: &'a str,
    cluster: &'a str,
    endpoint: Option<String>,
    upstream_connect_ms: Option<f64>,
    retries: u32,
    client_identity: Option<&'a str>,
    server_identity: Option<&'a str>,
    peer: String,
    trace_id: Option<&'a str>,
    request_id: Option<&'a str>,
    user_agent: Option<&'a str>,
    error: Option<&'static str>,
    stream_broken: bool,
}

fn millis(d: Duration) -> f64 {
    // Microsecond precision is plenty and keeps lines short.
    (d.as_micros() as f64) / 1000.0
}

/// `record` as one JSON object and a newline.
pub fn json(record: &Record) -> String {
    let line = JsonLine {
        timestamp: rfc3339(record.start),
        direction: record.direction.as_str(),
        method: record.method.as_str(),
        authority: &record.authority,
        path: &record.path,
        protocol: protocol(record.protocol),
        status: record.status,
        duration_ms: millis(record.duration),
        request_bytes: record.request_bytes,
        response_bytes: record.response_bytes,
        route: &record.route,
        cluster: &record.cluster,
        endpoint: record.endpoint.map(|e| e.to_string()),
        upstream_connect_ms: record.upstream_connect.map(millis),
        retries: record.retries,
        client_identity: record.client_identity.as_deref(),
        server_identity: record.server_identity.as_deref(),
        peer: record.peer.to_string(),
        trace_id: record.trace_id.as_deref(),
        request_id: record.request_id.as_deref(),
        user_agent: record.user_agent.as_deref(),
        error: record.error,
        stream_broken: record.stream_broken,
    };
    // Every field serializes (strings, numbers, options): no error case.
    let mut text =
        serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    text.push('\n');
    text
}

/// `record` in the combined log format, then strait's fields, and a newline:
/// `peer - identity [time] "METHOD path PROTO" status bytes "referer" "agent" key=value…`
pub fn combined(record: &Record) -> String {
    let mut line = String::with_capacity(256);
    let user = record.client_identity.as_deref().unwrap_or("-");
    let bytes = match record.response_bytes {
        0 => "-".to_string(),
        n => n.to_string(),
    };
    let _ = write!(
        line,
        "{} - {} [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
        record.peer.ip(),
        escape(user).replace(' ', "_"),
        clf_time(record.start),
        record.method.as_str(),
        escape(&record.path),
        protocol(record.protocol),
        record.status,
        bytes,
        escape(record.referer.as_deref().unwrap_or("-")),
        escape(record.user_agent.as_deref().unwrap_or("-")),
    );
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let _ = write!(
        line,
        " direction={} authority=\"{}\" duration_ms={:.3} request_bytes={} route=\"{}\" cluster=\"{}\" endpoint={} upstream_connect_ms={} retries={} trace_id={} request_id=\"{}\"",
        record.direction.as_str(),
        escape(&record.authority),
        millis(record.duration),
        record.request_bytes,
        escape(&record.route),
        escape(&record.cluster),
        dash(record.endpoint.map(|e| e.to_string())),
        dash(record.upstream_connect.map(|d| format!("{:.3}", millis(d)))),
        record.retries,
        escape(record.trace_id.as_deref().unwrap_or("-")),
        escape(record.request_id.as_deref().unwrap_or("-")),
    );
    if let Some(error) = record.error {
        let _ = write!(line, " error={error}");
    }
    if record.stream_broken {
        line.push_str(" stream_broken=true");
    }
    line.push('\n');
    line
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// As Apache does: `"` and `\` escaped, other bytes outside printable
/// ASCII as `\xHH`, so a line is always one line and its quotes balance.
fn escape(text: &str) -> String {
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for b in text.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// UTC civil time of `t`: (year, month 1-12, day, hour, minute, second, millis).
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
        since.subsec_millis(),
    )
}

/// `2026-11-24T13:28:56.123Z`
fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `24/Nov/2026:13:28:56 +0000`
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(t);
    let month = MONTHS[(mo as usize).saturating_sub(1) % 12];
    format!("{d:02}/{month}/{y:04}:{h:02}:{mi:02}:{s:02} +0000")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Direction;
    use std::sync::Arc;

    fn record() -> Record {
        Record {
            direction: Direction::Inbound,
            // 2026-11-24T13:28:56.250Z
            start: UNIX_EPOCH + Duration::from_millis(1_795_526_936_250),
            method: http::Method::POST,
            authority: "web.default:8080".into(),
            path: "/api/items?q=\"x\"".into(),
            protocol: http::Version::HTTP_11,
            status: 201,
            duration: Duration::from_micros(12_345),
            request_bytes: 11,
            response_bytes: 42,
            route: Arc::from("items"),
            cluster: Arc::from("web"),
            endpoint: Some("10.0.0.7:8080".parse().expect("addr")),
            upstream_connect: Some(Duration::from_micros(1_500)),
            retries: 2,
            client_identity: Some(Arc::from("spiffe://cluster.local/ns/a/sa/b")),
            server_identity: None,
            peer: "10.1.2.3:45678".parse().expect("addr"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            request_id: Some("req-1".into()),
            user_agent: Some("curl/8.0".into()),
            referer: None,
            error: None,
            stream_broken: false,
        }
    }

    #[test]
    fn civil_time_matches_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_millis(1_795_526_936_250)),
            "24/Nov/2026:13:28:56 +0000"
        );
    }

    #[test]
    fn combined_format_is_apache_combined_then_strait_fields() {
        let line = combined(&record());
        assert_eq!(
            line,
            "10.1.2.3 - spiffe://cluster.local/ns/a/sa/b [24/Nov/2026:13:28:56 +0000] \
             \"POST /api/items?q=\\\"x\\\" HTTP/1.1\" 201 42 \"-\" \"curl/8.0\" \
             direction=inbound authority=\"web.default:8080\" duration_ms=12.345 request_bytes=11 \
             route=\"items\" cluster=\"web\" endpoint=10.0.0.7:8080 upstream_connect_ms=1.500 \
             retries=2 trace_id=4bf92f3577b34da6a3ce929d0e0e4736 request_id=\"req-1\"\n"
        );
    }

    #[test]
    fn combined_format_marks_absent_values() {
        let mut r = record();
        r.client_identity = None;
        r.response_bytes = 0;
        r.endpoint = None;
        r.upstream_connect = None;
        r.trace_id = None;
        r.user_agent = Some("bad\nagent".into());
        r.error = Some("no-route");
        r.stream_broken = true;
        let line = combined(&r);
        assert!(
            line.starts_with("10.1.2.3 - - [24/Nov/2026:13:28:56 +0000] "),
            "{line}"
        );
        assert!(line.contains("\" 201 - \"-\" \"bad\\x0aagent\" "), "{line}");
        assert!(
            line.contains(" endpoint=- upstream_connect_ms=- "),
            "{line}"
        );
        assert!(
            line.ends_with(" error=no-route stream_broken=true\n"),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn json_carries_every_field() {
        let line = json(&record());
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(v["timestamp"], "2026-11-24T13:28:56.250Z");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/api/items?q=\"x\"");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 201);
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["request_bytes"], 11);
        assert_eq!(v["response_bytes"], 42);
        assert_eq!(v["route"], "items");
        assert_eq!(v["cluster"], "web");
        assert_eq!(v["endpoint"], "10.0.0.7:8080");
        assert_eq!(v["upstream_connect_ms"], 1.5);
        assert_eq!(v["retries"], 2);
        assert_eq!(v["client_identity"], "spiffe://cluster.local/ns/a/sa/b");
        assert_eq!(v["server_identity"], serde_json::Value::Null);
        assert_eq!(v["peer"], "10.1.2.3:45678");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["stream_broken"], false);
    }
}
