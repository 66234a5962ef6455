//! Hardening at the edge (issue #10), black box: the real `strait` binary
//! fed what a buggy or hostile neighbour sends. Reloads of truncated or
//! half-written config files, log floods, authority confusion, bytes that
//! look like HTTP but do not parse, blame for client-side body errors,
//! header limits, slow request bodies and drain.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One cluster `web` at `addr` routed by authority `web`.
fn web_config(addr: SocketAddr) -> String {
    format!(
        "{EPHEMERAL_LISTENERS}clusters:\n  - name: web\n    endpoints: [{{address: '{addr}'}}]\nroutes:\n  - authority: web\n    cluster: web\n"
    )
}

async fn h1(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect proxy");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    sender
}

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::default())
        .expect("request")
}

/// Wait (bounded) until the proxy's log contains `needle`.
async fn wait_for_log(proxy: &Proxy, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !proxy.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no '{needle}' in the log:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests in a bounded loop until `stop`, counting answers that are not 200.
fn load(proxy: &Proxy, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    let addr = proxy.outbound;
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        let mut client = h1(addr).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && ok + failed < 200_000 {
            if client.ready().await.is_err() {
                failed += 1;
                client = h1(addr).await;
                continue;
            }
            match client.send_request(get("web", "/")).await {
                Ok(r) if r.status() == StatusCode::OK => {
                    let _ = r.into_body().collect().await;
                    ok += 1;
                }
                _ => failed += 1,
            }
        }
        (ok, failed)
    })
}

#[tokio::test]
async fn truncated_and_half_written_config_files_are_refused_under_load() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let good = web_config(a.addr);
    let proxy = Proxy::start(&good);
    let path = proxy.config_path();
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(&proxy, stop.clone());

    // Truncated, and reloaded while empty: refused, the running config stays.
    std::fs::write(&path, "").expect("truncate");
    proxy.signal("HUP");
    wait_for_log(&proxy, "the file is empty", Duration::from_secs(10)).await;

    // Left empty across the file watcher's polls: refused again, not applied.
    let refusals = |p: &Proxy| p.log().matches("config reload refused").count();
    let deadline = Instant::now() + Duration::from_secs(15);
    while refusals(&proxy) < 2 {
        assert!(Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Half written (a valid prefix: the cluster without its route), then
    // whole before the watcher saw it hold still: never applied.
    let half = &good[..good.find("routes:").expect("routes")];
    std::fs::write(&path, half).expect("half");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&path, web_config(b.addr)).expect("rewrite");

    // The rewritten file moves `web` to `b`.
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.requests.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "never reloaded:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.expect("load");
    assert_eq!(failed, 0, "{ok} ok, {failed} failed:\n{}", proxy.log());
    assert!(ok > 100, "{ok} requests only");
    let m = proxy.metrics();
    assert!(metric_sum(&m, "config_reload_total", &["result=\"error\""]) >= 2.0);
}

#[tokio::test]
async fn a_flood_of_failures_logs_one_line_and_counts_every_one() {
    // A port nobody listens on: every request fails with connect-refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let proxy = Proxy::start(&web_config(dead));
    let mut client = h1(proxy.outbound).await;
    const N: usize = 300;
    for _ in 0..N {
        client.ready().await.expect("ready");
        let response = client.send_request(get("web", "/")).await.expect("502");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let _ = response.into_body().collect().await;
    }
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "http_proxy_errors_total",
            &["reason=\"connect-refused\""]
        ),
        N as f64,
        "{m}"
    );
    let lines = proxy.log().matches("request failed in the proxy").count();
    assert!(lines <= 2, "{lines} log lines for {N} failures");
    assert!(lines >= 1, "the first failure is logged");
}

/// Send raw bytes on a fresh connection and read what comes back until the
/// proxy closes or `within` passes.
async fn raw_exchange(addr: SocketAddr, bytes: impl AsRef<[u8]>, within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The proxy may answer and close before it has read everything.
    let _ = stream.write_all(bytes.as_ref()).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first status code in a raw HTTP/1 exchange (0 when none).
fn status_of(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `public` forwards everything to `a`; `admin.internal` refuses `/admin`
/// with a 403 and forwards the rest to `b` (both HTTP/1 upstreams).
fn vhost_config(a: &Upstream, b: &Upstream) -> String {
    format!(
        r#"{EPHEMERAL_LISTENERS}clusters:
  - {{name: a, protocol: http1, endpoints: [{{address: '{}'}}]}}
  - {{name: b, protocol: http1, endpoints: [{{address: '{}'}}]}}
virtual_hosts:
  - name: public
    domains: [public]
    routes:
      - {{name: public, cluster: a}}
  - name: internal
    domains: [admin.internal]
    routes:
      - name: no-admin
        match: {{path: {{prefix: /admin}}}}
        direct_response: {{status: 403, body: forbidden}}
      - {{name: internal, cluster: b}}
"#,
        a.addr, b.addr
    )
}

#[tokio::test]
async fn one_authority_per_request_and_canonical_routing() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let proxy = Proxy::start(&vhost_config(&a, &b));
    let within = Duration::from_secs(5);
    let exchange = |bytes: &'static str| raw_exchange(proxy.outbound, bytes, within);

    // Two names for one request: refused, whichever comes first.
    for attack in [
        // No Connection: close: a refused request ends its connection.
        "GET /admin HTTP/1.1\r\nHost: public\r\nHost: admin.internal\r\n\r\n",
        "GET /admin HTTP/1.1\r\nHost: admin.internal\r\nHost: public\r\nConnection: close\r\n\r\n",
        "GET http://public/headers HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        "GET http://admin.internal/admin HTTP/1.1\r\nHost: public\r\nConnection: close\r\n\r\n",
        "GET /headers HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let response = exchange(attack).await;
        assert_eq!(status_of(&response), 400, "{attack:?} got:\n{response}");
    }
    // HTTP/2: `host` disagreeing with `:authority` is refused.
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://public/headers")
        .header("host", "admin.internal")
        .body(Full::<Bytes>::default())
        .expect("req");
    let response = h2.send_request(req).await.expect("h2 response");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(a.requests.load(Ordering::SeqCst), 0, "nothing reached `a`");
    assert_eq!(b.requests.load(Ordering::SeqCst), 0, "nothing reached `b`");

    // The routed authority is the forwarded one: absolute-form agreeing
    // with Host reaches `a` carrying exactly that name.
    let response = exchange(
        "GET http://PUBLIC./headers HTTP/1.1\r\nHost: public\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.contains("host: PUBLIC\n"), "{response}");
    assert_eq!(a.requests.load(Ordering::SeqCst), 1);

    // Non-canonical names and paths still meet the virtual host's rules.
    for sneaky in [
        "GET /admin HTTP/1.1\r\nHost: admin.internal.\r\nConnection: close\r\n\r\n",
        "GET /admin HTTP/1.1\r\nHost: ADMIN.Internal.:80\r\nConnection: close\r\n\r\n",
        "GET /x/../admin HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        "GET //admin HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        "GET /%61dmin HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        "GET /x/%2e%2e/admin/ HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    ] {
        let response = exchange(sneaky).await;
        assert_eq!(status_of(&response), 403, "{sneaky:?} got:\n{response}");
    }
    assert_eq!(b.requests.load(Ordering::SeqCst), 0, "{}", proxy.log());
    let m = proxy.metrics();
    assert!(
        metric_sum(
            &m,
            "http_proxy_errors_total",
            &["reason=\"authority-mismatch\""]
        ) == 3.0,
        "{m}"
    );
}

#[tokio::test]
async fn header_uri_and_body_limits_answer_with_their_statuses() {
    let upstream = Upstream::start().await;
    let yaml = web_config(upstream.addr)
        + "proxy:\n  http: {max_request_body_bytes: 1000, max_uri_bytes: 4096}\n";
    let proxy = Proxy::start(&yaml);
    let within = Duration::from_secs(5);
    let send = |request: String| raw_exchange(proxy.outbound, request.into_bytes(), within);

    // A 128 KiB header: over the 64 KiB default for the whole head.
    let big = "x".repeat(128 * 1024);
    let response = send(format!(
        "GET / HTTP/1.1\r\nHost: web\r\nX-Big: {big}\r\n\r\n"
    ))
    .await;
    assert_eq!(status_of(&response), 431, "{response}");
    // 101 header fields: over the default of 100.
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = send(format!("GET / HTTP/1.1\r\nHost: web\r\n{many}\r\n")).await;
    assert_eq!(status_of(&response), 431, "{response}");
    // A 5 KiB target: over the configured 4 KiB.
    let long = "a".repeat(5 * 1024);
    let response = send(format!(
        "GET /{long} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(status_of(&response), 414, "{response}");
    // A declared body over the configured 1000 bytes.
    let response = send(
        "POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 1001\r\nConnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert_eq!(status_of(&response), 413, "{response}");
    // Within every limit: forwarded.
    let response = send(format!(
        "GET / HTTP/1.1\r\nHost: web\r\nX-Ok: {}\r\nConnection: close\r\n\r\n",
        "y".repeat(32 * 1024)
    ))
    .await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 1);

    // HTTP/2: a header block over the list size is refused with 431.
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get("http://web/")
        .header("x-big", "x".repeat(66 * 1024))
        .body(Full::<Bytes>::default())
        .expect("req");
    match h2.send_request(req).await {
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        // Or h2's CONTINUATION flood guard ends the connection first.
        Err(e) => assert!(format!("{e:?}").contains("too_many_continuations"), "{e:?}"),
    }
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        1,
        "{}",
        proxy.log()
    );
}

/// A TCP server that counts connections and never answers: where the
/// opaque path would have taken the bytes.
async fn opaque_sink() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, count)
}

/// Everything unrouted goes to `sink` (protocol `protocol`), so anything
/// forwarded as opaque TCP would land there.
fn default_cluster_config(sink: SocketAddr, protocol: &str, extra: &str) -> String {
    format!(
        "{EPHEMERAL_LISTENERS}clusters:\n  - name: sink\n    protocol: {protocol}\n    endpoints: [{{address: '{sink}'}}]\n{extra}"
    )
    .replace(
        "  outbound: {address: 127.0.0.1, port: 0}\n",
        "  outbound: {address: 127.0.0.1, port: 0, default_cluster: sink}\n",
    )
}

#[tokio::test]
async fn http_that_does_not_parse_never_takes_the_opaque_path() {
    let (sink, connections) = opaque_sink().await;
    let proxy = Proxy::start(&default_cluster_config(sink, "auto", ""));
    let within = Duration::from_secs(5);
    for (bytes, status) in [
        ("GET / HTTP/1.2\r\nHost: web\r\n\r\n".to_string(), 400),
        ("GET /admin\r\n\r\n".to_string(), 400),
        ("POST / HTTP/2.0\r\nHost: web\r\n\r\n".to_string(), 400),
        (
            format!(
                "GET /{} HTTP/1.1\r\nHost: web\r\n\r\n",
                "a".repeat(9 * 1024)
            ),
            414,
        ),
    ] {
        let response = raw_exchange(proxy.outbound, &bytes, within).await;
        assert_eq!(
            status_of(&response),
            status,
            "{:.60} got:\n{response}",
            bytes
        );
    }
    // A broken HTTP/2 preface: SETTINGS, then GOAWAY(PROTOCOL_ERROR).
    let reply = raw_exchange(proxy.outbound, "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", within)
        .await
        .into_bytes();
    assert!(reply.len() >= 26, "{reply:?}");
    assert_eq!(reply[3], 0x4, "SETTINGS first: {reply:?}");
    assert_eq!(reply[12], 0x7, "then GOAWAY: {reply:?}");
    assert_eq!(&reply[22..26], &[0, 0, 0, 1], "PROTOCOL_ERROR: {reply:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "{}", proxy.log());

    // Bytes that are not HTTP at all still go through as opaque TCP.
    let mut other = TcpStream::connect(proxy.outbound).await.expect("connect");
    other
        .write_all(b"hello, not http\r\n")
        .await
        .expect("write");
    let deadline = Instant::now() + within;
    while connections.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "opaque TCP no longer forwarded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_request_line_stalled_past_the_detect_timeout_is_still_http() {
    let (sink, connections) = opaque_sink().await;
    let proxy = Proxy::start(&default_cluster_config(
        sink,
        "auto",
        "proxy: {detect_timeout: 200ms}\nvirtual_hosts:\n  - name: web\n    domains: [web]\n    routes:\n      - {name: deny, direct_response: {status: 403, body: no}}\n",
    ));
    let mut stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    stream.write_all(b"GET /adm").await.expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream
        .write_all(b"in HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await;
    assert_eq!(status_of(&response), 403, "{response}");
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn declared_protocols_never_fall_back_to_opaque() {
    let (sink, connections) = opaque_sink().await;
    let within = Duration::from_secs(5);
    // The default cluster speaks HTTP/1: non-HTTP bytes get hyper's 400.
    let proxy = Proxy::start(&default_cluster_config(sink, "http1", ""));
    let response = raw_exchange(proxy.outbound, "hello, not http\r\n\r\n", within).await;
    assert_eq!(status_of(&response), 400, "{response}");
    drop(proxy);
    // The listener speaks HTTP/2: a client without the preface is cut off.
    let yaml = default_cluster_config(sink, "auto", "").replace(
        "default_cluster: sink}",
        "default_cluster: sink, protocol: http2}",
    );
    let proxy = Proxy::start(&yaml);
    let started = Instant::now();
    let response = raw_exchange(proxy.outbound, "INVALID CONNECTION PREFACE\r\n\r\n", within).await;
    assert!(
        started.elapsed() < within,
        "connection left open: {response}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0, "{}", proxy.log());
}

#[tokio::test]
async fn a_clients_broken_chunked_body_is_its_own_fault() {
    broken_chunked_body_to("http1").await;
}

/// The same over HTTP/2 to the upstream: strait's own HTTP/2 client says
/// that the client's body broke (the upstream sees a reset stream).
#[tokio::test]
async fn a_clients_broken_chunked_body_is_its_own_fault_over_http2() {
    broken_chunked_body_to("http2").await;
}

async fn broken_chunked_body_to(protocol: &str) {
    let upstream = Upstream::start().await;
    // One failure would eject the only endpoint, were it blamed.
    let yaml = web_config(upstream.addr).replace(
        "    endpoints:",
        &format!("    protocol: {protocol}\n    outlier_detection: {{consecutive_failures: 1}}\n    endpoints:"),
    );
    let proxy = Proxy::start(&yaml);
    let within = Duration::from_secs(5);
    // The upstream answers only after 10 s: the proxy's 400 must come from
    // the broken body, not race an answer that has already started (as
    // `/echo`'s does, which made this test flaky).
    for broken in [
        // A chunk size that is not hex, and one that overflows.
        "POST /slow?ms=10000 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        "POST /slow?ms=10000 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        // Chunk data without its CRLF.
        "POST /slow?ms=10000 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n",
    ] {
        let response = raw_exchange(proxy.outbound, broken, within).await;
        assert_eq!(status_of(&response), 400, "{broken:?} got:\n{response}");
        assert!(response.contains("strait-proxy-error: request-body"), "{response}");
    }
    let m = proxy.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "http_proxy_errors_total",
            &["reason=\"upstream-error\""]
        ),
        0.0,
        "{m}"
    );
    assert_eq!(metric_sum(&m, "endpoint_ejections_total", &[]), 0.0, "{m}");
    assert_eq!(
        metric_sum(&m, "response_total", &["status_code=\"502\""]),
        0.0,
        "{m}"
    );
    // The endpoint still serves.
    let response = raw_exchange(
        proxy.outbound,
        "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        within,
    )
    .await;
    assert_eq!(status_of(&response), 200, "{response}\n{}", proxy.log());
}

/// The `q`th quantile of `samples` (sorted in place).
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_only_slow_themselves() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&web_config(upstream.addr));
    const SLOW: usize = 200;
    const BODY: usize = 30;
    // 200 POSTs, one every 10 ms, whose bodies trickle in at one byte per
    // 100 ms (3 s each); the upstream answers each before reading it.
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = proxy.outbound;
    let counter = answered.clone();
    let launcher = tokio::spawn(async move {
        let mut slow = Vec::new();
        for _ in 0..SLOW {
            slow.push(tokio::spawn(slow_post(addr, BODY, counter.clone())));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for task in slow {
            let _ = task.await;
        }
    });

    // Normal GETs through the same proxy meanwhile, one every 10 ms.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut client = h1(proxy.outbound).await;
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while latencies.len() < 200 && Instant::now() < deadline {
        let started = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(1), async {
            client.ready().await.ok()?;
            let response = client.send_request(get("web", "/")).await.ok()?;
            response.into_body().collect().await.ok()
        })
        .await;
        latencies.push(started.elapsed());
        if !matches!(ok, Ok(Some(_))) {
            client = h1(proxy.outbound).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = latencies.len();
    let p50 = quantile(&mut latencies, 0.5);
    let p99 = quantile(&mut latencies, 0.99);
    let max = quantile(&mut latencies, 1.0);
    println!("slow-body: {n} GETs: p50 {p50:?}, p99 {p99:?}, max {max:?}; {SLOW} slow POSTs");
    launcher.await.expect("slow POSTs");
    assert!(
        p99 < Duration::from_millis(50),
        "GET p99 {p99:?} (p50 {p50:?}, max {max:?}, {n} GETs)"
    );
    // And no slow POST waited for another's body either.
    assert_eq!(
        answered.load(Ordering::SeqCst),
        SLOW,
        "POSTs answered early"
    );
}

/// A POST to `/early` whose `body`-byte body is sent one byte per 100 ms;
/// counts in `answered` when a response arrives within 1 s of the head.
async fn slow_post(addr: SocketAddr, body: usize, answered: Arc<std::sync::atomic::AtomicUsize>) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST /early HTTP/1.1\r\nHost: web\r\nContent-Length: {body}\r\n\r\n");
    if write.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(1), read.read(&mut buf)).await;
        if matches!(read, Ok(Ok(n)) if n > 0) {
            answered.fetch_add(1, Ordering::SeqCst);
        }
    });
    for _ in 0..body {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if write.write_all(b"x").await.is_err() {
            break;
        }
    }
    let _ = reader.await;
}

#[tokio::test]
async fn drain_says_close_on_http1_and_goaway_on_http2() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(&web_config(upstream.addr));

    // HTTP/1: a request in flight when the drain starts is answered with
    // `Connection: close`.
    let mut inflight = TcpStream::connect(proxy.outbound).await.expect("connect");
    inflight
        .write_all(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .expect("write");
    // HTTP/2: a stream in flight; the client hears GOAWAY before its answer.
    let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let slow = h2.send_request(
        Request::get("http://web/slow?ms=1000")
            .body(Full::<Bytes>::default())
            .expect("req"),
    );
    let slow = tokio::spawn(slow);
    // A connection still being detected when the drain starts.
    let mut late = TcpStream::connect(proxy.outbound).await.expect("connect");
    late.write_all(b"GE").await.expect("write");

    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.requests.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal("TERM");
    wait_for_log(&proxy, "shutting down", Duration::from_secs(5)).await;

    // HTTP/2: no new stream once GOAWAY came, while the old one finishes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = h2
            .send_request(
                Request::get("http://web/")
                    .body(Full::<Bytes>::default())
                    .expect("req"),
            )
            .await;
        if refused.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HTTP/2 streams still accepted while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = slow
        .await
        .expect("join")
        .expect("the in-flight stream finishes");
    assert_eq!(response.status(), StatusCode::OK);

    let mut answer = String::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(5), inflight.read_to_string(&mut answer)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // The request that was still being detected is served, and told to close.
    late.write_all(b"T / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), late.read_to_string(&mut answer)).await;
    assert_eq!(status_of(&answer), 200, "{answer}\n{}", proxy.log());
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}
