//! Mutual TLS between two real strait proxies, with a CA and workload
//! certificates generated at test time (rcgen): HTTP/1 crossing the mesh as
//! HTTP/2 and arriving as HTTP/1 with `strait-client-id`; many app
//! connections sharing one mesh connection; opaque TCP over mTLS; peers
//! from another CA, expired or with the wrong identity refused; inbound
//! policy (403 with a reason, probe paths open); certificate rotation
//! without dropped requests; openssl s_client as a real TLS client; and
//! taps on both proxies naming the identities each side proved.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::pki::Pki;
use support::upstream::Upstream;
use support::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_ID: &str = "spiffe://strait.test/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://strait.test/ns/default/sa/server";

impl Pki {
    /// Issue an RSA-2048 certificate with openssl (rcgen on ring cannot
    /// generate RSA keys); the key is PKCS#8, as OpenSSL 3 writes it.
    fn issue_rsa(&self, identity: &str, file: &str) -> (PathBuf, PathBuf) {
        let d = &self.dir.0;
        let key = d.join(format!("{file}.key"));
        let csr = d.join(format!("{file}.csr"));
        let crt = d.join(format!("{file}.crt"));
        let ext = d.join(format!("{file}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName=URI:{identity}\nextendedKeyUsage=serverAuth,clientAuth\n"),
        )
        .expect("write ext");
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl installed");
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let os = std::ffi::OsStr::new;
        openssl(&[
            os("req"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
            os("-subj"),
            os("/CN=rsa-workload"),
            os("-keyout"),
            key.as_os_str(),
            os("-out"),
            csr.as_os_str(),
        ]);
        let ca_key = d.join("ca.key");
        let bundle = self.bundle();
        openssl(&[
            os("x509"),
            os("-req"),
            os("-in"),
            csr.as_os_str(),
            os("-CA"),
            bundle.as_os_str(),
            os("-CAkey"),
            ca_key.as_os_str(),
            os("-CAcreateserial"),
            os("-days"),
            os("30"),
            os("-extfile"),
            ext.as_os_str(),
            os("-out"),
            crt.as_os_str(),
        ]);
        (crt, key)
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
    server_proxy_with(&cert, &key, &pki.bundle(), app, app_protocol, policy)
}

fn server_proxy_with(
    cert: &Path,
    key: &Path,
    bundle: &Path,
    app: SocketAddr,
    app_protocol: &str,
    policy: &str,
) -> Proxy {
    let yaml = format!(
        "{}{}clusters:\n  - name: app\n    protocol: {app_protocol}\n    endpoints: [{{address: '{app}'}}]\n{policy}",
        EPHEMERAL_LISTENERS.replace("inbound: {address: 127.0.0.1, port: 0}", "inbound: {address: 127.0.0.1, port: 0, default_cluster: app}"),
        identity_yaml(cert, key, bundle),
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
    get_with(addr, path, &[]).await
}

async fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "web");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::<Bytes>::default()).expect("req");
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
    let policy = format!(
        "policy:\n  default: ['{CLIENT_ID}']\n  unauthenticated_paths: [/healthz, /headers]\n"
    );
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
    // A plaintext client cannot claim an identity by header.
    let body = get_with(
        server.inbound,
        "/headers",
        &[("strait-client-id", "spiffe://evil")],
    )
    .await
    .2;
    assert!(body.starts_with("version: HTTP/1.1"), "{body}");
    assert!(!body.contains("strait-client-id"), "{body}");

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

#[tokio::test]
async fn rsa_identity_works_and_a_server_from_another_ca_is_refused() {
    let pki = Pki::new("mesh-ca-rsa");
    let app = Upstream::start().await;
    let (cert, key) = pki.issue_rsa(SERVER_ID, "server-rsa");
    let server = server_proxy_with(&cert, &key, &pki.bundle(), app.addr, "auto", "");
    let (cert, key) = pki.issue(CLIENT_ID, "client", 2099);
    let client = client_proxy(&pki, &cert, &key, server.inbound, SERVER_ID, "auto");
    let (status, _, body) = get(client.outbound, "/headers").await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", server.log());
    assert!(
        body.contains(&format!("strait-client-id: {CLIENT_ID}")),
        "{body}"
    );

    // The right identity, signed by a CA the client does not trust.
    let other = Pki::new("mesh-ca-foreign");
    let (foreign_cert, foreign_key) = other.issue(SERVER_ID, "server", 2099);
    let foreign = server_proxy_with(
        &foreign_cert,
        &foreign_key,
        &pki.bundle(),
        app.addr,
        "auto",
        "",
    );
    let client = client_proxy(&pki, &cert, &key, foreign.inbound, SERVER_ID, "auto");
    let (status, headers, body) = get(client.outbound, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        headers.get("strait-proxy-error").map(|v| v.as_bytes()),
        Some(&b"tls-handshake"[..])
    );
    assert!(
        body.to_lowercase().contains("unknownissuer") || body.contains("unknown issuer"),
        "{body}"
    );
}

#[tokio::test]
async fn app_tls_passes_through_and_denied_tcp_is_closed() {
    use std::process::{Command, Stdio};
    let pki = Pki::new("mesh-ca-passthrough");
    // The app does its own TLS (openssl s_server) with its own certificate.
    let (app_cert, app_key) = pki.issue(
        "spiffe://strait.test/ns/default/sa/app-own-tls",
        "app",
        2099,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut s_server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-www",
            "-cert",
        ])
        .arg(&app_cert)
        .arg("-key")
        .arg(&app_key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let app: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(app).await.is_err() {
        assert!(Instant::now() < deadline, "s_server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = server_proxy(&pki, app, "opaque", "");
    // A TLS client without the mesh ALPN reaches the app's own TLS server.
    let inbound = server.inbound;
    let bundle = pki.bundle();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &inbound.to_string(),
                "-quiet",
                "-CAfile",
            ])
            .arg(&bundle)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl s_client");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"GET / HTTP/1.0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(800));
        }
        let out = child.wait_with_output().expect("s_client output");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
    .await
    .expect("join");
    let _ = s_server.kill();
    let _ = s_server.wait();
    assert!(
        out.contains("s_server"),
        "the app's own TLS did not answer through the proxy:\n{out}"
    );
    let m = server.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "tcp_open_total",
            &["peer=\"src\"", "no_tls_reason=\"passthrough\""]
        ),
        1.0,
        "{m}"
    );

    // With an authenticated policy, plaintext TCP is closed unanswered.
    let echo = echo_server().await;
    let strict = server_proxy(&pki, echo, "opaque", "policy:\n  default: authenticated\n");
    let mut stream = TcpStream::connect(strict.inbound).await.expect("connect");
    stream
        .write_all(b"\x00\x01 not allowed")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("closed within 10s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "denied connection got data: {read:?}"
    );
    let m = strict.metrics();
    assert_eq!(
        metric_sum(&m, "inbound_authz_deny_total", &["identity=\"\""]),
        1.0,
        "{m}"
    );
}

/// `GET /tap?{query}` on `admin`, read until `n` records have arrived.
async fn tap_records(admin: SocketAddr, query: &str, n: usize) -> Vec<serde_json::Value> {
    let stream = TcpStream::connect(admin).await.expect("connect admin");
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("/tap?{query}&limit={n}"))
        .header("host", "admin")
        .body(Full::default())
        .expect("req");
    let response = sender.send_request(req).await.expect("tap response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the tap reached its limit within 10 s")
        .expect("tap body")
        .to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn taps_on_both_sides_name_the_mesh_identities() {
    let pki = Pki::new("mesh-tap-ca");
    let app = Upstream::start().await;
    let server = server_proxy(&pki, app.addr, "auto", "");
    let (cert, key) = pki.issue(CLIENT_ID, "client", 2099);
    let client = client_proxy(&pki, &cert, &key, server.inbound, SERVER_ID, "auto");
    let outbound = tokio::spawn(tap_records(client.admin, "direction=outbound", 1));
    let inbound = tokio::spawn(tap_records(server.admin, "direction=inbound", 1));
    // Each tap is open once its proxy counts it.
    for proxy in [&client, &server] {
        wait_for(|| metric_sum(&proxy.metrics(), "tap_open", &[]) == 1.0).await;
    }
    let (status, _, _) = get(client.outbound, "/tapped").await;
    assert_eq!(status, StatusCode::OK);

    let outbound = outbound.await.expect("task");
    assert_eq!(outbound[0]["path"], "/tapped");
    assert_eq!(outbound[0]["protocol"], "HTTP/1.1");
    assert_eq!(outbound[0]["server_identity"], SERVER_ID);
    assert_eq!(outbound[0]["client_identity"], serde_json::Value::Null);
    assert_eq!(outbound[0]["endpoint"], server.inbound.to_string());
    let inbound = inbound.await.expect("task");
    assert_eq!(inbound[0]["path"], "/tapped");
    // The mesh hop is HTTP/2, whatever the app spoke.
    assert_eq!(inbound[0]["protocol"], "HTTP/2.0");
    assert_eq!(inbound[0]["client_identity"], CLIENT_ID);
    assert_eq!(inbound[0]["endpoint"], app.addr.to_string());
}
