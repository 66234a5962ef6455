//! The innermost layer: one try on the wire. Picks the HTTP version to
//! speak (meshed endpoints always HTTP/2, else the cluster's protocol or
//! the client's), reshapes the request for it, takes a connection from the
//! endpoint's pool (under the cluster's `max_pending` and
//! `max_connections`, within the connect timeout, mTLS when the endpoint
//! is meshed), sends, and waits for response headers within the try's
//! timeout (counted from when the body has been sent, [`super::timeout`]).
//! Upgrades (WebSocket, CONNECT) are spliced into a byte tunnel.
//!
//! A request that never reached the upstream (no connection could be
//! had, or a pooled connection turned out closed and a fresh one failed)
//! comes back as [`ProxyError::Unsent`] with the request, for
//! [`super::balance`] to send elsewhere.

use super::timeout::deadline;
use super::{BoxFuture, Req, Rsp};
use crate::http::error::{BadRequest, ProxyError};
use crate::http::stream_end::Tracked;
use crate::http::{body::ProxyBody, headers, ConnContext, Target};
use crate::pool::{Checkout, ConnectionLimit, EndpointPool, HttpVersion, NotSent, PoolError};
use http::{Method, StatusCode, Version};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use strait_config::Protocol;
use tower::Service;
use tracing::debug;

#[derive(Clone)]
pub struct Client {
    conn: Arc<ConnContext>,
    target: Target,
}

impl Client {
    pub fn new(conn: Arc<ConnContext>, target: Target) -> Client {
        Client { conn, target }
    }
}

impl Service<Req> for Client {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let conn = self.conn.clone();
        let target = self.target.clone();
        Box::pin(async move { forward(&conn, &target, req).await })
    }
}

/// The HTTP version to speak to `target`, given the request's.
fn upstream_version(
    target: &Target,
    settings: Option<&TrySettings>,
    request: Version,
) -> Result<HttpVersion, ProxyError> {
    if target.mesh_identity().is_some() {
        return Ok(HttpVersion::Http2);
    }
    let same_as_client = if request == Version::HTTP_2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    };
    match settings.map(|s| s.protocol) {
        None | Some(Protocol::Auto) => Ok(same_as_client),
        Some(Protocol::Http1) => Ok(HttpVersion::Http1),
        Some(Protocol::Http2) => Ok(HttpVersion::Http2),
        Some(Protocol::Opaque) => Err(ProxyError::OpaqueCluster {
            cluster: target.cluster.as_ref().map_or("", |c| &*c.name).to_string(),
        }),
    }
}

/// What one try needs of its cluster's settings, read once (one load of
/// the settings per try instead of one per use).
struct TrySettings {
    protocol: Protocol,
    max_pending: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl TrySettings {
    fn of(target: &Target) -> Option<TrySettings> {
        let settings = target.cluster.as_ref()?.settings();
        Some(TrySettings {
            protocol: settings.protocol,
            max_pending: settings.circuit_breaker.max_pending,
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
        })
    }
}

async fn forward(conn: &ConnContext, target: &Target, req: Req) -> Result<Rsp, ProxyError> {
    let Req {
        http: mut request,
        state,
        try_timeout,
        retrying,
        ..
    } = req;
    let settings = TrySettings::of(target);
    let version = upstream_version(target, settings.as_ref(), request.version())?;
    let is_connect = request.method() == Method::CONNECT && request.version() < Version::HTTP_2;
    let upgrade = version == HttpVersion::Http1 && (is_connect || headers::is_upgrade(&request));
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut *request));
    headers::prepare_request(&mut request, version, upgrade, target.addr);

    let (connect_timeout, cluster_timeout) = timeouts(conn, settings.as_ref());
    let response_timeout = try_timeout.unwrap_or(Some(cluster_timeout));
    let pool = match &target.endpoint {
        Some(endpoint) => endpoint
            .pool(&conn.inputs.pools, conn.direction(), version)
            .clone(),
        None => conn.direct_pool(target.addr, version),
    };
    let limits = target
        .cluster
        .as_ref()
        .zip(settings.as_ref())
        .map(|(c, s)| (&c.pending, s.max_pending, &c.connections, &*c.name));
    let exchange = async {
        let pending = match limits {
            Some((pending, max, _, name)) => match Pending::enter(pending, max) {
                Some(slot) => Some(slot),
                None => {
                    return Err(ProxyError::Overloaded {
                        cluster: name.to_string(),
                        limit: "max_pending",
                    })
                }
            },
            None => None,
        };
        let limit = limits.map(|(_, _, connections, _)| connections);
        let cluster = limits.map_or("", |(_, _, _, name)| name);
        // Timed only for a request being recorded (one load otherwise).
        let began = state.tally.is_on().then(std::time::Instant::now);
        let checkout = match pool.checkout(connect_timeout, upgrade, limit).await {
            Ok(checkout) => {
                if let Some(began) = began {
                    state
                        .tally
                        .note_connect((!checkout.reused()).then(|| began.elapsed()));
                }
                checkout
            }
            // No connection: never sent, and (unless it is an upgrade,
            // whose client side is already taken) it can go elsewhere.
            Err(e) => {
                return Err(unsent(
                    overloaded_or(e, cluster),
                    (!upgrade).then_some(request),
                    &state,
                ))
            }
        };
        drop(pending);
        let response = send(
            checkout,
            &pool,
            connect_timeout,
            limit,
            cluster,
            request,
            !upgrade,
            &state,
        )
        .await?;
        Ok(response.map(|body| ProxyBody::Stream(Box::new(Tracked::new(body)))))
    };
    let result = deadline(
        exchange,
        &state,
        response_timeout,
        target.addr,
        Some(&conn.spare_timer),
    )
    .await
    .map_err(|e| keep_try_timeout(e, try_timeout, retrying));
    // The client's body going over its cap broke the exchange, not the
    // upstream: the client's fault (hyper reports it as a reset on HTTP/2).
    let over_cap = state.body_cap.get().and_then(|t| t.over());
    let mut response = match (result, over_cap) {
        (Err(_), Some(over)) => {
            return Err(BadRequest::StreamedBodyTooLarge { max: over.max }.into())
        }
        (result, _) => result?,
    };

    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && response.status().is_success());
    if let (Some(client_upgrade), true) = (client_upgrade, switched) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, target.addr));
    }
    headers::strip_hop_by_hop(response.headers_mut(), switched);
    Ok(response)
}

/// (connect timeout, response timeout): the cluster's, or the proxy's.
fn timeouts(conn: &ConnContext, settings: Option<&TrySettings>) -> (Duration, Duration) {
    match settings {
        Some(s) => (s.connect_timeout, s.response_timeout),
        None => {
            let snapshot = conn.inputs.snapshot.load();
            (
                snapshot.config.proxy.connect_timeout,
                snapshot.config.proxy.response_timeout,
            )
        }
    }
}

/// `error`, with the request handed back when it was never sent.
fn unsent(
    error: ProxyError,
    request: Option<Box<http::Request<crate::http::body::UpstreamBody>>>,
    state: &Arc<super::ReqState>,
) -> ProxyError {
    match request {
        Some(http) => ProxyError::Unsent {
            error: Box::new(error),
            request: Box::new(Req {
                http,
                state: state.clone(),
                try_timeout: None,
                read_ahead: None,
                deposit: false,
                retrying: false,
            }),
        },
        None => error,
    }
}

/// A request handed back unsent keeps its route's timeout for the
/// endpoint it is sent to next (unset, the cluster's would apply there).
fn keep_try_timeout(
    error: ProxyError,
    try_timeout: Option<Option<Duration>>,
    retrying: bool,
) -> ProxyError {
    match error {
        ProxyError::Unsent { error, mut request } => {
            request.try_timeout = try_timeout;
            request.retrying = retrying;
            ProxyError::Unsent { error, request }
        }
        error => error,
    }
}

/// Send on a checked-out connection. A pooled HTTP/1 connection the
/// upstream closed while idle, or an HTTP/2 one it sent GOAWAY on, hands
/// the request back unsent; it goes once
/// more on a fresh connection (safe: the upstream never saw it).
#[allow(clippy::too_many_arguments)]
async fn send(
    checkout: Checkout,
    pool: &Arc<EndpointPool>,
    connect_timeout: Duration,
    limit: Option<&ConnectionLimit>,
    cluster: &str,
    req: Box<http::Request<crate::http::body::UpstreamBody>>,
    pool_on_end: bool,
    state: &Arc<super::ReqState>,
) -> Result<http::Response<crate::pool::PooledBody>, ProxyError> {
    let reused = checkout.reused();
    let addr = pool.addr();
    match checkout.send(*req, pool_on_end).await {
        Ok(response) => Ok(response),
        Err((_, Some(NotSent(req)))) if reused => {
            debug!(%addr, "pooled connection was closed; sending on a new one");
            let fresh = match pool.checkout_fresh(connect_timeout, limit).await {
                Ok(fresh) => fresh,
                Err(e) => {
                    return Err(unsent(
                        overloaded_or(e, cluster),
                        Some(Box::new(req)),
                        state,
                    ))
                }
            };
            fresh
                .send(req, pool_on_end)
                .await
                .map_err(|(source, _)| ProxyError::exchange(addr, source, pool.plain_http2()))
        }
        Err((source, _)) => Err(ProxyError::exchange(addr, source, pool.plain_http2())),
    }
}

/// A pool error as the proxy's error, naming the cluster when its
/// connection limit was the cause.
fn overloaded_or(e: PoolError, cluster: &str) -> ProxyError {
    match e {
        PoolError::TooManyConnections => ProxyError::Overloaded {
            cluster: cluster.to_string(),
            limit: "max_connections",
        },
        e => e.into(),
    }
}

/// A request waiting for a connection, under the cluster's `max_pending`.
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn enter(counter: &'a AtomicUsize, max: usize) -> Option<Pending<'a>> {
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Pending(counter))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        (Err(e), _) | (_, Err(e)) => tracing::warn!(%addr, error = %e, "upgrade failed"),
    }
}
