//! What the listeners' filter chains say about destination ports, over
//! every listener at once: each port has at most one HTTP route table and
//! one TCP destination (else which chain wins would depend on matching
//! strait does not do), and TCP proxies become strait's port routes and
//! the outbound default cluster.

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
    let tcp = tcp.iter().map(|c| {
        let key = match c.destination {
            Some(addr) => Key::Destination(addr),
            None => Key::Port(c.port),
        };
        (key, &c.listener, &c.field)
    });
    unique(tcp, "TCP")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Port(Option<u16>),
    Destination(std::net::SocketAddr),
}

impl From<Option<u16>> for Key {
    fn from(port: Option<u16>) -> Key {
        Key::Port(port)
    }
}

fn unique<'a, K: Into<Key>>(
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
/// one for every port the outbound default cluster; a TCP proxy to an
/// ORIGINAL_DST cluster is what strait does anyway. What the file
/// already routes keeps its route (with a log line); a cluster still
/// warming gets its route once it is live.
pub fn tcp_routes(
    config: &mut Config,
    tcp: &[TcpChain],
    live: &BTreeSet<String>,
    warming: &BTreeSet<String>,
    original_dst: &BTreeSet<String>,
) -> Result<(), Rejected> {
    let reject = |c: &TcpChain, message: String| {
        Rejected::new(
            "Listener",
            &c.listener,
            &format!("{}.typed_config.cluster", c.field),
            message,
        )
    };
    // The default first: a port's passthrough must not fall into it.
    let mut ordered: Vec<&TcpChain> = tcp.iter().filter(|c| c.port.is_none()).collect();
    ordered.extend(tcp.iter().filter(|c| c.port.is_some()));
    for c in ordered {
        if original_dst.contains(&c.cluster) {
            if (c.port.is_some() || c.destination.is_some())
                && config.outbound.default_cluster.is_some()
            {
                return Err(reject(
                    c,
                    format!(
                        "'{}' (ORIGINAL_DST) for one port while unrouted traffic goes to the default cluster '{}': strait's port routes name clusters only",
                        c.cluster,
                        config.outbound.default_cluster.as_deref().unwrap_or_default()
                    ),
                ));
            }
            continue;
        }
        if !live.contains(&c.cluster) {
            if warming.contains(&c.cluster) {
                info!(listener = %c.listener, cluster = %c.cluster, "xds: TCP route waits for its cluster to warm");
                continue;
            }
            return Err(reject(c, format!("no cluster '{}'", c.cluster)));
        }
        if let Some(addr) = c.destination {
            let taken = config
                .routes
                .iter()
                .any(|r| r.matches == RouteMatch::Destination(addr));
            if taken {
                warn!(listener = %c.listener, %addr, "xds: destination already routed by the config file; TCP proxy left out");
            } else {
                config.routes.push(Route {
                    matches: RouteMatch::Destination(addr),
                    cluster: c.cluster.clone(),
                });
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
                config.routes.push(Route {
                    matches: RouteMatch::Port(port),
                    cluster: c.cluster.clone(),
                });
            }
            None => {
                if config.outbound.default_cluster.is_some() {
                    warn!(listener = %c.listener, cluster = %c.cluster, "xds: the config file sets the outbound default cluster; TCP proxy left out");
                    continue;
                }
                config.outbound.default_cluster = Some(c.cluster.clone());
            }
        }
    }
    Ok(())
}
