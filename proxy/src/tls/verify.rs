//! Certificate checks of the mesh: the server's chain must lead to the
//! trust bundle and its identity (SPIFFE URI SAN, or else first DNS SAN)
//! must be the one the cluster expects (exactly, or `prefix*` / `*suffix`
//! as the policy's identity patterns, which xDS SAN matchers map onto). Standard hostname verification
//! does not fit: SPIFFE identities are URIs, not DNS names.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use std::sync::Arc;
use strait_config::IdentityMatch;
use webpki::{EndEntityCert, KeyUsage};

/// The identity a certificate carries: its `spiffe://` URI SAN, else its
/// first DNS SAN. `None` for a certificate that cannot be parsed or names
/// no identity.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let names = &san.value.general_names;
    let spiffe = names.iter().find_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
        _ => None,
    });
    spiffe.or_else(|| {
        names.iter().find_map(|n| match n {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
    })
}

/// Verifies a server against the trust bundle and one expected identity.
#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<rustls::RootCertStore>,
    expected: String,
    matcher: IdentityMatch,
    provider: Arc<CryptoProvider>,
}

impl MeshServerVerifier {
    pub fn new(
        roots: Arc<rustls::RootCertStore>,
        expected: String,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        MeshServerVerifier {
            roots,
            matcher: IdentityMatch::parse(&expected),
            expected,
            provider,
        }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(webpki_error)?;
        match identity_of(end_entity) {
            Some(identity) if self.matcher.matches(&identity) => {
                Ok(ServerCertVerified::assertion())
            }
            found => Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(IdentityMismatch {
                    expected: self.expected.clone(),
                    found,
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server proved a different identity than the cluster expects.
#[derive(Debug)]
pub struct IdentityMismatch {
    pub expected: String,
    pub found: Option<String>,
}

impl std::fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.found {
            Some(found) => write!(
                f,
                "server identity is '{found}', expected '{}'",
                self.expected
            ),
            None => write!(
                f,
                "server certificate names no identity, expected '{}'",
                self.expected
            ),
        }
    }
}

impl std::error::Error for IdentityMismatch {}

fn webpki_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    let cert = match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(cert)
}
