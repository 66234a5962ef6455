//! Locality weights end to end: a real ADS control plane serves an EDS
//! cluster with locality-weighted balancing and two localities weighted
//! 3:1, one with one endpoint and one with three (and a third weighted 0),
//! and real requests through the proxy binary reach real upstreams by
//! locality weight, not by endpoint count.

#[path = "support/control_plane.rs"]
mod control_plane;
mod support;
#[path = "support/xds_resources.rs"]
mod xds_resources;

use bytes::Bytes;
use control_plane::{ControlPlane, CLUSTER, ENDPOINT};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    common_lb_config, CommonLbConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::google::protobuf::UInt32Value;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prost::Message;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{Proxy, EPHEMERAL_LISTENERS};
use xds_resources::*;

/// An EDS cluster "web" asking for locality-weighted balancing.
fn locality_weighted(policy: LbPolicy) -> envoy_types::pb::google::protobuf::Any {
    let mut cluster = Cluster::decode(eds_cluster("web").value.as_slice()).expect("decodes");
    cluster.lb_policy = policy as i32;
    cluster.common_lb_config = Some(CommonLbConfig {
        locality_config_specifier: Some(
            common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(Default::default()),
        ),
        ..Default::default()
    });
    any(CLUSTER, &cluster)
}

/// Localities of (weight, upstreams).
fn localities(parts: &[(u32, &[&Upstream])]) -> envoy_types::pb::google::protobuf::Any {
    let assignment = ClusterLoadAssignment {
        cluster_name: "web".into(),
        endpoints: parts
            .iter()
            .map(|(weight, ups)| LocalityLbEndpoints {
                load_balancing_weight: Some(UInt32Value { value: *weight }),
                lb_endpoints: ups.iter().map(|u| lb_endpoint(u.addr)).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    any(ENDPOINT, &assignment)
}

/// One HTTP/1.1 connection through the proxy's outbound listener.
struct Client(http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn connect(proxy: &Proxy) -> Client {
        let stream = tokio::net::TcpStream::connect(proxy.outbound)
            .await
            .expect("connect");
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client(sender)
    }

    async fn get(&mut self) -> StatusCode {
        let req = Request::builder()
            .uri("/")
            .header("host", "web")
            .body(Full::default())
            .expect("request");
        self.0.ready().await.expect("ready");
        self.0.send_request(req).await.expect("response").status()
    }

    /// Send requests until one is answered 200 (the xDS config is live).
    async fn until_ok(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.get().await != StatusCode::OK {
            assert!(
                Instant::now() < deadline,
                "the xDS route not live within 15s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Send `n` requests, all of which must succeed; then how many each of
/// `groups` received of them.
async fn spread(client: &mut Client, n: usize, groups: &[&[&Upstream]]) -> Vec<usize> {
    let count = |g: &[&Upstream]| -> usize {
        g.iter()
            .map(|u| u.requests.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let before: Vec<usize> = groups.iter().map(|g| count(g)).collect();
    for _ in 0..n {
        assert_eq!(client.get().await, StatusCode::OK);
    }
    groups
        .iter()
        .zip(before)
        .map(|(g, b)| count(g) - b)
        .collect()
}

async fn start(policy: LbPolicy, parts: &[(u32, &[&Upstream])]) -> (ControlPlane, Proxy) {
    let cp = ControlPlane::start().await;
    cp.update(|s| {
        web(s, &[]);
        put(s, CLUSTER, "web", locality_weighted(policy));
        put(s, ENDPOINT, "web", localities(parts));
    });
    let proxy = Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}xds:\n  address: {}\n  node: {{id: test-node, cluster: test}}\n",
        cp.addr
    ));
    (cp, proxy)
}

/// Round robin: the smooth weighted schedule is deterministic, with
/// effective weights 9 (the lone endpoint) and 1, 1, 1 (the three); any
/// run of consecutive requests gives each endpoint its share to within
/// one pick, so over 1,200 requests locality A gets 900 and B 300, each
/// within 4 (one per endpoint). The locality weighted 0 gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_by_locality_weight_not_endpoint_count() {
    let a = Upstream::start().await;
    let b = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let off = Upstream::start().await;
    let group_a: &[&Upstream] = &[&a];
    let group_b: &[&Upstream] = &[&b[0], &b[1], &b[2]];
    let group_off: &[&Upstream] = &[&off];
    let (_cp, proxy) = start(
        LbPolicy::RoundRobin,
        &[(3, group_a), (1, group_b), (0, group_off)],
    )
    .await;
    let mut client = Client::connect(&proxy).await;
    client.until_ok().await;

    const N: usize = 1200;
    let got = spread(&mut client, N, &[group_a, group_b, group_off]).await;
    assert!(got[0].abs_diff(N * 3 / 4) <= 4, "locality A (3): {got:?}");
    assert!(got[1].abs_diff(N / 4) <= 4, "locality B (1): {got:?}");
    assert_eq!(got[2], 0, "the locality weighted 0: {got:?}");
    // Within B, every endpoint takes its turn.
    for u in &b {
        assert!(
            u.requests.load(Ordering::SeqCst) > 0,
            "every B endpoint serves"
        );
    }
}

/// Random: each request lands in A with p = 3/4 independently, so A's
/// count over N = 2,000 is binomial, sd = sqrt(N p (1-p)) = 19.4; a band
/// of 6 sd (±116 requests, 5.8 points) fails by chance about once in
/// 500 million runs, while the endpoint-count split (1/4 to A) is 1,000
/// requests away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_splits_by_locality_weight_within_six_sigma() {
    let a = Upstream::start().await;
    let b = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let group_a: &[&Upstream] = &[&a];
    let group_b: &[&Upstream] = &[&b[0], &b[1], &b[2]];
    let (_cp, proxy) = start(LbPolicy::Random, &[(3, group_a), (1, group_b)]).await;
    let mut client = Client::connect(&proxy).await;
    client.until_ok().await;

    const N: usize = 2000;
    let (p, n) = (0.75, N as f64);
    let tolerance = (6.0 * (n * p * (1.0 - p)).sqrt()).ceil() as usize;
    let got = spread(&mut client, N, &[group_a, group_b]).await;
    let want = (n * p) as usize;
    assert!(
        got[0].abs_diff(want) <= tolerance,
        "locality A got {} of {N}, want {want} ± {tolerance}: {got:?}",
        got[0]
    );
    assert_eq!(got[0] + got[1], N);
}
