//! SDS `Secret`s into the workload identity. Two kinds are taken: a
//! `tls_certificate` (chain and private key) and a `validation_context`
//! (trusted CA), PEM given inline. Every held secret is checked on every
//! update, so a bad one (unparsable PEM, a key that does not sign for its
//! certificate) is NACKed with its field while the identity already
//! installed keeps serving.

use super::Rejected;
use crate::tls::material::{self, Material};
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use std::collections::BTreeMap;
use strait_config::SdsIdentity;

const KIND: &str = "Secret";

/// One secret, checked.
enum Parsed {
    Certificate(material::Chain, rustls::pki_types::PrivateKeyDer<'static>),
    Trust(Vec<rustls::pki_types::CertificateDer<'static>>),
}

/// The PEM of an inline data source. Files and environment variables are
/// the control plane's host's, not this proxy's: refused rather than read.
fn inline<'a>(name: &str, field: &str, d: Option<&'a DataSource>) -> Result<&'a [u8], Rejected> {
    let reject = |m: &str| Rejected::new(KIND, name, field, m.to_string());
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => Ok(b),
        Some(data_source::Specifier::InlineString(s)) => Ok(s.as_bytes()),
        Some(data_source::Specifier::Filename(_)) => {
            Err(reject("a file name is not read: send the PEM inline"))
        }
        Some(data_source::Specifier::EnvironmentVariable(_)) => Err(reject(
            "an environment variable is not read: send the PEM inline",
        )),
        None => Err(reject(
            "missing: needs the PEM inline (inline_bytes or inline_string)",
        )),
    }
}

fn parse(name: &str, s: &Secret) -> Result<Parsed, Rejected> {
    let provider = material::provider();
    let reject =
        |field: &str, e: material::MaterialError| Rejected::new(KIND, name, field, e.to_string());
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            let field = "tls_certificate.certificate_chain";
            let chain = material::chain(inline(name, field, c.certificate_chain.as_ref())?)
                .map_err(|e| reject(field, e))?;
            let field = "tls_certificate.private_key";
            let key = material::key(
                inline(name, field, c.private_key.as_ref())?,
                &chain,
                &provider,
            )
            .map_err(|e| reject(field, e))?;
            Ok(Parsed::Certificate(chain, key))
        }
        Some(secret::Type::ValidationContext(v)) => {
            let field = "validation_context.trusted_ca";
            let roots = material::bundle(inline(name, field, v.trusted_ca.as_ref())?)
                .map_err(|e| reject(field, e))?;
            Ok(Parsed::Trust(roots))
        }
        _ => Err(Rejected::new(
            KIND,
            name,
            "type",
            "only tls_certificate and validation_context secrets are supported".into(),
        )),
    }
}

/// Check every held secret; return the identity they make when both of
/// `sds`'s secrets are held (`None` until then).
pub fn identity(
    secrets: &BTreeMap<String, Secret>,
    sds: Option<&SdsIdentity>,
) -> Result<Option<Material>, Rejected> {
    let mut parsed = BTreeMap::new();
    for (name, s) in secrets {
        parsed.insert(name.as_str(), parse(name, s)?);
    }
    let Some(sds) = sds else {
        return Ok(None);
    };
    let chain = match parsed.remove(sds.certificate.as_str()) {
        None => return Ok(None),
        Some(Parsed::Certificate(chain, key)) => (chain, key),
        Some(Parsed::Trust(_)) => {
            return Err(Rejected::new(
                KIND,
                &sds.certificate,
                "type",
                "identity.sds.certificate names it, so it must be a tls_certificate".into(),
            ))
        }
    };
    // The same name for both is allowed only if it is a certificate, which
    // the trust bundle then cannot be.
    let roots = match parsed.remove(sds.trust_bundle.as_str()) {
        None if sds.trust_bundle == sds.certificate => {
            return Err(Rejected::new(
                KIND,
                &sds.trust_bundle,
                "type",
                "identity.sds.trust_bundle names it, so it must be a validation_context".into(),
            ))
        }
        None => return Ok(None),
        Some(Parsed::Trust(roots)) => roots,
        Some(Parsed::Certificate(..)) => {
            return Err(Rejected::new(
                KIND,
                &sds.trust_bundle,
                "type",
                "identity.sds.trust_bundle names it, so it must be a validation_context".into(),
            ))
        }
    };
    Ok(Some(Material {
        chain: chain.0,
        key: chain.1,
        roots,
    }))
}
