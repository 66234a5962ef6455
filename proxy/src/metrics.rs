//! Every metric family strait exports, named as Linkerd's proxy names them
//! so existing dashboards work. Label sets are resolved once, when a
//! connection or target is created, and the handles kept: nothing on the
//! per-request path looks a label set up except on a new status code.

use crate::Direction;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Latency buckets in milliseconds, as Linkerd's proxy uses.
const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

const REQUEST_LABELS: &[&str] = &[
    "direction",
    "authority",
    "target_addr",
    "tls",
    "no_tls_reason",
    "client_id",
    "server_id",
    "route",
    "cluster",
];
const RESPONSE_LABELS: &[&str] = &[
    "direction",
    "authority",
    "target_addr",
    "tls",
    "no_tls_reason",
    "client_id",
    "server_id",
    "route",
    "cluster",
    "status_code",
    "classification",
];
const TCP_LABELS: &[&str] = &[
    "direction",
    "peer",
    "target_addr",
    "tls",
    "no_tls_reason",
    "client_id",
    "server_id",
];

/// Whether a connection is mTLS, and who is on each end: the `tls`,
/// `no_tls_reason`, `client_id` and `server_id` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsStatus {
    /// Mutual TLS with the identities known on this hop.
    Mesh {
        client_id: Option<Arc<str>>,
        server_id: Option<Arc<str>>,
    },
    /// No mesh identity, and why (`plaintext`, `not_meshed`, `passthrough`).
    NoIdentity(&'static str),
}

impl TlsStatus {
    fn labels(&self) -> [&str; 4] {
        match self {
            TlsStatus::Mesh {
                client_id,
                server_id,
            } => [
                "true",
                "",
                client_id.as_deref().unwrap_or(""),
                server_id.as_deref().unwrap_or(""),
            ],
            TlsStatus::NoIdentity(reason) => ["no_identity", reason, "", ""],
        }
    }
}

/// The registry and every family.
pub struct Metrics {
    pub registry: Registry,
    request_total: IntCounterVec,
    response_total: IntCounterVec,
    response_latency_ms: HistogramVec,
    tcp_open_total: IntCounterVec,
    tcp_open_connections: IntGaugeVec,
    tcp_read_bytes_total: IntCounterVec,
    tcp_write_bytes_total: IntCounterVec,
    tcp_close_total: IntCounterVec,
    pool_checkout_total: IntCounterVec,
    proxy_errors_total: IntCounterVec,
    http2_connection_errors_total: IntCounterVec,
    pub config_reload_total: IntCounterVec,
    identity_expiration: IntGauge,
    /// Registers `identity_expiration` once, when an identity first loads.
    identity_registered: std::sync::Once,
    identity_refresh_total: IntCounterVec,
    authz_allow_total: IntCounterVec,
    authz_deny_total: IntCounterVec,
    endpoint_ejections_total: IntCounterVec,
    retry_total: IntCounterVec,
    retry_budget_exhausted_total: IntCounterVec,
    cluster_endpoints: IntGaugeVec,
    pub connections_refused_total: IntCounterVec,
    /// Request handles of targets outside any cluster (original
    /// destinations, the local app), shared by every connection to them.
    request_cache: Mutex<HashMap<RequestKey, Arc<RequestMetrics>>>,
    /// How many cluster endpoints hold each label set: the last one to
    /// let go removes the set from the exposition.
    owned_requests: Mutex<HashMap<RequestKey, usize>>,
    /// The xDS client's families.
    pub xds: XdsMetrics,
    /// The access logs' and taps' families.
    pub observe: ObserveMetrics,
}

/// Access logs and taps ([`crate::observe`]): what was written and what
/// was dropped rather than waited for.
pub struct ObserveMetrics {
    /// Lines written, by `direction`.
    pub access_log_written_total: IntCounterVec,
    /// Lines dropped because the writer's queue was full, by `direction`.
    pub access_log_dropped_total: IntCounterVec,
    /// Records dropped because a tap's reader was behind.
    pub tap_dropped_total: prometheus::IntCounter,
    /// Taps open now.
    pub tap_open: IntGauge,
}

impl ObserveMetrics {
    fn new(registry: &Registry) -> ObserveMetrics {
        let tap_dropped_total = prometheus::IntCounter::new(
            "tap_dropped_total",
            "Tap records dropped because the tap's reader was behind.",
        )
        .unwrap_or_else(|e| panic!("tap_dropped_total is malformed: {e}"));
        let tap_open = IntGauge::new("tap_open", "Taps open on the admin port now.")
            .unwrap_or_else(|e| panic!("tap_open is malformed: {e}"));
        for metric in [
            Box::new(tap_dropped_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tap_open.clone()),
        ] {
            registry
                .register(metric)
                .unwrap_or_else(|e| panic!("a tap metric registered twice: {e}"));
        }
        ObserveMetrics {
            access_log_written_total: counter_vec(
                registry,
                "access_log_written_total",
                "Access log lines written, by direction.",
                &["direction"],
            ),
            access_log_dropped_total: counter_vec(
                registry,
                "access_log_dropped_total",
                "Access log lines dropped because the writer's queue was full, by direction.",
                &["direction"],
            ),
            tap_dropped_total,
            tap_open,
        }
    }
}

/// The xDS client: is the stream up, what it accepted and refused.
pub struct XdsMetrics {
    /// 1 while the ADS stream is open.
    pub connected: IntGauge,
    /// Responses by `type` and `result` (`ack` or `nack`).
    pub updates_total: IntCounterVec,
    /// Accepted resources held now, by `type`.
    pub resources: IntGaugeVec,
    /// Streams opened again after the first.
    pub stream_restarts_total: prometheus::IntCounter,
}

impl XdsMetrics {
    fn new(registry: &Registry) -> XdsMetrics {
        let connected = IntGauge::new(
            "xds_connected",
            "1 while the xDS stream to the control plane is open.",
        )
        .unwrap_or_else(|e| panic!("xds_connected is malformed: {e}"));
        let resources = IntGaugeVec::new(
            Opts::new("xds_resources", "xDS resources accepted and held, by type."),
            &["type"],
        )
        .unwrap_or_else(|e| panic!("xds_resources is malformed: {e}"));
        let restarts = prometheus::IntCounter::new(
            "xds_stream_restarts_total",
            "xDS streams opened again after a disconnect.",
        )
        .unwrap_or_else(|e| panic!("xds_stream_restarts_total is malformed: {e}"));
        for metric in [
            Box::new(connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(resources.clone()),
            Box::new(restarts.clone()),
        ] {
            registry
                .register(metric)
                .unwrap_or_else(|e| panic!("an xds metric registered twice: {e}"));
        }
        XdsMetrics {
            connected,
            updates_total: counter_vec(
                registry,
                "xds_updates_total",
                "xDS responses, by type and result (ack or nack).",
                &["type", "result"],
            ),
            resources,
            stream_restarts_total: restarts,
        }
    }
}

/// The labels of a request family's child: who, where, how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub direction: Direction,
    pub authority: Arc<str>,
    pub target: SocketAddr,
    pub tls: TlsStatus,
    /// The L7 route's name, empty when no virtual host routed the request.
    pub route: Arc<str>,
    pub cluster: Arc<str>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    vec
}

impl Metrics {
    /// Build the registry. Metric definitions are constants, so a failure
    /// here is a programming error caught by every test, not a runtime one.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "response_latency_ms",
                "Time from receiving a request's headers to the response's headers, in milliseconds.",
            )
            .buckets(LATENCY_BUCKETS_MS.to_vec()),
            REQUEST_LABELS,
        )
        .unwrap_or_else(|e| panic!("response_latency_ms is malformed: {e}"));
        registry
            .register(Box::new(latency.clone()))
            .unwrap_or_else(|e| panic!("response_latency_ms registered twice: {e}"));
        let tcp_open_connections = IntGaugeVec::new(
            Opts::new("tcp_open_connections", "TCP connections open now."),
            TCP_LABELS,
        )
        .unwrap_or_else(|e| panic!("tcp_open_connections is malformed: {e}"));
        registry
            .register(Box::new(tcp_open_connections.clone()))
            .unwrap_or_else(|e| panic!("tcp_open_connections registered twice: {e}"));
        let identity_expiration = IntGauge::new(
            "identity_cert_expiration_timestamp_seconds",
            "When the workload certificate expires, in seconds since the epoch.",
        )
        .unwrap_or_else(|e| panic!("identity gauge is malformed: {e}"));
        // Registered on the first identity load, not here: without an
        // identity a 0 would read as "expired in 1970" and fire alerts.
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            // Process metrics are a convenience; a sandbox without /proc still proxies.
            let _ = registry.register(Box::new(process));
        }
        Arc::new(Metrics {
            request_total: counter_vec(&registry, "request_total", "HTTP requests received.", REQUEST_LABELS),
            response_total: counter_vec(&registry, "response_total", "HTTP responses sent, by status and classification.", RESPONSE_LABELS),
            response_latency_ms: latency,
            tcp_open_total: counter_vec(&registry, "tcp_open_total", "TCP connections opened.", TCP_LABELS),
            tcp_open_connections,
            tcp_read_bytes_total: counter_vec(&registry, "tcp_read_bytes_total", "Bytes read from TCP connections.", TCP_LABELS),
            tcp_write_bytes_total: counter_vec(&registry, "tcp_write_bytes_total", "Bytes written to TCP connections.", TCP_LABELS),
            tcp_close_total: counter_vec(&registry, "tcp_close_total", "TCP connections closed.", TCP_LABELS),
            pool_checkout_total: counter_vec(&registry, "http_pool_checkout_total", "Upstream HTTP connection checkouts: result=\"reused\" took a pooled connection, \"new\" opened one.", &["direction", "target_addr", "result"]),
            proxy_errors_total: counter_vec(&registry, "http_proxy_errors_total", "Requests answered by the proxy itself, by the strait-proxy-error reason.", &["direction", "reason"]),
            http2_connection_errors_total: counter_vec(&registry, "http2_connection_errors_total", "HTTP/2 client connections ended by an error: the GOAWAY reason (enhance_your_calm for a flood, protocol_error, flow_control_error, ...) or keep_alive_timeout, and who sent it (proxy or client).", &["direction", "reason", "sender"]),
            config_reload_total: counter_vec(&registry, "config_reload_total", "Configuration reloads, by result.", &["result"]),
            connections_refused_total: counter_vec(&registry, "tcp_accept_refused_total", "Connections refused at accept, by reason.", &["direction", "reason"]),
            identity_expiration,
            identity_registered: std::sync::Once::new(),
            identity_refresh_total: counter_vec(&registry, "identity_cert_refresh_total", "Workload certificate loads, by result.", &["result"]),
            authz_allow_total: counter_vec(&registry, "inbound_authz_allow_total", "Inbound connections or requests allowed by policy.", &["port", "identity"]),
            authz_deny_total: counter_vec(&registry, "inbound_authz_deny_total", "Inbound connections or requests denied by policy.", &["port", "identity"]),
            retry_total: counter_vec(&registry, "retry_total", "Requests sent again after a failed try.", &["cluster"]),
            retry_budget_exhausted_total: counter_vec(&registry, "retry_budget_exhausted_total", "Retries not made because the cluster's retry budget was spent.", &["cluster"]),
            endpoint_ejections_total: counter_vec(&registry, "endpoint_ejections_total", "Endpoints ejected by outlier detection.", &["cluster"]),
            cluster_endpoints: {
                let gauge = IntGaugeVec::new(Opts::new("cluster_endpoints", "A cluster's endpoints by state (active, ejected), as of the scrape."), &["cluster", "state"])
                    .unwrap_or_else(|e| panic!("cluster_endpoints is malformed: {e}"));
                registry
                    .register(Box::new(gauge.clone()))
                    .unwrap_or_else(|e| panic!("cluster_endpoints registered twice: {e}"));
                gauge
            },
            request_cache: Mutex::new(HashMap::new()),
            owned_requests: Mutex::new(HashMap::new()),
            xds: XdsMetrics::new(&registry),
            observe: ObserveMetrics::new(&registry),
            registry,
        })
    }

    /// Handles for one TCP connection, opened now. Dropping the returned
    /// guard records the close.
    pub fn tcp_connection(
        &self,
        direction: Direction,
        peer: &'static str,
        target: SocketAddr,
        tls: &TlsStatus,
    ) -> TcpMetrics {
        let target = target.to_string();
        let [t, reason, client, server] = tls.labels();
        let labels = [
            direction.as_str(),
            peer,
            target.as_str(),
            t,
            reason,
            client,
            server,
        ];
        self.tcp_open_total.with_label_values(&labels).inc();
        let open = self.tcp_open_connections.with_label_values(&labels);
        open.inc();
        TcpMetrics {
            read_bytes: self.tcp_read_bytes_total.with_label_values(&labels),
            write_bytes: self.tcp_write_bytes_total.with_label_values(&labels),
            close: self.tcp_close_total.with_label_values(&labels),
            open,
        }
    }

    /// Request handles for a label set, shared across connections and
    /// kept for the process's life (targets outside any cluster).
    pub fn requests(&self, key: RequestKey) -> Arc<RequestMetrics> {
        let mut cache = self.request_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handles) = cache.get(&key) {
            return handles.clone();
        }
        let handles = self.request_handles(key.clone());
        cache.insert(key, handles.clone());
        handles
    }

    /// Request handles for a cluster endpoint's label set; give them back
    /// with [`Metrics::release_requests`] when the endpoint goes.
    pub fn owned_requests(&self, key: RequestKey) -> Arc<RequestMetrics> {
        let mut owned = self
            .owned_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *owned.entry(key.clone()).or_insert(0) += 1;
        self.request_handles(key)
    }

    /// An endpoint let go of its handles: when no endpoint holds the
    /// label set any more, its series leave the exposition.
    pub fn release_requests(&self, handles: Arc<RequestMetrics>) {
        let mut owned = self
            .owned_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(count) = owned.get_mut(&handles.key) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        owned.remove(&handles.key);
        let labels = handles.labels.each_ref().map(String::as_str);
        let _ = self.request_total.remove_label_values(&labels);
        let _ = self.response_latency_ms.remove_label_values(&labels);
        let responses = handles.responses.lock().unwrap_or_else(|p| p.into_inner());
        for (status, failure, _) in responses.iter() {
            let code = status.to_string();
            let class = classification(*failure);
            let mut all: Vec<&str> = labels.to_vec();
            all.extend([code.as_str(), class]);
            let _ = self.response_total.remove_label_values(&all);
        }
    }

    fn request_handles(&self, key: RequestKey) -> Arc<RequestMetrics> {
        let target = key.target.to_string();
        let [t, reason, client, server] = key.tls.labels();
        let labels = [
            key.direction.as_str(),
            &key.authority,
            target.as_str(),
            t,
            reason,
            client,
            server,
            &key.route,
            &key.cluster,
        ];
        Arc::new(RequestMetrics {
            total: self.request_total.with_label_values(&labels),
            latency_ms: self.response_latency_ms.with_label_values(&labels),
            labels: labels.map(str::to_string),
            key,
            response_vec: self.response_total.clone(),
            responses: Mutex::new(Vec::new()),
        })
    }

    /// Pool checkout counter for a target (`reused` or `new`).
    pub fn pool_checkout(
        &self,
        direction: Direction,
        target: SocketAddr,
        result: &str,
    ) -> IntCounter {
        self.pool_checkout_total.with_label_values(&[
            direction.as_str(),
            &target.to_string(),
            result,
        ])
    }

    /// Count a request answered by the proxy itself.
    pub fn proxy_error(&self, direction: Direction, reason: &str) {
        self.proxy_errors_total
            .with_label_values(&[direction.as_str(), reason])
            .inc();
    }

    /// Count an HTTP/2 client connection that ended with an error:
    /// `reason` as the GOAWAY names it, `sender` `proxy` or `client`.
    pub fn http2_connection_error(&self, direction: Direction, reason: &str, sender: &str) {
        self.http2_connection_errors_total
            .with_label_values(&[direction.as_str(), reason, sender])
            .inc();
    }

    /// Record a workload certificate load attempt.
    pub fn identity_loaded(&self, loaded: &crate::tls::Loaded, ok: bool) {
        self.identity_expiration.set(loaded.not_after);
        self.identity_registered.call_once(|| {
            self.registry
                .register(Box::new(self.identity_expiration.clone()))
                .unwrap_or_else(|e| panic!("identity gauge registered twice: {e}"));
        });
        self.identity_refresh_total
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The counter of inbound authorization decisions for (port, identity).
    pub fn authz_counter(&self, allowed: bool, port: u16, identity: Option<&str>) -> IntCounter {
        let vec = if allowed {
            &self.authz_allow_total
        } else {
            &self.authz_deny_total
        };
        vec.with_label_values(&[&port.to_string(), identity.unwrap_or("")])
    }

    /// Count a retry.
    pub fn retry(&self, cluster: &str) {
        self.retry_total.with_label_values(&[cluster]).inc();
    }

    /// Count a retry the budget did not allow.
    pub fn retry_budget_exhausted(&self, cluster: &str) {
        self.retry_budget_exhausted_total
            .with_label_values(&[cluster])
            .inc();
    }

    /// Count an outlier ejection.
    pub fn ejection(&self, cluster: &str) {
        self.endpoint_ejections_total
            .with_label_values(&[cluster])
            .inc();
    }

    /// Set a cluster's endpoint-state gauges (called at scrape time).
    pub fn endpoint_states(&self, cluster: &str, active: usize, ejected: usize) {
        self.cluster_endpoints
            .with_label_values(&[cluster, "active"])
            .set(active as i64);
        self.cluster_endpoints
            .with_label_values(&[cluster, "ejected"])
            .set(ejected as i64);
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
    }
}

/// One TCP connection's handles; records the close when dropped.
pub struct TcpMetrics {
    pub read_bytes: IntCounter,
    pub write_bytes: IntCounter,
    close: IntCounter,
    open: IntGauge,
}

impl TcpMetrics {
    /// Wrap `inner` so its bytes count into this connection's counters;
    /// `prefix` (already counted by whoever read it) is replayed first.
    pub fn counted<T>(&self, inner: T, prefix: bytes::Bytes) -> crate::io::CountedIo<T> {
        crate::io::CountedIo::new(
            inner,
            prefix,
            self.read_bytes.clone(),
            self.write_bytes.clone(),
        )
    }
}

impl Drop for TcpMetrics {
    fn drop(&mut self) {
        self.open.dec();
        self.close.inc();
    }
}

/// Handles for requests to one (direction, authority, target).
pub struct RequestMetrics {
    pub total: IntCounter,
    pub latency_ms: Histogram,
    labels: [String; 9],
    key: RequestKey,
    response_vec: IntCounterVec,
    /// Response counters by (status code, failure), filled as first seen.
    responses: Mutex<Vec<(u16, bool, IntCounter)>>,
}

/// The `classification` label.
fn classification(failure: bool) -> &'static str {
    if failure {
        "failure"
    } else {
        "success"
    }
}

impl RequestMetrics {
    /// The label set these handles count under.
    pub fn key(&self) -> &RequestKey {
        &self.key
    }

    /// Count a response that ended, as a failure or not (a 5xx, a gRPC
    /// status other than OK, a stream broken midway, as Linkerd classifies).
    pub fn response(&self, status: u16, failure: bool) {
        let mut responses = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, counter)) = responses
            .iter()
            .find(|(code, f, _)| *code == status && *f == failure)
        {
            counter.inc();
            return;
        }
        let class = classification(failure);
        let code = status.to_string();
        let [d, a, t, tls, reason, client, server, route, cluster] = &self.labels;
        let counter = self.response_vec.with_label_values(&[
            d.as_str(),
            a,
            t,
            tls,
            reason,
            client,
            server,
            route,
            cluster,
            &code,
            class,
        ]);
        counter.inc();
        responses.push((status, failure, counter));
    }
}
