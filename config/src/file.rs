//! The YAML wire format. Every field is optional (a default stands in) and
//! unknown fields are refused, so a typo is an error rather than a silently
//! ignored setting. These types never reach the data path: `validate`
//! turns them into the model.

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub log: Option<FileLog>,
    pub runtime: Option<FileRuntime>,
    pub listeners: Option<FileListeners>,
    pub proxy: Option<FileProxy>,
    #[serde(default)]
    pub clusters: Vec<FileCluster>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    pub identity: Option<FileIdentity>,
    pub policy: Option<FilePolicy>,
    #[serde(default)]
    pub virtual_hosts: Vec<FileVirtualHost>,
    pub dns: Option<FileDns>,
    pub xds: Option<FileXds>,
    pub tracing: Option<FileTracing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<crate::access_log::FileAccessLogs>,
    /// Written by `/config_dump` to show what the control plane sent
    /// (each resource's version and ACK/NACK state); ignored when read,
    /// so a saved dump stays a config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds_resources: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileXds {
    /// host:port of the control plane.
    pub address: String,
    pub node: Option<FileXdsNode>,
    /// sotw | delta
    pub mode: Option<String>,
    pub initial_fetch_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<FileXdsTls>,
}

/// TLS to the control plane: the CA that signs its certificate, and the
/// client certificate when it asks for one.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileXdsTls {
    pub trust_bundle: String,
    pub certificate: Option<String>,
    pub private_key: Option<String>,
    /// The name its certificate must carry; the address's host otherwise.
    pub server_name: Option<String>,
}

/// Span export; trace headers are propagated whether or not it is set.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileTracing {
    pub otlp: Option<FileOtlp>,
    /// The share of new traces sampled, 0.0 to 1.0 (default 1.0).
    pub sample_rate: Option<f64>,
    /// `service.name` on exported spans (default `strait`).
    pub service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileOtlp {
    /// host:port of the collector's OTLP/gRPC (plaintext HTTP/2) server.
    pub address: String,
    /// Spans waiting for export beyond this many are dropped (default 2048).
    pub max_queued_spans: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileXdsNode {
    pub id: Option<String>,
    pub cluster: Option<String>,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    /// Name servers (IP:port); the system's resolv.conf otherwise.
    #[serde(default)]
    pub servers: Vec<String>,
    pub min_refresh: Option<String>,
    pub max_refresh: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileVirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// Only traffic to this original destination port (as an xDS
    /// listener's routes apply only to that listener's traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default)]
    pub routes: Vec<FileRouteRule>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteRule {
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: FileRouteMatch,
    pub cluster: Option<String>,
    pub split: Option<Vec<FileSplit>>,
    pub direct_response: Option<FileDirectResponse>,
    pub redirect: Option<FileRedirect>,
    /// `true`: forward to where the client was connecting (the address
    /// iptables redirected from), as xDS's ORIGINAL_DST clusters do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_destination: Option<bool>,
    pub request_headers: Option<FileHeaderOps>,
    pub response_headers: Option<FileHeaderOps>,
    pub rewrite: Option<FileRewrite>,
    /// Time to response headers (504 after); `grpc-timeout` may shorten it.
    pub timeout: Option<String>,
    pub fault: Option<FileFault>,
    pub rate_limit: Option<FileRateLimit>,
    pub retry: Option<FileRetry>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetry {
    pub attempts: Option<i64>,
    pub on: Vec<String>,
    pub per_try_timeout: Option<String>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub max_body: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileFault {
    pub delay: Option<FileFaultDelay>,
    pub abort: Option<FileFaultAbort>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileFaultDelay {
    pub fixed: String,
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileFaultAbort {
    pub status: i64,
    pub percent: f64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    pub requests_per_second: f64,
    pub burst: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRouteMatch {
    pub path: Option<FileStringMatch>,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<FileNamedMatch>,
    #[serde(default)]
    pub query: Vec<FileNamedMatch>,
}

/// Exactly one of exact, prefix, regex (and, for headers and query
/// parameters, present).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileStringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileNamedMatch {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
    #[serde(default)]
    pub invert: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSplit {
    pub cluster: String,
    pub weight: i64,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDirectResponse {
    pub status: i64,
    pub body: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedirect {
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaderOps {
    #[serde(default)]
    pub add: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRewrite {
    pub prefix: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentity {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_bundle: String,
    /// The identity from xDS secrets instead of files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sds: Option<FileSdsIdentity>,
    pub min_tls_version: Option<String>,
    pub handshake_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSdsIdentity {
    /// Name of the `tls_certificate` secret.
    pub certificate: String,
    /// Name of the `validation_context` secret.
    pub trust_bundle: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    pub default: Option<FileAllow>,
    #[serde(default)]
    pub ports: Vec<FilePortPolicy>,
    #[serde(default)]
    pub unauthenticated_paths: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePortPolicy {
    pub port: i64,
    pub allow: FileAllow,
}

/// `unauthenticated`, `authenticated`, `deny`, or a list of identities.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum FileAllow {
    Keyword(String),
    Identities(Vec<String>),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileClusterTls {
    /// The identity the endpoints must present (SPIFFE ID or DNS name).
    pub identity: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub level: Option<String>,
    pub format: Option<FileLogFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileLogFormat {
    Plain,
    Json,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuntime {
    pub worker_threads: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileListeners {
    pub outbound: Option<FileListener>,
    pub inbound: Option<FileListener>,
    pub admin: Option<FileListener>,
    /// More listeners, each named; a reload adds, removes or moves them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<FileNamedListener>,
}

/// One of `listeners.extra`: identified by its name, so a reload that
/// changes its address moves it (bind the new, drain the old).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileNamedListener {
    pub name: String,
    pub direction: FileDirection,
    /// Default: 127.0.0.1 outbound, 0.0.0.0 inbound.
    pub address: Option<String>,
    pub port: i64,
    pub default_cluster: Option<String>,
    pub protocol: Option<FileProtocol>,
    /// Inbound only: the IP the local application listens on.
    pub forward_address: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileDirection {
    Inbound,
    Outbound,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: Option<String>,
    pub port: Option<i64>,
    /// Cluster for traffic no route claims (default: the original destination).
    pub default_cluster: Option<String>,
    /// Inbound only: the IP the local application listens on.
    pub forward_address: Option<String>,
    /// What every connection on this listener speaks (default: detect).
    pub protocol: Option<FileProtocol>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxy {
    pub max_connections: Option<i64>,
    pub backlog: Option<i64>,
    pub detect_timeout: Option<String>,
    pub opaque_ports: Option<Vec<i64>>,
    pub shutdown_grace: Option<String>,
    pub tcp_keepalive: Option<String>,
    pub idle_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub pool: Option<FilePool>,
    pub http: Option<FileHttp>,
}

/// `proxy.http`: request limits and path normalisation.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    pub normalize_path: Option<bool>,
    pub merge_slashes: Option<bool>,
    pub decode_unreserved: Option<bool>,
    pub max_request_headers_bytes: Option<i64>,
    pub max_request_headers: Option<i64>,
    pub max_uri_bytes: Option<i64>,
    pub max_request_body_bytes: Option<i64>,
    pub max_concurrent_streams: Option<i64>,
    pub max_pending_accept_reset_streams: Option<i64>,
    pub max_local_error_reset_streams: Option<i64>,
    pub http2_keep_alive_interval: Option<String>,
    pub http2_keep_alive_timeout: Option<String>,
    pub http2_flood_window: Option<String>,
    pub http2_max_ping_frames: Option<i64>,
    pub http2_max_settings_frames: Option<i64>,
    pub http2_max_empty_data_frames: Option<i64>,
    pub http2_max_window_updates_per_data_frame: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    pub idle_timeout: Option<String>,
    pub max_idle_per_endpoint: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub name: String,
    pub protocol: Option<FileProtocol>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub tls: Option<FileClusterTls>,
    pub load_balancer: Option<FileLoadBalancer>,
    pub retry_budget: Option<FileRetryBudget>,
    pub circuit_breaker: Option<FileCircuitBreaker>,
    pub outlier_detection: Option<FileOutlierDetection>,
    #[serde(default)]
    pub endpoints: Vec<FileEndpoint>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileLoadBalancer {
    /// round_robin | least_request | random | peak_ewma | ring_hash
    pub policy: Option<String>,
    pub default_rtt: Option<String>,
    pub decay: Option<String>,
    /// ring_hash: hash this request header...
    pub hash_header: Option<String>,
    /// ...or the client's IP address.
    #[serde(default)]
    pub hash_source_ip: bool,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetryBudget {
    pub percent: Option<f64>,
    pub min_per_second: Option<i64>,
    pub window: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileCircuitBreaker {
    pub max_requests: Option<i64>,
    pub max_pending: Option<i64>,
    pub max_retries: Option<i64>,
    pub max_connections: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlierDetection {
    pub consecutive_failures: Option<i64>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileProtocol {
    Auto,
    Http1,
    Http2,
    Opaque,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileEndpoint {
    pub address: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub authority: Option<String>,
    pub port: Option<i64>,
    /// `IP:port`: connections to this original destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// A TLS server name (SNI), exact or `*.suffix`; with `port`, only
    /// connections to that port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// A weighted split across clusters, picked per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<FileSplit>>,
}
