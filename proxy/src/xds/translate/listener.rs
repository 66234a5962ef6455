//! `Listener` resources onto strait's routing. strait binds its own
//! listeners, so an xDS listener is never bound: what it contributes is
//! which traffic goes where, keyed the way strait routes outbound traffic,
//! by original destination port (as Istio's sidecar works: a virtual
//! `use_original_dst` listener hands each connection to the listener or
//! filter chain of its destination port).
//!
//! - The port a filter chain serves is its `filter_chain_match`'s
//!   `destination_port`, else its listener's port; the chains of a
//!   `use_original_dst` listener (or one without a port) that name no
//!   port are the default for every port.
//! - An `HttpConnectionManager` chain gives that port its virtual hosts
//!   (RDS by name, or inline); a `TcpProxy` chain gives the port's
//!   non-HTTP traffic its cluster or weighted split (a port route), or,
//!   as a default, the outbound default cluster. A `TcpProxy` chain with
//!   `server_names` routes the TLS connections asking for those names
//!   (server-name routes of its port), before the port's own route.
//! - Match conditions strait can honour are the destination port, HTTP
//!   application protocols (strait detects HTTP itself), `raw_buffer` or
//!   `tls` transport (TCP chains), server names (TCP chains) and
//!   catch-all prefix ranges. Anything else (source matches, specific
//!   destination IPs, downstream TLS) is refused with its field rather
//!   than routed wrongly.
//! - Inbound listeners (`traffic_direction: INBOUND`, Istio's
//!   `virtualInbound`) give no routes: strait's own inbound listener
//!   forwards to the application; their mTLS mode and RBAC become the
//!   inbound policy (`inbound.rs`).
//!
//! HTTP filters are checked here too: the router is required, the fault
//! filter is translated, the local rate limit filter is accepted for its
//! routes to configure, known-harmless filters are ignored with a log
//! line, an unknown filter is refused unless it is marked `is_optional`.

use super::fault::{self, FAULT};
use super::rate_limit::{self, LOCAL_RATE_LIMIT, LOCAL_RATE_LIMIT_TYPE};
use super::Rejected;
use envoy_types::pb::envoy::config::core::v3::{address, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use prost::Message;
use strait_config::file::FileFault;
use tracing::info;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "envoy.filters.http.router";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// Filters that only observe (stats, metadata exchange) or that browsers
/// need and strait's routes do not change (CORS): safe to leave out.
const HARMLESS: &[&str] = &[
    "istio.metadata_exchange",
    "istio.stats",
    "istio.alpn",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.http.cors",
];

/// Network filters that only observe, beside the HCM or TCP proxy.
const HARMLESS_NETWORK: &[&str] = &[
    "istio.metadata_exchange",
    "istio.stats",
    "envoy.filters.network.metadata_exchange",
];

/// The application protocols strait's own detection tells apart: a
/// chain matching them takes the port's HTTP traffic.
const HTTP_ALPN: &[&str] = &["http/1.0", "http/1.1", "h2c", "h2"];

/// HTTP routes for one port (or every port, `None`).
#[derive(Debug)]
pub struct HttpChain {
    pub port: Option<u16>,
    pub routes: HttpRoutes,
    /// The HCM's fault filter config: the default of its routes.
    pub fault: Option<FileFault>,
    /// Where it was found, for errors: `Listener 'x': filter_chains[1]...`.
    pub listener: String,
    pub field: String,
}

#[derive(Debug)]
pub enum HttpRoutes {
    Rds(String),
    Inline(Box<RouteConfiguration>),
}

/// Where one port's (or every port's, or one destination address's)
/// non-HTTP traffic goes.
#[derive(Debug)]
pub struct TcpChain {
    pub port: Option<u16>,
    /// A listener for one IP: this destination address only.
    pub destination: Option<std::net::SocketAddr>,
    /// TLS server names (lowercase, exact or `*.suffix`) this chain takes;
    /// empty: the port's fallback.
    pub server_names: Vec<String>,
    /// (cluster, weight): one, or a weighted split.
    pub clusters: Vec<(String, u32)>,
    pub listener: String,
    pub field: String,
}

/// What one listener asks of the routing table.
#[derive(Debug, Default)]
pub struct Routes {
    pub http: Vec<HttpChain>,
    pub tcp: Vec<TcpChain>,
}

pub fn listener(l: &Listener) -> Result<Routes, Rejected> {
    let mut routes = Routes::default();
    if l.traffic_direction == TrafficDirection::Inbound as i32 || l.name == "virtualInbound" {
        // No routes: its mTLS mode and RBAC become the inbound policy
        // (inbound.rs); strait's inbound listener forwards to the app.
        return Ok(routes);
    }
    let reject = |field: &str, message: String| Rejected::new("Listener", &l.name, field, message);
    let virtual_listener = l.use_original_dst.as_ref().is_some_and(|b| b.value);
    let socket = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => Some(s),
        Some(_) => {
            return Err(reject(
                "address",
                "only socket addresses are supported".into(),
            ))
        }
        None => None,
    };
    let own_port = match socket.and_then(|s| s.port_specifier.as_ref()) {
        Some(
            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p),
        ) => u16::try_from(*p).map_err(|_| {
            reject(
                "address.socket_address.port_value",
                format!("{p} is not a port"),
            )
        })?,
        _ => 0,
    };
    // Istio gives a TCP service its own `<service IP>:<port>` listener:
    // its TCP proxy routes that destination address only.
    let mut ip = None;
    if let Some(s) = socket {
        let any = s.address.is_empty() || s.address == "0.0.0.0" || s.address == "::";
        if !any && !virtual_listener {
            let parsed = s.address.parse::<std::net::IpAddr>().map_err(|_| {
                reject(
                    "address.socket_address.address",
                    format!("'{}' is not an IP address", s.address),
                )
            })?;
            if own_port == 0 {
                return Err(reject(
                    "address.socket_address.port_value",
                    "a listener for one IP needs its port".into(),
                ));
            }
            ip = Some(parsed);
        }
    }
    // Traffic reaches a use_original_dst listener for every port; any
    // other listener sees its own port only (if it has one).
    let listener_port = (!virtual_listener && own_port != 0).then_some(own_port);

    for (field, chain) in chains(l) {
        if chain.transport_socket.is_some() {
            return Err(reject(
                &format!("{field}.transport_socket"),
                "downstream TLS on outbound listeners is not supported".into(),
            ));
        }
        let Some(ChainMatch {
            port,
            http_only,
            server_names,
        }) = chain_port(chain, listener_port)
            .map_err(|(sub, m)| reject(&format!("{field}.filter_chain_match.{sub}"), m))?
        else {
            continue;
        };
        if ip.is_some() && !server_names.is_empty() {
            return Err(reject(
                &format!("{field}.filter_chain_match.server_names"),
                "server names on a listener for one IP are not supported (strait scopes server-name routes by port; Istio's TLS listeners are 0.0.0.0:<port>)".into(),
            ));
        }
        let at = Scope {
            ip,
            port,
            http_only,
            server_names,
        };
        chain_routes(&l.name, &field, chain, at, &mut routes)?;
    }
    Ok(routes)
}

type Fail = (String, String);

/// What a chain's match leaves strait to match on.
struct ChainMatch {
    /// `None`: every port.
    port: Option<u16>,
    /// It matches HTTP application protocols only.
    http_only: bool,
    /// Lowercase TLS server names; empty: any (or no) name.
    server_names: Vec<String>,
}

/// The port a chain serves, whether it matches HTTP only and the server
/// names it takes; `Ok(None)` for a chain that can never match.
fn chain_port(chain: &FilterChain, listener_port: Option<u16>) -> Result<Option<ChainMatch>, Fail> {
    let Some(m) = &chain.filter_chain_match else {
        return Ok(Some(ChainMatch {
            port: listener_port,
            http_only: false,
            server_names: Vec::new(),
        }));
    };
    let port = match m.destination_port.as_ref().map(|p| p.value) {
        None => listener_port,
        Some(p) => {
            let p = u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(("destination_port".to_string(), format!("{p} is not a port")))?;
            if listener_port.is_some_and(|l| l != p) {
                // Only the listener's own port reaches it.
                return Ok(None);
            }
            Some(p)
        }
    };
    if let Some((i, r)) = m
        .prefix_ranges
        .iter()
        .enumerate()
        .find(|(_, r)| r.prefix_len.as_ref().is_some_and(|l| l.value != 0))
    {
        return Err((
            format!("prefix_ranges[{i}]"),
            format!(
                "'{}/{}': strait routes by destination port, not IP (only /0 ranges are accepted)",
                r.address_prefix,
                r.prefix_len.as_ref().map_or(0, |l| l.value)
            ),
        ));
    }
    let refused = [
        (
            "source_prefix_ranges",
            !m.source_prefix_ranges.is_empty(),
            "strait does not route by source",
        ),
        (
            "direct_source_prefix_ranges",
            !m.direct_source_prefix_ranges.is_empty(),
            "strait does not route by source",
        ),
        (
            "source_ports",
            !m.source_ports.is_empty(),
            "strait does not route by source",
        ),
        (
            "source_type",
            m.source_type != 0,
            "strait does not route by source",
        ),
        (
            "address_suffix",
            !m.address_suffix.is_empty() || m.suffix_len.is_some(),
            "not supported",
        ),
    ];
    if let Some((field, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err((field.to_string(), why.to_string()));
    }
    let http_only = !m.application_protocols.is_empty();
    if let Some((i, p)) = m
        .application_protocols
        .iter()
        .enumerate()
        .find(|(_, p)| !HTTP_ALPN.contains(&p.as_str()))
    {
        return Err((
            format!("application_protocols[{i}]"),
            format!(
                "'{p}': strait tells only HTTP ({}) from other traffic",
                HTTP_ALPN.join(", ")
            ),
        ));
    }
    match m.transport_protocol.as_str() {
        "" => {}
        "raw_buffer" if m.server_names.is_empty() => {}
        // TLS the app originates passes through strait as opaque bytes:
        // only a TCP proxy can take it.
        "tls" if !http_only => {}
        other => {
            return Err((
                "transport_protocol".into(),
                format!("'{other}' is not supported here (raw_buffer; tls for TCP proxies and with server_names)"),
            ))
        }
    }
    let mut server_names = Vec::with_capacity(m.server_names.len());
    for (i, name) in m.server_names.iter().enumerate() {
        let name = strait_config::validate::server_name(name)
            .map_err(|message| (format!("server_names[{i}]"), message))?;
        server_names.push(name);
    }
    if http_only && !server_names.is_empty() {
        return Err((
            "server_names".into(),
            "server names with HTTP application protocols: strait reads the server name of TLS it passes through, which its HTTP routes never see".into(),
        ));
    }
    Ok(Some(ChainMatch {
        port,
        http_only,
        server_names,
    }))
}

/// The traffic one filter chain takes.
#[derive(Debug, Clone)]
struct Scope {
    /// One destination IP (with `port`); `None`: any.
    ip: Option<std::net::IpAddr>,
    port: Option<u16>,
    /// The chain matches HTTP application protocols only.
    http_only: bool,
    /// TLS server names (TCP proxies only); empty: any.
    server_names: Vec<String>,
}

fn chain_routes(
    listener: &str,
    field: &str,
    chain: &FilterChain,
    Scope {
        ip,
        port,
        http_only,
        server_names,
    }: Scope,
    routes: &mut Routes,
) -> Result<(), Rejected> {
    let mut terminal = false;
    for (f, net) in chain.filters.iter().enumerate() {
        let field = format!("{field}.filters[{f}]");
        let reject = |sub: &str, message: String| {
            Rejected::new("Listener", listener, &format!("{field}{sub}"), message)
        };
        let any = match &net.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let is = |name: &str, type_url: &str| {
            net.name == name || any.is_some_and(|a| a.type_url == type_url)
        };
        if HARMLESS_NETWORK.contains(&net.name.as_str()) {
            info!(listener, filter = %net.name, "xds: network filter ignored: it changes nothing strait routes");
            continue;
        }
        if terminal {
            return Err(reject(
                "",
                format!("'{}' after the chain's terminal filter", net.name),
            ));
        }
        let Some(any) = any.filter(|_| is(HCM, HCM_TYPE) || is(TCP_PROXY, TCP_PROXY_TYPE)) else {
            return Err(reject(
                ".name",
                format!(
                    "'{}' is not supported (network filters: the HTTP connection manager, the TCP proxy, {})",
                    net.name,
                    HARMLESS_NETWORK.join(", ")
                ),
            ));
        };
        terminal = true;
        if is(TCP_PROXY, TCP_PROXY_TYPE) {
            if http_only {
                return Err(reject(
                    "",
                    "a TCP proxy on a chain matching HTTP application protocols".into(),
                ));
            }
            let tcp = TcpProxy::decode(any.value.as_slice())
                .map_err(|e| reject(".typed_config", format!("not a valid TcpProxy: {e}")))?;
            let clusters = tcp_clusters(&tcp)
                .map_err(|(sub, m)| reject(&format!(".typed_config.{sub}"), m))?;
            routes.tcp.push(TcpChain {
                destination: ip.zip(port).map(std::net::SocketAddr::from),
                port,
                server_names: server_names.clone(),
                clusters,
                listener: listener.to_string(),
                field,
            });
            continue;
        }
        if !server_names.is_empty() {
            return Err(reject(
                "",
                "an HTTP connection manager on a chain matching server_names: strait passes TLS through, so its HTTP routes never see it".into(),
            ));
        }
        if ip.is_some() {
            return Err(reject(
                "",
                "HTTP routes for one destination IP are not supported (strait scopes HTTP routes by port; Istio's HTTP listeners are 0.0.0.0:<port>)".into(),
            ));
        }
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
            reject(
                ".typed_config",
                format!("not a valid HttpConnectionManager: {e}"),
            )
        })?;
        let fault =
            http_filters(&hcm).map_err(|(sub, m)| reject(&format!(".typed_config.{sub}"), m))?;
        let http_routes = match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
                HttpRoutes::Rds(rds.route_config_name)
            }
            Some(RouteSpecifier::RouteConfig(rc)) => HttpRoutes::Inline(Box::new(rc)),
            _ => {
                return Err(reject(
                    ".typed_config.route_specifier",
                    "needs rds (with a route_config_name) or an inline route_config; scoped routes are not supported".into(),
                ))
            }
        };
        routes.http.push(HttpChain {
            port,
            routes: http_routes,
            fault,
            listener: listener.to_string(),
            field,
        });
    }
    Ok(())
}

/// A TCP proxy's clusters, as (cluster, weight): its one `cluster`, or
/// its `weighted_clusters` (those of weight 0 take nothing and are left
/// out; one left is that cluster alone).
fn tcp_clusters(tcp: &TcpProxy) -> Result<Vec<(String, u32)>, Fail> {
    if tcp.tunneling_config.is_some() {
        return Err((
            "tunneling_config".into(),
            "tunneling is not supported".into(),
        ));
    }
    match &tcp.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => Ok(vec![(c.clone(), 1)]),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut clusters = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    return Err((
                        format!("weighted_clusters.clusters[{i}].name"),
                        "a cluster is required".into(),
                    ));
                }
                if c.weight > 10_000 {
                    return Err((
                        format!("weighted_clusters.clusters[{i}].weight"),
                        format!("{} is over 10000", c.weight),
                    ));
                }
                if c.weight > 0 {
                    clusters.push((c.name.clone(), c.weight));
                }
            }
            match clusters.len() {
                0 => Err(("weighted_clusters".into(), "no cluster has a weight".into())),
                1 => Ok(vec![(clusters[0].0.clone(), 1)]),
                _ => Ok(clusters),
            }
        }
        _ => Err(("cluster".into(), "a cluster is required".into())),
    }
}

/// Check the HCM's HTTP filters; returns the fault filter's config.
fn http_filters(hcm: &HttpConnectionManager) -> Result<Option<FileFault>, Fail> {
    let mut router = false;
    let mut fault = None;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let type_url = any.map_or("", |a| a.type_url.as_str());
        if f.name == ROUTER || type_url == ROUTER_TYPE {
            router = true;
        } else if f.disabled {
            continue;
        } else if f.name == FAULT || type_url == fault::FAULT_TYPE {
            // Routes may override it (typed_per_filter_config).
            if let Some(any) = any {
                fault = fault::fault(any)
                    .map_err(|(sub, m)| (format!("http_filters[{i}].typed_config.{sub}"), m))?;
            }
        } else if f.name == LOCAL_RATE_LIMIT || type_url == LOCAL_RATE_LIMIT_TYPE {
            // Routes give themselves a bucket (typed_per_filter_config).
            rate_limit::listener_filter(any)
                .map_err(|(sub, m)| (format!("http_filters[{i}].typed_config.{sub}"), m))?;
        } else if HARMLESS.contains(&f.name.as_str()) {
            info!(filter = %f.name, "xds: HTTP filter ignored: it changes nothing strait routes");
        } else if f.is_optional {
            info!(filter = %f.name, "xds: optional HTTP filter skipped: strait does not implement it");
        } else {
            return Err((
                format!("http_filters[{i}]"),
                format!(
                    "'{}' is not supported (mark it is_optional to have it skipped)",
                    f.name
                ),
            ));
        }
    }
    if !router {
        return Err((
            "http_filters".into(),
            format!("the router filter ({ROUTER}) is required"),
        ));
    }
    Ok(fault)
}

/// A listener's filter chains with the field each is at, the default
/// chain last.
pub(super) fn chains(l: &Listener) -> impl Iterator<Item = (String, &FilterChain)> {
    l.filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            l.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_string(), c)),
        )
}
