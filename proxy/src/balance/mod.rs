//! Endpoint selection. [`endpoint::Endpoint`] is one upstream address and
//! the state balancing keeps about it (load, Peak-EWMA, outlier ejection);
//! it lives in the [`crate::registry`] and survives config updates.
//! [`cluster::Balancer`] is one version of a cluster's endpoint set with
//! its policy; [`WeightedRoundRobin`] is the smooth weighted schedule that
//! round robin and weighted splits use.
//!
//! Depends on: the config model only.

pub mod cluster;
pub mod endpoint;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Items (a cluster's endpoints, a split's clusters) picked in weighted
/// round robin. Equal weights take one atomic increment per pick; unequal
/// weights use smooth weighted round robin (as nginx does): each pick adds
/// every item's weight to its running score and takes the highest, which
/// spreads a heavy item's turns evenly and costs O(items), not O(weight).
#[derive(Debug)]
pub struct WeightedRoundRobin<T = SocketAddr> {
    items: Vec<T>,
    schedule: Schedule,
}

#[derive(Debug)]
enum Schedule {
    /// Every weight is the same: plain rotation.
    Equal { next: AtomicUsize },
    /// Smooth WRR: weights and the running scores.
    Smooth {
        weights: Vec<i64>,
        total: i64,
        scores: Mutex<Vec<i64>>,
    },
}

impl<T> WeightedRoundRobin<T> {
    /// `items` as (item, weight); a weight of 0 counts as 1.
    pub fn new(items: impl IntoIterator<Item = (T, u32)>) -> Self {
        let (items, weights): (Vec<T>, Vec<i64>) = items
            .into_iter()
            .map(|(item, w)| (item, i64::from(w.max(1))))
            .unzip();
        let schedule = if weights.windows(2).all(|w| w[0] == w[1]) {
            Schedule::Equal {
                next: AtomicUsize::new(0),
            }
        } else {
            Schedule::Smooth {
                total: weights.iter().sum(),
                scores: Mutex::new(vec![0; weights.len()]),
                weights,
            }
        };
        WeightedRoundRobin { items, schedule }
    }

    /// The index of the next item, or `None` for an empty set.
    pub fn pick_index(&self) -> Option<usize> {
        if self.items.is_empty() {
            return None;
        }
        match &self.schedule {
            Schedule::Equal { next } => {
                Some(next.fetch_add(1, Ordering::Relaxed) % self.items.len())
            }
            Schedule::Smooth {
                weights,
                total,
                scores,
            } => {
                let mut scores = scores.lock().unwrap_or_else(|p| p.into_inner());
                for (score, weight) in scores.iter_mut().zip(weights) {
                    *score += weight;
                }
                // The highest score wins; ties go to the first item.
                let best = (0..scores.len())
                    .max_by_key(|&i| (scores[i], std::cmp::Reverse(i)))
                    .unwrap_or(0);
                scores[best] -= total;
                Some(best)
            }
        }
    }

    /// The next item, or `None` for an empty set.
    pub fn pick(&self) -> Option<&T> {
        self.pick_index().and_then(|i| self.items.get(i))
    }

    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Each item's share of the picks (0..=1), in [`Self::items`] order.
    pub fn shares(&self) -> Vec<f64> {
        match &self.schedule {
            Schedule::Equal { .. } => vec![1.0 / self.items.len().max(1) as f64; self.items.len()],
            Schedule::Smooth { weights, total, .. } => {
                weights.iter().map(|w| *w as f64 / *total as f64).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn follows_weights_and_spreads_the_heavy_item() {
        let (a, b) = (addr(1), addr(2));
        let rr = WeightedRoundRobin::new([(a, 3), (b, 1)]);
        let picks: Vec<_> = (0..400).filter_map(|_| rr.pick().copied()).collect();
        assert_eq!(picks.iter().filter(|p| **p == a).count(), 300);
        // Spread, not bunched: b never appears twice in a row.
        assert!(picks.windows(2).all(|w| !(w[0] == b && w[1] == b)));
        assert_eq!(WeightedRoundRobin::<SocketAddr>::new([]).pick(), None);
    }

    #[test]
    fn huge_weights_cost_no_memory() {
        // A schedule expanded one slot per unit would hold 2^32 entries.
        let rr = WeightedRoundRobin::new([(addr(1), u32::MAX), (addr(2), 1)]);
        assert_eq!(rr.pick(), Some(&addr(1)));
    }

    #[test]
    fn smooth_order_for_5_1_1() {
        // The classic nginx example: a a b a c a a.
        let rr = WeightedRoundRobin::new([('a', 5), ('b', 1), ('c', 1)]);
        let order: String = (0..7).filter_map(|_| rr.pick().copied()).collect();
        assert_eq!(order, "aabacaa");
    }

    #[test]
    fn equal_weights_rotate() {
        let rr = WeightedRoundRobin::new([(1, 2), (2, 2), (3, 2)]);
        let order: Vec<_> = (0..6).filter_map(|_| rr.pick().copied()).collect();
        assert_eq!(order, [1, 2, 3, 1, 2, 3]);
    }
}
