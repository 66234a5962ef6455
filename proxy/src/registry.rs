//! Long-lived upstream state, keyed by identity rather than position:
//! clusters by name, endpoints by (cluster, address). Every source of
//! change (a config reload, a DNS answer, later an xDS update) is applied
//! as a diff: a cluster that stays keeps its circuit-breaker counters,
//! connection slots and retry budget, and its settings are swapped in
//! place; an endpoint that stays keeps its load, Peak-EWMA, ejection
//! state, pools and metric handles; a removed one leaves the set at once
//! and is dropped when its last request ends.
//!
//! Only updates take the registry's lock; the data path reaches clusters
//! through the routing snapshot and reads their state through `ArcSwap`s
//! and atomics.
//!
//! Depends on: [`crate::balance`] (endpoints and balancers), the config.

use crate::balance::cluster::Balancer;
use crate::balance::endpoint::Endpoint;
use crate::metrics::Metrics;
use arc_swap::{ArcSwap, Guard};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strait_config::{
    CircuitBreaker, Cluster, Config, LoadBalancer, OutlierDetection, Protocol, RetryBudget,
};
use tower::retry::budget::TpsBudget;

/// Addresses of DNS endpoints, by (name, port).
pub type Resolved = HashMap<(String, u16), Vec<SocketAddr>>;

/// A cluster's settings: replaced whole when the config changes them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub protocol: Protocol,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Set for meshed clusters: the identity endpoints must prove over mTLS.
    pub tls_identity: Option<Arc<str>>,
    pub circuit_breaker: CircuitBreaker,
    pub load_balancer: LoadBalancer,
    pub outlier_detection: Option<OutlierDetection>,
}

impl ClusterSettings {
    fn from_config(c: &Cluster) -> ClusterSettings {
        ClusterSettings {
            protocol: c.protocol,
            connect_timeout: c.connect_timeout,
            response_timeout: c.response_timeout,
            tls_identity: c.tls_identity.as_deref().map(Arc::from),
            circuit_breaker: c.circuit_breaker.clone(),
            load_balancer: c.load_balancer.clone(),
            outlier_detection: c.outlier_detection.clone(),
        }
    }
}

/// A cluster ready for the data path, alive across updates.
#[derive(Debug)]
pub struct ClusterState {
    pub name: Arc<str>,
    settings: ArcSwap<ClusterSettings>,
    balancer: ArcSwap<Balancer>,
    /// Requests in flight, for the circuit breaker's max_requests.
    pub active: AtomicUsize,
    /// Requests waiting for a connection, for max_pending.
    pub pending: AtomicUsize,
    /// Retries in progress, for max_retries.
    pub retrying: AtomicUsize,
    /// Upstream connections this cluster opened, for max_connections.
    pub connections: crate::pool::ConnectionLimit,
    /// Every request on a route with retries deposits, every retry
    /// withdraws; replaced only when the budget's settings change.
    retry_budget: ArcSwap<(RetryBudget, TpsBudget)>,
    /// How many of this cluster's endpoints are ejected now.
    ejected: Arc<AtomicUsize>,
}

fn budget(b: &RetryBudget) -> (RetryBudget, TpsBudget) {
    let tps = TpsBudget::new(b.window, b.min_per_second, (b.percent / 100.0) as f32);
    (b.clone(), tps)
}

/// One request in flight to a cluster, under its circuit breaker's
/// `max_requests`; freed when dropped (with the response stream).
#[derive(Debug)]
pub struct RequestSlot(Arc<ClusterState>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ClusterState {
    /// Take a request slot, unless `max_requests` are in flight.
    pub fn try_request(self: &Arc<Self>) -> Option<RequestSlot> {
        let max = self.settings().circuit_breaker.max_requests;
        if self.active.fetch_add(1, Ordering::AcqRel) >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RequestSlot(self.clone()))
    }

    /// The cluster's current settings.
    pub fn settings(&self) -> Guard<Arc<ClusterSettings>> {
        self.settings.load()
    }

    /// How many of the cluster's endpoints are ejected now.
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// The current endpoint set and policy.
    pub fn balancer(&self) -> Guard<Arc<Balancer>> {
        self.balancer.load()
    }

    /// The retry budget.
    pub fn retry_budget(&self) -> Guard<Arc<(RetryBudget, TpsBudget)>> {
        self.retry_budget.load()
    }
}

/// Every cluster, by name.
pub struct Registry {
    clusters: Mutex<HashMap<Arc<str>, Arc<ClusterState>>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            clusters: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Bring the registry to `config`'s clusters, with DNS endpoints at
    /// the addresses in `resolved`, and return them by name. Clusters and
    /// endpoints that stay are updated in place; the rest are forgotten.
    pub fn update(
        &self,
        config: &Config,
        resolved: &Resolved,
    ) -> HashMap<Arc<str>, Arc<ClusterState>> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::with_capacity(config.clusters.len());
        for c in &config.clusters {
            let state = match clusters.remove(c.name.as_str()) {
                Some(state) => {
                    self.update_cluster(&state, c, resolved);
                    state
                }
                None => self.new_cluster(c, resolved),
            };
            next.insert(state.name.clone(), state);
        }
        // What is left in `clusters` was removed from the config.
        *clusters = next;
        clusters.clone()
    }

    fn new_cluster(&self, c: &Cluster, resolved: &Resolved) -> Arc<ClusterState> {
        let settings = ClusterSettings::from_config(c);
        let ejected = Arc::new(AtomicUsize::new(0));
        let endpoints = self.endpoint_set(c, &settings, resolved, &[], &ejected);
        let balancer = Balancer::new(
            endpoints,
            &settings.load_balancer,
            settings.outlier_detection.clone(),
        );
        Arc::new(ClusterState {
            name: c.name.as_str().into(),
            connections: crate::pool::ConnectionLimit::new(c.circuit_breaker.max_connections),
            settings: ArcSwap::from_pointee(settings),
            balancer: ArcSwap::from_pointee(balancer),
            active: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            retry_budget: ArcSwap::from_pointee(budget(&c.retry_budget)),
            ejected,
        })
    }

    fn update_cluster(&self, state: &ClusterState, c: &Cluster, resolved: &Resolved) {
        let settings = ClusterSettings::from_config(c);
        state
            .connections
            .set_max(settings.circuit_breaker.max_connections);
        if state.retry_budget.load().0 != c.retry_budget {
            state.retry_budget.store(Arc::new(budget(&c.retry_budget)));
        }
        // A new set over the kept endpoints: their state lives in them, so
        // rebuilding the (cheap, update-time only) balancer loses nothing.
        let current = state.balancer.load_full();
        let endpoints =
            self.endpoint_set(c, &settings, resolved, current.endpoints(), &state.ejected);
        state.balancer.store(Arc::new(Balancer::new(
            endpoints,
            &settings.load_balancer,
            settings.outlier_detection.clone(),
        )));
        if *state.settings.load_full() != settings {
            state.settings.store(Arc::new(settings));
        }
    }

    /// The cluster's endpoints as (endpoint, weight): static ones, then
    /// the resolved addresses of its DNS names, reusing `existing`
    /// endpoints by address (and identity).
    fn endpoint_set(
        &self,
        c: &Cluster,
        settings: &ClusterSettings,
        resolved: &Resolved,
        existing: &[Arc<Endpoint>],
        ejected: &Arc<AtomicUsize>,
    ) -> Vec<(Arc<Endpoint>, u32)> {
        let mut addrs: Vec<(SocketAddr, u32)> =
            c.endpoints.iter().map(|e| (e.addr, e.weight)).collect();
        for dns in &c.dns_endpoints {
            if let Some(found) = resolved.get(&(dns.host.clone(), dns.port)) {
                addrs.extend(found.iter().map(|a| (*a, dns.weight)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|(addr, _)| seen.insert(*addr));
        // By address: an EDS update of thousands of endpoints must not
        // search the old set once per new endpoint (quadratic).
        let kept: HashMap<SocketAddr, &Arc<Endpoint>> = existing
            .iter()
            .filter(|e| e.mesh == settings.tls_identity)
            .map(|e| (e.addr, e))
            .collect();
        addrs
            .into_iter()
            .map(|(addr, weight)| {
                let endpoint = match kept.get(&addr) {
                    Some(e) => Arc::clone(e),
                    None => Arc::new(Endpoint::new(
                        addr,
                        settings.tls_identity.clone(),
                        ejected.clone(),
                        self.metrics.clone(),
                    )),
                };
                (endpoint, weight)
            })
            .collect()
    }

    /// Apply new DNS answers to every cluster: only endpoint sets change.
    pub fn update_endpoints(&self, config: &Config, resolved: &Resolved) {
        let clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        for c in config
            .clusters
            .iter()
            .filter(|c| !c.dns_endpoints.is_empty())
        {
            if let Some(state) = clusters.get(c.name.as_str()) {
                self.update_cluster(state, c, resolved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::endpoint::Outcome;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml).unwrap_or_else(|e| panic!("config: {e}"))
    }

    const TWO: &str = "clusters:\n  - name: web\n    load_balancer: {policy: round_robin}\n    endpoints: [{address: '127.0.0.1:1'}, {address: '127.0.0.1:2'}]\n";
    const THREE: &str = "clusters:\n  - name: web\n    load_balancer: {policy: round_robin}\n    circuit_breaker: {max_connections: 7}\n    endpoints: [{address: '127.0.0.1:1'}, {address: '127.0.0.1:2'}, {address: '127.0.0.1:3'}]\n";

    #[test]
    fn a_reload_keeps_clusters_and_endpoints_that_stay() {
        let registry = Registry::new(Metrics::new());
        let first = registry.update(&config(TWO), &Resolved::new());
        let web = first["web"].clone();
        web.active.fetch_add(1, Ordering::Relaxed);
        let one = web.balancer().endpoints()[0].clone();
        one.start();
        let second = registry.update(&config(THREE), &Resolved::new());
        let again = &second["web"];
        assert!(Arc::ptr_eq(&web, again), "the cluster is the same object");
        assert_eq!(again.active.load(Ordering::Relaxed), 1, "counters kept");
        assert_eq!(again.balancer().len(), 3);
        assert!(Arc::ptr_eq(&again.balancer().endpoints()[0], &one));
        assert_eq!(again.balancer().endpoints()[0].inflight(), 1);
        assert_eq!(again.connections.max(), 7, "new limit, same counter");
    }

    #[test]
    fn an_ejection_survives_a_reload_and_a_removed_endpoint_leaves() {
        let registry = Registry::new(Metrics::new());
        let web = registry.update(&config(THREE), &Resolved::new())["web"].clone();
        let third = web.balancer().endpoints()[2].clone();
        for _ in 0..3 {
            third.start();
            web.balancer().finish(
                &third,
                Duration::from_millis(1),
                crate::balance::endpoint::now_ns(),
                Outcome::ConnectFailure,
            );
        }
        assert_eq!(web.ejected(), 1);
        registry.update(&config(THREE), &Resolved::new());
        assert_eq!(web.balancer().ejected_now(), 1);
        drop(third);
        registry.update(&config(TWO), &Resolved::new());
        assert_eq!(web.balancer().len(), 2);
        assert_eq!(web.ejected(), 0, "the ejected endpoint is gone");
    }

    #[test]
    fn a_removed_cluster_is_forgotten_and_a_new_one_starts_fresh() {
        let registry = Registry::new(Metrics::new());
        let web = registry.update(&config(TWO), &Resolved::new())["web"].clone();
        web.active.fetch_add(1, Ordering::Relaxed);
        registry.update(&config("clusters: []\n"), &Resolved::new());
        let fresh = registry.update(&config(TWO), &Resolved::new())["web"].clone();
        assert!(!Arc::ptr_eq(&web, &fresh));
        assert_eq!(fresh.active.load(Ordering::Relaxed), 0);
    }
}
