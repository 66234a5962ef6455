//! An identity's raw material (certificate chain, private key, trust
//! bundle) from PEM, checked before anything uses it, and the rustls
//! server config built from it. Both sources of an identity use it: the
//! mounted files (`mod.rs` adds the path to each error) and xDS secrets
//! (`xds/secret.rs` adds the secret and field).

use super::{verify, versions, Loaded, ALPN_H2, ALPN_OPAQUE};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What is wrong with a piece of identity material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MaterialError {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("the certificate names no identity (no spiffe:// URI SAN and no DNS SAN)")]
    NoIdentity,
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) found")]
    NoKey,
    #[error("the private key does not belong to the certificate, or is unusable: {0}")]
    KeyMismatch(rustls::Error),
    #[error("holds no usable CA certificate")]
    EmptyBundle,
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// A certificate chain whose leaf names an identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    pub certs: Vec<CertificateDer<'static>>,
    pub name: String,
    /// Expiry of the leaf, seconds since the epoch.
    pub not_after: i64,
}

/// Everything an identity is made of, each part already checked.
#[derive(Debug)]
pub struct Material {
    pub chain: Chain,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
}

impl Clone for Material {
    fn clone(&self) -> Self {
        Material {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

impl PartialEq for Material {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain
            && self.key.secret_der() == other.key.secret_der()
            && self.roots == other.roots
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in `pem`, leaf first.
pub fn chain(pem: &[u8]) -> Result<Chain, MaterialError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    let leaf = certs.first().ok_or(MaterialError::NoCertificate)?;
    let name = verify::identity_of(leaf).ok_or(MaterialError::NoIdentity)?;
    let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    Ok(Chain {
        certs,
        name,
        not_after,
    })
}

/// The private key in `pem`, refused unless it signs for `chain`'s leaf.
pub fn key(
    pem: &[u8],
    chain: &Chain,
    provider: &Arc<CryptoProvider>,
) -> Result<PrivateKeyDer<'static>, MaterialError> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| MaterialError::NoKey)?;
    rustls::sign::CertifiedKey::from_der(chain.certs.clone(), key.clone_key(), provider)
        .map_err(MaterialError::KeyMismatch)?;
    Ok(key)
}

/// The CA certificates in `pem`; at least one must be usable as a root.
pub fn bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(cas.iter().cloned());
    if added == 0 {
        return Err(MaterialError::EmptyBundle);
    }
    Ok(cas)
}

/// The identity's configs: the server side now, clients on first use.
pub(super) fn build(
    m: Material,
    allow_tls12: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<Loaded, MaterialError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(m.roots.iter().cloned());
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| MaterialError::Config(e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(allow_tls12))
        .map_err(|e| MaterialError::Config(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(m.chain.certs.clone(), m.key.clone_key())
        .map_err(MaterialError::KeyMismatch)?;
    server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_OPAQUE.to_vec()];
    Ok(Loaded {
        name: m.chain.name.clone(),
        not_after: m.chain.not_after,
        server: Arc::new(server),
        roots,
        clients: Mutex::new(HashMap::new()),
        material: m,
    })
}
