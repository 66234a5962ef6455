//! From accepted xDS resources to one validated [`Config`]: the file's
//! config with the control plane's clusters and virtual hosts added, and
//! its inbound listeners' mTLS modes and RBAC as the inbound policy. The
//! same function runs for every update, over every accepted resource, so
//! the result never depends on the order updates came in. Anything that
//! cannot be translated is a [`Rejected`] naming the resource and field,
//! which the client sends back as the NACK's `error_detail`.

mod cluster;
mod fault;
mod inbound;
#[cfg(test)]
mod inbound_principal_tests;
#[cfg(test)]
mod inbound_tests;
mod listener;
#[cfg(test)]
mod listener_tests;
mod locality;
mod ports;
mod protocol;
mod rate_limit;
mod rbac;
mod rbac_regex;
mod route;
mod secret;
mod upstream_tls;

use super::state::Resources;
use crate::tls::material::Material;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use strait_config::file::FileVirtualHost;
use strait_config::lines::LineIndex;
use strait_config::{Config, IdentitySource};
use tracing::warn;

/// Why a resource was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub message: String,
}

impl Rejected {
    fn new(kind: &'static str, name: &str, field: &str, message: String) -> Rejected {
        Rejected {
            kind,
            name: name.to_string(),
            field: field.to_string(),
            message,
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} '{}': {}: {}",
            self.kind, self.name, self.field, self.message
        )
    }
}

/// What a translation produced besides the config: what to subscribe to.
#[derive(Debug)]
pub struct Translated {
    pub config: Config,
    /// EDS service names of the clusters.
    pub eds_names: BTreeSet<String>,
    /// RDS names of the listeners.
    pub rds_names: BTreeSet<String>,
    /// SDS secrets: the identity's and those TLS clusters name.
    pub sds_names: BTreeSet<String>,
    /// Clusters waiting for their endpoints or secrets (not live).
    pub warming: BTreeSet<String>,
    /// The workload identity from SDS, once both its secrets are held.
    pub identity: Option<Material>,
}

/// Merge `resources` into `base`. `expired` are clusters whose
/// `initial_fetch_timeout` passed: they go live without what they waited
/// for (no endpoints yet; TLS handshakes failing until the identity comes).
pub fn translate(
    base: &Config,
    resources: &Resources,
    expired: &HashSet<String>,
) -> Result<Translated, Rejected> {
    // Listeners first: they say which route configs are in use, and for
    // which destination ports.
    let mut rds_names = BTreeSet::new();
    let mut http = Vec::new();
    let mut tcp = Vec::new();
    let mut inbound_listeners = Vec::new();
    for l in resources.listeners.values() {
        if inbound::is_inbound(l) {
            inbound_listeners.push(l);
            continue;
        }
        let routes = listener::listener(l)?;
        for chain in &routes.http {
            if let listener::HttpRoutes::Rds(name) = &chain.routes {
                rds_names.insert(name.clone());
            }
        }
        http.extend(routes.http);
        tcp.extend(routes.tcp);
    }
    ports::check_unique(&http, &tcp)?;

    let sds = match base.identity.as_ref().map(|i| &i.source) {
        Some(IdentitySource::Sds(sds)) => Some(sds),
        _ => None,
    };
    let identity = secret::identity(&resources.secrets, sds)?;
    let inbound_policy = inbound::inbound(&inbound_listeners, sds)?;
    let mut sds_names: BTreeSet<String> = sds
        .map(|s| [s.certificate.clone(), s.trust_bundle.clone()].into())
        .unwrap_or_default();

    // Which clusters can take traffic.
    let file_clusters: HashSet<&str> = base.clusters.iter().map(|c| c.name.as_str()).collect();
    let mut eds_names = BTreeSet::new();
    let mut live: BTreeSet<String> = base.clusters.iter().map(|c| c.name.clone()).collect();
    let mut warming = BTreeSet::new();
    let mut tls_of = HashMap::new();
    let mut original_dst = BTreeSet::new();
    for (name, c) in &resources.clusters {
        if file_clusters.contains(name.as_str()) {
            return Err(Rejected::new(
                "Cluster",
                name,
                "name",
                "a cluster of this name is defined in the config file".into(),
            ));
        }
        let tls = upstream_tls::upstream_tls(c, sds)?;
        if cluster::is_original_dst(c) {
            if tls.is_some() {
                return Err(Rejected::new(
                    "Cluster",
                    name,
                    "transport_socket",
                    "TLS to original destinations is not supported".into(),
                ));
            }
            // No endpoints to wait for: routes to it forward each request
            // to where its connection was going.
            original_dst.insert(name.clone());
            live.insert(name.clone());
            continue;
        }
        let secrets_held = tls.as_ref().is_none_or(|t| {
            sds_names.extend(t.secrets.iter().cloned());
            t.secrets.iter().all(|s| resources.secrets.contains_key(s))
        });
        let endpoints_held = match cluster::source(c) {
            cluster::Source::Eds(service) => {
                eds_names.insert(service.to_string());
                resources.endpoints.contains_key(service)
            }
            cluster::Source::Inline => true,
        };
        if (endpoints_held && secrets_held) || expired.contains(name) {
            live.insert(name.clone());
        } else {
            warming.insert(name.clone());
        }
        tls_of.insert(name.as_str(), tls);
    }

    // Routes, in the file's shape; they also say which header a ring
    // hash cluster hashes.
    let mut hash = HashMap::new();
    let mut hosts = Vec::new();
    // A route config serves the ports of the chains that name it; one
    // named by chains of several ports is translated once for each.
    let mut named = HashSet::new();
    let mut translated = HashSet::new();
    for chain in &http {
        let rc = match &chain.routes {
            listener::HttpRoutes::Rds(name) => match resources.routes.get(name) {
                Some(rc) => rc,
                None => continue,
            },
            listener::HttpRoutes::Inline(rc) => rc.as_ref(),
        };
        if !translated.insert((rc.name.clone(), chain.port)) {
            continue;
        }
        let usage = route::Use {
            port: chain.port,
            prefix: (!named.insert(rc.name.clone())).then(|| {
                format!(
                    "{}:{}",
                    rc.name,
                    chain.port.map_or("*".into(), |p| p.to_string())
                )
            }),
            fault: chain.fault.clone(),
        };
        route::route_config_for(rc, &usage, &live, &mut hash, &mut hosts)?;
    }
    to_original_destination(&mut hosts, &original_dst)?;

    let mut config = base.clone();
    inbound_policy.apply(&mut config.policy);
    ports::tcp_routes(&mut config, &tcp, &live, &warming, &original_dst)?;
    for (name, c) in &resources.clusters {
        if warming.contains(name) || original_dst.contains(name) {
            continue;
        }
        let assignment = match cluster::source(c) {
            cluster::Source::Eds(service) => resources.endpoints.get(service),
            cluster::Source::Inline => None,
        };
        let mut translated =
            cluster::cluster(c, assignment, &config.proxy, hash.get(name).cloned())?;
        translated.tls_identity = tls_of
            .get(name.as_str())
            .and_then(|t| t.as_ref())
            .map(|t| t.identity.clone());
        config.clusters.push(translated);
    }
    config
        .virtual_hosts
        .extend(virtual_hosts(base, hosts, &live)?);
    Ok(Translated {
        config,
        eds_names,
        rds_names,
        sds_names,
        warming,
        identity,
    })
}

/// Routes to an ORIGINAL_DST cluster forward to the original destination;
/// a weighted split cannot mix it with clusters.
fn to_original_destination(
    hosts: &mut [(FileVirtualHost, route::Origin)],
    original_dst: &BTreeSet<String>,
) -> Result<(), Rejected> {
    if original_dst.is_empty() {
        return Ok(());
    }
    for (host, origin) in hosts.iter_mut() {
        for (r, rule) in host.routes.iter_mut().enumerate() {
            if rule
                .cluster
                .as_ref()
                .is_some_and(|c| original_dst.contains(c))
            {
                rule.cluster = None;
                rule.original_destination = Some(true);
            }
            let split = rule.split.iter().flatten();
            if let Some(s) = split
                .into_iter()
                .find(|s| original_dst.contains(&s.cluster))
            {
                return Err(Rejected::new(
                    "RouteConfiguration",
                    &origin.route_config,
                    &format!(
                        "virtual_hosts[{}].routes[{r}].route.weighted_clusters",
                        origin.index
                    ),
                    format!(
                        "'{}' is an ORIGINAL_DST cluster: it cannot be part of a weighted split",
                        s.cluster
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Validate the translated hosts with the file's own rules. strait has
/// one routing table: a domain the file (or an earlier route config)
/// claims is left out of a later one, with a log line.
fn virtual_hosts(
    base: &Config,
    hosts: Vec<(FileVirtualHost, route::Origin)>,
    clusters: &BTreeSet<String>,
) -> Result<Vec<strait_config::VirtualHost>, Rejected> {
    let mut claimed: HashSet<(Option<i64>, String)> = base
        .virtual_hosts
        .iter()
        .flat_map(|h| h.domains.iter().map(|d| (h.port.map(i64::from), d.clone())))
        .collect();
    let mut files = Vec::new();
    let mut origins = Vec::new();
    for (mut host, origin) in hosts {
        let port = host.port;
        host.domains.retain(|d| {
            let fresh = claimed.insert((port, d.clone()));
            if !fresh {
                warn!(route_config = %origin.route_config, domain = %d, "xds: domain already routed by the config file or another route config; left out");
            }
            fresh
        });
        if !host.domains.is_empty() {
            files.push(host);
            origins.push(origin);
        }
    }
    let names: std::collections::HashSet<String> = clusters.iter().cloned().collect();
    strait_config::vhosts::virtual_hosts(&LineIndex::build(""), files, &names).map_err(|e| {
        let text = e.to_string();
        let field = e.at().map(|a| a.field.clone()).unwrap_or_default();
        let message = text
            .strip_prefix(&field)
            .unwrap_or(&text)
            .trim_start_matches(": ")
            .to_string();
        // "virtual_hosts[k].rest" -> the k-th host's route config.
        let parsed = field
            .strip_prefix("virtual_hosts[")
            .and_then(|rest| rest.split_once(']'))
            .and_then(|(k, rest)| Some((k.parse::<usize>().ok()?, rest)));
        match parsed.and_then(|(k, rest)| Some((origins.get(k)?, rest))) {
            Some((origin, rest)) => Rejected::new(
                "RouteConfiguration",
                &origin.route_config,
                &format!("virtual_hosts[{}]{rest}", origin.index),
                message,
            ),
            None => Rejected::new("RouteConfiguration", "?", &field, message),
        }
    })
}

/// A protobuf duration; `None` when negative or out of range.
fn duration(d: &PbDuration) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Duration::new(secs, 0).checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// A protobuf duration in the file's words; `None` for zero.
fn duration_text(d: &PbDuration) -> Option<String> {
    duration(d).filter(|d| !d.is_zero()).map(humantime_like)
}

/// `250ms`, `2s`: what the file's duration parser reads back exactly.
fn humantime_like(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_millis() * 1_000_000 == d.subsec_nanos() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address, Address, HealthStatus, SocketAddress, TransportSocket,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, RouteConfiguration, VirtualHost,
    };
    use envoy_types::pb::google::protobuf::UInt32Value;
    use strait_config::{HashKey, LoadBalancer};

    fn base() -> Config {
        Config::from_yaml("").expect("empty config")
    }

    fn eds(name: &str, lb: cluster::LbPolicy) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            lb_policy: lb as i32,
            ..Default::default()
        }
    }

    fn endpoint(ip: &str, port: u32, health: HealthStatus, weight: u32) -> LbEndpoint {
        LbEndpoint {
            health_status: health as i32,
            load_balancing_weight: Some(UInt32Value { value: weight }),
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn cla(name: &str, endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn with(clusters: Vec<Cluster>, endpoints: Vec<ClusterLoadAssignment>) -> Resources {
        Resources {
            clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
            endpoints: endpoints
                .into_iter()
                .map(|e| (e.cluster_name.clone(), e))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_healthy_and_unknown_endpoints_take_traffic_with_their_weights() {
        let r = with(
            vec![eds("web", cluster::LbPolicy::RoundRobin)],
            vec![cla(
                "web",
                vec![
                    endpoint("10.0.0.1", 80, HealthStatus::Healthy, 3),
                    endpoint("10.0.0.2", 80, HealthStatus::Unknown, 1),
                    endpoint("10.0.0.3", 80, HealthStatus::Unhealthy, 1),
                    endpoint("10.0.0.4", 80, HealthStatus::Draining, 1),
                ],
            )],
        );
        let t = translate(&base(), &r, &HashSet::new()).expect("translates");
        let web = t.config.cluster("web").expect("live");
        let got: Vec<(String, u32)> = web
            .endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:80".to_string(), 3),
                ("10.0.0.2:80".to_string(), 1)
            ]
        );
        assert_eq!(web.load_balancer, LoadBalancer::RoundRobin);
    }

    #[test]
    fn locality_weights_apply_when_the_cluster_asks_and_fit_its_balancer() {
        // 1:1 over one endpoint and 200: exact weights 200 and 1 x 200.
        let localities = || ClusterLoadAssignment {
            cluster_name: "web".into(),
            endpoints: vec![
                LocalityLbEndpoints {
                    load_balancing_weight: Some(UInt32Value { value: 1 }),
                    lb_endpoints: vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy, 1)],
                    ..Default::default()
                },
                LocalityLbEndpoints {
                    load_balancing_weight: Some(UInt32Value { value: 1 }),
                    lb_endpoints: (0..200)
                        .map(|i| endpoint("10.0.1.1", 1000 + i, HealthStatus::Healthy, 1))
                        .collect(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let weights = |lb: cluster::LbPolicy, weighted: bool| -> Vec<u32> {
            let mut c = eds("web", lb);
            if weighted {
                c.common_lb_config = Some(cluster::CommonLbConfig {
                    locality_config_specifier: Some(
                        cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                });
            }
            let t = translate(&base(), &with(vec![c], vec![localities()]), &HashSet::new())
                .expect("translates");
            let web = t.config.cluster("web").expect("live");
            web.endpoints.iter().map(|e| e.weight).collect()
        };
        let rr = weights(cluster::LbPolicy::RoundRobin, true);
        assert_eq!((rr[0], rr[1], rr.len()), (200, 1, 201));
        // A ring stops growing at weight 100: scaled to it, never to 0.
        let ring = weights(cluster::LbPolicy::RingHash, true);
        assert_eq!((ring[0], ring[1]), (100, 1));
        // Without locality-weighted balancing, every endpoint is equal.
        assert!(weights(cluster::LbPolicy::RoundRobin, false)
            .iter()
            .all(|w| *w == 1));
    }

    #[test]
    fn the_lowest_priority_with_a_serving_endpoint_takes_all_traffic() {
        let locality = |priority: u32, endpoints: Vec<LbEndpoint>| LocalityLbEndpoints {
            priority,
            lb_endpoints: endpoints,
            ..Default::default()
        };
        let addrs = |health_0: HealthStatus| {
            let mut a = cla("web", vec![]);
            a.endpoints = vec![
                locality(2, vec![endpoint("10.0.2.1", 80, HealthStatus::Healthy, 1)]),
                locality(0, vec![endpoint("10.0.0.1", 80, health_0, 1)]),
                locality(1, vec![endpoint("10.0.1.1", 80, HealthStatus::Unknown, 1)]),
                locality(1, vec![endpoint("10.0.1.2", 80, HealthStatus::Degraded, 1)]),
            ];
            let r = with(vec![eds("web", cluster::LbPolicy::RoundRobin)], vec![a]);
            let t = translate(&base(), &r, &HashSet::new()).expect("translates");
            let web = t.config.cluster("web").expect("live");
            web.endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(addrs(HealthStatus::Healthy), ["10.0.0.1:80"]);
        assert_eq!(
            addrs(HealthStatus::Unhealthy),
            ["10.0.1.1:80"],
            "priority 0 has none serving: priority 1's serving endpoints"
        );
        // A broken endpoint is refused even where it takes no traffic.
        let mut a = cla(
            "web",
            vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy, 1)],
        );
        a.endpoints.push(locality(
            1,
            vec![endpoint("10.0.1.1", 80, HealthStatus::Healthy, 0)],
        ));
        let r = with(vec![eds("web", cluster::LbPolicy::RoundRobin)], vec![a]);
        let e = translate(&base(), &r, &HashSet::new()).expect_err("refused");
        assert_eq!(
            e.field,
            "endpoints[1].lb_endpoints[0].load_balancing_weight"
        );
    }

    #[test]
    fn an_eds_cluster_warms_until_its_endpoints_come_and_routes_to_it_answer_503() {
        let mut r = with(vec![eds("web", cluster::LbPolicy::Maglev)], vec![]);
        r.routes.insert(
            "rc".into(),
            RouteConfiguration {
                name: "rc".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "vh".into(),
                    domains: vec!["web:8080".into(), "web".into()],
                    routes: vec![Route {
                        action: Some(Action::Route(RouteAction {
                            cluster_specifier: Some(ClusterSpecifier::Cluster("web".into())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        // Routes are in use only when a listener names them: call the
        // route translation as a listener's RDS would.
        let t = translate(&base(), &r, &HashSet::new()).expect("translates");
        assert!(t.warming.contains("web"));
        assert!(t.config.cluster("web").is_none(), "not live while warming");
        assert_eq!(t.eds_names, ["web".to_string()].into());

        let mut live = BTreeSet::new();
        let mut hosts = Vec::new();
        route::route_config(&r.routes["rc"], &live, &mut HashMap::new(), &mut hosts)
            .expect("routes");
        let (host, _) = &hosts[0];
        assert_eq!(host.domains, ["web"], "ports are stripped and deduplicated");
        assert!(host.routes[0]
            .direct_response
            .as_ref()
            .is_some_and(|d| d.status == 503));

        live.insert("web".to_string());
        hosts.clear();
        route::route_config(&r.routes["rc"], &live, &mut HashMap::new(), &mut hosts)
            .expect("routes");
        assert_eq!(hosts[0].0.routes[0].cluster.as_deref(), Some("web"));

        // Past initial_fetch_timeout it is live with no endpoints;
        // MAGLEV becomes a ring hash on the source IP.
        let expired: HashSet<String> = ["web".to_string()].into();
        let t = translate(&base(), &r, &expired).expect("translates");
        let web = t.config.cluster("web").expect("live after the timeout");
        assert!(web.endpoints.is_empty());
        assert_eq!(
            web.load_balancer,
            LoadBalancer::RingHash {
                key: HashKey::SourceIp
            }
        );
    }

    #[test]
    fn routes_to_an_original_dst_cluster_forward_to_the_original_destination() {
        // Istio's PassthroughCluster: ORIGINAL_DST with CLUSTER_PROVIDED.
        let mut passthrough = eds("PassthroughCluster", cluster::LbPolicy::ClusterProvided);
        passthrough.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        ));
        let r = with(vec![passthrough], vec![]);
        let t = translate(&base(), &r, &HashSet::new()).expect("translates");
        assert!(t.warming.is_empty(), "nothing to wait for");
        assert!(t.eds_names.is_empty());
        assert!(
            t.config.cluster("PassthroughCluster").is_none(),
            "no strait cluster: it has no endpoints of its own"
        );

        let to = |c: &str| Route {
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(c.into())),
                ..Default::default()
            })),
            ..Default::default()
        };
        let rc = RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![VirtualHost {
                name: "allow_any".into(),
                domains: vec!["*".into()],
                routes: vec![to("PassthroughCluster")],
                ..Default::default()
            }],
            ..Default::default()
        };
        let live: BTreeSet<String> = ["PassthroughCluster".to_string()].into();
        let original_dst = live.clone();
        let mut hosts = Vec::new();
        route::route_config(&rc, &live, &mut HashMap::new(), &mut hosts).expect("routes");
        to_original_destination(&mut hosts, &original_dst).expect("maps");
        let rule = &hosts[0].0.routes[0];
        assert_eq!(rule.cluster, None);
        assert_eq!(rule.original_destination, Some(true));
        let config = virtual_hosts(&base(), hosts, &live).expect("valid hosts");
        assert_eq!(
            config[0].routes[0].action,
            strait_config::RouteAction::OriginalDestination
        );
    }

    #[test]
    fn what_would_change_behaviour_if_ignored_is_refused_with_its_field() {
        let mut tls = eds("tls", cluster::LbPolicy::RoundRobin);
        tls.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.alts".into(),
            config_type: None,
        });
        let custom = eds("custom", cluster::LbPolicy::ClusterProvided);
        for (c, field) in [(tls, "transport_socket"), (custom, "lb_policy")] {
            let name = c.name.clone();
            let r = with(vec![c], vec![cla(&name, vec![])]);
            let e = translate(&base(), &r, &HashSet::new()).expect_err("refused");
            assert_eq!(
                (e.kind, e.name.as_str(), e.field.as_str()),
                ("Cluster", name.as_str(), field),
                "{e}"
            );
        }
        let weights = with(
            vec![eds("w", cluster::LbPolicy::RoundRobin)],
            vec![cla(
                "w",
                vec![endpoint("10.0.0.1", 80, HealthStatus::Healthy, 20_000)],
            )],
        );
        let e = translate(&base(), &weights, &HashSet::new()).expect_err("refused");
        assert_eq!(
            e.field, "endpoints[0].lb_endpoints[0].load_balancing_weight",
            "{e}"
        );
        let file =
            Config::from_yaml("clusters: [{name: web, endpoints: [{address: 10.0.0.9:80}]}]\n")
                .expect("file");
        let clash = with(vec![eds("web", cluster::LbPolicy::RoundRobin)], vec![]);
        let e = translate(&file, &clash, &HashSet::new()).expect_err("refused");
        assert!(e.to_string().contains("defined in the config file"), "{e}");
    }
}
