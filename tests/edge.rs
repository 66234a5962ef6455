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
