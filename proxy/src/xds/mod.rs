//! The xDS v3 client: strait as a data plane of an Envoy-style control
//! plane (istiod, go-control-plane). One ADS stream (`client.rs`)
//! receives clusters, endpoints, listeners and routes; every accepted
//! response is translated, together with everything accepted before, into
//! the same validated [`Config`] the YAML file gives (`translate/`), and
//! handed to the same apply path a file reload uses, so the registry's
//! diff keeps the state of every endpoint that stays.
//!
//! A response whose resources cannot all be translated is refused whole
//! (NACK with the resource and field), and the previous config keeps
//! serving; gRPC's A46 applies the valid part instead, which is kinder
//! but lets one config mix two versions. The file stays the base: a file
//! reload is merged with the xDS resources held, and xDS adds clusters and
//! virtual hosts beside the file's, never over them.
//!
//! Runs on the admin/control thread's runtime, never on the request path.

mod client;
mod state;
mod translate;

pub use translate::Rejected;

use crate::metrics::Metrics;
use envoy_types::pb::envoy::config::core::v3::{node, Node};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use state::{Kind, Resources, Status, Subscription};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use strait_config::Config;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How a validated config reaches the data path (the same function a
/// file reload uses).
pub type Apply = Box<dyn Fn(Config) + Send + Sync>;

/// The client's shared state: the file's config, what the control plane
/// sent, and how to apply the merge.
pub struct Xds {
    bootstrap: strait_config::Xds,
    inner: Mutex<Inner>,
    apply: Apply,
    metrics: Arc<Metrics>,
}

struct Inner {
    /// The file's config, without xDS resources.
    base: Config,
    resources: Resources,
    subs: BTreeMap<Kind, Subscription>,
    status: BTreeMap<(Kind, String), Status>,
    /// EDS clusters waiting for endpoints, since when.
    warming: BTreeMap<String, Instant>,
    /// EDS clusters whose wait ran out: live, with no endpoints yet.
    expired: HashSet<String>,
    /// Whether the stream's first request (the one with the node) went out.
    node_sent: bool,
}

impl Xds {
    /// The client for `base`'s `xds:` section; `None` without one.
    pub fn new(base: &Config, apply: Apply, metrics: Arc<Metrics>) -> Option<Arc<Xds>> {
        let bootstrap = base.xds.clone()?;
        Some(Arc::new(Xds {
            bootstrap,
            inner: Mutex::new(Inner {
                base: base.clone(),
                resources: Resources::default(),
                subs: Kind::ALL
                    .iter()
                    .map(|k| (*k, Subscription::default()))
                    .collect(),
                status: BTreeMap::new(),
                warming: BTreeMap::new(),
                expired: HashSet::new(),
                node_sent: false,
            }),
            apply,
            metrics,
        }))
    }

    /// Run the ADS client until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        client::run(self, stop).await
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves data that was only ever
        // replaced whole: still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A file reload: the new file config with the xDS resources held.
    /// Refused (the running config stays) if the two do not merge.
    pub fn rebase(&self, base: Config) -> Result<(), Rejected> {
        let mut inner = self.lock();
        let translated = translate::translate(&base, &inner.resources, &inner.expired)?;
        inner.base = base;
        (self.apply)(translated.config);
        Ok(())
    }

    /// `/config_dump`: the file's config in its own shape (so it still
    /// reads as a config file) plus `xds_resources`, every resource from
    /// the control plane with its version and ACK/NACK state.
    pub fn dump_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let inner = self.lock();
        let mut value: serde_json::Value = serde_json::from_slice(&inner.base.dump_json()?)?;
        let resources: Vec<Status> = inner
            .status
            .values()
            .map(|s| {
                let mut s = s.clone();
                if s.kind == Kind::Cluster.label() && inner.warming.contains_key(&s.name) {
                    s.state = "warming";
                }
                s
            })
            .collect();
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("xds_resources".into(), serde_json::to_value(resources)?);
        }
        serde_json::to_vec_pretty(&value)
    }

    /// The requests that open a stream: every type, with the versions
    /// and names already known, so a reconnect resumes where it was.
    fn initial_requests(&self) -> Vec<DiscoveryRequest> {
        let mut inner = self.lock();
        inner.node_sent = false;
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let sub = inner.subs.entry(kind).or_default();
            sub.nonce.clear();
            sub.requested = false;
            if kind.wildcard() || !sub.names.is_empty() {
                out.push(self.request(&mut inner, kind, None));
            }
        }
        out
    }

    /// A request for `kind` with its current version, nonce and names;
    /// `error` makes it a NACK.
    fn request(&self, inner: &mut Inner, kind: Kind, error: Option<String>) -> DiscoveryRequest {
        let node = (!inner.node_sent).then(|| self.node());
        inner.node_sent = true;
        let sub = inner.subs.entry(kind).or_default();
        sub.requested = true;
        DiscoveryRequest {
            version_info: sub.version.clone(),
            node,
            resource_names: sub.names.iter().cloned().collect(),
            type_url: kind.type_url().to_string(),
            response_nonce: sub.nonce.clone(),
            error_detail: error.map(|message| RpcStatus {
                // INVALID_ARGUMENT, as Envoy sends.
                code: 3,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn node(&self) -> Node {
        let n = &self.bootstrap.node;
        Node {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            metadata: (!n.metadata.is_empty()).then(|| Struct {
                fields: n
                    .metadata
                    .iter()
                    .map(|(k, v)| {
                        let v = Value {
                            kind: Some(value::Kind::StringValue(v.clone())),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            }),
            user_agent_name: "strait".into(),
            user_agent_version_type: Some(node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            )),
            ..Default::default()
        }
    }

    /// Take one response: apply it and ACK, or NACK it. Returns the
    /// requests to send: the ACK/NACK, then any change of subscription
    /// (endpoints for new clusters, routes for new listeners).
    fn handle(&self, resp: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            warn!(type_url = %resp.type_url, "xds: response of a type never asked for; refused");
            return vec![DiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce,
                error_detail: Some(RpcStatus {
                    code: 3,
                    message: format!("type {} is not supported", resp.type_url),
                    details: Vec::new(),
                }),
                ..Default::default()
            }];
        };
        let mut inner = self.lock();
        inner.subs.entry(kind).or_default().nonce = resp.nonce.clone();
        let names_asked = inner
            .subs
            .get(&kind)
            .map(|s| s.names.clone())
            .unwrap_or_default();
        let decoded = state::decode(kind, &resp.resources);
        let sent: Vec<String> = decoded.as_ref().map(|d| d.names()).unwrap_or_default();
        let outcome = decoded.and_then(|decoded| {
            let mut candidate = inner.resources.clone();
            candidate.take(decoded);
            if !kind.wildcard() {
                // Resources nobody asked for are not ours to hold.
                candidate.retain_subscribed(kind, &names_asked);
            }
            let t = translate::translate(&inner.base, &candidate, &inner.expired)
                .map_err(|r| r.to_string())?;
            Ok((candidate, t))
        });
        let label = kind.label();
        let mut out = Vec::new();
        match outcome {
            Ok((mut candidate, t)) => {
                candidate.retain_subscribed(Kind::Endpoint, &t.eds_names);
                candidate.retain_subscribed(Kind::Route, &t.rds_names);
                let now = Instant::now();
                let warming = std::mem::take(&mut inner.warming);
                inner.warming = t
                    .warming
                    .iter()
                    .map(|c| (c.clone(), warming.get(c).copied().unwrap_or(now)))
                    .collect();
                let clusters: BTreeSet<String> = candidate.names(Kind::Cluster);
                inner.expired.retain(|c| clusters.contains(c));
                inner.resources = candidate;
                (self.apply)(t.config);

                let stamp = state::unix_now();
                for name in &sent {
                    inner.status.insert(
                        (kind, name.clone()),
                        Status {
                            kind: label,
                            name: name.clone(),
                            version: resp.version_info.clone(),
                            state: "acked",
                            error: None,
                            last_updated: stamp,
                        },
                    );
                }
                for k in Kind::ALL {
                    let held = inner.resources.names(k);
                    inner
                        .status
                        .retain(|(sk, n), _| *sk != k || held.contains(n));
                    self.metrics
                        .xds
                        .resources
                        .with_label_values(&[k.label()])
                        .set(held.len() as i64);
                }
                inner.subs.entry(kind).or_default().version = resp.version_info.clone();
                self.metrics
                    .xds
                    .updates_total
                    .with_label_values(&[label, "ack"])
                    .inc();
                info!(r#type = label, version = %resp.version_info, resources = sent.len(), warming = inner.warming.len(), "xds: update accepted");
                out.push(self.request(&mut inner, kind, None));
                for (k, names) in [(Kind::Endpoint, t.eds_names), (Kind::Route, t.rds_names)] {
                    let sub = inner.subs.entry(k).or_default();
                    if sub.names != names && (sub.requested || !names.is_empty()) {
                        sub.names = names;
                        out.push(self.request(&mut inner, k, None));
                    }
                }
            }
            Err(message) => {
                for name in &sent {
                    if let Some(s) = inner.status.get_mut(&(kind, name.clone())) {
                        s.state = "nacked";
                        s.error = Some(message.clone());
                    } else {
                        inner.status.insert(
                            (kind, name.clone()),
                            Status {
                                kind: label,
                                name: name.clone(),
                                version: String::new(),
                                state: "nacked",
                                error: Some(message.clone()),
                                last_updated: state::unix_now(),
                            },
                        );
                    }
                }
                self.metrics
                    .xds
                    .updates_total
                    .with_label_values(&[label, "nack"])
                    .inc();
                warn!(r#type = label, version = %resp.version_info, error = %message, "xds: update refused (NACK); the last accepted config keeps serving");
                out.push(self.request(&mut inner, kind, Some(message)));
            }
        }
        out
    }

    /// When the next warming cluster stops waiting for its endpoints.
    fn next_warm_deadline(&self) -> Option<Instant> {
        let timeout = self.bootstrap.initial_fetch_timeout;
        self.lock()
            .warming
            .values()
            .min()
            .map(|since| *since + timeout)
    }

    /// Clusters that waited `initial_fetch_timeout` for endpoints go live
    /// without them (503 `no-endpoints` until they come), so routes to
    /// them stop answering "not available".
    fn expire_warming(&self) {
        let timeout = self.bootstrap.initial_fetch_timeout;
        let now = Instant::now();
        let mut inner = self.lock();
        let due: Vec<String> = inner
            .warming
            .iter()
            .filter(|(_, since)| **since + timeout <= now)
            .map(|(c, _)| c.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        for c in &due {
            inner.warming.remove(c);
            inner.expired.insert(c.clone());
        }
        warn!(clusters = ?due, ?timeout, "xds: no endpoints arrived in time; clusters go live without endpoints");
        match translate::translate(&inner.base, &inner.resources, &inner.expired) {
            Ok(t) => (self.apply)(t.config),
            Err(e) => {
                error!(error = %e, "xds: cannot apply the clusters whose endpoints timed out")
            }
        }
    }
}
