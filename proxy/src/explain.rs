//! Route explain: where a request (or, given a server name, an outbound
//! TLS connection) would go and why, without sending it.
//! Answers `GET /debug/route` on the admin port (live endpoint state) and
//! `strait explain CONFIG` (a config file's own endpoints, fresh state).
//!
//! It decides with the data path's own code ([`crate::outbound::decide`],
//! [`crate::inbound::decide`], [`VirtualHosts::host_index`],
//! [`Route::mismatch`]) and only adds the account of the rules that did not
//! match, so an explanation cannot drift from what traffic does.

use crate::http::vhost::{Action, DomainMatch, Route, VirtualHosts};
use crate::orig_dst::OrigDst;
use crate::registry::ClusterState;
use crate::route::{RouteTarget, Snapshot, Targets};
use crate::{inbound, outbound};
use http::{Method, Request};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use strait_config::LoadBalancer;

/// Which listener direction a request is explained for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Direction, String> {
        match s {
            "outbound" => Ok(Direction::Outbound),
            "inbound" => Ok(Direction::Inbound),
            other => Err(format!(
                "direction '{other}' is neither outbound nor inbound"
            )),
        }
    }
}

/// The request to explain.
#[derive(Debug, Clone)]
pub struct Query {
    pub direction: Direction,
    pub authority: Option<String>,
    pub path: String,
    pub method: Method,
    /// `name:value` pairs, in order.
    pub headers: Vec<(String, String)>,
    /// The original destination port iptables redirected the request
    /// from; None for a request sent to the listener itself.
    pub port: Option<u16>,
    /// Explain an outbound TLS connection asking for this server name
    /// (SNI) instead of an HTTP request.
    pub server_name: Option<String>,
}

impl Query {
    /// `direction=&authority=&path=&method=&header=name:value&port=&server_name=`,
    /// as `/debug/route` takes it (percent-encoded; `header` repeats).
    pub fn from_query_string(query: &str) -> Result<Query, String> {
        let mut direction = Direction::Outbound;
        let mut authority = None;
        let mut path = "/".to_string();
        let mut method = Method::GET;
        let mut headers = Vec::new();
        let mut port = None;
        let mut server_name = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "direction" => direction = value.parse()?,
                "authority" => authority = Some(value.into_owned()),
                "path" => path = value.into_owned(),
                "method" => method = parse_method(&value)?,
                "header" => headers.push(parse_header(&value)?),
                "port" => port = Some(parse_port(&value)?),
                "server_name" => server_name = Some(value.into_owned()),
                other => return Err(format!("unknown parameter '{other}'; expected direction, authority, path, method, header (name:value), port or server_name")),
            }
        }
        Ok(Query {
            direction,
            authority,
            path,
            method,
            headers,
            port,
            server_name,
        })
    }

    /// The request the data path would see (no body).
    fn request(&self) -> Result<Request<()>, String> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(&self.path);
        if let Some(authority) = &self.authority {
            builder = builder.header(http::header::HOST, authority);
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(())
            .map_err(|e| format!("not a valid request: {e}"))
    }
}

pub fn parse_method(value: &str) -> Result<Method, String> {
    Method::from_bytes(value.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("method '{value}' is not an HTTP method"))
}

pub fn parse_header(value: &str) -> Result<(String, String), String> {
    let (name, value) = value
        .split_once(':')
        .ok_or_else(|| format!("header '{value}' is not name:value"))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

pub fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("port '{value}' is not a port number"))
}

/// Explain `query` against `snapshot` as JSON.
pub fn explain(snapshot: &Snapshot, query: &Query) -> Result<Value, String> {
    let mut req = query.request()?;
    // The admit layer checks limits and normalises the path before any
    // routing; explain routes what it would.
    let admitted = crate::http::authority::admit(&mut req, &snapshot.config.proxy.http);
    let listener = match query.direction {
        Direction::Outbound => snapshot.config.outbound.addr,
        Direction::Inbound => snapshot.config.inbound.addr,
    };
    // A request sent to the listener itself has the listener as its
    // original destination, unredirected (as the data path sees it).
    let orig_dst = match query.port {
        Some(port) => OrigDst {
            addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            redirected: true,
        },
        None => OrigDst {
            addr: listener,
            redirected: false,
        },
    };
    let mut out = json!({
        "direction": match query.direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        },
        "request": {
            "method": query.method.as_str(),
            "authority": query.authority,
            "path": query.path,
            "headers": query.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect::<Vec<_>>(),
            "original_destination_port": query.port,
        },
        "routed_path": req.uri().path(),
        "virtual_host": Value::Null,
        "route": Value::Null,
    });
    if query.direction == Direction::Inbound && query.server_name.is_some() {
        return Err("server_name explains outbound TLS connections only".into());
    }
    if let (Direction::Outbound, Some(name)) = (query.direction, &query.server_name) {
        // A TLS connection: no HTTP request to admit or route.
        out["request"] = json!({
            "tls_server_name": name,
            "original_destination_port": query.port,
        });
        out["routed_path"] = Value::Null;
        let decided = tls_decision(snapshot, orig_dst, &name.to_ascii_lowercase());
        return Ok(finish(out, decided));
    }
    if let Err(e) = admitted {
        out["rule"] = "rejected".into();
        out["reason"] = format!("the request is refused before routing: {e}").into();
        return Ok(out);
    }
    let decided = match query.direction {
        Direction::Outbound => {
            if let Some(authority) = &query.authority {
                // The destination port's own hosts, when one of them
                // takes this authority; else the hosts of every port.
                let host = outbound::vhost_host(authority);
                let vhosts = snapshot
                    .port_vhosts(orig_dst.addr.port())
                    .filter(|v| v.host_index(&host).is_some())
                    .unwrap_or(&snapshot.vhosts);
                out["virtual_host"] = virtual_host_trail(vhosts, &host, &req);
            }
            outbound_decision(snapshot, outbound::decide(snapshot, orig_dst, &req))
        }
        Direction::Inbound => match inbound::decide(snapshot, orig_dst) {
            inbound::Decision::Default(target) => Decided::cluster(
                "default_cluster",
                "the inbound listener's default_cluster takes every inbound request".into(),
                target,
            ),
            inbound::Decision::App(app) => Decided::direct(
                "application",
                format!("inbound traffic goes to forward_address at the original destination port: {app}"),
                app,
            ),
            inbound::Decision::NoRoute => Decided::none(
                "the request reached the inbound listener directly (no port given) and there is no default_cluster, so it gets a 404",
            ),
        },
    };
    Ok(finish(out, decided))
}

/// `out` with what `decided` says: rule, reason, upstream, clusters and
/// their timeouts.
fn finish(mut out: Value, decided: Decided) -> Value {
    out["rule"] = decided.rule.into();
    out["reason"] = decided.reason.into();
    if let Some(route) = &decided.route {
        out["route"] = route_json(route);
    }
    out["upstream"] = decided.upstream;
    out["clusters"] = decided
        .clusters
        .iter()
        .map(|(target, share)| cluster_json(&target.cluster, *share))
        .collect::<Vec<_>>()
        .into();
    // The time to response headers: the route's, else the cluster's.
    let timeouts: Vec<Value> = decided
        .clusters
        .iter()
        .map(|(target, _)| {
            let settings = target.cluster.settings();
            let response = decided
                .route
                .as_ref()
                .and_then(|r| r.timeout)
                .unwrap_or(settings.response_timeout);
            json!({
                "cluster": &*target.cluster.name,
                "connect": humantime::format_duration(settings.connect_timeout).to_string(),
                "response": humantime::format_duration(response).to_string(),
                "from": if decided.route.as_ref().is_some_and(|r| r.timeout.is_some()) { "route" } else { "cluster" },
            })
        })
        .collect();
    out["timeouts"] = timeouts.into();
    out
}

/// An outbound TLS connection asking for `name`, as
/// [`outbound::resolve_tcp`] routes it (without picking from a split).
fn tls_decision(snapshot: &Snapshot, orig_dst: OrigDst, name: &str) -> Decided {
    if let Some(targets) = snapshot.server_name_targets(name, orig_dst.addr) {
        return Decided::targets(
            "server_name",
            format!("a server_name route takes the TLS server name '{name}'"),
            targets,
        );
    }
    let missed = format!("no server_name route takes '{name}'");
    if let Some(targets) = snapshot.destination_targets(orig_dst.addr) {
        let why = format!("{missed}; the routes entry for the destination address does");
        return Decided::targets("destination", why, targets);
    }
    if let Some(targets) = snapshot.port_targets(orig_dst.addr.port()) {
        let why = format!("{missed}; the routes entry for the destination port does");
        return Decided::targets("port", why, targets);
    }
    if let Some(target) = snapshot.outbound_default.as_ref() {
        let why = format!("{missed}; the outbound listener's default_cluster takes it");
        return Decided::cluster("default_cluster", why, target);
    }
    if orig_dst.redirected {
        let why =
            format!("{missed} and there is no default_cluster; it goes to where the app sent it");
        return Decided::direct("original_destination", why, orig_dst.addr);
    }
    Decided::none(&format!(
        "{missed}, there is no default_cluster and the connection reached the listener directly (no port given): closed"
    ))
}

/// What one rule decided, in explain's terms.
struct Decided {
    rule: &'static str,
    reason: String,
    route: Option<Arc<Route>>,
    /// The clusters the request may go to, with their share of it.
    clusters: Vec<(RouteTarget, f64)>,
    upstream: Value,
}

impl Decided {
    fn cluster(rule: &'static str, reason: String, target: &RouteTarget) -> Decided {
        Decided {
            rule,
            reason,
            route: None,
            clusters: vec![(target.clone(), 1.0)],
            upstream: json!({"cluster": &*target.cluster.name}),
        }
    }

    /// A simple route's cluster, or its split with each share.
    fn targets(rule: &'static str, reason: String, targets: &Targets) -> Decided {
        let shares = targets.shares();
        let upstream = match &shares[..] {
            [(one, _)] => json!({"cluster": &*one.cluster.name}),
            split => json!({"split": split
                .iter()
                .map(|(t, share)| json!({"cluster": &*t.cluster.name, "share": share}))
                .collect::<Vec<_>>()}),
        };
        Decided {
            rule,
            reason,
            route: None,
            clusters: shares.into_iter().map(|(t, s)| (t.clone(), s)).collect(),
            upstream,
        }
    }

    fn direct(rule: &'static str, reason: String, addr: SocketAddr) -> Decided {
        Decided {
            rule,
            reason,
            route: None,
            clusters: Vec::new(),
            upstream: json!({"address": addr.to_string()}),
        }
    }

    fn none(reason: &str) -> Decided {
        Decided {
            rule: "none",
            reason: reason.to_string(),
            route: None,
            clusters: Vec::new(),
            upstream: Value::Null,
        }
    }
}

fn outbound_decision(snapshot: &Snapshot, decision: outbound::Decision<'_>) -> Decided {
    match decision {
        outbound::Decision::VirtualHost(route) => {
            let (clusters, upstream) = match &route.action {
                Action::Forward(split) => {
                    let clusters: Vec<(RouteTarget, f64)> =
                        split.items().iter().cloned().zip(split.shares()).collect();
                    let upstream = clusters
                        .iter()
                        .map(|(t, share)| json!({"cluster": &*t.cluster.name, "share": share}))
                        .collect::<Vec<_>>();
                    (clusters, json!({"split": upstream}))
                }
                Action::Direct { status, .. } => (
                    Vec::new(),
                    json!({"direct_response": status.as_u16()}),
                ),
                Action::Redirect { host, path, status } => (
                    Vec::new(),
                    json!({"redirect": {"host": host, "path": path, "status": status.as_u16()}}),
                ),
                // Where iptables found the connection headed (404 when it
                // was not redirected).
                Action::OriginalDestination => (Vec::new(), json!({"original_destination": true})),
            };
            Decided {
                rule: "virtual_host",
                reason: format!("virtual host route '{}' matched", route.name),
                route: Some(route.clone()),
                clusters,
                upstream,
            }
        }
        outbound::Decision::Authority(target) => Decided::cluster(
            "authority",
            format!(
                "no virtual host route matched; the routes entry for authority '{}' did",
                target.authority
            ),
            target,
        ),
        outbound::Decision::Destination(targets) => Decided::targets(
            "destination",
            "no virtual host or authority route matched; the routes entry for the destination address did".into(),
            targets,
        ),
        outbound::Decision::Port(targets) => Decided::targets(
            "port",
            "no virtual host or authority route matched; the routes entry for the destination port did".into(),
            targets,
        ),
        outbound::Decision::Default(target) => Decided::cluster(
            "default_cluster",
            "no route matched; the outbound listener's default_cluster takes it".into(),
            target,
        ),
        outbound::Decision::OriginalDestination(addr) => Decided::direct(
            "original_destination",
            "no route matched and there is no default_cluster; it goes to where the app sent it".into(),
            addr,
        ),
        outbound::Decision::NoRoute => Decided::none(if snapshot.has_routes() || !snapshot.vhosts.is_empty() {
            "no route matched, there is no default_cluster and the request reached the listener directly (no port given): 404"
        } else {
            "no routes are configured, there is no default_cluster and the request reached the listener directly (no port given): 404"
        }),
    }
}

/// The virtual host `host` picks and each of its routes tried in order up
/// to the first that matches, with the condition each earlier one failed.
fn virtual_host_trail(vhosts: &VirtualHosts, host: &str, req: &Request<()>) -> Value {
    let Some((index, how)) = vhosts.host_index(host) else {
        return Value::Null;
    };
    let Some((name, routes)) = vhosts.host(index) else {
        return Value::Null;
    };
    let domain = match how {
        DomainMatch::Exact => format!("exact domain {host}"),
        DomainMatch::Suffix(suffix) => format!("wildcard domain *{suffix}"),
        DomainMatch::Prefix(prefix) => format!("wildcard domain {prefix}*"),
        DomainMatch::Any => "catch-all domain *".to_string(),
    };
    let mut tried = Vec::new();
    for route in routes {
        match route.mismatch(req) {
            Some(why) => tried
                .push(json!({"route": &*route.name, "matched": false, "reason": why.to_string()})),
            None => {
                tried.push(json!({"route": &*route.name, "matched": true}));
                break;
            }
        }
    }
    json!({"name": &**name, "matched_by": domain, "routes": tried})
}

fn route_json(route: &Route) -> Value {
    let (delay, abort) = (route.fault_delay_policy(), route.fault_abort_policy());
    json!({
        "name": &*route.name,
        "timeout": route.timeout.map(|t| humantime::format_duration(t).to_string()),
        "retry": route.retry.as_deref(),
        "fault": {
            "delay": delay.map(|(d, share)| json!({"delay": humantime::format_duration(d).to_string(), "percent": share * 100.0})),
            "abort": abort.map(|(status, share)| json!({"status": status.as_u16(), "percent": share * 100.0})),
        },
        "rate_limit": route.rate_limit_policy().map(|(rate, burst)| json!({"requests_per_second": rate, "burst": burst})),
    })
}

/// A cluster's balancing policy, mTLS identity and endpoints as the
/// balancer sees them now.
fn cluster_json(cluster: &ClusterState, share: f64) -> Value {
    let settings = cluster.settings();
    json!({
        "name": &*cluster.name,
        "share": share,
        "load_balancer": policy_name(&settings.load_balancer),
        "tls_identity": settings.tls_identity.as_deref(),
        "in_flight": cluster.active.load(std::sync::atomic::Ordering::Relaxed),
        "endpoints": endpoints_json(cluster),
    })
}

/// A cluster's endpoints as its balancer sees them now: weight, requests
/// in flight, Peak-EWMA latency (for a Peak-EWMA cluster), ejection and
/// the identity each must prove (also the admin page's, `/stats.json`).
pub(crate) fn endpoints_json(cluster: &ClusterState) -> Vec<Value> {
    let balancer = cluster.balancer();
    let decay_ns = match &cluster.settings().load_balancer {
        LoadBalancer::PeakEwma { decay, .. } => Some(decay.as_nanos() as f64),
        _ => None,
    };
    balancer
        .endpoints()
        .iter()
        .zip(balancer.weights())
        .map(|(e, weight)| {
            json!({
                "address": e.addr.to_string(),
                "weight": weight,
                "in_flight": e.inflight(),
                "ewma_ms": decay_ns.and_then(|d| e.ewma_ns(d)).map(|ns| ns / 1e6),
                "ejected": e.is_ejected(),
                "tls_identity": e.mesh.as_deref(),
            })
        })
        .collect()
}

fn policy_name(lb: &LoadBalancer) -> &'static str {
    match lb {
        LoadBalancer::RoundRobin => "round_robin",
        LoadBalancer::LeastRequest => "least_request",
        LoadBalancer::Random => "random",
        LoadBalancer::PeakEwma { .. } => "peak_ewma",
        LoadBalancer::RingHash { .. } => "ring_hash",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_config::Config;

    fn snapshot(yaml: &str) -> Snapshot {
        Snapshot::new(Config::from_yaml(yaml).expect("valid config"))
    }

    fn ask(snapshot: &Snapshot, query: &str) -> Value {
        let query = Query::from_query_string(query).expect("a valid query");
        explain(snapshot, &query).expect("an answer")
    }

    const CLUSTERS: &str = "clusters:\n  - {name: web, endpoints: [{address: '127.0.0.1:1'}]}\n  - {name: db, endpoints: [{address: '127.0.0.1:2', weight: 3}]}\n";

    #[test]
    fn tls_by_server_name_then_the_ports_route_and_splits_with_their_shares() {
        let routes = format!(
            "{CLUSTERS}routes:\n  - {{server_name: '*.example.com', port: 443, cluster: web}}\n  - {{port: 443, split: [{{cluster: db, weight: 3}}, {{cluster: web, weight: 1}}]}}\n"
        );
        let snap = snapshot(&routes);
        let answer = ask(&snap, "server_name=API.Example.com&port=443");
        assert_eq!(answer["rule"], "server_name", "{answer:#}");
        assert_eq!(answer["upstream"]["cluster"], "web");
        assert_eq!(answer["request"]["tls_server_name"], "API.Example.com");
        let answer = ask(&snap, "server_name=example.com&port=443");
        assert_eq!(answer["rule"], "port", "{answer:#}");
        assert!(answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no server_name route takes 'example.com'")));
        assert_eq!(answer["upstream"]["split"][0]["cluster"], "db");
        assert_eq!(answer["upstream"]["split"][0]["share"], 0.75);
        assert_eq!(answer["clusters"].as_array().map(Vec::len), Some(2));
        // A plain request to the port sees the same split, and explaining
        // picks nothing: the data path's picks go on as if it never ran.
        let answer = ask(&snap, "authority=other&port=443");
        assert_eq!(answer["upstream"]["split"][1]["share"], 0.25);
        let picks = |snap: &Snapshot| -> Vec<String> {
            let targets = snap.port_targets(443).expect("the port's split");
            (0..4)
                .map(|_| targets.pick().cluster.name.to_string())
                .collect()
        };
        assert_eq!(picks(&snap), picks(&snapshot(&routes)));
        assert_eq!(picks(&snapshot(&routes)), ["db", "db", "web", "db"]);
    }

    #[test]
    fn simple_routes_then_default_then_original_destination() {
        let routes = format!(
            "{CLUSTERS}routes:\n  - {{authority: web.svc, cluster: web}}\n  - {{port: 5432, cluster: db}}\n"
        );
        let snap = snapshot(&routes);
        let answer = ask(&snap, "authority=WEB.svc:80");
        assert_eq!(answer["rule"], "authority");
        assert_eq!(answer["upstream"]["cluster"], "web");
        let answer = ask(&snap, "authority=other&port=5432");
        assert_eq!(answer["rule"], "port");
        assert_eq!(answer["clusters"][0]["endpoints"][0]["weight"], 3);
        assert_eq!(
            ask(&snap, "authority=other&port=80")["rule"],
            "original_destination"
        );
        assert_eq!(ask(&snap, "authority=other")["rule"], "none");

        let with_default = format!("listeners:\n  outbound: {{default_cluster: web}}\n{CLUSTERS}");
        let snap = snapshot(&with_default);
        let answer = ask(&snap, "authority=anything&port=80");
        assert_eq!(answer["rule"], "default_cluster");
        assert_eq!(answer["upstream"]["cluster"], "web");
    }

    #[test]
    fn inbound_goes_to_the_app_or_the_default_cluster() {
        let snap = snapshot(CLUSTERS);
        let answer = ask(&snap, "direction=inbound&authority=me&port=8080");
        assert_eq!(answer["rule"], "application");
        assert_eq!(answer["upstream"]["address"], "127.0.0.1:8080");
        assert_eq!(ask(&snap, "direction=inbound&authority=me")["rule"], "none");

        let snap = snapshot(&format!(
            "listeners:\n  inbound: {{default_cluster: db}}\n{CLUSTERS}"
        ));
        let answer = ask(&snap, "direction=inbound&authority=me&port=8080");
        assert_eq!(answer["rule"], "default_cluster");
        assert_eq!(answer["upstream"]["cluster"], "db");
    }

    #[test]
    fn a_meshed_cluster_names_the_identity_its_endpoints_must_prove() {
        let snap = snapshot(
            "identity: {certificate: /c.pem, private_key: /k.pem, trust_bundle: /ca.pem}\nclusters:\n  - name: web\n    tls: {identity: spiffe://td/ns/prod/sa/web}\n    endpoints: [{address: '127.0.0.1:1'}]\nroutes:\n  - {authority: web, cluster: web}\n",
        );
        let answer = ask(&snap, "authority=web");
        let cluster = &answer["clusters"][0];
        assert_eq!(cluster["tls_identity"], "spiffe://td/ns/prod/sa/web");
        assert_eq!(
            cluster["endpoints"][0]["tls_identity"],
            "spiffe://td/ns/prod/sa/web"
        );
    }

    #[test]
    fn a_request_refused_before_routing_says_so() {
        let snap = snapshot(CLUSTERS);
        let long = "a".repeat(9000);
        let answer = ask(&snap, &format!("authority=web&path=/{long}"));
        assert_eq!(answer["rule"], "rejected", "{answer:#}");
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, named) in [
            ("direction=up", "direction 'up'"),
            ("port=http", "port 'http'"),
            ("header=novalue", "header 'novalue'"),
            ("colour=red", "unknown parameter 'colour'"),
        ] {
            let error = Query::from_query_string(query).expect_err(query);
            assert!(error.contains(named), "{query}: {error}");
        }
        let inbound_tls =
            Query::from_query_string("direction=inbound&server_name=a.example").expect("parses");
        let error = explain(&snapshot(""), &inbound_tls).expect_err("outbound only");
        assert!(error.contains("outbound TLS connections only"), "{error}");
    }
}
