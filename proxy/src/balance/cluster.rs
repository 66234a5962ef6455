//! A cluster's endpoints with the state balancing needs: requests in
//! flight, a Peak-EWMA latency estimate, and outlier-ejection state. One
//! policy per cluster picks an endpoint: weighted round robin, P2C on
//! in-flight requests (least request), weighted random, P2C on Peak-EWMA
//! cost (latency x load, the default), or a consistent-hash ring.
//! Ejected endpoints are skipped while any endpoint is left.

use super::WeightedRoundRobin;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use strait_config::{LoadBalancer, OutlierDetection};

/// Virtual nodes per unit of weight on the hash ring.
const RING_NODES_PER_WEIGHT: u32 = 64;
const MAX_RING_NODES_PER_ENDPOINT: u32 = 64 * 100;

/// One endpoint and what the balancer knows about it.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    weight: u32,
    inflight: AtomicUsize,
    /// Peak-EWMA latency in nanoseconds (f64 bits), 0 before any sample.
    ewma_bits: AtomicU64,
    /// When the EWMA was last updated, ns since the balancer started.
    ewma_at: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Ejected until this many ms since the balancer started (0 = not).
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
}

#[derive(Debug)]
enum Policy {
    RoundRobin(WeightedRoundRobin<usize>),
    LeastRequest,
    Random { total_weight: u64 },
    PeakEwma { default_rtt_ns: f64, decay_ns: f64 },
    RingHash(Vec<(u64, usize)>),
}

/// What happened to a request, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx from the endpoint or a gateway failure reaching it.
    Failure,
    /// No connection could be made to the endpoint at all.
    ConnectFailure,
}

/// Without configured outlier detection, endpoints that refuse
/// connections are still taken out of rotation until they recover.
const CONNECT_FAILURE_EJECTION: OutlierDetection = OutlierDetection {
    consecutive_failures: 3,
    base_ejection_time: Duration::from_secs(5),
    max_ejection_percent: 50,
};

/// The endpoints of a cluster and its balancing policy.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Endpoint>,
    policy: Policy,
    outlier: Option<OutlierDetection>,
    started: Instant,
    ejected: AtomicUsize,
}

fn hash_of(value: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

impl Balancer {
    pub fn new(
        endpoints: &[(SocketAddr, u32)],
        lb: &LoadBalancer,
        outlier: Option<OutlierDetection>,
    ) -> Balancer {
        let policy = match lb {
            LoadBalancer::RoundRobin => Policy::RoundRobin(WeightedRoundRobin::new(
                &endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, (_, w))| (i, *w))
                    .collect::<Vec<_>>(),
            )),
            LoadBalancer::LeastRequest => Policy::LeastRequest,
            LoadBalancer::Random => Policy::Random {
                total_weight: endpoints.iter().map(|(_, w)| u64::from(*w)).sum(),
            },
            LoadBalancer::PeakEwma { default_rtt, decay } => Policy::PeakEwma {
                default_rtt_ns: default_rtt.as_nanos() as f64,
                decay_ns: decay.as_nanos().max(1) as f64,
            },
            LoadBalancer::RingHash { .. } => {
                let mut ring: Vec<(u64, usize)> = endpoints
                    .iter()
                    .enumerate()
                    .flat_map(|(i, (addr, w))| {
                        // Capped, so a large weight cannot blow the ring up.
                        (0..(w * RING_NODES_PER_WEIGHT).min(MAX_RING_NODES_PER_ENDPOINT))
                            .map(move |n| (hash_of((addr, n)), i))
                    })
                    .collect();
                ring.sort_unstable();
                Policy::RingHash(ring)
            }
        };
        Balancer {
            endpoints: endpoints
                .iter()
                .map(|(addr, weight)| Endpoint {
                    addr: *addr,
                    weight: *weight,
                    inflight: AtomicUsize::new(0),
                    ewma_bits: AtomicU64::new(0),
                    ewma_at: AtomicU64::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                })
                .collect(),
            policy,
            outlier,
            started: Instant::now(),
            ejected: AtomicUsize::new(0),
        }
    }

    pub fn endpoint(&self, index: usize) -> &Endpoint {
        &self.endpoints[index]
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether `i` may be picked; an ejection that has run out returns the
    /// endpoint (and is counted back) here.
    fn available(&self, i: usize) -> bool {
        let until = self.endpoints[i].ejected_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if self.now_ms() < until {
            return false;
        }
        if self.endpoints[i]
            .ejected_until_ms
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.ejected.fetch_sub(1, Ordering::AcqRel);
            self.endpoints[i]
                .consecutive_failures
                .store(0, Ordering::Relaxed);
        }
        true
    }

    /// Pick an endpoint index; `hash` is the request's key for ring hash.
    pub fn pick(&self, hash: Option<u64>) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let any_ejected = self.ejected.load(Ordering::Relaxed) > 0;
        let first = match &self.policy {
            Policy::RoundRobin(rr) => {
                // Skip ejected endpoints: at most one lap of the schedule.
                for _ in 0..n {
                    let i = *rr.pick()?;
                    if !any_ejected || self.available(i) {
                        return Some(i);
                    }
                }
                rr.pick().copied()
            }
            Policy::Random { total_weight } => self.weighted_random(*total_weight),
            Policy::LeastRequest => self.p2c(|e| e.inflight.load(Ordering::Relaxed) as f64),
            Policy::PeakEwma {
                default_rtt_ns,
                decay_ns,
            } => self.p2c(|e| {
                let rtt = self.decayed_ewma(e, *decay_ns).unwrap_or(*default_rtt_ns);
                rtt * (e.inflight.load(Ordering::Relaxed) as f64 + 1.0)
            }),
            Policy::RingHash(ring) => {
                let key = hash.unwrap_or_else(|| fastrand::u64(..));
                let start = ring.partition_point(|(h, _)| *h < key);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1)
                    .find(|i| !any_ejected || self.available(*i))
                    .or(Some(ring[start % ring.len()].1))
            }
        };
        match first {
            Some(i) if !any_ejected || self.available(i) => Some(i),
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
        for (i, e) in self.endpoints.iter().enumerate() {
            let w = u64::from(e.weight);
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
        let (a_ok, b_ok) = (self.available(a), self.available(b));
        match (a_ok, b_ok) {
            (true, false) => Some(a),
            (false, true) => Some(b),
            _ => {
                if cost(&self.endpoints[b]) < cost(&self.endpoints[a]) {
                    Some(b)
                } else {
                    Some(a)
                }
            }
        }
    }

    fn decayed_ewma(&self, e: &Endpoint, decay_ns: f64) -> Option<f64> {
        let ewma = f64::from_bits(e.ewma_bits.load(Ordering::Relaxed));
        if ewma == 0.0 {
            return None;
        }
        let now = self.started.elapsed().as_nanos() as f64;
        let at = e.ewma_at.load(Ordering::Relaxed) as f64;
        Some(ewma * (-(now - at).max(0.0) / decay_ns).exp())
    }

    /// A request to `i` starts.
    pub fn start(&self, i: usize) {
        self.endpoints[i].inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request to `i` was given up before it finished (the client left).
    pub fn abandon(&self, i: usize) {
        self.endpoints[i].inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request to `i` finished after `latency` (to response headers).
    /// Returns true when this outcome ejected the endpoint.
    pub fn finish(&self, i: usize, latency: Duration, outcome: Outcome) -> bool {
        let e = &self.endpoints[i];
        e.inflight.fetch_sub(1, Ordering::Relaxed);
        if let Policy::PeakEwma { decay_ns, .. } = self.policy {
            let rtt = latency.as_nanos() as f64;
            let next = match self.decayed_ewma(e, decay_ns) {
                // A peak is taken at once; a drop is averaged in.
                Some(prev) if rtt < prev => prev * 0.7 + rtt * 0.3,
                _ => rtt,
            };
            e.ewma_bits
                .store(next.max(1.0).to_bits(), Ordering::Relaxed);
            e.ewma_at
                .store(self.started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        match (outcome, &self.outlier) {
            (Outcome::Success, _) => {
                e.consecutive_failures.store(0, Ordering::Relaxed);
                false
            }
            (Outcome::Failure, Some(od)) => {
                let failures = e.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                failures >= od.consecutive_failures && self.eject(i, od)
            }
            (Outcome::ConnectFailure, Some(od)) => {
                let failures = e.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                failures >= od.consecutive_failures && self.eject(i, od)
            }
            (Outcome::ConnectFailure, None) => {
                let od = &CONNECT_FAILURE_EJECTION;
                let failures = e.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                failures >= od.consecutive_failures && self.eject(i, od)
            }
            (Outcome::Failure, None) => false,
        }
    }

    fn eject(&self, i: usize, od: &OutlierDetection) -> bool {
        let n = self.endpoints.len();
        let max = (n * od.max_ejection_percent as usize) / 100;
        let e = &self.endpoints[i];
        if e.ejected_until_ms.load(Ordering::Relaxed) != 0
            || self.ejected.load(Ordering::Relaxed) >= max
        {
            return false;
        }
        let count = e.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let until = self.now_ms() + od.base_ejection_time.as_millis() as u64 * u64::from(count);
        e.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
        e.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejected.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Endpoints ejected right now.
    pub fn ejected_now(&self) -> usize {
        (0..self.endpoints.len())
            .filter(|i| !self.available(*i))
            .count()
    }
}

/// The ring-hash key of a request: a header's value or the client's IP.
pub fn request_hash(value: impl Hash) -> u64 {
    hash_of(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<(SocketAddr, u32)> {
        (1..=n)
            .map(|p| (SocketAddr::from(([127, 0, 0, 1], p)), 1))
            .collect()
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint() {
        let lb = LoadBalancer::PeakEwma {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        };
        let b = Balancer::new(&addrs(2), &lb, None);
        b.start(0);
        b.finish(0, Duration::from_millis(50), Outcome::Success);
        b.start(1);
        b.finish(1, Duration::from_millis(1), Outcome::Success);
        let fast = (0..1000).filter(|_| b.pick(None) == Some(1)).count();
        assert!(fast > 990, "{fast}");
    }

    #[test]
    fn outlier_ejection_respects_the_cap_and_expires() {
        let od = OutlierDetection {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_millis(50),
            max_ejection_percent: 50,
        };
        let b = Balancer::new(&addrs(2), &LoadBalancer::RoundRobin, Some(od));
        for _ in 0..3 {
            b.start(0);
            b.finish(0, Duration::from_millis(1), Outcome::Failure);
        }
        assert_eq!(b.ejected_now(), 1);
        assert!((0..10).all(|_| b.pick(None) == Some(1)));
        // The cap: the last endpoint is never ejected.
        for _ in 0..3 {
            b.start(1);
            assert!(!b.finish(1, Duration::from_millis(1), Outcome::Failure));
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.ejected_now(), 0);
    }

    #[test]
    fn ring_hash_is_sticky() {
        let b = Balancer::new(
            &addrs(5),
            &LoadBalancer::RingHash {
                key: strait_config::HashKey::SourceIp,
            },
            None,
        );
        let key = request_hash("user-42");
        let first = b.pick(Some(key));
        assert!((0..100).all(|_| b.pick(Some(key)) == first));
    }
}
