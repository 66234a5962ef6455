//! An Istio-shaped snapshot end to end: a real ADS control plane serves
//! what istiod sends a sidecar (see `support/istio.rs`), the proxy ACKs
//! every resource, and real connections, redirected by iptables the way
//! the mesh redirects an application's traffic, reach the upstream their
//! original destination picks: HTTP by the route configuration of its
//! port, a TCP service by its virtual IP, anything else to where it was
//! going; a route's fault config answers for it and its local rate
//! limit holds it to its bucket; a listener strait cannot route
//! faithfully (by source address) is NACKed with its field while the
//! rest serves. (Server names: `tests/xds_sni.rs`.)

#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/istio.rs"]
mod istio;
#[path = "support/istio_inbound.rs"]
mod istio_inbound;
mod support;
#[path = "support/xds_resources.rs"]
mod xds_resources;
#[path = "support/xds_tls.rs"]
mod xds_tls_support;

use bytes::Bytes;
use control_plane::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use istio::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::upstream::Upstream;
use support::{http_get, Proxy, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_resources::{assignment, put};
use xds_tls_support::{certificate_secret, trust_secret, Pki, Redirect, CERT, MARK, TRUST};

const WEB: &str = "web.default.svc.cluster.local";
const API: &str = "api.default.svc.cluster.local";
const DB: &str = "db.default.svc.cluster.local";

/// The two modes run one at a time: they share the host's nat table and
/// conntrack, and the one failure this test has had (a redirected
/// connection refused, in CI) came as the other mode tore down.
static ONE_MODE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A connection to `to` marked for the test's redirect rules, so it
/// reaches the proxy with `to` as its original destination. A failure
/// says what the redirect and the proxy looked like at that moment.
fn connect_marked(proxy: &Proxy, to: SocketAddr) -> tokio::net::TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_mark(MARK).expect("SO_MARK (needs root)");
    if let Err(e) = socket.connect(&to.into()) {
        let rules = std::process::Command::new("iptables")
            .args(["-w", "-t", "nat", "-S", "OUTPUT"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("iptables: {e}"));
        panic!(
            "connect to {to} (redirected to the outbound {}): {e}\nnat OUTPUT:\n{rules}\nproxy log:\n{}",
            proxy.outbound,
            proxy.log()
        );
    }
    socket.set_nonblocking(true).expect("nonblocking");
    tokio::net::TcpStream::from_std(socket.into()).expect("tokio stream")
}

/// GET `path` with Host `host` on a connection to `to`.
async fn get(proxy: &Proxy, to: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let (mut sender, conn) = http1::handshake(TokioIo::new(connect_marked(proxy, to)))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::<Bytes>::default())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered within 10s")
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A TCP server that answers each line with `db:` and the line.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut reply = b"db:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    if stream.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn istio_snapshot_routes_by_original_destination(mode: &str) {
    let _one_mode = ONE_MODE_AT_A_TIME.lock().await;
    let web = Upstream::start().await;
    let api = Upstream::start().await;
    let external = Upstream::start().await;
    let db = echo_server().await;
    // Service VIPs of their own per mode, so the two runs' redirect rules
    // never meet.
    let octet = if mode == "sotw" { 1 } else { 2 };
    let vip = |host: u8, port: u16| SocketAddr::from(([127, 77, octet, host], port));
    let (web_vip, api_vip, db_vip) = (vip(1, 80), vip(2, 8080), vip(3, 5432));

    let pki = Pki::new("istio");
    let leaf = pki.issue("spiffe://cluster.local/ns/default/sa/sleep", 2030);
    let cp = ControlPlane::start().await;
    let (web_c, api_c, db_c) = (
        outbound_name(80, WEB),
        outbound_name(8080, API),
        outbound_name(5432, DB),
    );
    let mut faulty = service_route("fault", "/fault", &api_c);
    faulty.typed_per_filter_config = [abort_all(418)].into();
    let mut limited = service_route("limited", "/limited", &api_c);
    limited.typed_per_filter_config = [rate_limit(2)].into();
    let v = cp.update(|s| {
        put(s, CLUSTER, &web_c, outbound_cluster(&web_c));
        put(s, CLUSTER, &api_c, outbound_cluster(&api_c));
        put(s, CLUSTER, &db_c, outbound_cluster(&db_c));
        put(s, CLUSTER, "BlackHoleCluster", black_hole_cluster());
        put(s, CLUSTER, "PassthroughCluster", passthrough_cluster());
        put(
            s,
            CLUSTER,
            "InboundPassthroughClusterIpv4",
            inbound_passthrough_cluster(),
        );
        put(s, ENDPOINT, &web_c, assignment(&web_c, &[web.addr]));
        put(s, ENDPOINT, &api_c, assignment(&api_c, &[api.addr]));
        put(s, ENDPOINT, &db_c, assignment(&db_c, &[db]));
        put(s, LISTENER, "virtualOutbound", virtual_outbound());
        let inbound = istio_inbound::InboundPort {
            port: 8080,
            mtls: istio_inbound::Mtls::Strict,
            rbac: None,
        };
        put(
            s,
            LISTENER,
            "virtualInbound",
            istio_inbound::virtual_inbound(&[inbound]),
        );
        put(s, LISTENER, "0.0.0.0_80", http_port_listener(80));
        put(s, LISTENER, "0.0.0.0_8080", http_port_listener(8080));
        let db_listener = tcp_service_listener(db_vip, &db_c);
        put(s, LISTENER, &format!("{}_5432", db_vip.ip()), db_listener);
        put(
            s,
            ROUTE,
            "80",
            port_routes(
                80,
                vec![service_host(
                    WEB,
                    web_vip,
                    vec![service_route("default", "/", &web_c)],
                )],
            ),
        );
        put(
            s,
            ROUTE,
            "8080",
            port_routes(
                8080,
                vec![service_host(
                    API,
                    api_vip,
                    vec![faulty, limited, service_route("default", "/", &api_c)],
                )],
            ),
        );
        put(s, SECRET, CERT, certificate_secret(CERT, &leaf));
        put(s, SECRET, TRUST, trust_secret(TRUST, &pki.ca_pem));
    });
    let proxy = Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}xds:\n  address: {}\n  node: {{id: sidecar~10.1.2.3~sleep-1.default~default.svc.cluster.local, cluster: sleep.default, metadata: {{NAMESPACE: default}}}}\n  mode: {mode}\n  initial_fetch_timeout: 10s\nidentity:\n  sds: {{certificate: {CERT}, trust_bundle: {TRUST}}}\n",
        cp.addr
    ));
    // The whole snapshot is ACKed: no type is refused.
    for type_url in [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET] {
        cp.acked(type_url, v).await;
    }
    assert!(
        cp.requests().iter().all(|r| r.error.is_none()),
        "nothing NACKed: {:#?}\n{}",
        cp.requests()
            .iter()
            .filter_map(|r| r.error.clone())
            .collect::<Vec<_>>(),
        proxy.log()
    );
    let (status, body) = http_get(proxy.admin, "/ready");
    assert_eq!(status, 200, "{body}");
    assert!(
        proxy.log_lines(&["HTTP filter ignored", "istio.stats"]) > 0,
        "Istio's filters are ignored with a log line\n{}",
        proxy.log()
    );

    let port = proxy.outbound.port();
    let _rules: Vec<Redirect> = [web_vip, api_vip, db_vip, external.addr]
        .into_iter()
        .map(|to| Redirect::install(to, port))
        .collect();

    // HTTP by the route configuration of its port, under any of the
    // service's names.
    for host in [WEB, "web", "web.default:80"] {
        let before = web.requests.load(Ordering::SeqCst);
        let (status, body) = get(&proxy, web_vip, host, "/").await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}\n{}", proxy.log());
        assert_eq!(web.requests.load(Ordering::SeqCst), before + 1, "{host}");
    }
    let (status, body) = get(&proxy, api_vip, &format!("{API}:8080"), "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.requests.load(Ordering::SeqCst), 1);

    // The route's fault config answers for it; the upstream never sees it.
    let (status, _) = get(&proxy, api_vip, API, "/fault/x").await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(api.requests.load(Ordering::SeqCst), 1);

    // The route's local rate limit: its two tokens, then 429.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&proxy, api_vip, API, "/limited").await.0);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(api.requests.load(Ordering::SeqCst), 3);

    // Port 8080's table has no web host: web's name there is "allow_any",
    // passed through to where it was going (the api VIP, which nothing
    // serves), never to web.
    let web_seen = web.requests.load(Ordering::SeqCst);
    let (status, body) = get(&proxy, api_vip, WEB, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(web.requests.load(Ordering::SeqCst), web_seen);

    // Anything unknown passes through to its original destination.
    let (status, body) = get(&proxy, external.addr, "example.com", "/").await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", proxy.log());
    assert_eq!(external.requests.load(Ordering::SeqCst), 1);

    // The TCP service by its VIP.
    let mut stream = connect_marked(&proxy, db_vip);
    stream.write_all(b"ping").await.expect("write");
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply))
        .await
        .expect("db answers within 10s")
        .expect("read");
    assert_eq!(&reply, b"db:ping");

    // A listener strait cannot route faithfully (by source address) is
    // NACKed with its field, and the snapshot it would have joined keeps
    // serving.
    cp.update(|s| {
        put(
            s,
            LISTENER,
            "0.0.0.0_443",
            source_range_listener(443, "10.1.2.3", &web_c),
        )
    });
    let nack = cp
        .wait_for("a NACK of the source-matched listener", |r| {
            r.type_url == LISTENER && r.error.is_some()
        })
        .await;
    let detail = nack.error.expect("error_detail");
    assert!(
        detail.contains(
            "Listener '0.0.0.0_443': filter_chains[0].filter_chain_match.source_prefix_ranges"
        ),
        "{detail}"
    );
    let before = web.requests.load(Ordering::SeqCst);
    let (status, body) = get(&proxy, web_vip, WEB, "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(web.requests.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn istio_snapshot_routes_by_original_destination_sotw() {
    istio_snapshot_routes_by_original_destination("sotw").await
}

#[tokio::test]
async fn istio_snapshot_routes_by_original_destination_delta() {
    istio_snapshot_routes_by_original_destination("delta").await
}
