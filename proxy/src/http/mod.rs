//! HTTP for the proxy: [`server`] runs hyper on an accepted connection
//! and hands each request to its direction's tower stack (HTTP/1 through
//! [`park`], which releases an idle connection's buffers)
//! ([`crate::outbound::stack`], [`crate::inbound::stack`], built from the
//! layers in [`crate::stack`]); [`ConnContext`] is what those layers know
//! of the connection. [`authority`] checks requests at the edge,
//! [`vhost`] matches L7 routes, [`headers`] reshapes requests, [`error`]
//! names failures, [`body`] and [`stream_end`] carry bodies both ways.

pub mod authority;
pub mod body;
pub mod client_body;
pub mod error;
pub mod flood;
pub(crate) mod h2_server;
pub mod h2_stream;
pub mod headers;
pub(crate) mod park;
pub mod server;
pub mod stream_end;
pub mod vhost;

use crate::metrics::{Metrics, RequestKey, RequestMetrics, TlsStatus};
use crate::orig_dst::OrigDst;
use crate::pool::{EndpointPool, HttpVersion, Pools};
use crate::route::{ClusterState, Snapshot};
use crate::tls::Tls;
use crate::Direction;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// What one direction's data path shares: config, pools, metrics.
pub struct Inputs {
    pub direction: Direction,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub pools: Arc<Pools>,
    pub metrics: Arc<Metrics>,
    /// The workload identity, when mTLS is configured.
    pub tls: Option<Arc<Tls>>,
    /// Span sampling and export (shared by every listener).
    pub tracer: Arc<crate::trace::Tracer>,
    /// Access logs and taps, fed by [`crate::stack::observe`].
    pub observe: Arc<crate::observe::Observers>,
}

/// Carries an HTTP/1 request's version across the HTTP/2 mesh hop, so the
/// far side restores it (as Linkerd's `l5d-orig-proto` does).
pub const ORIG_PROTO_HEADER: http::HeaderName = http::HeaderName::from_static("strait-orig-proto");
/// The client's mesh identity, set on inbound requests that arrived over
/// mTLS and stripped from every other.
pub const CLIENT_ID_HEADER: http::HeaderName = http::HeaderName::from_static("strait-client-id");

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
    /// The identity a meshed target must prove.
    pub fn mesh_identity(&self) -> Option<&Arc<str>> {
        self.endpoint.as_ref()?.mesh.as_ref()
    }
}

/// Per-connection state shared by the connection's requests and read by
/// the stack's layers.
pub struct ConnContext {
    pub inputs: Arc<Inputs>,
    pub client: SocketAddr,
    pub orig_dst: OrigDst,
    /// The client side's TLS: inbound mesh connections know the client's identity.
    pub tls: TlsStatus,
    /// Inbound authorization counters for this connection's (port, identity).
    authz: OnceLock<(prometheus::IntCounter, prometheus::IntCounter)>,
    /// The last label set's handles: keep-alive connections mostly hit
    /// the same endpoint, so label sets are looked up once.
    memo: Mutex<Option<Arc<RequestMetrics>>>,
    /// Pools for the connection's direct target (its original destination
    /// or the local app), by HTTP version.
    direct_pools: [OnceLock<(SocketAddr, Arc<EndpointPool>)>; 2],
    /// The `authority` label of traffic without one (read once here, not
    /// from the snapshot on every request).
    pub no_authority: Arc<str>,
    /// The response timer its requests borrow in turn.
    pub spare_timer: crate::stack::timeout::SpareTimer,
    /// Inbound: the client's headers, formatted on the first request.
    client_headers: OnceLock<Box<ClientHeaders>>,
}

/// What an inbound connection tells the app about its client, as header
/// values: made once per connection, cloned (a reference count) per request.
pub struct ClientHeaders {
    /// The client's IP, for `x-forwarded-for`.
    pub ip: http::HeaderValue,
    /// The client's proven mesh identity, for `strait-client-id`.
    pub identity: Option<http::HeaderValue>,
}

impl ConnContext {
    pub fn new(
        inputs: Arc<Inputs>,
        client: SocketAddr,
        orig_dst: OrigDst,
        tls: TlsStatus,
    ) -> Arc<ConnContext> {
        let no_authority = inputs.snapshot.load().no_authority.clone();
        Arc::new(ConnContext {
            no_authority,
            spare_timer: Default::default(),
            inputs,
            client,
            orig_dst,
            tls,
            authz: OnceLock::new(),
            memo: Mutex::new(None),
            direct_pools: Default::default(),
            client_headers: OnceLock::new(),
        })
    }

    pub fn direction(&self) -> Direction {
        self.inputs.direction
    }

    /// The client's mesh identity, proven over mTLS.
    pub fn client_identity(&self) -> Option<&str> {
        match &self.tls {
            TlsStatus::Mesh { client_id, .. } => client_id.as_deref(),
            TlsStatus::NoIdentity(_) => None,
        }
    }

    /// The client's address and identity as header values (inbound).
    pub fn client_headers(&self) -> &ClientHeaders {
        self.client_headers.get_or_init(|| {
            let ip = http::HeaderValue::try_from(self.client.ip().to_string());
            Box::new(ClientHeaders {
                // An IP's text is always a valid header value.
                ip: ip.unwrap_or(http::HeaderValue::from_static("unknown")),
                identity: self
                    .client_identity()
                    .and_then(|id| http::HeaderValue::from_str(id).ok()),
            })
        })
    }

    /// (allowed, denied) counters of this connection's (port, identity).
    pub fn authz_counters(&self) -> &(prometheus::IntCounter, prometheus::IntCounter) {
        self.authz.get_or_init(|| {
            let port = self.orig_dst.addr.port();
            let metrics = &self.inputs.metrics;
            (
                metrics.authz_counter(true, port, self.client_identity()),
                metrics.authz_counter(false, port, self.client_identity()),
            )
        })
    }

    /// The TLS labels of a request to `target`: the client side's status
    /// inbound, the target's outbound.
    fn request_tls(&self, mesh: Option<&Arc<str>>) -> TlsStatus {
        match (self.direction(), mesh) {
            (Direction::Inbound, _) => self.tls.clone(),
            (Direction::Outbound, Some(id)) => TlsStatus::Mesh {
                client_id: None,
                server_id: Some(id.clone()),
            },
            (Direction::Outbound, None) => TlsStatus::NoIdentity("not_meshed"),
        }
    }

    /// Request-metric handles for requests to `target`.
    pub fn request_metrics(&self, target: &Target) -> Arc<RequestMetrics> {
        // The common case, the same target as the last request: the
        // memo's own labels say so without building a key.
        {
            let memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(handles) = memo.as_ref() {
                let key = handles.key();
                let cluster = target.cluster.as_ref().map_or(&target.route, |c| &c.name);
                let server_id = match &key.tls {
                    TlsStatus::Mesh { server_id, .. } => server_id.as_ref(),
                    TlsStatus::NoIdentity(_) => None,
                };
                if key.target == target.addr
                    && Arc::ptr_eq(&key.authority, &target.authority)
                    && Arc::ptr_eq(&key.route, &target.route)
                    && Arc::ptr_eq(&key.cluster, cluster)
                    && (self.direction() == Direction::Inbound
                        || server_id == target.mesh_identity())
                {
                    return handles.clone();
                }
            }
        }
        let key = RequestKey {
            direction: self.direction(),
            authority: target.authority.clone(),
            target: target.addr,
            tls: self.request_tls(target.mesh_identity()),
            route: target.route.clone(),
            cluster: target
                .cluster
                .as_ref()
                .map_or_else(|| target.route.clone(), |c| c.name.clone()),
        };
        // A cluster endpoint owns its label sets (evicted with it); other
        // targets share the process-wide cache.
        self.memoized(key, |key| match &target.endpoint {
            Some(endpoint) => endpoint.request_metrics(key),
            None => self.inputs.metrics.requests(key),
        })
    }

    /// Handles for a request answered without an upstream: labelled with
    /// the connection's own target and the route that matched, if any.
    pub fn local_metrics(&self, route: Option<&Arc<str>>) -> Arc<RequestMetrics> {
        let none = self.no_authority.clone();
        let tls = match self.direction() {
            Direction::Inbound => self.tls.clone(),
            Direction::Outbound => TlsStatus::NoIdentity("not_meshed"),
        };
        let key = RequestKey {
            direction: self.direction(),
            authority: none.clone(),
            target: self.orig_dst.addr,
            tls,
            route: route.cloned().unwrap_or_else(|| none.clone()),
            cluster: none,
        };
        self.memoized(key, |key| self.inputs.metrics.requests(key))
    }

    fn memoized(
        &self,
        key: RequestKey,
        resolve: impl FnOnce(RequestKey) -> Arc<RequestMetrics>,
    ) -> Arc<RequestMetrics> {
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handles) = memo.as_ref().filter(|m| m.key() == &key) {
            return handles.clone();
        }
        let handles = resolve(key);
        *memo = Some(handles.clone());
        handles
    }

    /// The pool for `addr` (not a cluster endpoint) in `version`.
    pub fn direct_pool(&self, addr: SocketAddr, version: HttpVersion) -> Arc<EndpointPool> {
        let slot = &self.direct_pools[usize::from(version == HttpVersion::Http2)];
        let lookup = || self.inputs.pools.endpoint(addr, version, None);
        match slot.get_or_init(|| (addr, lookup())) {
            (memo_addr, pool) if *memo_addr == addr => pool.clone(),
            _ => lookup(),
        }
    }
}
