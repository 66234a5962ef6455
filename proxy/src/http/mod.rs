//! L7 forwarding: one request from the client to the chosen upstream and
//! its response back. Routing decides the target ([`crate::outbound`] /
//! [`crate::inbound`]), [`headers`] reshapes the request, the endpoint's
//! [`crate::pool`] supplies a connection, [`error`] turns failures into
//! responses, and [`server`] runs hyper on the accepted connection.

pub mod body;
pub mod error;
pub mod headers;
pub mod server;

use crate::metrics::{Metrics, RequestMetrics};
use crate::orig_dst::OrigDst;
use crate::pool::{Checkout, EndpointPool, HttpVersion, NotSent, Pools};
use crate::route::{ClusterState, Snapshot};
use crate::{inbound, outbound, Direction};
use arc_swap::ArcSwap;
use body::ProxyBody;
use error::ProxyError;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strait_config::Protocol;
use tracing::{debug, warn};

/// What one direction's data path shares: config, pools, metrics.
pub struct Inputs {
    pub direction: Direction,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub pools: Arc<Pools>,
    pub metrics: Arc<Metrics>,
}

/// Where a request or connection goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `authority` metric label: the route's authority, the cluster's
    /// name, or empty for an original destination.
    pub authority: Arc<str>,
    pub cluster: Option<Arc<ClusterState>>,
}

impl Target {
    fn timeouts(&self, snapshot: &Snapshot) -> (Duration, Duration) {
        match &self.cluster {
            Some(c) => (c.connect_timeout, c.response_timeout),
            None => (
                snapshot.config.proxy.connect_timeout,
                snapshot.config.proxy.response_timeout,
            ),
        }
    }

    /// The HTTP version to speak upstream, given the client's.
    fn http_version(&self, client: Version) -> Result<HttpVersion, ProxyError> {
        let same_as_client = if client == Version::HTTP_2 {
            HttpVersion::Http2
        } else {
            HttpVersion::Http1
        };
        match self.cluster.as_ref().map(|c| (c.protocol, c)) {
            None | Some((Protocol::Auto, _)) => Ok(same_as_client),
            Some((Protocol::Http1, _)) => Ok(HttpVersion::Http1),
            Some((Protocol::Http2, _)) => Ok(HttpVersion::Http2),
            Some((Protocol::Opaque, c)) => Err(ProxyError::OpaqueCluster {
                cluster: c.name.to_string(),
            }),
        }
    }
}

/// Per-connection state shared by the connection's requests.
pub struct ConnContext {
    pub inputs: Arc<Inputs>,
    pub client: SocketAddr,
    pub orig_dst: OrigDst,
    /// The last target's handles: keep-alive connections mostly hit the
    /// same target, so label sets and pools are looked up once.
    memo: Mutex<Option<Memo>>,
}

struct Memo {
    authority: Arc<str>,
    addr: SocketAddr,
    version: HttpVersion,
    metrics: Arc<RequestMetrics>,
    pool: Arc<EndpointPool>,
}

impl ConnContext {
    pub fn new(inputs: Arc<Inputs>, client: SocketAddr, orig_dst: OrigDst) -> Arc<ConnContext> {
        Arc::new(ConnContext {
            inputs,
            client,
            orig_dst,
            memo: Mutex::new(None),
        })
    }

    fn direction(&self) -> Direction {
        self.inputs.direction
    }

    fn handles(
        &self,
        target: &Target,
        version: HttpVersion,
    ) -> (Arc<RequestMetrics>, Arc<EndpointPool>) {
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = memo.as_ref() {
            if Arc::ptr_eq(&m.authority, &target.authority)
                && m.addr == target.addr
                && m.version == version
            {
                return (m.metrics.clone(), m.pool.clone());
            }
        }
        let metrics =
            self.inputs
                .metrics
                .requests(self.direction(), &target.authority, target.addr);
        let pool = self.inputs.pools.endpoint(target.addr, version);
        *memo = Some(Memo {
            authority: target.authority.clone(),
            addr: target.addr,
            version,
            metrics: metrics.clone(),
            pool: pool.clone(),
        });
        (metrics, pool)
    }

    fn resolve(&self, snapshot: &Snapshot, req: &Request<Incoming>) -> Result<Target, ProxyError> {
        let authority = headers::authority(req);
        match self.direction() {
            Direction::Outbound => outbound::resolve_http(snapshot, self.orig_dst, authority),
            Direction::Inbound => inbound::resolve_http(snapshot, self.orig_dst, authority),
        }
    }
}

/// Serve one request: route it, forward it, and answer for failures.
pub async fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let snapshot = ctx.inputs.snapshot.load_full();
    let client_version = req.version();
    let routed = ctx
        .resolve(&snapshot, &req)
        .and_then(|target| Ok((target.http_version(client_version)?, target)));
    let (version, target) = match routed {
        Ok(routed) => routed,
        Err(err) => {
            let addr = ctx.orig_dst.addr;
            let metrics =
                ctx.inputs
                    .metrics
                    .requests(ctx.direction(), &snapshot.no_authority, addr);
            metrics.total.inc();
            let response = error_response(&ctx, addr, &err);
            metrics.response(response.status().as_u16());
            return Ok(response);
        }
    };
    let (metrics, pool) = ctx.handles(&target, version);
    metrics.total.inc();
    let response = match forward(&ctx, &snapshot, &target, version, &pool, req).await {
        Ok(mut response) => {
            *response.version_mut() = client_version;
            response
        }
        Err(err) => error_response(&ctx, target.addr, &err),
    };
    metrics
        .latency_ms
        .observe(started.elapsed().as_secs_f64() * 1000.0);
    metrics.response(response.status().as_u16());
    Ok(response)
}

fn error_response(ctx: &ConnContext, addr: SocketAddr, err: &ProxyError) -> Response<ProxyBody> {
    warn!(target_addr = %addr, reason = err.reason(), error = %err, "request failed in the proxy");
    ctx.inputs
        .metrics
        .proxy_error(ctx.direction(), err.reason());
    err.to_response(ProxyBody::text)
}

async fn forward(
    ctx: &ConnContext,
    snapshot: &Snapshot,
    target: &Target,
    version: HttpVersion,
    pool: &Arc<EndpointPool>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let is_connect = req.method() == Method::CONNECT && req.version() < Version::HTTP_2;
    let upgrade = version == HttpVersion::Http1 && (is_connect || headers::is_upgrade(&req));
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    if ctx.direction() == Direction::Inbound {
        headers::append_forwarded_for(req.headers_mut(), ctx.client.ip());
    }
    headers::prepare_request(&mut req, version, upgrade, target.addr);

    let (connect_timeout, response_timeout) = target.timeouts(snapshot);
    let exchange = async {
        let checkout = pool.checkout(connect_timeout, upgrade).await?;
        send(checkout, pool, connect_timeout, req, !upgrade).await
    };
    let mut response = match tokio::time::timeout(response_timeout, exchange).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ProxyError::ResponseTimeout {
                addr: target.addr,
                after: response_timeout,
            })
        }
    };

    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && response.status().is_success());
    if let (Some(client_upgrade), true) = (client_upgrade, switched) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, target.addr));
    }
    headers::strip_hop_by_hop(response.headers_mut(), switched);
    Ok(response.map(ProxyBody::Upstream))
}

/// Send on a checked-out connection. A pooled HTTP/1 connection the
/// upstream closed while idle hands the request back unsent; it goes once
/// more on a fresh connection (safe: the upstream never saw it).
async fn send(
    checkout: Checkout,
    pool: &Arc<EndpointPool>,
    connect_timeout: Duration,
    req: Request<Incoming>,
    pool_on_end: bool,
) -> Result<Response<crate::pool::PooledBody>, ProxyError> {
    let reused = checkout.reused();
    let addr = pool.addr();
    match checkout.send(req, pool_on_end).await {
        Ok(response) => Ok(response),
        Err((_, Some(NotSent(req)))) if reused => {
            debug!(%addr, "pooled connection was closed; sending on a new one");
            let fresh = pool.checkout(connect_timeout, true).await?;
            fresh
                .send(req, pool_on_end)
                .await
                .map_err(|(source, _)| ProxyError::Upstream { addr, source })
        }
        Err((source, _)) => Err(ProxyError::Upstream { addr, source }),
    }
}

/// Copy bytes both ways between an upgraded client and upstream.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    addr: SocketAddr,
) {
    match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((sent, received)) => debug!(%addr, sent, received, "upgraded stream closed"),
                Err(e) => debug!(%addr, error = %e, "upgraded stream ended with an error"),
            }
        }
        (Err(e), _) | (_, Err(e)) => warn!(%addr, error = %e, "upgrade failed"),
    }
}
