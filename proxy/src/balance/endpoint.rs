//! One upstream endpoint of a cluster and everything the proxy learns
//! about it: requests in flight, the Peak-EWMA latency estimate, outlier
//! ejection, its connection pools and its request-metric handles. An
//! endpoint is identified by (cluster, address) in the
//! [`crate::registry`], so a config reload, a DNS answer or an xDS update
//! that keeps the address keeps this state; a removed endpoint is dropped
//! once its last request ends, and its metric label sets go with it.
//!
//! Depends on: [`crate::pool`] (its pools), [`crate::metrics`] (handles).

use crate::metrics::{Metrics, RequestKey, RequestMetrics};
use crate::pool::{EndpointPool, HttpVersion, Pools};
use crate::Direction;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use strait_config::OutlierDetection;

/// Nanoseconds on the proxy's monotonic clock (since first use).
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
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
pub const CONNECT_FAILURE_EJECTION: OutlierDetection = OutlierDetection {
    consecutive_failures: 3,
    base_ejection_time: Duration::from_secs(5),
    max_ejection_percent: 50,
};

/// One endpoint and its long-lived state.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The identity the endpoint must prove over mTLS (its cluster's);
    /// a change of identity makes a new endpoint.
    pub mesh: Option<Arc<str>>,
    inflight: AtomicUsize,
    /// Peak-EWMA latency in nanoseconds (f64 bits), 0 before any sample.
    ewma_bits: AtomicU64,
    /// When the EWMA was last updated ([`now_ns`]).
    ewma_at: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Ejected until this [`now_ns`] (0 = not ejected).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// The cluster's count of ejected endpoints, kept exact through
    /// ejections, returns and this endpoint's removal.
    cluster_ejected: Arc<AtomicUsize>,
    /// Connection pools by direction and HTTP version, made on first use.
    pools: [OnceLock<Arc<EndpointPool>>; 4],
    /// Request-metric handles of the label sets seen on this endpoint.
    requests: Mutex<Vec<Arc<RequestMetrics>>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("inflight", &self.inflight())
            .field("ejected", &self.is_ejected())
            .finish()
    }
}

impl Endpoint {
    pub fn new(
        addr: SocketAddr,
        mesh: Option<Arc<str>>,
        cluster_ejected: Arc<AtomicUsize>,
        metrics: Arc<Metrics>,
    ) -> Endpoint {
        Endpoint {
            addr,
            mesh,
            inflight: AtomicUsize::new(0),
            ewma_bits: AtomicU64::new(0),
            ewma_at: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            cluster_ejected,
            pools: Default::default(),
            requests: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// The pool for requests of `direction` spoken in `version`.
    pub fn pool(
        &self,
        pools: &Pools,
        direction: Direction,
        version: HttpVersion,
    ) -> &Arc<EndpointPool> {
        let slot = match (direction, version) {
            (Direction::Outbound, HttpVersion::Http1) => 0,
            (Direction::Outbound, HttpVersion::Http2) => 1,
            (Direction::Inbound, HttpVersion::Http1) => 2,
            (Direction::Inbound, HttpVersion::Http2) => 3,
        };
        self.pools[slot].get_or_init(|| pools.create(self.addr, version, self.mesh.as_ref()))
    }

    /// Request-metric handles for `key` (whose target is this endpoint),
    /// made once and evicted with the endpoint.
    pub fn request_metrics(&self, key: RequestKey) -> Arc<RequestMetrics> {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = requests.iter().find(|m| m.key() == &key) {
            return found.clone();
        }
        let handles = self.metrics.owned_requests(key);
        requests.push(handles.clone());
        handles
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// A request to this endpoint starts.
    pub fn start(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was given up before it finished (the client left).
    pub fn abandon(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The Peak-EWMA estimate now, decayed toward zero by the time since
    /// the last sample (as tower's `PeakEwma` reads its load); `None`
    /// before the first sample.
    pub fn ewma_ns(&self, decay_ns: f64) -> Option<f64> {
        let ewma = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        if ewma == 0.0 {
            return None;
        }
        let elapsed = now_ns().saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
        Some(ewma * (-elapsed / decay_ns).exp())
    }

    /// Fold a latency sample into the Peak-EWMA: a peak is taken at once;
    /// otherwise the old estimate weighs `exp(-elapsed/decay)`, so `decay`
    /// is the time over which an old estimate fades, as in tower and
    /// Finagle.
    pub fn observe_latency(&self, latency: Duration, decay_ns: f64, now: u64) {
        let rtt = latency.as_nanos() as f64;
        let prev = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let next = if prev == 0.0 || rtt >= prev {
            rtt
        } else {
            let elapsed = now.saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
            let weight = (-elapsed / decay_ns).exp();
            prev * weight + rtt * (1.0 - weight)
        };
        self.ewma_bits
            .store(next.max(1.0).to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    /// Record a finished request's outcome for outlier detection, in a
    /// set of `set_size` endpoints. True when it ejected this endpoint.
    pub fn record(
        &self,
        outcome: Outcome,
        outlier: Option<&OutlierDetection>,
        set_size: usize,
    ) -> bool {
        let od = match (outcome, outlier) {
            (Outcome::Success, _) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                return false;
            }
            (Outcome::Failure, None) => return false,
            (Outcome::Failure | Outcome::ConnectFailure, Some(od)) => od,
            (Outcome::ConnectFailure, None) => &CONNECT_FAILURE_EJECTION,
        };
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= od.consecutive_failures && self.eject(od, set_size)
    }

    fn eject(&self, od: &OutlierDetection, set_size: usize) -> bool {
        let max = (set_size * od.max_ejection_percent as usize) / 100;
        if self.ejected_until.load(Ordering::Relaxed) != 0
            || self.cluster_ejected.load(Ordering::Relaxed) >= max
        {
            return false;
        }
        let count = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let until = now_ns() + od.base_ejection_time.as_nanos() as u64 * u64::from(count);
        if self
            .ejected_until
            .compare_exchange(0, until.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.cluster_ejected.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Whether the endpoint may be picked; an ejection that has run out
    /// returns it (and is counted back) here.
    pub fn available(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ns() < until {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.cluster_ejected.fetch_sub(1, Ordering::AcqRel);
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        true
    }

    /// Ejected right now (without returning an expired ejection).
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ns() < until
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // A removed endpoint no longer counts against the ejection cap.
        if *self.ejected_until.get_mut() != 0 {
            self.cluster_ejected.fetch_sub(1, Ordering::AcqRel);
        }
        let requests = std::mem::take(self.requests.get_mut().unwrap_or_else(|p| p.into_inner()));
        for handles in requests {
            self.metrics.release_requests(handles);
        }
    }
}
