//! Trace propagation and span export, black box: two real strait
//! proxies in a row (the client's outbound, the server's inbound) in
//! front of a real upstream, and an OTLP collector this test runs (a
//! tonic `TraceService` from `opentelemetry-proto`). Asserts what the
//! upstream saw in its headers and what spans the collector received;
//! and that a collector that is down or stalls fails no request while
//! the dropped-span counter rises.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{free_addr, metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::net::TcpStream;

/// A span as the collector received it, with its resource's service name.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/gRPC collector on 127.0.0.1:0 that keeps every span.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

struct Sink(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self
            .0
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?;
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    kept.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(s, _)| s);
            Some((accepted, listener))
        });
        let service = TraceServiceServer::new(Sink(spans.clone()));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Collector {
            addr,
            spans,
            server,
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }

    /// Wait (bounded) until at least `n` spans have arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn tracing_yaml(collector: SocketAddr, service: &str, extra: &str) -> String {
    format!("tracing:\n  otlp: {{address: '{collector}'{extra}}}\n  service_name: {service}\n")
}

/// The server side: inbound to the app.
fn server_proxy(app: SocketAddr, tracing: &str) -> Proxy {
    Proxy::start(&format!(
        "{}clusters:\n  - name: app\n    endpoints: [{{address: '{app}'}}]\n{tracing}",
        EPHEMERAL_LISTENERS.replace(
            "inbound: {address: 127.0.0.1, port: 0}",
            "inbound: {address: 127.0.0.1, port: 0, default_cluster: app}"
        ),
    ))
}

/// The client side: outbound to `server` as cluster `web`.
fn client_proxy(server: SocketAddr, tracing: &str) -> Proxy {
    Proxy::start(&format!(
        "{}clusters:\n  - name: web\n    endpoints: [{{address: '{server}'}}]\n{tracing}",
        EPHEMERAL_LISTENERS.replace(
            "outbound: {address: 127.0.0.1, port: 0}",
            "outbound: {address: 127.0.0.1, port: 0, default_cluster: web}"
        ),
    ))
}

/// The headers the upstream saw, from its `/headers` answer.
struct Seen(HashMap<String, String>);

impl Seen {
    fn get(&self, name: &str) -> &str {
        self.0
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the upstream saw no {name}: {:?}", self.0))
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// A client on one keep-alive connection.
struct Client(http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client(sender)
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let mut req = Request::get(path).header("host", "web");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::default()).expect("request");
        let response = self.0.send_request(req).await.expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// GET `/headers` and what the upstream saw.
    async fn headers(&mut self, headers: &[(&str, &str)]) -> Seen {
        let (status, body) = self.get("/headers", headers).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        Seen(
            body.lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

fn text(value: &str) -> Option<Value> {
    Some(Value::StringValue(value.into()))
}

/// The spans of one trace (hex id, 32 digits), client side first.
fn trace<'a>(spans: &'a [Received], trace_id: &str) -> Vec<&'a Received> {
    let mut of_trace: Vec<_> = spans
        .iter()
        .filter(|r| hex(&r.span.trace_id) == trace_id)
        .collect();
    of_trace.sort_by_key(|r| r.service != "client-side");
    of_trace
}

/// Wait (bounded) until a proxy's counter reaches `at_least`.
async fn wait_metric(proxy: &Proxy, family: &str, labels: &[&str], at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric_sum(&proxy.metrics(), family, labels);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn spans_cross_two_proxies_under_the_clients_traceparent() {
    let collector = Collector::start().await;
    let app = Upstream::start().await;
    let server = server_proxy(app.addr, &tracing_yaml(collector.addr, "server-side", ""));
    let client = client_proxy(
        server.inbound,
        &tracing_yaml(collector.addr, "client-side", ""),
    );
    let mut app_client = Client::connect(client.outbound).await;

    // Unsampled first: passes byte for byte and is never exported (the
    // sampled ones after it would carry its span in their wake).
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let seen = app_client
        .headers(&[("traceparent", unsampled), ("x-request-id", "req-0")])
        .await;
    assert_eq!(seen.get("traceparent"), unsampled);
    assert_eq!(seen.get("x-request-id"), "req-0");

    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let mut sent = Vec::new();
    for i in 1..=3u8 {
        let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e47{i:02x}");
        let parent = format!("00f067aa0ba902{i:02x}");
        let traceparent = format!("00-{trace_id}-{parent}-01");
        let seen = app_client
            .headers(&[("traceparent", &traceparent), ("tracestate", tracestate)])
            .await;
        // The trace and flags stay; the parent is the server proxy's span.
        let arrived = seen.get("traceparent").to_string();
        assert!(arrived.starts_with(&format!("00-{trace_id}-")), "{arrived}");
        assert!(arrived.ends_with("-01"), "{arrived}");
        assert_ne!(arrived, traceparent);
        assert_eq!(seen.get("tracestate"), tracestate);
        assert_eq!(seen.get("x-request-id").len(), 36, "a UUID was added");
        sent.push((trace_id, parent, arrived[36..52].to_string()));
    }

    // One request with no context at all: the client proxy starts it.
    let seen = app_client.headers(&[]).await;
    let started = seen.get("traceparent").to_string();
    assert_eq!(started.len(), 55, "{started}");
    assert!(
        started.starts_with("00-") && started.ends_with("-01"),
        "{started}"
    );
    assert!(seen.has("x-request-id"));

    // Four sampled requests, a span on each proxy for each.
    for proxy in [&client, &server] {
        let exported = wait_metric(proxy, "trace_spans_exported_total", &[], 4.0).await;
        assert_eq!(exported, 4.0, "{}", proxy.log());
    }
    let spans = collector.wait_for(8).await;
    assert_eq!(spans.len(), 8, "{spans:#?}");
    assert!(trace(&spans, "0af7651916cd43dd8448eb211c80319c").is_empty());

    for (trace_id, parent, upstream_parent) in &sent {
        let hop = trace(&spans, trace_id);
        assert_eq!(hop.len(), 2, "one span per proxy: {hop:#?}");
        let (outbound, inbound) = (&hop[0].span, &hop[1].span);
        assert_eq!(hop[0].service, "client-side");
        assert_eq!(hop[1].service, "server-side");
        assert_eq!(outbound.kind, SpanKind::Client as i32);
        assert_eq!(inbound.kind, SpanKind::Server as i32);
        // client's span -> client proxy -> server proxy -> the app.
        assert_eq!(&hex(&outbound.parent_span_id), parent);
        assert_eq!(inbound.parent_span_id, outbound.span_id);
        assert_eq!(&hex(&inbound.span_id), upstream_parent);
        assert!(outbound.start_time_unix_nano <= inbound.start_time_unix_nano);
        assert!(inbound.end_time_unix_nano <= outbound.end_time_unix_nano);
        for span in [outbound, inbound] {
            assert_eq!(attr(span, "http.request.method"), text("GET"));
            assert_eq!(attr(span, "url.path"), text("/headers"));
            assert_eq!(
                attr(span, "http.response.status_code"),
                Some(Value::IntValue(200))
            );
            assert_eq!(attr(span, "server.address"), text("web"));
            assert!(span.status.is_none(), "{span:?}");
        }
        assert_eq!(attr(outbound, "strait.upstream.cluster"), text("web"));
        assert_eq!(
            attr(outbound, "network.peer.address"),
            text(&server.inbound.ip().to_string())
        );
        assert_eq!(
            attr(outbound, "strait.upstream.endpoint"),
            text(&server.inbound.to_string())
        );
        assert_eq!(attr(inbound, "strait.upstream.cluster"), text("app"));
        assert_eq!(attr(inbound, "network.peer.address"), text("127.0.0.1"));
    }

    let root = trace(&spans, &started[3..35]);
    assert_eq!(root.len(), 2, "{root:#?}");
    assert!(
        root[0].span.parent_span_id.is_empty(),
        "the client proxy's span is the root"
    );
    assert_eq!(root[1].span.parent_span_id, root[0].span.span_id);
    assert_eq!(hex(&root[1].span.span_id), started[36..52]);
}

#[tokio::test]
async fn b3_clients_interoperate() {
    let collector = Collector::start().await;
    let app = Upstream::start().await;
    let server = server_proxy(app.addr, &tracing_yaml(collector.addr, "server-side", ""));
    let client = client_proxy(
        server.inbound,
        &tracing_yaml(collector.addr, "client-side", ""),
    );
    let mut app_client = Client::connect(client.outbound).await;

    // B3 single, 128-bit trace id, sampled.
    let single_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let single_span = "e457b5a2e4d86bd1";
    let seen = app_client
        .headers(&[("b3", &format!("{single_trace}-{single_span}-1"))])
        .await;
    let b3 = seen.get("b3").to_string();
    let parts: Vec<&str> = b3.split('-').collect();
    assert_eq!(parts.len(), 4, "{b3}");
    assert_eq!((parts[0], parts[2]), (single_trace, "1"), "{b3}");
    assert!(!seen.has("traceparent"), "B3 in, B3 out: nothing added");

    // B3 multi, 64-bit trace id, sampled; the parent id they sent goes.
    let multi_trace = "48485a3953bb6124";
    let seen = app_client
        .headers(&[
            ("x-b3-traceid", multi_trace),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ])
        .await;
    assert_eq!(seen.get("x-b3-traceid"), multi_trace);
    assert_eq!(seen.get("x-b3-sampled"), "1");
    let multi_span = seen.get("x-b3-spanid").to_string();
    let multi_parent = seen.get("x-b3-parentspanid").to_string();
    assert!(!seen.has("traceparent"));

    // Sampled out by the client: untouched, not exported.
    let denied = "0000000000000000000000000000abcd-00000000000000ef-0";
    let seen = app_client.headers(&[("b3", denied)]).await;
    assert_eq!(seen.get("b3"), denied);

    for proxy in [&client, &server] {
        assert_eq!(
            wait_metric(proxy, "trace_spans_exported_total", &[], 2.0).await,
            2.0
        );
    }
    let spans = collector.wait_for(4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");

    let single = trace(&spans, single_trace);
    assert_eq!(single.len(), 2, "{single:#?}");
    assert_eq!(hex(&single[0].span.parent_span_id), single_span);
    assert_eq!(single[1].span.parent_span_id, single[0].span.span_id);
    // What the app got: the server proxy's span, its parent the client proxy's.
    assert_eq!(parts[1], hex(&single[1].span.span_id));
    assert_eq!(parts[3], hex(&single[0].span.span_id));

    let multi = trace(&spans, &format!("{:0>32}", multi_trace));
    assert_eq!(multi.len(), 2, "{multi:#?}");
    assert_eq!(hex(&multi[0].span.parent_span_id), "a2fb4a1d1a96d312");
    assert_eq!(multi[1].span.parent_span_id, multi[0].span.span_id);
    assert_eq!(multi_span, hex(&multi[1].span.span_id));
    assert_eq!(multi_parent, hex(&multi[0].span.span_id));
}

#[tokio::test]
async fn without_tracing_headers_still_propagate() {
    let app = Upstream::start().await;
    let server = server_proxy(app.addr, "");
    let client = client_proxy(server.inbound, "");
    let mut app_client = Client::connect(client.outbound).await;

    let seen = app_client.headers(&[]).await;
    let traceparent = seen.get("traceparent");
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    // Nobody records it, so nobody should think it sampled.
    assert!(traceparent.ends_with("-00"), "{traceparent}");
    assert_eq!(seen.get("x-request-id").len(), 36);

    // Untouched end to end: no span here to be the parent.
    let headers = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        ("x-request-id", "abc-123"),
    ];
    let seen = app_client.headers(&headers).await;
    for (name, value) in headers {
        assert_eq!(seen.get(name), value);
    }
    // A malformed traceparent is no trace context: a new one replaces it.
    let seen = app_client
        .headers(&[("traceparent", "00-nonsense-01")])
        .await;
    assert_eq!(seen.get("traceparent").len(), 55);
    assert_eq!(
        metric_sum(&client.metrics(), "trace_spans_exported_total", &[]),
        0.0
    );
}

/// Send requests until `done` says so or the bound is hit; every one
/// must succeed, promptly. Returns how many were sent.
async fn load_until(proxy: &Proxy, done: impl Fn(&str) -> bool) -> usize {
    let mut app_client = Client::connect(proxy.outbound).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut slowest = Duration::ZERO;
    for sent in 1..=3000 {
        let started = Instant::now();
        let (status, body) = app_client.get("/", &[]).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, StatusCode::OK, "request {sent}: {body}");
        if sent % 25 == 0 && (done(&proxy.metrics()) || Instant::now() > deadline) {
            // A request never waits on the collector.
            assert!(
                slowest < Duration::from_secs(2),
                "slowest request {slowest:?}"
            );
            return sent;
        }
    }
    panic!("the condition never held: {}", proxy.metrics());
}

#[tokio::test]
async fn a_collector_that_is_down_fails_no_request() {
    let app = Upstream::start().await;
    let down = free_addr();
    let proxy = client_proxy(app.addr, &tracing_yaml(down, "client-side", ""));
    load_until(&proxy, |m| {
        metric_sum(
            m,
            "trace_spans_dropped_total",
            &["reason=\"export_failed\""],
        ) > 0.0
    })
    .await;
    assert_eq!(
        metric_sum(&proxy.metrics(), "trace_spans_exported_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_stalled_collector_fails_no_request_and_overflow_is_counted() {
    // Accepts connections and never says a word.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = stalled.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = stalled.accept().await {
            sockets.push(socket);
        }
    });
    let app = Upstream::start().await;
    let proxy = client_proxy(
        app.addr,
        &tracing_yaml(addr, "client-side", ", max_queued_spans: 16"),
    );
    load_until(&proxy, |m| {
        metric_sum(m, "trace_spans_dropped_total", &["reason=\"queue_full\""]) > 0.0
    })
    .await;
    assert_eq!(
        metric_sum(&proxy.metrics(), "trace_spans_exported_total", &[]),
        0.0
    );
    held.abort();
}

#[tokio::test]
async fn export_follows_a_config_reload() {
    let collector = Collector::start().await;
    let app = Upstream::start().await;
    let proxy = client_proxy(app.addr, "");
    let sampled = [(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )];
    let mut app_client = Client::connect(proxy.outbound).await;
    app_client.headers(&sampled).await;

    let yaml = std::fs::read_to_string(proxy.config_path()).expect("config");
    proxy.rewrite_config(&format!(
        "{yaml}{}",
        tracing_yaml(collector.addr, "client-side", "")
    ));
    // Until the reload lands, requests go unrecorded; bounded either way.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric_sum(&proxy.metrics(), "config_reload_total", &["result=\"ok\""]) < 1.0 {
        assert!(Instant::now() < deadline, "no reload: {}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app_client.headers(&sampled).await;
    let spans = collector.wait_for(1).await;
    assert_eq!(spans.len(), 1, "{}", proxy.log());
    assert_eq!(spans[0].service, "client-side");
}

#[tokio::test]
async fn a_cancelled_request_still_ends_its_span() {
    let collector = Collector::start().await;
    let app = Upstream::start().await;
    let proxy = client_proxy(app.addr, &tracing_yaml(collector.addr, "client-side", ""));
    let mut app_client = Client::connect(proxy.outbound).await;
    let request = tokio::spawn(async move {
        app_client
            .get(
                "/hang",
                &[(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )],
            )
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), app.started.notified())
        .await
        .expect("the request reached the upstream");
    // The client gives up: its connection goes with the task.
    request.abort();
    let spans = collector.wait_for(1).await;
    assert_eq!(spans.len(), 1, "{}", proxy.log());
    let span = &spans[0].span;
    assert_eq!(attr(span, "http.response.status_code"), None);
    assert_eq!(
        attr(span, "error.type"),
        text("request cancelled before the response")
    );
    assert_eq!(attr(span, "url.path"), text("/hang"));
}

#[tokio::test]
async fn spans_over_mtls_name_the_peer_identity() {
    const CLIENT_ID: &str = "spiffe://strait.test/ns/default/sa/client";
    const SERVER_ID: &str = "spiffe://strait.test/ns/default/sa/server";
    let pki = support::pki::Pki::new("trace-ca");
    let collector = Collector::start().await;
    let app = Upstream::start().await;
    let server = server_proxy(
        app.addr,
        &format!(
            "{}{}",
            pki.identity_yaml(SERVER_ID, "server"),
            tracing_yaml(collector.addr, "server-side", "")
        ),
    );
    let client = Proxy::start(&format!(
        "{}clusters:\n  - name: web\n    tls: {{identity: '{SERVER_ID}'}}\n    endpoints: [{{address: '{}'}}]\n{}{}",
        EPHEMERAL_LISTENERS.replace(
            "outbound: {address: 127.0.0.1, port: 0}",
            "outbound: {address: 127.0.0.1, port: 0, default_cluster: web}"
        ),
        server.inbound,
        pki.identity_yaml(CLIENT_ID, "client"),
        tracing_yaml(collector.addr, "client-side", ""),
    ));
    let mut app_client = Client::connect(client.outbound).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let seen = app_client
        .headers(&[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))])
        .await;
    assert_eq!(seen.get("strait-client-id"), CLIENT_ID, "the hop was mTLS");

    let spans = collector.wait_for(2).await;
    let hop = trace(&spans, trace_id);
    assert_eq!(hop.len(), 2, "{spans:#?}");
    assert_eq!(
        attr(&hop[0].span, "strait.tls.peer_identity"),
        text(SERVER_ID)
    );
    assert_eq!(
        attr(&hop[1].span, "strait.tls.peer_identity"),
        text(CLIENT_ID)
    );
    assert_eq!(hop[1].span.parent_span_id, hop[0].span.span_id);
}
