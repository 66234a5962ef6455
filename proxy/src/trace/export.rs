//! The OTLP/gRPC exporter: one task per configured collector, fed by a
//! bounded queue the request path never waits on. It sends batches of up
//! to [`BATCH_SIZE`] spans, or what it has [`BATCH_DELAY`] after the
//! first one arrived, one export at a time, each bounded by
//! [`EXPORT_TIMEOUT`]. While an export is slow the queue fills and
//! further spans are dropped (and counted) at the door: a slow, stalled or
//! absent collector costs requests nothing. A failed export is dropped,
//! not retried, and logged at most once per [`LOG_INTERVAL`].

use super::{SpanRecord, TraceMetrics};
use crate::Direction;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use std::time::Duration;
use strait_config::Tracing;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const BATCH_SIZE: usize = 512;
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Start the exporter for `config` on the current runtime; spans sent to
/// the returned queue are exported until every sender is gone.
pub fn spawn(config: &Tracing, metrics: TraceMetrics) -> mpsc::Sender<SpanRecord> {
    let (queue, spans) = mpsc::channel(config.max_queued_spans);
    tokio::spawn(run(config.clone(), spans, metrics));
    queue
}

async fn run(config: Tracing, mut spans: mpsc::Receiver<SpanRecord>, metrics: TraceMetrics) {
    let uri = format!("http://{}", config.otlp_address);
    let endpoint = match tonic::transport::Endpoint::from_shared(uri) {
        Ok(endpoint) => endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT),
        Err(e) => {
            // Validation admits only host:port, so this is not expected;
            // spans still drain (and are counted) rather than pile up.
            tracing::error!(collector = %config.otlp_address, error = %e, "cannot export spans to this address");
            while let Some(_span) = spans.recv().await {
                metrics.dropped_export_failed.inc();
            }
            return;
        }
    };
    let mut client = TraceServiceClient::new(endpoint.connect_lazy());
    let resource = resource(&config.service_name);
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    let mut last_log: Option<Instant> = None;
    loop {
        let open = next_batch(&mut spans, &mut batch).await;
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "strait".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans: batch.drain(..).map(to_otlp).collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            let result = tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await;
            let failure = match result {
                Ok(Ok(_)) => None,
                Ok(Err(status)) => Some(status.to_string()),
                Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
            };
            match failure {
                None => metrics.exported.inc_by(count),
                Some(error) => {
                    metrics.dropped_export_failed.inc_by(count);
                    if last_log.is_none_or(|at| at.elapsed() >= LOG_INTERVAL) {
                        last_log = Some(Instant::now());
                        tracing::warn!(collector = %config.otlp_address, %error, spans = count, "span export failed; spans dropped (logged once a minute)");
                    }
                }
            }
        }
        if !open {
            return;
        }
    }
}

/// Wait for a span, then gather more until the batch is full or
/// [`BATCH_DELAY`] has passed. False once the queue is closed and empty.
async fn next_batch(spans: &mut mpsc::Receiver<SpanRecord>, batch: &mut Vec<SpanRecord>) -> bool {
    match spans.recv().await {
        Some(span) => batch.push(span),
        None => return false,
    }
    let deadline = tokio::time::sleep(BATCH_DELAY);
    tokio::pin!(deadline);
    while batch.len() < BATCH_SIZE {
        tokio::select! {
            received = spans.recv_many(batch, BATCH_SIZE - batch.len()) => {
                if received == 0 {
                    return false;
                }
            }
            _ = &mut deadline => break,
        }
    }
    true
}

fn resource(service_name: &str) -> Resource {
    Resource {
        attributes: vec![string("service.name", service_name)],
        ..Default::default()
    }
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// A span in OTLP, with the attributes OpenTelemetry's HTTP semantic
/// conventions name, plus the proxy's own under `strait.`.
pub fn to_otlp(record: SpanRecord) -> Span {
    let kind = match record.direction {
        Direction::Outbound => span::SpanKind::Client,
        Direction::Inbound => span::SpanKind::Server,
    };
    let mut attributes = vec![
        string("http.request.method", record.method.as_str()),
        string("url.path", record.path),
        string("client.address", record.client.ip().to_string()),
        int("client.port", i64::from(record.client.port())),
        string("strait.direction", record.direction.as_str()),
    ];
    // Zero: no response (the request was cancelled first).
    if record.status != 0 {
        attributes.push(int("http.response.status_code", i64::from(record.status)));
    }
    if let Some(route) = &record.route {
        attributes.push(string("http.route", &**route));
    }
    if let Some(authority) = &record.authority {
        let (host, port) = split_authority(authority);
        attributes.push(string("server.address", host));
        if let Some(port) = port {
            attributes.push(int("server.port", i64::from(port)));
        }
    }
    // The peer on the far side of this span: the client for a server
    // span, the endpoint the request went to for a client span.
    let peer = match record.direction {
        Direction::Inbound => Some(record.client),
        Direction::Outbound => record.endpoint,
    };
    if let Some(peer) = peer {
        attributes.push(string("network.peer.address", peer.ip().to_string()));
        attributes.push(int("network.peer.port", i64::from(peer.port())));
    }
    if let Some(cluster) = &record.cluster {
        attributes.push(string("strait.upstream.cluster", &**cluster));
    }
    if let Some(endpoint) = record.endpoint {
        attributes.push(string("strait.upstream.endpoint", endpoint.to_string()));
    }
    if record.retries > 0 {
        attributes.push(int("http.request.resend_count", i64::from(record.retries)));
    }
    if let Some(identity) = &record.peer_identity {
        attributes.push(string("strait.tls.peer_identity", &**identity));
    }
    if let Some(error) = record.error {
        attributes.push(string("error.type", error));
    }
    // A server span's 4xx is the client's doing, not a failure of the span.
    let failed = record.error.is_some()
        || record.status >= 500
        || (kind == span::SpanKind::Client && record.status >= 400);
    let name = match &record.route {
        Some(route) => format!("{} {route}", record.method),
        None => record.method.to_string(),
    };
    Span {
        trace_id: record.trace_id.to_vec(),
        span_id: record.span_id.to_vec(),
        parent_span_id: record
            .parent_span_id
            .map(|p| p.to_vec())
            .unwrap_or_default(),
        // Sampled: only sampled spans are recorded.
        flags: 1,
        name,
        kind: kind as i32,
        start_time_unix_nano: record.start_unix_nano,
        end_time_unix_nano: record.end_unix_nano,
        attributes,
        status: failed.then(|| Status {
            code: status::StatusCode::Error as i32,
            message: record.error.unwrap_or_default().to_string(),
        }),
        ..Default::default()
    }
}

/// `host[:port]`, `[v6][:port]`.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => match port.parse() {
            Ok(port) => (
                host.trim_start_matches('[').trim_end_matches(']'),
                Some(port),
            ),
            Err(_) => (authority, None),
        },
        _ => (
            authority.trim_start_matches('[').trim_end_matches(']'),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            direction: Direction::Outbound,
            start_unix_nano: 10,
            end_unix_nano: 20,
            method: http::Method::GET,
            route: Some("users".into()),
            status: 503,
            path: "/users/7".into(),
            authority: Some("web.default:8080".into()),
            client: "10.0.0.1:5555".parse().unwrap(),
            cluster: Some("web".into()),
            endpoint: Some("10.0.0.9:8080".parse().unwrap()),
            retries: 2,
            peer_identity: None,
            error: None,
        }
    }

    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn span_carries_the_semantic_conventions() {
        let span = to_otlp(record());
        assert_eq!(span.name, "GET users");
        assert_eq!(span.kind, span::SpanKind::Client as i32);
        assert_eq!(span.parent_span_id, vec![3; 8]);
        let s = |v: &str| any_value::Value::StringValue(v.into());
        assert_eq!(attr(&span, "http.request.method"), Some(&s("GET")));
        assert_eq!(attr(&span, "http.route"), Some(&s("users")));
        assert_eq!(
            attr(&span, "http.response.status_code"),
            Some(&any_value::Value::IntValue(503))
        );
        assert_eq!(attr(&span, "server.address"), Some(&s("web.default")));
        assert_eq!(
            attr(&span, "server.port"),
            Some(&any_value::Value::IntValue(8080))
        );
        assert_eq!(attr(&span, "network.peer.address"), Some(&s("10.0.0.9")));
        assert_eq!(attr(&span, "strait.upstream.cluster"), Some(&s("web")));
        assert_eq!(
            attr(&span, "http.request.resend_count"),
            Some(&any_value::Value::IntValue(2))
        );
        assert_eq!(span.status.unwrap().code, status::StatusCode::Error as i32);
    }

    #[test]
    fn authority_forms() {
        assert_eq!(split_authority("a.b"), ("a.b", None));
        assert_eq!(split_authority("a.b:81"), ("a.b", Some(81)));
        assert_eq!(split_authority("[::1]:81"), ("::1", Some(81)));
        assert_eq!(split_authority("[::1]"), ("::1", None));
    }

    #[tokio::test(start_paused = true)]
    async fn batch_closes_at_its_delay_or_size() {
        let (tx, mut rx) = mpsc::channel(BATCH_SIZE * 2);
        let mut batch = Vec::new();
        tx.try_send(record()).unwrap();
        // One span, then nothing: the batch goes at BATCH_DELAY.
        let started = Instant::now();
        assert!(next_batch(&mut rx, &mut batch).await);
        assert_eq!(batch.len(), 1);
        assert_eq!(started.elapsed(), BATCH_DELAY);
        batch.clear();
        for _ in 0..BATCH_SIZE + 1 {
            tx.try_send(record()).unwrap();
        }
        let started = Instant::now();
        assert!(next_batch(&mut rx, &mut batch).await);
        assert_eq!(
            (batch.len(), started.elapsed()),
            (BATCH_SIZE, Duration::ZERO)
        );
        batch.clear();
        // Closed: the last span comes with the news.
        drop(tx);
        assert!(!next_batch(&mut rx, &mut batch).await);
        assert_eq!(batch.len(), 1);
    }
}
