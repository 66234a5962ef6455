//! What the edge-limit tests (`tests/edge_limits.rs`, `tests/h2_flood.rs`)
//! share: a one-cluster config, a bounded wait for a metric, HTTP/2 frames
//! written and read by hand (for the abuse a client library will not
//! send), and a mesh peer's mTLS connection to the inbound.

use super::{metric_sum, Proxy, EPHEMERAL_LISTENERS};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One cluster `web` at `addr` routed by authority `web`, plus `proxy.http`
/// settings (a YAML flow mapping's body).
pub fn config(addr: SocketAddr, http: &str) -> String {
    format!(
        "{EPHEMERAL_LISTENERS}proxy:\n  http: {{{http}}}\nclusters:\n  - name: web\n    endpoints: [{{address: '{addr}'}}]\nroutes:\n  - authority: web\n    cluster: web\n"
    )
}

/// Wait (bounded) until the sum of `family{labels}` reaches `at_least`;
/// returns the metrics text it last read.
pub async fn wait_for_metric(
    proxy: &Proxy,
    family: &str,
    labels: &[&str],
    at_least: f64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = proxy.metrics();
        if metric_sum(&text, family, labels) >= at_least {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{family}{labels:?} never reached {at_least}:\n{text}\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- HTTP/2 frames, written by hand -------------------------------------

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `GET http://web/` as an HPACK block: static-table indices for
/// `:method GET`, `:scheme http`, `:path /`, and `:authority` as a
/// literal without indexing (so every block is the same bytes).
pub const GET_WEB: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x03, b'w', b'e', b'b'];

/// A client connection that has sent its preface and an empty SETTINGS.
pub async fn raw_h2(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect proxy");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("preface");
    stream
}

/// The next frame (type, flags, payload), or `None` once the connection
/// is closed or `deadline` passes.
pub async fn next_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Instant,
) -> Option<(u8, u8, Vec<u8>)> {
    let (kind, flags, payload, _) = next_frame_on(stream, deadline).await?;
    Some((kind, flags, payload))
}

/// The error code of the first GOAWAY before `deadline`.
pub async fn goaway_code<S: AsyncRead + Unpin>(stream: &mut S, deadline: Instant) -> Option<u32> {
    while let Some((kind, _, payload)) = next_frame(stream, deadline).await {
        if kind == GOAWAY {
            let code = payload.get(4..8)?;
            return Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
        }
    }
    None
}

/// A well-behaved HTTP/2 (h2c) client of `addr`, its connection driven
/// by a task of its own.
pub async fn h2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// A well-behaved HTTP/2 client's GET through the proxy: its status.
pub async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) -> StatusCode {
    let req = Request::get("http://web/")
        .body(Full::default())
        .expect("request");
    let response = sender.send_request(req).await.expect("well-behaved GET");
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

pub const DATA: u8 = 0x0;
/// `POST http://web/` as an HPACK block (`:method POST` is static index 3).
pub const POST_WEB: &[u8] = &[0x83, 0x86, 0x84, 0x01, 0x03, b'w', b'e', b'b'];

/// A mesh peer's mTLS connection (ALPN `h2` + `strait.mesh`) to `addr`,
/// presenting the certificate of `identity_yaml` (an `identity:` section).
/// The server's certificate is not checked: only the proxy's HTTP/2 is
/// under test here.
pub async fn mesh_client(
    identity_yaml: &str,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let path = |key: &str| {
        identity_yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| panic!("no {key} in {identity_yaml}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path("certificate:"))
        .expect("client certificate")
        .collect::<Result<_, _>>()
        .expect("client certificate PEM");
    let key = PrivateKeyDer::from_pem_file(path("private_key:")).expect("client key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(certs, key)
        .expect("client auth");
    config.alpn_protocols = vec![b"h2".to_vec(), b"strait.mesh".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect inbound");
    let name = ServerName::try_from("flood.test").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("mTLS handshake with the inbound")
}

/// Accepts any server certificate whose signatures verify.
#[derive(Debug)]
pub struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The next frame (type, flags, payload, stream), or `None` once the
/// connection is closed or `deadline` passes.
pub async fn next_frame_on<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Instant,
) -> Option<(u8, u8, Vec<u8>, u32)> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut head = [0u8; 9];
    tokio::time::timeout_at(deadline, stream.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tokio::time::timeout_at(deadline, stream.read_exact(&mut payload))
        .await
        .ok()?
        .ok()?;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], payload, id))
}
