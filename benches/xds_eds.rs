//! Criterion benchmark of a 10,000-endpoint EDS update, from the
//! control plane's response to the ACK: decoding the
//! `ClusterLoadAssignment`, translating every held resource into the
//! config, applying it to the registry (the diff that keeps endpoints
//! that stay) and building the routing snapshot, as the ADS stream does
//! ([`Xds::sotw_handle`] with the app's apply). Two updates:
//! - `replace_all`: every endpoint changes (alternating two disjoint sets);
//! - `change_1_percent`: 100 of the 10,000 change (alternating two sets
//!   that share 9,900).
//!
//! Run with `cargo bench -p strait-proxy --bench xds_eds`.

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strait_config::Config;
use strait_proxy::metrics::Metrics;
use strait_proxy::registry::{Registry, Resolved};
use strait_proxy::route::Snapshot;
use strait_proxy::xds::Xds;

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const ENDPOINTS: u32 = 10_000;

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

/// Endpoint `i` of generation `g`: 10.g.x.y:8080.
fn endpoint(g: u8, i: u32) -> LbEndpoint {
    let [_, _, hi, lo] = i.to_be_bytes();
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: Ipv4Addr::new(10, g, hi, lo).to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The assignment of `web`: endpoints `0..ENDPOINTS`, the first
/// `from_g` of them from generation `g`, the rest from generation 0.
fn assignment(g: u8, from_g: u32) -> Any {
    any(
        ENDPOINT,
        &ClusterLoadAssignment {
            cluster_name: "web".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: (0..ENDPOINTS)
                    .map(|i| endpoint(if i < from_g { g } else { 0 }, i))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

fn response(type_url: &str, version: u64, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: type_url.into(),
        nonce: format!("n{version}"),
        ..Default::default()
    }
}

/// A client holding the `web` EDS cluster, applying to a registry and
/// snapshot as the app does.
fn client() -> Arc<Xds> {
    let base = Config::from_yaml("xds:\n  address: 127.0.0.1:1\n  node: {id: bench}\n")
        .expect("bench config is valid");
    let metrics = Metrics::new();
    let registry = Registry::new(metrics.clone());
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
        base.clone(),
        &registry.update(&base, &Resolved::new()),
    )));
    let apply = Box::new(move |config: Config| {
        let clusters = registry.update(&config, &Resolved::new());
        snapshot.store(Arc::new(Snapshot::build(config, &clusters)));
    });
    let xds = Xds::new(&base, apply, metrics, None).expect("xds configured");
    let web = Cluster {
        name: "web".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    let acks = xds.sotw_handle(response(CLUSTER, 1, vec![any(CLUSTER, &web)]));
    assert!(acks.iter().all(|r| r.error_detail.is_none()), "{acks:?}");
    xds
}

/// Apply the two assignments in turn, each iteration one full update
/// through to the ACK.
fn bench_alternating(c: &mut Criterion, name: &str, a: Any, b: Any) {
    let xds = client();
    let version = AtomicU64::new(2);
    c.bench_function(name, |bench| {
        bench.iter(|| {
            let v = version.fetch_add(1, Ordering::Relaxed);
            let next = if v.is_multiple_of(2) {
                a.clone()
            } else {
                b.clone()
            };
            let out = xds.sotw_handle(response(ENDPOINT, v, vec![next]));
            assert!(out[0].error_detail.is_none(), "NACK: {:?}", out[0]);
            out
        })
    });
}

fn eds(c: &mut Criterion) {
    bench_alternating(
        c,
        "xds_eds/replace_all_10000",
        assignment(1, ENDPOINTS),
        assignment(2, ENDPOINTS),
    );
    bench_alternating(
        c,
        "xds_eds/change_1_percent_of_10000",
        assignment(1, ENDPOINTS / 100),
        assignment(2, ENDPOINTS / 100),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = eds
}
criterion_main!(benches);
