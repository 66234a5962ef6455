//! L7 routing through the real proxy, table-driven: virtual hosts by
//! authority (exact, `*.suffix`, `prefix.*`, `*`, port ignored), routes by
//! path (exact, prefix, regex), method, headers (exact, prefix, present,
//! inverted) and query parameters; actions: a cluster, a weighted split,
//! a direct response, a redirect; header edits and prefix/host rewrites.
//! Which of three real upstreams served each request is counted.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use support::upstream::Upstream;
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::net::TcpStream;

fn config(a: &Upstream, b: &Upstream, c: &Upstream) -> String {
    format!(
        r#"{EPHEMERAL_LISTENERS}runtime: {{worker_threads: 1}}
clusters:
  - {{name: a, endpoints: [{{address: '{}'}}]}}
  - {{name: b, endpoints: [{{address: '{}'}}]}}
  - {{name: c, endpoints: [{{address: '{}'}}]}}
virtual_hosts:
  - name: api
    domains: [api.example.com, "*.api.example.com"]
    routes:
      - name: health
        match: {{path: {{exact: /health}}}}
        direct_response: {{status: 200, body: healthy}}
      - name: v2-header
        match: {{path: {{prefix: /v1}}, headers: [{{name: X-Version, exact: "2"}}]}}
        cluster: b
      - name: post-only
        match: {{path: {{prefix: /v1}}, method: post}}
        cluster: c
      - name: users
        match: {{path: {{regex: "/users/[0-9]+"}}}}
        cluster: c
      - name: debug-query
        match: {{query: [{{name: debug, present: true}}]}}
        cluster: b
        response_headers: {{add: {{x-debug: "on"}}}}
      - name: not-mobile
        match: {{path: {{prefix: /app}}, headers: [{{name: user-agent, prefix: Mobile, invert: true}}]}}
        cluster: b
      - name: rewrite
        match: {{path: {{prefix: /old}}}}
        cluster: a
        rewrite: {{prefix: /headers, host: internal.api}}
        request_headers: {{add: {{x-added: "yes"}}, remove: [x-secret]}}
      - name: v1
        match: {{path: {{prefix: /v1}}}}
        cluster: a
      - name: elsewhere
        redirect: {{host: www.example.com, path: /moved, status: 302}}
  - name: shop
    domains: ["shop.*"]
    routes: [{{cluster: c}}]
  - name: everything-else
    domains: ["*"]
    routes:
      - name: canary
        split: [{{cluster: a, weight: 90}}, {{cluster: b, weight: 10}}]
"#,
        a.addr, b.addr, c.addr
    )
}

/// (method, host, path, headers) -> the upstream that serves it (by index;
/// None = the proxy answers itself) and the status.
type Case<'a> = (
    Method,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<usize>,
    StatusCode,
);

struct Client(http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn connect(proxy: &Proxy) -> Client {
        let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client(sender)
    }

    async fn send(
        &mut self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.0.ready().await.expect("ready");
        let response = self
            .0
            .send_request(req.body(Full::default()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test]
async fn routes_by_host_path_method_headers_and_query() {
    let (a, b, c) = (
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    );
    let proxy = Proxy::start(&config(&a, &b, &c));
    let mut client = Client::connect(&proxy).await;
    let served = || [&a, &b, &c].map(|u| u.requests.load(Ordering::SeqCst));

    let cases: &[Case] = &[
        (
            Method::GET,
            "api.example.com",
            "/v1/items",
            &[("x-version", "2")],
            Some(1),
            StatusCode::OK,
        ),
        (
            Method::POST,
            "api.example.com",
            "/v1/items",
            &[],
            Some(2),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "api.example.com",
            "/v1/items",
            &[],
            Some(0),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "API.example.com:8080",
            "/v1/items",
            &[],
            Some(0),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "eu.api.example.com",
            "/v1/items",
            &[],
            Some(0),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "api.example.com",
            "/users/42",
            &[],
            Some(2),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "api.example.com",
            "/users/abc",
            &[],
            None,
            StatusCode::FOUND,
        ),
        (
            Method::GET,
            "api.example.com",
            "/search?q=1&debug",
            &[],
            Some(1),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "api.example.com",
            "/app",
            &[("user-agent", "Desktop/1.0")],
            Some(1),
            StatusCode::OK,
        ),
        (
            Method::GET,
            "api.example.com",
            "/app",
            &[("user-agent", "Mobile Safari")],
            None,
            StatusCode::FOUND,
        ),
        (
            Method::GET,
            "api.example.com",
            "/health",
            &[],
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            "shop.example.org",
            "/cart",
            &[],
            Some(2),
            StatusCode::OK,
        ),
    ];
    for (method, host, path, headers, upstream, status) in cases {
        let before = served();
        let (got, _, body) = client.send(method.clone(), host, path, headers).await;
        let after = served();
        let hit: Vec<usize> = (0..3).filter(|i| after[*i] > before[*i]).collect();
        let want: Vec<usize> = upstream.iter().copied().collect();
        assert_eq!(
            hit, want,
            "{method} {host}{path} {headers:?} went to {hit:?}, expected {want:?} ({got} {body})"
        );
        assert_eq!(got, *status, "{method} {host}{path}: {body}");
    }

    // Direct response, redirect, response header edits.
    let (_, _, body) = client
        .send(Method::GET, "api.example.com", "/health", &[])
        .await;
    assert_eq!(body, "healthy");
    let (_, headers, _) = client
        .send(Method::GET, "api.example.com", "/nowhere", &[])
        .await;
    assert_eq!(
        headers.get("location").map(|v| v.as_bytes()),
        Some(&b"http://www.example.com/moved"[..])
    );
    let (_, headers, _) = client
        .send(Method::GET, "api.example.com", "/x?debug=1", &[])
        .await;
    assert_eq!(
        headers.get("x-debug").map(|v| v.as_bytes()),
        Some(&b"on"[..])
    );

    // Rewrites and request header edits, as the upstream saw them.
    let (status, _, body) = client
        .send(
            Method::GET,
            "api.example.com",
            "/old?x=1",
            &[("x-secret", "hide me")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("uri: /headers?x=1\n"), "{body}");
    assert!(body.contains("host: internal.api\n"), "{body}");
    assert!(body.contains("x-added: yes\n"), "{body}");
    assert!(!body.contains("x-secret"), "{body}");

    let m = proxy.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "request_total",
            &["route=\"v2-header\"", "cluster=\"b\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "response_total",
            &["route=\"health\"", "status_code=\"200\""]
        ),
        2.0,
        "{m}"
    );
}

#[tokio::test]
async fn weighted_split_lands_within_two_percent() {
    let (a, b, c) = (
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    );
    let proxy = Proxy::start(&config(&a, &b, &c));
    let mut client = Client::connect(&proxy).await;
    const N: usize = 2000;
    for _ in 0..N {
        let (status, _, _) = client.send(Method::GET, "anything.test", "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let to_a = a.requests.load(Ordering::SeqCst) as f64 / N as f64;
    let to_b = b.requests.load(Ordering::SeqCst) as f64 / N as f64;
    assert!((to_a - 0.9).abs() <= 0.02, "a got {to_a}");
    assert!((to_b - 0.1).abs() <= 0.02, "b got {to_b}");
    assert_eq!(c.requests.load(Ordering::SeqCst), 0);
}

fn policy_config(upstream: &Upstream) -> String {
    format!(
        r#"{EPHEMERAL_LISTENERS}clusters:
  - {{name: app, endpoints: [{{address: '{}'}}]}}
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: slow
        match: {{path: {{prefix: /hang}}}}
        timeout: 300ms
        cluster: app
      - name: chaos
        match: {{path: {{prefix: /chaos}}}}
        fault: {{abort: {{status: 503, percent: 30}}}}
        cluster: app
      - name: delayed
        match: {{path: {{prefix: /delayed}}}}
        fault: {{delay: {{fixed: 150ms, percent: 100}}}}
        cluster: app
      - name: limited
        match: {{path: {{prefix: /limited}}}}
        rate_limit: {{requests_per_second: 1, burst: 5}}
        cluster: app
      - name: grpc
        match: {{path: {{prefix: /grpc-hang}}}}
        rewrite: {{prefix: /hang}}
        cluster: app
"#,
        upstream.addr
    )
}

#[tokio::test]
async fn route_timeouts_and_grpc_timeout_give_504() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&policy_config(&upstream));
    let mut client = Client::connect(&proxy).await;
    let started = std::time::Instant::now();
    let (status, headers, _) = client.send(Method::GET, "app", "/hang", &[]).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"response-timeout"[..])
    );
    // The upstream sees the request given up, not left running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while upstream.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream never saw the cancellation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The client's own deadline wins over the cluster's 30 s default.
    let started = std::time::Instant::now();
    let (status, _, _) = client
        .send(
            Method::GET,
            "app",
            "/grpc-hang",
            &[("grpc-timeout", "200m")],
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn fault_injection_and_rate_limit() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&policy_config(&upstream));
    let mut client = Client::connect(&proxy).await;
    const N: usize = 1000;
    let mut aborted = 0;
    for _ in 0..N {
        let (status, headers, _) = client.send(Method::GET, "app", "/chaos", &[]).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                headers.get("strait-proxy-error").map(|v| v.as_bytes()),
                Some(&b"fault-injected"[..])
            );
            aborted += 1;
        }
    }
    let share = aborted as f64 / N as f64;
    assert!(
        (share - 0.30).abs() < 0.05,
        "aborted {share} of requests, configured 30%"
    );
    assert_eq!(upstream.requests.load(Ordering::SeqCst), N - aborted);

    let started = std::time::Instant::now();
    let (status, _, _) = client.send(Method::GET, "app", "/delayed", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));

    // Burst of 5, then one a second: 20 back-to-back requests see 429s.
    let mut limited = 0;
    for _ in 0..20 {
        let (status, headers, _) = client.send(Method::GET, "app", "/limited", &[]).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(
                headers.get("strait-proxy-error").map(|v| v.as_bytes()),
                Some(&b"rate-limited"[..])
            );
            limited += 1;
        }
    }
    assert!((14..=15).contains(&limited), "{limited} of 20 limited");
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "response_total",
            &["route=\"limited\"", "status_code=\"429\""]
        ),
        limited as f64,
        "{m}"
    );
}
