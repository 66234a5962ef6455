//! The xDS client end to end: a real ADS control plane (tonic, in this
//! file's support module), the real proxy binary and real upstreams. Each
//! test reads as one rule of the protocol or of the translation.

#[path = "support/control_plane.rs"]
mod control_plane;
mod support;

use bytes::Bytes;
use control_plane::{ControlPlane, Snapshot, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_filter, HttpConnectionManager, HttpFilter, Rds};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{http_get, metric_sum, Proxy, EPHEMERAL_LISTENERS};

// ---- resources, built as a control plane would ----

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

fn eds_cluster(name: &str) -> Any {
    any(
        CLUSTER,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig::default()),
            connect_timeout: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            lb_policy: cluster::LbPolicy::RoundRobin as i32,
            ..Default::default()
        },
    )
}

fn lb_endpoint(addr: SocketAddr) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: addr.ip().to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                        addr.port(),
                    ))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn static_cluster(name: &str, addr: SocketAddr) -> Any {
    any(
        CLUSTER,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(assignment_of(name, &[addr])),
            ..Default::default()
        },
    )
}

fn assignment_of(name: &str, addrs: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: addrs.iter().map(|a| lb_endpoint(*a)).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn assignment(name: &str, addrs: &[SocketAddr]) -> Any {
    any(ENDPOINT, &assignment_of(name, addrs))
}

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn http_filter(name: &str, type_url: &str) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: type_url.into(),
            value: Vec::new(),
        })),
        ..Default::default()
    }
}

fn router() -> HttpFilter {
    http_filter(
        "envoy.filters.http.router",
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    )
}

fn listener(name: &str, rds: &str, filters: Vec<HttpFilter>) -> Any {
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            route_config_name: rds.into(),
            config_source: None,
        })),
        http_filters: filters,
        ..Default::default()
    };
    any(
        LISTENER,
        &Listener {
            name: name.into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(HCM, &hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

fn prefix_route(action: ClusterSpecifier) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(action),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn routes(name: &str, hosts: &[(&str, Route)]) -> Any {
    any(
        ROUTE,
        &RouteConfiguration {
            name: name.into(),
            virtual_hosts: hosts
                .iter()
                .map(|(domain, route)| VirtualHost {
                    name: domain.to_string(),
                    domains: vec![domain.to_string()],
                    routes: vec![route.clone()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    )
}

fn to(cluster: &str) -> Route {
    prefix_route(ClusterSpecifier::Cluster(cluster.into()))
}

fn split(parts: &[(&str, u32)]) -> Route {
    prefix_route(ClusterSpecifier::WeightedClusters(WeightedCluster {
        clusters: parts
            .iter()
            .map(|(c, w)| ClusterWeight {
                name: c.to_string(),
                weight: Some(UInt32Value { value: *w }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }))
}

fn put(s: &mut Snapshot, type_url: &'static str, name: &str, resource: Any) {
    s.resources
        .entry(type_url)
        .or_default()
        .insert(name.to_string(), resource);
}

fn remove(s: &mut Snapshot, type_url: &'static str, name: &str) {
    s.resources.entry(type_url).or_default().remove(name);
}

/// The usual start: listener → routes "web-routes" → host "web" → EDS cluster "web".
fn web(s: &mut Snapshot, endpoints: &[SocketAddr]) {
    put(
        s,
        LISTENER,
        "outbound",
        listener("outbound", "web-routes", vec![router()]),
    );
    put(
        s,
        ROUTE,
        "web-routes",
        routes("web-routes", &[("web", to("web"))]),
    );
    put(s, CLUSTER, "web", eds_cluster("web"));
    put(s, ENDPOINT, "web", assignment("web", endpoints));
}

fn bootstrap(cp: &ControlPlane) -> String {
    format!("{EPHEMERAL_LISTENERS}xds:\n  address: {}\n  node: {{id: test-node, cluster: test}}\n  initial_fetch_timeout: 5s\n", cp.addr)
}

// ---- traffic ----

struct Client(http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn connect(proxy: &Proxy) -> Client {
        let stream = tokio::net::TcpStream::connect(proxy.outbound)
            .await
            .expect("connect");
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Client(sender)
    }

    /// GET / with this Host: the status and body.
    async fn get(&mut self, host: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .uri("/")
            .header("host", host)
            .body(Full::default())
            .expect("request");
        self.0.ready().await.expect("ready");
        let response = self.0.send_request(req).await.expect("response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Send requests until `done` holds (checked after each), or panic.
async fn until(
    client: &mut Client,
    host: &str,
    what: &str,
    mut done: impl FnMut(StatusCode) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = client.get(host).await;
        if done(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 15s (last status {status})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Requests in a loop on their own connection, counting failures, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    async fn start(proxy: &Proxy, host: &'static str) -> Load {
        let mut client = Client::connect(proxy).await;
        let (stop, sent, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let (status, _) = client.get(host).await;
                n.fetch_add(1, Ordering::SeqCst);
                if status != StatusCode::OK {
                    f.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Load {
            stop,
            sent,
            failed,
            task,
        }
    }

    /// Stop; (sent, failed).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task");
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn requests(u: &Upstream) -> usize {
    u.requests.load(Ordering::SeqCst)
}

/// Wait until `u` has served more than `before`, bounded.
async fn served(u: &Upstream, before: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while requests(u) <= before {
        assert!(
            Instant::now() < deadline,
            "{what}: upstream saw no new request within 15s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_an_eds_change_with_zero_failed_requests() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp));
    let mut client = Client::connect(&proxy).await;
    until(&mut client, "web", "the xDS route to a", |s| {
        s == StatusCode::OK
    })
    .await;
    assert!(requests(&a) > 0);

    let load = Load::start(&proxy, "web").await;
    served(&a, requests(&a), "load reaches a").await;
    let version = cp.update(|s| put(s, ENDPOINT, "web", assignment("web", &[b.addr])));
    cp.acked(ENDPOINT, version).await;
    served(&b, 0, "traffic moves to b").await;
    // Once b serves, a gets nothing new.
    let a_after = requests(&a);
    let b_before = requests(&b);
    served(&b, b_before + 20, "b keeps serving").await;
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the EDS change"
    );
    assert_eq!(
        requests(&a),
        a_after,
        "a still got traffic after the change"
    );

    let metrics = proxy.metrics();
    assert_eq!(metric_sum(&metrics, "xds_connected", &[]), 1.0, "{metrics}");
    assert!(
        metric_sum(
            &metrics,
            "xds_updates_total",
            &["type=\"ClusterLoadAssignment\"", "result=\"ack\""]
        ) >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "xds_updates_total", &["result=\"nack\""]),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_changed_by_rds_lands_within_two_percent() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    cp.update(|s| {
        web(s, &[a.addr]);
        put(s, CLUSTER, "canary", eds_cluster("canary"));
        put(s, ENDPOINT, "canary", assignment("canary", &[b.addr]));
    });
    let proxy = Proxy::start(&bootstrap(&cp));
    let mut client = Client::connect(&proxy).await;
    until(&mut client, "web", "the first route", |s| {
        s == StatusCode::OK
    })
    .await;

    let version = cp.update(|s| {
        put(
            s,
            ROUTE,
            "web-routes",
            routes(
                "web-routes",
                &[("web", split(&[("web", 80), ("canary", 20)]))],
            ),
        )
    });
    cp.acked(ROUTE, version).await;
    let (a0, b0) = (requests(&a), requests(&b));
    const N: usize = 1000;
    for _ in 0..N {
        let (status, _) = client.get("web").await;
        assert_eq!(status, StatusCode::OK);
    }
    let to_b = (requests(&b) - b0) as f64 / N as f64;
    let to_a = (requests(&a) - a0) as f64 / N as f64;
    assert!((to_b - 0.2).abs() <= 0.02, "canary got {to_b}, web {to_a}");
    assert!((to_a - 0.8).abs() <= 0.02, "web got {to_a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_added_then_removed() {
    let (a, extra) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp));
    let mut client = Client::connect(&proxy).await;
    until(&mut client, "web", "the first route", |s| {
        s == StatusCode::OK
    })
    .await;
    let (status, _) = client.get("extra").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no route for extra yet");

    // A STATIC cluster (endpoints inline) and a host routing to it.
    let version = cp.update(|s| {
        put(s, CLUSTER, "extra", static_cluster("extra", extra.addr));
        put(
            s,
            ROUTE,
            "web-routes",
            routes("web-routes", &[("web", to("web")), ("extra", to("extra"))]),
        );
    });
    cp.acked(ROUTE, version).await;
    until(&mut client, "extra", "the added cluster", |s| {
        s == StatusCode::OK
    })
    .await;
    assert!(requests(&extra) > 0);
    let (_, dump) = http_get(proxy.admin, "/config_dump");
    assert!(
        dump.contains("\"extra\""),
        "the dump lists the added cluster:\n{dump}"
    );

    let version = cp.update(|s| {
        remove(s, CLUSTER, "extra");
        put(
            s,
            ROUTE,
            "web-routes",
            routes("web-routes", &[("web", to("web"))]),
        );
    });
    cp.acked(CLUSTER, version).await;
    cp.acked(ROUTE, version).await;
    until(&mut client, "extra", "the removed route", |s| {
        s == StatusCode::NOT_FOUND
    })
    .await;
    let (status, _) = client.get("web").await;
    assert_eq!(status, StatusCode::OK, "web is untouched");
    let (_, dump) = http_get(proxy.admin, "/config_dump");
    assert!(
        !dump.contains("\"extra\""),
        "the dump no longer lists it:\n{dump}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resource_is_nacked_and_the_last_good_config_keeps_serving() {
    let a = Upstream::start().await;
    let cp = ControlPlane::start().await;
    let good = cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp));
    let mut client = Client::connect(&proxy).await;
    until(&mut client, "web", "the first route", |s| {
        s == StatusCode::OK
    })
    .await;
    let load = Load::start(&proxy, "web").await;

    // A route whose regex does not compile.
    let mut bad = to("web");
    bad.r#match = Some(RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/(unclosed".into(),
            ..Default::default()
        })),
        ..Default::default()
    });
    let bad_version = cp.update(|s| {
        put(
            s,
            ROUTE,
            "web-routes",
            routes("web-routes", &[("web", bad)]),
        )
    });
    let nack = cp
        .wait_for("a NACK of the route", |r| {
            r.type_url == ROUTE && r.error_detail.is_some()
        })
        .await;
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(
        detail.contains("RouteConfiguration 'web-routes'"),
        "{detail}"
    );
    assert!(
        detail.contains("virtual_hosts[0].routes[0].match.path.regex"),
        "{detail}"
    );
    assert_eq!(
        nack.version_info,
        good.to_string(),
        "a NACK carries the last good version"
    );
    assert!(!nack.response_nonce.is_empty());
    let _ = bad_version;

    // An HTTP filter strait does not know, not marked optional.
    let ext_authz = http_filter(
        "envoy.filters.http.ext_authz",
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    );
    cp.update(|s| {
        put(
            s,
            LISTENER,
            "outbound",
            listener("outbound", "web-routes", vec![ext_authz.clone(), router()]),
        )
    });
    let nack = cp
        .wait_for("a NACK of the listener", |r| {
            r.type_url == LISTENER && r.error_detail.is_some()
        })
        .await;
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(
        detail.contains("Listener 'outbound'") && detail.contains("envoy.filters.http.ext_authz"),
        "{detail}"
    );
    assert!(detail.contains("http_filters[0]"), "{detail}");

    // The same filter marked optional is skipped, and accepted.
    let optional = HttpFilter {
        is_optional: true,
        ..ext_authz
    };
    let version = cp.update(|s| {
        put(
            s,
            LISTENER,
            "outbound",
            listener("outbound", "web-routes", vec![optional, router()]),
        );
        put(
            s,
            ROUTE,
            "web-routes",
            routes("web-routes", &[("web", to("web"))]),
        );
    });
    cp.acked(LISTENER, version).await;
    cp.acked(ROUTE, version).await;

    let (sent, failed) = load.finish().await;
    assert!(sent > 0);
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed while updates were refused"
    );
    let metrics = proxy.metrics();
    assert!(
        metric_sum(
            &metrics,
            "xds_updates_total",
            &["type=\"RouteConfiguration\"", "result=\"nack\""]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(
            &metrics,
            "xds_updates_total",
            &["type=\"Listener\"", "result=\"nack\""]
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        proxy.log().contains("update refused (NACK)"),
        "one log line per refused update"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_keeps_traffic_flowing_and_resubscribes() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let mut cp = ControlPlane::start().await;
    let version = cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp));
    let mut client = Client::connect(&proxy).await;
    until(&mut client, "web", "the first route", |s| {
        s == StatusCode::OK
    })
    .await;
    cp.acked(ENDPOINT, version).await;

    let load = Load::start(&proxy, "web").await;
    cp.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric_sum(&proxy.metrics(), "xds_connected", &[]) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the proxy never noticed the control plane went away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = requests(&a);
    served(&a, before + 50, "traffic while the control plane is down").await;

    let seen = cp.requests().len();
    cp.restart().await;
    // The new stream resumes: known versions and the endpoint names.
    let resumed = cp
        .wait_for("a resubscription to endpoints", |r| {
            r.type_url == ENDPOINT
                && r.response_nonce.is_empty()
                && r.resource_names == ["web"]
                && r.version_info == version.to_string()
        })
        .await;
    assert!(resumed.node.is_none() || resumed.node.as_ref().is_some_and(|n| n.id == "test-node"));
    let resumed_cds = cp.requests()[seen..]
        .iter()
        .find(|r| r.type_url == CLUSTER)
        .cloned()
        .expect("the new stream asks for clusters");
    assert_eq!(
        resumed_cds.version_info,
        version.to_string(),
        "the cluster version is resumed"
    );
    assert!(cp.streams() >= 2);

    // And it is live: an endpoint change is followed.
    let next = cp.update(|s| put(s, ENDPOINT, "web", assignment("web", &[b.addr])));
    cp.acked(ENDPOINT, next).await;
    served(&b, 0, "traffic follows an update after the reconnect").await;
    let (sent, failed) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the restart"
    );
    let metrics = proxy.metrics();
    assert!(
        metric_sum(&metrics, "xds_stream_restarts_total", &[]) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_lists_resources_and_stays_a_config_file() {
    let a = Upstream::start().await;
    let cp = ControlPlane::start().await;
    let version = cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp));
    cp.acked(ROUTE, version).await;
    let (status, dump) = http_get(proxy.admin, "/config_dump");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&dump).expect("JSON");
    let resources = json["xds_resources"].as_array().expect("xds_resources");
    for (kind, name) in [
        ("Cluster", "web"),
        ("ClusterLoadAssignment", "web"),
        ("Listener", "outbound"),
        ("RouteConfiguration", "web-routes"),
    ] {
        let r = resources
            .iter()
            .find(|r| r["type"] == kind && r["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} missing from\n{dump}"));
        assert_eq!(r["state"], "acked", "{dump}");
        assert_eq!(r["version"], version.to_string(), "{dump}");
    }
    assert_eq!(json["xds"]["node"]["id"], "test-node", "{dump}");
    // A saved dump is a config file.
    let config = strait_config::Config::from_yaml(&dump).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    assert!(config.xds.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_warms_until_its_endpoints_arrive() {
    let a = Upstream::start().await;
    let cp = ControlPlane::start().await;
    let version = cp.update(|s| {
        web(s, &[a.addr]);
        remove(s, ENDPOINT, "web");
    });
    let proxy = Proxy::start(&bootstrap(&cp));
    cp.acked(ROUTE, version).await;
    let mut client = Client::connect(&proxy).await;
    let (status, body) = client.get("web").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("warming"), "{body}");
    let (_, dump) = http_get(proxy.admin, "/config_dump");
    assert!(dump.contains("\"warming\""), "{dump}");

    cp.update(|s| put(s, ENDPOINT, "web", assignment("web", &[a.addr])));
    until(
        &mut client,
        "web",
        "the cluster once its endpoints came",
        |s| s == StatusCode::OK,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reload_keeps_the_control_planes_resources() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    let version = cp.update(|s| web(s, &[b.addr]));
    let file = |domain: &str| {
        format!(
            "{}clusters: [{{name: local, endpoints: [{{address: {}}}]}}]\nvirtual_hosts: [{{name: file, domains: [{domain}], routes: [{{cluster: local}}]}}]\n",
            bootstrap(&cp),
            a.addr
        )
    };
    let proxy = Proxy::start(&file("one"));
    cp.acked(ROUTE, version).await;
    let mut client = Client::connect(&proxy).await;
    until(&mut client, "web", "the xDS host", |s| s == StatusCode::OK).await;
    assert_eq!(client.get("one").await.0, StatusCode::OK);

    std::fs::write(proxy.config_path(), file("two")).expect("rewrite config");
    proxy.signal("HUP");
    until(&mut client, "two", "the reloaded file's host", |s| {
        s == StatusCode::OK
    })
    .await;
    assert_eq!(client.get("one").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        client.get("web").await.0,
        StatusCode::OK,
        "the xDS host survives the reload"
    );
    assert!(requests(&b) > 0);
}
