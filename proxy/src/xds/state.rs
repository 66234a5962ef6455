//! What the client knows: the last accepted resources of each type, what
//! it has subscribed to, the version and nonce to ACK with, and each
//! resource's ACK/NACK status for `/config_dump`. Pure data; the stream
//! (`client.rs`) and the translation (`translate/`) read and write it.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// The resource types of this client, in the order they are subscribed:
/// a cluster before its endpoints, a listener before its routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    /// SDS: the workload certificate and trust bundle.
    Secret,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
        Kind::Secret,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// The `type` label of the `xds_*` metrics and the dump.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Cluster => "Cluster",
            Kind::Endpoint => "ClusterLoadAssignment",
            Kind::Listener => "Listener",
            Kind::Route => "RouteConfiguration",
            Kind::Secret => "Secret",
        }
    }

    /// Listeners and clusters are subscribed by wildcard (every one the
    /// server has for this node); routes, endpoints and secrets by name.
    pub fn wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }
}

/// The accepted resources, by name.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub clusters: BTreeMap<String, Cluster>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub secrets: BTreeMap<String, Secret>,
}

impl Resources {
    pub fn names(&self, kind: Kind) -> BTreeSet<String> {
        match kind {
            Kind::Cluster => self.clusters.keys().cloned().collect(),
            Kind::Endpoint => self.endpoints.keys().cloned().collect(),
            Kind::Listener => self.listeners.keys().cloned().collect(),
            Kind::Route => self.routes.keys().cloned().collect(),
            Kind::Secret => self.secrets.keys().cloned().collect(),
        }
    }

    /// Take a response's resources. In state of the world, listeners and
    /// clusters are the whole state (a missing one is removed); routes and
    /// endpoints, and every type in delta, replace the named ones only,
    /// and delta names its removals.
    pub fn take(&mut self, decoded: Decoded, whole_state: bool, removed: &[String]) {
        fn put<T>(
            map: &mut BTreeMap<String, T>,
            list: Vec<(String, T)>,
            whole: bool,
            removed: &[String],
        ) {
            if whole {
                map.clear();
            }
            for name in removed {
                map.remove(name);
            }
            map.extend(list);
        }
        match decoded {
            Decoded::Clusters(l) => put(&mut self.clusters, l, whole_state, removed),
            Decoded::Listeners(l) => put(&mut self.listeners, l, whole_state, removed),
            Decoded::Endpoints(l) => put(&mut self.endpoints, l, whole_state, removed),
            Decoded::Routes(l) => put(&mut self.routes, l, whole_state, removed),
            Decoded::Secrets(l) => put(&mut self.secrets, l, whole_state, removed),
        }
    }

    /// Forget routes, endpoints and secrets nobody subscribes to any more.
    pub fn retain_subscribed(&mut self, kind: Kind, names: &BTreeSet<String>) {
        match kind {
            Kind::Endpoint => self.endpoints.retain(|n, _| names.contains(n)),
            Kind::Route => self.routes.retain(|n, _| names.contains(n)),
            Kind::Secret => self.secrets.retain(|n, _| names.contains(n)),
            Kind::Cluster | Kind::Listener => {}
        }
    }
}

/// One response's resources, decoded.
#[derive(Debug)]
pub enum Decoded {
    Clusters(Vec<(String, Cluster)>),
    Endpoints(Vec<(String, ClusterLoadAssignment)>),
    Listeners(Vec<(String, Listener)>),
    Routes(Vec<(String, RouteConfiguration)>),
    Secrets(Vec<(String, Secret)>),
}

impl Decoded {
    pub fn names(&self) -> Vec<String> {
        match self {
            Decoded::Clusters(l) => l.iter().map(|(n, _)| n.clone()).collect(),
            Decoded::Endpoints(l) => l.iter().map(|(n, _)| n.clone()).collect(),
            Decoded::Listeners(l) => l.iter().map(|(n, _)| n.clone()).collect(),
            Decoded::Routes(l) => l.iter().map(|(n, _)| n.clone()).collect(),
            Decoded::Secrets(l) => l.iter().map(|(n, _)| n.clone()).collect(),
        }
    }
}

/// Decode every `Any` of a response as `kind`; the error names the
/// resource's position, since its name is inside the bytes that failed.
pub fn decode(kind: Kind, resources: &[Any]) -> Result<Decoded, String> {
    fn each<T: Message + Default>(
        kind: Kind,
        resources: &[Any],
        name: impl Fn(&T) -> &str,
    ) -> Result<Vec<(String, T)>, String> {
        let mut out = Vec::with_capacity(resources.len());
        let mut seen = BTreeSet::new();
        for (i, any) in resources.iter().enumerate() {
            if any.type_url != kind.type_url() {
                return Err(format!(
                    "resources[{i}]: type {} in a {} response",
                    any.type_url,
                    kind.label()
                ));
            }
            let msg = T::decode(any.value.as_slice())
                .map_err(|e| format!("resources[{i}]: not a valid {}: {e}", kind.label()))?;
            let n = name(&msg).to_string();
            if n.is_empty() {
                return Err(format!("resources[{i}]: {} without a name", kind.label()));
            }
            if !seen.insert(n.clone()) {
                return Err(format!(
                    "{} '{n}': sent twice in one response",
                    kind.label()
                ));
            }
            out.push((n, msg));
        }
        Ok(out)
    }
    Ok(match kind {
        Kind::Cluster => Decoded::Clusters(each(kind, resources, |c: &Cluster| &c.name)?),
        Kind::Endpoint => {
            Decoded::Endpoints(each(kind, resources, |c: &ClusterLoadAssignment| {
                &c.cluster_name
            })?)
        }
        Kind::Listener => Decoded::Listeners(each(kind, resources, |l: &Listener| &l.name)?),
        Kind::Route => Decoded::Routes(each(kind, resources, |r: &RouteConfiguration| &r.name)?),
        Kind::Secret => Decoded::Secrets(each(kind, resources, |s: &Secret| &s.name)?),
    })
}

/// Per type: what was subscribed and what to ACK with.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    /// The names last sent (empty for a wildcard type).
    pub names: BTreeSet<String>,
    /// The last accepted `version_info`, sent again after a reconnect
    /// (state of the world; delta sends per-resource versions instead).
    pub version: String,
    /// The last response's nonce (this stream only).
    pub nonce: String,
    /// Whether a request for this type went out on this stream.
    pub requested: bool,
    /// Whether a response of this type was ever accepted (any stream).
    pub answered: bool,
}

/// A resource's line in `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    /// The response version it was last accepted in.
    pub version: String,
    /// `acked`, `nacked` (the accepted version keeps serving), or
    /// `warming` (a cluster waiting for its endpoints).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was last accepted, in seconds since the epoch.
    pub last_updated: u64,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
