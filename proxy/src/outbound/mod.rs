//! The outbound direction: traffic from the local application to the
//! network. A request goes, in order of precedence, to the L7 route for
//! its authority, the simple route for its authority or destination port,
//! the listener's default cluster, or (when iptables redirected it) its
//! original destination. Opaque TCP takes the same port, default and
//! original-destination rules ([`crate::tcp`]).
//!
//! The whole HTTP stack is below, outermost layer first; each layer is a
//! module of [`crate::stack`].

use crate::http::client_body::ClientBody;
use crate::http::error::ProxyError;
use crate::http::vhost::{Action, Route};
use crate::http::{headers, ConnContext, Target};
use crate::orig_dst::OrigDst;
use crate::route::{RouteTarget, Snapshot, Targets};
use crate::stack::router::{Routed, Router};
use crate::stack::split::{Dispatch, Split, Upstream};
use crate::stack::{
    admit, balance::Balance, breaker::Breaker, client::Client, endpoint_metrics::EndpointMetrics,
    fault, headers::MeshOrigProto, load::Load, rate_limit, request_metrics, rescue, retry, timeout,
    trace, Req, Rsp,
};
use http::Request;
use std::convert::Infallible;
use std::sync::Arc;
use tower::{Service, ServiceBuilder};

/// One client connection's stack.
pub fn stack(
    conn: Arc<ConnContext>,
) -> impl Service<Request<ClientBody>, Response = Rsp, Error = Infallible, Future: Send> + Clone {
    let routes = conn.clone();
    ServiceBuilder::new()
        .layer(rescue::layer(conn.clone())) // every error becomes a response naming its cause
        .layer(admit::layer(conn.inputs.snapshot.clone())) // one authority, size limits, path normalisation
        .layer(trace::layer(conn.clone())) // trace headers kept, started or continued; the proxy's span
        .layer(request_metrics::layer(conn.clone())) // request_total, latency, response_total at stream end
        .layer(crate::stack::observe::layer(conn.clone())) // access log and tap records at stream end; one load when off
        .service(Router::new(conn, rules, move |route, dispatch| {
            route_stack(&routes, route, dispatch) // virtual host, authority, port, default, original destination
        }))
}

/// One route's stack; `route` is None for a simple route or none at all.
fn route_stack(
    conn: &Arc<ConnContext>,
    route: Option<Arc<Route>>,
    dispatch: Dispatch,
) -> impl Service<Req, Response = Rsp, Error = ProxyError, Future: Send> + Clone {
    let clusters = conn.clone();
    ServiceBuilder::new()
        .layer(fault::layer(route.clone())) // abort or delay a share of requests
        .layer(rate_limit::layer(route.clone())) // the route's token bucket: 429
        .layer(timeout::layer(route.clone(), conn.orig_dst.addr)) // route timeout and grpc-timeout, from body sent
        .layer(retry::layer(route, conn.inputs.metrics.clone())) // tower Retry: policy, budget, max_retries
        .service(Split::new(dispatch, move |upstream| {
            cluster_stack(&clusters, upstream) // the weighted split's pick
        }))
}

/// One cluster's stack (or an original destination's).
fn cluster_stack(
    conn: &Arc<ConnContext>,
    upstream: Upstream,
) -> impl Service<Req, Response = Rsp, Error = ProxyError, Future: Send> + Clone {
    let endpoints = conn.clone();
    let cluster = match &upstream {
        Upstream::Cluster(target) => Some(target.cluster.clone()),
        Upstream::Direct(_) => None,
    };
    let none = conn.no_authority.clone();
    Breaker::new(
        cluster, // max_requests: fail fast with 503, slot held to the end of the response
        Balance::new(upstream, conn.client.ip(), none, move |target| {
            endpoint_stack(&endpoints, target) // the cluster's policy picks; unsent requests go elsewhere
        }),
    )
}

/// One endpoint's stack.
fn endpoint_stack(
    conn: &Arc<ConnContext>,
    target: Target,
) -> impl Service<Req, Response = Rsp, Error = ProxyError, Future: Send> + Clone {
    let endpoint = target.cluster.clone().zip(target.endpoint.clone());
    Load::new(
        endpoint, // in flight, Peak-EWMA latency, outlier detection
        conn.inputs.metrics.clone(),
        EndpointMetrics::new(
            conn.clone(), // the request's labels: this endpoint's
            target.clone(),
            MeshOrigProto::layer(&target)(
                // HTTP/1 over the mesh's HTTP/2 says so
                Client::new(conn.clone(), target), // pool, connect, mTLS, send, try timeout
            ),
        ),
    )
}

/// Route an outbound HTTP request by [`decide`]'s rule.
fn rules(
    snapshot: &Snapshot,
    conn: &ConnContext,
    req: &Request<crate::http::body::UpstreamBody>,
) -> Result<Routed, ProxyError> {
    match decide(snapshot, conn.orig_dst, req) {
        Decision::VirtualHost(route) => match &route.action {
            Action::Forward(_) => Ok(Routed::Forward(
                Some(route.clone()),
                Dispatch::Route(route.clone()),
            )),
            Action::Direct { .. } | Action::Redirect { .. } => Ok(Routed::Local(route.clone())),
            Action::OriginalDestination if conn.orig_dst.redirected => Ok(Routed::Forward(
                Some(route.clone()),
                Dispatch::Direct(conn.orig_dst.addr),
            )),
            Action::OriginalDestination => Err(ProxyError::NoRoute {
                authority: headers::authority(req).unwrap_or("").to_string(),
            }),
        },
        Decision::Authority(route) | Decision::Default(route) => {
            Ok(Routed::Forward(None, Dispatch::Cluster(route.clone())))
        }
        // A split picks per request, here (decide itself never picks).
        Decision::Destination(targets) | Decision::Port(targets) => Ok(Routed::Forward(
            None,
            Dispatch::Cluster(targets.pick().clone()),
        )),
        Decision::OriginalDestination(addr) => Ok(Routed::Forward(None, Dispatch::Direct(addr))),
        Decision::NoRoute => Err(ProxyError::NoRoute {
            authority: headers::authority(req).unwrap_or("").to_string(),
        }),
    }
}

/// Which outbound rule claims a request. The data path and route explain
/// ([`crate::admin`]'s `/debug/route`, `strait explain`) both decide here.
#[derive(Debug)]
pub enum Decision<'a> {
    /// A virtual host's route.
    VirtualHost(&'a Arc<Route>),
    /// The simple route for the request's authority.
    Authority(&'a RouteTarget),
    /// The simple route for the destination address (IP and port).
    Destination(&'a Targets),
    /// The simple route for the destination port.
    Port(&'a Targets),
    /// The listener's default cluster.
    Default(&'a RouteTarget),
    /// Where iptables found the connection headed.
    OriginalDestination(std::net::SocketAddr),
    NoRoute,
}

/// Virtual hosts first (those scoped to the destination port, then the
/// rest), then the simple authority and port routes, the default cluster,
/// the original destination.
pub fn decide<'a, B>(snapshot: &'a Snapshot, orig_dst: OrigDst, req: &Request<B>) -> Decision<'a> {
    let authority = headers::authority(req);
    let scoped = snapshot.port_vhosts(orig_dst.addr.port());
    if let (Some(vhosts), Some(authority)) = (scoped, authority) {
        if let Some(route) = vhosts.find(&vhost_host(authority), req) {
            return Decision::VirtualHost(route);
        }
    }
    if let (false, Some(authority)) = (snapshot.vhosts.is_empty(), authority) {
        if let Some(route) = snapshot.vhosts.find(&vhost_host(authority), req) {
            return Decision::VirtualHost(route);
        }
    }
    if let Some(route) = authority.and_then(|a| snapshot.by_authority(a)) {
        return Decision::Authority(route);
    }
    if let Some(targets) = snapshot.destination_targets(orig_dst.addr) {
        return Decision::Destination(targets);
    }
    if let Some(targets) = snapshot.port_targets(orig_dst.addr.port()) {
        return Decision::Port(targets);
    }
    if let Some(route) = snapshot.outbound_default.as_ref() {
        return Decision::Default(route);
    }
    if orig_dst.redirected {
        return Decision::OriginalDestination(orig_dst.addr);
    }
    Decision::NoRoute
}

/// The host virtual hosts are looked up by: lowercase, without the port.
pub fn vhost_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = crate::route::strip_port(authority);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Pick the target for an outbound opaque TCP connection: the route for
/// its TLS server name (`server_name`, lowercase), else for its original
/// destination, else the default cluster, else the original destination.
pub fn resolve_tcp(
    snapshot: &Snapshot,
    orig_dst: OrigDst,
    server_name: Option<&str>,
) -> Result<Target, ProxyError> {
    let by_name = server_name.and_then(|n| snapshot.by_server_name(n, orig_dst.addr));
    let route = by_name
        .or_else(|| snapshot.by_orig_dst(orig_dst.addr))
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
