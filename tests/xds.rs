//! The xDS client end to end: a real ADS control plane (tonic, in
//! `support/control_plane.rs`), the real proxy binary and real upstreams.
//! Each scenario reads as one rule of the protocol or of the translation,
//! and runs twice: state of the world (`sotw::`) and delta (`delta::`).

#[path = "support/control_plane.rs"]
mod control_plane;
mod support;
#[path = "support/xds_resources.rs"]
mod xds_resources;

use bytes::Bytes;
use control_plane::{ControlPlane, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::RouteMatch;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{http_get, metric_sum, Proxy, EPHEMERAL_LISTENERS};
use xds_resources::*;

// ---- the bootstrap ----

fn bootstrap(cp: &ControlPlane, mode: &str) -> String {
    format!("{EPHEMERAL_LISTENERS}xds:\n  address: {}\n  node: {{id: test-node, cluster: test}}\n  mode: {mode}\n  initial_fetch_timeout: 5s\n", cp.addr)
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

async fn traffic_follows_an_eds_change_with_zero_failed_requests(mode: &str) {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp, mode));
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

async fn a_weighted_split_changed_by_rds_lands_within_two_percent(mode: &str) {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    cp.update(|s| {
        web(s, &[a.addr]);
        put(s, CLUSTER, "canary", eds_cluster("canary"));
        put(s, ENDPOINT, "canary", assignment("canary", &[b.addr]));
    });
    let proxy = Proxy::start(&bootstrap(&cp, mode));
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

async fn a_cluster_added_then_removed(mode: &str) {
    let (a, extra) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp, mode));
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

async fn an_invalid_resource_is_nacked_and_the_last_good_config_keeps_serving(mode: &str) {
    let a = Upstream::start().await;
    let cp = ControlPlane::start().await;
    let good = cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp, mode));
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
            r.type_url == ROUTE && r.error.is_some()
        })
        .await;
    let detail = nack.error.expect("error_detail");
    assert!(
        detail.contains("RouteConfiguration 'web-routes'"),
        "{detail}"
    );
    assert!(
        detail.contains("virtual_hosts[0].routes[0].match.path.regex"),
        "{detail}"
    );
    if mode == "sotw" {
        assert_eq!(
            nack.version,
            good.to_string(),
            "a NACK carries the last good version"
        );
    }
    assert!(!nack.nonce.is_empty(), "a NACK names the response's nonce");
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
            r.type_url == LISTENER && r.error.is_some()
        })
        .await;
    let detail = nack.error.expect("error_detail");
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

async fn a_control_plane_restart_keeps_traffic_flowing_and_resubscribes(mode: &str) {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let mut cp = ControlPlane::start().await;
    let version = cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp, mode));
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
    // (state of the world: the type's version; delta: each resource's.)
    let knows = |r: &control_plane::Seen| match mode {
        "sotw" => r.version == version.to_string(),
        _ => r.initial.contains_key("web"),
    };
    let resumed = cp
        .wait_for("a resubscription to endpoints", |r| {
            r.type_url == ENDPOINT && r.nonce.is_empty() && r.names == ["web"] && knows(r)
        })
        .await;
    assert!(resumed.node_id.is_none() || resumed.node_id.as_deref() == Some("test-node"));
    let first = &cp.requests()[seen];
    assert_eq!(
        first.node_id.as_deref(),
        Some("test-node"),
        "the new stream's first request names the node"
    );
    let resumed_cds = cp.requests()[seen..]
        .iter()
        .find(|r| r.type_url == CLUSTER)
        .cloned()
        .expect("the new stream asks for clusters");
    assert!(
        knows(&resumed_cds),
        "the cluster version is resumed: {resumed_cds:?}"
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

async fn config_dump_lists_resources_and_stays_a_config_file(mode: &str) {
    let a = Upstream::start().await;
    let cp = ControlPlane::start().await;
    let version = cp.update(|s| web(s, &[a.addr]));
    let proxy = Proxy::start(&bootstrap(&cp, mode));
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
        // Delta versions each resource; state of the world the response.
        if mode == "sotw" {
            assert_eq!(r["version"], version.to_string(), "{dump}");
        } else {
            assert!(
                r["version"].as_str().is_some_and(|v| !v.is_empty()),
                "{dump}"
            );
        }
    }
    assert_eq!(json["xds"]["node"]["id"], "test-node", "{dump}");
    // A saved dump is a config file.
    let config = strait_config::Config::from_yaml(&dump).unwrap_or_else(|e| panic!("{e}\n{dump}"));
    assert!(config.xds.is_some());
}

async fn a_cluster_warms_until_its_endpoints_arrive(mode: &str) {
    let a = Upstream::start().await;
    let cp = ControlPlane::start().await;
    let version = cp.update(|s| {
        web(s, &[a.addr]);
        remove(s, ENDPOINT, "web");
    });
    let proxy = Proxy::start(&bootstrap(&cp, mode));
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

async fn a_file_reload_keeps_the_control_planes_resources(mode: &str) {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    let version = cp.update(|s| web(s, &[b.addr]));
    let file = |domain: &str| {
        format!(
            "{}clusters: [{{name: local, endpoints: [{{address: {}}}]}}]\nvirtual_hosts: [{{name: file, domains: [{domain}], routes: [{{cluster: local}}]}}]\n",
            bootstrap(&cp, mode),
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

async fn eds_priorities_fail_over_when_no_endpoint_of_the_first_serves(mode: &str) {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
    let (primary, standby) = (Upstream::start().await, Upstream::start().await);
    let cp = ControlPlane::start().await;
    // Priority 0: `primary` in `health`; priority 1: `standby`.
    let endpoints = |health: HealthStatus| {
        let mut first = lb_endpoint(primary.addr);
        first.health_status = health as i32;
        let mut cla = assignment_of("web", &[]);
        cla.endpoints = vec![
            LocalityLbEndpoints {
                priority: 0,
                lb_endpoints: vec![first],
                ..Default::default()
            },
            LocalityLbEndpoints {
                priority: 1,
                lb_endpoints: vec![lb_endpoint(standby.addr)],
                ..Default::default()
            },
        ];
        any(ENDPOINT, &cla)
    };
    let version = cp.update(|s| {
        web(s, &[]);
        put(s, ENDPOINT, "web", endpoints(HealthStatus::Healthy));
    });
    let proxy = Proxy::start(&bootstrap(&cp, mode));
    cp.acked(ENDPOINT, version).await;
    let mut client = Client::connect(&proxy).await;
    until(&mut client, "web", "the primary", |s| s == StatusCode::OK).await;
    for _ in 0..20 {
        assert_eq!(client.get("web").await.0, StatusCode::OK);
    }
    assert_eq!(
        requests(&standby),
        0,
        "priority 1 idles while priority 0 serves"
    );

    let version = cp.update(|s| put(s, ENDPOINT, "web", endpoints(HealthStatus::Unhealthy)));
    cp.acked(ENDPOINT, version).await;
    let before = requests(&primary);
    for _ in 0..20 {
        assert_eq!(client.get("web").await.0, StatusCode::OK);
    }
    assert_eq!(requests(&standby), 20, "priority 1 took over");
    assert_eq!(requests(&primary), before);

    let version = cp.update(|s| put(s, ENDPOINT, "web", endpoints(HealthStatus::Unknown)));
    cp.acked(ENDPOINT, version).await;
    for _ in 0..20 {
        assert_eq!(client.get("web").await.0, StatusCode::OK);
    }
    assert_eq!(requests(&standby), 20, "back to priority 0 once it serves");
}

/// `/ready` until it answers `status`, or panic at the deadline.
async fn ready_until(proxy: &Proxy, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, body) = http_get(proxy.admin, "/ready");
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready never {status}: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready_waits_for_the_initial_configuration(mode: &str) {
    let app = Upstream::start().await;
    let cp = ControlPlane::start().await;
    // A listener and an EDS cluster: their routes and endpoints not yet.
    let version = cp.update(|s| {
        put(
            s,
            LISTENER,
            "outbound",
            listener("outbound", "web-routes", vec![router()]),
        );
        put(s, CLUSTER, "web", eds_cluster("web"));
    });
    // Long enough that the timeout never decides this test.
    let proxy = Proxy::start(
        &bootstrap(&cp, mode).replace("initial_fetch_timeout: 5s", "initial_fetch_timeout: 60s"),
    );
    cp.acked(LISTENER, version).await;
    cp.acked(CLUSTER, version).await;
    let (status, body) = http_get(proxy.admin, "/ready");
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "not ready: waiting for the initial xDS configuration\n"
        )
    );

    let version = cp.update(|s| {
        put(
            s,
            ROUTE,
            "web-routes",
            routes("web-routes", &[("web", to("web"))]),
        )
    });
    cp.acked(ROUTE, version).await;
    let (status, body) = http_get(proxy.admin, "/ready");
    assert_eq!(
        status, 503,
        "the cluster still waits for its endpoints: {body}"
    );

    cp.update(|s| put(s, ENDPOINT, "web", assignment("web", &[app.addr])));
    assert_eq!(ready_until(&proxy, 200).await, "ready\n");
    // Latched: a later change does not make the proxy unready.
    let version = cp.update(|s| remove(s, ENDPOINT, "web"));
    cp.acked(ENDPOINT, version).await;
    assert_eq!(http_get(proxy.admin, "/ready").0, 200);
}

async fn ready_is_honest_when_the_control_plane_is_down(mode: &str) {
    let down = support::free_addr();
    let proxy = Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}xds:\n  address: {down}\n  node: {{id: test-node}}\n  mode: {mode}\n  initial_fetch_timeout: 2s\n"
    ));
    let started = Instant::now();
    let (status, body) = http_get(proxy.admin, "/ready");
    assert_eq!(status, 503, "{body}");
    let body = ready_until(&proxy, 200).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "ready before the timeout"
    );
    assert!(
        body.contains("incomplete after initial_fetch_timeout"),
        "{body}"
    );
    assert_eq!(metric_sum(&proxy.metrics(), "xds_connected", &[]), 0.0);
}

/// Every scenario runs over both protocol variants.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod sotw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("sotw").await
                }
            )*
        }
        mod delta {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("delta").await
                }
            )*
        }
    };
}

in_both_modes!(
    traffic_follows_an_eds_change_with_zero_failed_requests,
    a_weighted_split_changed_by_rds_lands_within_two_percent,
    a_cluster_added_then_removed,
    an_invalid_resource_is_nacked_and_the_last_good_config_keeps_serving,
    a_control_plane_restart_keeps_traffic_flowing_and_resubscribes,
    config_dump_lists_resources_and_stays_a_config_file,
    a_cluster_warms_until_its_endpoints_arrive,
    a_file_reload_keeps_the_control_planes_resources,
    ready_waits_for_the_initial_configuration,
    ready_is_honest_when_the_control_plane_is_down,
    eds_priorities_fail_over_when_no_endpoint_of_the_first_serves,
);
