//! xDS resources for tests, built as a control plane would build them:
//! clusters (EDS and STATIC), endpoint assignments, listeners with an
//! HTTP connection manager over RDS, route configurations. Only
//! `tests/xds.rs` includes it.
#![allow(dead_code)]

use crate::control_plane::{Snapshot, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::Message;
use std::net::SocketAddr;

pub fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

pub fn eds_cluster(name: &str) -> Any {
    any(
        CLUSTER,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig::default()),
            connect_timeout: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            lb_policy: cluster::LbPolicy::RoundRobin as i32,
            ..Default::default()
        },
    )
}

pub fn lb_endpoint(addr: SocketAddr) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: addr.ip().to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                        addr.port(),
                    ))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn static_cluster(name: &str, addr: SocketAddr) -> Any {
    any(
        CLUSTER,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(assignment_of(name, &[addr])),
            ..Default::default()
        },
    )
}

pub fn assignment_of(name: &str, addrs: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: addrs.iter().map(|a| lb_endpoint(*a)).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn assignment(name: &str, addrs: &[SocketAddr]) -> Any {
    any(ENDPOINT, &assignment_of(name, addrs))
}

pub const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

pub fn http_filter(name: &str, type_url: &str) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: type_url.into(),
            value: Vec::new(),
        })),
        ..Default::default()
    }
}

pub fn router() -> HttpFilter {
    http_filter(
        "envoy.filters.http.router",
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    )
}

pub fn listener(name: &str, rds: &str, filters: Vec<HttpFilter>) -> Any {
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: rds.into(),
            config_source: None,
        })),
        http_filters: filters,
        ..Default::default()
    };
    any(
        LISTENER,
        &Listener {
            name: name.into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(HCM, &hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

pub fn prefix_route(action: ClusterSpecifier) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(action),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn routes(name: &str, hosts: &[(&str, Route)]) -> Any {
    any(
        ROUTE,
        &RouteConfiguration {
            name: name.into(),
            virtual_hosts: hosts
                .iter()
                .map(|(domain, route)| VirtualHost {
                    name: domain.to_string(),
                    domains: vec![domain.to_string()],
                    routes: vec![route.clone()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    )
}

pub fn to(cluster: &str) -> Route {
    prefix_route(ClusterSpecifier::Cluster(cluster.into()))
}

pub fn split(parts: &[(&str, u32)]) -> Route {
    prefix_route(ClusterSpecifier::WeightedClusters(WeightedCluster {
        clusters: parts
            .iter()
            .map(|(c, w)| ClusterWeight {
                name: c.to_string(),
                weight: Some(UInt32Value { value: *w }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }))
}

pub fn put(s: &mut Snapshot, type_url: &'static str, name: &str, resource: Any) {
    s.resources
        .entry(type_url)
        .or_default()
        .insert(name.to_string(), resource);
}

pub fn remove(s: &mut Snapshot, type_url: &'static str, name: &str) {
    s.resources.entry(type_url).or_default().remove(name);
}

/// The usual start: listener → routes "web-routes" → host "web" → EDS cluster "web".
pub fn web(s: &mut Snapshot, endpoints: &[SocketAddr]) {
    put(
        s,
        LISTENER,
        "outbound",
        listener("outbound", "web-routes", vec![router()]),
    );
    put(
        s,
        ROUTE,
        "web-routes",
        routes("web-routes", &[("web", to("web"))]),
    );
    put(s, CLUSTER, "web", eds_cluster("web"));
    put(s, ENDPOINT, "web", assignment("web", endpoints));
}
