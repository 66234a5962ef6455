//! What the listeners' filter chains say about destination ports, over
//! every listener at once: each port has at most one HTTP route table and
//! one TCP destination per server name (else which chain wins would
//! depend on matching strait does not do), and TCP proxies become
//! strait's port, destination and server-name routes and the outbound
//! default cluster.

use super::listener::{HttpChain, TcpChain};
use super::Rejected;
use std::collections::{BTreeSet, HashMap};
use strait_config::{Config, Route, RouteMatch};
use tracing::{info, warn};

/// Refuse two chains that claim the same traffic. HTTP chains for every
/// port (`None`) merge their virtual hosts, as listeners without a port
/// always have.
pub fn check_unique(http: &[HttpChain], tcp: &[TcpChain]) -> Result<(), Rejected> {
    let http = http
        .iter()
        .filter(|c| c.port.is_some())
        .map(|c| (c.port, &c.listener, &c.field));
    unique(http, "HTTP")?;
    let tcp = tcp.iter().flat_map(|c| {
        let keys = match (c.destination, c.server_names.is_empty()) {
            (Some(addr), _) => vec![Key::Destination(addr)],
            (None, true) => vec![Key::Port(c.port)],
            (None, false) => c
                .server_names
                .iter()
                .map(|n| Key::ServerName(c.port, n.as_str()))
                .collect(),
        };
        keys.into_iter()
            .map(move |key| (key, &c.listener, &c.field))
    });
    unique(tcp, "TCP")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'a> {
    Port(Option<u16>),
    Destination(std::net::SocketAddr),
    ServerName(Option<u16>, &'a str),
}

impl From<Option<u16>> for Key<'_> {
    fn from(port: Option<u16>) -> Self {
        Key::Port(port)
    }
}

fn unique<'a, K: Into<Key<'a>>>(
    chains: impl Iterator<Item = (K, &'a String, &'a String)>,
    what: &str,
) -> Result<(), Rejected> {
    let mut seen: HashMap<Key, (&String, &String)> = HashMap::new();
    for (key, listener, field) in chains {
        let key = key.into();
        if let Some((first_listener, first_field)) = seen.insert(key, (listener, field)) {
            let which = match key {
                Key::Port(None) => "every port".to_string(),
                Key::Port(Some(p)) => format!("port {p}"),
                Key::Destination(a) => a.to_string(),
                Key::ServerName(None, name) => format!("server name '{name}' on every port"),
                Key::ServerName(Some(p), name) => format!("server name '{name}' on port {p}"),
            };
            return Err(Rejected::new(
                "Listener",
                listener,
                field,
                format!(
                    "Listener '{first_listener}' {first_field} already takes the {what} traffic of {which}"
                ),
            ));
        }
    }
    Ok(())
}

/// TCP proxies onto `config`: a chain for one port becomes a port route,
/// one for every port the outbound default cluster, one with server
/// names a server-name route per name; a TCP proxy to an ORIGINAL_DST
/// cluster is what strait does anyway. What the file already routes
/// keeps its route (with a log line); a cluster still warming gets its
/// route once it is live.
pub fn tcp_routes(
    config: &mut Config,
    tcp: &[TcpChain],
    live: &BTreeSet<String>,
    warming: &BTreeSet<String>,
    original_dst: &BTreeSet<String>,
) -> Result<(), Rejected> {
    // The default first, the ports' fallbacks next, server names last: a
    // passthrough is judged by where its misses go, so every route a miss
    // could take must be in place by then.
    let named = |c: &&TcpChain| !c.server_names.is_empty();
    let mut ordered: Vec<&TcpChain> = tcp
        .iter()
        .filter(|c| c.port.is_none() && !named(c))
        .collect();
    ordered.extend(tcp.iter().filter(|c| c.port.is_some() && !named(c)));
    ordered.extend(tcp.iter().filter(named));
    for c in ordered {
        let Some((cluster, split)) = usable(config, c, live, warming, original_dst)? else {
            continue;
        };
        let route = |matches| Route {
            matches,
            cluster: cluster.clone(),
            split: split.clone(),
        };
        if !c.server_names.is_empty() {
            for name in &c.server_names {
                let matches = RouteMatch::ServerName {
                    name: name.clone(),
                    port: c.port,
                };
                if config.routes.iter().any(|r| r.matches == matches) {
                    warn!(listener = %c.listener, server_name = %name, port = c.port, "xds: server name already routed by the config file; TCP proxy left out");
                } else {
                    config.routes.push(route(matches));
                }
            }
            continue;
        }
        if let Some(addr) = c.destination {
            let taken = config
                .routes
                .iter()
                .any(|r| r.matches == RouteMatch::Destination(addr));
            if taken {
                warn!(listener = %c.listener, %addr, "xds: destination already routed by the config file; TCP proxy left out");
            } else {
                config.routes.push(route(RouteMatch::Destination(addr)));
            }
            continue;
        }
        match c.port {
            Some(port) => {
                let taken = config
                    .routes
                    .iter()
                    .any(|r| r.matches == RouteMatch::Port(port));
                if taken {
                    warn!(listener = %c.listener, port, "xds: port already routed by the config file; TCP proxy left out");
                    continue;
                }
                config.routes.push(route(RouteMatch::Port(port)));
            }
            None => {
                if config.outbound.default_cluster.is_some() {
                    warn!(listener = %c.listener, cluster = %cluster, "xds: the config file sets the outbound default cluster; TCP proxy left out");
                    continue;
                }
                config.outbound.default_cluster = Some(cluster);
            }
        }
    }
    Ok(())
}

/// (cluster, weight) of a split; empty for one cluster.
type Split = Vec<(String, u32)>;

/// A chain's (first cluster, split) once every cluster is live; `None`
/// while one warms, or for a passthrough (ORIGINAL_DST) that needs no
/// route because what it would fall into is the original destination too.
fn usable(
    config: &Config,
    c: &TcpChain,
    live: &BTreeSet<String>,
    warming: &BTreeSet<String>,
    original_dst: &BTreeSet<String>,
) -> Result<Option<(String, Split)>, Rejected> {
    let field = if c.clusters.len() > 1 {
        "typed_config.weighted_clusters"
    } else {
        "typed_config.cluster"
    };
    let reject = |message: String| {
        Rejected::new(
            "Listener",
            &c.listener,
            &format!("{}.{field}", c.field),
            message,
        )
    };
    let Some((first, _)) = c.clusters.first() else {
        return Err(reject("a cluster is required".into()));
    };
    if c.clusters.len() > 1 {
        if let Some((name, _)) = c.clusters.iter().find(|(n, _)| original_dst.contains(n)) {
            return Err(reject(format!(
                "'{name}' (ORIGINAL_DST) in a TCP split: strait's splits name clusters only"
            )));
        }
        if c.port.is_none() && c.destination.is_none() && c.server_names.is_empty() {
            return Err(reject(
                "a TCP split for every port: the outbound default cluster is one cluster".into(),
            ));
        }
    } else if original_dst.contains(first) {
        // Left out, its traffic goes where a miss goes: that must be the
        // original destination too.
        let default = config.outbound.default_cluster.as_deref();
        let miss_elsewhere = match (c.server_names.is_empty(), c.port) {
            (true, None) => false,
            (true, Some(_)) => default.is_some(),
            (false, Some(port)) => {
                default.is_some()
                    || config.routes.iter().any(|r| match r.matches {
                        RouteMatch::Port(p) => p == port,
                        RouteMatch::Destination(a) => a.port() == port,
                        _ => false,
                    })
            }
            (false, None) => {
                default.is_some()
                    || config.routes.iter().any(|r| {
                        matches!(r.matches, RouteMatch::Port(_) | RouteMatch::Destination(_))
                    })
            }
        };
        if miss_elsewhere {
            return Err(reject(format!(
                "'{first}' (ORIGINAL_DST) where unrouted traffic goes to a cluster (the default cluster '{}' or a port's route): strait's TCP routes name clusters only",
                default.unwrap_or("none")
            )));
        }
        return Ok(None);
    }
    for (name, _) in &c.clusters {
        if !live.contains(name) {
            if warming.contains(name) {
                info!(listener = %c.listener, cluster = %name, "xds: TCP route waits for its cluster to warm");
                return Ok(None);
            }
            return Err(reject(format!("no cluster '{name}'")));
        }
    }
    let split = if c.clusters.len() > 1 {
        c.clusters.clone()
    } else {
        Vec::new()
    };
    Ok(Some((first.clone(), split)))
}
