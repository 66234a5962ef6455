//! xDS resources shaped like what istiod sends a sidecar (written from
//! Envoy's API and the shape of Istio's published sidecar config dumps):
//! the `virtualOutbound` listener on 15001 with `use_original_dst`, a
//! blackhole chain for 15001 itself and a passthrough default chain;
//! (`virtualInbound` on 15006 is in `istio_inbound.rs`); per-port outbound listeners `0.0.0.0_<port>`
//! (never bound) whose HTTP chain names its route configuration by the
//! port, beside a passthrough TCP chain for what is not HTTP; a TCP
//! service's `<VIP>_<port>` listener; `outbound|PORT||HOST` EDS clusters;
//! `BlackHoleCluster`, `PassthroughCluster`, `InboundPassthroughClusterIpv4`.
//! Istio's own filters (metadata exchange, stats) ride along as istiod
//! sends them. Only `tests/xds_istio.rs` includes it.

use crate::control_plane::{CLUSTER, LISTENER, ROUTE};
use crate::xds_resources::{any, router};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, circuit_breakers, CircuitBreakers, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, Address, AggregatedConfigSource, ConfigSource,
    SocketAddress, TrafficDirection,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{self, ClusterSpecifier};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use std::net::SocketAddr;

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const TYPED_STRUCT: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";
pub const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const LOCAL_RATE_LIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

fn secs(seconds: i64) -> Option<PbDuration> {
    Some(PbDuration { seconds, nanos: 0 })
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

/// `outbound|80||web.default.svc.cluster.local`.
pub fn outbound_name(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// Istio's defaults: unlimited breakers (max u32), 10 s connect timeout,
/// LEAST_REQUEST.
fn breakers() -> Option<CircuitBreakers> {
    let max = Some(UInt32Value { value: u32::MAX });
    Some(CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: max,
            max_pending_requests: max,
            max_requests: max,
            max_retries: max,
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// An outbound EDS cluster, its endpoints over ADS.
pub fn outbound_cluster(name: &str) -> Any {
    any(
        CLUSTER,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    initial_fetch_timeout: secs(0),
                    resource_api_version: 2,
                    ..Default::default()
                }),
                service_name: name.into(),
            }),
            connect_timeout: secs(10),
            lb_policy: cluster::LbPolicy::LeastRequest as i32,
            circuit_breakers: breakers(),
            ..Default::default()
        },
    )
}

pub fn black_hole_cluster() -> Any {
    any(
        CLUSTER,
        &Cluster {
            name: "BlackHoleCluster".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            connect_timeout: secs(10),
            ..Default::default()
        },
    )
}

fn original_dst_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: secs(10),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        circuit_breakers: breakers(),
        ..Default::default()
    }
}

pub fn passthrough_cluster() -> Any {
    any(CLUSTER, &original_dst_cluster("PassthroughCluster"))
}

/// What the inbound passthrough forwards with (strait's inbound listener
/// does this job itself).
pub fn inbound_passthrough_cluster() -> Any {
    let mut c = original_dst_cluster("InboundPassthroughClusterIpv4");
    c.upstream_bind_config = Some(envoy_types::pb::envoy::config::core::v3::BindConfig {
        source_address: socket("127.0.0.6", 0).and_then(|a| match a.address {
            Some(address::Address::SocketAddress(s)) => Some(s),
            _ => None,
        }),
        ..Default::default()
    });
    any(CLUSTER, &c)
}

fn typed_filter(name: &str, type_url: &str) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: type_url.into(),
            value: Vec::new(),
        })),
        ..Default::default()
    }
}

fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            TCP_PROXY,
            &TcpProxy {
                stat_prefix: stat_prefix.into(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
                ..Default::default()
            },
        ))),
    }
}

fn stats_filter() -> Filter {
    Filter {
        name: "istio.stats".into(),
        config_type: Some(filter::ConfigType::TypedConfig(Any {
            type_url: TYPED_STRUCT.into(),
            value: Vec::new(),
        })),
    }
}

fn listener_filters() -> Vec<ListenerFilter> {
    [
        "envoy.filters.listener.tls_inspector",
        "envoy.filters.listener.http_inspector",
    ]
    .into_iter()
    .map(|name| ListenerFilter {
        name: name.into(),
        ..Default::default()
    })
    .collect()
}

/// `virtualOutbound`: every redirected connection arrives here and goes
/// to the listener of its original destination; 15001 itself is a
/// blackhole (a loop), anything else passes through.
pub fn virtual_outbound() -> Any {
    any(
        LISTENER,
        &Listener {
            name: "virtualOutbound".into(),
            address: socket("0.0.0.0", 15001),
            use_original_dst: Some(BoolValue { value: true }),
            traffic_direction: TrafficDirection::Outbound as i32,
            listener_filters: listener_filters(),
            filter_chains: vec![FilterChain {
                name: "virtualOutbound-blackhole".into(),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: 15001 }),
                    ..Default::default()
                }),
                filters: vec![
                    stats_filter(),
                    tcp_proxy_filter("BlackHoleCluster", "BlackHoleCluster"),
                ],
                ..Default::default()
            }],
            default_filter_chain: Some(FilterChain {
                name: "PassthroughFilterChain".into(),
                filters: vec![
                    stats_filter(),
                    tcp_proxy_filter("PassthroughCluster", "PassthroughCluster"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// `0.0.0.0_<port>`: HTTP (by sniffed protocol) to the route
/// configuration named by the port; anything else passes through.
pub fn http_port_listener(port: u16) -> Any {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_0.0.0.0_{port}"),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: port.to_string(),
            config_source: Some(ConfigSource {
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                initial_fetch_timeout: secs(0),
                resource_api_version: 2,
                ..Default::default()
            }),
        })),
        http_filters: vec![
            typed_filter("istio.metadata_exchange", TYPED_STRUCT),
            // Installed empty; routes configure it (typed_per_filter_config).
            typed_filter("envoy.filters.http.fault", FAULT),
            // As an EnvoyFilter adds it: empty, for routes to configure.
            typed_filter("envoy.filters.http.local_ratelimit", LOCAL_RATE_LIMIT),
            typed_filter(
                "envoy.filters.http.cors",
                "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
            ),
            typed_filter("istio.stats", TYPED_STRUCT),
            router(),
        ],
        use_remote_address: Some(BoolValue { value: false }),
        ..Default::default()
    };
    any(
        LISTENER,
        &Listener {
            name: format!("0.0.0.0_{port}"),
            address: socket("0.0.0.0", port),
            bind_to_port: Some(BoolValue { value: false }),
            traffic_direction: TrafficDirection::Outbound as i32,
            listener_filters: listener_filters(),
            filter_chains: vec![
                FilterChain {
                    filter_chain_match: Some(FilterChainMatch {
                        transport_protocol: "raw_buffer".into(),
                        application_protocols: vec!["http/1.1".into(), "h2c".into()],
                        ..Default::default()
                    }),
                    filters: vec![Filter {
                        name: "envoy.filters.network.http_connection_manager".into(),
                        config_type: Some(filter::ConfigType::TypedConfig(any(HCM, &hcm))),
                    }],
                    ..Default::default()
                },
                FilterChain {
                    name: "PassthroughFilterChain".into(),
                    filters: vec![tcp_proxy_filter("PassthroughCluster", "PassthroughCluster")],
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    )
}

/// `<VIP>_<port>`: a TCP service's own listener.
pub fn tcp_service_listener(vip: SocketAddr, cluster: &str) -> Any {
    any(
        LISTENER,
        &Listener {
            name: format!("{}_{}", vip.ip(), vip.port()),
            address: socket(&vip.ip().to_string(), vip.port()),
            bind_to_port: Some(BoolValue { value: false }),
            traffic_direction: TrafficDirection::Outbound as i32,
            filter_chains: vec![FilterChain {
                filters: vec![stats_filter(), tcp_proxy_filter(cluster, cluster)],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

/// `0.0.0.0_<port>` with a chain picked by the client's source range,
/// which strait does not match on.
pub fn source_range_listener(port: u16, source: &str, cluster: &str) -> Any {
    use envoy_types::pb::envoy::config::core::v3::CidrRange;
    any(
        LISTENER,
        &Listener {
            name: format!("0.0.0.0_{port}"),
            address: socket("0.0.0.0", port),
            bind_to_port: Some(BoolValue { value: false }),
            traffic_direction: TrafficDirection::Outbound as i32,
            filter_chains: vec![FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    source_prefix_ranges: vec![CidrRange {
                        address_prefix: source.into(),
                        prefix_len: Some(UInt32Value { value: 32 }),
                    }],
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_filter(cluster, cluster)],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

/// Istio's route: prefix `/`, no timeout, its default retry policy.
pub fn service_route(name: &str, prefix: &str, cluster: &str) -> Route {
    Route {
        name: name.into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            timeout: secs(0),
            retry_policy: Some(RetryPolicy {
                retry_on:
                    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                        .into(),
                num_retries: Some(UInt32Value { value: 2 }),
                host_selection_retry_max_attempts: 5,
                retriable_status_codes: vec![503],
                ..Default::default()
            }),
            max_stream_duration: Some(route_action::MaxStreamDuration {
                max_stream_duration: secs(0),
                grpc_timeout_header_max: secs(0),
                ..Default::default()
            }),
            ..Default::default()
        })),
        decorator: Some(Decorator {
            operation: format!("{cluster}/*"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A 100% abort with `status`, as a route's `typed_per_filter_config`.
pub fn abort_all(status: u32) -> (String, Any) {
    (
        "envoy.filters.http.fault".into(),
        any(
            FAULT,
            &HttpFault {
                abort: Some(FaultAbort {
                    percentage: Some(FractionalPercent {
                        numerator: 1_000_000,
                        denominator: DenominatorType::Million as i32,
                    }),
                    error_type: Some(fault_abort::ErrorType::HttpStatus(status)),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    )
}

/// A bucket of `tokens` refilled one an hour, enabled and enforced for
/// every request, as a route's `typed_per_filter_config`.
pub fn rate_limit(tokens: u32) -> (String, Any) {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::r#type::v3::TokenBucket;
    let all = Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: DenominatorType::Hundred as i32,
        }),
        runtime_key: "local_rate_limit_enabled".into(),
    });
    (
        "envoy.filters.http.local_ratelimit".into(),
        any(
            LOCAL_RATE_LIMIT,
            &LocalRateLimit {
                stat_prefix: "http_local_rate_limiter".into(),
                token_bucket: Some(TokenBucket {
                    max_tokens: tokens,
                    tokens_per_fill: Some(UInt32Value { value: 1 }),
                    fill_interval: secs(3600),
                }),
                filter_enabled: all.clone(),
                filter_enforced: all,
                ..Default::default()
            },
        ),
    )
}

/// A service's virtual host in a port's route configuration: its names
/// as Istio lists them (FQDN, short names, the VIP, each with the port).
pub fn service_host(host: &str, vip: SocketAddr, routes: Vec<Route>) -> VirtualHost {
    let port = vip.port();
    let short = host.split('.').next().unwrap_or(host);
    let ns = host.split('.').take(2).collect::<Vec<_>>().join(".");
    let names = [
        host.to_string(),
        short.to_string(),
        ns,
        vip.ip().to_string(),
    ];
    VirtualHost {
        name: format!("{host}:{port}"),
        domains: names
            .iter()
            .flat_map(|n| [n.clone(), format!("{n}:{port}")])
            .collect(),
        routes,
        include_request_attempt_count: true,
        ..Default::default()
    }
}

/// The port's route configuration: its services, then `allow_any` to
/// PassthroughCluster (Istio's ALLOW_ANY outbound policy).
pub fn port_routes(port: u16, hosts: Vec<VirtualHost>) -> Any {
    let mut hosts = hosts;
    hosts.push(VirtualHost {
        name: "allow_any".into(),
        domains: vec!["*".into()],
        routes: vec![service_route("allow_any", "/", "PassthroughCluster")],
        include_request_attempt_count: true,
        ..Default::default()
    });
    any(
        ROUTE,
        &RouteConfiguration {
            name: port.to_string(),
            virtual_hosts: hosts,
            validate_clusters: Some(BoolValue { value: false }),
            ..Default::default()
        },
    )
}
