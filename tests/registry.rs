//! The upstream registry through the real proxy: a config reload is
//! applied as a diff, so what the proxy has learnt about a cluster and its
//! endpoints outlives it.
//!
//! - an endpoint ejected by outlier detection stays ejected across a
//!   reload (one that changes its cluster's settings, and one that only
//!   adds an unrelated cluster).
//!
//! Each test is built so that rebuilding the state on every update (the
//! proxy's behaviour before the registry) fails it: the ejected endpoint
//! would be picked again.

mod support;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::upstream::{Behaviour, Upstream};
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::net::TcpStream;

/// The proxy's listeners, with unrouted outbound traffic sent to `svc`,
/// then `sections` (other top-level sections, or nothing), then
/// `clusters`: list items under `clusters:`, last, so that [`reload`] can
/// append one.
fn config(sections: &str, clusters: &str) -> String {
    format!(
        "{}{sections}clusters:\n{clusters}",
        EPHEMERAL_LISTENERS.replace(
            "outbound: {address: 127.0.0.1, port: 0}",
            "outbound: {address: 127.0.0.1, port: 0, default_cluster: svc}"
        )
    )
}

/// The cluster `svc`: its load balancer, `extra` settings (indented
/// lines) and endpoints (addresses or `name:port`).
fn svc(lb: &str, extra: &str, endpoints: &[String]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{address: '{a}'}}"))
        .collect();
    format!(
        "  - name: svc\n    load_balancer: {lb}\n{extra}    endpoints: [{}]\n",
        eps.join(", ")
    )
}

/// `/metrics`, read without stalling the runtime the test's upstreams
/// run on (the tests use the multi-threaded runtime).
fn scrape(proxy: &Proxy) -> String {
    tokio::task::block_in_place(|| proxy.metrics())
}

/// Replace the proxy's config with `yaml` plus an unrelated cluster
/// `reload-<generation>`, send SIGHUP, and return once that very file is
/// serving: `config_reload_total{result="ok"}` went up and the new cluster
/// is in `/metrics` (which lists the live snapshot's clusters). The file
/// is swapped by a rename, so the proxy's own 2 s poll (which may reload
/// it once more, harmlessly) never reads half of it.
async fn reload(proxy: &Proxy, yaml: &str, generation: u32) {
    let marker = format!("reload-{generation}");
    let yaml = format!("{yaml}  - name: {marker}\n    endpoints: [{{address: '127.0.0.1:9'}}]\n");
    let before = scrape(proxy);
    let ok = metric_sum(&before, "config_reload_total", &["result=\"ok\""]);
    let errors = metric_sum(&before, "config_reload_total", &["result=\"error\""]);
    let path = proxy.config_path();
    let staged = path.with_extension("staged");
    std::fs::write(&staged, yaml).expect("write the new config");
    std::fs::rename(&staged, &path).expect("swap the config file");
    proxy.signal("HUP");
    let marker_label = format!("cluster=\"{marker}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(proxy);
        assert_eq!(
            metric_sum(&m, "config_reload_total", &["result=\"error\""]),
            errors,
            "the new config was refused:\n{}",
            proxy.log()
        );
        if metric_sum(&m, "config_reload_total", &["result=\"ok\""]) > ok
            && metric_sum(&m, "cluster_endpoints", &[&marker_label]) > 0.0
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reload {generation} never took effect:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(proxy: &Proxy) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(proxy.outbound)
        .await
        .expect("connect to the proxy");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake with the proxy");
    tokio::spawn(conn);
    sender
}

/// GET / for `svc`: the status and headers, once the body is read.
async fn get(sender: &mut http1::SendRequest<Full<Bytes>>) -> (StatusCode, HeaderMap) {
    sender.ready().await.expect("client connection ready");
    let req = Request::get("/")
        .header("host", "svc")
        .body(Full::default())
        .expect("request");
    let response = sender
        .send_request(req)
        .await
        .expect("a response from the proxy");
    let status = response.status();
    let headers = response.headers().clone();
    let _ = response.into_body().collect().await;
    (status, headers)
}

fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

fn ejections(m: &str) -> f64 {
    metric_sum(m, "endpoint_ejections_total", &["cluster=\"svc\""])
}

fn endpoints_in_state(m: &str, state: &str) -> f64 {
    metric_sum(
        m,
        "cluster_endpoints",
        &["cluster=\"svc\"", &format!("state=\"{state}\"")],
    )
}

/// Eject after three 5xx in a row, for a minute: far longer than a test.
const OUTLIER: &str = "    outlier_detection: {consecutive_failures: 3, base_ejection_time: 60s, max_ejection_percent: 50}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_stays_ejected_across_a_reload() {
    let good = Upstream::start().await;
    let bad = Upstream::start_with(Behaviour {
        status: Some(500),
        ..Behaviour::default()
    })
    .await;
    let endpoints = [good.addr.to_string(), bad.addr.to_string()];
    let cluster = |timeout: &str| {
        config(
            "",
            &svc(
                "{policy: round_robin}",
                &format!("    response_timeout: {timeout}\n{OUTLIER}"),
                &endpoints,
            ),
        )
    };
    let proxy = Proxy::start(&cluster("30s"));
    let mut c = client(&proxy).await;

    // Round robin: the bad endpoint answers three 500s and is ejected.
    for _ in 0..12 {
        get(&mut c).await;
    }
    assert_eq!(count(&bad.requests), 3, "{}", proxy.log());
    let m = scrape(&proxy);
    assert_eq!(ejections(&m), 1.0, "{m}");
    assert_eq!(endpoints_in_state(&m, "ejected"), 1.0, "{m}");

    // A reload that changes svc's own settings (its balancer is rebuilt
    // over the same endpoints), then one that only adds another cluster:
    // after each, the bad endpoint gets nothing. Rebuilt from scratch, it
    // would be back in the rotation and take every other request.
    // (Reload 2 keeps svc as reload 1 left it; only the marker changes.)
    for (generation, timeout) in [(1, "20s"), (2, "20s")] {
        reload(&proxy, &cluster(timeout), generation).await;
        for i in 0..20 {
            let (status, _) = get(&mut c).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "request {i} after reload {generation}"
            );
        }
        assert_eq!(
            count(&bad.requests),
            3,
            "the ejected endpoint was picked after reload {generation}"
        );
        let m = scrape(&proxy);
        assert_eq!(ejections(&m), 1.0, "{m}");
        assert_eq!(endpoints_in_state(&m, "ejected"), 1.0, "{m}");
        assert_eq!(endpoints_in_state(&m, "active"), 1.0, "{m}");
    }
    assert_eq!(count(&good.requests), 9 + 40);
}
