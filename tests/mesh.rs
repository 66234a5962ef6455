//! Mutual TLS between two real strait proxies, with a CA and workload
//! certificates generated at test time (rcgen): HTTP/1 crossing the mesh as
//! HTTP/2 and arriving as HTTP/1 with `strait-client-id`; many app
//! connections sharing one mesh connection; opaque TCP over mTLS; peers
//! from another CA, expired or with the wrong identity refused; inbound
//! policy (403 with a reason, probe paths open); certificate rotation
//! without dropped requests; and openssl s_client as a real TLS client.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::upstream::Upstream;
use support::{metric_sum, Proxy, TempDir, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_ID: &str = "spiffe://strait.test/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://strait.test/ns/default/sa/server";

/// A certificate authority that issues workload certificates into files.
struct Pki {
    issuer: Issuer<'static, KeyPair>,
    dir: TempDir,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca_pem = params.self_signed(&key).expect("CA cert").pem();
        let dir = TempDir::new(name);
        std::fs::write(dir.0.join("ca.pem"), &ca_pem).expect("write CA");
        Pki {
            issuer: Issuer::new(params, key),
            dir,
        }
    }

    fn bundle(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// Issue a certificate for `identity` into `<dir>/<file>.{crt,key}`;
    /// `valid_until_year` sets the expiry (a past year gives an expired one).
    fn issue(&self, identity: &str, file: &str, valid_until_year: i32) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.subject_alt_names = vec![SanType::URI(identity.try_into().expect("URI SAN"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(valid_until_year, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let crt = self.dir.0.join(format!("{file}.crt"));
        let key_path = self.dir.0.join(format!("{file}.key"));
        std::fs::write(&crt, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (crt, key_path)
    }
}

fn identity_yaml(cert: &Path, key: &Path, bundle: &Path) -> String {
    format!(
        "identity:\n  certificate: {}\n  private_key: {}\n  trust_bundle: {}\n",
        cert.display(),
        key.display(),
        bundle.display()
    )
}

/// The server side: inbound mTLS, forwarding to `app`, with `policy`.
fn server_proxy(pki: &Pki, app: SocketAddr, app_protocol: &str, policy: &str) -> Proxy {
    let (cert, key) = pki.issue(SERVER_ID, "server", 2099);
    let yaml = format!(
        "{}{}clusters:\n  - name: app\n    protocol: {app_protocol}\n    endpoints: [{{address: '{app}'}}]\n{policy}",
        EPHEMERAL_LISTENERS.replace("inbound: {address: 127.0.0.1, port: 0}", "inbound: {address: 127.0.0.1, port: 0, default_cluster: app}"),
        identity_yaml(&cert, &key, &pki.bundle()),
    );
    Proxy::start(&yaml)
}

/// The client side: outbound to a meshed cluster at `server` expecting `expect_id`.
fn client_proxy(
    pki: &Pki,
    cert: &Path,
    key: &Path,
    server: SocketAddr,
    expect_id: &str,
    protocol: &str,
) -> Proxy {
    let yaml = format!(
        "{}{}clusters:\n  - name: web\n    protocol: {protocol}\n    tls: {{identity: '{expect_id}'}}\n    endpoints: [{{address: '{server}'}}]\nroutes:\n  - authority: web\n    cluster: web\n",
        EPHEMERAL_LISTENERS.replace("outbound: {address: 127.0.0.1, port: 0}", "outbound: {address: 127.0.0.1, port: 0, default_cluster: web}"),
        identity_yaml(cert, key, &pki.bundle()),
    );
    Proxy::start(&yaml)
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "web")
        .body(Full::<Bytes>::default())
        .expect("req");
    let response = sender.send_request(req).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http1_crosses_the_mesh_as_h2_and_shares_one_connection() {
    let pki = Pki::new("mesh-ca");
    let app = Upstream::start().await;
    let server = server_proxy(
        &pki,
        app.addr,
        "auto",
        "policy:\n  default: authenticated\n",
    );
    let (cert, key) = pki.issue(CLIENT_ID, "client", 2099);
    let client = client_proxy(&pki, &cert, &key, server.inbound, SERVER_ID, "auto");

    let (status, _, body) = get(client.outbound, "/headers").await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", client.log());
    assert!(body.starts_with("version: HTTP/1.1\n"), "{body}");
    assert!(
        body.contains(&format!("strait-client-id: {CLIENT_ID}\n")),
        "{body}"
    );
    assert!(!body.contains("strait-orig-proto"), "{body}");

    // Twenty app connections at once: one mesh connection between the proxies.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = client.outbound;
        tasks.push(tokio::spawn(async move { get(addr, "/").await.0 }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), StatusCode::OK);
    }
    let m = client.metrics();
    assert_eq!(
        metric_sum(&m, "tcp_open_total", &["peer=\"dst\"", "tls=\"true\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "request_total",
            &[
                "direction=\"outbound\"",
                &format!("server_id=\"{SERVER_ID}\"")
            ]
        ),
        21.0,
        "{m}"
    );
    let s = server.metrics();
    assert_eq!(
        metric_sum(
            &s,
            "request_total",
            &[
                "direction=\"inbound\"",
                "tls=\"true\"",
                &format!("client_id=\"{CLIENT_ID}\"")
            ]
        ),
        21.0,
        "{s}"
    );
    assert!(
        metric_sum(&s, "identity_cert_expiration_timestamp_seconds", &[]) > 4.0e9,
        "{s}"
    );
}

/// Echo server that answers every read with the same bytes.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_crosses_the_mesh_over_mtls() {
    let pki = Pki::new("mesh-ca-tcp");
    let echo = echo_server().await;
    let server = server_proxy(&pki, echo, "opaque", "policy:\n  default: authenticated\n");
    let (cert, key) = pki.issue(CLIENT_ID, "client", 2099);
    let client = client_proxy(&pki, &cert, &key, server.inbound, SERVER_ID, "opaque");
    let mut stream = TcpStream::connect(client.outbound).await.expect("connect");
    let payload = b"\x00\x01 opaque bytes over mTLS \xfe".repeat(200);
    stream.write_all(&payload).await.expect("write");
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("echo within 10s")
        .expect("read");
    assert_eq!(back, payload);
    let s = server.metrics();
    assert_eq!(
        metric_sum(
            &s,
            "tcp_open_total",
            &[
                "peer=\"src\"",
                "tls=\"true\"",
                &format!("client_id=\"{CLIENT_ID}\"")
            ]
        ),
        1.0,
        "{s}"
    );
}

#[tokio::test]
async fn wrong_ca_expired_and_wrong_identity_are_refused() {
    let pki = Pki::new("mesh-ca-refuse");
    let app = Upstream::start().await;
    let server = server_proxy(&pki, app.addr, "auto", "");

    // The client expects another identity than the server proves.
    let (cert, key) = pki.issue(CLIENT_ID, "client", 2099);
    let client = client_proxy(
        &pki,
        &cert,
        &key,
        server.inbound,
        "spiffe://strait.test/ns/default/sa/other",
        "auto",
    );
    let (status, headers, body) = get(client.outbound, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"tls-handshake"[..])
    );
    assert!(
        body.contains(SERVER_ID) && body.contains("expected"),
        "{body}"
    );
    drop(client);

    // A client whose certificate comes from another CA: the server refuses it.
    let other = Pki::new("other-ca");
    let (cert, key) = other.issue(CLIENT_ID, "client", 2099);
    let yaml_bundle = pki.bundle(); // trusts the server, but presents a foreign cert
    let client = client_proxy_with_bundle(&cert, &key, &yaml_bundle, server.inbound);
    let (status, _, body) = get(client.outbound, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    drop(client);

    // An expired client certificate: the server refuses it.
    let (cert, key) = pki.issue(CLIENT_ID, "expired", 2021);
    let client = client_proxy(&pki, &cert, &key, server.inbound, SERVER_ID, "auto");
    let (status, _, body) = get(client.outbound, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let log = server.log();
    assert!(
        log.contains("mTLS handshake with a mesh client failed"),
        "{log}"
    );
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

fn client_proxy_with_bundle(cert: &Path, key: &Path, bundle: &Path, server: SocketAddr) -> Proxy {
    let yaml = format!(
        "{}{}clusters:\n  - name: web\n    tls: {{identity: '{SERVER_ID}'}}\n    endpoints: [{{address: '{server}'}}]\n",
        EPHEMERAL_LISTENERS.replace("outbound: {address: 127.0.0.1, port: 0}", "outbound: {address: 127.0.0.1, port: 0, default_cluster: web}"),
        identity_yaml(cert, key, bundle),
    );
    Proxy::start(&yaml)
}

#[tokio::test]
async fn policy_allow_list_plaintext_and_probe_paths() {
    let pki = Pki::new("mesh-ca-policy");
    let app = Upstream::start().await;
    let policy =
        format!("policy:\n  default: ['{CLIENT_ID}']\n  unauthenticated_paths: [/healthz]\n");
    let server = server_proxy(&pki, app.addr, "auto", &policy);

    let (cert, key) = pki.issue(CLIENT_ID, "client", 2099);
    let allowed = client_proxy(&pki, &cert, &key, server.inbound, SERVER_ID, "auto");
    assert_eq!(get(allowed.outbound, "/").await.0, StatusCode::OK);

    let (cert, key) = pki.issue(
        "spiffe://strait.test/ns/default/sa/intruder",
        "intruder",
        2099,
    );
    let denied = client_proxy(&pki, &cert, &key, server.inbound, SERVER_ID, "auto");
    let (status, headers, _) = get(denied.outbound, "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let reason = headers
        .get("strait-deny-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(reason.contains("intruder"), "{reason}");

    // Plaintext straight to the inbound port: refused, except the probe path.
    let (status, _, _) = get(server.inbound, "/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, body) = get(server.inbound, "/healthz").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "hello from upstream")
    );

    let s = server.metrics();
    assert_eq!(
        metric_sum(
            &s,
            "inbound_authz_deny_total",
            &["identity=\"spiffe://strait.test/ns/default/sa/intruder\""]
        ),
        1.0,
        "{s}"
    );
    assert_eq!(
        metric_sum(
            &s,
            "inbound_authz_allow_total",
            &[&format!("identity=\"{CLIENT_ID}\"")]
        ),
        1.0,
        "{s}"
    );
    assert_eq!(
        metric_sum(&s, "inbound_authz_deny_total", &["identity=\"\""]),
        1.0,
        "{s}"
    );
}

#[tokio::test]
async fn rotation_drops_nothing_and_new_handshakes_use_the_new_cert() {
    let pki = Pki::new("mesh-ca-rotate");
    let app = Upstream::start().await;
    let server = server_proxy(&pki, app.addr, "auto", "");
    let (cert, key) = pki.issue(CLIENT_ID, "client", 2099);
    let client = client_proxy(&pki, &cert, &key, server.inbound, SERVER_ID, "auto");

    let addr = client.outbound;
    let load = tokio::spawn(async move {
        let mut failures = 0;
        for _ in 0..150 {
            if get(addr, "/").await.0 != StatusCode::OK {
                failures += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failures
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A broken rotation (key of another certificate) is refused...
    let (_, other_key) = pki.issue(SERVER_ID, "unrelated", 2099);
    let server_dir = pki.dir.0.clone();
    std::fs::copy(&other_key, server_dir.join("server.key")).expect("break key");
    wait_for(|| {
        metric_sum(
            &server.metrics(),
            "identity_cert_refresh_total",
            &["result=\"error\""],
        ) >= 1.0
    })
    .await;
    // ...and a good one (new expiry) is taken.
    pki.issue(SERVER_ID, "server", 2098);
    wait_for(|| {
        metric_sum(
            &server.metrics(),
            "identity_cert_refresh_total",
            &["result=\"ok\""],
        ) >= 2.0
    })
    .await;
    assert_eq!(
        load.await.expect("load task"),
        0,
        "requests failed during rotation:\n{}",
        client.log()
    );

    let s = server.metrics();
    let expiry = metric_sum(&s, "identity_cert_expiration_timestamp_seconds", &[]);
    assert_eq!(
        expiry, 4_039_372_800.0,
        "expiry of the 2098 certificate:\n{s}"
    );
    // A new handshake (openssl, as a mesh client) is served the new certificate.
    let served = s_client(server.inbound, Some((&cert, &key)), &pki.bundle());
    assert!(served.contains("Jan  1 00:00:00 2098 GMT"), "{served}");
}

async fn wait_for(mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "condition not reached in 15s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run `openssl s_client` as a mesh client (ALPN h2 + strait.mesh) and
/// return its output plus the served certificate's dates.
fn s_client(addr: SocketAddr, client_cert: Option<(&Path, &Path)>, bundle: &Path) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-alpn",
        "h2,strait.mesh",
        "-showcerts",
        "-CAfile",
    ])
    .arg(bundle);
    if let Some((cert, key)) = client_cert {
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl installed");
    // Give the handshake (and a TLS 1.3 alert) a moment, then close stdin.
    std::thread::sleep(Duration::from_millis(500));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"");
    }
    let out = child.wait_with_output().expect("openssl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Decode the first served certificate's validity.
    let pem: String = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .map(|body| format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n"))
        .unwrap_or_default();
    let mut dates = String::new();
    if !pem.is_empty() {
        let mut x509 = Command::new("openssl")
            .args(["x509", "-noout", "-enddate"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl x509");
        if let Some(mut stdin) = x509.stdin.take() {
            let _ = stdin.write_all(pem.as_bytes());
        }
        dates =
            String::from_utf8_lossy(&x509.wait_with_output().expect("x509").stdout).into_owned();
    }
    format!("{text}\n{dates}")
}

#[tokio::test]
async fn openssl_needs_a_client_certificate_and_gets_tls13() {
    let pki = Pki::new("mesh-ca-openssl");
    let app = Upstream::start().await;
    let server = server_proxy(&pki, app.addr, "auto", "");
    let (cert, key) = pki.issue(CLIENT_ID, "client", 2099);
    let without = tokio::task::spawn_blocking({
        let bundle = pki.bundle();
        let inbound = server.inbound;
        move || s_client(inbound, None, &bundle)
    })
    .await
    .expect("join");
    assert!(
        without.contains("alert certificate required")
            || without.contains("alert handshake failure"),
        "handshake without a client certificate must fail:\n{without}"
    );
    let with = s_client(server.inbound, Some((&cert, &key)), &pki.bundle());
    assert!(with.contains("TLSv1.3"), "{with}");
    assert!(with.contains("Verify return code: 0 (ok)"), "{with}");
    assert!(with.contains("ALPN protocol: h2"), "{with}");
}
