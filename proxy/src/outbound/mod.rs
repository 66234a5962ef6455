//! The outbound direction: traffic from the local application to the
//! network. A request goes, in order of precedence, to the route for its
//! authority, the route for its destination port, the listener's default
//! cluster, or (when iptables redirected it) its original destination.
//!
//! Stack, per connection: accept ([`crate::listen`]) → original
//! destination → detect → HTTP ([`crate::http`]: route → balance → pool)
//! or opaque ([`crate::tcp`]: route → connect → copy).

use crate::balance::cluster::{ip_hash, request_hash};
use crate::http::error::ProxyError;
use crate::http::vhost::{Action, Route};
use crate::http::{headers, Target};
use crate::orig_dst::OrigDst;
use crate::route::{ClusterState, RouteTarget, Snapshot};
use strait_config::HashKey;

/// How an outbound HTTP request is answered.
pub enum Routed<'s> {
    /// Forward to `Target`, applying the L7 route's edits when one matched.
    Forward(Target, Option<&'s Route>),
    /// The route answers itself (direct response or redirect).
    Local(&'s Route),
}

/// Route an outbound HTTP request: virtual hosts first, then the simple
/// authority and port routes, the default cluster, the original destination.
pub fn route_http<'s, B>(
    snapshot: &'s Snapshot,
    orig_dst: OrigDst,
    client: std::net::IpAddr,
    req: &http::Request<B>,
) -> Result<Routed<'s>, ProxyError> {
    let hash = |cluster: &ClusterState| -> Option<u64> {
        match cluster.settings().hash_key.as_ref()? {
            HashKey::Header(name) => req
                .headers()
                .get(name.as_str())
                .map(|v| request_hash(v.as_bytes())),
            HashKey::SourceIp => Some(ip_hash(client)),
        }
    };
    let authority = headers::authority(req);
    if let (false, Some(authority)) = (snapshot.vhosts.is_empty(), authority) {
        let host = crate::route::strip_port(authority);
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        };
        if let Some(route) = snapshot.vhosts.find(&host, req) {
            return match &route.action {
                Action::Forward(split) => {
                    let chosen = split.pick().ok_or_else(|| ProxyError::NoEndpoints {
                        cluster: route.name.to_string(),
                    })?;
                    Ok(Routed::Forward(
                        to_cluster(chosen, hash(&chosen.cluster))?,
                        Some(route),
                    ))
                }
                Action::Direct { .. } | Action::Redirect { .. } => Ok(Routed::Local(route)),
            };
        }
    }
    let route = authority
        .and_then(|a| snapshot.by_authority(a))
        .or_else(|| snapshot.by_port(orig_dst.addr.port()))
        .or(snapshot.outbound_default.as_ref());
    let key = route.and_then(|r| hash(&r.cluster));
    route_or_original(snapshot, orig_dst, route, key, || {
        authority.unwrap_or("").to_string()
    })
    .map(|target| Routed::Forward(target, None))
}

/// Pick the target for an outbound opaque TCP connection.
pub fn resolve_tcp(snapshot: &Snapshot, orig_dst: OrigDst) -> Result<Target, ProxyError> {
    let route = snapshot
        .by_port(orig_dst.addr.port())
        .or(snapshot.outbound_default.as_ref());
    route_or_original(snapshot, orig_dst, route, None, || {
        format!("(tcp to port {})", orig_dst.addr.port())
    })
}

/// The route's cluster when there is one, else the original destination
/// when iptables redirected the connection, else no route (`describe`
/// names what was asked for).
fn route_or_original(
    snapshot: &Snapshot,
    orig_dst: OrigDst,
    route: Option<&RouteTarget>,
    hash: Option<u64>,
    describe: impl FnOnce() -> String,
) -> Result<Target, ProxyError> {
    match route {
        Some(route) => to_cluster(route, hash),
        None if orig_dst.redirected => Ok(Target {
            addr: orig_dst.addr,
            authority: snapshot.no_authority.clone(),
            route: snapshot.no_authority.clone(),
            cluster: None,
            endpoint: None,
        }),
        None => Err(ProxyError::NoRoute {
            authority: describe(),
        }),
    }
}

/// A route's cluster, balanced to one endpoint (`hash` is the request's
/// ring-hash key, for clusters that balance by one).
pub fn to_cluster(route: &RouteTarget, hash: Option<u64>) -> Result<Target, ProxyError> {
    let balancer = route.cluster.balancer();
    let endpoint = balancer.pick(hash).ok_or_else(|| ProxyError::NoEndpoints {
        cluster: route.cluster.name.to_string(),
    })?;
    Ok(Target {
        addr: endpoint.addr,
        authority: route.authority.clone(),
        route: route.route.clone(),
        cluster: Some(route.cluster.clone()),
        endpoint: Some(endpoint.clone()),
    })
}
