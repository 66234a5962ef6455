//! One version of a cluster's endpoint set and its balancing policy:
//! weighted round robin, P2C on in-flight requests (least request),
//! weighted random, P2C on Peak-EWMA cost (latency x load, the default),
//! or a consistent-hash ring (xxHash64, stable across builds and Rust
//! releases, as Envoy's). Ejected endpoints are skipped while any
//! endpoint is left. The endpoints themselves are shared [`Endpoint`]s
//! from the registry: a new `Balancer` is built when the set or the
//! policy changes, and the endpoints it keeps carry their state over.

use super::endpoint::{Endpoint, Outcome};
use super::WeightedRoundRobin;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strait_config::{HashKey, LoadBalancer, OutlierDetection};
use xxhash_rust::xxh64::xxh64;

/// Virtual nodes per unit of weight on the hash ring.
const RING_NODES_PER_WEIGHT: u32 = 64;
const MAX_RING_NODES_PER_ENDPOINT: u32 = 64 * 100;
/// The weight past which an endpoint gets no more of the ring.
pub const RING_MAX_WEIGHT: u32 = MAX_RING_NODES_PER_ENDPOINT / RING_NODES_PER_WEIGHT;

#[derive(Debug)]
enum Policy {
    RoundRobin(WeightedRoundRobin<()>),
    LeastRequest,
    Random { total_weight: u64 },
    PeakEwma { default_rtt_ns: f64, decay_ns: f64 },
    RingHash(Vec<(u64, usize)>),
}

/// The endpoints of a cluster and its balancing policy.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Arc<Endpoint>>,
    weights: Vec<u32>,
    policy: Policy,
    outlier: Option<OutlierDetection>,
    /// What ring hash hashes (None for every other policy): here, so a
    /// request reads its cluster's balancing in one load.
    hash_key: Option<HashKey>,
}

/// The ring position of `(addr, n)`: the hash of `"addr_n"`.
fn ring_point(addr: SocketAddr, n: u32) -> u64 {
    xxh64(format!("{addr}_{n}").as_bytes(), 0)
}

impl Balancer {
    /// A balancer over `endpoints` as (endpoint, weight).
    pub fn new(
        endpoints: Vec<(Arc<Endpoint>, u32)>,
        lb: &LoadBalancer,
        outlier: Option<OutlierDetection>,
    ) -> Balancer {
        let (endpoints, weights): (Vec<_>, Vec<_>) = endpoints.into_iter().unzip();
        let policy = match lb {
            LoadBalancer::RoundRobin => {
                Policy::RoundRobin(WeightedRoundRobin::new(weights.iter().map(|w| ((), *w))))
            }
            LoadBalancer::LeastRequest => Policy::LeastRequest,
            LoadBalancer::Random => Policy::Random {
                total_weight: weights.iter().map(|w| u64::from(*w)).sum(),
            },
            LoadBalancer::PeakEwma { default_rtt, decay } => Policy::PeakEwma {
                default_rtt_ns: default_rtt.as_nanos() as f64,
                decay_ns: decay.as_nanos().max(1) as f64,
            },
            LoadBalancer::RingHash { .. } => {
                let mut ring: Vec<(u64, usize)> = endpoints
                    .iter()
                    .zip(&weights)
                    .enumerate()
                    .flat_map(|(i, (e, w))| {
                        let addr = e.addr;
                        // Capped, so a large weight cannot blow the ring up.
                        let nodes = w
                            .saturating_mul(RING_NODES_PER_WEIGHT)
                            .min(MAX_RING_NODES_PER_ENDPOINT);
                        (0..nodes).map(move |n| (ring_point(addr, n), i))
                    })
                    .collect();
                ring.sort_unstable();
                Policy::RingHash(ring)
            }
        };
        let hash_key = match lb {
            LoadBalancer::RingHash { key } => Some(key.clone()),
            _ => None,
        };
        Balancer {
            endpoints,
            weights,
            policy,
            outlier,
            hash_key,
        }
    }

    /// What the request is hashed by, when the policy is ring hash.
    pub fn hash_key(&self) -> Option<&HashKey> {
        self.hash_key.as_ref()
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Each endpoint's weight, in [`Balancer::endpoints`] order.
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn available(&self, i: usize) -> bool {
        self.endpoints[i].available()
    }

    /// Pick an endpoint; `hash` is the request's key for ring hash.
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<Endpoint>> {
        self.pick_index(hash).map(|i| &self.endpoints[i])
    }

    fn pick_index(&self, hash: Option<u64>) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let first = match &self.policy {
            Policy::RoundRobin(rr) => {
                // Skip ejected endpoints: at most one lap of the schedule.
                for _ in 0..n {
                    let i = rr.pick_index()?;
                    if self.available(i) {
                        return Some(i);
                    }
                }
                rr.pick_index()
            }
            Policy::Random { total_weight } => self.weighted_random(*total_weight),
            Policy::LeastRequest => self.p2c(|e| e.inflight() as f64),
            Policy::PeakEwma {
                default_rtt_ns,
                decay_ns,
            } => self.p2c(|e| {
                let rtt = e.ewma_ns(*decay_ns).unwrap_or(*default_rtt_ns);
                rtt * (e.inflight() as f64 + 1.0)
            }),
            Policy::RingHash(ring) => {
                let key = hash.unwrap_or_else(|| fastrand::u64(..));
                let start = ring.partition_point(|(h, _)| *h < key);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1)
                    .find(|i| self.available(*i))
                    .or(Some(ring[start % ring.len()].1))
            }
        };
        match first {
            Some(i) if self.available(i) => Some(i),
            // A random pick landed on an ejected endpoint: try the others.
            Some(i) => (1..n)
                .map(|k| (i + k) % n)
                .find(|j| self.available(*j))
                .or(Some(i)),
            None => None,
        }
    }

    fn weighted_random(&self, total: u64) -> Option<usize> {
        let mut point = fastrand::u64(0..total.max(1));
        for (i, w) in self.weights.iter().enumerate() {
            let w = u64::from(*w);
            if point < w {
                return Some(i);
            }
            point -= w;
        }
        Some(self.endpoints.len() - 1)
    }

    /// Power of two choices: of two distinct random available endpoints,
    /// the one with the lower cost.
    fn p2c(&self, cost: impl Fn(&Endpoint) -> f64) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 1 {
            return Some(0);
        }
        let a = fastrand::usize(0..n);
        let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
        match (self.available(a), self.available(b)) {
            (true, false) => Some(a),
            (false, true) => Some(b),
            _ if cost(&self.endpoints[b]) < cost(&self.endpoints[a]) => Some(b),
            _ => Some(a),
        }
    }

    /// A request to `endpoint` finished after `latency` (to response
    /// headers), at `now_ns` ([`super::endpoint::now_ns`]). Returns true
    /// when this outcome ejected the endpoint.
    pub fn finish(
        &self,
        endpoint: &Endpoint,
        latency: Duration,
        now_ns: u64,
        outcome: Outcome,
    ) -> bool {
        endpoint.abandon();
        if let Policy::PeakEwma { decay_ns, .. } = self.policy {
            endpoint.observe_latency(latency, decay_ns, now_ns);
        }
        endpoint.record(outcome, self.outlier.as_ref(), self.endpoints.len())
    }

    /// Endpoints ejected right now.
    pub fn ejected_now(&self) -> usize {
        self.endpoints.iter().filter(|e| e.is_ejected()).count()
    }
}

/// The ring-hash key of a request: a header's value or the client's IP,
/// hashed with xxHash64 so a key lands on the same endpoint in every
/// build of the proxy.
pub fn request_hash(value: &[u8]) -> u64 {
    xxh64(value, 0)
}

/// The ring-hash key of a client IP.
pub fn ip_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => request_hash(&v4.octets()),
        std::net::IpAddr::V6(v6) => request_hash(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::endpoint::now_ns;
    use crate::metrics::Metrics;
    use std::sync::atomic::AtomicUsize;

    fn endpoints(n: u16) -> (Vec<(Arc<Endpoint>, u32)>, Arc<AtomicUsize>) {
        let ejected = Arc::new(AtomicUsize::new(0));
        let metrics = Metrics::new();
        let set = (1..=n)
            .map(|p| {
                let addr = SocketAddr::from(([127, 0, 0, 1], p));
                let e = Endpoint::new(addr, None, ejected.clone(), metrics.clone());
                (Arc::new(e), 1)
            })
            .collect();
        (set, ejected)
    }

    fn run(b: &Balancer, i: usize, latency_ms: u64, outcome: Outcome) -> bool {
        let e = b.endpoints()[i].clone();
        e.start();
        b.finish(&e, Duration::from_millis(latency_ms), now_ns(), outcome)
    }

    fn peak_ewma() -> LoadBalancer {
        LoadBalancer::PeakEwma {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint() {
        let (set, _) = endpoints(2);
        let b = Balancer::new(set, &peak_ewma(), None);
        run(&b, 0, 50, Outcome::Success);
        run(&b, 1, 1, Outcome::Success);
        let fast = (0..1000)
            .filter(|_| b.pick(None).map(|e| e.addr.port()) == Some(2))
            .count();
        assert!(fast > 990, "{fast}");
    }

    #[test]
    fn peak_ewma_survives_a_new_balancer_over_the_same_endpoints() {
        let (set, _) = endpoints(2);
        let first = Balancer::new(set.clone(), &peak_ewma(), None);
        run(&first, 0, 50, Outcome::Success);
        run(&first, 1, 1, Outcome::Success);
        // A reload builds a new set from the same endpoints.
        let second = Balancer::new(set, &peak_ewma(), None);
        let fast = (0..1000)
            .filter(|_| second.pick(None).map(|e| e.addr.port()) == Some(2))
            .count();
        assert!(fast > 990, "{fast}");
    }

    #[test]
    fn peak_ewma_weighs_old_estimates_by_elapsed_time() {
        let (set, _) = endpoints(1);
        let e = &set[0].0;
        let decay = Duration::from_secs(10).as_nanos() as f64;
        e.observe_latency(Duration::from_millis(100), decay, now_ns());
        // A fast sample right after a slow one barely moves the estimate:
        // almost no time passed, so the old estimate keeps its weight.
        e.observe_latency(Duration::from_millis(1), decay, now_ns());
        let estimate = e.ewma_ns(decay).unwrap_or(0.0) / 1e6;
        assert!(estimate > 99.0, "{estimate} ms");
    }

    #[test]
    fn outlier_ejection_respects_the_cap_and_expires() {
        let od = OutlierDetection {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_millis(50),
            max_ejection_percent: 50,
        };
        let (set, ejected) = endpoints(2);
        let b = Balancer::new(set.clone(), &LoadBalancer::RoundRobin, Some(od.clone()));
        for _ in 0..3 {
            run(&b, 0, 1, Outcome::Failure);
        }
        assert_eq!(b.ejected_now(), 1);
        assert!((0..10).all(|_| b.pick(None).map(|e| e.addr.port()) == Some(2)));
        // The cap: the last endpoint is never ejected.
        for _ in 0..3 {
            assert!(!run(&b, 1, 1, Outcome::Failure));
        }
        // A new set over the same endpoints keeps the ejection.
        let again = Balancer::new(set.clone(), &LoadBalancer::RoundRobin, Some(od));
        assert_eq!(again.ejected_now(), 1);
        std::thread::sleep(Duration::from_millis(60));
        // The ejection ran out: the endpoint is picked again and counted back.
        assert!(set[0].0.available());
        assert_eq!(ejected.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn removing_an_ejected_endpoint_frees_its_place_under_the_cap() {
        let (mut set, ejected) = endpoints(2);
        let b = Balancer::new(set.clone(), &LoadBalancer::RoundRobin, None);
        for _ in 0..3 {
            run(&b, 0, 1, Outcome::ConnectFailure);
        }
        assert_eq!(ejected.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(b);
        set.remove(0);
        assert_eq!(ejected.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn ring_hash_is_sticky_and_stable() {
        let (set, _) = endpoints(5);
        let lb = LoadBalancer::RingHash {
            key: strait_config::HashKey::SourceIp,
        };
        let b = Balancer::new(set, &lb, None);
        let key = request_hash(b"user-42");
        let first = b.pick(Some(key)).map(|e| e.addr);
        assert!((0..100).all(|_| b.pick(Some(key)).map(|e| e.addr) == first));
        // xxHash64 of a fixed input is fixed: the ring does not move
        // between builds or Rust releases.
        // (The reference value is from the xxhash Python package.)
        assert_eq!(request_hash(b"user-42"), 0x397e_9d3a_76af_7c81);
    }
}
