//! Listeners onto strait's routing, end to end through [`translate`] and
//! the routing snapshot: per-port route tables, TCP proxies as port
//! routes and the default cluster, server names in Envoy's chain order,
//! TCP splits, and what is refused.

use super::translate;
use crate::orig_dst::OrigDst;
use crate::outbound::{decide, Decision};
use crate::route::Snapshot;
use crate::xds::state::Resources;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, SocketAddress, TrafficDirection,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use prost::Message;
use std::collections::HashSet;
use strait_config::{Config, RouteMatch};

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn static_cluster(name: &str, addrs: &[&str]) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: addrs.iter().map(|a| endpoint(a)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoint(addr: &str) -> LbEndpoint {
    let (ip, port) = addr.rsplit_once(':').expect("ip:port");
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(ip, port.parse().expect("port"))),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn hcm(rds: &str) -> Filter {
    let hcm = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: rds.into(),
            config_source: None,
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    .into(),
                value: vec![],
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            &hcm,
        ))),
    }
}

fn tcp(specifier: tcp_proxy::ClusterSpecifier) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            &TcpProxy {
                cluster_specifier: Some(specifier),
                ..Default::default()
            },
        ))),
    }
}

fn tcp_to(cluster: &str) -> Filter {
    tcp(tcp_proxy::ClusterSpecifier::Cluster(cluster.into()))
}

fn chain(filter: Filter) -> FilterChain {
    FilterChain {
        filters: vec![filter],
        ..Default::default()
    }
}

/// Istio's per-port outbound listener: `0.0.0.0:<port>`, never bound.
fn port_listener(port: u32, chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: format!("0.0.0.0_{port}"),
        address: Some(socket("0.0.0.0", port)),
        filter_chains: chains,
        bind_to_port: Some(BoolValue { value: false }),
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

fn routes_to(name: &str, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "allow_any".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn resources(clusters: Vec<Cluster>, listeners: Vec<Listener>) -> Resources {
    Resources {
        clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        listeners: listeners.into_iter().map(|l| (l.name.clone(), l)).collect(),
        ..Default::default()
    }
}

fn cluster_of(snapshot: &Snapshot, port: u16) -> String {
    cluster_at(snapshot, [10, 96, 0, 9], port)
}

fn cluster_at(snapshot: &Snapshot, ip: [u8; 4], port: u16) -> String {
    let orig_dst = OrigDst {
        addr: std::net::SocketAddr::from((ip, port)),
        redirected: true,
    };
    let req = http::Request::get("/")
        .header("host", "anything.example")
        .body(())
        .expect("request");
    match decide(snapshot, orig_dst, &req) {
        Decision::VirtualHost(route) => format!("vhost {}", route.name),
        Decision::Port(t) => format!("port {}", t.first().cluster.name),
        Decision::Destination(t) => format!("destination {}", t.first().cluster.name),
        Decision::Default(t) => format!("default {}", t.cluster.name),
        Decision::Authority(t) => format!("authority {}", t.cluster.name),
        Decision::OriginalDestination(a) => format!("original {a}"),
        Decision::NoRoute => "none".into(),
    }
}

#[test]
fn each_port_gets_its_own_routes_and_tcp_proxies_become_port_routes() {
    let mut r = resources(
        vec![
            static_cluster("web", &["10.0.0.1:80"]),
            static_cluster("api", &["10.0.0.2:8080"]),
            static_cluster("db", &["10.0.0.3:5432"]),
            static_cluster("BlackHoleCluster", &[]),
        ],
        vec![
            port_listener(80, vec![chain(hcm("80"))]),
            port_listener(8080, vec![chain(hcm("8080"))]),
            port_listener(5432, vec![chain(tcp_to("db"))]),
            // Istio's TCP service listener: its virtual IP and port.
            Listener {
                address: Some(socket("10.96.0.7", 3306)),
                ..port_listener(3306, vec![chain(tcp_to("db"))])
            },
            Listener {
                name: "virtualOutbound".into(),
                address: Some(socket("0.0.0.0", 15001)),
                use_original_dst: Some(BoolValue { value: true }),
                default_filter_chain: Some(chain(tcp_to("BlackHoleCluster"))),
                ..Default::default()
            },
            Listener {
                name: "virtualInbound".into(),
                address: Some(socket("0.0.0.0", 15006)),
                traffic_direction: TrafficDirection::Inbound as i32,
                // Inbound chains give the inbound policy, no routes.
                filter_chains: vec![chain(Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: None,
                })],
                ..Default::default()
            },
        ],
    );
    r.routes.insert("80".into(), routes_to("80", "web"));
    r.routes.insert("8080".into(), routes_to("8080", "api"));
    let base = Config::from_yaml("").expect("empty config");
    let t = translate(&base, &r, &HashSet::new()).expect("translates");
    assert_eq!(t.rds_names, ["80".to_string(), "8080".to_string()].into());
    assert!(t
        .config
        .routes
        .iter()
        .any(|r| r.matches == RouteMatch::Port(5432) && r.cluster == "db"));
    assert_eq!(
        t.config.outbound.default_cluster.as_deref(),
        Some("BlackHoleCluster")
    );

    let snapshot = Snapshot::new(t.config);
    assert_eq!(cluster_of(&snapshot, 80), "vhost 80/allow_any/0");
    assert_eq!(cluster_of(&snapshot, 8080), "vhost 8080/allow_any/0");
    assert_eq!(cluster_of(&snapshot, 5432), "port db");
    assert_eq!(cluster_of(&snapshot, 9999), "default BlackHoleCluster");
    assert_eq!(
        cluster_at(&snapshot, [10, 96, 0, 7], 3306),
        "destination db"
    );
    assert_eq!(
        cluster_of(&snapshot, 3306),
        "default BlackHoleCluster",
        "another IP on the port is not the service's"
    );
}

#[test]
fn a_route_config_on_two_ports_is_told_apart_and_destination_ports_pick_chains() {
    let mut r = resources(
        vec![static_cluster("web", &["10.0.0.1:80"])],
        vec![Listener {
            name: "virtualOutbound".into(),
            address: Some(socket("0.0.0.0", 15001)),
            use_original_dst: Some(BoolValue { value: true }),
            filter_chains: [80, 81]
                .into_iter()
                .map(|p| FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        destination_port: Some(UInt32Value { value: p }),
                        application_protocols: vec!["http/1.1".into(), "h2c".into()],
                        transport_protocol: "raw_buffer".into(),
                        ..Default::default()
                    }),
                    ..chain(hcm("shared"))
                })
                .collect(),
            ..Default::default()
        }],
    );
    r.routes.insert("shared".into(), routes_to("shared", "web"));
    let base = Config::from_yaml("").expect("empty config");
    let t = translate(&base, &r, &HashSet::new()).expect("translates");
    let snapshot = Snapshot::new(t.config);
    assert_eq!(cluster_of(&snapshot, 80), "vhost shared/allow_any/0");
    assert_eq!(cluster_of(&snapshot, 81), "vhost shared:81/allow_any/0");
    assert_eq!(cluster_of(&snapshot, 82), "original 10.96.0.9:82");
}

#[test]
fn what_strait_cannot_match_on_is_refused_with_its_field() {
    let base = Config::from_yaml("").expect("empty config");
    let clusters = || {
        vec![
            static_cluster("a", &["10.0.0.1:1"]),
            static_cluster("b", &["10.0.0.2:1"]),
        ]
    };
    let sni = |name: &str, filter: Filter| FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            server_names: vec![name.into()],
            ..Default::default()
        }),
        ..chain(filter)
    };
    let mut one_ip = port_listener(3306, vec![chain(hcm("3306"))]);
    one_ip.address = Some(socket("10.96.0.7", 3306));
    let mut sni_one_ip = port_listener(3307, vec![sni("example.com", tcp_to("a"))]);
    sni_one_ip.address = Some(socket("10.96.0.7", 3307));
    let split = tcp(tcp_proxy::ClusterSpecifier::WeightedClusters(
        tcp_proxy::WeightedCluster {
            clusters: ["a", "b"]
                .into_iter()
                .map(|c| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: c.into(),
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
        },
    ));
    let cases = [
        (
            vec![sni_one_ip],
            "0.0.0.0_3307",
            "filter_chains[0].filter_chain_match.server_names",
        ),
        (
            vec![port_listener(443, vec![sni("*.com", tcp_to("a"))])],
            "0.0.0.0_443",
            "filter_chains[0].filter_chain_match.server_names[0]",
        ),
        (
            vec![port_listener(443, vec![sni("example.com", hcm("443"))])],
            "0.0.0.0_443",
            "filter_chains[0].filters[0]",
        ),
        (
            vec![port_listener(
                443,
                vec![
                    sni("example.com", tcp_to("a")),
                    sni("EXAMPLE.com", tcp_to("b")),
                ],
            )],
            "0.0.0.0_443",
            "filter_chains[1].filters[0]",
        ),
        (vec![one_ip], "0.0.0.0_3306", "filter_chains[0].filters[0]"),
        (
            // The outbound default cluster is one cluster.
            vec![Listener {
                name: "virtualOutbound".into(),
                use_original_dst: Some(BoolValue { value: true }),
                default_filter_chain: Some(chain(split)),
                ..Default::default()
            }],
            "virtualOutbound",
            "default_filter_chain.filters[0].typed_config.weighted_clusters",
        ),
        (
            vec![
                port_listener(7000, vec![chain(tcp_to("a"))]),
                Listener {
                    name: "z".into(),
                    filter_chains: vec![FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            destination_port: Some(UInt32Value { value: 7000 }),
                            ..Default::default()
                        }),
                        ..chain(tcp_to("b"))
                    }],
                    ..Default::default()
                },
            ],
            "z",
            "filter_chains[0].filters[0]",
        ),
        (
            vec![port_listener(7001, vec![chain(tcp_to("nowhere"))])],
            "0.0.0.0_7001",
            "filter_chains[0].filters[0].typed_config.cluster",
        ),
    ];
    for (listeners, name, field) in cases {
        let r = resources(clusters(), listeners);
        let e = translate(&base, &r, &HashSet::new()).expect_err("refused");
        assert_eq!(
            (e.kind, e.name.as_str(), e.field.as_str()),
            ("Listener", name, field),
            "{e}"
        );
    }
}

fn sni_chain(names: &[&str], filter: Filter) -> FilterChain {
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            server_names: names.iter().map(|n| n.to_string()).collect(),
            transport_protocol: "tls".into(),
            ..Default::default()
        }),
        ..chain(filter)
    }
}

fn weighted(parts: &[(&str, u32)]) -> Filter {
    tcp(tcp_proxy::ClusterSpecifier::WeightedClusters(
        tcp_proxy::WeightedCluster {
            clusters: parts
                .iter()
                .map(|(c, w)| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: c.to_string(),
                    weight: *w,
                    ..Default::default()
                })
                .collect(),
        },
    ))
}

/// Where an outbound TCP connection to `port` asking for `server_name` goes.
fn tcp_target(snapshot: &Snapshot, port: u16, server_name: Option<&str>) -> String {
    let orig_dst = OrigDst {
        addr: std::net::SocketAddr::from(([10, 96, 0, 9], port)),
        redirected: true,
    };
    match crate::outbound::resolve_tcp(snapshot, orig_dst, server_name) {
        Ok(t) => match t.cluster {
            Some(c) => c.name.to_string(),
            None => format!("original {}", t.addr),
        },
        Err(e) => format!("error {e}"),
    }
}

#[test]
fn server_names_pick_chains_in_envoys_order_and_splits_follow_their_weights() {
    let names = [
        "api", "wild", "deep", "fallback", "other", "every", "a", "b",
    ];
    let clusters = names
        .iter()
        .enumerate()
        .map(|(i, n)| static_cluster(n, &[&format!("10.0.1.{}:443", i + 1)]))
        .collect();
    let r = resources(
        clusters,
        vec![
            port_listener(
                443,
                vec![
                    sni_chain(&["*.example.com"], tcp_to("wild")),
                    sni_chain(&["API.example.com", "api.example.org"], tcp_to("api")),
                    sni_chain(&["*.b.example.com"], tcp_to("deep")),
                    // No server names: the port's fallback.
                    FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            transport_protocol: "tls".into(),
                            ..Default::default()
                        }),
                        ..chain(tcp_to("fallback"))
                    },
                ],
            ),
            port_listener(8443, vec![sni_chain(&["api.example.com"], tcp_to("other"))]),
            Listener {
                name: "virtualOutbound".into(),
                address: Some(socket("0.0.0.0", 15001)),
                use_original_dst: Some(BoolValue { value: true }),
                filter_chains: vec![
                    sni_chain(&["every.example.net"], tcp_to("every")),
                    FilterChain {
                        filter_chain_match: Some(FilterChainMatch {
                            destination_port: Some(UInt32Value { value: 9000 }),
                            ..Default::default()
                        }),
                        ..chain(weighted(&[("a", 80), ("b", 20), ("api", 0)]))
                    },
                ],
                ..Default::default()
            },
        ],
    );
    let base = Config::from_yaml("").expect("empty config");
    let t = translate(&base, &r, &HashSet::new()).expect("translates");
    assert!(t.config.routes.iter().any(|r| r.matches
        == RouteMatch::ServerName {
            name: "api.example.com".into(),
            port: Some(443)
        }));
    let snapshot = Snapshot::new(t.config);
    let at = |port, name| tcp_target(&snapshot, port, name);
    // Exact before wildcard, the longest wildcard first.
    assert_eq!(at(443, Some("api.example.com")), "api");
    assert_eq!(at(443, Some("api.example.org")), "api");
    assert_eq!(at(443, Some("web.example.com")), "wild");
    assert_eq!(at(443, Some("a.b.example.com")), "deep");
    assert_eq!(at(443, Some("x.a.b.example.com")), "deep");
    assert_eq!(at(443, Some("b.example.com")), "wild");
    // A wildcard needs a label of its own; no name, the fallback.
    assert_eq!(at(443, Some("example.com")), "fallback");
    assert_eq!(at(443, None), "fallback");
    // The destination port first: 8443's names are its own.
    assert_eq!(at(8443, Some("api.example.com")), "other");
    assert_eq!(at(8443, Some("web.example.com")), "original 10.96.0.9:8443");
    // A chain for every port serves the ports without chains of their
    // own (as virtualOutbound's chains do in Envoy).
    assert_eq!(at(9443, Some("every.example.net")), "every");
    assert_eq!(at(443, Some("every.example.net")), "fallback");
    assert_eq!(
        at(8443, Some("every.example.net")),
        "original 10.96.0.9:8443"
    );
    assert_eq!(at(9000, Some("every.example.net")), "a");
    // Weight 0 takes nothing; 80/20 by smooth weighted round robin, so
    // every 5 connections are exactly 4 and 1.
    let mut counts = std::collections::HashMap::new();
    for _ in 0..1000 {
        *counts.entry(at(9000, None)).or_insert(0) += 1;
    }
    assert_eq!(counts.get("a"), Some(&800), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&200), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
}

#[test]
fn a_passthrough_server_name_is_left_to_the_original_destination_only_when_misses_go_there() {
    let passthrough = Cluster {
        name: "PassthroughCluster".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    };
    let clusters = || {
        vec![
            passthrough.clone(),
            static_cluster("api", &["10.0.0.1:443"]),
            static_cluster("BlackHoleCluster", &[]),
        ]
    };
    let listener = |fallback: &str| {
        port_listener(
            443,
            vec![
                sni_chain(&["api.example.com"], tcp_to("api")),
                sni_chain(&["*.wikipedia.org"], tcp_to("PassthroughCluster")),
                chain(tcp_to(fallback)),
            ],
        )
    };
    let base = Config::from_yaml("").expect("empty config");
    let r = resources(clusters(), vec![listener("PassthroughCluster")]);
    let t = translate(&base, &r, &HashSet::new()).expect("translates");
    let snapshot = Snapshot::new(t.config);
    assert_eq!(tcp_target(&snapshot, 443, Some("api.example.com")), "api");
    assert_eq!(
        tcp_target(&snapshot, 443, Some("en.wikipedia.org")),
        "original 10.96.0.9:443"
    );
    // Misses go to a cluster: the passthrough name cannot be left out.
    let r = resources(clusters(), vec![listener("BlackHoleCluster")]);
    let e = translate(&base, &r, &HashSet::new()).expect_err("refused");
    assert_eq!(
        e.field, "filter_chains[1].filters[0].typed_config.cluster",
        "{e}"
    );
}
