//! The outbound direction: traffic from the local application to the
//! network. A request goes, in order of precedence, to the route for its
//! authority, the route for its destination port, the listener's default
//! cluster, or (when iptables redirected it) its original destination.
//!
//! Stack, per connection: accept ([`crate::listen`]) → original
//! destination → detect → HTTP ([`crate::http`]: route → balance → pool)
//! or opaque ([`crate::tcp`]: route → connect → copy).

use crate::http::error::ProxyError;
use crate::http::vhost::{Action, Route};
use crate::http::{headers, Target};
use crate::orig_dst::OrigDst;
use crate::route::{RouteTarget, Snapshot};

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
    req: &http::Request<B>,
) -> Result<Routed<'s>, ProxyError> {
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
                    Ok(Routed::Forward(to_cluster(chosen)?, Some(route)))
                }
                Action::Direct { .. } | Action::Redirect { .. } => Ok(Routed::Local(route)),
            };
        }
    }
    resolve_http(snapshot, orig_dst, authority).map(|target| Routed::Forward(target, None))
}

/// Pick the target for an outbound HTTP request without L7 routes.
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
            route: snapshot.no_authority.clone(),
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
        .copied()
        .ok_or_else(|| ProxyError::NoEndpoints {
            cluster: route.cluster.name.to_string(),
        })?;
    Ok(Target {
        addr,
        authority: route.authority.clone(),
        route: route.route.clone(),
        cluster: Some(route.cluster.clone()),
    })
}
