//! L7 forwarding: one request from the client to the chosen upstream and
//! its response back. Routing decides the target ([`crate::outbound`] /
//! [`crate::inbound`]), [`headers`] reshapes the request, the endpoint's
//! [`crate::pool`] supplies a connection, [`error`] turns failures into
//! responses, and [`server`] runs hyper on the accepted connection.

mod attempt;
pub mod authority;
pub mod body;
pub mod error;
pub mod headers;
pub mod server;
pub mod stream_end;
pub mod vhost;

use crate::metrics::{Metrics, RequestKey, RequestMetrics, TlsStatus};
use crate::orig_dst::OrigDst;
use crate::outbound::Routed;
use crate::pool::{Checkout, EndpointPool, HttpVersion, NotSent, Pools};
use crate::route::{ClusterState, Snapshot};
use crate::tls::Tls;
use crate::{inbound, outbound, Direction};
use arc_swap::ArcSwap;
use body::{ProxyBody, UpstreamBody};
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
    /// The workload identity, when mTLS is configured.
    pub tls: Option<Arc<Tls>>,
}

/// Carries an HTTP/1 request's version across the HTTP/2 mesh hop, so the
/// far side restores it (as Linkerd's `l5d-orig-proto` does).
pub const ORIG_PROTO_HEADER: &str = "strait-orig-proto";
/// The client's mesh identity, set on inbound requests that arrived over
/// mTLS and stripped from every other.
pub const CLIENT_ID_HEADER: &str = "strait-client-id";

/// Where a request or connection goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `authority` metric label: the route's authority, the cluster's
    /// name, or empty for an original destination.
    pub authority: Arc<str>,
    /// The `route` metric label: the L7 route's name, or empty.
    pub route: Arc<str>,
    pub cluster: Option<Arc<ClusterState>>,
    /// The cluster endpoint picked, when the target is one.
    pub endpoint: Option<Arc<crate::balance::endpoint::Endpoint>>,
}

impl Target {
    fn timeouts(&self, snapshot: &Snapshot) -> (Duration, Duration) {
        match &self.cluster {
            Some(c) => {
                let settings = c.settings();
                (settings.connect_timeout, settings.response_timeout)
            }
            None => (
                snapshot.config.proxy.connect_timeout,
                snapshot.config.proxy.response_timeout,
            ),
        }
    }

    /// The identity a meshed target must prove.
    pub fn mesh_identity(&self) -> Option<&Arc<str>> {
        self.endpoint.as_ref()?.mesh.as_ref()
    }

    /// The HTTP version to speak upstream, given the client's. Meshed
    /// targets always get HTTP/2: one multiplexed mTLS connection per peer.
    fn http_version(&self, client: Version) -> Result<HttpVersion, ProxyError> {
        if self.mesh_identity().is_some() {
            return Ok(HttpVersion::Http2);
        }
        let same_as_client = if client == Version::HTTP_2 {
            HttpVersion::Http2
        } else {
            HttpVersion::Http1
        };
        match self.cluster.as_ref().map(|c| (c.settings().protocol, c)) {
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
    /// The client side's TLS: inbound mesh connections know the client's identity.
    pub tls: TlsStatus,
    /// Inbound authorization counters for this connection's (port, identity).
    authz: std::sync::OnceLock<(prometheus::IntCounter, prometheus::IntCounter)>,
    /// The last target's handles: keep-alive connections mostly hit the
    /// same target, so label sets and pools are looked up once.
    memo: Mutex<Option<Memo>>,
}

struct Memo {
    authority: Arc<str>,
    route: Arc<str>,
    addr: SocketAddr,
    version: HttpVersion,
    mesh: Option<Arc<str>>,
    metrics: Arc<RequestMetrics>,
    pool: Arc<EndpointPool>,
}

impl ConnContext {
    pub fn new(
        inputs: Arc<Inputs>,
        client: SocketAddr,
        orig_dst: OrigDst,
        tls: TlsStatus,
    ) -> Arc<ConnContext> {
        Arc::new(ConnContext {
            inputs,
            client,
            orig_dst,
            tls,
            authz: std::sync::OnceLock::new(),
            memo: Mutex::new(None),
        })
    }

    fn direction(&self) -> Direction {
        self.inputs.direction
    }

    /// The TLS labels of a request to `target`: the client side's status
    /// inbound, the target's outbound.
    fn request_tls(&self, target: &Target) -> TlsStatus {
        match (self.direction(), target.mesh_identity()) {
            (Direction::Inbound, _) => self.tls.clone(),
            (Direction::Outbound, Some(id)) => TlsStatus::Mesh {
                client_id: None,
                server_id: Some(id.clone()),
            },
            (Direction::Outbound, None) => TlsStatus::NoIdentity("not_meshed"),
        }
    }

    /// An HTTP/1 request carried over the mesh's HTTP/2 goes on to the
    /// app as HTTP/1 again, unless the target's cluster names a protocol.
    fn restore_orig_proto(
        &self,
        req: &Request<Incoming>,
        target: &Target,
        version: HttpVersion,
    ) -> HttpVersion {
        let carried_h1 = req
            .headers()
            .get(ORIG_PROTO_HEADER)
            .is_some_and(|p| p.as_bytes().starts_with(b"HTTP/1"));
        let protocol_is_auto = target
            .cluster
            .as_ref()
            .is_none_or(|c| c.settings().protocol == Protocol::Auto);
        if self.direction() == Direction::Inbound
            && self.client_identity().is_some()
            && carried_h1
            && protocol_is_auto
        {
            HttpVersion::Http1
        } else {
            version
        }
    }

    fn client_identity(&self) -> Option<&str> {
        match &self.tls {
            TlsStatus::Mesh { client_id, .. } => client_id.as_deref(),
            TlsStatus::NoIdentity(_) => None,
        }
    }

    fn handles(
        &self,
        target: &Target,
        version: HttpVersion,
    ) -> (Arc<RequestMetrics>, Arc<EndpointPool>) {
        let mesh = target.mesh_identity();
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = memo.as_ref() {
            if Arc::ptr_eq(&m.authority, &target.authority)
                && Arc::ptr_eq(&m.route, &target.route)
                && m.addr == target.addr
                && m.version == version
                && m.mesh.as_ref() == mesh
            {
                return (m.metrics.clone(), m.pool.clone());
            }
        }
        let key = RequestKey {
            direction: self.direction(),
            authority: target.authority.clone(),
            target: target.addr,
            tls: self.request_tls(target),
            route: target.route.clone(),
            cluster: target
                .cluster
                .as_ref()
                .map_or_else(|| target.route.clone(), |c| c.name.clone()),
        };
        // A cluster endpoint owns its label sets (evicted with it); other
        // targets share the process-wide cache.
        let metrics = match &target.endpoint {
            Some(endpoint) => endpoint.request_metrics(key),
            None => self.inputs.metrics.requests(key),
        };
        let pool = match &target.endpoint {
            Some(endpoint) => endpoint
                .pool(&self.inputs.pools, self.direction(), version)
                .clone(),
            None => self.inputs.pools.endpoint(target.addr, version, mesh),
        };
        *memo = Some(Memo {
            authority: target.authority.clone(),
            route: target.route.clone(),
            addr: target.addr,
            version,
            mesh: mesh.cloned(),
            metrics: metrics.clone(),
            pool: pool.clone(),
        });
        (metrics, pool)
    }

    /// Inbound policy for this request; outbound requests are not checked.
    fn authorize(&self, snapshot: &Snapshot, req: &Request<Incoming>) -> Result<(), ProxyError> {
        if self.direction() != Direction::Inbound {
            return Ok(());
        }
        let policy = &snapshot.config.policy;
        if crate::authz::is_unauthenticated_path(policy, req.uri().path()) {
            return Ok(());
        }
        let port = self.orig_dst.addr.port();
        let decision = crate::authz::check(policy, port, self.client_identity());
        let (allow, deny) = self.authz.get_or_init(|| {
            let metrics = &self.inputs.metrics;
            (
                metrics.authz_counter(true, port, self.client_identity()),
                metrics.authz_counter(false, port, self.client_identity()),
            )
        });
        match decision {
            Ok(()) => {
                allow.inc();
                Ok(())
            }
            Err(denied) => {
                deny.inc();
                Err(ProxyError::Forbidden { reason: denied.0 })
            }
        }
    }

    fn resolve<'s>(
        &self,
        snapshot: &'s Snapshot,
        req: &Request<Incoming>,
    ) -> Result<Routed<'s>, ProxyError> {
        match self.direction() {
            Direction::Outbound => {
                outbound::route_http(snapshot, self.orig_dst, self.client.ip(), req)
            }
            Direction::Inbound => {
                inbound::resolve_http(snapshot, self.orig_dst, headers::authority(req))
                    .map(|target| Routed::Forward(target, None))
            }
        }
    }

    /// Handles for a request answered without an upstream.
    fn local_metrics(
        &self,
        snapshot: &Snapshot,
        route: Option<&vhost::Route>,
    ) -> Arc<RequestMetrics> {
        let tls = match self.direction() {
            Direction::Inbound => self.tls.clone(),
            Direction::Outbound => TlsStatus::NoIdentity("not_meshed"),
        };
        let route = route.map_or_else(|| snapshot.no_authority.clone(), |r| r.name.clone());
        self.inputs.metrics.requests(RequestKey {
            direction: self.direction(),
            authority: snapshot.no_authority.clone(),
            target: self.orig_dst.addr,
            tls,
            route,
            cluster: snapshot.no_authority.clone(),
        })
    }
}

/// Serve one request: route it, forward it, and answer for failures.
pub async fn handle(
    ctx: Arc<ConnContext>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let snapshot = ctx.inputs.snapshot.load_full();
    let client_version = req.version();
    if let Err(err) = authority::admit(&mut req, &snapshot.config.proxy.http) {
        return Ok(authority::refused(&ctx, &snapshot, &err));
    }
    let routed = ctx.authorize(&snapshot, &req).and_then(|()| {
        Ok(match ctx.resolve(&snapshot, &req)? {
            Routed::Forward(target, route) => {
                let version = target.http_version(client_version)?;
                let version = ctx.restore_orig_proto(&req, &target, version);
                Ok((version, target, route))
            }
            Routed::Local(route) => Err(route),
        })
    });
    let (version, target, route) = match routed {
        Ok(Ok(forward)) => forward,
        Ok(Err(route)) => {
            let metrics = ctx.local_metrics(&snapshot, Some(route));
            metrics.total.inc();
            let mut response = local_response(route, &req);
            route.edit_response(response.headers_mut());
            let status = response.status().as_u16();
            metrics.response(status, status >= 500);
            return Ok(response);
        }
        Err(err) => {
            let metrics = ctx.local_metrics(&snapshot, None);
            metrics.total.inc();
            let response = error_response(&ctx, ctx.orig_dst.addr, &err);
            metrics.response(response.status().as_u16(), true);
            return Ok(response);
        }
    };
    let (metrics, pool) = ctx.handles(&target, version);
    metrics.total.inc();
    let mut timeout = route.and_then(|r| r.timeout);
    let admission = match route {
        Some(route) => {
            route.edit_request(&mut req);
            route.admit()
        }
        None => vhost::Admission::Pass { delay: None },
    };
    if let Some(grpc) = grpc_timeout(&req) {
        timeout = Some(timeout.map_or(grpc, |t| t.min(grpc)));
    }
    // A fault delay holds no circuit-breaker slot; the request's slot is
    // held until its response stream ends.
    let mut slot = None;
    let result = match admission {
        vhost::Admission::RateLimited => Err(ProxyError::RateLimited),
        vhost::Admission::Abort(status) => Err(ProxyError::FaultAbort { status }),
        vhost::Admission::Pass { delay } => {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            match &target.cluster {
                Some(cluster) => slot = cluster.try_request().map(Some),
                None => slot = Some(None),
            }
            match slot {
                None => Err(ProxyError::Overloaded {
                    cluster: target
                        .cluster
                        .as_ref()
                        .map_or_else(String::new, |c| c.name.to_string()),
                    limit: "max_requests",
                }),
                Some(_) => {
                    let retry = route.and_then(|r| r.retry.as_ref());
                    attempt::run(
                        &ctx, &snapshot, &target, version, &pool, req, timeout, retry,
                    )
                    .await
                }
            }
        }
    };
    let mut response = match result {
        Ok(mut response) => {
            *response.version_mut() = client_version;
            response
        }
        Err(err) => error_response(&ctx, target.addr, &err),
    };
    if let Some(route) = route {
        route.edit_response(response.headers_mut());
    }
    metrics
        .latency_ms
        .observe(started.elapsed().as_secs_f64() * 1000.0);
    let end = stream_end::ResponseEnd::new(
        metrics,
        response.status().as_u16(),
        response.headers(),
        slot.flatten(),
    );
    track(&mut response, end);
    Ok(response)
}

/// Record `end` when the response stream ends: the upstream's stream,
/// or (after a retry's read-ahead) the frames held back and the rest.
fn track(response: &mut Response<ProxyBody>, mut end: stream_end::ResponseEnd) {
    match response.body_mut() {
        ProxyBody::Stream(body) => body.track(end),
        ProxyBody::Replayed { frames, rest } => {
            for trailers in frames.iter().filter_map(|f| f.trailers_ref()) {
                end.trailers(trailers);
            }
            match rest {
                Some(body) => body.track(end),
                None => end.finish(false),
            }
        }
        ProxyBody::Full(_) => end.finish(false),
    }
}

/// A gRPC client's deadline (`grpc-timeout: 100m`), if it sent one.
fn grpc_timeout<B>(req: &Request<B>) -> Option<Duration> {
    let value = req.headers().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    (!timeout.is_zero()).then_some(timeout)
}

/// A direct response or redirect configured on an L7 route.
fn local_response<B>(route: &vhost::Route, req: &Request<B>) -> Response<ProxyBody> {
    match &route.action {
        vhost::Action::Direct { status, body } => {
            let mut response = Response::new(ProxyBody::Full(Some(body.clone())));
            *response.status_mut() = *status;
            response
        }
        vhost::Action::Redirect { host, path, status } => {
            let authority = headers::authority(req).unwrap_or("");
            let location = vhost::redirect_location(req, authority, host, path);
            let mut response = Response::new(ProxyBody::empty());
            *response.status_mut() = *status;
            if let Ok(location) = http::HeaderValue::try_from(location) {
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
            }
            response
        }
        // Forwarding routes never reach here.
        vhost::Action::Forward(_) => {
            let mut response = Response::new(ProxyBody::empty());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

fn error_response(ctx: &ConnContext, addr: SocketAddr, err: &ProxyError) -> Response<ProxyBody> {
    match err {
        // Configured outcomes, not failures: keep them out of the warnings.
        ProxyError::RateLimited | ProxyError::FaultAbort { .. } => {
            debug!(target_addr = %addr, reason = err.reason(), "request answered by the route's policy")
        }
        _ => crate::log_limit::request_failed(addr, err),
    }
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
    mut req: Request<UpstreamBody>,
    timeout: Option<Duration>,
) -> Result<Response<ProxyBody>, attempt::TryError> {
    let is_connect = req.method() == Method::CONNECT && req.version() < Version::HTTP_2;
    let upgrade = version == HttpVersion::Http1 && (is_connect || headers::is_upgrade(&req));
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    match ctx.direction() {
        Direction::Inbound => {
            headers::append_forwarded_for(req.headers_mut(), ctx.client.ip());
            let headers = req.headers_mut();
            headers.remove(ORIG_PROTO_HEADER);
            headers.remove(CLIENT_ID_HEADER);
            if let Some(id) = ctx.client_identity() {
                if let Ok(id) = http::HeaderValue::from_str(id) {
                    headers.insert(CLIENT_ID_HEADER, id);
                }
            }
        }
        Direction::Outbound => {
            if target.mesh_identity().is_some() && req.version() < Version::HTTP_2 {
                req.headers_mut().insert(
                    ORIG_PROTO_HEADER,
                    http::HeaderValue::from_static("HTTP/1.1"),
                );
            }
        }
    }
    headers::prepare_request(&mut req, version, upgrade, target.addr);

    let (connect_timeout, cluster_timeout) = target.timeouts(snapshot);
    let response_timeout = timeout.unwrap_or(cluster_timeout);
    let exchange = async {
        let pending = match &target.cluster {
            Some(cluster) => attempt::Limit::enter(
                &cluster.pending,
                cluster.settings().circuit_breaker.max_pending,
            ),
            None => Some(attempt::Limit::none()),
        };
        let Some(pending) = pending else {
            return Err(attempt::TryError::from(ProxyError::Overloaded {
                cluster: target
                    .cluster
                    .as_ref()
                    .map_or_else(String::new, |c| c.name.to_string()),
                limit: "max_pending",
            }));
        };
        let limit = target.cluster.as_ref().map(|c| &c.connections);
        let cluster_name = target.cluster.as_ref().map_or("", |c| &*c.name);
        let checkout = match pool.checkout(connect_timeout, upgrade, limit).await {
            Ok(checkout) => checkout,
            // No connection: the request was never sent, and (unless it
            // is an upgrade, whose client side is already taken) it can
            // go to another endpoint.
            Err(e) => {
                return Err(attempt::TryError {
                    error: overloaded_or(e, cluster_name),
                    unsent: (!upgrade).then_some(req),
                })
            }
        };
        drop(pending);
        send(
            checkout,
            pool,
            connect_timeout,
            limit,
            cluster_name,
            req,
            !upgrade,
        )
        .await
    };
    let mut response = match tokio::time::timeout(response_timeout, exchange).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(attempt::TryError::from(ProxyError::ResponseTimeout {
                addr: target.addr,
                after: response_timeout,
            }))
        }
    };

    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && response.status().is_success());
    if let (Some(client_upgrade), true) = (client_upgrade, switched) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, target.addr));
    }
    headers::strip_hop_by_hop(response.headers_mut(), switched);
    Ok(response.map(|body| ProxyBody::Stream(stream_end::Tracked::new(body))))
}

/// Send on a checked-out connection. A pooled HTTP/1 connection the
/// upstream closed while idle hands the request back unsent; it goes once
/// more on a fresh connection (safe: the upstream never saw it).
async fn send(
    checkout: Checkout,
    pool: &Arc<EndpointPool>,
    connect_timeout: Duration,
    limit: Option<&crate::pool::ConnectionLimit>,
    cluster: &str,
    req: Request<UpstreamBody>,
    pool_on_end: bool,
) -> Result<Response<crate::pool::PooledBody>, attempt::TryError> {
    let reused = checkout.reused();
    let addr = pool.addr();
    match checkout.send(req, pool_on_end).await {
        Ok(response) => Ok(response),
        Err((_, Some(NotSent(req)))) if reused => {
            debug!(%addr, "pooled connection was closed; sending on a new one");
            let fresh = match pool.checkout(connect_timeout, true, limit).await {
                Ok(fresh) => fresh,
                // Still unsent: the caller may try another endpoint.
                Err(e) => {
                    return Err(attempt::TryError {
                        error: overloaded_or(e, cluster),
                        unsent: Some(req),
                    })
                }
            };
            fresh.send(req, pool_on_end).await.map_err(|(source, _)| {
                attempt::TryError::from(ProxyError::exchange(addr, source, pool.plain_http2()))
            })
        }
        Err((source, _)) => Err(attempt::TryError::from(ProxyError::exchange(
            addr,
            source,
            pool.plain_http2(),
        ))),
    }
}

/// A pool error as the proxy's error, naming the cluster when its
/// connection limit was the cause.
fn overloaded_or(e: crate::pool::PoolError, cluster: &str) -> ProxyError {
    match e {
        crate::pool::PoolError::TooManyConnections => ProxyError::Overloaded {
            cluster: cluster.to_string(),
            limit: "max_connections",
        },
        e => e.into(),
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
