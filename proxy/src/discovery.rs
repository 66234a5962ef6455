//! Endpoint discovery by DNS: cluster endpoints given as `name:port` are
//! resolved (hickory-resolver, the system's resolv.conf or the configured
//! servers) and re-resolved when their records' TTL runs out, within the
//! configured bounds. A changed address set is applied to the registry as
//! a diff: endpoints that stay keep their state, routes are untouched, and
//! requests in flight finish on the set they picked from; a failed
//! resolution keeps the last good set. Runs on the control
//! thread, never on the data path.

use crate::registry::{Registry, Resolved};
use crate::route::Snapshot;
use arc_swap::ArcSwap;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The resolved addresses, shared with config reloads.
#[derive(Default)]
pub struct Discovery {
    resolved: Mutex<Resolved>,
}

impl Discovery {
    pub fn new() -> Arc<Discovery> {
        Arc::new(Discovery::default())
    }

    /// The addresses known now, for building a snapshot.
    pub fn resolved(&self) -> Resolved {
        self.resolved.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Resolve the current config's DNS endpoints until `stop`.
    pub async fn run(
        self: Arc<Self>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        registry: Arc<Registry>,
        stop: CancellationToken,
    ) {
        let mut due: HashMap<(String, u16), Instant> = HashMap::new();
        // Names failing now: what was last logged, and the retry delay.
        let mut failing: HashMap<(String, u16), Failing> = HashMap::new();
        let mut resolver: Option<(Vec<SocketAddr>, TokioResolver)> = None;
        loop {
            let current = snapshot.load_full();
            let config = &current.config;
            let servers = config.dns.servers.clone();
            if resolver.as_ref().is_none_or(|(s, _)| *s != servers) {
                match build_resolver(&servers) {
                    Ok(r) => resolver = Some((servers, r)),
                    Err(e) => {
                        warn!(error = %e, "cannot set up DNS resolution; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(config.dns.max_refresh) => continue,
                        }
                    }
                }
            }
            let Some((_, dns)) = resolver.as_ref() else {
                continue;
            };
            let names: Vec<(String, u16)> = config
                .clusters
                .iter()
                .flat_map(|c| c.dns_endpoints.iter().map(|d| (d.host.clone(), d.port)))
                .collect();
            let now = Instant::now();
            let mut changed = false;
            for name in &names {
                if due.get(name).is_some_and(|at| *at > now) {
                    continue;
                }
                let (min, max) = (config.dns.min_refresh, config.dns.max_refresh);
                match dns.lookup_ip(name.0.as_str()).await {
                    Ok(lookup) => {
                        let mut addrs: Vec<SocketAddr> = lookup
                            .iter()
                            .map(|ip| SocketAddr::new(ip, name.1))
                            .collect();
                        addrs.sort();
                        addrs.dedup();
                        let ttl = lookup
                            .valid_until()
                            .saturating_duration_since(std::time::Instant::now());
                        due.insert(name.clone(), now + ttl.clamp(min, max));
                        if failing.remove(name).is_some() {
                            info!(host = %name.0, port = name.1, "DNS name resolves again");
                        }
                        if let Ok(mut resolved) = self.resolved.lock() {
                            if resolved.get(name) != Some(&addrs) {
                                info!(host = %name.0, port = name.1, ?addrs, "DNS endpoints changed");
                                resolved.insert(name.clone(), addrs);
                                changed = true;
                            }
                        }
                    }
                    Err(e) => {
                        // Keep the last good set; retry with backoff, and
                        // say so once per change, not once per try.
                        let problem = describe(&e);
                        let retry = failing
                            .get(name)
                            .map_or(min, |f| (f.retry * 2).clamp(min, max));
                        let changed = failing.get(name).is_none_or(|f| f.problem != problem);
                        if changed {
                            warn!(
                                host = %name.0,
                                port = name.1,
                                error = %e,
                                "cannot resolve {} (A and AAAA): {problem}; keeping the last known endpoints, retrying in {retry:?} and backing off to {max:?} (logged again when this changes)",
                                name.0
                            );
                        } else {
                            debug!(host = %name.0, error = %e, next_retry = ?retry, "DNS name still unresolvable");
                        }
                        failing.insert(name.clone(), Failing { problem, retry });
                        due.insert(name.clone(), now + retry);
                    }
                }
            }
            if changed {
                let resolved = self.resolved();
                // Reloads run on this same thread, so the config read here
                // is the latest one.
                registry.update_endpoints(&snapshot.load().config, &resolved);
            }
            let next = due
                .values()
                .min()
                .copied()
                .unwrap_or(now + Duration::from_secs(1));
            let wake = next
                .max(now + Duration::from_millis(100))
                .min(now + Duration::from_secs(1));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// A name whose lookups fail: the problem last logged and the delay
/// before the next try.
struct Failing {
    problem: String,
    retry: Duration,
}

/// The failure in a few words: hickory's own message names only the
/// last query it made (usually AAAA), not the name and both families.
fn describe(e: &hickory_resolver::ResolveError) -> String {
    if e.is_nx_domain() {
        "no such name (NXDOMAIN)".into()
    } else if e.is_no_records_found() {
        "the name has no A or AAAA record".into()
    } else {
        e.to_string()
    }
}

/// How long one lookup may take: a silent server must not hold the
/// loop (and every other name) for long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

fn build_resolver(servers: &[SocketAddr]) -> Result<TokioResolver, hickory_resolver::ResolveError> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let mut group = NameServerConfigGroup::new();
        for server in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[server.ip()],
                server.port(),
                true,
            ));
        }
        let config = ResolverConfig::from_parts(None, vec![], group);
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
    };
    builder.options_mut().timeout = LOOKUP_TIMEOUT;
    builder.options_mut().attempts = 1;
    Ok(builder.build())
}
