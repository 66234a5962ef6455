//! `Listener` resources: strait binds its own listeners, so an xDS
//! listener contributes its HTTP routes (RDS by name, or inline) to the
//! outbound routing table. Its HTTP filters are checked here: the router
//! is required, known-harmless filters are ignored with a log line, an
//! unknown filter is refused unless it is marked `is_optional`.

use super::Rejected;
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;
use tracing::debug;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
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

/// What a listener asks of the routing table.
#[derive(Debug, Default)]
pub struct Routes {
    /// RDS names to subscribe to.
    pub rds: Vec<String>,
    /// Route configurations given inline.
    pub inline: Vec<RouteConfiguration>,
}

pub fn listener(l: &Listener) -> Result<Routes, Rejected> {
    let mut routes = Routes::default();
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), c))
        .chain(
            l.default_filter_chain
                .iter()
                .map(|c| ("default_filter_chain".to_string(), c)),
        );
    for (field, chain) in chains {
        chain_routes(&l.name, &field, chain, &mut routes)?;
    }
    Ok(routes)
}

fn chain_routes(
    listener: &str,
    field: &str,
    chain: &FilterChain,
    routes: &mut Routes,
) -> Result<(), Rejected> {
    for (f, net) in chain.filters.iter().enumerate() {
        let field = format!("{field}.filters[{f}]");
        let reject = |sub: &str, message: String| {
            Rejected::new("Listener", listener, &format!("{field}{sub}"), message)
        };
        let any = match &net.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let is_hcm = net.name == HCM || any.is_some_and(|a| a.type_url == HCM_TYPE);
        if !is_hcm {
            // TCP proxying and the like: strait forwards unrouted TCP to
            // its original destination already.
            debug!(listener, filter = %net.name, "xds: network filter left to strait's own TCP handling");
            continue;
        }
        let Some(any) = any else {
            return Err(reject(
                ".typed_config",
                "the HTTP connection manager needs a typed_config".into(),
            ));
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
            reject(
                ".typed_config",
                format!("not a valid HttpConnectionManager: {e}"),
            )
        })?;
        http_filters(&hcm).map_err(|(sub, m)| reject(&format!(".typed_config.{sub}"), m))?;
        match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
                if !routes.rds.contains(&rds.route_config_name) {
                    routes.rds.push(rds.route_config_name);
                }
            }
            Some(RouteSpecifier::RouteConfig(rc)) => routes.inline.push(rc),
            _ => {
                return Err(reject(
                    ".typed_config.route_specifier",
                    "needs rds (with a route_config_name) or an inline route_config; scoped routes are not supported".into(),
                ))
            }
        }
    }
    Ok(())
}

fn http_filters(hcm: &HttpConnectionManager) -> Result<(), (String, String)> {
    let mut router = false;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let type_url = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            _ => "",
        };
        if f.name == ROUTER || type_url == ROUTER_TYPE {
            router = true;
        } else if f.disabled {
            continue;
        } else if HARMLESS.contains(&f.name.as_str()) {
            tracing::info!(filter = %f.name, "xds: HTTP filter ignored: it changes nothing strait routes");
        } else if f.is_optional {
            tracing::info!(filter = %f.name, "xds: optional HTTP filter skipped: strait does not implement it");
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
    Ok(())
}
