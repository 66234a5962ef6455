//! The inbound direction: traffic from the network to the local
//! application. Everything goes to the application at the original
//! destination port on the configured forward address (127.0.0.1 by
//! default), or to the inbound listener's default cluster when one is set.
//! Outbound routes do not apply here.
//!
//! The whole HTTP stack is below, outermost layer first; each layer is a
//! module of [`crate::stack`].

use crate::http::client_body::ClientBody;
use crate::http::error::ProxyError;
use crate::http::{ConnContext, Target};
use crate::orig_dst::OrigDst;
use crate::outbound::to_cluster;
use crate::route::Snapshot;
use crate::stack::router::{Routed, Router};
use crate::stack::split::{Dispatch, Split, Upstream};
use crate::stack::{
    admit, authorize, balance::Balance, breaker::Breaker, client::Client,
    endpoint_metrics::EndpointMetrics, headers::ClientIdentity, load::Load, request_metrics,
    rescue, timeout, trace, Req, Rsp,
};
use http::Request;
use std::convert::Infallible;
use std::net::SocketAddr;
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
        .layer(authorize::layer(conn.clone())) // the port's policy on the client's mTLS identity: 403
        .service(Router::new(conn, rules, move |_, dispatch| {
            route_stack(&routes, dispatch) // the app's port, or the default cluster
        }))
}

/// The stack to the app or the default cluster.
fn route_stack(
    conn: &Arc<ConnContext>,
    dispatch: Dispatch,
) -> impl Service<Req, Response = Rsp, Error = ProxyError, Future: Send> + Clone {
    let endpoints = conn.clone();
    let none = conn.no_authority.clone();
    let client = conn.client.ip();
    ServiceBuilder::new()
        .layer(timeout::layer(None, conn.orig_dst.addr)) // grpc-timeout, from body sent
        .service(Split::new(dispatch, move |upstream: Upstream| {
            let cluster = match &upstream {
                Upstream::Cluster(target) => Some(target.cluster.clone()),
                Upstream::Direct(_) => None,
            };
            let endpoints = endpoints.clone();
            Breaker::new(
                cluster, // max_requests of the default cluster
                Balance::new(upstream, client, none.clone(), move |target| {
                    endpoint_stack(&endpoints, target) // the cluster's policy picks
                }),
            )
        }))
}

/// One endpoint's stack (the app is one, with no cluster).
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
            ClientIdentity::layer(conn.clone(), &target)(
                // x-forwarded-for, strait-client-id, HTTP/1 restored
                Client::new(conn.clone(), target), // pool, connect, send, try timeout
            ),
        ),
    )
}

/// Route an inbound HTTP request by [`decide`]'s rule.
fn rules(
    snapshot: &Snapshot,
    conn: &ConnContext,
    req: &Request<crate::http::body::UpstreamBody>,
) -> Result<Routed, ProxyError> {
    match decide(snapshot, conn.orig_dst) {
        Decision::Default(route) => Ok(Routed::Forward(None, Dispatch::Cluster(route.clone()))),
        Decision::App(app) => Ok(Routed::Forward(None, Dispatch::Direct(app))),
        Decision::NoRoute => Err(ProxyError::NoRoute {
            authority: crate::http::headers::authority(req)
                .unwrap_or("")
                .to_string(),
        }),
    }
}

/// Which inbound rule claims a request. The data path and route explain
/// both decide here.
#[derive(Debug)]
pub enum Decision<'a> {
    /// The inbound listener's default cluster.
    Default(&'a crate::route::RouteTarget),
    /// The app, at the port the client dialled on the forward address.
    App(SocketAddr),
    NoRoute,
}

/// The default cluster, else the app at the port the client dialled.
pub fn decide(snapshot: &Snapshot, orig_dst: OrigDst) -> Decision<'_> {
    if let Some(route) = snapshot.inbound_default.as_ref() {
        return Decision::Default(route);
    }
    if !orig_dst.redirected {
        return Decision::NoRoute;
    }
    Decision::App(SocketAddr::new(
        snapshot.config.inbound.forward_ip,
        orig_dst.addr.port(),
    ))
}

/// Pick the target for an inbound HTTP request or TCP connection, by
/// [`decide`]'s rule.
pub fn resolve_http(
    snapshot: &Snapshot,
    orig_dst: OrigDst,
    authority: Option<&str>,
) -> Result<Target, ProxyError> {
    match decide(snapshot, orig_dst) {
        Decision::Default(route) => to_cluster(route, None),
        Decision::App(app) => Ok(Target {
            addr: app,
            authority: snapshot.no_authority.clone(),
            route: snapshot.no_authority.clone(),
            cluster: None,
            endpoint: None,
        }),
        Decision::NoRoute => Err(ProxyError::NoRoute {
            authority: authority.unwrap_or("").to_string(),
        }),
    }
}

/// Pick the target for an inbound opaque TCP connection.
pub fn resolve_tcp(snapshot: &Snapshot, orig_dst: OrigDst) -> Result<Target, ProxyError> {
    resolve_http(snapshot, orig_dst, None)
}
