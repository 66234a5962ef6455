//! Inbound listeners onto the inbound policy: fixtures shaped like
//! istiod's `virtualInbound` (per-port chains by `destination_port` with
//! `tls` + `DownstreamTlsContext` and `raw_buffer` variants, catch-all
//! chains with `/0` prefix ranges, the 15006 loop guard, RBAC with
//! `filter_state` `io.istio.peer_principal` in `and_ids`/`or_ids`).

use super::inbound::{inbound, InboundPolicy};
use super::rbac::{HTTP_RBAC_TYPE, NETWORK_RBAC_TYPE};
use super::{translate, Rejected};
use crate::xds::state::Resources;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, CidrRange, SocketAddress, TrafficDirection, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener,
};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy as RbacPolicy, Principal, Rbac,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    TlsCertificate,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    filter_state_matcher, FilterStateMatcher, StringMatcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use strait_config::{Allow, Config, IdentityMatch, SdsIdentity};

pub(super) const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";

fn sds() -> SdsIdentity {
    SdsIdentity {
        certificate: "default".into(),
        trust_bundle: "ROOTCA".into(),
    }
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: None,
    }
}

/// istiod's inbound context: `default` and `ROOTCA`, the trust domain as
/// a SAN prefix, client certificates required.
pub(super) fn mtls_context() -> DownstreamTlsContext {
    #[allow(deprecated)]
    let trust_domain = CertificateValidationContext {
        match_subject_alt_names: vec![StringMatcher {
            match_pattern: Some(MatchPattern::Prefix("spiffe://cluster.local/".into())),
            ..Default::default()
        }],
        ..Default::default()
    };
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            tls_certificate_sds_secret_configs: vec![secret("default")],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(trust_domain),
                    validation_context_sds_secret_config: Some(secret("ROOTCA")),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

pub(super) fn tls_socket(ctx: &DownstreamTlsContext) -> Option<TransportSocket> {
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                any(
                    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    ctx,
                ),
            ),
        ),
    })
}

/// Istio's principal: the peer's identity in filter state.
pub(super) fn peer(m: MatchPattern) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::FilterState(FilterStateMatcher {
            key: "io.istio.peer_principal".into(),
            matcher: Some(filter_state_matcher::Matcher::StringMatch(StringMatcher {
                match_pattern: Some(m),
                ..Default::default()
            })),
        })),
    }
}

pub(super) fn ids(
    wrap: fn(principal::Set) -> principal::Identifier,
    ids: Vec<Principal>,
) -> Principal {
    Principal {
        identifier: Some(wrap(principal::Set { ids })),
    }
}

pub(super) fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set {
            rules: vec![Permission {
                rule: Some(permission::Rule::Any(true)),
            }],
        })),
    }
}

/// An ALLOW rule set as istiod writes an AuthorizationPolicy `from:
/// source.principals`: and_ids of or_ids.
fn allow_principals(principals: &[&str]) -> Rbac {
    let or = ids(
        principal::Identifier::OrIds,
        principals
            .iter()
            .map(|p| peer(MatchPattern::Exact(p.to_string())))
            .collect(),
    );
    rules(
        Action::Allow,
        vec![any_permission()],
        vec![ids(principal::Identifier::AndIds, vec![or])],
    )
}

pub(super) fn rules(
    action: Action,
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
) -> Rbac {
    Rbac {
        action: action as i32,
        policies: [(
            "ns[foo]-policy[web]-rule[0]".to_string(),
            RbacPolicy {
                permissions,
                principals,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    }
}

fn network_rbac(r: Option<Rbac>) -> Filter {
    Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            NETWORK_RBAC_TYPE,
            &NetworkRbac {
                rules: r,
                stat_prefix: "tcp.".into(),
                ..Default::default()
            },
        ))),
    }
}

fn hcm(rbac: Option<Rbac>) -> Filter {
    let mut http_filters = vec![HttpFilter {
        name: "istio.metadata_exchange".into(),
        ..Default::default()
    }];
    if let Some(r) = rbac {
        http_filters.push(HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                HTTP_RBAC_TYPE,
                &HttpRbac {
                    rules: Some(r),
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
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            &HttpConnectionManager {
                stat_prefix: "inbound_0.0.0.0_8080".into(),
                http_filters,
                ..Default::default()
            },
        ))),
    }
}

fn tcp_proxy() -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: None,
    }
}

fn harmless() -> Filter {
    Filter {
        name: "istio.metadata_exchange".into(),
        config_type: None,
    }
}

/// A chain for `port` (`None`: every port, as Istio's catch-alls with a
/// `/0` range) over `transport`, HTTP or TCP.
pub(super) fn chain(port: Option<u32>, tls: bool, http: bool, rbac: Option<Rbac>) -> FilterChain {
    FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            destination_port: port.map(|value| UInt32Value { value }),
            prefix_ranges: vec![CidrRange {
                address_prefix: "0.0.0.0".into(),
                prefix_len: Some(UInt32Value { value: 0 }),
            }],
            transport_protocol: if tls { "tls" } else { "raw_buffer" }.into(),
            application_protocols: match (tls, http) {
                (true, true) => vec![
                    "istio-http/1.0".into(),
                    "istio-http/1.1".into(),
                    "istio-h2".into(),
                ],
                (false, true) => vec!["http/1.1".into(), "h2c".into()],
                _ => vec![],
            },
            ..Default::default()
        }),
        filters: if http {
            vec![harmless(), hcm(rbac)]
        } else {
            vec![harmless(), network_rbac(rbac), tcp_proxy()]
        },
        transport_socket: if tls {
            tls_socket(&mtls_context())
        } else {
            None
        },
        ..Default::default()
    }
}

/// Both chains (HTTP and TCP) of one port in one transport.
pub(super) fn port_chains(port: Option<u32>, tls: bool, rbac: Option<Rbac>) -> Vec<FilterChain> {
    vec![
        chain(port, tls, true, rbac.clone()),
        chain(port, tls, false, rbac),
    ]
}

fn virtual_inbound(chains: Vec<FilterChain>) -> Listener {
    let mut all = vec![FilterChain {
        name: "virtualInbound-blackhole".into(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: 15006 }),
            ..Default::default()
        }),
        filters: vec![tcp_proxy()],
        ..Default::default()
    }];
    all.extend(chains);
    Listener {
        name: "virtualInbound".into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(15006)),
                ..Default::default()
            })),
        }),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains: all,
        ..Default::default()
    }
}

pub(super) fn policy_of(chains: Vec<FilterChain>) -> Result<InboundPolicy, Rejected> {
    inbound(&[&virtual_inbound(chains)], Some(&sds()))
}

pub(super) fn exact(id: &str) -> IdentityMatch {
    IdentityMatch::Exact(id.into())
}

#[test]
fn strict_with_rbac_allows_the_named_principal_and_permissive_catch_alls_allow_anyone() {
    let mut chains = port_chains(Some(8080), true, Some(allow_principals(&[SLEEP])));
    chains.extend(port_chains(None, true, None));
    chains.extend(port_chains(None, false, None));
    let p = policy_of(chains).expect("translates");
    assert_eq!(
        p,
        InboundPolicy {
            ports: [(8080, Allow::Identities(vec![exact(SLEEP)]))].into(),
            default: Some(Allow::Unauthenticated),
        },
        "15006 (the loop guard) is skipped"
    );
}

#[test]
fn the_mtls_mode_follows_the_chains_of_each_port() {
    // STRICT without RBAC: any identity of the trust domain (SAN prefix).
    let strict = policy_of(port_chains(Some(80), true, None)).expect("strict");
    assert_eq!(
        strict.ports[&80],
        Allow::Identities(vec![IdentityMatch::Prefix(
            "spiffe://cluster.local/".into()
        )])
    );
    // PERMISSIVE: plaintext too, unless RBAC names identities.
    let mut both = port_chains(Some(80), true, None);
    both.extend(port_chains(Some(80), false, None));
    assert_eq!(
        policy_of(both).expect("permissive").ports[&80],
        Allow::Unauthenticated
    );
    let mut both = port_chains(Some(80), true, Some(allow_principals(&[SLEEP])));
    both.extend(port_chains(
        Some(80),
        false,
        Some(allow_principals(&[SLEEP])),
    ));
    assert_eq!(
        policy_of(both).expect("permissive + rbac").ports[&80],
        Allow::Identities(vec![exact(SLEEP)])
    );
    // DISABLE: nobody proves an identity, so identity rules admit nobody.
    let plain = policy_of(port_chains(Some(80), false, None)).expect("disable");
    assert_eq!(plain.ports[&80], Allow::Unauthenticated);
    let plain = policy_of(port_chains(
        Some(80),
        false,
        Some(allow_principals(&[SLEEP])),
    ))
    .expect("disable + rbac");
    assert_eq!(plain.ports[&80], Allow::Deny);
}

#[test]
fn principals_combine_and_permissions_select_the_port() {
    // ALLOW with no policies denies everyone.
    let none = Rbac {
        action: Action::Allow as i32,
        ..Default::default()
    };
    assert_eq!(
        policy_of(port_chains(Some(80), true, Some(none)))
            .expect("deny")
            .ports[&80],
        Allow::Deny
    );
    // and_ids of a namespace prefix and an or of two names: the one inside.
    let and = ids(
        principal::Identifier::AndIds,
        vec![
            peer(MatchPattern::Prefix(
                "spiffe://cluster.local/ns/foo/".into(),
            )),
            ids(
                principal::Identifier::OrIds,
                vec![
                    peer(MatchPattern::Exact(SLEEP.into())),
                    peer(MatchPattern::Exact(
                        "spiffe://cluster.local/ns/bar/sa/x".into(),
                    )),
                ],
            ),
        ],
    );
    let r = rules(Action::Allow, vec![any_permission()], vec![and]);
    assert_eq!(
        policy_of(port_chains(Some(80), true, Some(r)))
            .expect("and")
            .ports[&80],
        Allow::Identities(vec![exact(SLEEP)])
    );
    // `authenticated.principal_name` suffix, and a rule for another port.
    let suffix = Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(StringMatcher {
                    match_pattern: Some(MatchPattern::Suffix("/sa/sleep".into())),
                    ..Default::default()
                }),
            },
        )),
    };
    let port = |p: u32| Permission {
        rule: Some(permission::Rule::DestinationPort(p)),
    };
    // Without a SAN matcher (any identity the trust bundle signs).
    let no_san = |mut c: FilterChain| {
        let mut ctx = mtls_context();
        if let Some(ValidationContextType::CombinedValidationContext(v)) = ctx
            .common_tls_context
            .as_mut()
            .and_then(|c| c.validation_context_type.as_mut())
        {
            v.default_validation_context = None;
        }
        c.transport_socket = tls_socket(&ctx);
        c
    };
    let r = rules(Action::Allow, vec![port(80)], vec![suffix.clone()]);
    let chains = vec![
        no_san(chain(Some(80), true, false, Some(r.clone()))),
        no_san(chain(Some(81), true, false, Some(r.clone()))),
    ];
    let p = policy_of(chains).expect("ports");
    assert_eq!(
        p.ports[&80],
        Allow::Identities(vec![IdentityMatch::Suffix("/sa/sleep".into())])
    );
    assert_eq!(p.ports[&81], Allow::Deny, "the rule is for port 80 only");
    // The trust domain prefix and a suffix at once: both ends, and the
    // one identity where they overlap (`.../` then `/sa/sleep`).
    assert_eq!(
        policy_of(vec![chain(Some(80), true, false, Some(r))])
            .expect("prefix and suffix")
            .ports[&80],
        Allow::Identities(vec![
            IdentityMatch::PrefixSuffix {
                prefix: "spiffe://cluster.local/".into(),
                suffix: "/sa/sleep".into()
            },
            exact("spiffe://cluster.local/sa/sleep"),
        ])
    );
}

pub(super) fn refused(chains: Vec<FilterChain>) -> Rejected {
    policy_of(chains).expect_err("refused")
}

#[test]
fn what_strait_cannot_enforce_is_refused_with_its_field() {
    let deny = rules(
        Action::Deny,
        vec![any_permission()],
        vec![peer(MatchPattern::Exact(SLEEP.into()))],
    );
    let e = refused(port_chains(Some(80), true, Some(deny)));
    assert_eq!(
        e.field,
        "filter_chains[1].filters[1].typed_config.http_filters[1].typed_config.rules.action",
        "{e}"
    );

    let path = Permission {
        rule: Some(permission::Rule::UrlPath(Default::default())),
    };
    let r = rules(
        Action::Allow,
        vec![path],
        vec![peer(MatchPattern::Exact(SLEEP.into()))],
    );
    let e = refused(vec![chain(Some(80), true, false, Some(r))]);
    assert_eq!(
        e.field,
        "filter_chains[1].filters[1].typed_config.rules.policies['ns[foo]-policy[web]-rule[0]'].permissions[0].url_path",
        "{e}"
    );

    let not = Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(peer(
            MatchPattern::Exact(SLEEP.into()),
        )))),
    };
    let r = rules(Action::Allow, vec![any_permission()], vec![not]);
    let e = refused(vec![chain(Some(80), true, false, Some(r))]);
    assert!(e.field.ends_with("principals[0].not_id"), "{e}");

    let source = Principal {
        identifier: Some(principal::Identifier::RemoteIp(Default::default())),
    };
    let r = rules(Action::Allow, vec![any_permission()], vec![source]);
    let e = refused(vec![chain(Some(80), true, false, Some(r))]);
    assert!(e.field.ends_with("principals[0].remote_ip"), "{e}");
    assert!(
        e.to_string().starts_with("Listener 'virtualInbound': "),
        "{e}"
    );

    // The HTTP and TCP chains of one port disagree.
    let mut chains = vec![chain(
        Some(80),
        true,
        true,
        Some(allow_principals(&[SLEEP])),
    )];
    chains.push(chain(Some(80), true, false, None));
    assert_eq!(refused(chains).field, "filter_chains[2]");
}

#[test]
fn a_tls_context_strait_cannot_honour_is_refused() {
    let with = |edit: fn(&mut DownstreamTlsContext)| {
        let mut ctx = mtls_context();
        edit(&mut ctx);
        let mut c = chain(Some(80), true, false, None);
        c.transport_socket = tls_socket(&ctx);
        refused(vec![c]).field
    };
    let common = "filter_chains[1].transport_socket.typed_config.common_tls_context";
    assert_eq!(
        with(|c| {
            if let Some(common) = c.common_tls_context.as_mut() {
                common.tls_certificate_sds_secret_configs = vec![secret("other")];
            }
        }),
        format!("{common}.tls_certificate_sds_secret_configs[0].name")
    );
    assert_eq!(
        with(|c| {
            if let Some(common) = c.common_tls_context.as_mut() {
                common.tls_certificates = vec![TlsCertificate::default()];
            }
        }),
        format!("{common}.tls_certificates")
    );
    assert_eq!(
        with(|c| c.require_client_certificate = None),
        "filter_chains[1].transport_socket.typed_config.require_client_certificate"
    );
    // TLS without client certificates beside plaintext: plaintext rules.
    let mut anonymous = mtls_context();
    anonymous.require_client_certificate = None;
    let mut chains = vec![chain(Some(80), true, false, None)];
    chains[0].transport_socket = tls_socket(&anonymous);
    chains.push(chain(Some(80), false, false, None));
    assert_eq!(
        policy_of(chains).expect("permissive").ports[&80],
        Allow::Unauthenticated
    );
    // TLS chains without a context (passthrough) and no identity from SDS.
    let mut c = chain(Some(80), true, false, None);
    c.transport_socket = None;
    assert_eq!(
        refused(vec![c]).field,
        "filter_chains[1].filter_chain_match.transport_protocol"
    );
    let e =
        inbound(&[&virtual_inbound(port_chains(Some(80), true, None))], None).expect_err("no sds");
    assert!(e.message.contains("identity.sds"), "{e}");
}

#[test]
fn shadow_rules_are_ignored_and_the_file_policy_keeps_what_xds_does_not_name() {
    let shadow = Filter {
        name: "envoy.filters.network.rbac".into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            NETWORK_RBAC_TYPE,
            &NetworkRbac {
                shadow_rules: Some(rules(
                    Action::Deny,
                    vec![any_permission()],
                    vec![peer(MatchPattern::Exact(SLEEP.into()))],
                )),
                ..Default::default()
            },
        ))),
    };
    let mut c = chain(Some(80), true, false, None);
    c.filters.insert(0, shadow);
    assert_eq!(
        policy_of(vec![c]).expect("shadow").ports[&80],
        Allow::Identities(vec![IdentityMatch::Prefix(
            "spiffe://cluster.local/".into()
        )])
    );

    let file = Config::from_yaml(
        "xds: {address: 127.0.0.1:1, node: {id: n}}\nidentity:\n  sds: {certificate: default, trust_bundle: ROOTCA}\npolicy:\n  default: deny\n  ports: [{port: 9090, allow: unauthenticated}, {port: 8080, allow: unauthenticated}]\n  unauthenticated_paths: [/healthz]\n",
    )
    .expect("file");
    let mut chains = port_chains(Some(8080), true, Some(allow_principals(&[SLEEP])));
    chains.extend(port_chains(None, true, None));
    chains.extend(port_chains(None, false, None));
    let l = virtual_inbound(chains);
    let r = Resources {
        listeners: BTreeMap::from([(l.name.clone(), l)]),
        ..Default::default()
    };
    let t = translate(&file, &r, &HashSet::new()).expect("translates");
    let p = &t.config.policy;
    assert_eq!(p.for_port(8080), &Allow::Identities(vec![exact(SLEEP)]));
    assert_eq!(
        p.for_port(9090),
        &Allow::Unauthenticated,
        "the file's port stays"
    );
    assert_eq!(
        p.for_port(7000),
        &Allow::Unauthenticated,
        "xDS's catch-all replaces the default"
    );
    assert_eq!(p.unauthenticated_paths, ["/healthz"]);
}

#[test]
fn ports_named_by_catch_all_rbac_get_their_own_rule() {
    // Istio puts an AuthorizationPolicy's `to.operation.ports` on every
    // chain, the catch-alls too: the named port gets the rule as it
    // holds there, every other port the rule as it holds elsewhere.
    let on_9000 = Permission {
        rule: Some(permission::Rule::DestinationPort(9000)),
    };
    let r = rules(
        Action::Allow,
        vec![on_9000],
        vec![peer(MatchPattern::Exact(SLEEP.into()))],
    );
    let mut chains = port_chains(Some(8080), true, Some(r.clone()));
    chains.extend(port_chains(None, true, Some(r)));
    let p = policy_of(chains).expect("translates");
    assert_eq!(
        p,
        InboundPolicy {
            ports: [
                (8080, Allow::Deny),
                (9000, Allow::Identities(vec![exact(SLEEP)]))
            ]
            .into(),
            default: Some(Allow::Deny),
        }
    );
}
