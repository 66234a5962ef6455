//! The model written back in the wire format: `/config_dump` shows the
//! running config in exactly the shape of the config file (every default
//! spelled out), so a dump saved to a file is a config `strait check` and
//! `strait run` accept, and reading it gives the same [`Config`]. Depends
//! only on `model` and `file`; `tests/dump.rs` holds the round trip.

use crate::file::*;
use crate::model::*;
use std::time::Duration;

fn duration(d: Duration) -> Option<String> {
    Some(humantime::format_duration(d).to_string())
}

fn listener(addr: std::net::SocketAddr, default_cluster: &Option<String>) -> FileListener {
    FileListener {
        address: Some(addr.ip().to_string()),
        port: Some(i64::from(addr.port())),
        default_cluster: default_cluster.clone(),
        forward_address: None,
        protocol: None,
    }
}

fn named_listener(l: &NamedListener) -> FileNamedListener {
    FileNamedListener {
        name: l.name.clone(),
        direction: match l.direction {
            ListenerDirection::Inbound => FileDirection::Inbound,
            ListenerDirection::Outbound => FileDirection::Outbound,
        },
        address: Some(l.addr.ip().to_string()),
        port: i64::from(l.addr.port()),
        default_cluster: l.default_cluster.clone(),
        protocol: Some(protocol(l.protocol)),
        forward_address: l.forward_ip.map(|ip| ip.to_string()),
    }
}

fn protocol(p: Protocol) -> FileProtocol {
    match p {
        Protocol::Auto => FileProtocol::Auto,
        Protocol::Http1 => FileProtocol::Http1,
        Protocol::Http2 => FileProtocol::Http2,
        Protocol::Opaque => FileProtocol::Opaque,
    }
}

fn allow(a: &Allow) -> FileAllow {
    match a {
        Allow::Unauthenticated => FileAllow::Keyword("unauthenticated".into()),
        Allow::Authenticated => FileAllow::Keyword("authenticated".into()),
        Allow::Deny => FileAllow::Keyword("deny".into()),
        Allow::Identities(ids) => {
            FileAllow::Identities(ids.iter().map(IdentityMatch::to_string).collect())
        }
    }
}

fn cluster(c: &Cluster) -> FileCluster {
    let mut lb = FileLoadBalancer::default();
    match &c.load_balancer {
        LoadBalancer::RoundRobin => lb.policy = Some("round_robin".into()),
        LoadBalancer::LeastRequest => lb.policy = Some("least_request".into()),
        LoadBalancer::Random => lb.policy = Some("random".into()),
        LoadBalancer::PeakEwma { default_rtt, decay } => {
            lb.policy = Some("peak_ewma".into());
            lb.default_rtt = duration(*default_rtt);
            lb.decay = duration(*decay);
        }
        LoadBalancer::RingHash { key } => {
            lb.policy = Some("ring_hash".into());
            match key {
                HashKey::Header(h) => lb.hash_header = Some(h.clone()),
                HashKey::SourceIp => lb.hash_source_ip = true,
            }
        }
    }
    let mut endpoints: Vec<FileEndpoint> = c
        .endpoints
        .iter()
        .map(|e| FileEndpoint {
            address: e.addr.to_string(),
            weight: Some(i64::from(e.weight)),
        })
        .collect();
    endpoints.extend(c.dns_endpoints.iter().map(|d| FileEndpoint {
        address: format!("{}:{}", d.host, d.port),
        weight: Some(i64::from(d.weight)),
    }));
    let cb = &c.circuit_breaker;
    FileCluster {
        name: c.name.clone(),
        protocol: Some(protocol(c.protocol)),
        connect_timeout: duration(c.connect_timeout),
        response_timeout: duration(c.response_timeout),
        tls: c.tls_identity.as_ref().map(|identity| FileClusterTls {
            identity: identity.clone(),
        }),
        load_balancer: Some(lb),
        retry_budget: Some(FileRetryBudget {
            percent: Some(c.retry_budget.percent),
            min_per_second: Some(i64::from(c.retry_budget.min_per_second)),
            window: duration(c.retry_budget.window),
        }),
        circuit_breaker: Some(FileCircuitBreaker {
            max_requests: Some(cb.max_requests as i64),
            max_pending: Some(cb.max_pending as i64),
            max_retries: Some(cb.max_retries as i64),
            max_connections: Some(cb.max_connections as i64),
        }),
        outlier_detection: c.outlier_detection.as_ref().map(|o| FileOutlierDetection {
            consecutive_failures: Some(i64::from(o.consecutive_failures)),
            base_ejection_time: duration(o.base_ejection_time),
            max_ejection_percent: Some(i64::from(o.max_ejection_percent)),
        }),
        endpoints,
    }
}

fn string_match(m: &StringMatch) -> FileStringMatch {
    let mut out = FileStringMatch::default();
    match m {
        StringMatch::Exact(s) => out.exact = Some(s.clone()),
        StringMatch::Prefix(s) => out.prefix = Some(s.clone()),
        StringMatch::Regex(s) => out.regex = Some(s.clone()),
        // Paths cannot be `present`; headers and query parameters say so below.
        StringMatch::Present => {}
    }
    out
}

fn named(n: &NamedMatch) -> FileNamedMatch {
    let m = string_match(&n.matcher);
    FileNamedMatch {
        name: n.name.clone(),
        exact: m.exact,
        prefix: m.prefix,
        regex: m.regex,
        present: matches!(n.matcher, StringMatch::Present).then_some(true),
        invert: n.invert,
    }
}

fn header_ops(h: &HeaderOps) -> Option<FileHeaderOps> {
    (!h.add.is_empty() || !h.remove.is_empty()).then(|| FileHeaderOps {
        add: h.add.iter().cloned().collect(),
        remove: h.remove.clone(),
    })
}

fn retry_on(on: &RetryOn) -> String {
    match on {
        RetryOn::ConnectFailure => "connect-failure".into(),
        RetryOn::Reset => "reset".into(),
        RetryOn::ServerError => "5xx".into(),
        RetryOn::GatewayError => "gateway-error".into(),
        RetryOn::Status(code) => code.to_string(),
        RetryOn::Grpc(code) => match code {
            1 => "grpc-cancelled".into(),
            4 => "grpc-deadline-exceeded".into(),
            8 => "grpc-resource-exhausted".into(),
            13 => "grpc-internal".into(),
            14 => "grpc-unavailable".into(),
            // Validation admits no other code; keep it visible if one appears.
            other => format!("grpc-{other}"),
        },
    }
}

fn file_route(r: &Route) -> FileRoute {
    let mut route = FileRoute {
        authority: None,
        port: None,
        destination: None,
        server_name: None,
        cluster: None,
        split: None,
    };
    match &r.matches {
        RouteMatch::Authority(a) => route.authority = Some(a.clone()),
        RouteMatch::Port(port) => route.port = Some(i64::from(*port)),
        RouteMatch::Destination(addr) => route.destination = Some(addr.to_string()),
        RouteMatch::ServerName { name, port } => {
            route.server_name = Some(name.clone());
            route.port = port.map(i64::from);
        }
    }
    if r.split.is_empty() {
        route.cluster = Some(r.cluster.clone());
    } else {
        route.split = Some(
            r.split
                .iter()
                .map(|(cluster, weight)| FileSplit {
                    cluster: cluster.clone(),
                    weight: i64::from(*weight),
                })
                .collect(),
        );
    }
    route
}

fn route_rule(r: &RouteRule) -> FileRouteRule {
    let (mut cluster, mut split, mut direct_response, mut redirect) = (None, None, None, None);
    let mut original_destination = None;
    match &r.action {
        RouteAction::Cluster(c) => cluster = Some(c.clone()),
        RouteAction::Split(parts) => {
            split = Some(
                parts
                    .iter()
                    .map(|(cluster, weight)| FileSplit {
                        cluster: cluster.clone(),
                        weight: i64::from(*weight),
                    })
                    .collect(),
            )
        }
        RouteAction::DirectResponse { status, body } => {
            direct_response = Some(FileDirectResponse {
                status: i64::from(*status),
                body: Some(body.clone()),
            })
        }
        RouteAction::Redirect { host, path, status } => {
            redirect = Some(FileRedirect {
                host: host.clone(),
                path: path.clone(),
                status: Some(i64::from(*status)),
            })
        }
        RouteAction::OriginalDestination => original_destination = Some(true),
    }
    let fault = (r.fault.delay.is_some() || r.fault.abort.is_some()).then(|| FileFault {
        delay: r
            .fault
            .delay
            .as_ref()
            .map(|(fixed, percent)| FileFaultDelay {
                fixed: fixed.clone(),
                percent: *percent,
            }),
        abort: r.fault.abort.map(|(status, percent)| FileFaultAbort {
            status: i64::from(status),
            percent,
        }),
    });
    FileRouteRule {
        name: Some(r.name.clone()),
        matches: FileRouteMatch {
            path: r.matches.path.as_ref().map(string_match),
            method: r.matches.method.clone(),
            headers: r.matches.headers.iter().map(named).collect(),
            query: r.matches.query.iter().map(named).collect(),
        },
        cluster,
        split,
        direct_response,
        redirect,
        original_destination,
        request_headers: header_ops(&r.request_headers),
        response_headers: header_ops(&r.response_headers),
        rewrite: (r.rewrite.prefix.is_some() || r.rewrite.host.is_some()).then(|| FileRewrite {
            prefix: r.rewrite.prefix.clone(),
            host: r.rewrite.host.clone(),
        }),
        timeout: r.timeout.and_then(duration),
        fault,
        rate_limit: r.rate_limit.as_ref().map(|l| FileRateLimit {
            requests_per_second: l.requests_per_second,
            burst: Some(i64::from(l.burst)),
        }),
        retry: r.retry.as_ref().map(|p| FileRetry {
            attempts: Some(i64::from(p.attempts)),
            on: p.on.iter().map(retry_on).collect(),
            per_try_timeout: p.per_try_timeout.and_then(duration),
            backoff_base: duration(p.backoff_base),
            backoff_max: duration(p.backoff_max),
            max_body: Some(p.max_body as i64),
        }),
    }
}

impl Config {
    /// This config in the config file's shape.
    pub fn to_file(&self) -> FileConfig {
        let p = &self.proxy;
        FileConfig {
            log: Some(FileLog {
                level: Some(self.log.level.clone()),
                format: Some(match self.log.format {
                    LogFormat::Plain => FileLogFormat::Plain,
                    LogFormat::Json => FileLogFormat::Json,
                }),
            }),
            runtime: Some(FileRuntime {
                worker_threads: Some(self.runtime.worker_threads as i64),
            }),
            listeners: Some(FileListeners {
                outbound: Some(FileListener {
                    protocol: Some(protocol(self.outbound.protocol)),
                    ..listener(self.outbound.addr, &self.outbound.default_cluster)
                }),
                inbound: Some(FileListener {
                    forward_address: Some(self.inbound.forward_ip.to_string()),
                    protocol: Some(protocol(self.inbound.protocol)),
                    ..listener(self.inbound.addr, &self.inbound.default_cluster)
                }),
                admin: Some(listener(self.admin, &None)),
                extra: self.extra_listeners.iter().map(named_listener).collect(),
            }),
            proxy: Some(FileProxy {
                max_connections: Some(p.max_connections as i64),
                backlog: Some(i64::from(p.backlog)),
                detect_timeout: duration(p.detect_timeout),
                opaque_ports: Some(p.opaque_ports.iter().map(|&port| i64::from(port)).collect()),
                shutdown_grace: duration(p.shutdown_grace),
                tcp_keepalive: duration(p.tcp_keepalive),
                idle_timeout: duration(p.idle_timeout),
                connect_timeout: duration(p.connect_timeout),
                response_timeout: duration(p.response_timeout),
                pool: Some(FilePool {
                    idle_timeout: duration(p.pool_idle_timeout),
                    max_idle_per_endpoint: Some(p.pool_max_idle_per_endpoint as i64),
                }),
                http: Some(FileHttp {
                    normalize_path: Some(p.http.normalize_path),
                    merge_slashes: Some(p.http.merge_slashes),
                    decode_unreserved: Some(p.http.decode_unreserved),
                    max_request_headers_bytes: Some(p.http.max_request_headers_bytes as i64),
                    max_request_headers: Some(p.http.max_request_headers as i64),
                    max_uri_bytes: Some(p.http.max_uri_bytes as i64),
                    max_request_body_bytes: p.http.max_request_body_bytes.map(|n| n as i64),
                    max_concurrent_streams: Some(i64::from(p.http.max_concurrent_streams)),
                    max_pending_accept_reset_streams: Some(
                        p.http.max_pending_accept_reset_streams as i64,
                    ),
                    max_local_error_reset_streams: Some(
                        p.http.max_local_error_reset_streams as i64,
                    ),
                    http2_keep_alive_interval: p.http.http2_keep_alive_interval.and_then(duration),
                    http2_keep_alive_timeout: duration(p.http.http2_keep_alive_timeout),
                    http2_flood_window: duration(p.http.http2_flood_window),
                    http2_max_ping_frames: Some(i64::from(p.http.http2_max_ping_frames)),
                    http2_max_settings_frames: Some(i64::from(p.http.http2_max_settings_frames)),
                    http2_max_empty_data_frames: Some(i64::from(
                        p.http.http2_max_empty_data_frames,
                    )),
                    http2_max_window_updates_per_data_frame: Some(i64::from(
                        p.http.http2_max_window_updates_per_data_frame,
                    )),
                }),
            }),
            clusters: self.clusters.iter().map(cluster).collect(),
            routes: self.routes.iter().map(file_route).collect(),
            identity: self.identity.as_ref().map(|id| FileIdentity {
                certificate: match &id.source {
                    IdentitySource::Files(f) => f.certificate.display().to_string(),
                    IdentitySource::Sds(_) => String::new(),
                },
                private_key: match &id.source {
                    IdentitySource::Files(f) => f.private_key.display().to_string(),
                    IdentitySource::Sds(_) => String::new(),
                },
                trust_bundle: match &id.source {
                    IdentitySource::Files(f) => f.trust_bundle.display().to_string(),
                    IdentitySource::Sds(_) => String::new(),
                },
                sds: match &id.source {
                    IdentitySource::Files(_) => None,
                    IdentitySource::Sds(s) => Some(FileSdsIdentity {
                        certificate: s.certificate.clone(),
                        trust_bundle: s.trust_bundle.clone(),
                    }),
                },
                min_tls_version: Some(if id.allow_tls12 { "1.2" } else { "1.3" }.into()),
                handshake_timeout: duration(id.handshake_timeout),
            }),
            policy: Some(FilePolicy {
                default: Some(allow(&self.policy.default)),
                ports: self
                    .policy
                    .ports
                    .iter()
                    .map(|(port, a)| FilePortPolicy {
                        port: i64::from(*port),
                        allow: allow(a),
                    })
                    .collect(),
                unauthenticated_paths: self.policy.unauthenticated_paths.clone(),
            }),
            virtual_hosts: self
                .virtual_hosts
                .iter()
                .map(|h| FileVirtualHost {
                    name: h.name.clone(),
                    domains: h.domains.clone(),
                    port: h.port.map(i64::from),
                    routes: h.routes.iter().map(route_rule).collect(),
                })
                .collect(),
            dns: Some(FileDns {
                servers: self.dns.servers.iter().map(|s| s.to_string()).collect(),
                min_refresh: duration(self.dns.min_refresh),
                max_refresh: duration(self.dns.max_refresh),
            }),
            xds: self.xds.as_ref().map(|x| FileXds {
                tls: x.tls.as_ref().map(|t| FileXdsTls {
                    trust_bundle: t.trust_bundle.display().to_string(),
                    certificate: t.client.as_ref().map(|c| c.0.display().to_string()),
                    private_key: t.client.as_ref().map(|c| c.1.display().to_string()),
                    server_name: t.server_name.clone(),
                }),
                address: x.address.clone(),
                node: Some(FileXdsNode {
                    id: Some(x.node.id.clone()),
                    cluster: Some(x.node.cluster.clone()),
                    metadata: x.node.metadata.clone(),
                }),
                mode: Some(
                    match x.mode {
                        XdsMode::Sotw => "sotw",
                        XdsMode::Delta => "delta",
                    }
                    .into(),
                ),
                initial_fetch_timeout: duration(x.initial_fetch_timeout),
            }),
            tracing: self.tracing.as_ref().map(|t| FileTracing {
                otlp: Some(FileOtlp {
                    address: t.otlp_address.clone(),
                    max_queued_spans: i64::try_from(t.max_queued_spans).ok(),
                }),
                sample_rate: Some(t.sample_rate),
                service_name: Some(t.service_name.clone()),
            }),
            xds_resources: None,
            access_log: self.access_log.to_file(),
        }
    }

    /// This config as pretty JSON in the config file's shape, with unset
    /// optional fields left out. JSON is YAML: the dump is a config file.
    pub fn dump_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut value = serde_json::to_value(self.to_file())?;
        drop_nulls(&mut value);
        serde_json::to_vec_pretty(&value)
    }
}

fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}
