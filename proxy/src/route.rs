//! The routing snapshot built from one validated config: which cluster an
//! authority or destination port goes to; the clusters themselves come
//! from the [`crate::registry`] and outlive the snapshot.
//! The data path reads it through an `ArcSwap`, so a reload swaps a whole
//! snapshot at once and in-flight requests finish on the one they began on.
//! Simple routes may split across clusters ([`Targets`]); a TLS
//! connection's server name (SNI) is looked up in [`ServerNames`].

use crate::balance::WeightedRoundRobin;
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
    by_port: HashMap<u16, Targets>,
    by_destination: HashMap<std::net::SocketAddr, Targets>,
    by_server_name: ServerNames,
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
        let targets = |route: &strait_config::Route| {
            let split: Vec<(RouteTarget, u32)> = route
                .split
                .iter()
                .filter_map(|(c, w)| Some((target(c, c)?, *w)))
                .collect();
            Some(Targets::new(target(&route.cluster, &route.cluster)?, split))
        };
        let mut by_authority = HashMap::new();
        let mut by_port = HashMap::new();
        let mut by_destination = HashMap::new();
        let mut by_server_name = ServerNames::default();
        for route in &config.routes {
            match &route.matches {
                RouteMatch::Authority(a) => {
                    if let Some(t) = target(a, &route.cluster) {
                        by_authority.insert(a.clone(), t);
                    }
                }
                RouteMatch::Port(p) => {
                    if let Some(t) = targets(route) {
                        by_port.insert(*p, t);
                    }
                }
                RouteMatch::Destination(addr) => {
                    if let Some(t) = targets(route) {
                        by_destination.insert(*addr, t);
                    }
                }
                RouteMatch::ServerName { name, port } => {
                    if let Some(t) = targets(route) {
                        by_server_name
                            .0
                            .entry(*port)
                            .or_default()
                            .insert(name.as_str().into(), t);
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
            by_server_name,
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

    /// The route for a destination port (a split's pick).
    pub fn by_port(&self, port: u16) -> Option<&RouteTarget> {
        self.port_targets(port).map(Targets::pick)
    }

    /// The clusters of a destination port's route, unpicked.
    pub fn port_targets(&self, port: u16) -> Option<&Targets> {
        self.by_port.get(&port)
    }

    /// The clusters of one original destination address's route, unpicked.
    pub fn destination_targets(&self, addr: std::net::SocketAddr) -> Option<&Targets> {
        if self.by_destination.is_empty() {
            return None;
        }
        self.by_destination.get(&addr)
    }

    /// The cluster a destination port's route names, without picking
    /// from a split (its first cluster): what declares the port's protocol.
    pub fn port_cluster(&self, port: u16) -> Option<&RouteTarget> {
        self.by_port.get(&port).map(Targets::first)
    }

    /// The route for one original destination address (a split's pick).
    pub fn by_destination(&self, addr: std::net::SocketAddr) -> Option<&RouteTarget> {
        self.destination_targets(addr).map(Targets::pick)
    }

    /// The route for a connection's original destination: its address,
    /// else its port.
    pub fn by_orig_dst(&self, addr: std::net::SocketAddr) -> Option<&RouteTarget> {
        self.by_destination(addr)
            .or_else(|| self.by_port(addr.port()))
    }

    /// Whether any route matches TLS server names: if not, an outbound
    /// TLS connection is forwarded without reading its ClientHello.
    pub fn routes_server_names(&self) -> bool {
        !self.by_server_name.0.is_empty()
    }

    /// The route for a TLS server name (lowercase) on a connection to
    /// original destination `addr` (a split's pick). As Envoy picks
    /// filter chains, the destination comes first: a port with routes of
    /// its own (server names, or a port or address route) sees only its
    /// own names; the names of every port serve the other ports.
    pub fn by_server_name(&self, name: &str, addr: std::net::SocketAddr) -> Option<&RouteTarget> {
        self.server_name_targets(name, addr).map(Targets::pick)
    }

    /// The clusters of the route for a TLS server name, unpicked (see
    /// [`Self::by_server_name`]).
    pub fn server_name_targets(&self, name: &str, addr: std::net::SocketAddr) -> Option<&Targets> {
        let names = &self.by_server_name;
        if names.0.is_empty() {
            return None;
        }
        let port = addr.port();
        if names.0.contains_key(&Some(port))
            || self.by_port.contains_key(&port)
            || self.by_destination.contains_key(&addr)
        {
            return names.find_in(Some(port), name);
        }
        names.find_in(None, name)
    }

    /// Whether any route is configured (a miss is then a 404).
    pub fn has_routes(&self) -> bool {
        !self.by_authority.is_empty()
            || !self.by_port.is_empty()
            || !self.by_destination.is_empty()
            || self.routes_server_names()
    }
}

/// A simple route's clusters: one, or a weighted split (smooth weighted
/// round robin, as the virtual hosts' splits) picked per connection.
#[derive(Debug)]
pub struct Targets {
    /// The route's `cluster` (a split's first).
    first: RouteTarget,
    /// `None`: `first` takes everything.
    split: Option<WeightedRoundRobin<RouteTarget>>,
}

impl Targets {
    /// `first` alone when `split` has fewer than two clusters.
    fn new(first: RouteTarget, split: Vec<(RouteTarget, u32)>) -> Targets {
        let split = (split.len() > 1).then(|| WeightedRoundRobin::new(split));
        Targets { first, split }
    }

    /// The target for the next connection (or request). One cluster is
    /// a branch, not a shared counter.
    pub fn pick(&self) -> &RouteTarget {
        match &self.split {
            None => &self.first,
            Some(split) => split.pick().unwrap_or(&self.first),
        }
    }

    /// The route's first cluster.
    pub fn first(&self) -> &RouteTarget {
        &self.first
    }

    /// Each cluster with its share of the connections (0..=1).
    pub fn shares(&self) -> Vec<(&RouteTarget, f64)> {
        match &self.split {
            None => vec![(&self.first, 1.0)],
            Some(split) => split.items().iter().zip(split.shares()).collect(),
        }
    }
}

/// Server-name routes by port scope (`None`: every port), then name. A
/// name is looked up exact, then as wildcards from the longest suffix to
/// the shortest (`a.b.example.com`: `*.b.example.com`, `*.example.com`,
/// `*.com`): Envoy's most-specific-match order for `server_names`.
#[derive(Debug, Default)]
struct ServerNames(HashMap<Option<u16>, HashMap<Box<str>, Targets>>);

impl ServerNames {
    fn find_in(&self, scope: Option<u16>, name: &str) -> Option<&Targets> {
        let names = self.0.get(&scope)?;
        let get = |key: &str| names.get(key);
        if let Some(t) = get(name) {
            return Some(t);
        }
        let mut wildcard = String::with_capacity(name.len() + 1);
        for (i, _) in name.match_indices('.') {
            wildcard.clear();
            wildcard.push('*');
            wildcard.push_str(&name[i..]);
            if let Some(t) = get(&wildcard) {
                return Some(t);
            }
        }
        None
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
