//! The outbound direction: traffic from the local application to the
//! network. A request goes, in order of precedence, to the route for its
//! authority, the route for its destination port, the listener's default
//! cluster, or (when iptables redirected it) its original destination.
//!
//! Stack, per connection: accept ([`crate::listen`]) → original
//! destination → detect → HTTP ([`crate::http`]: route → balance → pool)
//! or opaque ([`crate::tcp`]: route → connect → copy).

use crate::http::error::ProxyError;
use crate::http::Target;
use crate::orig_dst::OrigDst;
use crate::route::{RouteTarget, Snapshot};

/// Pick the target for an outbound HTTP request.
pub fn resolve_http(
    snapshot: &Snapshot,
    orig_dst: OrigDst,
    authority: Option<&str>,
) -> Result<Target, ProxyError> {
    let route = authority
        .and_then(|a| snapshot.by_authority(a))
        .or_else(|| snapshot.by_port(orig_dst.addr.port()))
        .or(snapshot.outbound_default.as_ref());
    route_or_original(snapshot, orig_dst, route, || {
        authority.unwrap_or("").to_string()
    })
}

/// Pick the target for an outbound opaque TCP connection.
pub fn resolve_tcp(snapshot: &Snapshot, orig_dst: OrigDst) -> Result<Target, ProxyError> {
    let route = snapshot
        .by_port(orig_dst.addr.port())
        .or(snapshot.outbound_default.as_ref());
    route_or_original(snapshot, orig_dst, route, || {
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
    describe: impl FnOnce() -> String,
) -> Result<Target, ProxyError> {
    match route {
        Some(route) => to_cluster(route),
        None if orig_dst.redirected => Ok(Target {
            addr: orig_dst.addr,
            authority: snapshot.no_authority.clone(),
            cluster: None,
        }),
        None => Err(ProxyError::NoRoute {
            authority: describe(),
        }),
    }
}

/// A route's cluster, balanced to one endpoint.
pub fn to_cluster(route: &RouteTarget) -> Result<Target, ProxyError> {
    let addr = route
        .cluster
        .endpoints
        .pick()
        .ok_or_else(|| ProxyError::NoEndpoints {
            cluster: route.cluster.name.to_string(),
        })?;
    Ok(Target {
        addr,
        authority: route.authority.clone(),
        cluster: Some(route.cluster.clone()),
    })
}
