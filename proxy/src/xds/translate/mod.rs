//! From accepted xDS resources to one validated [`Config`]: the file's
//! config with the control plane's clusters and virtual hosts added. The
//! same function runs for every update, over every accepted resource, so
//! the result never depends on the order updates came in. Anything that
//! cannot be translated is a [`Rejected`] naming the resource and field,
//! which the client sends back as the NACK's `error_detail`.

mod cluster;
mod listener;
mod route;

use super::state::Resources;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use strait_config::file::FileVirtualHost;
use strait_config::lines::LineIndex;
use strait_config::Config;
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
pub struct Translated {
    pub config: Config,
    /// EDS service names of the clusters.
    pub eds_names: BTreeSet<String>,
    /// RDS names of the listeners.
    pub rds_names: BTreeSet<String>,
    /// EDS clusters waiting for their endpoints (not live).
    pub warming: BTreeSet<String>,
}

/// Merge `resources` into `base`. `expired` are EDS clusters whose
/// `initial_fetch_timeout` passed: they go live with no endpoints.
pub fn translate(
    base: &Config,
    resources: &Resources,
    expired: &HashSet<String>,
) -> Result<Translated, Rejected> {
    // Listeners first: they say which route configs are in use.
    let mut rds_names = BTreeSet::new();
    let mut inline = Vec::new();
    for l in resources.listeners.values() {
        let routes = listener::listener(l)?;
        rds_names.extend(routes.rds);
        inline.extend(routes.inline);
    }

    // Which clusters can take traffic.
    let file_clusters: HashSet<&str> = base.clusters.iter().map(|c| c.name.as_str()).collect();
    let mut eds_names = BTreeSet::new();
    let mut live: BTreeSet<String> = base.clusters.iter().map(|c| c.name.clone()).collect();
    let mut warming = BTreeSet::new();
    for (name, c) in &resources.clusters {
        if file_clusters.contains(name.as_str()) {
            return Err(Rejected::new(
                "Cluster",
                name,
                "name",
                "a cluster of this name is defined in the config file".into(),
            ));
        }
        match cluster::source(c) {
            cluster::Source::Eds(service) => {
                eds_names.insert(service.to_string());
                if resources.endpoints.contains_key(service) || expired.contains(name) {
                    live.insert(name.clone());
                } else {
                    warming.insert(name.clone());
                }
            }
            cluster::Source::Inline => {
                live.insert(name.clone());
            }
        }
    }

    // Routes, in the file's shape; they also say which header a ring
    // hash cluster hashes.
    let mut hash = HashMap::new();
    let mut hosts = Vec::new();
    let in_use = resources
        .routes
        .values()
        .filter(|rc| rds_names.contains(&rc.name));
    for rc in inline.iter().chain(in_use) {
        route::route_config(rc, &live, &mut hash, &mut hosts)?;
    }

    let mut config = base.clone();
    for (name, c) in &resources.clusters {
        if warming.contains(name) {
            continue;
        }
        let assignment = match cluster::source(c) {
            cluster::Source::Eds(service) => resources.endpoints.get(service),
            cluster::Source::Inline => None,
        };
        config.clusters.push(cluster::cluster(
            c,
            assignment,
            &config.proxy,
            hash.get(name).cloned(),
        )?);
    }
    config
        .virtual_hosts
        .extend(virtual_hosts(base, hosts, &live)?);
    Ok(Translated {
        config,
        eds_names,
        rds_names,
        warming,
    })
}

/// Validate the translated hosts with the file's own rules. strait has
/// one routing table: a domain the file (or an earlier route config)
/// claims is left out of a later one, with a log line.
fn virtual_hosts(
    base: &Config,
    hosts: Vec<(FileVirtualHost, route::Origin)>,
    clusters: &BTreeSet<String>,
) -> Result<Vec<strait_config::VirtualHost>, Rejected> {
    let mut claimed: HashSet<String> = base
        .virtual_hosts
        .iter()
        .flat_map(|h| h.domains.iter().cloned())
        .collect();
    let mut files = Vec::new();
    let mut origins = Vec::new();
    for (mut host, origin) in hosts {
        host.domains.retain(|d| {
            let fresh = claimed.insert(d.clone());
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
