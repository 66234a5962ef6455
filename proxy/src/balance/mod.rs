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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Items (a cluster's endpoints, a split's clusters) picked in weighted
/// round robin. Equal weights take one atomic increment per pick. Unequal
/// weights over a few items use smooth weighted round robin (as nginx
/// does): each pick adds every item's weight to its running score and
/// takes the highest, which spreads a heavy item's turns evenly and costs
/// O(items), not O(weight). Over more items (a large cluster under
/// locality weights) that scan would be paid on every request, so they
/// take earliest-deadline-first instead (as Envoy does): each item is due
/// every 1/weight, a heap yields the next one due, O(log items) a pick.
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
    /// Earliest deadline first: each item's interval (1/weight in fixed
    /// point) and the heap of (when due, item).
    Edf {
        weights: Vec<i64>,
        total: i64,
        intervals: Vec<u128>,
        due: Mutex<BinaryHeap<Reverse<(u128, usize)>>>,
    },
}

/// Up to this many items, smooth WRR's scan is cheaper than a heap.
const SMOOTH_MAX_ITEMS: usize = 32;

/// One whole round of an EDF schedule, in fixed point: an item of weight
/// `w` is due every `EDF_ROUND / w` (u128, so no weight rounds to zero
/// and no realistic run of picks overflows).
const EDF_ROUND: u128 = 1 << 64;

impl<T> WeightedRoundRobin<T> {
    /// `items` as (item, weight); a weight of 0 counts as 1.
    pub fn new(items: impl IntoIterator<Item = (T, u32)>) -> Self {
        let (items, weights): (Vec<T>, Vec<i64>) = items
            .into_iter()
            .map(|(item, w)| (item, i64::from(w.max(1))))
            .unzip();
        let total = weights.iter().sum();
        let schedule = if weights.windows(2).all(|w| w[0] == w[1]) {
            Schedule::Equal {
                next: AtomicUsize::new(0),
            }
        } else if weights.len() <= SMOOTH_MAX_ITEMS {
            Schedule::Smooth {
                total,
                scores: Mutex::new(vec![0; weights.len()]),
                weights,
            }
        } else {
            let intervals: Vec<u128> = weights.iter().map(|w| EDF_ROUND / *w as u128).collect();
            // Item i of n is first due (2i+1)/2n of its interval in: equal
            // items then take turns in order, and a heavy item's turns
            // fall between the light ones' instead of bunching before them.
            let n = intervals.len() as u128;
            let due = intervals
                .iter()
                .enumerate()
                .map(|(i, interval)| Reverse((interval / (2 * n) * (2 * i as u128 + 1), i)))
                .collect();
            Schedule::Edf {
                total,
                weights,
                intervals,
                due: Mutex::new(due),
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
            Schedule::Edf { intervals, due, .. } => {
                let mut due = due.lock().unwrap_or_else(|p| p.into_inner());
                let mut next = due.peek_mut()?;
                let Reverse((when, item)) = *next;
                // The item is due again one interval later (ties: the
                // lower index first, so the order is deterministic).
                *next = Reverse((when.saturating_add(intervals[item]), item));
                Some(item)
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
            Schedule::Smooth { weights, total, .. } | Schedule::Edf { weights, total, .. } => {
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
    fn many_items_follow_their_weights_exactly_per_round() {
        // Over SMOOTH_MAX_ITEMS: earliest deadline first.
        let items: Vec<(usize, u32)> = (0..100).map(|i| (i, 1 + (i % 4) as u32)).collect();
        let rr = WeightedRoundRobin::new(items.iter().copied());
        assert!(matches!(rr.schedule, Schedule::Edf { .. }));
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        // Ten whole rounds: each item exactly ten times its weight.
        let mut counts = vec![0u32; items.len()];
        for _ in 0..total * 10 {
            counts[*rr.pick().expect("an item")] += 1;
        }
        for (i, w) in &items {
            assert_eq!(counts[*i], w * 10, "item {i} of weight {w}");
        }
        // Spread: the heaviest items' turns are never back to back.
        let heavy = WeightedRoundRobin::new((0..40).map(|i| (i, if i == 0 { 4 } else { 1 })));
        let picks: Vec<_> = (0..88).filter_map(|_| heavy.pick().copied()).collect();
        assert!(picks.windows(2).all(|w| !(w[0] == 0 && w[1] == 0)));
    }

    #[test]
    fn equal_weights_rotate() {
        let rr = WeightedRoundRobin::new([(1, 2), (2, 2), (3, 2)]);
        let order: Vec<_> = (0..6).filter_map(|_| rr.pick().copied()).collect();
        assert_eq!(order, [1, 2, 3, 1, 2, 3]);
    }
}
