//! Listeners follow the config (issue #9), black box: the real `strait`
//! binary is reloaded (file rewritten, SIGHUP) and its listeners are
//! added, removed, moved and renamed without a restart. A listener that
//! goes stops accepting at once while its requests in flight finish; a
//! listener that cannot be bound refuses the whole reload.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{free_addr, http_get, metric_sum, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one thing may take to happen.
const WAIT: Duration = Duration::from_secs(10);

/// A config: outbound and admin on `outbound`/`admin` (port 0: any),
/// inbound anywhere, the `extra` listener entries, clusters `web` (at
/// `a`) and `web2` (at `b`), and the route `web` -> `web` when `routed`.
fn config(outbound: u16, admin: u16, extra: &[String], a: &Upstream, b: &Upstream) -> String {
    let mut yaml = format!(
        "listeners:\n  outbound: {{address: 127.0.0.1, port: {outbound}}}\n  inbound: {{address: 127.0.0.1, port: 0}}\n  admin: {{address: 127.0.0.1, port: {admin}}}\n"
    );
    if !extra.is_empty() {
        yaml.push_str("  extra:\n");
        for entry in extra {
            yaml.push_str(&format!("    - {entry}\n"));
        }
    }
    yaml.push_str(&format!(
        "clusters:\n  - name: web\n    endpoints: [{{address: '{}'}}]\n  - name: web2\n    endpoints: [{{address: '{}'}}]\nroutes:\n  - authority: web\n    cluster: web\n",
        a.addr, b.addr
    ));
    yaml
}

/// An extra outbound listener on `addr` sending unrouted traffic to `web`.
fn side(name: &str, addr: SocketAddr) -> String {
    format!(
        "{{name: {name}, direction: outbound, address: 127.0.0.1, port: {}, default_cluster: web}}",
        addr.port()
    )
}

/// Poll `check` until it holds, at most [`WAIT`]; `what` says what was
/// awaited when it never does.
async fn until<F, Fut>(proxy: &Proxy, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    for _ in 0..10_000 {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: never\n{}", proxy.log());
}

/// `/metrics` from `admin`, off the runtime's worker threads.
async fn scrape(admin: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || http_get(admin, "/metrics").1)
        .await
        .expect("scrape")
}

/// `/config_dump` from `admin`, whitespace removed.
async fn config_dump(admin: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || http_get(admin, "/config_dump").1)
        .await
        .expect("config dump")
        .split_whitespace()
        .collect()
}

async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    let label = format!("result=\"{result}\"");
    metric_sum(&scrape(admin).await, "config_reload_total", &[&label])
}

/// Rewrite the config and wait until the proxy counted the reload as
/// `result` (ok or error), as seen on the admin server at `admin`.
async fn reload(proxy: &Proxy, admin: SocketAddr, yaml: &str, result: &str) {
    let before = reloads(admin, result).await;
    proxy.rewrite_config(yaml);
    until(proxy, &format!("a reload counted as {result}"), || async {
        reloads(admin, result).await > before
    })
    .await;
}

/// One HTTP/1.1 GET on a fresh connection: the status and body, or why not.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(StatusCode, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", host)
        .body(Full::<Bytes>::default())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

async fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_added_by_reload_serves_with_its_own_default_cluster() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let proxy = Proxy::start(&config(0, 0, &[], &a, &b));
    let (side_addr, app_addr) = (free_addr(), free_addr());
    let extra = [
        side("side", side_addr),
        format!(
            "{{name: app, direction: inbound, address: 127.0.0.1, port: {}, default_cluster: web2, protocol: http1}}",
            app_addr.port()
        ),
    ];
    reload(&proxy, proxy.admin, &config(0, 0, &extra, &a, &b), "ok").await;

    // Unrouted traffic goes to each listener's own default cluster...
    let (status, body) = get(side_addr, "elsewhere", "/").await.expect("side");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(a.requests.load(Ordering::SeqCst), 1);
    let (status, _) = get(app_addr, "elsewhere", "/").await.expect("app");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.requests.load(Ordering::SeqCst), 1);
    // ...while the built-in outbound listener, which has none, answers 404.
    let (status, _) = get(proxy.outbound, "elsewhere", "/")
        .await
        .expect("outbound");
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Routes apply on every outbound listener.
    let (status, _) = get(side_addr, "web", "/").await.expect("side");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.requests.load(Ordering::SeqCst), 2);

    let dump = config_dump(proxy.admin).await;
    assert!(dump.contains("\"name\":\"side\""), "{dump}");
    assert!(dump.contains("\"name\":\"app\""), "{dump}");
    assert!(
        dump.contains(&format!("\"port\":{}", app_addr.port())),
        "{dump}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_listener_refuses_connections_once_its_requests_finish() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let side_addr = free_addr();
    let proxy = Proxy::start(&config(0, 0, &[side("side", side_addr)], &a, &b));
    let (status, _) = get(side_addr, "web", "/").await.expect("side serves");
    assert_eq!(status, StatusCode::OK);

    // Slow requests in flight on the listener: one over HTTP/1.1...
    let mut h1_inflight = TcpStream::connect(side_addr).await.expect("connect");
    h1_inflight
        .write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .expect("write");
    // ...and one over HTTP/2.
    let stream = TcpStream::connect(side_addr).await.expect("connect");
    let (mut h2, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let slow = tokio::spawn(
        h2.send_request(
            Request::get("http://web/slow?ms=3000")
                .body(Full::<Bytes>::default())
                .expect("request"),
        ),
    );
    until(&proxy, "both slow requests upstream", || async {
        a.requests.load(Ordering::SeqCst) >= 3
    })
    .await;

    reload(&proxy, proxy.admin, &config(0, 0, &[], &a, &b), "ok").await;
    // The log is written off the data path, so it may trail the metric.
    until(&proxy, "the side listener's stop in the log", || async {
        proxy.log_lines(&["listener stopped accepting", "listener=side"]) == 1
    })
    .await;
    // Gone for new connections while its requests are still in flight.
    assert!(
        refused(side_addr).await,
        "still accepting:\n{}",
        proxy.log()
    );
    assert_eq!(proxy.log_lines(&["listener drained", "listener=side"]), 0);

    // HTTP/2: GOAWAY, so no new stream, while the old one finishes.
    let deadline = Instant::now() + WAIT;
    loop {
        let request = Request::get("http://web/")
            .body(Full::<Bytes>::default())
            .expect("request");
        if h2.send_request(request).await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "HTTP/2 streams still accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = slow.await.expect("join").expect("the stream finishes");
    assert_eq!(response.status(), StatusCode::OK);
    // HTTP/1.1: answered, and told to close.
    let mut answer = String::new();
    let read = tokio::time::timeout(WAIT, h1_inflight.read_to_string(&mut answer)).await;
    assert!(read.is_ok(), "no answer: {answer}");
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    until(&proxy, "the side listener drained", || async {
        proxy.log_lines(&["listener drained", "listener=side"]) == 1
    })
    .await;
    // The built-in listeners never noticed.
    let (status, _) = get(proxy.outbound, "web", "/").await.expect("outbound");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_outbound_listener_serves_on_its_new_address_only() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let proxy = Proxy::start(&config(0, 0, &[], &a, &b));
    let old = proxy.outbound;
    // A keep-alive connection, idle on the old address.
    let stream = TcpStream::connect(old).await.expect("connect");
    let (mut idle, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let response = idle
        .send_request(
            Request::get("/")
                .header("host", "web")
                .body(Full::<Bytes>::default())
                .expect("request"),
        )
        .await
        .expect("request on the old address");
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await;

    let new = free_addr();
    reload(
        &proxy,
        proxy.admin,
        &config(new.port(), 0, &[], &a, &b),
        "ok",
    )
    .await;
    let (status, _) = get(new, "web", "/").await.expect("the new address serves");
    assert_eq!(status, StatusCode::OK);
    assert!(refused(old).await, "the old address still accepts");
    // The idle connection on the old address is closed by the drain.
    let closed = tokio::time::timeout(WAIT, conn).await;
    assert!(closed.is_ok(), "the idle connection stayed open");

    let dump = config_dump(proxy.admin).await;
    assert!(dump.contains(&format!("\"port\":{}", new.port())), "{dump}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_cannot_bind_refuses_the_reload_and_the_old_config_serves() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let side_addr = free_addr();
    let proxy = Proxy::start(&config(0, 0, &[side("side", side_addr)], &a, &b));
    // Someone else holds the port the outbound listener is to move to.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let added = free_addr();
    let broken = config(taken_addr.port(), 0, &[side("other", added)], &a, &b);
    reload(&proxy, proxy.admin, &broken, "error").await;

    let needle = format!("cannot bind the outbound listener on {taken_addr}");
    until(&proxy, "the refusal in the log", || async {
        proxy.log_lines(&["config reload refused", &needle]) >= 1
    })
    .await;
    // Nothing of the refused file applies: the old listeners serve, the
    // listener it would have added was never left listening, and the
    // running config is the old one.
    let (status, _) = get(proxy.outbound, "web", "/").await.expect("outbound");
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(side_addr, "elsewhere", "/").await.expect("side");
    assert_eq!(status, StatusCode::OK);
    assert!(
        refused(added).await,
        "a listener of the refused config serves"
    );
    let dump = config_dump(proxy.admin).await;
    assert!(dump.contains("\"name\":\"side\""), "{dump}");
    assert!(!dump.contains("\"name\":\"other\""), "{dump}");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_listener_keeps_its_socket_and_the_admin_listener_moves() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let side_addr = free_addr();
    let proxy = Proxy::start(&config(0, 0, &[side("side", side_addr)], &a, &b));

    // Renamed on the same address: the socket passes on, never closed.
    reload(
        &proxy,
        proxy.admin,
        &config(0, 0, &[side("side2", side_addr)], &a, &b),
        "ok",
    )
    .await;
    until(&proxy, "the handover in the log", || async {
        proxy.log_lines(&["hands its socket over", "listener=side", "to=side2"]) == 1
    })
    .await;
    let (status, _) = get(side_addr, "elsewhere", "/")
        .await
        .expect("side2 serves");
    assert_eq!(status, StatusCode::OK);

    // The admin server moves: the new address answers, the old refuses.
    let admin = free_addr();
    proxy.rewrite_config(&config(
        0,
        admin.port(),
        &[side("side2", side_addr)],
        &a,
        &b,
    ));
    until(&proxy, "the admin server on its new address", || async {
        matches!(get(admin, "admin", "/ready").await, Ok((StatusCode::OK, _)))
    })
    .await;
    assert!(
        refused(proxy.admin).await,
        "the old admin address still accepts"
    );
    assert!(reloads(admin, "ok").await >= 2.0);
}

#[test]
fn strait_check_lists_the_extra_listeners() {
    let dir = support::TempDir::new("check-listeners");
    let path = dir.0.join("strait.yaml");
    let yaml = "clusters:\n  - {name: web, endpoints: [{address: 127.0.0.1:8080}]}\nlisteners:\n  extra:\n    - {name: side, direction: outbound, port: 4150, default_cluster: web}\n    - {name: app, direction: inbound, port: 4151}\n";
    std::fs::write(&path, yaml).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("run strait check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("listener  side [Outbound] 127.0.0.1:4150"),
        "{stdout}"
    );
    assert!(
        stdout.contains("listener  app [Inbound] 0.0.0.0:4151 -> 127.0.0.1:<original port>"),
        "{stdout}"
    );
}
