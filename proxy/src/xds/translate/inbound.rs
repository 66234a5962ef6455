//! Inbound listeners (`traffic_direction: INBOUND`, Istio's
//! `virtualInbound`) onto strait's inbound policy: who may reach each
//! destination port. strait's inbound listener terminates mesh mTLS and
//! forwards to the application itself, so an inbound listener's routes
//! and TCP proxies are not translated; what it says about security is.
//!
//! - **mTLS mode per port**, from the filter chains of that
//!   `destination_port` (chains without one serve every other port: the
//!   policy's default): only chains with a `DownstreamTlsContext` that
//!   requires a client certificate = STRICT (`authenticated` or
//!   narrower); TLS and plaintext chains = PERMISSIVE (`unauthenticated`
//!   unless RBAC narrows it); plaintext only = DISABLE (no identity can
//!   be proved, so RBAC on identities admits nobody).
//! - The TLS context must be the workload identity's own SDS secrets
//!   (`identity.sds`); its SAN matcher (Istio's trust domain prefix)
//!   narrows who may connect, and names the trust domain RBAC namespace
//!   rules are resolved under ([`super::rbac_regex`]). A context strait
//!   cannot honour (other or inline certificates, SNI required, TLS
//!   without client certificates as a port's only way in) is refused
//!   with its field, never weakened.
//! - **RBAC** filters (network, and HTTP in the connection manager) give
//!   the identities allowed ([`super::rbac`]); every chain of a port must
//!   agree, since strait authorizes the port, not the protocol.
//!
//! The chain for the listener's own port (Istio's loop guard, a TCP proxy
//! to `BlackHoleCluster`) is skipped: strait's inbound port is its own.

use super::rbac::{self, TrustDomain, Who};
use super::upstream_tls::{one_secret, san_pattern};
use super::Rejected;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, TrafficDirection};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use prost::Message;
use std::collections::BTreeMap;
use strait_config::{Allow, IdentityMatch, Policy, SdsIdentity};
use tracing::info;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

/// Network filters that observe (stats, metadata exchange) or only feed
/// Istio's own filters (`istio_authn`): nothing to enforce.
const HARMLESS_NETWORK: &[&str] = &[
    "istio_authn",
    "istio.metadata_exchange",
    "envoy.filters.network.metadata_exchange",
    "istio.stats",
];

/// HTTP filters on an inbound connection manager that change nothing
/// about who may reach the app.
const HARMLESS_HTTP: &[&str] = &[
    "envoy.filters.http.router",
    "istio.metadata_exchange",
    "envoy.filters.http.peer_metadata",
    "istio.stats",
    "istio.alpn",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.http.cors",
];

/// What the control plane's inbound listeners decide: per port, and for
/// every other port (chains without a destination port).
#[derive(Debug, Default, PartialEq)]
pub struct InboundPolicy {
    pub ports: BTreeMap<u16, Allow>,
    pub default: Option<Allow>,
}

impl InboundPolicy {
    /// The file's policy with the control plane's on top: a port the
    /// control plane names takes its rule, its catch-all chains replace
    /// the default; ports only the file names keep the file's rule (the
    /// most specific rule wins), and the file's `unauthenticated_paths`
    /// (kubelet probes) stay open.
    pub fn apply(self, policy: &mut Policy) {
        policy.ports.extend(self.ports);
        if let Some(default) = self.default {
            policy.default = default;
        }
    }
}

pub fn is_inbound(l: &Listener) -> bool {
    l.traffic_direction == TrafficDirection::Inbound as i32 || l.name == "virtualInbound"
}

/// Every inbound listener's policy, merged; two listeners disagreeing
/// about one port are refused.
pub fn inbound(
    listeners: &[&Listener],
    sds: Option<&SdsIdentity>,
) -> Result<InboundPolicy, Rejected> {
    let mut all = InboundPolicy::default();
    for l in listeners {
        let one = listener(l, sds)?;
        let clash = |what: String| {
            Rejected::new(
                "Listener",
                &l.name,
                "filter_chains",
                format!("{what} is already decided by another inbound listener"),
            )
        };
        for (port, allow) in one.ports {
            if all.ports.get(&port).is_some_and(|a| *a != allow) {
                return Err(clash(format!("port {port}")));
            }
            all.ports.insert(port, allow);
        }
        if let Some(d) = one.default {
            if all.default.as_ref().is_some_and(|a| *a != d) {
                return Err(clash(
                    "the default (chains without a destination port)".into(),
                ));
            }
            all.default = Some(d);
        }
    }
    Ok(all)
}

/// How a chain's connections arrive.
#[derive(Debug, Clone, PartialEq)]
enum Transport {
    Plaintext,
    /// TLS without a client certificate: no identity proved.
    TlsAnonymous,
    /// Mesh mTLS; `Some`: the identities the SAN matcher accepts.
    Mtls(Option<IdentityMatch>),
}

/// What one filter chain says about its port.
#[derive(Debug)]
struct Chain {
    field: String,
    transport: Transport,
    /// Its RBAC filters together; `None`: it has none that constrain.
    who: Option<Who>,
}

fn listener(l: &Listener, sds: Option<&SdsIdentity>) -> Result<InboundPolicy, Rejected> {
    let reject = |field: &str, message: String| Rejected::new("Listener", &l.name, field, message);
    let own_port = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
            _ => None,
        },
        _ => None,
    };
    let virtual_listener =
        l.use_original_dst.as_ref().is_some_and(|b| b.value) || l.name == "virtualInbound";
    let chains = super::listener::chains(l);
    // How each chain's connections arrive first: namespace rules need
    // the trust domain its TLS contexts accept.
    let mut arriving = Vec::new();
    for (field, c) in chains {
        let port = chain_port(c, &field).map_err(|(f, m)| reject(&f, m))?;
        let port = port.or(own_port.filter(|p| *p != 0 && !virtual_listener));
        if virtual_listener && port.is_some() && port == own_port {
            // Istio's loop guard; strait's inbound port is its own.
            continue;
        }
        let transport = transport(c, &field, sds).map_err(|(f, m)| reject(&f, m))?;
        arriving.push((field, c, port, transport));
    }
    let td = trust_domain(arriving.iter().map(|(f, _, _, t)| (f.as_str(), t)));
    let mut by_port: BTreeMap<Option<u16>, Vec<Chain>> = BTreeMap::new();
    let mut notes = rbac::Notes::default();
    let mut catch_all = Vec::new();
    for (field, c, port, transport) in arriving {
        let who = filters(c, &field, port, &td, &mut notes).map_err(|(f, m)| reject(&f, m))?;
        if port.is_none() {
            catch_all.push((field.clone(), c, transport.clone()));
        }
        by_port.entry(port).or_default().push(Chain {
            field,
            transport,
            who,
        });
    }
    // A catch-all chain's RBAC may name ports (`destination_port`): a
    // port named there and by no chain of its own gets the catch-all
    // chains' rule as it holds on that port.
    let named = std::mem::take(&mut notes.ports_named);
    for p in named {
        if by_port.contains_key(&Some(p)) {
            continue;
        }
        let mut again = rbac::Notes::default();
        for (field, c, transport) in &catch_all {
            let who =
                filters(c, field, Some(p), &td, &mut again).map_err(|(f, m)| reject(&f, m))?;
            by_port.entry(Some(p)).or_default().push(Chain {
                field: field.clone(),
                transport: transport.clone(),
                who,
            });
        }
    }
    let mut policy = InboundPolicy::default();
    let mut summary = Vec::new();
    for (port, chains) in by_port {
        let allow = port_allow(&chains).map_err(|(f, m)| reject(&f, m))?;
        summary.push(format!(
            "{}: {}",
            port.map_or("other ports".into(), |p| p.to_string()),
            describe(&allow)
        ));
        match port {
            Some(p) => {
                policy.ports.insert(p, allow);
            }
            None => policy.default = Some(allow),
        }
    }
    // One line per translation: what operators need to see the effective
    // policy (`/config_dump` shows the file's) and what was left out.
    info!(
        listener = %l.name,
        policy = %summary.join("; "),
        shadow_rules_ignored = notes.shadow_rules,
        log_rules_ignored = notes.log_rules,
        "xds: inbound listener translated into the inbound policy"
    );
    Ok(policy)
}

/// A rule as the config file would write it.
fn describe(allow: &Allow) -> String {
    match allow {
        Allow::Unauthenticated => "unauthenticated".into(),
        Allow::Authenticated => "authenticated".into(),
        Allow::Deny => "deny".into(),
        Allow::Identities(ids) => {
            let ids: Vec<String> = ids.iter().map(IdentityMatch::to_string).collect();
            format!("[{}]", ids.join(", "))
        }
    }
}

/// The trust domain the listener's mTLS chains accept clients from (their
/// SAN prefix `spiffe://<trust domain>/`, as istiod writes it): one for
/// the whole listener, since a plaintext chain's RBAC (PERMISSIVE) admits
/// the clients of the port's mTLS chains.
fn trust_domain<'a>(chains: impl Iterator<Item = (&'a str, &'a Transport)>) -> TrustDomain {
    let mut found: Option<(&str, String)> = None;
    for (field, t) in chains {
        let Transport::Mtls(san) = t else { continue };
        let Some(td) = TrustDomain::of_san(san.as_ref()) else {
            return TrustDomain::Unknown(format!("{field}'s TLS context has no such SAN matcher"));
        };
        match &found {
            Some((first, seen)) if *seen != td => {
                return TrustDomain::Unknown(format!(
                    "{first} and {field} accept different trust domains ('{seen}', '{td}')"
                ))
            }
            Some(_) => {}
            None => found = Some((field, td)),
        }
    }
    found.map_or(TrustDomain::NoMtls, |(_, td)| TrustDomain::Known(td))
}

/// The chain's destination port (`None`: every port); match conditions
/// that would tell connections apart by something other than the port
/// and protocol are refused.
fn chain_port(c: &FilterChain, field: &str) -> Result<Option<u16>, rbac::Fail> {
    let Some(m) = &c.filter_chain_match else {
        return Ok(None);
    };
    let at = |sub: &str| format!("{field}.filter_chain_match.{sub}");
    let by_source = "strait's inbound policy is per destination port, not per source";
    let refused = [
        (
            "server_names",
            !m.server_names.is_empty(),
            "strait does not authorize by SNI",
        ),
        (
            "source_prefix_ranges",
            !m.source_prefix_ranges.is_empty(),
            by_source,
        ),
        (
            "direct_source_prefix_ranges",
            !m.direct_source_prefix_ranges.is_empty(),
            by_source,
        ),
        ("source_ports", !m.source_ports.is_empty(), by_source),
        ("source_type", m.source_type != 0, by_source),
        (
            "address_suffix",
            !m.address_suffix.is_empty() || m.suffix_len.is_some(),
            "not supported",
        ),
    ];
    if let Some((f, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err((at(f), why.to_string()));
    }
    // Istio matches the pod's addresses with /0 ranges; a narrower range
    // would tell the pod's IPs apart, which strait does not.
    if let Some((i, r)) = m
        .prefix_ranges
        .iter()
        .enumerate()
        .find(|(_, r)| r.prefix_len.as_ref().is_some_and(|l| l.value != 0))
    {
        return Err((
            at(&format!("prefix_ranges[{i}]")),
            format!(
                "'{}/{}': strait's inbound policy is per destination port (only /0 ranges are accepted)",
                r.address_prefix,
                r.prefix_len.as_ref().map_or(0, |l| l.value)
            ),
        ));
    }
    // application_protocols only choose between an HTTP and a TCP chain
    // of the same port, which strait's detection does itself.
    match m.destination_port.as_ref().map(|p| p.value) {
        None => Ok(None),
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .map(Some)
            .ok_or((at("destination_port"), format!("{p} is not a port"))),
    }
}

/// How the chain's connections arrive, from its transport protocol and
/// socket.
fn transport(
    c: &FilterChain,
    field: &str,
    sds: Option<&SdsIdentity>,
) -> Result<Transport, rbac::Fail> {
    let protocol = c
        .filter_chain_match
        .as_ref()
        .map_or("", |m| m.transport_protocol.as_str());
    let socket = c
        .transport_socket
        .as_ref()
        .filter(|s| s.name != "envoy.transport_sockets.raw_buffer");
    match (protocol, socket) {
        ("" | "raw_buffer", None) => Ok(Transport::Plaintext),
        ("raw_buffer", Some(_)) => Err((
            format!("{field}.transport_socket"),
            "TLS on a chain matching raw_buffer".into(),
        )),
        ("tls", None) => Err((
            format!("{field}.filter_chain_match.transport_protocol"),
            "TLS chains need a DownstreamTlsContext: strait terminates mesh TLS itself and passes other TLS through untouched".into(),
        )),
        ("" | "tls", Some(s)) => {
            let field = format!("{field}.transport_socket");
            let any = match &s.config_type {
                Some(SocketConfig::TypedConfig(any)) if any.type_url == DOWNSTREAM_TLS => any,
                _ => {
                    return Err((
                        field,
                        format!("'{}': needs an {DOWNSTREAM_TLS}", s.name),
                    ))
                }
            };
            let ctx = DownstreamTlsContext::decode(any.value.as_slice()).map_err(|e| {
                (
                    format!("{field}.typed_config"),
                    format!("not a valid DownstreamTlsContext: {e}"),
                )
            })?;
            downstream_tls(&ctx, &format!("{field}.typed_config"), sds)
        }
        (other, _) => Err((
            format!("{field}.filter_chain_match.transport_protocol"),
            format!("'{other}' is not supported (raw_buffer or tls)"),
        )),
    }
}

/// A `DownstreamTlsContext` strait can honour: the workload identity's
/// own secrets, client certificates required (or TLS without them).
fn downstream_tls(
    ctx: &DownstreamTlsContext,
    field: &str,
    sds: Option<&SdsIdentity>,
) -> Result<Transport, rbac::Fail> {
    let Some(sds) = sds else {
        return Err((
            field.to_string(),
            "mTLS on inbound listeners needs the workload identity from xDS secrets (identity.sds in the config)".into(),
        ));
    };
    if ctx.require_sni.as_ref().is_some_and(|b| b.value) {
        return Err((
            format!("{field}.require_sni"),
            "strait's inbound listener does not require SNI".into(),
        ));
    }
    let field = format!("{field}.common_tls_context");
    let common = ctx
        .common_tls_context
        .as_ref()
        .ok_or_else(|| (field.clone(), "missing".to_string()))?;
    if !common.tls_certificates.is_empty() {
        return Err((
            format!("{field}.tls_certificates"),
            "inline certificates are not supported: the inbound listener serves the workload identity (tls_certificate_sds_secret_configs)".into(),
        ));
    }
    match common.tls_certificate_sds_secret_configs.as_slice() {
        [one] => {
            one_secret(one, &sds.certificate, "identity.sds.certificate").map_err(|m| {
                (
                    format!("{field}.tls_certificate_sds_secret_configs[0].name"),
                    m,
                )
            })?;
        }
        _ => {
            return Err((
                format!("{field}.tls_certificate_sds_secret_configs"),
                "needs exactly one secret: the workload certificate".into(),
            ))
        }
    }
    if !ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value)
    {
        return Ok(Transport::TlsAnonymous);
    }
    let san = match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            one_secret(s, &sds.trust_bundle, "identity.sds.trust_bundle").map_err(|m| {
                (
                    format!("{field}.validation_context_sds_secret_config.name"),
                    m,
                )
            })?;
            "*".to_string()
        }
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let f = format!("{field}.combined_validation_context");
            let s = combined
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| {
                    (
                        format!("{f}.validation_context_sds_secret_config"),
                        "missing: the trust bundle comes from SDS".to_string(),
                    )
                })?;
            one_secret(s, &sds.trust_bundle, "identity.sds.trust_bundle").map_err(|m| {
                (format!("{f}.validation_context_sds_secret_config.name"), m)
            })?;
            match &combined.default_validation_context {
                Some(d) => san_pattern(d)
                    .map_err(|(sub, m)| (format!("{f}.default_validation_context.{sub}"), m))?,
                None => "*".to_string(),
            }
        }
        _ => {
            return Err((
                format!("{field}.validation_context_type"),
                "client certificates are required but nothing validates them: needs validation_context_sds_secret_config or combined_validation_context (the trust bundle from SDS)".into(),
            ))
        }
    };
    Ok(Transport::Mtls(
        (san != "*").then(|| IdentityMatch::parse(&san)),
    ))
}

/// The chain's RBAC filters, in order (each must allow): who they admit.
fn filters(
    c: &FilterChain,
    field: &str,
    port: Option<u16>,
    td: &TrustDomain,
    notes: &mut rbac::Notes,
) -> Result<Option<Who>, rbac::Fail> {
    let mut who: Option<Who> = None;
    let mut narrow = |more: Option<Who>| {
        if let Some(more) = more {
            who = Some(match who.take() {
                None => more,
                Some(w) => w.intersect(more),
            });
        }
    };
    for (i, f) in c.filters.iter().enumerate() {
        let field = format!("{field}.filters[{i}]");
        let any = match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let type_url = any.map_or("", |a| a.type_url.as_str());
        let sub = |(s, m): rbac::Fail| {
            let at = format!("{field}.typed_config");
            (
                if s.is_empty() {
                    at
                } else {
                    format!("{at}.{s}")
                },
                m,
            )
        };
        if HARMLESS_NETWORK.contains(&f.name.as_str()) {
            continue;
        }
        if f.name == rbac::NETWORK_RBAC || type_url == rbac::NETWORK_RBAC_TYPE {
            let any = any.ok_or((format!("{field}.typed_config"), "missing".to_string()))?;
            narrow(rbac::network_filter(any, port, td, notes).map_err(sub)?);
        } else if f.name == HCM || type_url == HCM_TYPE {
            let any = any.ok_or((format!("{field}.typed_config"), "missing".to_string()))?;
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
                (
                    format!("{field}.typed_config"),
                    format!("not a valid HttpConnectionManager: {e}"),
                )
            })?;
            for allow in http_filters(&hcm, port, td, notes)
                .map_err(|(s, m)| (format!("{field}.typed_config.{s}"), m))?
            {
                narrow(allow);
            }
        } else if f.name == TCP_PROXY || type_url == TCP_PROXY_TYPE {
            // Where it goes is strait's job: the app at the port.
        } else {
            return Err((
                format!("{field}.name"),
                format!(
                    "'{}' is not supported on inbound listeners (network filters: RBAC, the HTTP connection manager, the TCP proxy, {})",
                    f.name,
                    HARMLESS_NETWORK.join(", ")
                ),
            ));
        }
    }
    Ok(who)
}

/// The HTTP RBAC filters' decisions, in order; any other filter that
/// would act on requests is refused unless optional.
fn http_filters(
    hcm: &HttpConnectionManager,
    port: Option<u16>,
    td: &TrustDomain,
    notes: &mut rbac::Notes,
) -> Result<Vec<Option<Who>>, rbac::Fail> {
    if let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier {
        let per_route = rc
            .virtual_hosts
            .iter()
            .flat_map(|h| {
                h.typed_per_filter_config.keys().chain(
                    h.routes
                        .iter()
                        .flat_map(|r| r.typed_per_filter_config.keys()),
                )
            })
            .chain(rc.typed_per_filter_config.keys())
            .find(|k| k.as_str() == rbac::HTTP_RBAC);
        if per_route.is_some() {
            return Err((
                "route_config".into(),
                "per-route RBAC (typed_per_filter_config) is not supported: strait authorizes whole ports".into(),
            ));
        }
    }
    let mut out = Vec::new();
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let type_url = any.map_or("", |a| a.type_url.as_str());
        let at = format!("http_filters[{i}]");
        if f.disabled || HARMLESS_HTTP.contains(&f.name.as_str()) || type_url == ROUTER_TYPE {
            continue;
        }
        if f.name == rbac::HTTP_RBAC || type_url == rbac::HTTP_RBAC_TYPE {
            let any = any.ok_or((format!("{at}.typed_config"), "missing".to_string()))?;
            let who = rbac::http_filter(any, port, td, notes).map_err(|(s, m)| {
                (
                    if s.is_empty() {
                        format!("{at}.typed_config")
                    } else {
                        format!("{at}.typed_config.{s}")
                    },
                    m,
                )
            })?;
            out.push(who);
        } else if f.is_optional {
            info!(filter = %f.name, "xds: optional inbound HTTP filter skipped: strait does not implement it");
        } else {
            return Err((
                at,
                format!(
                    "'{}' is not supported on inbound listeners (mark it is_optional to have it skipped)",
                    f.name
                ),
            ));
        }
    }
    Ok(out)
}

/// One port's rule from all its chains.
fn port_allow(chains: &[Chain]) -> Result<Allow, rbac::Fail> {
    let Some(first) = chains.first() else {
        return Ok(Allow::Unauthenticated);
    };
    if let Some(c) = chains.iter().find(|c| c.who != first.who) {
        return Err((
            c.field.clone(),
            format!(
                "its RBAC admits other clients than {}'s: strait authorizes a port, not each protocol on it",
                first.field
            ),
        ));
    }
    let mtls: Vec<&Chain> = chains
        .iter()
        .filter(|c| matches!(c.transport, Transport::Mtls(_)))
        .collect();
    let plaintext = chains.iter().any(|c| c.transport == Transport::Plaintext);
    if !plaintext && mtls.is_empty() {
        // TLS without client certificates is the only way in: strait
        // cannot serve it (its inbound TLS is mesh mTLS).
        return Err((
            format!(
                "{}.transport_socket.typed_config.require_client_certificate",
                first.field
            ),
            "TLS without client certificates as a port's only way in is not supported (strait's inbound TLS is mesh mTLS)".into(),
        ));
    }
    let san = match mtls.first().map(|c| &c.transport) {
        Some(Transport::Mtls(san)) => san.clone(),
        _ => None,
    };
    if let Some(c) = mtls
        .iter()
        .find(|c| c.transport != Transport::Mtls(san.clone()))
    {
        return Err((
            format!("{}.transport_socket", c.field),
            format!(
                "its SAN matcher differs from {}'s: strait authorizes a port, not each protocol on it",
                mtls[0].field
            ),
        ));
    }
    // Plaintext admitted (PERMISSIVE or DISABLE) unless RBAC says
    // otherwise; STRICT admits only proved identities.
    let who = first.who.clone().unwrap_or(if plaintext {
        Who::Anyone
    } else {
        Who::Authenticated
    });
    let who = if mtls.is_empty() {
        // DISABLE: no client proves an identity.
        match who {
            Who::Anyone => Who::Anyone,
            _ => Who::Nobody,
        }
    } else if !plaintext {
        who.intersect(Who::Authenticated)
    } else {
        who
    };
    // The SAN matcher narrows mTLS clients; plaintext ones (PERMISSIVE
    // without RBAC) prove nothing for it to narrow.
    let who = match san {
        Some(san) if who != Who::Anyone => who.intersect(Who::Ids(vec![san])),
        _ => who,
    };
    Ok(who.allow())
}
