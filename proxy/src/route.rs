//! The routing snapshot built from one validated config: which cluster an
//! authority or destination port goes to; the clusters themselves come
//! from the [`crate::registry`] and outlive the snapshot.
//! The data path reads it through an `ArcSwap`, so a reload swaps a whole
//! snapshot at once and in-flight requests finish on the one they began on.

use crate::http::vhost::VirtualHosts;
use crate::registry::Registry;
pub use crate::registry::{ClusterState, Resolved};
use std::collections::HashMap;
use std::sync::Arc;
use strait_config::{Config, RouteMatch};

/// Clusters by name, as the registry hands them out.
pub type Clusters = HashMap<Arc<str>, Arc<ClusterState>>;

/// Where a route sends traffic, with the `authority` and `route` labels
/// its requests carry.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub authority: Arc<str>,
    /// The L7 route's name; empty for `routes` entries and default clusters.
    pub route: Arc<str>,
    pub cluster: Arc<ClusterState>,
}

/// Everything the data path needs from one config.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    clusters: Vec<Arc<ClusterState>>,
    /// L7 routes, consulted before `by_authority`.
    pub vhosts: VirtualHosts,
    /// L7 routes of one original destination port, consulted first.
    port_vhosts: HashMap<u16, VirtualHosts>,
    by_authority: HashMap<String, RouteTarget>,
    by_port: HashMap<u16, RouteTarget>,
    by_destination: HashMap<std::net::SocketAddr, RouteTarget>,
    pub outbound_default: Option<RouteTarget>,
    pub inbound_default: Option<RouteTarget>,
    /// The `authority` label of traffic to an original destination.
    pub no_authority: Arc<str>,
}

impl Snapshot {
    /// A snapshot of `config` with its own registry and no DNS names
    /// resolved (static endpoints only): for tests and tools.
    pub fn new(config: Config) -> Snapshot {
        let registry = Registry::new(crate::metrics::Metrics::new());
        let clusters = registry.update(&config, &Resolved::new());
        Snapshot::build(config, &clusters)
    }

    /// A snapshot of `config` routing to `clusters` (from the registry,
    /// already brought up to date with this config).
    pub fn build(config: Config, clusters: &Clusters) -> Snapshot {
        // Validation guarantees every named cluster exists.
        let target = |authority: &str, cluster: &str| {
            clusters.get(cluster).map(|c| RouteTarget {
                authority: authority.into(),
                route: Arc::from(""),
                cluster: c.clone(),
            })
        };
        let mut by_authority = HashMap::new();
        let mut by_port = HashMap::new();
        let mut by_destination = HashMap::new();
        for route in &config.routes {
            match &route.matches {
                RouteMatch::Authority(a) => {
                    if let Some(t) = target(a, &route.cluster) {
                        by_authority.insert(a.clone(), t);
                    }
                }
                RouteMatch::Port(p) => {
                    if let Some(t) = target(&route.cluster, &route.cluster) {
                        by_port.insert(*p, t);
                    }
                }
                RouteMatch::Destination(addr) => {
                    if let Some(t) = target(&route.cluster, &route.cluster) {
                        by_destination.insert(*addr, t);
                    }
                }
            }
        }
        let outbound_default = config
            .outbound
            .default_cluster
            .as_deref()
            .and_then(|c| target(c, c));
        let inbound_default = config
            .inbound
            .default_cluster
            .as_deref()
            .and_then(|c| target(c, c));
        let vhosts = VirtualHosts::compile(&config.virtual_hosts, clusters);
        let port_vhosts = VirtualHosts::compile_by_port(&config.virtual_hosts, clusters);
        let cluster_list = clusters.values().cloned().collect();
        Snapshot {
            clusters: cluster_list,
            vhosts,
            port_vhosts,
            by_authority,
            by_port,
            by_destination,
            outbound_default,
            inbound_default,
            no_authority: "".into(),
            config: Arc::new(config),
        }
    }

    /// The route for an HTTP authority (any case, port ignored).
    pub fn by_authority(&self, authority: &str) -> Option<&RouteTarget> {
        if self.by_authority.is_empty() {
            return None;
        }
        let host = strip_port(authority);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_authority.get(&host.to_ascii_lowercase())
        } else {
            self.by_authority.get(host)
        }
    }

    /// Every cluster of this snapshot.
    pub fn clusters(&self) -> &[Arc<ClusterState>] {
        &self.clusters
    }

    /// The virtual hosts scoped to traffic for destination `port`.
    pub fn port_vhosts(&self, port: u16) -> Option<&VirtualHosts> {
        if self.port_vhosts.is_empty() {
            return None;
        }
        self.port_vhosts.get(&port)
    }

    /// The route for a destination port.
    pub fn by_port(&self, port: u16) -> Option<&RouteTarget> {
        self.by_port.get(&port)
    }

    /// The route for one original destination address.
    pub fn by_destination(&self, addr: std::net::SocketAddr) -> Option<&RouteTarget> {
        if self.by_destination.is_empty() {
            return None;
        }
        self.by_destination.get(&addr)
    }

    /// The route for a connection's original destination: its address,
    /// else its port.
    pub fn by_orig_dst(&self, addr: std::net::SocketAddr) -> Option<&RouteTarget> {
        self.by_destination(addr)
            .or_else(|| self.by_port(addr.port()))
    }

    /// Whether any route is configured (a miss is then a 404).
    pub fn has_routes(&self) -> bool {
        !self.by_authority.is_empty() || !self.by_port.is_empty() || !self.by_destination.is_empty()
    }
}

/// `host:port` → `host`, leaving bracketed IPv6 literals whole.
pub fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') => {
            host
        }
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_match_ignores_case_and_port() {
        let config = Config::from_yaml(
            "clusters:\n  - name: web\n    endpoints: [{address: '127.0.0.1:1'}]\nroutes:\n  - authority: web.ns.svc\n    cluster: web\n  - port: 6379\n    cluster: web\n",
        )
        .expect("valid");
        let snap = Snapshot::new(config);
        assert!(snap.by_authority("Web.NS.svc:8080").is_some());
        assert!(snap.by_authority("web.ns.svc").is_some());
        assert!(snap.by_authority("api").is_none());
        assert_eq!(snap.by_port(6379).map(|t| &*t.cluster.name), Some("web"));
    }

    #[test]
    fn destination_routes_and_port_scoped_hosts_only_see_their_traffic() {
        let config = Config::from_yaml(
            "clusters:\n  - {name: db, endpoints: [{address: '127.0.0.1:1'}]}\n  - {name: any, endpoints: [{address: '127.0.0.1:2'}]}\nroutes:\n  - {destination: '10.96.0.7:5432', cluster: db}\n  - {port: 5432, cluster: any}\nvirtual_hosts:\n  - {name: on-80, port: 80, domains: ['*'], routes: [{cluster: db}]}\n",
        )
        .expect("valid");
        let snap = Snapshot::new(config);
        let to = |ip: [u8; 4], port| std::net::SocketAddr::from((ip, port));
        let name = |t: Option<&RouteTarget>| t.map(|t| t.cluster.name.to_string());
        assert_eq!(
            name(snap.by_orig_dst(to([10, 96, 0, 7], 5432))),
            Some("db".into())
        );
        assert_eq!(
            name(snap.by_orig_dst(to([10, 96, 0, 8], 5432))),
            Some("any".into())
        );
        assert!(snap.port_vhosts(80).is_some_and(|v| !v.is_empty()));
        assert!(snap.port_vhosts(81).is_none());
        assert!(snap.vhosts.is_empty(), "the port's host is not everyone's");
        let bad = Config::from_yaml("routes:\n  - {destination: 'db:5432', cluster: db}\n");
        assert!(bad.is_err_and(|e| e.to_string().contains("routes[0].destination")));
    }
}
