//! Turns the wire format into the model, rule by rule. Each rule failure
//! names the field path and the line it came from.

use crate::error::{At, ConfigError};
use crate::file::*;
use crate::lines::LineIndex;
use crate::model::*;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use crate::listeners::distinct_listeners;
mod http;
mod routes;
mod tracing;
mod xds;

pub use routes::server_name;

/// Defaults: Linkerd's ports, loopback for the outbound and admin listeners.
pub mod defaults {
    use std::time::Duration;
    pub const OUTBOUND: &str = "127.0.0.1:4140";
    pub const INBOUND: &str = "0.0.0.0:4143";
    pub const ADMIN: &str = "127.0.0.1:4191";
    pub const FORWARD_IP: &str = "127.0.0.1";
    pub const MAX_CONNECTIONS: usize = 100_000;
    pub const BACKLOG: u32 = 1024;
    pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Server-speaks-first protocols (SMTP, MySQL, Galera, PostgreSQL,
    /// Redis, Elasticsearch transport, memcached), as Linkerd ships them.
    pub const OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub const TCP_KEEPALIVE: Duration = Duration::from_secs(10);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const POOL_MAX_IDLE_PER_ENDPOINT: usize = 128;
    pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Envoy's `max_request_headers_kb` default is 60 KiB; ours is 64.
    pub const MAX_REQUEST_HEADERS_BYTES: usize = 64 * 1024;
    pub const MAX_REQUEST_HEADERS: usize = 100;
    pub const MAX_URI_BYTES: usize = 8 * 1024;
    pub const MAX_CONCURRENT_STREAMS: u32 = 200;
    /// hyper's own default (Envoy has no such counter; its overload
    /// manager resets streams instead).
    pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 50;
    pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
    /// hyper's default wait for a PING's acknowledgement.
    pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
    /// HTTP/2 control-frame floods are counted per window. Envoy bounds
    /// the acknowledgements it has queued (1000 control frames); h2 keeps
    /// one, so strait bounds the rate instead, far above what a client
    /// (keep-alive, a BDP estimator's PINGs) sends and far below a flood.
    pub const HTTP2_FLOOD_WINDOW: Duration = Duration::from_secs(10);
    pub const HTTP2_MAX_PING_FRAMES: u32 = 1000;
    pub const HTTP2_MAX_SETTINGS_FRAMES: u32 = 100;
    /// Envoy allows one empty frame in a row; counted per window here.
    pub const HTTP2_MAX_EMPTY_DATA_FRAMES: u32 = 100;
    /// Envoy's `max_inbound_window_update_frames_per_data_frame_sent`.
    pub const HTTP2_MAX_WINDOW_UPDATES_PER_DATA_FRAME: u32 = 10;
    /// Peak-EWMA's assumed latency for an endpoint with no history yet.
    pub const EWMA_DEFAULT_RTT: Duration = Duration::from_millis(30);
    /// How fast Peak-EWMA forgets a latency peak.
    pub const EWMA_DECAY: Duration = Duration::from_secs(10);
    pub const BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
    /// Envoy's default for `initial_fetch_timeout`.
    pub const XDS_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);
}

pub(crate) struct Rules<'a> {
    index: &'a LineIndex,
}

impl Rules<'_> {
    pub(crate) fn at(&self, field: &str) -> At {
        At {
            field: field.to_string(),
            line: self.index.line_of(field),
        }
    }

    pub(crate) fn port(
        &self,
        field: &str,
        value: i64,
        allow_zero: bool,
    ) -> Result<u16, ConfigError> {
        let min = if allow_zero { 0 } else { 1 };
        match u16::try_from(value) {
            Ok(port) if i64::from(port) >= min => Ok(port),
            _ => Err(ConfigError::NotAPort {
                at: self.at(field),
                value,
            }),
        }
    }

    pub(crate) fn ip(&self, field: &str, value: &str) -> Result<IpAddr, ConfigError> {
        value.parse().map_err(|_| ConfigError::NotAnIp {
            at: self.at(field),
            value: value.to_string(),
        })
    }

    fn socket_addr(&self, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        match value.parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => Ok(addr),
            _ => Err(ConfigError::NotASocketAddr {
                at: self.at(field),
                value: value.to_string(),
            }),
        }
    }

    fn duration(
        &self,
        field: &str,
        value: Option<&String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let parsed =
            humantime::parse_duration(value.trim()).map_err(|_| ConfigError::NotADuration {
                at: self.at(field),
                value: value.clone(),
            })?;
        if parsed.is_zero() {
            return Err(ConfigError::ZeroDuration {
                at: self.at(field),
                value: value.clone(),
            });
        }
        Ok(parsed)
    }

    pub(crate) fn range(
        &self,
        field: &str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
        expected: &'static str,
    ) -> Result<i64, ConfigError> {
        let value = value.unwrap_or(default);
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::OutOfRange {
                at: self.at(field),
                value,
                expected,
            })
        }
    }

    fn listener_addr(
        &self,
        name: &str,
        file: Option<&FileListener>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        // Defaults are constants that parse.
        let default: SocketAddr = default.parse().unwrap_or(SocketAddr::from(([0; 4], 0)));
        let ip = match file.and_then(|l| l.address.as_deref()) {
            Some(addr) => self.ip(&format!("listeners.{name}.address"), addr)?,
            None => default.ip(),
        };
        let port = match file.and_then(|l| l.port) {
            Some(port) => self.port(&format!("listeners.{name}.port"), port, true)?,
            None => default.port(),
        };
        Ok(SocketAddr::new(ip, port))
    }
}

/// Validate a parsed file into a [`Config`].
pub fn validate(file: FileConfig, index: &LineIndex) -> Result<Config, ConfigError> {
    let rules = Rules { index };

    let log_file = file.log.unwrap_or_default();
    let level = log_file.level.unwrap_or_else(|| "info".to_string());
    if !is_plausible_log_level(&level) {
        return Err(ConfigError::BadLogLevel {
            at: rules.at("log.level"),
            value: level,
        });
    }
    let log = Log {
        level,
        format: match log_file.format {
            Some(FileLogFormat::Json) => LogFormat::Json,
            _ => LogFormat::Plain,
        },
    };

    let runtime_file = file.runtime.unwrap_or_default();
    let worker_threads = rules.range(
        "runtime.worker_threads",
        runtime_file.worker_threads,
        0,
        0,
        1024,
        "0 (one per CPU) to 1024",
    )? as usize;

    let listeners = file.listeners.unwrap_or_default();
    let outbound_file = listeners.outbound.as_ref();
    let inbound_file = listeners.inbound.as_ref();
    let outbound = Listener {
        addr: rules.listener_addr("outbound", outbound_file, defaults::OUTBOUND)?,
        default_cluster: outbound_file.and_then(|l| l.default_cluster.clone()),
        protocol: protocol(outbound_file.and_then(|l| l.protocol)),
    };
    let forward_ip = match inbound_file.and_then(|l| l.forward_address.as_deref()) {
        Some(ip) => rules.ip("listeners.inbound.forward_address", ip)?,
        None => rules.ip("listeners.inbound.forward_address", defaults::FORWARD_IP)?,
    };
    let inbound = InboundListener {
        addr: rules.listener_addr("inbound", inbound_file, defaults::INBOUND)?,
        default_cluster: inbound_file.and_then(|l| l.default_cluster.clone()),
        protocol: protocol(inbound_file.and_then(|l| l.protocol)),
        forward_ip,
    };
    let admin = rules.listener_addr("admin", listeners.admin.as_ref(), defaults::ADMIN)?;

    let proxy = proxy_settings(&rules, file.proxy.unwrap_or_default())?;

    let mut clusters = Vec::with_capacity(file.clusters.len());
    let mut names = HashSet::new();
    let has_identity = file.identity.is_some();
    for (i, c) in file.clusters.into_iter().enumerate() {
        let field = format!("clusters[{i}]");
        if c.name.trim().is_empty() {
            return Err(ConfigError::EmptyClusterName {
                at: rules.at(&format!("{field}.name")),
            });
        }
        if !names.insert(c.name.clone()) {
            return Err(ConfigError::DuplicateCluster {
                at: rules.at(&format!("{field}.name")),
                name: c.name,
            });
        }
        if c.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints {
                at: rules.at(&field),
                name: c.name,
            });
        }
        let mut endpoints = Vec::with_capacity(c.endpoints.len());
        let mut dns_endpoints = Vec::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            let ep = format!("{field}.endpoints[{j}]");
            let weight = rules.range(
                &format!("{ep}.weight"),
                e.weight,
                1,
                1,
                10_000,
                "1 to 10000",
            )? as u32;
            match e.address.parse::<SocketAddr>() {
                Ok(_) => endpoints.push(Endpoint {
                    addr: rules.socket_addr(&format!("{ep}.address"), &e.address)?,
                    weight,
                }),
                Err(_) => {
                    let (host, port) = dns_name(&rules, &format!("{ep}.address"), &e.address)?;
                    dns_endpoints.push(DnsEndpoint { host, port, weight });
                }
            }
        }
        let tls_identity = match c.tls {
            Some(tls) if tls.identity.trim().is_empty() => {
                return Err(ConfigError::Empty {
                    at: rules.at(&format!("{field}.tls.identity")),
                })
            }
            Some(_) if !has_identity => {
                return Err(ConfigError::NeedsIdentity {
                    at: rules.at(&format!("{field}.tls")),
                    what: format!("mTLS to cluster '{}'", c.name),
                })
            }
            Some(tls) => Some(tls.identity),
            None => None,
        };
        let lb_file = c.load_balancer.unwrap_or_default();
        let lb_field = format!("{field}.load_balancer");
        let load_balancer = match lb_file.policy.as_deref().unwrap_or("peak_ewma") {
            "round_robin" => LoadBalancer::RoundRobin,
            "least_request" => LoadBalancer::LeastRequest,
            "random" => LoadBalancer::Random,
            "peak_ewma" => LoadBalancer::PeakEwma {
                default_rtt: rules.duration(&format!("{lb_field}.default_rtt"), lb_file.default_rtt.as_ref(), defaults::EWMA_DEFAULT_RTT)?,
                decay: rules.duration(&format!("{lb_field}.decay"), lb_file.decay.as_ref(), defaults::EWMA_DECAY)?,
            },
            "ring_hash" => LoadBalancer::RingHash {
                key: match (&lb_file.hash_header, lb_file.hash_source_ip) {
                    (Some(h), false) => HashKey::Header(h.to_ascii_lowercase()),
                    (None, true) => HashKey::SourceIp,
                    _ => {
                        return Err(ConfigError::Syntax {
                            at: rules.at(&lb_field),
                            message: "ring_hash needs exactly one of hash_header or hash_source_ip: true".into(),
                        })
                    }
                },
            },
            other => {
                return Err(ConfigError::Syntax {
                    at: rules.at(&format!("{lb_field}.policy")),
                    message: format!("'{other}' is not a load balancer: round_robin, least_request, random, peak_ewma or ring_hash"),
                })
            }
        };
        let cb = c.circuit_breaker.unwrap_or_default();
        let circuit_breaker = CircuitBreaker {
            max_requests: rules.range(
                &format!("{field}.circuit_breaker.max_requests"),
                cb.max_requests,
                100_000,
                1,
                10_000_000,
                "1 to 10000000",
            )? as usize,
            max_pending: rules.range(
                &format!("{field}.circuit_breaker.max_pending"),
                cb.max_pending,
                100_000,
                1,
                10_000_000,
                "1 to 10000000",
            )? as usize,
            max_connections: rules.range(
                &format!("{field}.circuit_breaker.max_connections"),
                cb.max_connections,
                100_000,
                1,
                10_000_000,
                "1 to 10000000",
            )? as usize,
            max_retries: rules.range(
                &format!("{field}.circuit_breaker.max_retries"),
                cb.max_retries,
                1_000,
                0,
                10_000_000,
                "0 to 10000000",
            )? as usize,
        };
        let outlier_detection = match c.outlier_detection {
            None => None,
            Some(o) => Some(OutlierDetection {
                consecutive_failures: rules.range(
                    &format!("{field}.outlier_detection.consecutive_failures"),
                    o.consecutive_failures,
                    5,
                    1,
                    1000,
                    "1 to 1000",
                )? as u32,
                base_ejection_time: rules.duration(
                    &format!("{field}.outlier_detection.base_ejection_time"),
                    o.base_ejection_time.as_ref(),
                    defaults::BASE_EJECTION_TIME,
                )?,
                max_ejection_percent: rules.range(
                    &format!("{field}.outlier_detection.max_ejection_percent"),
                    o.max_ejection_percent,
                    50,
                    0,
                    100,
                    "0 to 100",
                )? as u32,
            }),
        };
        let rb = c.retry_budget.unwrap_or_default();
        let percent = rb.percent.unwrap_or(20.0);
        if !(0.0..=1000.0).contains(&percent) {
            return Err(ConfigError::Syntax {
                at: rules.at(&format!("{field}.retry_budget.percent")),
                message: format!("{percent} is out of range: 0 to 1000"),
            });
        }
        let retry_budget = RetryBudget {
            percent,
            min_per_second: rules.range(
                &format!("{field}.retry_budget.min_per_second"),
                rb.min_per_second,
                10,
                0,
                100_000,
                "0 to 100000",
            )? as u32,
            window: rules.duration(
                &format!("{field}.retry_budget.window"),
                rb.window.as_ref(),
                std::time::Duration::from_secs(10),
            )?,
        };
        clusters.push(Cluster {
            dns_endpoints,
            retry_budget,
            load_balancer,
            circuit_breaker,
            outlier_detection,
            tls_identity,
            protocol: match c.protocol.unwrap_or(FileProtocol::Auto) {
                FileProtocol::Auto => Protocol::Auto,
                FileProtocol::Http1 => Protocol::Http1,
                FileProtocol::Http2 => Protocol::Http2,
                FileProtocol::Opaque => Protocol::Opaque,
            },
            connect_timeout: rules.duration(
                &format!("{field}.connect_timeout"),
                c.connect_timeout.as_ref(),
                proxy.connect_timeout,
            )?,
            response_timeout: rules.duration(
                &format!("{field}.response_timeout"),
                c.response_timeout.as_ref(),
                proxy.response_timeout,
            )?,
            name: c.name,
            endpoints,
        });
    }

    let known = |field: &str, name: &str| -> Result<(), ConfigError> {
        if names.contains(name) {
            Ok(())
        } else {
            Err(ConfigError::UnknownCluster {
                at: rules.at(field),
                name: name.to_string(),
            })
        }
    };
    if let Some(name) = &outbound.default_cluster {
        known("listeners.outbound.default_cluster", name)?;
    }
    if let Some(name) = &inbound.default_cluster {
        known("listeners.inbound.default_cluster", name)?;
    }

    let extra_listeners = crate::listeners::extra_listeners(&rules, listeners.extra, &names)?;

    let routes = routes::routes(&rules, file.routes, &known)?;

    let identity = match file.identity {
        None => None,
        Some(id) => {
            let source = identity_source(&rules, &id, file.xds.is_some())?;
            let allow_tls12 = match id.min_tls_version.as_deref() {
                None | Some("1.3") => false,
                Some("1.2") => true,
                Some(other) => {
                    return Err(ConfigError::Syntax {
                        at: rules.at("identity.min_tls_version"),
                        message: format!("'{other}' is not a TLS version: use \"1.2\" or \"1.3\""),
                    })
                }
            };
            Some(Identity {
                source,
                allow_tls12,
                handshake_timeout: rules.duration(
                    "identity.handshake_timeout",
                    id.handshake_timeout.as_ref(),
                    defaults::HANDSHAKE_TIMEOUT,
                )?,
            })
        }
    };
    let policy = policy(&rules, file.policy.unwrap_or_default(), identity.is_some())?;
    let virtual_hosts = crate::vhosts::virtual_hosts(index, file.virtual_hosts, &names)?;
    let dns_file = file.dns.unwrap_or_default();
    let dns = Dns {
        servers: dns_file
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| rules.socket_addr(&format!("dns.servers[{i}]"), s))
            .collect::<Result<_, _>>()?,
        min_refresh: rules.duration(
            "dns.min_refresh",
            dns_file.min_refresh.as_ref(),
            std::time::Duration::from_secs(1),
        )?,
        max_refresh: rules.duration(
            "dns.max_refresh",
            dns_file.max_refresh.as_ref(),
            std::time::Duration::from_secs(30),
        )?,
    };

    let xds = match file.xds {
        Some(x) => Some(xds::bootstrap(&rules, x)?),
        None => None,
    };

    let tracing = match file.tracing {
        Some(t) => Some(tracing::tracing(&rules, t)?),
        None => None,
    };

    let config = Config {
        tracing,
        access_log: crate::access_log::validate(&rules, file.access_log)?,
        xds,
        dns,
        identity,
        policy,
        virtual_hosts,
        log,
        runtime: Runtime { worker_threads },
        outbound,
        inbound,
        admin,
        extra_listeners,
        proxy,
        clusters,
        routes,
    };
    distinct_listeners(&config, Some(index))?;
    Ok(config)
}

/// Files, or xDS secrets by name (which needs the `xds:` section); never
/// both, so where the identity comes from is never a guess.
fn identity_source(
    rules: &Rules<'_>,
    id: &FileIdentity,
    has_xds: bool,
) -> Result<IdentitySource, ConfigError> {
    let files = [
        ("certificate", &id.certificate),
        ("private_key", &id.private_key),
        ("trust_bundle", &id.trust_bundle),
    ];
    let Some(sds) = &id.sds else {
        for (name, value) in files {
            if value.trim().is_empty() {
                return Err(ConfigError::Empty {
                    at: rules.at(&format!("identity.{name}")),
                });
            }
        }
        return Ok(IdentitySource::Files(IdentityFiles {
            certificate: id.certificate.clone().into(),
            private_key: id.private_key.clone().into(),
            trust_bundle: id.trust_bundle.clone().into(),
        }));
    };
    if let Some((name, _)) = files.iter().find(|(_, v)| !v.trim().is_empty()) {
        return Err(ConfigError::Syntax {
            at: rules.at(&format!("identity.{name}")),
            message: "give the identity as files or as identity.sds secrets, not both".into(),
        });
    }
    if !has_xds {
        return Err(ConfigError::Syntax {
            at: rules.at("identity.sds"),
            message: "secrets come from the control plane: needs the xds: section".into(),
        });
    }
    for (name, value) in [
        ("certificate", &sds.certificate),
        ("trust_bundle", &sds.trust_bundle),
    ] {
        if value.trim().is_empty() {
            return Err(ConfigError::Empty {
                at: rules.at(&format!("identity.sds.{name}")),
            });
        }
    }
    Ok(IdentitySource::Sds(SdsIdentity {
        certificate: sds.certificate.trim().to_string(),
        trust_bundle: sds.trust_bundle.trim().to_string(),
    }))
}

fn allow(
    rules: &Rules<'_>,
    field: &str,
    allow: &FileAllow,
    has_identity: bool,
) -> Result<Allow, ConfigError> {
    let parsed = match allow {
        FileAllow::Keyword(k) => match k.as_str() {
            "unauthenticated" => Allow::Unauthenticated,
            "authenticated" => Allow::Authenticated,
            "deny" => Allow::Deny,
            other => {
                return Err(ConfigError::BadAllow {
                    at: rules.at(field),
                    value: other.to_string(),
                })
            }
        },
        FileAllow::Identities(ids) => {
            if ids.iter().any(|id| id.trim().is_empty()) {
                return Err(ConfigError::Empty {
                    at: rules.at(field),
                });
            }
            Allow::Identities(
                ids.iter()
                    .map(|id| IdentityMatch::parse(id.trim()))
                    .collect(),
            )
        }
    };
    let needs_identity = matches!(parsed, Allow::Authenticated | Allow::Identities(_));
    if needs_identity && !has_identity {
        return Err(ConfigError::NeedsIdentity {
            at: rules.at(field),
            what: "an authenticated policy".into(),
        });
    }
    Ok(parsed)
}

fn policy(rules: &Rules<'_>, p: FilePolicy, has_identity: bool) -> Result<Policy, ConfigError> {
    let default = match &p.default {
        Some(a) => allow(rules, "policy.default", a, has_identity)?,
        None => Allow::Unauthenticated,
    };
    let mut ports = std::collections::BTreeMap::new();
    for (i, entry) in p.ports.iter().enumerate() {
        let port = rules.port(&format!("policy.ports[{i}].port"), entry.port, false)?;
        ports.insert(
            port,
            allow(
                rules,
                &format!("policy.ports[{i}].allow"),
                &entry.allow,
                has_identity,
            )?,
        );
    }
    Ok(Policy {
        default,
        ports,
        unauthenticated_paths: p.unauthenticated_paths,
    })
}

fn proxy_settings(rules: &Rules<'_>, p: FileProxy) -> Result<ProxySettings, ConfigError> {
    let opaque_ports = match p.opaque_ports {
        Some(ports) => ports
            .iter()
            .enumerate()
            .map(|(i, port)| rules.port(&format!("proxy.opaque_ports[{i}]"), *port, false))
            .collect::<Result<Vec<_>, _>>()?,
        None => defaults::OPAQUE_PORTS.to_vec(),
    };
    let pool = p.pool.unwrap_or_default();
    let http = http::settings(rules, p.http.unwrap_or_default())?;
    Ok(ProxySettings {
        http,
        max_connections: rules.range(
            "proxy.max_connections",
            p.max_connections,
            defaults::MAX_CONNECTIONS as i64,
            1,
            10_000_000,
            "1 to 10000000",
        )? as usize,
        backlog: rules.range(
            "proxy.backlog",
            p.backlog,
            i64::from(defaults::BACKLOG),
            1,
            65_535,
            "1 to 65535",
        )? as u32,
        detect_timeout: rules.duration(
            "proxy.detect_timeout",
            p.detect_timeout.as_ref(),
            defaults::DETECT_TIMEOUT,
        )?,
        opaque_ports,
        shutdown_grace: rules.duration(
            "proxy.shutdown_grace",
            p.shutdown_grace.as_ref(),
            defaults::SHUTDOWN_GRACE,
        )?,
        idle_timeout: rules.duration(
            "proxy.idle_timeout",
            p.idle_timeout.as_ref(),
            defaults::IDLE_TIMEOUT,
        )?,
        tcp_keepalive: rules.duration(
            "proxy.tcp_keepalive",
            p.tcp_keepalive.as_ref(),
            defaults::TCP_KEEPALIVE,
        )?,
        connect_timeout: rules.duration(
            "proxy.connect_timeout",
            p.connect_timeout.as_ref(),
            defaults::CONNECT_TIMEOUT,
        )?,
        response_timeout: rules.duration(
            "proxy.response_timeout",
            p.response_timeout.as_ref(),
            defaults::RESPONSE_TIMEOUT,
        )?,
        pool_idle_timeout: rules.duration(
            "proxy.pool.idle_timeout",
            pool.idle_timeout.as_ref(),
            defaults::POOL_IDLE_TIMEOUT,
        )?,
        pool_max_idle_per_endpoint: rules.range(
            "proxy.pool.max_idle_per_endpoint",
            pool.max_idle_per_endpoint,
            defaults::POOL_MAX_IDLE_PER_ENDPOINT as i64,
            0,
            100_000,
            "0 to 100000",
        )? as usize,
    })
}

pub(crate) fn protocol(p: Option<FileProtocol>) -> Protocol {
    match p.unwrap_or(FileProtocol::Auto) {
        FileProtocol::Auto => Protocol::Auto,
        FileProtocol::Http1 => Protocol::Http1,
        FileProtocol::Http2 => Protocol::Http2,
        FileProtocol::Opaque => Protocol::Opaque,
    }
}

/// `name:port` with a DNS name (letters, digits, `-`, `.`).
fn dns_name(rules: &Rules<'_>, field: &str, value: &str) -> Result<(String, u16), ConfigError> {
    let bad = || ConfigError::NotASocketAddr {
        at: rules.at(field),
        value: value.to_string(),
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().any(|c| c.is_ascii_alphabetic())
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if port == 0 || !host_ok {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// Authorities compare case-insensitively and without a port.
pub fn normalize_authority(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        // Keep bracketed IPv6 literals whole; strip only a trailing :port.
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') => {
            host
        }
        _ => authority,
    };
    host.trim().to_ascii_lowercase()
}

/// Accepts a level name or comma-separated `target=level` directives.
fn is_plausible_log_level(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    level
        .split(',')
        .all(|directive| match directive.split_once('=') {
            Some((target, lvl)) => !target.trim().is_empty() && is_level(lvl),
            None => is_level(directive),
        })
}
