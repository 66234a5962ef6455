//! `GET /stats.json`: what the admin page shows, from the live state:
//! listeners, clusters and their endpoints as the balancers see them,
//! cumulative request counts and latency histograms per endpoint (the
//! page turns successive polls into rates and percentiles), config
//! reloads and xDS resources.

use super::AdminState;
use crate::registry::ClusterState;
use prometheus::proto::MetricFamily;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

pub fn render(state: &AdminState) -> String {
    let snapshot = state.snapshot.load();
    let config = &snapshot.config;
    // The address bound at startup when it is still the configured one
    // (a configured port 0 shows the port it got).
    let shown = |name: &str, configured: std::net::SocketAddr| {
        let bound = state.listening.get().and_then(|b| b.get(name)).copied();
        match bound {
            Some(b) if configured.port() == 0 || b == configured => b.to_string(),
            _ => configured.to_string(),
        }
    };
    let mut listeners = vec![
        json!({"name": "outbound", "direction": "outbound", "address": shown("outbound", config.outbound.addr)}),
        json!({"name": "inbound", "direction": "inbound", "address": shown("inbound", config.inbound.addr)}),
        json!({"name": "admin", "direction": "admin", "address": shown("admin", config.admin)}),
    ];
    for l in &config.extra_listeners {
        listeners.push(json!({
            "name": l.name,
            "direction": format!("{:?}", l.direction).to_ascii_lowercase(),
            "address": shown(&l.name, l.addr),
        }));
    }
    let mut clusters: Vec<Value> = snapshot.clusters().iter().map(|c| cluster(c)).collect();
    clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let families = state.metrics.registry.gather();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "time_ms": now_ms,
        "ready": state.ready.load(Ordering::Acquire),
        "listeners": listeners,
        "clusters": clusters,
        "traffic": traffic(&families),
        "config": {
            // A digest of the running config as /config_dump shows it: it
            // changes exactly when a reload or xDS update changes something.
            "version": config.dump_json().ok().map(|dump| format!("{:016x}", xxhash_rust::xxh64::xxh64(&dump, 0))),
            "reloads": by_label(&families, "config_reload_total", "result"),
            "xds": config.xds.as_ref().map(|x| json!({
                "address": x.address.to_string(),
                "node": x.node.id,
                "resources": by_label(&families, "xds_resources", "type"),
            })),
        },
    })
    .to_string()
}

fn cluster(c: &ClusterState) -> Value {
    let settings = c.settings();
    let endpoints = crate::explain::endpoints_json(c);
    json!({
        "name": &*c.name,
        "tls_identity": settings.tls_identity.as_deref(),
        "in_flight": c.active.load(Ordering::Relaxed),
        "endpoints": endpoints,
    })
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
        .unwrap_or("")
}

/// A counter or gauge family summed by one label.
fn by_label(families: &[MetricFamily], family: &str, by: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for f in families.iter().filter(|f| f.name() == family) {
        for m in f.get_metric() {
            let value = match f.get_field_type() {
                prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                _ => m.get_gauge().get_value(),
            };
            *out.entry(label(m, by).to_string()).or_insert(0.0) += value;
        }
    }
    out
}

/// Requests and the latency histogram per (direction, cluster, endpoint),
/// summed over the other labels.
fn traffic(families: &[MetricFamily]) -> Vec<Value> {
    #[derive(Default)]
    struct Counts {
        requests: f64,
        latency_count: u64,
        buckets: Vec<(f64, u64)>,
    }
    let mut rows: BTreeMap<(String, String, String), Counts> = BTreeMap::new();
    let key = |m: &prometheus::proto::Metric| {
        (
            label(m, "direction").to_string(),
            label(m, "cluster").to_string(),
            label(m, "target_addr").to_string(),
        )
    };
    for f in families {
        match f.name() {
            "request_total" => {
                for m in f.get_metric() {
                    rows.entry(key(m)).or_default().requests += m.get_counter().get_value();
                }
            }
            "response_latency_ms" => {
                for m in f.get_metric() {
                    let row = rows.entry(key(m)).or_default();
                    row.latency_count += m.get_histogram().get_sample_count();
                    for (i, b) in m.get_histogram().get_bucket().iter().enumerate() {
                        match row.buckets.get_mut(i) {
                            Some(slot) => slot.1 += b.cumulative_count(),
                            None => row.buckets.push((b.upper_bound(), b.cumulative_count())),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    rows.into_iter()
        .map(|((direction, cluster, target), c)| {
            json!({
                "direction": direction,
                "cluster": cluster,
                "target": target,
                "requests": c.requests,
                "latency_count": c.latency_count,
                "latency_buckets_ms": c.buckets,
            })
        })
        .collect()
}
