//! TLS routed by its server name (SNI) and TCP split across clusters,
//! from xDS (`TcpProxy` chains with `server_names`, `weighted_clusters`)
//! and from the config file (`server_name` and `split` routes). Real
//! TLS clients (tokio-rustls), redirected by iptables the way the mesh
//! redirects an application's traffic, reach one of three real TLS
//! upstreams on 127.0.0.1 through the proxy, which reads the ClientHello
//! and replays it untouched: each upstream answers over the TLS session
//! with its name and the server name it was asked for, so a finished
//! handshake and the answer show both the route and the passthrough.
//! An unknown name takes the port's fallback. A 80/20 split over 2000
//! plaintext connections lands within its binomial bound.

#[path = "support/control_plane.rs"]
mod control_plane;
mod support;
#[path = "support/xds_resources.rs"]
mod xds_resources;
#[path = "support/xds_tls.rs"]
mod xds_tls_support;

use control_plane::{ControlPlane, CLUSTER, LISTENER};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::pki::Pki;
use support::{http_get, Proxy, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_resources::{any, put, static_cluster};
use xds_tls_support::{Redirect, MARK};

const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// Connections in the split run, and the share of the first cluster.
const SPLIT_CONNECTIONS: usize = 2000;
const SPLIT_SHARE: f64 = 0.8;

/// The test's certificate authority and the one server certificate every
/// upstream presents (so a misrouted connection still completes its
/// handshake and is caught by the upstream's answer, not by an error).
struct Tls {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    _pki: Pki,
}

fn tls() -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pki = Pki::new("sni");
    let (crt, key) = pki.issue_dns(
        &["*.example.com", "*.b.example.com", "unknown.test"],
        "upstream",
    );
    let chain = CertificateDer::pem_file_iter(&crt)
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert PEM");
    let key = PrivateKeyDer::from_pem_file(&key).expect("key PEM");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.bundle()).expect("CA file") {
        roots.add(ca.expect("CA PEM")).expect("CA");
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        client: Arc::new(client),
        server: Arc::new(server),
        _pki: pki,
    }
}

/// A TLS server that answers each handshake with `<tag> <server name>`
/// and closes.
async fn tls_upstream(tag: &'static str, config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind TLS upstream");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let name = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                let _ = tls.write_all(format!("{tag} {name}").as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// A TCP server that answers a client's first bytes with `tag` and closes.
async fn tcp_upstream(tag: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind TCP upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = stream.write_all(tag.as_bytes()).await;
                }
            });
        }
    });
    addr
}

/// A connection to `to` marked for the test's redirect rules, so it
/// reaches the proxy with `to` as its original destination.
fn connect_marked(to: SocketAddr) -> tokio::net::TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_mark(MARK).expect("SO_MARK (needs root)");
    socket.connect(&to.into()).expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    tokio::net::TcpStream::from_std(socket.into()).expect("tokio stream")
}

/// TLS to `to` asking for `name`: what the upstream that answered says.
async fn tls_get(tls: &Tls, to: SocketAddr, name: &str) -> String {
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let server_name = ServerName::try_from(name.to_string()).expect("server name");
    let exchange = async {
        let mut stream = connector
            .connect(server_name, connect_marked(to))
            .await
            .unwrap_or_else(|e| panic!("TLS handshake for {name} through the proxy: {e}"));
        let mut answer = String::new();
        // The upstream closes after answering; a missing close_notify
        // would still leave the answer read.
        let _ = stream.read_to_string(&mut answer).await;
        answer
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer for {name} within 10s"))
}

/// Open `SPLIT_CONNECTIONS` plaintext connections to `to`, one at a
/// time: how many each upstream answered.
async fn split_counts(to: SocketAddr) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut counts = HashMap::new();
    for i in 0..SPLIT_CONNECTIONS {
        assert!(Instant::now() < deadline, "only {i} connections in 120s");
        let mut stream = connect_marked(to);
        let exchange = async {
            stream.write_all(b"ping").await.expect("write");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("read");
            answer
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .unwrap_or_else(|_| panic!("connection {i}: no answer within 10s"));
        *counts.entry(answer).or_insert(0) += 1;
    }
    counts
}

/// The split's counts against its weights. Were each connection an
/// independent draw, the first cluster's count would be binomial (n =
/// 2000, p = 0.8): mean 1600, standard deviation sqrt(n p (1 - p)) ≈
/// 17.9; ±6 deviations (±107, 5.4 points of share) fails by chance with
/// probability under 2e-9. strait's smooth weighted round robin lands on
/// 1600 exactly when nothing else picks meanwhile.
fn assert_split(counts: &HashMap<String, usize>, first: &str, second: &str) {
    let n = SPLIT_CONNECTIONS as f64;
    let mean = n * SPLIT_SHARE;
    let bound = 6.0 * (n * SPLIT_SHARE * (1.0 - SPLIT_SHARE)).sqrt();
    let got = counts.get(first).copied().unwrap_or(0) as f64;
    let other = counts.get(second).copied().unwrap_or(0);
    assert_eq!(
        got as usize + other,
        SPLIT_CONNECTIONS,
        "every connection reached one of the two: {counts:?}"
    );
    assert!(
        (got - mean).abs() <= bound,
        "{first} answered {got} of {n}, expected {mean} ± {bound:.0}: {counts:?}"
    );
}

fn socket(ip: &str, port: u16) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

fn tcp_proxy(specifier: tcp_proxy::ClusterSpecifier) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            TCP_PROXY,
            &TcpProxy {
                stat_prefix: "tcp".into(),
                cluster_specifier: Some(specifier),
                ..Default::default()
            },
        ))),
    }
}

fn to_cluster(cluster: &str) -> Filter {
    tcp_proxy(tcp_proxy::ClusterSpecifier::Cluster(cluster.into()))
}

/// A TLS chain for `names` (none: the port's fallback).
fn tls_chain(names: &[&str], filter: Filter) -> FilterChain {
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: "tls".into(),
            server_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// Istio's shape for a port: `0.0.0.0_<port>`, never bound.
fn port_listener(port: u16, filter_chains: Vec<FilterChain>) -> Any {
    any(
        LISTENER,
        &Listener {
            name: format!("0.0.0.0_{port}"),
            address: socket("0.0.0.0", port),
            bind_to_port: Some(BoolValue { value: false }),
            filter_chains,
            ..Default::default()
        },
    )
}

/// Upstreams: three TLS servers (`api`, `wild`, `fallback`) and two TCP
/// servers (`a`, `b`).
struct Upstreams {
    tls: Tls,
    api: SocketAddr,
    wild: SocketAddr,
    fallback: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
}

async fn upstreams() -> Upstreams {
    let tls = tls();
    Upstreams {
        api: tls_upstream("api", tls.server.clone()).await,
        wild: tls_upstream("wild", tls.server.clone()).await,
        fallback: tls_upstream("fallback", tls.server.clone()).await,
        a: tcp_upstream("a").await,
        b: tcp_upstream("b").await,
        tls,
    }
}

/// The routing both tests expect: `tls_vip` is a TLS service's address
/// on 443, `split_vip` a TCP service's on 9000.
async fn check_routes(proxy: &Proxy, u: &Upstreams, tls_vip: SocketAddr, split_vip: SocketAddr) {
    let port = proxy.outbound.port();
    let _rules: Vec<Redirect> = [tls_vip, split_vip]
        .into_iter()
        .map(|to| Redirect::install(to, port))
        .collect();
    let log = || proxy.log();
    for (name, answer) in [
        // The exact name before the wildcard.
        ("api.example.com", "api api.example.com"),
        // Any case: server names compare case-insensitively.
        ("API.Example.COM", "api api.example.com"),
        ("www.example.com", "wild www.example.com"),
        ("a.b.example.com", "wild a.b.example.com"),
        // A name no route claims: the port's fallback.
        ("unknown.test", "fallback unknown.test"),
    ] {
        assert_eq!(
            tls_get(&u.tls, tls_vip, name).await,
            answer,
            "{name}\n{}",
            log()
        );
    }
    let counts = split_counts(split_vip).await;
    assert_split(&counts, "a", "b");
}

async fn tls_by_server_name_and_tcp_split_from_xds(mode: &str, vip_octet: u8) {
    let u = upstreams().await;
    let cp = ControlPlane::start().await;
    let v = cp.update(|s| {
        for (name, addr) in [
            ("api", u.api),
            ("wild", u.wild),
            ("fallback", u.fallback),
            ("a", u.a),
            ("b", u.b),
        ] {
            put(s, CLUSTER, name, static_cluster(name, addr));
        }
        put(
            s,
            LISTENER,
            "0.0.0.0_443",
            port_listener(
                443,
                vec![
                    tls_chain(&["*.example.com"], to_cluster("wild")),
                    tls_chain(&["api.example.com"], to_cluster("api")),
                    tls_chain(&[], to_cluster("fallback")),
                ],
            ),
        );
        let split = tcp_proxy(tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp_proxy::WeightedCluster {
                clusters: [("a", 80), ("b", 20)]
                    .into_iter()
                    .map(
                        |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                            name: name.into(),
                            weight,
                            ..Default::default()
                        },
                    )
                    .collect(),
            },
        ));
        put(
            s,
            LISTENER,
            "0.0.0.0_9000",
            port_listener(
                9000,
                vec![FilterChain {
                    filters: vec![split],
                    ..Default::default()
                }],
            ),
        );
    });
    let proxy = Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}xds:\n  address: {}\n  node: {{id: sni-test}}\n  mode: {mode}\n  initial_fetch_timeout: 10s\n",
        cp.addr
    ));
    cp.acked(CLUSTER, v).await;
    cp.acked(LISTENER, v).await;
    let (status, body) = http_get(proxy.admin, "/ready");
    assert_eq!(status, 200, "{body}\n{}", proxy.log());
    let vip = |host: u8, port: u16| SocketAddr::from(([127, 79, vip_octet, host], port));
    check_routes(&proxy, &u, vip(1, 443), vip(2, 9000)).await;
}

// Service addresses of their own per test, so the runs' redirect rules
// never meet.

#[tokio::test]
async fn tls_by_server_name_and_tcp_split_from_xds_sotw() {
    tls_by_server_name_and_tcp_split_from_xds("sotw", 1).await
}

#[tokio::test]
async fn tls_by_server_name_and_tcp_split_from_xds_delta() {
    tls_by_server_name_and_tcp_split_from_xds("delta", 3).await
}

#[tokio::test]
async fn tls_by_server_name_and_tcp_split_from_the_file() {
    let u = upstreams().await;
    let proxy = Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}clusters:
  - {{name: api, endpoints: [{{address: '{}'}}]}}
  - {{name: wild, endpoints: [{{address: '{}'}}]}}
  - {{name: fallback, endpoints: [{{address: '{}'}}]}}
  - {{name: a, endpoints: [{{address: '{}'}}]}}
  - {{name: b, endpoints: [{{address: '{}'}}]}}
routes:
  - {{server_name: '*.example.com', port: 443, cluster: wild}}
  - {{server_name: api.example.com, port: 443, cluster: api}}
  - {{port: 443, cluster: fallback}}
  - {{port: 9000, split: [{{cluster: a, weight: 80}}, {{cluster: b, weight: 20}}]}}
",
        u.api, u.wild, u.fallback, u.a, u.b
    ));
    // The routes survive a dump: it is still a config file, routes and all.
    let (status, dump) = http_get(proxy.admin, "/config_dump");
    assert_eq!(status, 200, "{dump}");
    let dumped = strait_config::Config::from_yaml(&dump).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    let routes = |c: &strait_config::Config| format!("{:?}", c.routes);
    assert!(routes(&dumped).contains("*.example.com"), "{dump}");
    assert!(routes(&dumped).contains("(\"b\", 20)"), "{dump}");
    let vip = |host: u8, port: u16| SocketAddr::from(([127, 79, 2, host], port));
    check_routes(&proxy, &u, vip(1, 443), vip(2, 9000)).await;
}
