//! The routing snapshot built from one validated config: which cluster an
//! authority or destination port goes to, and each cluster's balancer.
//! The data path reads it through an `ArcSwap`, so a reload swaps a whole
//! snapshot at once and in-flight requests finish on the one they began on.

use crate::balance::cluster::Balancer;
use crate::http::vhost::VirtualHosts;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use strait_config::{CircuitBreaker, Config, HashKey, LoadBalancer, Protocol, RouteMatch};
use tower::retry::budget::TpsBudget;

/// Addresses of DNS endpoints, by (name, port).
pub type Resolved = HashMap<(String, u16), Vec<std::net::SocketAddr>>;

/// A cluster ready for the data path.
#[derive(Debug)]
pub struct ClusterState {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Set for meshed clusters: the identity endpoints must prove over mTLS.
    pub tls_identity: Option<Arc<str>>,
    pub endpoints: Balancer,
    /// What ring hash hashes, when the cluster balances by ring hash.
    pub hash_key: Option<HashKey>,
    pub circuit_breaker: CircuitBreaker,
    /// Requests in flight and requests waiting for a connection, for the
    /// circuit breaker.
    pub active: AtomicUsize,
    pub pending: AtomicUsize,
    /// Retries in progress, for the circuit breaker's max_retries.
    pub retrying: AtomicUsize,
    /// Upstream connections this cluster opened, for max_connections.
    pub connections: crate::pool::ConnectionLimit,
    /// Every request on a route with retries deposits, every retry withdraws.
    pub retry_budget: TpsBudget,
}

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
    by_authority: HashMap<String, RouteTarget>,
    by_port: HashMap<u16, RouteTarget>,
    pub outbound_default: Option<RouteTarget>,
    pub inbound_default: Option<RouteTarget>,
    /// The `authority` label of traffic to an original destination.
    pub no_authority: Arc<str>,
}

impl Snapshot {
    /// A snapshot with no DNS names resolved (static endpoints only).
    pub fn new(config: Config) -> Snapshot {
        Snapshot::with_resolved(config, &Resolved::new())
    }

    /// A snapshot whose DNS endpoints take the addresses in `resolved`.
    pub fn with_resolved(config: Config, resolved: &Resolved) -> Snapshot {
        let clusters: HashMap<&str, Arc<ClusterState>> = config
            .clusters
            .iter()
            .map(|c| {
                let mut endpoints: Vec<_> =
                    c.endpoints.iter().map(|e| (e.addr, e.weight)).collect();
                for dns in &c.dns_endpoints {
                    if let Some(addrs) = resolved.get(&(dns.host.clone(), dns.port)) {
                        endpoints.extend(addrs.iter().map(|a| (*a, dns.weight)));
                    }
                }
                let state = ClusterState {
                    name: c.name.as_str().into(),
                    protocol: c.protocol,
                    connect_timeout: c.connect_timeout,
                    response_timeout: c.response_timeout,
                    tls_identity: c.tls_identity.as_deref().map(Arc::from),
                    endpoints: Balancer::new(
                        &endpoints,
                        &c.load_balancer,
                        c.outlier_detection.clone(),
                    ),
                    hash_key: match &c.load_balancer {
                        LoadBalancer::RingHash { key } => Some(key.clone()),
                        _ => None,
                    },
                    circuit_breaker: c.circuit_breaker.clone(),
                    active: AtomicUsize::new(0),
                    pending: AtomicUsize::new(0),
                    retrying: AtomicUsize::new(0),
                    connections: crate::pool::ConnectionLimit::new(
                        c.circuit_breaker.max_connections,
                    ),
                    retry_budget: TpsBudget::new(
                        c.retry_budget.window,
                        c.retry_budget.min_per_second,
                        (c.retry_budget.percent / 100.0) as f32,
                    ),
                };
                (c.name.as_str(), Arc::new(state))
            })
            .collect();
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
        let vhosts = VirtualHosts::compile(&config.virtual_hosts, &clusters);
        let cluster_list = clusters.values().cloned().collect();
        Snapshot {
            clusters: cluster_list,
            vhosts,
            by_authority,
            by_port,
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

    /// The route for a destination port.
    pub fn by_port(&self, port: u16) -> Option<&RouteTarget> {
        self.by_port.get(&port)
    }

    /// Whether any route is configured (a miss is then a 404).
    pub fn has_routes(&self) -> bool {
        !self.by_authority.is_empty() || !self.by_port.is_empty()
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
}
