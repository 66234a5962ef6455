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
    pub dir: TempDir,
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
        std::fs::write(dir.0.join("ca.pem"), &ca_pem).expect("write CA");
        std::fs::write(dir.0.join("ca.key"), key.serialize_pem()).expect("write CA key");
        Pki {
            issuer: Issuer::new(params, key),
            dir,
        }
    }

    /// The CA certificate (the trust bundle).
    pub fn bundle(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// Issue a certificate for `identity` (a URI SAN) into
    /// `<dir>/<file>.{crt,key}`; `valid_until_year` sets the expiry (a
    /// past year gives an expired one).
    pub fn issue(&self, identity: &str, file: &str, valid_until_year: i32) -> (PathBuf, PathBuf) {
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

    /// Issue a server certificate for DNS `names` (`*.example.com` too)
    /// into `<dir>/<file>.{crt,key}`, valid until 2099.
    pub fn issue_dns(&self, names: &[&str], file: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let crt = self.dir.0.join(format!("{file}.crt"));
        let key_path = self.dir.0.join(format!("{file}.key"));
        std::fs::write(&crt, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (crt, key_path)
    }

    /// The `identity:` section of a workload whose certificate carries
    /// `identity` and trusts this CA.
    pub fn identity_yaml(&self, identity: &str, file: &str) -> String {
        let (crt, key) = self.issue(identity, file, 2099);
        format!(
            "identity:\n  certificate: {}\n  private_key: {}\n  trust_bundle: {}\n",
            crt.display(),
            key.display(),
            self.bundle().display()
        )
    }
}
