//! The YAML wire format. Every field is optional (a default stands in) and
//! unknown fields are refused, so a typo is an error rather than a silently
//! ignored setting. These types never reach the data path: `validate`
//! turns them into the model.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub level: Option<String>,
    pub format: Option<FileLogFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileLogFormat {
    Plain,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuntime {
    pub worker_threads: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListeners {
    pub outbound: Option<FileListener>,
    pub inbound: Option<FileListener>,
    pub admin: Option<FileListener>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub address: Option<String>,
    pub port: Option<i64>,
    /// Cluster for traffic no route claims (default: the original destination).
    pub default_cluster: Option<String>,
    /// Inbound only: the IP the local application listens on.
    pub forward_address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxy {
    pub max_connections: Option<i64>,
    pub backlog: Option<i64>,
    pub detect_timeout: Option<String>,
    pub opaque_ports: Option<Vec<i64>>,
    pub shutdown_grace: Option<String>,
    pub tcp_keepalive: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub pool: Option<FilePool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    pub idle_timeout: Option<String>,
    pub max_idle_per_endpoint: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub name: String,
    pub protocol: Option<FileProtocol>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<FileEndpoint>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileProtocol {
    Auto,
    Http1,
    Http2,
    Opaque,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEndpoint {
    pub address: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub authority: Option<String>,
    pub port: Option<i64>,
    pub cluster: String,
}
