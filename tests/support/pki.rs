//! A throwaway certificate authority for tests that need a meshed (mTLS)
//! pair of proxies: a CA and workload certificates made with rcgen at
//! test time, written to a temporary directory, and the `identity:`
//! section that names them.

use super::TempDir;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::PathBuf;

pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    dir: TempDir,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
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
        std::fs::write(dir.0.join("ca.pem"), ca_pem).expect("write CA");
        Pki {
            issuer: Issuer::new(params, key),
            dir,
        }
    }

    /// The `identity:` section of a workload whose certificate carries
    /// `identity` (a URI SAN) and trusts this CA.
    pub fn identity_yaml(&self, identity: &str, file: &str) -> String {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.subject_alt_names = vec![SanType::URI(identity.try_into().expect("URI SAN"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let path = |ext: &str| -> PathBuf { self.dir.0.join(format!("{file}.{ext}")) };
        std::fs::write(path("crt"), cert.pem()).expect("write cert");
        std::fs::write(path("key"), key.serialize_pem()).expect("write key");
        format!(
            "identity:\n  certificate: {}\n  private_key: {}\n  trust_bundle: {}\n",
            path("crt").display(),
            path("key").display(),
            self.dir.0.join("ca.pem").display()
        )
    }
}
