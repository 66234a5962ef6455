//! `Cluster` and `ClusterLoadAssignment` into strait clusters. What maps
//! is listed in the README's xDS section; anything that would change
//! behaviour if ignored (a custom load-balancing policy) is refused with
//! the field that holds it. The TLS transport socket is `upstream_tls.rs`'s;
//! `ORIGINAL_DST` clusters become routes to the original destination
//! (`mod.rs`), whatever their `lb_policy` (Istio sends CLUSTER_PROVIDED).

use super::locality::{self, MAX_WEIGHT};
use super::{duration, Rejected};
use crate::balance::cluster::RING_MAX_WEIGHT;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    common_lb_config::LocalityConfigSpecifier, ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use strait_config::{
    defaults, CircuitBreaker, Cluster, DnsEndpoint, Endpoint, HashKey, LoadBalancer,
    OutlierDetection, ProxySettings, RetryBudget,
};

/// The largest limit the config file accepts.
const MAX_LIMIT: u32 = 10_000_000;

/// Where a cluster's endpoints come from.
pub enum Source<'a> {
    /// Listed in the cluster itself (`STATIC`, `STRICT_DNS`, `LOGICAL_DNS`).
    Inline,
    /// From EDS under this service name.
    Eds(&'a str),
}

/// The EDS service name of `c`, or `Inline`.
pub fn source(c: &XdsCluster) -> Source<'_> {
    match discovery_type(c) {
        Some(DiscoveryType::Eds) => Source::Eds(
            c.eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name),
        ),
        _ => Source::Inline,
    }
}

/// `ORIGINAL_DST`: no endpoints of its own; the caller routes to it as
/// the original destination.
pub fn is_original_dst(c: &XdsCluster) -> bool {
    discovery_type(c) == Some(DiscoveryType::OriginalDst)
}

fn discovery_type(c: &XdsCluster) -> Option<DiscoveryType> {
    match &c.cluster_discovery_type {
        // Unset is proto3's default: STATIC.
        None => Some(DiscoveryType::Static),
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t).ok(),
        Some(ClusterDiscoveryType::ClusterType(_)) => None,
    }
}

/// Translate one cluster. `assignment` is its EDS resource when it has
/// one (`None` for an EDS cluster still warming past its timeout: no
/// endpoints yet); `hash` is the ring-hash key its routes ask for.
pub fn cluster(
    c: &XdsCluster,
    assignment: Option<&ClusterLoadAssignment>,
    proxy: &ProxySettings,
    hash: Option<HashKey>,
) -> Result<Cluster, Rejected> {
    let reject = |field: &str, message: String| Rejected::new("Cluster", &c.name, field, message);
    let kind = discovery_type(c).ok_or_else(|| {
        reject(
            "cluster_discovery_type",
            "only STATIC, STRICT_DNS, LOGICAL_DNS and EDS clusters are supported".into(),
        )
    })?;
    let dns = match kind {
        DiscoveryType::Static | DiscoveryType::Eds => false,
        // LOGICAL_DNS uses one address at a time; every address of the
        // name is a superset that still only reaches that name.
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => true,
        DiscoveryType::OriginalDst => {
            return Err(reject(
                "type",
                "an ORIGINAL_DST cluster has no endpoints to translate".into(),
            ))
        }
    };
    if c.load_balancing_policy.is_some() {
        return Err(reject(
            "load_balancing_policy",
            "typed load-balancing policies are not supported; use lb_policy".into(),
        ));
    }
    let load_balancer = match LbPolicy::try_from(c.lb_policy) {
        Ok(LbPolicy::RoundRobin) => LoadBalancer::RoundRobin,
        Ok(LbPolicy::LeastRequest) => LoadBalancer::LeastRequest,
        Ok(LbPolicy::Random) => LoadBalancer::Random,
        // Maglev is another consistent hash: a ring gives the same
        // stickiness contract, with a little more movement on change.
        Ok(LbPolicy::RingHash | LbPolicy::Maglev) => LoadBalancer::RingHash {
            key: hash.unwrap_or(HashKey::SourceIp),
        },
        _ => {
            return Err(reject(
                "lb_policy",
                format!("policy {} is not supported: ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV", c.lb_policy),
            ))
        }
    };
    let inline;
    let assignment = match source(c) {
        Source::Eds(_) => assignment,
        Source::Inline => {
            inline = c.load_assignment.clone().unwrap_or_default();
            Some(&inline)
        }
    };
    let weighing = Weighing {
        by_locality: matches!(
            c.common_lb_config
                .as_ref()
                .and_then(|l| l.locality_config_specifier.as_ref()),
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
        ),
        // A ring stops growing past its cap; round robin and random take
        // the file's range. Least request ignores weights altogether.
        cap: match load_balancer {
            LoadBalancer::RingHash { .. } => RING_MAX_WEIGHT,
            _ => MAX_WEIGHT,
        },
    };
    let (endpoints, dns_endpoints) = match assignment {
        Some(a) => endpoints(a, dns, &weighing).map_err(|(field, message)| {
            let prefix = if matches!(source(c), Source::Inline) {
                "load_assignment."
            } else {
                ""
            };
            reject(&format!("{prefix}{field}"), message)
        })?,
        None => (Vec::new(), Vec::new()),
    };
    let connect_timeout = match &c.connect_timeout {
        None => proxy.connect_timeout,
        Some(d) => duration(d)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| reject("connect_timeout", "must be a positive duration".into()))?,
    };
    let protocol =
        super::protocol::protocol(c).map_err(|(field, message)| reject(&field, message))?;
    Ok(Cluster {
        name: c.name.clone(),
        protocol,
        connect_timeout,
        response_timeout: proxy.response_timeout,
        // Set from the transport socket by the caller.
        tls_identity: None,
        load_balancer,
        retry_budget: RetryBudget {
            percent: 20.0,
            min_per_second: 10,
            window: std::time::Duration::from_secs(10),
        },
        circuit_breaker: circuit_breaker(c).map_err(|(f, m)| reject(&f, m))?,
        outlier_detection: outlier_detection(c).map_err(|(f, m)| reject(&f, m))?,
        endpoints,
        dns_endpoints,
    })
}

/// The default-priority thresholds; unset ones keep strait's defaults
/// (the file's), which are looser than Envoy's 1024.
fn circuit_breaker(c: &XdsCluster) -> Result<CircuitBreaker, (String, String)> {
    let mut cb = CircuitBreaker {
        max_requests: 100_000,
        max_pending: 100_000,
        max_connections: 100_000,
        max_retries: 1_000,
    };
    let Some(breakers) = &c.circuit_breakers else {
        return Ok(cb);
    };
    // Priority 0 is DEFAULT; strait has no request priorities.
    let Some((i, t)) = breakers
        .thresholds
        .iter()
        .enumerate()
        .find(|(_, t)| t.priority == 0)
    else {
        return Ok(cb);
    };
    let limit =
        |field: &str, v: Option<u32>, min: u32| -> Result<Option<usize>, (String, String)> {
            match v {
                None => Ok(None),
                Some(v) if v < min => Err((
                    format!("circuit_breakers.thresholds[{i}].{field}"),
                    format!("{v} is below {min}: a zero limit would refuse every request"),
                )),
                // Istio sends u32::MAX for "no limit".
                Some(v) => Ok(Some(v.min(MAX_LIMIT) as usize)),
            }
        };
    if let Some(v) = limit("max_requests", t.max_requests.map(|w| w.value), 1)? {
        cb.max_requests = v;
    }
    if let Some(v) = limit(
        "max_pending_requests",
        t.max_pending_requests.map(|w| w.value),
        1,
    )? {
        cb.max_pending = v;
    }
    if let Some(v) = limit("max_connections", t.max_connections.map(|w| w.value), 1)? {
        cb.max_connections = v;
    }
    if let Some(v) = limit("max_retries", t.max_retries.map(|w| w.value), 0)? {
        cb.max_retries = v;
    }
    Ok(cb)
}

fn outlier_detection(c: &XdsCluster) -> Result<Option<OutlierDetection>, (String, String)> {
    let Some(o) = &c.outlier_detection else {
        return Ok(None);
    };
    let failures = o.consecutive_5xx.map_or(5, |w| w.value);
    if !(1..=1000).contains(&failures) {
        return Err((
            "outlier_detection.consecutive_5xx".into(),
            format!("{failures} is out of range: 1 to 1000"),
        ));
    }
    let base = match &o.base_ejection_time {
        None => defaults::BASE_EJECTION_TIME,
        Some(d) => duration(d).filter(|d| !d.is_zero()).ok_or_else(|| {
            (
                "outlier_detection.base_ejection_time".to_string(),
                "must be a positive duration".to_string(),
            )
        })?,
    };
    Ok(Some(OutlierDetection {
        consecutive_failures: failures,
        base_ejection_time: base,
        // Envoy's default is 10%.
        max_ejection_percent: o.max_ejection_percent.map_or(10, |w| w.value.min(100)),
    }))
}

type Endpoints = (Vec<Endpoint>, Vec<DnsEndpoint>);

/// How an assignment's weights become endpoint weights (`locality.rs`).
struct Weighing {
    /// The cluster asks for locality-weighted balancing.
    by_locality: bool,
    /// The largest weight the cluster's balancer makes use of.
    cap: u32,
}

/// Whether the control plane lets an endpoint take traffic.
fn serves(lb: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint) -> bool {
    matches!(
        HealthStatus::try_from(lb.health_status).unwrap_or(HealthStatus::Unknown),
        HealthStatus::Unknown | HealthStatus::Healthy
    )
}

/// The endpoints that may receive traffic: those in health UNKNOWN or
/// HEALTHY, of the lowest priority that has any (failover: priority 1
/// takes over only when no endpoint of priority 0 serves; Envoy's gradual
/// spill-over by overprovisioning factor is not modelled). Every endpoint
/// is checked, whatever its priority, so a broken failover target is
/// refused when it arrives, not when it is needed. Weights are the
/// endpoints' own, or with locality weights folded in (`locality.rs`). The
/// same address twice adds up its weights.
fn endpoints(
    a: &ClusterLoadAssignment,
    dns: bool,
    weighing: &Weighing,
) -> Result<Endpoints, (String, String)> {
    let active = a
        .endpoints
        .iter()
        .filter(|locality| locality.lb_endpoints.iter().any(serves))
        .map(|locality| locality.priority)
        .min();
    let weights = locality::effective(a, active, serves, weighing.by_locality, weighing.cap)?;
    let mut ips: Vec<Endpoint> = Vec::new();
    // Where each address is in `ips`: 10,000 endpoints stay linear.
    let mut index: HashMap<SocketAddr, usize> =
        HashMap::with_capacity(a.endpoints.iter().map(|l| l.lb_endpoints.len()).sum());
    let mut names: Vec<DnsEndpoint> = Vec::new();
    for (l, locality) in a.endpoints.iter().enumerate() {
        for (e, lb) in locality.lb_endpoints.iter().enumerate() {
            // Formatted only for an error: updates carry 10,000 endpoints.
            let field = |rest: &str| format!("endpoints[{l}].lb_endpoints[{e}].{rest}");
            let weight = weights[l][e];
            let socket = match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                    match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                        Some(address::Address::SocketAddress(s)) => s,
                        _ => {
                            return Err((
                                field("endpoint.address"),
                                "needs a socket_address".into(),
                            ))
                        }
                    }
                }
                _ => {
                    return Err((
                        field("endpoint"),
                        "needs an endpoint with an address".into(),
                    ))
                }
            };
            let port = match socket.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).ok().filter(|p| *p != 0)
                }
                _ => None,
            }
            .ok_or_else(|| {
                (
                    field("endpoint.address.socket_address.port_value"),
                    "needs a port from 1 to 65535".to_string(),
                )
            })?;
            // 0: not serving, another priority or a locality weighted 0.
            let take = weight > 0;
            match socket.address.parse::<IpAddr>() {
                Ok(_) if !take => {}
                Err(_) if !take && dns && !socket.address.is_empty() => {}
                Ok(ip) => {
                    let addr = SocketAddr::new(ip, port);
                    match index.get(&addr) {
                        Some(i) => ips[*i].weight = (ips[*i].weight + weight).min(weighing.cap),
                        None => {
                            index.insert(addr, ips.len());
                            ips.push(Endpoint { addr, weight });
                        }
                    }
                }
                Err(_) if dns && !socket.address.is_empty() => names.push(DnsEndpoint {
                    host: socket.address.to_ascii_lowercase(),
                    port,
                    weight,
                }),
                Err(_) => {
                    return Err((
                        field("endpoint.address.socket_address.address"),
                        format!("'{}' is not an IP address", socket.address),
                    ))
                }
            }
        }
    }
    Ok((ips, names))
}
