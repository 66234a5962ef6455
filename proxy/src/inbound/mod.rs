//! The inbound direction: traffic from the network to the local
//! application. Everything goes to the application at the original
//! destination port on the configured forward address (127.0.0.1 by
//! default), or to the inbound listener's default cluster when one is set.
//! Outbound routes do not apply here.

use crate::http::error::ProxyError;
use crate::http::Target;
use crate::orig_dst::OrigDst;
use crate::outbound::to_cluster;
use crate::route::Snapshot;
use std::net::SocketAddr;

/// Pick the target for an inbound HTTP request or TCP connection.
pub fn resolve_http(
    snapshot: &Snapshot,
    orig_dst: OrigDst,
    authority: Option<&str>,
) -> Result<Target, ProxyError> {
    if let Some(route) = snapshot.inbound_default.as_ref() {
        return to_cluster(route, None);
    }
    if !orig_dst.redirected {
        return Err(ProxyError::NoRoute {
            authority: authority.unwrap_or("").to_string(),
        });
    }
    let app = SocketAddr::new(snapshot.config.inbound.forward_ip, orig_dst.addr.port());
    Ok(Target {
        addr: app,
        authority: snapshot.no_authority.clone(),
        route: snapshot.no_authority.clone(),
        cluster: None,
        endpoint: None,
    })
}

/// Pick the target for an inbound opaque TCP connection.
pub fn resolve_tcp(snapshot: &Snapshot, orig_dst: OrigDst) -> Result<Target, ProxyError> {
    resolve_http(snapshot, orig_dst, None)
}
