//! State of the world (`StreamAggregatedResources`): every response
//! carries a version for its type; the client ACKs with that version and
//! the nonce, NACKs with the last good version, and resubscribes after a
//! reconnect with the versions and names it holds.

use super::state::{self, Kind};
use super::{rejection, Change, Inner, Xds};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::BTreeMap;
use tracing::warn;

impl Xds {
    /// The requests that open a stream: every type, with the versions
    /// and names already known, so a reconnect resumes where it was.
    pub(super) fn sotw_initial(&self) -> Vec<DiscoveryRequest> {
        let mut inner = self.lock();
        inner.node_sent = false;
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let sub = inner.subs.entry(kind).or_default();
            sub.nonce.clear();
            sub.requested = false;
            if kind.wildcard() || !sub.names.is_empty() {
                out.push(self.sotw_request(&mut inner, kind, None));
            }
        }
        out
    }

    /// A request for `kind` with its current version, nonce and names;
    /// `error` makes it a NACK.
    fn sotw_request(
        &self,
        inner: &mut Inner,
        kind: Kind,
        error: Option<String>,
    ) -> DiscoveryRequest {
        let node = self.node_once(inner);
        let sub = inner.subs.entry(kind).or_default();
        sub.requested = true;
        DiscoveryRequest {
            version_info: sub.version.clone(),
            node,
            resource_names: sub.names.iter().cloned().collect(),
            type_url: kind.type_url().to_string(),
            response_nonce: sub.nonce.clone(),
            error_detail: error.map(rejection),
            ..Default::default()
        }
    }

    /// Take one response. Returns the requests to send: the ACK or NACK,
    /// then any change of subscription (endpoints for new clusters,
    /// routes for new listeners). Public for `benches/xds_eds.rs`, which
    /// times the whole path from response to ACK.
    pub fn sotw_handle(&self, resp: DiscoveryResponse) -> Vec<DiscoveryRequest> {
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            warn!(type_url = %resp.type_url, "xds: response of a type never asked for; refused");
            return vec![DiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce,
                error_detail: Some(rejection(format!(
                    "type {} is not supported",
                    resp.type_url
                ))),
                ..Default::default()
            }];
        };
        let mut inner = self.lock();
        inner.subs.entry(kind).or_default().nonce = resp.nonce.clone();
        let change = state::decode(kind, &resp.resources).map(|decoded| Change {
            decoded,
            whole_state: kind.wildcard(),
            removed: Vec::new(),
            versions: BTreeMap::new(),
        });
        match self.accept(&mut inner, kind, &resp.version_info, change) {
            Err(message) => vec![self.sotw_request(&mut inner, kind, Some(message))],
            Ok(wanted) => {
                inner.subs.entry(kind).or_default().version = resp.version_info.clone();
                let mut out = vec![self.sotw_request(&mut inner, kind, None)];
                for (k, names) in wanted {
                    let sub = inner.subs.entry(k).or_default();
                    if sub.names != names && (sub.requested || !names.is_empty()) {
                        sub.names = names;
                        out.push(self.sotw_request(&mut inner, k, None));
                    }
                }
                self.check_initial(&inner);
                out
            }
        }
    }
}
