//! Endpoint weights of a `ClusterLoadAssignment`, with locality weights
//! folded in. strait's balancers take one flat list of (endpoint, weight),
//! so Envoy's two-step pick (a locality by its weight, then an endpoint in
//! it by the endpoints' weights) becomes one weight per endpoint with the
//! same share of traffic: `locality weight x endpoint weight / the sum of
//! the endpoint weights in its locality`, so a locality's share does not
//! depend on how many endpoints it has.
//!
//! Envoy's rules, kept: locality weights count only when the cluster asks
//! for locality-weighted balancing (`common_lb_config.
//! locality_weighted_lb_config`, which Istio sets when it distributes by
//! locality); then a locality without a weight, or with 0, takes no
//! traffic, and a locality with some endpoints unable to serve keeps its
//! whole weight while `overprovisioning_factor` (default 140 %) x the
//! share that serves is at least 100 %, and loses in proportion below.
//! When no weighted locality can serve, Envoy falls back to every serving
//! endpoint by its own weight; so does strait. The sum of the locality
//! weights of a priority must fit a u32 (Envoy's limit), else the update
//! is refused.
//!
//! Weights are exact integers when they fit the balancer's range (3:1 over
//! one endpoint and three gives 9,1,1,1), else scaled to it and rounded
//! (every endpoint of a locality with traffic keeps at least 1).

use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};

/// The largest endpoint weight EDS may send (the config file's limit).
pub const MAX_WEIGHT: u32 = 10_000;

/// Envoy's default `overprovisioning_factor`, in percent.
const DEFAULT_OVERPROVISIONING: u32 = 140;

/// Each lb_endpoint's weight, by `[locality][endpoint]` as in `a`; 0 for
/// endpoints that take no traffic (not serving, another priority, a
/// locality weighted 0). `active` is the priority in use, `serves` says
/// which endpoints may take traffic, `locality_weighted` is the cluster's
/// choice, and `cap` the largest weight the cluster's balancer uses.
pub fn effective(
    a: &ClusterLoadAssignment,
    active: Option<u32>,
    serves: impl Fn(&LbEndpoint) -> bool,
    locality_weighted: bool,
    cap: u32,
) -> Result<Vec<Vec<u32>>, (String, String)> {
    // The endpoints' own weights, checked everywhere, used where they serve.
    let mut own: Vec<Vec<u32>> = Vec::with_capacity(a.endpoints.len());
    for (l, locality) in a.endpoints.iter().enumerate() {
        let mut weights = Vec::with_capacity(locality.lb_endpoints.len());
        for (e, lb) in locality.lb_endpoints.iter().enumerate() {
            let weight = lb.load_balancing_weight.map_or(1, |w| w.value);
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return Err((
                    format!("endpoints[{l}].lb_endpoints[{e}].load_balancing_weight"),
                    format!("{weight} is out of range: 1 to {MAX_WEIGHT}"),
                ));
            }
            let take = serves(lb) && Some(locality.priority) == active;
            weights.push(if take { weight } else { 0 });
        }
        own.push(weights);
    }
    if !locality_weighted {
        return Ok(own);
    }
    check_sums(a)?;
    let factor = a
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor)
        .map_or(DEFAULT_OVERPROVISIONING, |f| f.value);
    // Each locality's share as a fraction: weight x availability / the sum
    // of its serving endpoint weights (endpoint e then gets e's weight
    // times it). None for a locality without traffic.
    let shares: Vec<Option<Fraction>> = a
        .endpoints
        .iter()
        .zip(&own)
        .map(|(locality, weights)| {
            let weight = u128::from(locality.load_balancing_weight.map_or(0, |w| w.value));
            let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
            let serving = weights.iter().filter(|w| **w > 0).count() as u128;
            let total = weights.len() as u128;
            if weight == 0 || sum == 0 {
                return None;
            }
            // availability = min(1, factor% x serving / total), kept exact.
            let available = (u128::from(factor) * serving).min(100 * total);
            if available == 0 {
                return None;
            }
            Some(Fraction {
                num: weight * available,
                den: 100 * total * sum,
            })
        })
        .collect();
    if shares.iter().all(Option::is_none) {
        // No weighted locality serves: Envoy's fallback, every serving
        // endpoint by its own weight.
        return Ok(own);
    }
    Ok(exact(&own, &shares, cap).unwrap_or_else(|| scaled(&own, &shares, cap)))
}

/// `num / den`, both positive.
#[derive(Clone, Copy)]
struct Fraction {
    num: u128,
    den: u128,
}

/// Envoy refuses a priority whose locality weights add up past u32::MAX.
fn check_sums(a: &ClusterLoadAssignment) -> Result<(), (String, String)> {
    let mut sums: std::collections::BTreeMap<u32, u64> = Default::default();
    for (l, locality) in a.endpoints.iter().enumerate() {
        let sum = sums.entry(locality.priority).or_default();
        *sum += u64::from(locality.load_balancing_weight.map_or(0, |w| w.value));
        if *sum > u64::from(u32::MAX) {
            return Err((
                format!("endpoints[{l}].load_balancing_weight"),
                format!(
                    "the locality weights of priority {} add up to more than {}",
                    locality.priority,
                    u32::MAX
                ),
            ));
        }
    }
    Ok(())
}

/// Integer weights with exactly the shares, reduced, if they fit `cap`.
fn exact(own: &[Vec<u32>], shares: &[Option<Fraction>], cap: u32) -> Option<Vec<Vec<u32>>> {
    let mut den: u128 = 1;
    for s in shares.iter().flatten() {
        den = lcm(den, s.den)?;
    }
    let mut raw: Vec<Vec<u128>> = Vec::with_capacity(own.len());
    let mut divisor: u128 = 0;
    for (weights, share) in own.iter().zip(shares) {
        let mut row = Vec::with_capacity(weights.len());
        for w in weights {
            let v = match share {
                Some(s) => (den / s.den)
                    .checked_mul(s.num)?
                    .checked_mul(u128::from(*w))?,
                None => 0,
            };
            divisor = gcd(divisor, v);
            row.push(v);
        }
        raw.push(row);
    }
    let divisor = divisor.max(1);
    raw.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| u32::try_from(v / divisor).ok().filter(|v| *v <= cap))
                .collect()
        })
        .collect()
}

/// Weights scaled so the largest is `cap`, rounded, at least 1 where the
/// share is not 0.
fn scaled(own: &[Vec<u32>], shares: &[Option<Fraction>], cap: u32) -> Vec<Vec<u32>> {
    let value = |w: u32, s: &Option<Fraction>| match s {
        Some(s) if w > 0 => f64::from(w) * s.num as f64 / s.den as f64,
        _ => 0.0,
    };
    let largest = own
        .iter()
        .zip(shares)
        .flat_map(|(ws, s)| ws.iter().map(move |w| value(*w, s)))
        .fold(0.0, f64::max);
    own.iter()
        .zip(shares)
        .map(|(ws, s)| {
            ws.iter()
                .map(|w| match value(*w, s) {
                    v if v > 0.0 => ((v / largest * f64::from(cap)).round() as u32).clamp(1, cap),
                    _ => 0,
                })
                .collect()
        })
        .collect()
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn lcm(a: u128, b: u128) -> Option<u128> {
    (a / gcd(a, b)).checked_mul(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy;
    use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
    use envoy_types::pb::google::protobuf::UInt32Value;

    /// An endpoint of this weight; `up` false makes it unable to serve.
    fn ep(weight: u32, up: bool) -> LbEndpoint {
        LbEndpoint {
            load_balancing_weight: Some(UInt32Value { value: weight }),
            // HealthStatus::Unhealthy = 2 marks the ones that do not serve.
            health_status: if up { 0 } else { 2 },
            ..Default::default()
        }
    }

    fn locality(weight: Option<u32>, endpoints: Vec<LbEndpoint>) -> LocalityLbEndpoints {
        LocalityLbEndpoints {
            load_balancing_weight: weight.map(|value| UInt32Value { value }),
            lb_endpoints: endpoints,
            ..Default::default()
        }
    }

    fn cla(localities: Vec<LocalityLbEndpoints>) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            endpoints: localities,
            ..Default::default()
        }
    }

    fn weights(a: &ClusterLoadAssignment, weighted: bool, cap: u32) -> Vec<Vec<u32>> {
        effective(a, Some(0), |e| e.health_status == 0, weighted, cap).expect("valid")
    }

    /// Each locality's share of the traffic.
    fn shares(w: &[Vec<u32>]) -> Vec<f64> {
        let total: u32 = w.iter().flatten().sum();
        w.iter()
            .map(|l| f64::from(l.iter().sum::<u32>()) / f64::from(total))
            .collect()
    }

    #[test]
    fn a_locality_gets_its_weight_share_whatever_its_endpoint_count() {
        let a = cla(vec![
            locality(Some(3), vec![ep(1, true)]),
            locality(Some(1), vec![ep(1, true), ep(1, true), ep(1, true)]),
        ]);
        assert_eq!(weights(&a, true, MAX_WEIGHT), vec![vec![9], vec![1, 1, 1]]);
        // Without locality-weighted balancing the weights are ignored.
        assert_eq!(weights(&a, false, MAX_WEIGHT), vec![vec![1], vec![1, 1, 1]]);
    }

    #[test]
    fn endpoint_weights_split_their_locality_share() {
        let a = cla(vec![
            locality(Some(1), vec![ep(3, true), ep(1, true)]),
            locality(Some(1), vec![ep(5, true)]),
        ]);
        // 1/2 x 3/4, 1/2 x 1/4, 1/2.
        assert_eq!(weights(&a, true, MAX_WEIGHT), vec![vec![3, 1], vec![4]]);
    }

    #[test]
    fn zero_or_missing_locality_weight_takes_no_traffic() {
        let a = cla(vec![
            locality(Some(2), vec![ep(1, true)]),
            locality(Some(0), vec![ep(1, true)]),
            locality(None, vec![ep(1, true)]),
        ]);
        assert_eq!(
            weights(&a, true, MAX_WEIGHT),
            vec![vec![1], vec![0], vec![0]]
        );
    }

    #[test]
    fn no_weighted_locality_serving_falls_back_to_endpoint_weights() {
        let a = cla(vec![
            locality(Some(5), vec![ep(1, false)]),
            locality(None, vec![ep(2, true), ep(1, true)]),
        ]);
        assert_eq!(weights(&a, true, MAX_WEIGHT), vec![vec![0], vec![2, 1]]);
    }

    #[test]
    fn partly_down_locality_loses_share_past_overprovisioning() {
        // Envoy's documented table: X weight 1, Y weight 2, factor 1.4.
        let x = |up: usize| (0..10).map(|i| ep(1, i < up)).collect::<Vec<_>>();
        let y = || (0..10).map(|_| ep(1, true)).collect::<Vec<_>>();
        let share_x = |up| {
            let a = cla(vec![locality(Some(1), x(up)), locality(Some(2), y())]);
            shares(&weights(&a, true, MAX_WEIGHT))[0]
        };
        assert!((share_x(10) - 1.0 / 3.0).abs() < 1e-9);
        assert!((share_x(8) - 1.0 / 3.0).abs() < 1e-9, "80 % x 1.4 >= 1");
        // 50 %: 0.7 / (0.7 + 2) = 26 %.
        assert!((share_x(5) - 0.7 / 2.7).abs() < 1e-9);
        let mut a = cla(vec![locality(Some(1), x(5)), locality(Some(2), y())]);
        a.policy = Some(Policy {
            overprovisioning_factor: Some(UInt32Value { value: 100 }),
            ..Default::default()
        });
        assert!((shares(&weights(&a, true, MAX_WEIGHT))[0] - 0.5 / 2.5).abs() < 1e-9);
    }

    #[test]
    fn shares_that_do_not_fit_are_scaled_and_rounded_never_to_zero() {
        // 10,000 endpoints in one locality against one in another, 1:1:
        // exact weights would be 10,000 and 1 x 10,000; the cap forces
        // scaling, and the crowd's endpoints stay at 1.
        let a = cla(vec![
            locality(Some(1), vec![ep(1, true)]),
            locality(Some(1), (0..10_000).map(|_| ep(1, true)).collect()),
        ]);
        let w = weights(&a, true, 100);
        assert_eq!(w[0], vec![100]);
        assert!(w[1].iter().all(|w| *w == 1));
        // Large weights and odd counts: within a rounding step of exact.
        let a = cla(vec![
            locality(Some(4_000_000_000), vec![ep(7, true); 3]),
            locality(Some(294_967_295), vec![ep(9_999, true); 7]),
        ]);
        let got = shares(&weights(&a, true, MAX_WEIGHT));
        let want = 4e9 / 4_294_967_295.0;
        assert!((got[0] - want).abs() < 1e-3, "{got:?} against {want}");
    }

    #[test]
    fn locality_weights_past_u32_are_refused_with_their_field() {
        let a = cla(vec![
            locality(Some(u32::MAX), vec![ep(1, true)]),
            locality(Some(1), vec![ep(1, true)]),
        ]);
        let (field, message) =
            effective(&a, Some(0), |_| true, true, MAX_WEIGHT).expect_err("refused");
        assert_eq!(field, "endpoints[1].load_balancing_weight");
        assert!(message.contains("priority 0"), "{message}");
        // Ignored weights are not checked: Envoy reads them only when asked.
        assert!(effective(&a, Some(0), |_| true, false, MAX_WEIGHT).is_ok());
    }

    #[test]
    fn endpoint_weights_out_of_range_are_refused() {
        let a = cla(vec![locality(Some(1), vec![ep(1, true), ep(0, true)])]);
        let (field, _) = effective(&a, Some(0), |_| true, true, MAX_WEIGHT).expect_err("0");
        assert_eq!(field, "endpoints[0].lb_endpoints[1].load_balancing_weight");
    }
}
