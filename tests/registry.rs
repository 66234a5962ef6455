//! The upstream registry through the real proxy: a config reload or a DNS
//! change is applied as a diff, so what the proxy has learnt about a
//! cluster and its endpoints outlives it.
//!
//! - an endpoint ejected by outlier detection stays ejected across a
//!   reload (one that changes its cluster's settings, and one that only
//!   adds an unrelated cluster) and across a DNS answer that replaces
//!   another endpoint of its cluster;
//! - Peak-EWMA keeps steering a burst of concurrent requests to the fast
//!   endpoint right after a reload, instead of spreading it as over two
//!   unknown endpoints;
//! - the circuit breaker's `max_requests` counts the requests in flight
//!   across a reload: the upstream never holds more than the limit, and the
//!   excess fails fast with 503 `overloaded`.
//!
//! Each test is built so that rebuilding the state on every update (the
//! proxy's behaviour before the registry) fails it: the ejected endpoint
//! would be picked again, the burst would be split about evenly, and the
//! limit would briefly double.

mod support;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::dns::{dns_server, Answer};
use support::upstream::{Behaviour, Upstream};
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// A port free on both 127.0.0.2 and 127.0.0.3 (a DNS endpoint has one
/// port for all its addresses).
fn port_free_on_two_addresses() -> u16 {
    for _ in 0..20 {
        let first = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
        let port = first.local_addr().expect("local addr").port();
        if std::net::TcpListener::bind(("127.0.0.3", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_endpoint_stays_ejected_across_a_dns_change() {
    let answer: Answer = Arc::new(Mutex::new(Some(Ipv4Addr::new(127, 0, 0, 2))));
    let dns = dns_server(answer.clone()).await;
    let bad = Upstream::start_with(Behaviour {
        status: Some(500),
        ..Behaviour::default()
    })
    .await;
    let port = port_free_on_two_addresses();
    let first = Upstream::start_at(&format!("127.0.0.2:{port}"), Behaviour::default()).await;
    let second = Upstream::start_at(&format!("127.0.0.3:{port}"), Behaviour::default()).await;
    let proxy = Proxy::start(&config(
        &format!("dns: {{servers: ['{dns}'], min_refresh: 200ms, max_refresh: 1s}}\n"),
        &svc(
            "{policy: round_robin}",
            OUTLIER,
            &[bad.addr.to_string(), format!("svc.strait.test:{port}")],
        ),
    ));

    // Wait for the name to resolve without sending traffic: until then the
    // bad endpoint is alone, and the last endpoint is never ejected.
    let deadline = Instant::now() + Duration::from_secs(10);
    while endpoints_in_state(&scrape(&proxy), "active") != 2.0 {
        assert!(
            Instant::now() < deadline,
            "the name never resolved:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = client(&proxy).await;
    for _ in 0..12 {
        get(&mut c).await;
    }
    assert_eq!(count(&bad.requests), 3, "{}", proxy.log());
    assert_eq!(count(&first.requests), 9);
    let m = scrape(&proxy);
    assert_eq!(ejections(&m), 1.0, "{m}");

    // The name moves to another address: the cluster's endpoint set is
    // rebuilt, the static endpoint in it stays ejected. Every request on
    // the way succeeds; none reaches the bad endpoint.
    *answer.lock().expect("answer") = Some(Ipv4Addr::new(127, 0, 0, 3));
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&second.requests) == 0 {
        assert_eq!(get(&mut c).await.0, StatusCode::OK, "{}", proxy.log());
        assert!(
            Instant::now() < deadline,
            "traffic never moved to the new address:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        assert_eq!(get(&mut c).await.0, StatusCode::OK, "request {i}");
    }
    assert_eq!(
        count(&bad.requests),
        3,
        "the ejected endpoint was picked after the DNS change"
    );
    assert!(count(&second.requests) >= 21);
    let m = scrape(&proxy);
    assert_eq!(ejections(&m), 1.0, "{m}");
    assert_eq!(endpoints_in_state(&m, "ejected"), 1.0, "{m}");
    assert_eq!(endpoints_in_state(&m, "active"), 1.0, "{m}");
}

/// Open `n` client connections first, then send one request on each at
/// once; the handles resolve to each response's status and headers.
async fn spawn_burst(proxy: &Proxy, n: usize) -> Vec<JoinHandle<(StatusCode, HeaderMap)>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(client(proxy).await);
    }
    clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { get(&mut c).await }))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_keeps_preferring_the_fast_endpoint_across_a_reload() {
    // Both are slower than default_rtt, so a fresh Peak-EWMA has no reason
    // to prefer the fast one until the slow one has answered once (2 s).
    let fast = Upstream::start_with(Behaviour {
        delay: Duration::from_millis(50),
        ..Behaviour::default()
    })
    .await;
    let slow = Upstream::start_with(Behaviour {
        delay: Duration::from_secs(2),
        ..Behaviour::default()
    })
    .await;
    let endpoints = [fast.addr.to_string(), slow.addr.to_string()];
    let cluster = |timeout: &str| {
        config(
            "",
            &svc(
                "{policy: peak_ewma, default_rtt: 30ms, decay: 30s}",
                &format!("    response_timeout: {timeout}\n"),
                &endpoints,
            ),
        )
    };
    let proxy = Proxy::start(&cluster("30s"));

    // Warm up: a burst over two unknown endpoints is spread by load, so
    // both get requests and the EWMA learns both latencies.
    for request in spawn_burst(&proxy, 10).await {
        assert_eq!(request.await.expect("warm-up request").0, StatusCode::OK);
    }
    assert!(
        count(&fast.requests) >= 1 && count(&slow.requests) >= 1,
        "the warm-up reached only one endpoint: fast {}, slow {}",
        count(&fast.requests),
        count(&slow.requests)
    );

    // A reload that changes svc's settings: its balancer is rebuilt over
    // the same endpoints.
    reload(&proxy, &cluster("20s"), 1).await;
    let (fast_before, slow_before) = (count(&fast.requests), count(&slow.requests));

    // The first twenty requests after it: a burst of ten at once, then ten
    // one by one. The learnt estimates (50 ms vs 2 s) send them all to the
    // fast endpoint; ten at once cost 10 x 50 ms there, still less than one
    // at the slow one. Forgotten estimates (both at default_rtt) would
    // split the burst by load, about five to each.
    for request in spawn_burst(&proxy, 10).await {
        assert_eq!(request.await.expect("burst request").0, StatusCode::OK);
    }
    let mut c = client(&proxy).await;
    for i in 0..10 {
        assert_eq!(get(&mut c).await.0, StatusCode::OK, "request {i}");
    }
    let to_fast = count(&fast.requests) - fast_before;
    let to_slow = count(&slow.requests) - slow_before;
    assert_eq!(to_fast + to_slow, 20);
    assert!(
        to_fast >= 18,
        "right after the reload the fast endpoint got {to_fast} of 20 (slow {to_slow})"
    );
}

/// Poll `condition` every 20 ms until it holds; fail after `limit`.
async fn until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream that holds every request until released and counts how
/// many it holds at once: the circuit breaker seen from the far side.
struct HoldingUpstream {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    max_held: Arc<AtomicUsize>,
    /// `true` lets held and new requests through; `false` holds again.
    release: watch::Sender<bool>,
}

/// Counts a held request out when its handler ends or is dropped.
struct HeldGuard(Arc<AtomicUsize>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HoldingUpstream {
    async fn start() -> HoldingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the holding upstream");
        let addr = listener.local_addr().expect("holding upstream addr");
        let arrived = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let max_held = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let (a, h, m) = (arrived.clone(), held.clone(), max_held.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (a, h, m, released) = (a.clone(), h.clone(), m.clone(), released.clone());
                let service = hyper::service::service_fn(move |_req| {
                    let (h, mut released) = (h.clone(), released.clone());
                    a.fetch_add(1, Ordering::SeqCst);
                    let now = h.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    async move {
                        let _guard = HeldGuard(h);
                        let _ = released.wait_for(|go| *go).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"released",
                        ))))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HoldingUpstream {
            addr,
            arrived,
            held,
            max_held,
            release,
        }
    }
}

/// Split `requests` into those already answered (awaited) and the rest.
async fn answered(
    requests: Vec<JoinHandle<(StatusCode, HeaderMap)>>,
) -> (
    Vec<(StatusCode, HeaderMap)>,
    Vec<JoinHandle<(StatusCode, HeaderMap)>>,
) {
    let (done, pending): (Vec<_>, Vec<_>) = requests.into_iter().partition(|r| r.is_finished());
    let mut responses = Vec::with_capacity(done.len());
    for r in done {
        responses.push(r.await.expect("request task"));
    }
    (responses, pending)
}

fn assert_overloaded(responses: &[(StatusCode, HeaderMap)], what: &str) {
    for (status, headers) in responses {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert_eq!(
            headers.get("strait-proxy-error").map(|v| v.as_bytes()),
            Some(&b"overloaded"[..]),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_limit_holds_across_a_reload_under_load() {
    const LIMIT: usize = 4;
    let up = HoldingUpstream::start().await;
    let endpoints = [up.addr.to_string()];
    let cluster = |timeout: &str| {
        config(
            "",
            &svc(
                "{policy: round_robin}",
                &format!(
                    "    response_timeout: {timeout}\n    circuit_breaker: {{max_requests: {LIMIT}}}\n"
                ),
                &endpoints,
            ),
        )
    };
    let proxy = Proxy::start(&cluster("30s"));

    // Twice the limit at once: LIMIT are held upstream, the rest fail fast.
    let requests = spawn_burst(&proxy, 2 * LIMIT).await;
    until(
        "LIMIT requests held upstream and LIMIT answered",
        Duration::from_secs(10),
        || count(&up.held) == LIMIT && requests.iter().filter(|r| r.is_finished()).count() == LIMIT,
    )
    .await;
    let (refused, held) = answered(requests).await;
    assert_overloaded(&refused, "over the limit before the reload");

    // Reload while they are held (svc's settings change, its limit does
    // not), then LIMIT more: the held requests still count, so every new
    // one fails fast. With the counter rebuilt at zero they would all be
    // let through, doubling what the upstream holds.
    reload(&proxy, &cluster("20s"), 1).await;
    let more = spawn_burst(&proxy, LIMIT).await;
    until(
        "the requests after the reload answered (or let through)",
        Duration::from_secs(10),
        || more.iter().all(|r| r.is_finished()) || count(&up.arrived) > LIMIT,
    )
    .await;
    assert_eq!(
        count(&up.arrived),
        LIMIT,
        "requests over the limit reached the upstream after the reload"
    );
    assert_eq!(count(&up.max_held), LIMIT);
    let (refused, pending) = answered(more).await;
    assert!(pending.is_empty());
    assert_overloaded(&refused, "over the limit after the reload");

    // Released, the held requests succeed, and the slots they took before
    // the reload are given back: the limit is exactly LIMIT again.
    up.release.send_replace(true);
    for r in held {
        let (status, _) = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("a released request finishes")
            .expect("request task");
        assert_eq!(status, StatusCode::OK);
    }
    until(
        "the upstream holds nothing",
        Duration::from_secs(10),
        || count(&up.held) == 0,
    )
    .await;
    up.release.send_replace(false);
    let again = spawn_burst(&proxy, 2 * LIMIT).await;
    until(
        "LIMIT requests held again and LIMIT answered",
        Duration::from_secs(10),
        || count(&up.held) == LIMIT && again.iter().filter(|r| r.is_finished()).count() == LIMIT,
    )
    .await;
    let (refused, held) = answered(again).await;
    assert_overloaded(&refused, "over the limit once the first ones ended");
    assert_eq!(count(&up.max_held), LIMIT);
    up.release.send_replace(true);
    for r in held {
        let (status, _) = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("a released request finishes")
            .expect("request task");
        assert_eq!(status, StatusCode::OK);
    }
}
