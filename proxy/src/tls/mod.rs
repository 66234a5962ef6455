//! Mutual TLS between sidecars. The workload identity (certificate chain,
//! private key, trust bundle) is loaded from files and watched; a rotation
//! swaps in new rustls configs for new handshakes while established
//! connections keep theirs, and a broken rotation is refused with the old
//! identity still serving. Crypto provider: `ring` (builds with a C
//! compiler only, which keeps the static image simple; see the README).
//!
//! Mesh traffic is marked by ALPN: an HTTP client offers `h2` plus the
//! never-selected marker `strait.mesh`; an opaque TCP client offers
//! `strait.opaque`. The inbound side terminates only ClientHellos that
//! carry one of the two; any other TLS passes through untouched.

pub mod verify;

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub const ALPN_H2: &[u8] = b"h2";
/// Offered with `h2` by meshed HTTP clients, never selected.
pub const ALPN_MESH: &[u8] = b"strait.mesh";
/// Offered and selected for opaque TCP carried over mTLS.
pub const ALPN_OPAQUE: &[u8] = b"strait.opaque";

/// How often the identity files are checked for a rotation.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Why an identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The OS / rustls error is part of the message and deliberately not a
    // `source`, so a chain printer (anyhow's `{:#}`) says it once.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found")]
    NoKey { path: PathBuf },
    #[error("{path}: the certificate names no identity (no spiffe:// URI SAN and no DNS SAN)")]
    NoIdentity { path: PathBuf },
    #[error("{path}: trust bundle holds no usable CA certificate")]
    EmptyBundle { path: PathBuf },
    #[error(
        "certificate {cert} and key {key} do not belong together, or the key is unusable: {error}"
    )]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    /// The identity file the error is about (for KeyMismatch: the key),
    /// so `strait check` can name the config field that points at it.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::NoKey { path }
            | TlsError::NoIdentity { path }
            | TlsError::EmptyBundle { path } => Some(path),
            TlsError::KeyMismatch { key, .. } => Some(key),
            TlsError::Config(_) => None,
        }
    }
}

/// Which ALPN a client connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeshProtocol {
    Http2,
    Opaque,
}

/// One loaded identity and the configs built from it.
pub struct Loaded {
    /// This workload's identity.
    pub name: String,
    /// Expiry of the leaf, seconds since the epoch.
    pub not_after: i64,
    pub server: Arc<ServerConfig>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    /// Client configs per (expected server identity, protocol), built on first use.
    clients: Mutex<HashMap<(String, MeshProtocol), Arc<ClientConfig>>>,
}

/// The workload identity, reloadable.
pub struct Tls {
    settings: strait_config::Identity,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Loaded>,
    metrics: Arc<Metrics>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })
}

impl Tls {
    /// Load the identity named by `settings`; the proxy refuses to start
    /// without a valid one.
    pub fn load(
        settings: &strait_config::Identity,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Tls>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(settings, &provider)?;
        metrics.identity_loaded(&loaded, true);
        info!(identity = %loaded.name, not_after = loaded.not_after, "workload identity loaded");
        Ok(Arc::new(Tls {
            settings: settings.clone(),
            provider,
            current: ArcSwap::from_pointee(loaded),
            metrics,
        }))
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// Reload from the files; on failure the current identity stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load(&self.settings, &self.provider) {
            Ok(loaded) => {
                self.metrics.identity_loaded(&loaded, true);
                info!(identity = %loaded.name, not_after = loaded.not_after, "workload identity rotated");
                self.current.store(Arc::new(loaded));
                Ok(())
            }
            Err(e) => {
                self.metrics.identity_loaded(&self.current(), false);
                Err(e)
            }
        }
    }

    /// The client config to reach a server proving `expected`.
    pub fn client_config(
        &self,
        expected: &str,
        protocol: MeshProtocol,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let loaded = self.current();
        let key = (expected.to_string(), protocol);
        if let Some(config) = loaded
            .clients
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return Ok(config);
        }
        let verifier = verify::MeshServerVerifier::new(
            loaded.roots.clone(),
            expected.to_string(),
            self.provider.clone(),
        );
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions(self.settings.allow_tls12))
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(loaded.chain.clone(), loaded.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = match protocol {
            MeshProtocol::Http2 => vec![ALPN_H2.to_vec(), ALPN_MESH.to_vec()],
            MeshProtocol::Opaque => vec![ALPN_OPAQUE.to_vec()],
        };
        // Identities are not DNS names: no SNI; the peer is found by address.
        config.enable_sni = false;
        let config = Arc::new(config);
        if let Ok(mut clients) = loaded.clients.lock() {
            clients.insert(key, config.clone());
        }
        Ok(config)
    }

    /// Poll the identity files and reload when any of them changes.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let files = [
            self.settings.certificate.clone(),
            self.settings.private_key.clone(),
            self.settings.trust_bundle.clone(),
        ];
        let stamp = |files: &[PathBuf; 3]| -> Vec<Option<(SystemTime, u64)>> {
            files
                .iter()
                .map(|f| {
                    let meta = std::fs::metadata(f).ok()?;
                    Some((meta.modified().ok()?, meta.len()))
                })
                .collect()
        };
        let mut seen = stamp(&files);
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&files);
            if now == seen {
                continue;
            }
            seen = now;
            if let Err(e) = self.reload() {
                error!(error = %e, "identity rotation refused; the current certificate keeps serving");
            }
        }
    }
}

static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(allow_tls12: bool) -> &'static [&'static SupportedProtocolVersion] {
    if allow_tls12 {
        &TLS13_AND_12
    } else {
        &TLS13_ONLY
    }
}

fn load(
    settings: &strait_config::Identity,
    provider: &Arc<CryptoProvider>,
) -> Result<Loaded, TlsError> {
    let cert_pem = read(&settings.certificate)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: settings.certificate.clone(),
    })?;
    let name = verify::identity_of(leaf).ok_or_else(|| TlsError::NoIdentity {
        path: settings.certificate.clone(),
    })?;
    let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    let key_pem = read(&settings.private_key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
        path: settings.private_key.clone(),
    })?;
    // Refuse a key that does not match the certificate before anything uses it.
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), provider).map_err(
        |error| TlsError::KeyMismatch {
            cert: settings.certificate.clone(),
            key: settings.private_key.clone(),
            error,
        },
    )?;
    let bundle_pem = read(&settings.trust_bundle)?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&bundle_pem).filter_map(Result::ok) {
        let _ = roots.add(ca);
    }
    if roots.is_empty() {
        return Err(TlsError::EmptyBundle {
            path: settings.trust_bundle.clone(),
        });
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(settings.allow_tls12))
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|error| TlsError::KeyMismatch {
            cert: settings.certificate.clone(),
            key: settings.private_key.clone(),
            error,
        })?;
    server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_OPAQUE.to_vec()];
    Ok(Loaded {
        name,
        not_after,
        server: Arc::new(server),
        chain,
        key,
        roots,
        clients: Mutex::new(HashMap::new()),
    })
}

/// Whether a complete ClientHello (in `prefix`) asks for the mesh: its
/// ALPN offers `strait.mesh` or `strait.opaque`. Anything unparsable is
/// not the mesh's and passes through.
pub fn is_mesh_client_hello(prefix: &[u8]) -> bool {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = prefix;
    if acceptor.read_tls(&mut reader).is_err() {
        return false;
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => accepted
            .client_hello()
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ALPN_MESH || p == ALPN_OPAQUE)),
        _ => false,
    }
}

/// Bytes still missing from the first TLS record in `buf` (0 when whole).
pub fn client_hello_missing(buf: &[u8]) -> usize {
    if buf.len() < 5 {
        return 5 - buf.len();
    }
    let record = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    record.saturating_sub(buf.len())
}

/// Open mTLS over `stream` to a peer that must prove `identity`, within
/// the handshake timeout. The error says what failed, for the 502 body.
pub async fn connect<IO>(
    tls: &Tls,
    identity: &str,
    protocol: MeshProtocol,
    addr: std::net::SocketAddr,
    stream: IO,
) -> Result<tokio_rustls::client::TlsStream<IO>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let config = tls
        .client_config(identity, protocol)
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    match tokio::time::timeout(tls.handshake_timeout(), connector.connect(name, stream)).await {
        Err(_) => Err(format!(
            "no TLS handshake within {:?}",
            tls.handshake_timeout()
        )),
        Ok(Err(e)) => Err(describe(&e)),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// Terminate mesh TLS on an inbound connection (its ClientHello already
/// read into the replayed prefix). Returns the stream, the client's
/// identity and whether it negotiated opaque TCP rather than HTTP/2.
pub async fn accept<IO>(
    tls: &Tls,
    stream: IO,
) -> Result<(tokio_rustls::server::TlsStream<IO>, Arc<str>, bool), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current().server.clone());
    let stream = match tokio::time::timeout(tls.handshake_timeout(), acceptor.accept(stream)).await
    {
        Err(_) => {
            return Err(format!(
                "no TLS handshake within {:?}",
                tls.handshake_timeout()
            ))
        }
        Ok(Err(e)) => return Err(describe(&e)),
        Ok(Ok(stream)) => stream,
    };
    let (_, conn) = stream.get_ref();
    let identity = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(verify::identity_of)
        .ok_or_else(|| "the client certificate names no identity".to_string())?;
    let opaque = conn.alpn_protocol() == Some(ALPN_OPAQUE);
    Ok((stream, Arc::from(identity), opaque))
}

/// A TLS failure in words, unwrapping rustls' error from the io::Error.
fn describe(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::Other(other))) => {
            format!("invalid peer certificate: {}", other.0)
        }
        Some(err) => err.to_string(),
        None => e.to_string(),
    }
}
