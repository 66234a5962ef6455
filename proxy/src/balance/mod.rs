//! Endpoint selection: [`cluster::Balancer`] holds a cluster's endpoints and
//! picks one per request by the cluster's policy; [`WeightedRoundRobin`] is
//! the lock-free weighted schedule (one atomic increment per pick) that
//! round robin and weighted splits use.

pub mod cluster;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Items (a cluster's endpoints, a split's clusters) and the order they
/// are picked in.
#[derive(Debug)]
pub struct WeightedRoundRobin<T = SocketAddr> {
    endpoints: Vec<T>,
    /// Endpoint indices, each appearing `weight` times, spread evenly.
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl<T: Clone> WeightedRoundRobin<T> {
    /// `endpoints` as (item, weight); weights are at least 1.
    pub fn new(endpoints: &[(T, u32)]) -> Self {
        // Interleave: endpoint i's k-th slot sits at (k + 0.5) / weight_i.
        let mut slots: Vec<(f64, u32)> = endpoints
            .iter()
            .enumerate()
            .flat_map(|(i, (_, weight))| {
                let w = f64::from((*weight).max(1));
                (0..(*weight).max(1)).map(move |k| ((f64::from(k) + 0.5) / w, i as u32))
            })
            .collect();
        slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        WeightedRoundRobin {
            endpoints: endpoints.iter().map(|(item, _)| item.clone()).collect(),
            schedule: slots.into_iter().map(|(_, i)| i).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next item, or `None` for an empty set.
    pub fn pick(&self) -> Option<&T> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        self.endpoints.get(self.schedule[n] as usize)
    }

    pub fn endpoints(&self) -> &[T] {
        &self.endpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_weights() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let rr = WeightedRoundRobin::new(&[(a, 3), (b, 1)]);
        let picks: Vec<_> = (0..400).filter_map(|_| rr.pick().copied()).collect();
        assert_eq!(picks.iter().filter(|p| **p == a).count(), 300);
        // Spread, not bunched: b never appears twice in a row.
        assert!(picks.windows(2).all(|w| !(w[0] == b && w[1] == b)));
        assert_eq!(WeightedRoundRobin::<SocketAddr>::new(&[]).pick(), None);
    }
}
