//! istiod's `virtualInbound` listener, written from the shape of Istio's
//! published config dumps (`istioctl/pkg/authz/testdata/configdump.yaml`):
//! on 15006 with `use_original_dst`; a loop-guard chain for 15006 itself
//! (TCP proxy to `BlackHoleCluster`); per service port an HTTP chain
//! (`istio_authn`, metadata exchange, an HCM with the HTTP RBAC filter)
//! and a TCP chain (network RBAC, TCP proxy to `inbound|PORT||`), each
//! over `tls` with the `DownstreamTlsContext` istiod writes (SDS
//! `default` + `ROOTCA`, the trust domain as SAN prefix, client
//! certificates required) and, in PERMISSIVE mode, over `raw_buffer` too;
//! the same four catch-all chains (a `/0` range, no port) in PERMISSIVE.
//! RBAC principals are `filter_state` `io.istio.peer_principal` in
//! `and_ids` of `or_ids`, as istiod writes `source.principals` (exact)
//! and `source.namespaces` (`safe_regex` `.*/ns/<namespace>/.*`).
#![allow(dead_code)]

use crate::control_plane::LISTENER;
use crate::xds_resources::any;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, transport_socket, Address, CidrRange, SocketAddress,
    TrafficDirection, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    filter_state_matcher, path_matcher, FilterStateMatcher, PathMatcher, RegexMatcher,
    StringMatcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const TYPED_STRUCT: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";

/// PeerAuthentication's mTLS mode for a port.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mtls {
    Strict,
    Permissive,
    Disable,
}

/// One service port of the workload: its mode and its RBAC (`None`: no
/// AuthorizationPolicy, so no rules).
pub struct InboundPort {
    pub port: u16,
    pub mtls: Mtls,
    pub rbac: Option<Rbac>,
}

/// `source.principals` of an ALLOW AuthorizationPolicy.
pub fn allow_principals(principals: &[&str]) -> Rbac {
    allow_rule(any_permission(), &exact(principals))
}

/// `source.namespaces` of an ALLOW AuthorizationPolicy (plain names:
/// istiod escapes regex metacharacters, which DNS labels do not have).
pub fn allow_namespaces(namespaces: &[&str]) -> Rbac {
    let regexes = namespaces
        .iter()
        .map(|ns| {
            MatchPattern::SafeRegex(RegexMatcher {
                regex: format!(".*/ns/{ns}/.*"),
                ..Default::default()
            })
        })
        .collect::<Vec<_>>();
    allow_rule(any_permission(), &regexes)
}

fn exact(principals: &[&str]) -> Vec<MatchPattern> {
    principals
        .iter()
        .map(|p| MatchPattern::Exact(p.to_string()))
        .collect()
}

/// ALLOW `principal` to `to.operation.paths` only: an HTTP permission
/// strait's per-port policy cannot enforce.
pub fn allow_principal_on_path(principal: &str, path: &str) -> Rbac {
    let path = Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(path.into())),
                ..Default::default()
            })),
        })),
    };
    allow_rule(
        Permission {
            rule: Some(permission::Rule::AndRules(permission::Set {
                rules: vec![Permission {
                    rule: Some(permission::Rule::OrRules(permission::Set {
                        rules: vec![path],
                    })),
                }],
            })),
        },
        &exact(&[principal]),
    )
}

fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set {
            rules: vec![Permission {
                rule: Some(permission::Rule::Any(true)),
            }],
        })),
    }
}

fn allow_rule(permission: Permission, principals: &[MatchPattern]) -> Rbac {
    let peer = |m: &MatchPattern| Principal {
        identifier: Some(principal::Identifier::FilterState(FilterStateMatcher {
            key: "io.istio.peer_principal".into(),
            matcher: Some(filter_state_matcher::Matcher::StringMatch(StringMatcher {
                match_pattern: Some(m.clone()),
                ..Default::default()
            })),
        })),
    };
    let or = Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set {
            ids: principals.iter().map(peer).collect(),
        })),
    };
    Rbac {
        action: Action::Allow as i32,
        policies: [(
            "ns[default]-policy[web]-rule[0]".to_string(),
            Policy {
                permissions: vec![permission],
                principals: vec![Principal {
                    identifier: Some(principal::Identifier::AndIds(principal::Set {
                        ids: vec![or],
                    })),
                }],
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    }
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

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: None,
    }
}

/// istiod's inbound TLS: the workload identity, client certificates
/// required, any identity of the trust domain.
fn mtls_socket() -> Option<TransportSocket> {
    #[allow(deprecated)]
    let trust_domain = CertificateValidationContext {
        match_subject_alt_names: vec![StringMatcher {
            match_pattern: Some(MatchPattern::Prefix("spiffe://cluster.local/".into())),
            ..Default::default()
        }],
        ..Default::default()
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            tls_certificate_sds_secret_configs: vec![sds("default")],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(trust_domain),
                    validation_context_sds_secret_config: Some(sds("ROOTCA")),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            DOWNSTREAM_TLS,
            &context,
        ))),
    })
}

fn named(name: &str, type_url: &str) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(Any {
            type_url: type_url.into(),
            value: Vec::new(),
        })),
    }
}

fn tcp_proxy(cluster: &str) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            TCP_PROXY,
            &TcpProxy {
                stat_prefix: cluster.into(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
                ..Default::default()
            },
        ))),
    }
}

/// The inbound HCM: metadata exchange, RBAC (if any), router; its inline
/// route to the port's inbound cluster.
fn inbound_hcm(cluster: &str, rbac: Option<&Rbac>) -> Filter {
    let mut http_filters = vec![HttpFilter {
        name: "istio.metadata_exchange".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm".into(),
            value: Vec::new(),
        })),
        ..Default::default()
    }];
    if let Some(r) = rbac {
        http_filters.push(HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                HTTP_RBAC,
                &HttpRbac {
                    rules: Some(r.clone()),
                    shadow_rules_stat_prefix: "istio_dry_run_allow_".into(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        });
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        ..Default::default()
    });
    let route_config = RouteConfiguration {
        name: cluster.into(),
        virtual_hosts: vec![VirtualHost {
            name: format!("{cluster}:*"),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(
                        envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                            "/".into(),
                        ),
                    ),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            HCM,
            &HttpConnectionManager {
                stat_prefix: format!("inbound_0.0.0.0_{cluster}"),
                route_specifier: Some(RouteSpecifier::RouteConfig(route_config)),
                http_filters,
                ..Default::default()
            },
        ))),
    }
}

/// The HTTP and TCP chains of one port (`None`: the catch-alls) over
/// one transport.
fn chains(port: Option<u16>, tls: bool, rbac: Option<&Rbac>) -> Vec<FilterChain> {
    let cluster = match port {
        Some(p) => format!("inbound|{p}||"),
        None => "InboundPassthroughClusterIpv4".into(),
    };
    let name = port.map_or("virtualInbound".to_string(), |p| format!("0.0.0.0_{p}"));
    let matching = |http: bool| FilterChainMatch {
        destination_port: port.map(|p| UInt32Value {
            value: u32::from(p),
        }),
        prefix_ranges: vec![CidrRange {
            address_prefix: "0.0.0.0".into(),
            prefix_len: Some(UInt32Value { value: 0 }),
        }],
        transport_protocol: if tls { "tls" } else { "raw_buffer" }.into(),
        application_protocols: match (http, tls) {
            (true, true) => vec![
                "istio-http/1.0".into(),
                "istio-http/1.1".into(),
                "istio-h2".into(),
            ],
            (true, false) => vec!["http/1.1".into(), "h2c".into()],
            (false, _) => vec![],
        },
        ..Default::default()
    };
    let authn = named("istio_authn", TYPED_STRUCT);
    let exchange = named(
        "istio.metadata_exchange",
        "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
    );
    let mut tcp_filters = vec![authn.clone(), exchange.clone()];
    if let Some(r) = rbac {
        tcp_filters.push(Filter {
            name: "envoy.filters.network.rbac".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(
                NETWORK_RBAC,
                &NetworkRbac {
                    rules: Some(r.clone()),
                    stat_prefix: "tcp.".into(),
                    ..Default::default()
                },
            ))),
        });
    }
    tcp_filters.push(named(
        "istio.stats",
        "type.googleapis.com/stats.PluginConfig",
    ));
    tcp_filters.push(tcp_proxy(&cluster));
    let socket = if tls { mtls_socket() } else { None };
    vec![
        FilterChain {
            name: name.clone(),
            filter_chain_match: Some(matching(true)),
            filters: vec![authn, exchange, inbound_hcm(&cluster, rbac)],
            transport_socket: socket.clone(),
            ..Default::default()
        },
        FilterChain {
            name,
            filter_chain_match: Some(matching(false)),
            filters: tcp_filters,
            transport_socket: socket,
            ..Default::default()
        },
    ]
}

/// `virtualInbound` for `ports`, PERMISSIVE (mesh default) elsewhere.
pub fn virtual_inbound(ports: &[InboundPort]) -> Any {
    let mut filter_chains = vec![FilterChain {
        name: "virtualInbound-blackhole".into(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: 15006 }),
            ..Default::default()
        }),
        filters: vec![tcp_proxy("BlackHoleCluster")],
        ..Default::default()
    }];
    let mut mode = |port: Option<u16>, mtls: Mtls, rbac: Option<&Rbac>| {
        if mtls != Mtls::Disable {
            filter_chains.extend(chains(port, true, rbac));
        }
        if mtls != Mtls::Strict {
            filter_chains.extend(chains(port, false, rbac));
        }
    };
    for p in ports {
        mode(Some(p.port), p.mtls, p.rbac.as_ref());
    }
    mode(None, Mtls::Permissive, None);
    any(
        LISTENER,
        &Listener {
            name: "virtualInbound".into(),
            address: socket("0.0.0.0", 15006),
            use_original_dst: Some(BoolValue { value: true }),
            traffic_direction: TrafficDirection::Inbound as i32,
            listener_filters: [
                "envoy.filters.listener.original_dst",
                "envoy.filters.listener.tls_inspector",
                "envoy.filters.listener.http_inspector",
            ]
            .into_iter()
            .map(|name| ListenerFilter {
                name: name.into(),
                ..Default::default()
            })
            .collect(),
            filter_chains,
            ..Default::default()
        },
    )
}
