//! Mutual TLS between sidecars. The workload identity (certificate chain,
//! private key, trust bundle) is loaded from files and watched, or comes
//! from the control plane as xDS secrets (`Tls::install`); a rotation
//! swaps in new rustls configs for new handshakes while established
//! connections keep theirs, and a broken rotation is refused with the old
//! identity still serving. An SDS identity has none until its secrets
//! arrive: mesh handshakes fail with that reason meanwhile. Crypto
//! provider: `ring` (builds with a C compiler only, which keeps the
//! static image simple; see the README).
//!
//! Mesh traffic is marked by ALPN: an HTTP client offers `h2` plus the
//! never-selected marker `strait.mesh`; an opaque TCP client offers
//! `strait.opaque`. The inbound side terminates only ClientHellos that
//! carry one of the two; any other TLS passes through untouched.

pub mod material;
pub mod verify;

use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use material::{Material, MaterialError};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use strait_config::{IdentityFiles, IdentitySource};
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
    #[error("no workload identity yet: its secrets have not come from the control plane")]
    NotYet,
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
            TlsError::Config(_) | TlsError::NotYet => None,
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
    /// What it was built from, to tell a real rotation from a resend.
    material: Material,
    roots: Arc<RootCertStore>,
    /// Client configs per (expected server identity, protocol), built on first use.
    clients: Mutex<HashMap<(String, MeshProtocol), Arc<ClientConfig>>>,
}

/// The workload identity, reloadable.
pub struct Tls {
    settings: strait_config::Identity,
    provider: Arc<CryptoProvider>,
    current: ArcSwapOption<Loaded>,
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
    /// without a valid one from files. An SDS identity starts empty.
    pub fn load(
        settings: &strait_config::Identity,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Tls>, TlsError> {
        let provider = material::provider();
        let current = ArcSwapOption::empty();
        if let IdentitySource::Files(files) = &settings.source {
            let loaded = load(files, settings.allow_tls12, &provider)?;
            metrics.identity_loaded(&loaded, true);
            info!(identity = %loaded.name, not_after = loaded.not_after, "workload identity loaded");
            current.store(Some(Arc::new(loaded)));
        }
        Ok(Arc::new(Tls {
            settings: settings.clone(),
            provider,
            current,
            metrics,
        }))
    }

    /// The identity serving now; `None` while an SDS identity waits for
    /// its secrets.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.load_full()
    }

    /// Serve `m` from the next handshake on (an SDS rotation). Returns
    /// whether anything changed: the same material sent again keeps the
    /// current configs and their cached client configs.
    pub fn install(&self, m: Material) -> Result<bool, MaterialError> {
        if self.current().is_some_and(|l| l.material == m) {
            return Ok(false);
        }
        let loaded = material::build(m, self.settings.allow_tls12, &self.provider)?;
        self.metrics.identity_loaded(&loaded, true);
        info!(identity = %loaded.name, not_after = loaded.not_after, "workload identity from the control plane installed");
        self.current.store(Some(Arc::new(loaded)));
        Ok(true)
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// Reload from the files; on failure the current identity stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let IdentitySource::Files(files) = &self.settings.source else {
            return Ok(());
        };
        match load(files, self.settings.allow_tls12, &self.provider) {
            Ok(loaded) => {
                self.metrics.identity_loaded(&loaded, true);
                info!(identity = %loaded.name, not_after = loaded.not_after, "workload identity rotated");
                self.current.store(Some(Arc::new(loaded)));
                Ok(())
            }
            Err(e) => {
                if let Some(current) = self.current() {
                    self.metrics.identity_loaded(&current, false);
                }
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
        let loaded = self.current().ok_or(TlsError::NotYet)?;
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
            .with_client_auth_cert(
                loaded.material.chain.certs.clone(),
                loaded.material.key.clone_key(),
            )
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
        // Secrets from xDS rotate by the control plane's push.
        let IdentitySource::Files(identity) = &self.settings.source else {
            return;
        };
        let files = [
            identity.certificate.clone(),
            identity.private_key.clone(),
            identity.trust_bundle.clone(),
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

/// The identity from its files; each error names the file at fault.
fn load(
    files: &IdentityFiles,
    allow_tls12: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<Loaded, TlsError> {
    let cert_path = || files.certificate.clone();
    let chain = material::chain(&read(&files.certificate)?).map_err(|e| match e {
        MaterialError::NoIdentity => TlsError::NoIdentity { path: cert_path() },
        _ => TlsError::NoCertificate { path: cert_path() },
    })?;
    let mismatch = |error| TlsError::KeyMismatch {
        cert: cert_path(),
        key: files.private_key.clone(),
        error,
    };
    let key = material::key(&read(&files.private_key)?, &chain, provider).map_err(|e| match e {
        MaterialError::KeyMismatch(error) => mismatch(error),
        _ => TlsError::NoKey {
            path: files.private_key.clone(),
        },
    })?;
    let roots =
        material::bundle(&read(&files.trust_bundle)?).map_err(|_| TlsError::EmptyBundle {
            path: files.trust_bundle.clone(),
        })?;
    let m = Material { chain, key, roots };
    material::build(m, allow_tls12, provider).map_err(|e| match e {
        MaterialError::KeyMismatch(error) => mismatch(error),
        other => TlsError::Config(other.to_string()),
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
    let loaded = tls.current().ok_or_else(|| TlsError::NotYet.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(loaded.server.clone());
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
