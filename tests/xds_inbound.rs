//! Inbound policy from the control plane, end to end: a real ADS control
//! plane serves istiod's `virtualInbound` (see `support/istio_inbound.rs`)
//! and the workload identity over SDS; connections to the pod's address
//! (127.0.0.2, redirected by iptables to strait's inbound listener the way
//! the mesh redirects a pod's inbound traffic) reach real apps. Real mTLS
//! clients are two more strait proxies with file identities (`sleep`, the
//! one RBAC allows, and `other`); plaintext clients connect directly.
//! STRICT with RBAC: the allowed identity passes (HTTP and TCP), another
//! gets 403 with the reason (HTTP) or a closed connection (TCP),
//! plaintext gets 403 except on the file's probe path; PERMISSIVE: anyone;
//! an update changing the allowed principal takes effect; an RBAC rule
//! strait cannot enforce (a path) is NACKed with its field while the
//! previous policy keeps being enforced; a policy allowing a namespace
//! (istiod's `.*/ns/foo/.*`) lets `foo`'s identity in and not `bar`'s.

#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/istio_inbound.rs"]
mod istio_inbound;
mod support;
#[path = "support/xds_resources.rs"]
mod xds_resources;
#[path = "support/xds_tls.rs"]
mod xds_tls_support;

use bytes::Bytes;
use control_plane::{ControlPlane, LISTENER, SECRET};
use envoy_types::pb::envoy::config::rbac::v3::Rbac;
use envoy_types::pb::google::protobuf::Any;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use istio_inbound::{
    allow_namespaces, allow_principal_on_path, allow_principals, virtual_inbound, InboundPort, Mtls,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{http_get, metric_sum, Proxy, TempDir, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xds_resources::put;
use xds_tls_support::{certificate_secret, trust_secret, Leaf, Pki, Redirect, CERT, TRUST};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
const OTHER: &str = "spiffe://cluster.local/ns/bar/sa/other";
/// The pod's address: connections to it are redirected to strait.
const POD_IP: &str = "127.0.0.2";
/// A second address of the pod, redirected to an extra inbound listener.
const POD_IP_2: &str = "127.0.0.3";

fn pod(port: u16) -> SocketAddr {
    SocketAddr::new(POD_IP.parse().expect("pod IP"), port)
}

/// A TCP server that answers each read with `echo:` and what it read.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    if stream.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A mesh client: a strait proxy with `leaf` as its identity, routing
/// Host `a` and `b` to the pod's HTTP ports and anything else (TCP) to
/// its TCP port, over mTLS expecting the server's identity.
fn client_proxy(pki: &Pki, leaf: &Leaf, dir: &TempDir, name: &str, ports: &Ports) -> Proxy {
    let path = |f: &str| dir.0.join(format!("{name}-{f}"));
    std::fs::write(path("tls.crt"), &leaf.cert).expect("write cert");
    std::fs::write(path("tls.key"), &leaf.key).expect("write key");
    std::fs::write(path("ca.crt"), &pki.ca_pem).expect("write CA");
    let listeners = EPHEMERAL_LISTENERS.replace(
        "outbound: {address: 127.0.0.1, port: 0}",
        "outbound: {address: 127.0.0.1, port: 0, default_cluster: tcp}",
    );
    let cluster = |n: &str, port: u16, protocol: &str| {
        format!(
            "  - name: {n}\n    protocol: {protocol}\n    tls: {{identity: '{WEB}'}}\n    endpoints: [{{address: '{}'}}]\n",
            pod(port)
        )
    };
    Proxy::start(&format!(
        "{listeners}identity:\n  certificate: {}\n  private_key: {}\n  trust_bundle: {}\nclusters:\n{}{}{}routes:\n  - authority: a\n    cluster: a\n  - authority: b\n    cluster: b\n",
        path("tls.crt").display(),
        path("tls.key").display(),
        path("ca.crt").display(),
        cluster("a", ports.strict, "auto"),
        cluster("b", ports.permissive, "auto"),
        cluster("tcp", ports.tcp, "opaque"),
    ))
}

/// The pod's ports: an HTTP app under STRICT + RBAC, one under
/// PERMISSIVE, a TCP echo under STRICT + RBAC.
struct Ports {
    strict: u16,
    permissive: u16,
    tcp: u16,
}

fn inbound(ports: &Ports, strict_rbac: Rbac) -> Any {
    virtual_inbound(&[
        InboundPort {
            port: ports.strict,
            mtls: Mtls::Strict,
            rbac: Some(strict_rbac.clone()),
        },
        InboundPort {
            port: ports.tcp,
            mtls: Mtls::Strict,
            rbac: Some(strict_rbac),
        },
        InboundPort {
            port: ports.permissive,
            mtls: Mtls::Permissive,
            rbac: None,
        },
    ])
}

/// GET `path` with Host `host` over a new plaintext connection to `to`.
async fn get(to: SocketAddr, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
    let stream = TcpStream::connect(to).await.expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::<Bytes>::default())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("a response within 10s")
        .expect("response");
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Poll `get` until it answers `want`, or panic at the deadline.
async fn until(client: &Proxy, host: &str, want: StatusCode) -> (HeaderMap, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, headers, body) = get(client.outbound, host, "/headers").await;
        if status == want {
            return (headers, body);
        }
        assert!(
            Instant::now() < deadline,
            "no {want} for {host} within 15s (last {status}: {body})\n{}",
            client.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send bytes through `client`'s TCP default and read: `Some(echo)`, or
/// `None` when the connection closes unanswered.
async fn tcp_echo(client: &Proxy) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(client.outbound).await.expect("connect");
    stream
        .write_all(b"\x00\x01 opaque ping")
        .await
        .expect("write");
    let mut buf = vec![0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer or a close within 10s");
    match read {
        Ok(n) if n > 0 => Some(buf[..n].to_vec()),
        _ => None,
    }
}

fn deny_reason(headers: &HeaderMap) -> String {
    headers
        .get("strait-deny-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn inbound_policy_from_the_control_plane(mode: &str) {
    let pki = Pki::new("xds-inbound-ca");
    let cp = ControlPlane::start().await;
    let web = pki.issue(WEB, 2099);
    cp.update(|s| {
        put(s, SECRET, CERT, certificate_secret(CERT, &web));
        put(s, SECRET, TRUST, trust_secret(TRUST, &pki.ca_pem));
    });
    let (strict_app, permissive_app, echo) = (
        Upstream::start().await,
        Upstream::start().await,
        echo_server().await,
    );
    let ports = Ports {
        strict: strict_app.addr.port(),
        permissive: permissive_app.addr.port(),
        tcp: echo.port(),
    };
    // An extra inbound listener too: it must enforce the same policy.
    // Its own loopback address: a port free there is not raced for by
    // the ephemeral ports other tests bind on 127.0.0.1.
    let extra_inbound = std::net::TcpListener::bind("127.0.0.4:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.4");
    let listeners = format!(
        "{EPHEMERAL_LISTENERS}  extra:\n    - {{name: pod-2, direction: inbound, address: 127.0.0.4, port: {}}}\n",
        extra_inbound.port()
    );
    let server = Proxy::start(&format!(
        "{listeners}xds:\n  address: {}\n  node: {{id: sidecar~{POD_IP}~web-0.default~default.svc.cluster.local, cluster: web.default}}\n  mode: {mode}\n  initial_fetch_timeout: 10s\nidentity:\n  sds: {{certificate: {CERT}, trust_bundle: {TRUST}}}\npolicy:\n  unauthenticated_paths: [/healthz]\n",
        cp.addr
    ));
    let _redirects: Vec<Redirect> = [ports.strict, ports.permissive, ports.tcp]
        .into_iter()
        .map(|p| Redirect::dnat(POD_IP, p, server.inbound))
        .chain([Redirect::dnat(POD_IP_2, ports.strict, extra_inbound)])
        .collect();
    let v = cp.update(|s| {
        put(
            s,
            LISTENER,
            "virtualInbound",
            inbound(&ports, allow_principals(&[SLEEP])),
        )
    });
    cp.acked(LISTENER, v).await;

    let dir = TempDir::new("xds-inbound-clients");
    let sleep = client_proxy(&pki, &pki.issue(SLEEP, 2099), &dir, "sleep", &ports);
    let other = client_proxy(&pki, &pki.issue(OTHER, 2099), &dir, "other", &ports);

    // The effective policy is logged once per translation.
    let strict_rule = format!("{}: [{SLEEP}]", ports.strict);
    assert!(
        server.log_lines(&[
            "xds: inbound listener translated",
            &strict_rule,
            "other ports: unauthenticated"
        ]) >= 1,
        "{}",
        server.log()
    );
    // STRICT + RBAC: the allowed identity reaches the app, named to it.
    let (_, body) = until(&sleep, "a", StatusCode::OK).await;
    assert!(
        body.contains(&format!("strait-client-id: {SLEEP}")),
        "{body}"
    );
    // Another identity: 403 with the reason.
    let (status, headers, body) = get(other.outbound, "a", "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        deny_reason(&headers),
        format!("identity '{OTHER}' is not allowed on port {}", ports.strict)
    );
    // Plaintext: refused, except the file's probe path.
    let (status, headers, _) = get(pod(ports.strict), "web", "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        deny_reason(&headers).contains("requires mTLS"),
        "{headers:?}"
    );
    let (status, _, body) = get(pod(ports.strict), "web", "/healthz").await;
    assert_eq!(status, StatusCode::OK, "kubelet probes stay open: {body}");
    // The extra inbound listener follows the control plane's policy too.
    let via_extra = SocketAddr::new(POD_IP_2.parse().expect("IP"), ports.strict);
    let (status, headers, _) = get(via_extra, "web", "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
    assert!(
        deny_reason(&headers).contains("requires mTLS"),
        "{headers:?}"
    );
    // PERMISSIVE: plaintext and any identity.
    let (status, _, body) = get(pod(ports.permissive), "web", "/").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "hello from upstream")
    );
    let (status, _, _) = get(other.outbound, "b", "/").await;
    assert_eq!(status, StatusCode::OK);
    // TCP under STRICT + RBAC: echoed for sleep, closed for other.
    assert_eq!(
        tcp_echo(&sleep).await.as_deref(),
        Some(&b"echo:\x00\x01 opaque ping"[..])
    );
    assert_eq!(
        tcp_echo(&other).await,
        None,
        "other's TCP connection is closed"
    );

    // The control plane allows `other` instead: it takes effect.
    let v = cp.update(|s| {
        put(
            s,
            LISTENER,
            "virtualInbound",
            inbound(&ports, allow_principals(&[OTHER])),
        )
    });
    cp.acked(LISTENER, v).await;
    until(&other, "a", StatusCode::OK).await;
    let (status, headers, _) = get(sleep.outbound, "a", "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(deny_reason(&headers).contains(SLEEP), "{headers:?}");

    // A rule on paths cannot be enforced per port: NACKed with its
    // field; the policy accepted before keeps being enforced.
    cp.update(|s| {
        put(
            s,
            LISTENER,
            "virtualInbound",
            inbound(&ports, allow_principal_on_path(SLEEP, "/admin")),
        )
    });
    let nack = cp
        .wait_for("NACK of the path rule", |r| {
            r.type_url == LISTENER && r.error.is_some()
        })
        .await;
    let error = nack.error.unwrap_or_default();
    assert!(
        error.contains("Listener 'virtualInbound': filter_chains[1].filters[2].typed_config.http_filters[1].typed_config.rules.policies['ns[default]-policy[web]-rule[0]'].permissions[0].and_rules.rules[0].or_rules.rules[0].url_path: strait authorizes whole destination ports by identity"),
        "{error}"
    );
    let (status, _, _) = get(other.outbound, "a", "/").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the accepted policy still allows other"
    );
    let (status, _, _) = get(sleep.outbound, "a", "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "and still refuses sleep");
    assert_eq!(tcp_echo(&sleep).await, None);

    let dump = http_get(server.admin, "/config_dump").1;
    assert!(dump.contains("\"nacked\""), "{dump}");
    let m = server.metrics();
    assert!(
        metric_sum(
            &m,
            "inbound_authz_deny_total",
            &[&format!("identity=\"{SLEEP}\"")]
        ) >= 2.0,
        "{m}"
    );

    // `source.namespaces: [foo]`: sleep (ns/foo) in, other (ns/bar) not.
    let v = cp.update(|s| {
        put(
            s,
            LISTENER,
            "virtualInbound",
            inbound(&ports, allow_namespaces(&["foo"])),
        )
    });
    cp.acked(LISTENER, v).await;
    let namespace_rule = format!("{}: [spiffe://cluster.local/ns/foo/*]", ports.strict);
    assert!(
        server.log_lines(&["xds: inbound listener translated", &namespace_rule]) >= 1,
        "{}",
        server.log()
    );
    let (_, body) = until(&sleep, "a", StatusCode::OK).await;
    assert!(
        body.contains(&format!("strait-client-id: {SLEEP}")),
        "{body}"
    );
    let (status, headers, _) = get(other.outbound, "a", "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        deny_reason(&headers),
        format!("identity '{OTHER}' is not allowed on port {}", ports.strict)
    );
    assert_eq!(
        tcp_echo(&sleep).await.as_deref(),
        Some(&b"echo:\x00\x01 opaque ping"[..])
    );
    assert_eq!(tcp_echo(&other).await, None, "other's TCP is refused");
}

#[tokio::test]
async fn inbound_policy_from_the_control_plane_sotw() {
    inbound_policy_from_the_control_plane("sotw").await;
}

#[tokio::test]
async fn inbound_policy_from_the_control_plane_delta() {
    inbound_policy_from_the_control_plane("delta").await;
}
