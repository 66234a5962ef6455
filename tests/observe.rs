//! Access logs and the live tap, through the real binary: log lines (JSON
//! and combined, to files) carry the right values after real requests;
//! taps with different filters see exactly their requests and end at
//! their limit, at their deadline, and when their client goes away; a tap
//! whose reader stalls costs requests nothing but dropped records.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::upstream::{Behaviour, Upstream};
use support::{http_get, metric_sum, Proxy, TempDir};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// `web.test` routes `/items` to a cluster whose upstream fails every
/// other request (so each request there is retried exactly once), answers
/// `/down` itself with 503, and sends the rest to `web`; `other.test` goes
/// to `web`. Inbound traffic goes to `web`. `logs` adds an access_log section.
fn config(web: &Upstream, flaky: &Upstream, logs: &str) -> String {
    format!(
        r#"listeners:
  outbound: {{address: 127.0.0.1, port: 0}}
  inbound: {{address: 127.0.0.1, port: 0, default_cluster: web}}
  admin: {{address: 127.0.0.1, port: 0}}
clusters:
  - name: web
    endpoints: [{{address: '{web}'}}]
  - name: flaky
    retry_budget: {{percent: 100, min_per_second: 100}}
    endpoints: [{{address: '{flaky}'}}]
virtual_hosts:
  - name: web
    domains: [web.test]
    routes:
      - name: items
        match: {{path: {{prefix: /items}}}}
        cluster: flaky
        retry: {{attempts: 2, on: ['503'], backoff_base: 1ms, backoff_max: 2ms}}
      - name: down
        match: {{path: {{prefix: /down}}}}
        direct_response: {{status: 503, body: down}}
      - name: rest
        cluster: web
  - name: other
    domains: [other.test]
    routes:
      - name: other
        cluster: web
{logs}"#,
        web = web.addr,
        flaky = flaky.addr,
    )
}

async fn upstreams() -> (Upstream, Upstream) {
    let web = Upstream::start().await;
    let flaky = Upstream::start_with(Behaviour {
        fail_pattern: Some((2, 1)),
        ..Behaviour::default()
    })
    .await;
    (web, flaky)
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn client(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// One request on `c`: (status, response body).
async fn send(
    c: &mut Sender,
    method: Method,
    host: &str,
    path: &str,
    body: &'static str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let exchange = async {
        c.ready().await.expect("ready");
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request");
        let response = c.send_request(req).await.expect("response");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body");
        (
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        )
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("a request answered within 10 s")
}

async fn get(c: &mut Sender, host: &str, path: &str) -> StatusCode {
    send(c, Method::GET, host, path, "", &[]).await.0
}

/// Poll `done` every 20 ms until it holds, for at most `within`.
async fn eventually<T>(within: Duration, what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait for `n` whole lines in `path` (and no more after a short settle).
async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(Duration::from_secs(10), "access log lines", || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        (text.ends_with('\n') && text.lines().count() >= n).then_some(())
    })
    .await;
    let lines = lines_of(path);
    assert_eq!(lines.len(), n, "{lines:#?}");
    lines
}

fn admin_metric(proxy: &Proxy, family: &str, labels: &[&str]) -> f64 {
    metric_sum(&proxy.metrics(), family, labels)
}

#[tokio::test]
async fn access_log_lines_carry_the_fields_in_json_and_combined() {
    let (web, flaky) = upstreams().await;
    let dir = TempDir::new("access-log");
    let out_log = dir.0.join("outbound.log");
    let in_log = dir.0.join("inbound.log");
    let logs = format!(
        "access_log:\n  outbound: {{format: json, path: '{}'}}\n  inbound: {{format: combined, path: '{}'}}\n",
        out_log.display(),
        in_log.display()
    );
    let proxy = Proxy::start(&config(&web, &flaky, &logs));
    let mut c = client(proxy.outbound).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // A POST with a body, retried once (the flaky upstream's first answer is 503).
    let (status, body) = send(
        &mut c,
        Method::POST,
        "web.test",
        "/items/1?x=1",
        "hello",
        &[
            ("traceparent", traceparent),
            ("x-request-id", "req-42"),
            ("user-agent", "observe-test"),
        ],
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "hello from upstream")
    );
    // The first request to `web`: a new upstream connection; B3 trace id.
    let (status, _) = send(
        &mut c,
        Method::GET,
        "web.test",
        "/rest",
        "",
        &[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Answered by the route itself.
    assert_eq!(
        get(&mut c, "web.test", "/down").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Inbound, in the combined format.
    let mut inbound = client(proxy.inbound).await;
    let (status, _) = send(
        &mut inbound,
        Method::GET,
        "web.test",
        "/in?q=%22x%22",
        "",
        &[
            ("user-agent", "agent with spaces"),
            ("referer", "http://ref.test/"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let lines = wait_lines(&out_log, 3).await;
    let json: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();

    let post = &json[0];
    assert_eq!(post["direction"], "outbound");
    assert_eq!(post["method"], "POST");
    assert_eq!(post["authority"], "web.test");
    assert_eq!(post["path"], "/items/1?x=1");
    assert_eq!(post["protocol"], "HTTP/1.1");
    assert_eq!(post["status"], 200);
    assert_eq!(post["request_bytes"], 5);
    assert_eq!(post["response_bytes"], 19);
    assert_eq!(post["route"], "items");
    assert_eq!(post["cluster"], "flaky");
    assert_eq!(post["endpoint"], flaky.addr.to_string());
    assert_eq!(post["retries"], 1);
    assert_eq!(post["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(post["request_id"], "req-42");
    assert_eq!(post["user_agent"], "observe-test");
    assert_eq!(post["stream_broken"], false);
    assert!(
        post["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{post}"
    );
    let peer: SocketAddr = post["peer"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("peer");
    assert!(peer.ip().is_loopback(), "{post}");
    assert!(
        post["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{post}"
    );

    let rest = &json[1];
    assert_eq!(
        (rest["route"].as_str(), rest["cluster"].as_str()),
        (Some("rest"), Some("web"))
    );
    assert_eq!(rest["endpoint"], web.addr.to_string());
    assert_eq!(rest["retries"], 0);
    assert_eq!(rest["request_bytes"], 0);
    assert_eq!(rest["trace_id"], "80f198ee56343ba864fe8b2a57d3eff7");
    assert!(
        rest["upstream_connect_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0),
        "a new connection's time: {rest}"
    );
    // None was sent: the trace layer gave the request one at the outbound edge.
    assert!(
        rest["request_id"].as_str().is_some_and(|id| id.len() == 36),
        "the x-request-id the proxy added: {rest}"
    );

    let down = &json[2];
    assert_eq!(down["status"], 503);
    assert_eq!(down["route"], "down");
    assert_eq!(down["response_bytes"], 4);
    assert_eq!(down["endpoint"], Value::Null);

    let line = wait_lines(&in_log, 1).await.remove(0);
    let combined = regex::Regex::new(
        r#"^(\S+) - (\S+) \[(\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "(\S+) (\S+) (\S+)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)" (.*)$"#,
    )
    .expect("regex");
    let caps = combined
        .captures(&line)
        .unwrap_or_else(|| panic!("not combined: {line}"));
    assert_eq!(&caps[1], "127.0.0.1");
    assert_eq!(&caps[2], "-", "no mTLS identity");
    assert_eq!(&caps[4], "GET");
    assert_eq!(&caps[5], "/in?q=%22x%22");
    assert_eq!(&caps[6], "HTTP/1.1");
    assert_eq!(&caps[7], "200");
    assert_eq!(&caps[8], "19");
    assert_eq!(&caps[9], "http://ref.test/");
    assert_eq!(&caps[10], "agent with spaces");
    let rest_fields = &caps[11];
    for field in [
        "direction=inbound",
        "authority=\"web.test\"",
        "cluster=\"web\"",
        &format!("endpoint={}", web.addr),
        "retries=0",
    ] {
        assert!(rest_fields.contains(field), "{field} in {line}");
    }
    // None was sent: the trace layer gave the request one.
    assert!(
        regex::Regex::new(r#"request_id="[0-9a-f-]{36}""#)
            .expect("regex")
            .is_match(rest_fields),
        "a request id in {line}"
    );

    eventually(Duration::from_secs(5), "access_log_written_total", || {
        let m = proxy.metrics();
        (metric_sum(&m, "access_log_written_total", &["direction=\"outbound\""]) == 3.0
            && metric_sum(&m, "access_log_written_total", &["direction=\"inbound\""]) == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(admin_metric(&proxy, "access_log_dropped_total", &[]), 0.0);
}

#[test]
fn an_unwritable_access_log_path_stops_startup_naming_the_field() {
    let dir = TempDir::new("bad-log");
    let config = dir.0.join("strait.yaml");
    std::fs::write(
        &config,
        format!(
            "{}access_log:\n  inbound: {{path: '{}'}}\n",
            support::EPHEMERAL_LISTENERS,
            dir.0.join("no/such/dir/in.log").display()
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run strait");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("access_log.inbound.path"), "{stderr}");
}

#[tokio::test]
async fn access_logs_follow_reloads_and_a_log_that_cannot_open_refuses_one() {
    let (web, flaky) = upstreams().await;
    let dir = TempDir::new("access-log-reload");
    let log = dir.0.join("outbound.log");
    let on = format!("access_log:\n  outbound: {{path: '{}'}}\n", log.display());
    let bad = format!(
        "access_log:\n  outbound: {{path: '{}'}}\n",
        dir.0.join("missing/dir/x.log").display()
    );
    let proxy = Proxy::start(&config(&web, &flaky, ""));
    let reloads = |result: &str| {
        admin_metric(
            &proxy,
            "config_reload_total",
            &[&format!("result=\"{result}\"")],
        )
    };
    let mut c = client(proxy.outbound).await;
    assert_eq!(get(&mut c, "web.test", "/before").await, StatusCode::OK);

    proxy.rewrite_config(&config(&web, &flaky, &on));
    eventually(Duration::from_secs(10), "reload 1", || {
        (reloads("ok") == 1.0).then_some(())
    })
    .await;
    assert_eq!(get(&mut c, "web.test", "/on").await, StatusCode::OK);
    wait_lines(&log, 1).await;

    proxy.rewrite_config(&config(&web, &flaky, &bad));
    eventually(Duration::from_secs(10), "refused", || {
        (reloads("error") == 1.0).then_some(())
    })
    .await;
    // The log is written asynchronously: the line may follow the metric.
    eventually(Duration::from_secs(10), "the refusal logged", || {
        (proxy.log_lines(&["config reload refused", "access_log.outbound.path"]) >= 1).then_some(())
    })
    .await;
    assert_eq!(get(&mut c, "web.test", "/still-on").await, StatusCode::OK);
    wait_lines(&log, 2).await;

    proxy.rewrite_config(&config(&web, &flaky, ""));
    eventually(Duration::from_secs(10), "reload 2", || {
        (reloads("ok") == 2.0).then_some(())
    })
    .await;
    assert_eq!(get(&mut c, "web.test", "/off").await, StatusCode::OK);
    proxy.rewrite_config(&config(&web, &flaky, &on));
    eventually(Duration::from_secs(10), "reload 3", || {
        (reloads("ok") == 3.0).then_some(())
    })
    .await;
    assert_eq!(get(&mut c, "web.test", "/on-again").await, StatusCode::OK);
    let lines = wait_lines(&log, 3).await;
    let paths: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("JSON line");
            v["path"].as_str().unwrap_or("").to_string()
        })
        .collect();
    assert_eq!(paths, ["/on", "/still-on", "/on-again"]);
}

/// An open tap: the response's body, and the connection it arrives on.
struct Tap {
    body: Incoming,
    conn: JoinHandle<()>,
    opened: Instant,
}

async fn open_tap(admin: SocketAddr, query: &str) -> Tap {
    let stream = TcpStream::connect(admin).await.expect("connect admin");
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(format!("/tap?{query}"))
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("tap headers within 10 s")
        .expect("tap response");
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/x-ndjson"[..])
    );
    Tap {
        body: response.into_body(),
        conn,
        opened: Instant::now(),
    }
}

impl Tap {
    /// Read to the end of the stream (within `within`): the records and
    /// how long after opening the stream ended.
    async fn records(self, within: Duration) -> (Vec<Value>, Duration) {
        let Tap { body, conn, opened } = self;
        let bytes = tokio::time::timeout(within, body.collect())
            .await
            .expect("the tap ended in time")
            .expect("tap body")
            .to_bytes();
        let ended = opened.elapsed();
        conn.abort();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let records = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (records, ended)
    }
}

fn paths(records: &[Value]) -> Vec<&str> {
    records.iter().filter_map(|r| r["path"].as_str()).collect()
}

#[tokio::test]
async fn taps_see_exactly_their_requests_and_end_at_limit_or_deadline() {
    let (web, flaky) = upstreams().await;
    let proxy = Proxy::start(&config(&web, &flaky, ""));
    let gets = open_tap(proxy.admin, "path_prefix=/items&method=GET&limit=3").await;
    let failures = open_tap(proxy.admin, "status=5xx&direction=outbound&limit=2").await;
    let other = open_tap(proxy.admin, "authority=other.test&seconds=2").await;
    let inbound = open_tap(proxy.admin, "direction=inbound&limit=1").await;
    let post_ok = open_tap(proxy.admin, "method=post&status=200&limit=5&seconds=3").await;
    assert_eq!(admin_metric(&proxy, "tap_open", &[]), 5.0);

    let mut c = client(proxy.outbound).await;
    assert_eq!(get(&mut c, "web.test", "/rest/a").await, StatusCode::OK);
    assert_eq!(get(&mut c, "web.test", "/items/1").await, StatusCode::OK);
    let (status, _) = send(&mut c, Method::POST, "web.test", "/items/2", "body", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        get(&mut c, "web.test", "/down").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&mut c, "other.test", "/x").await, StatusCode::OK);
    assert_eq!(get(&mut c, "web.test", "/items/3").await, StatusCode::OK);
    assert_eq!(
        get(&mut c, "other.test:8080", "/down").await,
        StatusCode::OK
    );
    assert_eq!(
        get(&mut c, "web.test", "/down/2").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&mut c, "web.test", "/items/4").await, StatusCode::OK);
    // Past their limits: the first two taps must not see these.
    assert_eq!(get(&mut c, "web.test", "/items/5").await, StatusCode::OK);
    assert_eq!(
        get(&mut c, "web.test", "/down/3").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let mut inbound_client = client(proxy.inbound).await;
    assert_eq!(
        get(&mut inbound_client, "web.test", "/in").await,
        StatusCode::OK
    );
    assert_eq!(
        get(&mut inbound_client, "web.test", "/in/2").await,
        StatusCode::OK
    );

    let (records, ended) = gets.records(Duration::from_secs(10)).await;
    assert_eq!(paths(&records), ["/items/1", "/items/3", "/items/4"]);
    assert!(
        ended < Duration::from_secs(5),
        "ended at its limit, not later: {ended:?}"
    );
    assert!(records
        .iter()
        .all(|r| r["retries"] == 1 && r["status"] == 200));

    let (records, _) = failures.records(Duration::from_secs(10)).await;
    assert_eq!(paths(&records), ["/down", "/down/2"]);
    assert!(records
        .iter()
        .all(|r| r["status"] == 503 && r["direction"] == "outbound"));

    let (records, _) = inbound.records(Duration::from_secs(10)).await;
    assert_eq!(paths(&records), ["/in"]);
    assert_eq!(records[0]["direction"], "inbound");

    // These end at their deadlines, having seen only their requests.
    let (records, ended) = other.records(Duration::from_secs(10)).await;
    assert_eq!(paths(&records), ["/x", "/down"]);
    assert_eq!(records[1]["authority"], "other.test:8080");
    assert!(
        ended >= Duration::from_millis(1900) && ended < Duration::from_secs(8),
        "ended at its 2 s deadline: {ended:?}"
    );
    let (records, ended) = post_ok.records(Duration::from_secs(10)).await;
    assert_eq!(paths(&records), ["/items/2"]);
    assert_eq!(records[0]["request_bytes"], 4);
    assert!(ended >= Duration::from_millis(2900), "{ended:?}");

    eventually(Duration::from_secs(5), "every tap closed", || {
        (admin_metric(&proxy, "tap_open", &[]) == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_tap_closes_when_its_client_goes_away_and_bad_queries_are_refused() {
    let (web, flaky) = upstreams().await;
    let proxy = Proxy::start(&config(&web, &flaky, ""));
    let kept = open_tap(proxy.admin, "seconds=60").await;
    let gone = open_tap(proxy.admin, "seconds=60").await;
    assert_eq!(admin_metric(&proxy, "tap_open", &[]), 2.0);
    let Tap { body, conn, .. } = gone;
    drop(body);
    conn.abort();
    eventually(Duration::from_secs(5), "the abandoned tap closed", || {
        (admin_metric(&proxy, "tap_open", &[]) == 1.0).then_some(())
    })
    .await;
    // The other tap still sees traffic.
    let mut c = client(proxy.outbound).await;
    assert_eq!(get(&mut c, "web.test", "/still").await, StatusCode::OK);
    let mut body = kept.body;
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("a record within 10 s")
        .expect("a frame")
        .expect("no error");
    let line = String::from_utf8_lossy(frame.data_ref().expect("data")).into_owned();
    let record: Value = serde_json::from_str(line.trim_end()).expect("one JSON line");
    assert_eq!(record["path"], "/still");

    for (query, needle) in [
        ("status=6xx", "status"),
        ("limit=0", "limit"),
        ("seconds=100000", "seconds"),
        ("pathprefix=/x", "pathprefix"),
    ] {
        let (status, text) = http_get(proxy.admin, &format!("/tap?{query}"));
        assert_eq!(status, 400, "{query}: {text}");
        assert!(text.contains(needle), "{query}: {text}");
    }
}

#[tokio::test]
async fn a_stalled_tap_reader_drops_records_instead_of_slowing_requests() {
    let (web, flaky) = upstreams().await;
    let proxy = Proxy::start(&config(&web, &flaky, ""));
    // Opened, then never read: its queue and the socket fill up.
    let stalled = open_tap(proxy.admin, "limit=10000&seconds=120").await;
    let mut c = client(proxy.outbound).await;
    // Long paths make long records, so the socket's buffers fill sooner.
    let long = format!("/{}", "p".repeat(4000));
    const N: usize = 1500;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..N {
        let t = Instant::now();
        assert_eq!(
            get(&mut c, "web.test", &format!("{long}/{i}")).await,
            StatusCode::OK
        );
        slowest = slowest.max(t.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{i} requests took over 120 s"
        );
        if i % 100 == 99 && admin_metric(&proxy, "tap_dropped_total", &[]) > 0.0 {
            // Dropping has begun: another 200 requests at full speed show
            // the data path is not waiting for the reader.
            for j in 0..200 {
                let t = Instant::now();
                assert_eq!(
                    get(&mut c, "web.test", &format!("/after/{j}")).await,
                    StatusCode::OK
                );
                slowest = slowest.max(t.elapsed());
            }
            let dropped = admin_metric(&proxy, "tap_dropped_total", &[]);
            assert!(dropped >= 200.0, "the stalled tap dropped {dropped}");
            assert!(
                slowest < Duration::from_secs(2),
                "slowest request {slowest:?}"
            );
            drop(stalled);
            return;
        }
    }
    panic!("{N} requests never filled the stalled tap's queue");
}
