//! The validated configuration the data path reads. Every value here has
//! passed its rule: ports are ports, clusters named by routes exist,
//! durations are positive. Serializable for `/config_dump` and `strait check`.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A complete, validated configuration snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub log: Log,
    pub runtime: Runtime,
    pub outbound: Listener,
    pub inbound: InboundListener,
    pub admin: SocketAddr,
    /// Named listeners beyond the two built-in ones (`listeners.extra`).
    pub extra_listeners: Vec<NamedListener>,
    pub proxy: ProxySettings,
    pub clusters: Vec<Cluster>,
    pub routes: Vec<Route>,
    /// The workload's mTLS identity; without it the proxy speaks plaintext.
    pub identity: Option<Identity>,
    pub policy: Policy,
    /// L7 routing for outbound HTTP, consulted before `routes`.
    pub virtual_hosts: Vec<VirtualHost>,
    pub dns: Dns,
    /// Where dynamic resources come from; `None` is file-only.
    pub xds: Option<Xds>,
    /// Per-direction request logs (see [`crate::access_log`]).
    pub access_log: crate::access_log::AccessLogs,
    /// Span export over OTLP; `None` is off (headers still propagate).
    pub tracing: Option<Tracing>,
}

/// Where and how much the proxy's own spans are exported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracing {
    /// `host:port` of the collector's OTLP/gRPC (plaintext HTTP/2) server.
    pub otlp_address: String,
    /// Spans waiting for export beyond this many are dropped and counted.
    pub max_queued_spans: usize,
    /// The share of new (root) traces sampled, 0.0 to 1.0; a request
    /// that arrives with a trace context follows its sampled flag.
    pub sample_rate: f64,
    /// `service.name` of the exported spans' resource.
    pub service_name: String,
}

/// The xDS bootstrap: the control plane and how this proxy names itself.
/// Resources from it are added to the file's clusters and virtual hosts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Xds {
    /// `host:port` of the control plane's gRPC server.
    pub address: String,
    pub node: XdsNode,
    pub mode: XdsMode,
    /// How long a subscribed resource may stay unanswered before what is
    /// known is applied without it (a cluster with no endpoints yet).
    #[serde(with = "humantime_serde")]
    pub initial_fetch_timeout: Duration,
    /// `None`: plaintext HTTP/2.
    pub tls: Option<XdsTls>,
}

/// TLS to the control plane (standard name verification, not the mesh's
/// identity check: control planes carry DNS names).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct XdsTls {
    pub trust_bundle: PathBuf,
    /// Certificate and key, for a control plane that wants a client certificate.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The DNS name or IP its certificate must carry; `None`: the
    /// address's host.
    pub server_name: Option<String>,
}

/// The `Node` sent on the first request of every stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct XdsNode {
    pub id: String,
    pub cluster: String,
    /// String values only: enough for Istio's labels and the like.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdsMode {
    /// State of the world: every response carries every resource of its type.
    Sotw,
    /// Incremental: responses carry changes and removals.
    Delta,
}

/// How endpoint names are resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dns {
    /// Name servers; empty means the system's configuration.
    pub servers: Vec<SocketAddr>,
    /// Re-resolve no sooner than this, whatever the record's TTL says...
    #[serde(with = "humantime_serde")]
    pub min_refresh: Duration,
    /// ...and no later than this.
    #[serde(with = "humantime_serde")]
    pub max_refresh: Duration,
}

/// Requests whose authority matches one of `domains` (exact, `*.suffix`,
/// `prefix.*` or `*`; the most specific wins, port ignored) are routed by
/// the first of `routes` that matches. A host with a `port` sees only
/// traffic to that original destination port, and is consulted before
/// the hosts without one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub port: Option<u16>,
    pub routes: Vec<RouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteRule {
    /// The `route` metric label.
    pub name: String,
    #[serde(rename = "match")]
    pub matches: RouteMatchers,
    pub action: RouteAction,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Rewrite,
    /// Time to response headers; the cluster's response timeout otherwise.
    #[serde(with = "humantime_serde_opt")]
    pub timeout: Option<Duration>,
    pub fault: Fault,
    pub rate_limit: Option<RateLimit>,
    pub retry: Option<RetryPolicy>,
}

/// When and how often a route retries a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    #[serde(with = "humantime_serde_opt")]
    pub per_try_timeout: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Request bodies up to this size are buffered so they can be replayed.
    pub max_body: usize,
}

/// A retry condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// The upstream reset or refused the stream before any response.
    Reset,
    /// Any 5xx response.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// One status code.
    Status(u16),
    /// A gRPC status in the response headers (trailers-only responses).
    Grpc(u32),
}

/// A cluster's retry budget: retries may add `percent` of recent requests,
/// plus `min_per_second` regardless, over `window`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_per_second: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// Chaos for testing callers: delay or fail a share of requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Fault {
    /// (delay, percent of requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<(String, f64)>,
    /// (status, percent of requests).
    pub abort: Option<(u16, f64)>,
    #[serde(skip)]
    pub delay_duration: Option<Duration>,
}

/// A token bucket: `requests_per_second` sustained, `burst` at once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

/// Every listed condition must hold; an empty matcher matches everything.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RouteMatchers {
    pub path: Option<StringMatch>,
    pub method: Option<String>,
    pub headers: Vec<NamedMatch>,
    pub query: Vec<NamedMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// A regular expression that must match the whole value.
    Regex(String),
    /// The header or parameter exists, whatever its value.
    Present,
}

/// A header (lowercase name) or query parameter condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedMatch {
    pub name: String,
    pub matcher: StringMatch,
    /// Match when the condition does not hold.
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Cluster(String),
    /// Weighted split across clusters (canary): (cluster, weight).
    Split(Vec<(String, u32)>),
    DirectResponse {
        status: u16,
        body: String,
    },
    Redirect {
        host: Option<String>,
        path: Option<String>,
        status: u16,
    },
    /// Forward to the connection's original destination (no route when
    /// the connection was not redirected to the proxy).
    OriginalDestination,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct HeaderOps {
    /// Set (replacing any existing value).
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Rewrite {
    /// Replaces the matched path prefix (prefix path matches only).
    pub prefix: Option<String>,
    /// Replaces the authority sent upstream.
    pub host: Option<String>,
}

/// The workload's mTLS identity: where its certificate, key and trust
/// bundle come from, and how handshakes go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Identity {
    pub source: IdentitySource,
    /// Allow TLS 1.2 as well as 1.3 between proxies.
    pub allow_tls12: bool,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// Mounted files, watched for rotation.
    Files(IdentityFiles),
    /// xDS secrets (SDS) from the control plane, by name.
    Sds(SdsIdentity),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdentityFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub trust_bundle: PathBuf,
}

/// The names of the two secrets the control plane serves: a
/// `tls_certificate` (chain and key) and a `validation_context` (trusted CA).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SdsIdentity {
    pub certificate: String,
    pub trust_bundle: String,
}

/// Inbound authorization, per destination port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// For ports not listed.
    pub default: Allow,
    pub ports: BTreeMap<u16, Allow>,
    /// HTTP paths any client may reach (kubelet probes), exact or `prefix*`.
    pub unauthenticated_paths: Vec<String>,
}

impl Policy {
    pub fn for_port(&self, port: u16) -> &Allow {
        self.ports.get(&port).unwrap_or(&self.default)
    }
}

/// Who may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Allow {
    Unauthenticated,
    Authenticated,
    Deny,
    Identities(Vec<IdentityMatch>),
}

/// One allowed identity: `spiffe://td/ns/prod/sa/web` exactly, every
/// identity under `spiffe://td/ns/prod/*`, every DNS-style name ending
/// in `*.prod.svc`, or both ends at once (`spiffe://td/*/sa/web`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Starts with `prefix` and, after it, ends with `suffix` (the two do
    /// not overlap: `a*a` does not match `a`).
    PrefixSuffix {
        prefix: String,
        suffix: String,
    },
}

impl IdentityMatch {
    /// `*suffix`, `prefix*`, `prefix*suffix` (one `*` inside), or exact.
    pub fn parse(pattern: &str) -> IdentityMatch {
        if let Some(suffix) = pattern.strip_prefix('*') {
            IdentityMatch::Suffix(suffix.to_string())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            IdentityMatch::Prefix(prefix.to_string())
        } else if let Some((prefix, suffix)) = pattern
            .split_once('*')
            .filter(|(_, suffix)| !suffix.contains('*'))
        {
            IdentityMatch::PrefixSuffix {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            }
        } else {
            IdentityMatch::Exact(pattern.to_string())
        }
    }

    pub fn matches(&self, identity: &str) -> bool {
        match self {
            IdentityMatch::Exact(id) => id == identity,
            IdentityMatch::Prefix(p) => identity.starts_with(p.as_str()),
            IdentityMatch::Suffix(s) => identity.ends_with(s.as_str()),
            IdentityMatch::PrefixSuffix { prefix, suffix } => {
                identity.len() >= prefix.len() + suffix.len()
                    && identity.starts_with(prefix.as_str())
                    && identity.ends_with(suffix.as_str())
            }
        }
    }
}

/// The pattern as the config file writes it ([`IdentityMatch::parse`]
/// reads it back).
impl std::fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityMatch::Exact(id) => f.write_str(id),
            IdentityMatch::Prefix(p) => write!(f, "{p}*"),
            IdentityMatch::Suffix(s) => write!(f, "*{s}"),
            IdentityMatch::PrefixSuffix { prefix, suffix } => write!(f, "{prefix}*{suffix}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Log {
    /// An `EnvFilter` directive such as `info` or `strait=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Runtime {
    /// Data-plane worker threads; 0 means one per CPU the process may use.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub addr: SocketAddr,
    /// Where traffic no route claims goes; `None` is the original destination.
    pub default_cluster: Option<String>,
    /// What every connection speaks; `Auto` detects it.
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundListener {
    pub addr: SocketAddr,
    pub default_cluster: Option<String>,
    /// What every connection speaks; `Auto` detects it.
    pub protocol: Protocol,
    /// Inbound traffic is forwarded to this IP at the original destination port.
    pub forward_ip: IpAddr,
}

/// A data-plane listener as a listener discovery service would describe
/// one: identified by `name`, so an update that changes its address is a
/// move (bind the new address, drain the old), not a new listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedListener {
    pub name: String,
    pub direction: ListenerDirection,
    pub addr: SocketAddr,
    /// Where traffic no route claims goes; `None` is the original destination.
    pub default_cluster: Option<String>,
    /// What every connection speaks; `Auto` detects it.
    pub protocol: Protocol,
    /// Inbound: the application's IP, reached at the original destination port.
    pub forward_ip: Option<IpAddr>,
}

/// Which way a listener's traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerDirection {
    /// From the network to the local application.
    Inbound,
    /// From the local application to the network.
    Outbound,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxySettings {
    /// Connections held open at once, both listeners together.
    pub max_connections: usize,
    pub backlog: u32,
    /// How long to wait for a client's first bytes before treating the
    /// connection as opaque TCP.
    #[serde(with = "humantime_serde")]
    pub detect_timeout: Duration,
    /// Destination ports forwarded as opaque TCP without detection
    /// (server-speaks-first protocols would stall detection).
    pub opaque_ports: Vec<u16>,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// An HTTP connection, or a stream on it, with no bytes either way for
    /// this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    /// Request limits and path normalisation for HTTP clients.
    pub http: HttpSettings,
}

/// What the proxy accepts from an HTTP client, and how it canonicalises
/// a request's path before routing it (and forwards it so).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpSettings {
    /// Remove `.` and `..` segments (RFC 3986 §5.2.4).
    pub normalize_path: bool,
    /// Collapse runs of `/` into one.
    pub merge_slashes: bool,
    /// Decode percent-encoded unreserved characters (`%41` → `A`).
    pub decode_unreserved: bool,
    /// The request line and headers together, in bytes: 431 over it.
    pub max_request_headers_bytes: usize,
    /// Header fields in one request: 431 over it.
    pub max_request_headers: usize,
    /// The request target, in bytes: 414 over it.
    pub max_uri_bytes: usize,
    /// A request body's declared length, in bytes: 413 over it (`None`: no limit).
    pub max_request_body_bytes: Option<u64>,
    /// Streams one HTTP/2 client may have open at once.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and reset before the proxy has
    /// accepted them (the rapid-reset flood, CVE-2023-44487): past it,
    /// GOAWAY `ENHANCE_YOUR_CALM`.
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the proxy may reset for a client's protocol errors
    /// on one connection: past it, GOAWAY `ENHANCE_YOUR_CALM`.
    pub max_local_error_reset_streams: usize,
    /// How often an HTTP/2 client connection is sent a PING (`None`: never).
    #[serde(with = "humantime_serde_opt")]
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_timeout: Duration,
    /// The window the HTTP/2 control-frame flood limits below count in.
    #[serde(with = "humantime_serde")]
    pub http2_flood_window: Duration,
    /// PING frames (not acknowledgements) one HTTP/2 client may send per
    /// window: past it, GOAWAY `ENHANCE_YOUR_CALM` (0: no limit).
    pub http2_max_ping_frames: u32,
    /// SETTINGS frames (not acknowledgements) per window, likewise.
    pub http2_max_settings_frames: u32,
    /// Empty DATA frames that do not end their stream, per window, likewise.
    pub http2_max_empty_data_frames: u32,
    /// WINDOW_UPDATE frames a client may send per DATA frame the proxy
    /// sent it, over the connection's life (Envoy's rule: at most
    /// 5 + 2 × (streams + this × DATA frames sent); 0: no limit).
    pub http2_max_window_updates_per_data_frame: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub protocol: Protocol,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Set for meshed clusters: the identity every endpoint must present;
    /// the proxy originates mTLS to them.
    pub tls_identity: Option<String>,
    pub load_balancer: LoadBalancer,
    pub retry_budget: RetryBudget,
    pub circuit_breaker: CircuitBreaker,
    pub outlier_detection: Option<OutlierDetection>,
    /// Endpoints given as IP:port.
    pub endpoints: Vec<Endpoint>,
    /// Endpoints given as name:port, resolved by DNS and re-resolved.
    pub dns_endpoints: Vec<DnsEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct DnsEndpoint {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// How a request picks one of a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Weighted round robin.
    RoundRobin,
    /// Power of two choices on requests in flight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Power of two choices on Peak-EWMA latency times load (the default).
    PeakEwma {
        #[serde(with = "humantime_serde")]
        default_rtt: Duration,
        #[serde(with = "humantime_serde")]
        decay: Duration,
    },
    /// Consistent hashing (a ring of virtual nodes) for sticky sessions.
    RingHash { key: HashKey },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// A request header (lowercase name).
    Header(String),
    SourceIp,
}

/// Per-cluster limits; overflow fails fast with 503 `overloaded`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CircuitBreaker {
    /// Requests in flight to the cluster at once.
    pub max_requests: usize,
    /// Requests waiting for an upstream connection at once.
    pub max_pending: usize,
    /// Retries in progress at once.
    pub max_retries: usize,
    /// Upstream connections open at once.
    pub max_connections: usize,
}

/// Eject endpoints that keep failing (5xx or gateway errors).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierDetection {
    pub consecutive_failures: u32,
    /// Ejection time for a first ejection; it grows with each one.
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// Never eject more than this share of the endpoints.
    pub max_ejection_percent: u32,
}

/// The protocol spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP in the version the client used.
    Auto,
    Http1,
    Http2,
    /// Bytes, copied both ways.
    Opaque,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// The cluster; with a `split`, its first (what needs one cluster,
    /// such as the protocol a port declares, reads this).
    pub cluster: String,
    /// A weighted split across clusters (cluster, weight), picked per
    /// connection (per request for HTTP); empty: `cluster` takes it all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMatch {
    /// HTTP requests whose authority (Host) equals this name, port ignored,
    /// compared case-insensitively.
    Authority(String),
    /// Connections whose original destination port is this.
    Port(u16),
    /// Connections whose original destination is this address (a
    /// service's virtual IP and port); consulted before `Port`.
    Destination(SocketAddr),
    /// TLS connections whose ClientHello asks for this server name (SNI),
    /// lowercase: exact, or `*.suffix` for any name under the suffix (the
    /// longest suffix wins). With a `port`, only connections to that
    /// original destination port; consulted before `Destination` and
    /// `Port`. Names without a port serve the ports that have no routes
    /// of their own (names, a port or an address route).
    #[serde(rename = "server_name")]
    ServerName { name: String, port: Option<u16> },
}

/// Optional durations, likewise.
mod humantime_serde_opt {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// Durations serialize the way they are written in the file.
mod humantime_serde {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}
