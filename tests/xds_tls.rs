//! TLS from the control plane, end to end: two real proxies whose workload
//! identity and trust bundle come as SDS secrets over ADS (each from its
//! own control plane, as two pods would get theirs), a cluster whose
//! `UpstreamTlsContext` makes the client proxy originate mTLS to the
//! server proxy, secret rotation under load, a bad secret NACKed with its
//! field while the old one keeps serving, and SAN matchers.

#[path = "support/control_plane.rs"]
mod control_plane;
mod support;
#[path = "support/xds_resources.rs"]
mod xds_resources;
#[path = "support/xds_tls.rs"]
mod xds_tls_support;

use bytes::Bytes;
use control_plane::{ControlPlane, CLUSTER, SECRET};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{metric_sum, Proxy, TempDir, EPHEMERAL_LISTENERS};
use xds_resources::*;
use xds_tls_support::*;

const CLIENT_ID: &str = "spiffe://strait.test/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://strait.test/ns/default/sa/server";

// ---- the two proxies ----

fn bootstrap(cp: &ControlPlane, mode: &str, node: &str) -> String {
    format!(
        "xds:\n  address: {}\n  node: {{id: {node}, cluster: test}}\n  mode: {mode}\n  initial_fetch_timeout: 5s\nidentity:\n  sds: {{certificate: {CERT}, trust_bundle: {TRUST}}}\n",
        cp.addr
    )
}

/// The server side: inbound mTLS with its identity from `cp`, forwarding to `app`.
fn server_proxy(cp: &ControlPlane, mode: &str, app: SocketAddr) -> Proxy {
    let listeners = EPHEMERAL_LISTENERS.replace(
        "inbound: {address: 127.0.0.1, port: 0}",
        "inbound: {address: 127.0.0.1, port: 0, default_cluster: app}",
    );
    Proxy::start(&format!(
        "{listeners}{}clusters:\n  - name: app\n    endpoints: [{{address: '{app}'}}]\n",
        bootstrap(cp, mode, "server")
    ))
}

/// The client side: everything but its listeners from `cp`.
fn client_proxy(cp: &ControlPlane, mode: &str) -> Proxy {
    Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}{}",
        bootstrap(cp, mode, "client")
    ))
}

/// Serve `leaf` and the CA as the two identity secrets.
fn serve_identity(cp: &ControlPlane, pki: &Pki, leaf: &Leaf) -> u64 {
    cp.update(|s| {
        put(s, SECRET, CERT, certificate_secret(CERT, leaf));
        put(s, SECRET, TRUST, trust_secret(TRUST, &pki.ca_pem));
    })
}

/// The client's routes: host `web` to the TLS cluster `web` at `server`.
fn serve_routes(cp: &ControlPlane, server: SocketAddr, san: MatchPattern) -> u64 {
    cp.update(|s| {
        put(
            s,
            control_plane::LISTENER,
            "outbound",
            listener("outbound", "web-routes", vec![router()]),
        );
        put(
            s,
            control_plane::ROUTE,
            "web-routes",
            routes("web-routes", &[("web", to("web"))]),
        );
        put(s, CLUSTER, "web", tls_cluster("web", server, san));
    })
}

// ---- traffic ----

/// GET `path` with Host `web` on a new connection: status and body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "web")
        .body(Full::<Bytes>::default())
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Poll GET until its status is `want`, or panic at the deadline.
async fn until_status(proxy: &Proxy, want: StatusCode) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = get(proxy.outbound, "/headers").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} within 15s (last {status}: {body})\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within 15s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the scenarios ----

/// Both proxies up with their identities; the client's route to the
/// server's inbound over mTLS works.
struct Mesh {
    pki: Pki,
    _app: Upstream,
    server_cp: ControlPlane,
    client_cp: ControlPlane,
    server: Proxy,
    client: Proxy,
    client_leaf: Leaf,
}

async fn mesh(mode: &str) -> Mesh {
    let pki = Pki::new("xds-tls-ca");
    let app = Upstream::start().await;
    let server_cp = ControlPlane::start().await;
    let client_cp = ControlPlane::start().await;
    let server = server_proxy(&server_cp, mode, app.addr);
    let client = client_proxy(&client_cp, mode);

    // The cluster comes before the secrets: it warms, so its route
    // answers 503 rather than failing handshakes.
    let v = serve_routes(
        &client_cp,
        server.inbound,
        MatchPattern::Exact(SERVER_ID.into()),
    );
    client_cp.acked(CLUSTER, v).await;
    client_cp.acked(control_plane::ROUTE, v).await;
    let (status, body) = get(client.outbound, "/headers").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let dump = support::http_get(client.admin, "/config_dump").1;
    assert!(
        dump.contains("\"warming\""),
        "the TLS cluster warms: {dump}"
    );

    let server_leaf = pki.issue(SERVER_ID, 2099);
    let client_leaf = pki.issue(CLIENT_ID, 2099);
    let v = serve_identity(&server_cp, &pki, &server_leaf);
    server_cp.acked(SECRET, v).await;
    let v = serve_identity(&client_cp, &pki, &client_leaf);
    client_cp.acked(SECRET, v).await;
    Mesh {
        pki,
        _app: app,
        server_cp,
        client_cp,
        server,
        client,
        client_leaf,
    }
}

async fn identity_and_trust_from_sds_carry_a_mesh_hop(mode: &str) {
    let m = mesh(mode).await;
    let body = until_status(&m.client, StatusCode::OK).await;
    assert!(
        body.to_ascii_lowercase()
            .contains(&format!("strait-client-id: {CLIENT_ID}")),
        "the server proxy saw the client's SDS identity: {body}"
    );
    let s = m.server.metrics();
    assert_eq!(
        metric_sum(&s, "identity_cert_expiration_timestamp_seconds", &[]),
        4_070_908_800.0,
        "the 2099 certificate from SDS:\n{s}"
    );
}

async fn rotation_under_load_drops_nothing(mode: &str) {
    let m = mesh(mode).await;
    until_status(&m.client, StatusCode::OK).await;

    const REQUESTS: usize = 200;
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = m.client.outbound;
    let load = tokio::spawn({
        let sent = sent.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut failures = Vec::new();
            for _ in 0..REQUESTS {
                if Instant::now() > deadline {
                    failures.push("load ran past 30s".to_string());
                    break;
                }
                let (status, body) = get(addr, "/").await;
                if status != StatusCode::OK {
                    failures.push(format!("{status}: {body}"));
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }
    });
    // Rotate both identities (new keys, new expiry) once the load runs.
    wait_for("load started", || sent.load(Ordering::Relaxed) >= 20).await;
    let server_new = m.pki.issue(SERVER_ID, 2098);
    let client_new = m.pki.issue(CLIENT_ID, 2098);
    let v = serve_identity(&m.server_cp, &m.pki, &server_new);
    m.server_cp.acked(SECRET, v).await;
    let v = serve_identity(&m.client_cp, &m.pki, &client_new);
    m.client_cp.acked(SECRET, v).await;
    let failures = load.await.expect("load task");
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} requests failed across the rotation: {failures:?}\n{}",
        failures.len(),
        m.client.log()
    );
    assert!(
        sent.load(Ordering::Relaxed) > 20,
        "the load went on past the rotation"
    );

    // A new handshake gets the new certificate (and the old client
    // certificate is still trusted: same CA).
    let served = tokio::task::spawn_blocking({
        let (server, leaf) = (m.server.inbound, m.client_leaf.clone());
        let ca = m.pki.ca_pem.clone();
        move || served_expiry(server, &leaf, &ca)
    })
    .await
    .expect("s_client");
    assert_eq!(served, "notAfter=Jan  1 00:00:00 2098 GMT");
    let s = m.server.metrics();
    assert_eq!(
        metric_sum(&s, "identity_cert_expiration_timestamp_seconds", &[]),
        4_039_372_800.0,
        "the 2098 certificate:\n{s}"
    );
}

async fn a_bad_secret_is_nacked_and_the_old_one_serves(mode: &str) {
    let m = mesh(mode).await;
    until_status(&m.client, StatusCode::OK).await;

    // A key that does not sign for its certificate.
    let other = m.pki.issue(SERVER_ID, 2097);
    let mismatched = Leaf {
        cert: other.cert.clone(),
        key: m.pki.issue(SERVER_ID, 2097).key,
    };
    m.server_cp
        .update(|s| put(s, SECRET, CERT, certificate_secret(CERT, &mismatched)));
    let nack = m
        .server_cp
        .wait_for("NACK of the mismatched key", |r| {
            r.type_url == SECRET && r.error.is_some()
        })
        .await;
    let error = nack.error.unwrap_or_default();
    assert!(
        error.contains("Secret 'default': tls_certificate.private_key: the private key does not belong to the certificate"),
        "{error}"
    );

    // Unparsable PEM.
    let garbage = Leaf {
        cert: "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
        key: other.key.clone(),
    };
    m.server_cp
        .update(|s| put(s, SECRET, CERT, certificate_secret(CERT, &garbage)));
    let nack = m
        .server_cp
        .wait_for("NACK of the unparsable chain", |r| {
            r.type_url == SECRET
                && r.error
                    .as_deref()
                    .is_some_and(|e| e.contains("certificate_chain"))
        })
        .await;
    assert!(
        nack.error.as_deref().unwrap_or_default().contains(
            "Secret 'default': tls_certificate.certificate_chain: no PEM certificate found"
        ),
        "{nack:?}"
    );

    // The old identity keeps serving, old connections and new handshakes alike.
    let (status, body) = get(m.client.outbound, "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let served = tokio::task::spawn_blocking({
        let (server, leaf, ca) = (
            m.server.inbound,
            m.client_leaf.clone(),
            m.pki.ca_pem.clone(),
        );
        move || served_expiry(server, &leaf, &ca)
    })
    .await
    .expect("s_client");
    assert_eq!(served, "notAfter=Jan  1 00:00:00 2099 GMT");
    let dump = support::http_get(m.server.admin, "/config_dump").1;
    assert!(dump.contains("\"nacked\""), "{dump}");
    assert!(
        !dump.contains("PRIVATE KEY"),
        "secrets never reach the dump: {dump}"
    );
}

async fn san_matchers_choose_who_may_answer(mode: &str) {
    let m = mesh(mode).await;
    until_status(&m.client, StatusCode::OK).await;
    // A prefix the server's identity has.
    let v = m.client_cp.update(|s| {
        put(
            s,
            CLUSTER,
            "web",
            tls_cluster(
                "web",
                m.server.inbound,
                MatchPattern::Prefix("spiffe://strait.test/ns/default/".into()),
            ),
        )
    });
    m.client_cp.acked(CLUSTER, v).await;
    // The ACK comes after the update is applied.
    until_status(&m.client, StatusCode::OK).await;
    // An identity the server does not have: the handshake is refused.
    let v = m.client_cp.update(|s| {
        put(
            s,
            CLUSTER,
            "web",
            tls_cluster(
                "web",
                m.server.inbound,
                MatchPattern::Suffix("/sa/billing".into()),
            ),
        )
    });
    m.client_cp.acked(CLUSTER, v).await;
    let body = until_status(&m.client, StatusCode::BAD_GATEWAY).await;
    assert!(body.contains("expected '*/sa/billing'"), "{body}");
}

/// A proxy whose ADS stream goes over TLS to `cp`, trusting `trust` and
/// presenting `client` if given.
fn proxy_over_tls(cp: &ControlPlane, dir: &TempDir, trust: &str, client: Option<&Leaf>) -> Proxy {
    let file = |name: &str, text: &str| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path.display().to_string()
    };
    let mut tls = format!(
        "{{trust_bundle: '{}', server_name: control-plane.test",
        file("ca.pem", trust)
    );
    if let Some(leaf) = client {
        tls.push_str(&format!(
            ", certificate: '{}', private_key: '{}'",
            file("tls.crt", &leaf.cert),
            file("tls.key", &leaf.key)
        ));
    }
    Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}xds:
  address: {}
  node: {{id: tls-node}}
  tls: {tls}}}
",
        cp.addr
    ))
}

#[tokio::test]
async fn ads_runs_over_tls_to_a_control_plane_that_requires_it() {
    let pki = Pki::new("xds-tls-control-plane");
    let cp = ControlPlane::start_tls(control_plane_tls(&pki)).await;
    let app = Upstream::start().await;
    cp.update(|s| {
        put(
            s,
            control_plane::LISTENER,
            "outbound",
            listener("outbound", "web-routes", vec![router()]),
        );
        put(
            s,
            control_plane::ROUTE,
            "web-routes",
            routes("web-routes", &[("web", to("web"))]),
        );
        put(s, CLUSTER, "web", static_cluster("web", app.addr));
    });

    // With the CA and a client certificate: the config arrives over TLS.
    let dir = TempDir::new("xds-tls-bootstrap");
    let good = proxy_over_tls(&cp, &dir, &pki.ca_pem, Some(&pki.issue(CLIENT_ID, 2099)));
    let body = until_status(&good, StatusCode::OK).await;
    assert!(body.contains("host: web"), "{body}");
    assert_eq!(metric_sum(&good.metrics(), "xds_connected", &[]), 1.0);

    // Without a client certificate the control plane refuses the handshake.
    let dir = TempDir::new("xds-tls-no-cert");
    let anonymous = proxy_over_tls(&cp, &dir, &pki.ca_pem, None);
    wait_for(
        "the control plane refuses a client without a certificate",
        || !cp.handshake_errors().is_empty(),
    )
    .await;
    let (status, _) = get(anonymous.outbound, "/headers").await;
    assert_ne!(status, StatusCode::OK, "no config without the handshake");
    assert_eq!(metric_sum(&anonymous.metrics(), "xds_connected", &[]), 0.0);

    // Trusting another CA: the proxy refuses the control plane, and says why.
    let dir = TempDir::new("xds-tls-wrong-ca");
    let stranger = Pki::new("another-ca");
    let wary = proxy_over_tls(
        &cp,
        &dir,
        &stranger.ca_pem,
        Some(&pki.issue(CLIENT_ID, 2099)),
    );
    wait_for("the proxy logs the untrusted control plane", || {
        wary.log_lines(&["xds: stream to the control plane ended", "UnknownIssuer"]) > 0
    })
    .await;
    assert_eq!(metric_sum(&wary.metrics(), "xds_connected", &[]), 0.0);
}

#[tokio::test]
async fn an_original_dst_cluster_forwards_to_the_original_destination() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    let app = Upstream::start().await;
    let cp = ControlPlane::start().await;
    // Istio's shape: a catch-all virtual host to PassthroughCluster
    // (ORIGINAL_DST, CLUSTER_PROVIDED), marked on its way back.
    let mut passthrough = to("PassthroughCluster");
    passthrough.response_headers_to_add = vec![HeaderValueOption {
        header: Some(HeaderValue {
            key: "x-passthrough".into(),
            value: "strait".into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let v = cp.update(|s| {
        put(
            s,
            control_plane::LISTENER,
            "virtualOutbound",
            listener("virtualOutbound", "80", vec![router()]),
        );
        put(
            s,
            control_plane::ROUTE,
            "80",
            routes("80", &[("*", passthrough)]),
        );
        put(
            s,
            CLUSTER,
            "PassthroughCluster",
            any(
                CLUSTER,
                &Cluster {
                    name: "PassthroughCluster".into(),
                    cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                        cluster::DiscoveryType::OriginalDst as i32,
                    )),
                    lb_policy: cluster::LbPolicy::ClusterProvided as i32,
                    ..Default::default()
                },
            ),
        );
    });
    let proxy = Proxy::start(&format!(
        "{EPHEMERAL_LISTENERS}xds:\n  address: {}\n  node: {{id: passthrough}}\n",
        cp.addr
    ));
    cp.acked(control_plane::ROUTE, v).await;

    let _redirect = Redirect::install(app.addr, proxy.outbound.port());
    let (status, headers, body) = get_redirected(app.addr, "api.example.com").await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", proxy.log());
    assert_eq!(body, "hello from upstream");
    assert_eq!(
        headers.get("x-passthrough").map(|v| v.as_bytes()),
        Some(&b"strait"[..]),
        "the answer came through the proxy's passthrough route"
    );

    // Straight to the proxy there is no original destination to go to.
    let (status, body) = get(proxy.outbound, "/").await;
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(body.contains("original destination"), "{body}");
}

macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod sotw {
            $(#[tokio::test]
            async fn $name() {
                super::$name("sotw").await
            })*
        }
        mod delta {
            $(#[tokio::test]
            async fn $name() {
                super::$name("delta").await
            })*
        }
    };
}

both_modes!(
    identity_and_trust_from_sds_carry_a_mesh_hop,
    rotation_under_load_drops_nothing,
    a_bad_secret_is_nacked_and_the_old_one_serves,
    san_matchers_choose_who_may_answer,
);
