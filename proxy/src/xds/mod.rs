//! The xDS v3 client: strait as a data plane of an Envoy-style control
//! plane (istiod, go-control-plane). One ADS stream (`client.rs`), state
//! of the world (`sotw.rs`) or delta (`delta.rs`), over TLS if asked
//! (`tls_channel.rs`), receives clusters, endpoints, listeners, routes and
//! secrets (`state.rs` holds them); every accepted response is
//! translated, together with everything accepted before, into the same
//! validated [`Config`] the YAML file gives (`translate/`), and handed to
//! the same apply path a file reload uses, so the registry's diff keeps
//! the state of every endpoint that stays. Secrets become the
//! workload identity (`crate::tls`), installed just before the config
//! that may need it is applied.
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
mod delta;
mod sotw;
mod state;
mod tls_channel;
mod translate;

pub use translate::Rejected;

use crate::metrics::Metrics;
use envoy_types::pb::envoy::config::core::v3::{node, Node};
use envoy_types::pb::google::protobuf::{value, Struct, Value};
use state::{Decoded, Kind, Resources, Status, Subscription};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use strait_config::{Config, IdentitySource};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Load `xds.tls`'s files as a connect would: what `strait check` runs.
/// The error names the setting and file at fault.
pub fn check_tls(bootstrap: &strait_config::Xds) -> Result<(), String> {
    match &bootstrap.tls {
        Some(tls) => tls_channel::Connector::new(tls, &bootstrap.address).map(|_| ()),
        None => Ok(()),
    }
}

/// How far the first configuration from the control plane has come, for
/// `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Still within `initial_fetch_timeout`, something subscribed missing.
    Waiting,
    /// Listeners and clusters answered, nothing subscribed missing, no
    /// cluster warming (latched: later updates do not make it unready).
    Complete,
    /// `initial_fetch_timeout` passed first: ready with what is known.
    TimedOut,
}

/// One response's resources, decoded, whichever the protocol variant.
struct Change {
    decoded: Decoded,
    /// State of the world for listeners and clusters: absent means removed.
    whole_state: bool,
    /// Delta's removals.
    removed: Vec<String>,
    /// Delta's per-resource versions (state of the world has one version).
    versions: BTreeMap<String, String>,
}

/// A NACK's `error_detail`: INVALID_ARGUMENT, as Envoy sends.
fn rejection(message: String) -> envoy_types::pb::google::rpc::Status {
    envoy_types::pb::google::rpc::Status {
        code: 3,
        message,
        details: Vec::new(),
    }
}

/// How a validated config reaches the data path (the same function a
/// file reload uses).
pub type Apply = Box<dyn Fn(Config) + Send + Sync>;

/// The client's shared state: the file's config, what the control plane
/// sent, and how to apply the merge.
pub struct Xds {
    bootstrap: strait_config::Xds,
    /// Where an SDS identity is installed (`None` without an identity).
    tls: Option<Arc<crate::tls::Tls>>,
    inner: Mutex<Inner>,
    apply: Apply,
    metrics: Arc<Metrics>,
    started: Instant,
    initial_complete: std::sync::atomic::AtomicBool,
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
    pub fn new(
        base: &Config,
        apply: Apply,
        metrics: Arc<Metrics>,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> Option<Arc<Xds>> {
        let bootstrap = base.xds.clone()?;
        let mut subs: BTreeMap<Kind, Subscription> = Kind::ALL
            .iter()
            .map(|k| (*k, Subscription::default()))
            .collect();
        // The identity's secrets are wanted from the first request on.
        if let Some(IdentitySource::Sds(sds)) = base.identity.as_ref().map(|i| &i.source) {
            if let Some(sub) = subs.get_mut(&Kind::Secret) {
                sub.names = [sds.certificate.clone(), sds.trust_bundle.clone()].into();
            }
        }
        Some(Arc::new(Xds {
            bootstrap,
            tls,
            inner: Mutex::new(Inner {
                base: base.clone(),
                resources: Resources::default(),
                subs,
                status: BTreeMap::new(),
                warming: BTreeMap::new(),
                expired: HashSet::new(),
                node_sent: false,
            }),
            apply,
            metrics,
            started: Instant::now(),
            initial_complete: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// For `/ready`: whether the initial configuration has come.
    pub fn readiness(&self) -> Readiness {
        if self
            .initial_complete
            .load(std::sync::atomic::Ordering::Acquire)
        {
            Readiness::Complete
        } else if self.started.elapsed() >= self.bootstrap.initial_fetch_timeout {
            Readiness::TimedOut
        } else {
            Readiness::Waiting
        }
    }

    /// Latch `initial_complete` once everything first asked for is held.
    fn check_initial(&self, inner: &Inner) {
        use std::sync::atomic::Ordering;
        if self.initial_complete.load(Ordering::Relaxed) {
            return;
        }
        let answered = |k: Kind| inner.subs.get(&k).is_some_and(|s| s.answered);
        let held = |k: Kind| {
            let have = inner.resources.names(k);
            inner
                .subs
                .get(&k)
                .is_none_or(|s| s.names.iter().all(|n| have.contains(n)))
        };
        if answered(Kind::Cluster)
            && answered(Kind::Listener)
            && inner.warming.is_empty()
            && held(Kind::Route)
            && held(Kind::Secret)
        {
            self.initial_complete.store(true, Ordering::Release);
            info!(after = ?self.started.elapsed(), "xds: initial configuration complete");
        }
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

    /// A file reload: the new file config merged with the xDS resources
    /// held, for the reload to apply; from now on it is the base. Refused
    /// (and the base unchanged) if the two do not merge.
    pub fn rebase(&self, base: Config) -> Result<Config, Rejected> {
        let mut inner = self.lock();
        if inner.base.xds != base.xds {
            warn!("the xds section changed: it takes effect on restart");
        }
        let translated = translate::translate(&base, &inner.resources, &inner.expired)?;
        inner.base = base;
        Ok(translated.config)
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

    /// The node, on a stream's first request only.
    fn node_once(&self, inner: &mut Inner) -> Option<Node> {
        let node = (!inner.node_sent).then(|| self.node());
        inner.node_sent = true;
        node
    }

    /// Take one response's resources, whichever the protocol variant:
    /// translate them with everything held; on success apply the config,
    /// record each resource's version and return the route and endpoint
    /// names to subscribe to now; on failure keep everything as it was and
    /// return the NACK's message.
    fn accept(
        &self,
        inner: &mut Inner,
        kind: Kind,
        version: &str,
        change: Result<Change, String>,
    ) -> Result<[(Kind, BTreeSet<String>); 3], String> {
        let label = kind.label();
        let sent: Vec<String> = change
            .as_ref()
            .map(|c| c.decoded.names())
            .unwrap_or_default();
        let outcome = change.and_then(|c| {
            let mut candidate = inner.resources.clone();
            candidate.take(c.decoded, c.whole_state, &c.removed);
            if !kind.wildcard() {
                // Resources nobody asked for are not ours to hold.
                let asked = inner
                    .subs
                    .get(&kind)
                    .map(|s| s.names.clone())
                    .unwrap_or_default();
                candidate.retain_subscribed(kind, &asked);
            }
            let t = translate::translate(&inner.base, &candidate, &inner.expired)
                .map_err(|r| r.to_string())?;
            // New handshakes use a rotated identity from here on; the
            // connections up keep theirs. Last step: nothing fails after.
            if let (Some(tls), Some(identity)) = (&self.tls, &t.identity) {
                tls.install(identity.clone())
                    .map_err(|e| format!("Secret: the identity cannot be built: {e}"))?;
            }
            Ok((candidate, t, c.versions))
        });
        let (mut candidate, t, versions) = match outcome {
            Ok(accepted) => accepted,
            Err(message) => {
                for name in &sent {
                    let status =
                        inner
                            .status
                            .entry((kind, name.clone()))
                            .or_insert_with(|| Status {
                                kind: label,
                                name: name.clone(),
                                version: String::new(),
                                state: "nacked",
                                error: None,
                                last_updated: state::unix_now(),
                            });
                    status.state = "nacked";
                    status.error = Some(message.clone());
                }
                self.metrics
                    .xds
                    .updates_total
                    .with_label_values(&[label, "nack"])
                    .inc();
                warn!(r#type = label, %version, error = %message, "xds: update refused (NACK); the last accepted config keeps serving");
                return Err(message);
            }
        };
        candidate.retain_subscribed(Kind::Endpoint, &t.eds_names);
        candidate.retain_subscribed(Kind::Route, &t.rds_names);
        candidate.retain_subscribed(Kind::Secret, &t.sds_names);
        let now = Instant::now();
        let warming = std::mem::take(&mut inner.warming);
        inner.warming = t
            .warming
            .iter()
            .map(|c| (c.clone(), warming.get(c).copied().unwrap_or(now)))
            .collect();
        let clusters = candidate.names(Kind::Cluster);
        inner.expired.retain(|c| clusters.contains(c));
        inner.resources = candidate;
        (self.apply)(t.config);

        let stamp = state::unix_now();
        for name in &sent {
            let status = Status {
                kind: label,
                name: name.clone(),
                version: versions
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| version.to_string()),
                state: "acked",
                error: None,
                last_updated: stamp,
            };
            inner.status.insert((kind, name.clone()), status);
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
        self.metrics
            .xds
            .updates_total
            .with_label_values(&[label, "ack"])
            .inc();
        inner.subs.entry(kind).or_default().answered = true;
        info!(r#type = label, %version, resources = sent.len(), warming = inner.warming.len(), "xds: update accepted");
        Ok([
            (Kind::Endpoint, t.eds_names),
            (Kind::Route, t.rds_names),
            (Kind::Secret, t.sds_names),
        ])
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
        warn!(clusters = ?due, ?timeout, "xds: endpoints or secrets did not arrive in time; clusters go live without them");
        self.check_initial(&inner);
        match translate::translate(&inner.base, &inner.resources, &inner.expired) {
            Ok(t) => (self.apply)(t.config),
            Err(e) => {
                error!(error = %e, "xds: cannot apply the clusters whose endpoints timed out")
            }
        }
    }
}
