//! Incremental xDS (`DeltaAggregatedResources`): responses carry changed
//! resources with their own versions and name removals; the client ACKs
//! with the nonce alone, subscribes and unsubscribes by difference, and
//! after a reconnect tells the server the versions it holds
//! (`initial_resource_versions`) so only what changed is sent again.

use super::state::{self, Kind};
use super::{rejection, Change, Inner, Xds};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use std::collections::BTreeMap;
use tracing::warn;

impl Xds {
    /// The requests that open a stream: wildcard for listeners and
    /// clusters, the known names for routes and endpoints, each with the
    /// versions held.
    pub(super) fn delta_initial(&self) -> Vec<DeltaDiscoveryRequest> {
        let mut inner = self.lock();
        inner.node_sent = false;
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let names: Vec<String> = match kind.wildcard() {
                true => vec!["*".into()],
                false => inner
                    .subs
                    .get(&kind)
                    .map(|s| s.names.iter().cloned().collect())
                    .unwrap_or_default(),
            };
            if names.is_empty() {
                continue;
            }
            let versions = held_versions(&inner, kind);
            let node = self.node_once(&mut inner);
            inner.subs.entry(kind).or_default().requested = true;
            out.push(DeltaDiscoveryRequest {
                node,
                type_url: kind.type_url().into(),
                resource_names_subscribe: names,
                initial_resource_versions: versions.into_iter().collect(),
                ..Default::default()
            });
        }
        out
    }

    /// Take one response: the ACK or NACK, then any change of subscription.
    pub(super) fn delta_handle(&self, resp: DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryRequest> {
        let answer = |type_url: &str, nonce: &str, error: Option<String>| DeltaDiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            error_detail: error.map(rejection),
            ..Default::default()
        };
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            warn!(type_url = %resp.type_url, "xds: response of a type never asked for; refused");
            let message = format!("type {} is not supported", resp.type_url);
            return vec![answer(&resp.type_url, &resp.nonce, Some(message))];
        };
        let mut versions = BTreeMap::new();
        let mut anys = Vec::with_capacity(resp.resources.len());
        let mut missing = None;
        for (i, r) in resp.resources.iter().enumerate() {
            match &r.resource {
                Some(any) => {
                    versions.insert(r.name.clone(), r.version.clone());
                    anys.push(any.clone());
                }
                None => missing = Some(format!("resources[{i}] ('{}'): no resource", r.name)),
            }
        }
        let change = match missing {
            Some(m) => Err(m),
            None => state::decode(kind, &anys).map(|decoded| Change {
                decoded,
                whole_state: false,
                removed: resp.removed_resources.clone(),
                versions,
            }),
        };
        let mut inner = self.lock();
        match self.accept(&mut inner, kind, &resp.system_version_info, change) {
            Err(message) => vec![answer(&resp.type_url, &resp.nonce, Some(message))],
            Ok(wanted) => {
                let mut out = vec![answer(&resp.type_url, &resp.nonce, None)];
                for (k, names) in wanted {
                    if let Some(request) = resubscribe(&mut inner, k, names) {
                        out.push(request);
                    }
                }
                self.check_initial(&inner);
                out
            }
        }
    }
}

/// Subscribe to the new names and unsubscribe from the dropped ones.
fn resubscribe(
    inner: &mut Inner,
    kind: Kind,
    names: std::collections::BTreeSet<String>,
) -> Option<DeltaDiscoveryRequest> {
    let sub = inner.subs.entry(kind).or_default();
    if sub.names == names {
        return None;
    }
    let subscribe: Vec<String> = names.difference(&sub.names).cloned().collect();
    let unsubscribe: Vec<String> = sub.names.difference(&names).cloned().collect();
    sub.names = names;
    sub.requested = true;
    Some(DeltaDiscoveryRequest {
        type_url: kind.type_url().into(),
        resource_names_subscribe: subscribe,
        resource_names_unsubscribe: unsubscribe,
        ..Default::default()
    })
}

/// The version of every accepted resource of `kind`.
fn held_versions(inner: &Inner, kind: Kind) -> BTreeMap<String, String> {
    inner
        .status
        .iter()
        .filter(|((k, _), s)| *k == kind && !s.version.is_empty())
        .map(|((_, name), s)| (name.clone(), s.version.clone()))
        .collect()
}
