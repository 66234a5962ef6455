//! TLS material and xDS resources for `tests/xds_tls.rs`: a CA issuing
//! workload certificates (rcgen), SDS secrets and a TLS cluster as a
//! control plane builds them, the control plane's own TLS config, the
//! certificate a mesh handshake is served (openssl s_client), and an
//! iptables redirect for original-destination tests.
#![allow(dead_code)]

use crate::control_plane::{CLUSTER, SECRET};
use crate::support::TempDir;
use crate::xds_resources::{any, assignment_of};
use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, CommonTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::google::protobuf::Any;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType as RcgenSan,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The secret names istiod uses.
pub const CERT: &str = "default";
pub const TRUST: &str = "ROOTCA";
const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

// ---- certificates ----

/// A CA issuing workload certificates as PEM.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

/// A workload certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
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
        Pki {
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// A certificate for `identity` that expires on 1 January of `year`.
    pub fn issue(&self, identity: &str, year: i32) -> Leaf {
        self.issue_san(RcgenSan::URI(identity.try_into().expect("URI SAN")), year)
    }

    pub fn issue_san(&self, san: RcgenSan, year: i32) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.subject_alt_names = vec![san];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

// ---- xDS resources ----

pub fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(pem.into())),
        ..Default::default()
    })
}

pub fn certificate_secret(name: &str, leaf: &Leaf) -> Any {
    any(
        SECRET,
        &Secret {
            name: name.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&leaf.cert),
                private_key: inline(&leaf.key),
                ..Default::default()
            })),
        },
    )
}

pub fn trust_secret(name: &str, ca_pem: &str) -> Any {
    any(
        SECRET,
        &Secret {
            name: name.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(ca_pem),
                    ..Default::default()
                },
            )),
        },
    )
}

pub fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: None,
    }
}

/// A STATIC cluster at `addr` whose endpoints must prove an identity
/// matching `san` (as istiod writes it: combined validation context).
pub fn tls_cluster(name: &str, addr: SocketAddr, san: MatchPattern) -> Any {
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(CERT)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: SanType::Uri as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(san),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(TRUST)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    any(
        CLUSTER,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(assignment_of(name, &[addr])),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(any(
                    UPSTREAM_TLS,
                    &context,
                ))),
            }),
            ..Default::default()
        },
    )
}

/// The expiry (`notAfter=...`) of the certificate a new mesh handshake
/// with `server` is served, read by openssl s_client as a mesh client.
pub fn served_expiry(server: SocketAddr, client: &Leaf, ca_pem: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = TempDir::new("xds-tls-s-client");
    let path = |f: &str| -> PathBuf { dir.0.join(f) };
    std::fs::write(path("ca.pem"), ca_pem).expect("write CA");
    std::fs::write(path("client.crt"), &client.cert).expect("write cert");
    std::fs::write(path("client.key"), &client.key).expect("write key");
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.to_string(),
            "-alpn",
            "h2,strait.mesh",
        ])
        .arg("-CAfile")
        .arg(path("ca.pem"))
        .arg("-cert")
        .arg(path("client.crt"))
        .arg("-key")
        .arg(path("client.key"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("openssl s_client (apt-get install openssl): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pem: String = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .map(|body| format!("-----BEGIN CERTIFICATE-----{body}-----END CERTIFICATE-----\n"))
        .unwrap_or_else(|| {
            panic!(
                "no certificate served:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-enddate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    if let Some(mut stdin) = x509.stdin.take() {
        stdin
            .write_all(pem.as_bytes())
            .expect("pipe to openssl x509");
    }
    let out = x509.wait_with_output().expect("openssl x509 output");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The control plane's TLS: its certificate for `control-plane.test`,
/// and client certificates from `pki` required.
pub fn control_plane_tls(pki: &Pki) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let leaf = pki.issue_san(
        RcgenSan::DnsName("control-plane.test".try_into().expect("DNS SAN")),
        2099,
    );
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(ca.expect("CA PEM")).expect("CA");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain PEM");
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key PEM");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

// ---- ORIGINAL_DST ----

/// An iptables rule for the test's lifetime. [`Redirect::install`]:
/// connections to `to` from sockets carrying `mark` are REDIRECTed to
/// `port` (as the mesh's redirect does for an app's connections); the
/// proxy's own connections are unmarked and go where they were going.
pub struct Redirect(Vec<String>);

pub const MARK: u32 = 0x5a7d;

impl Redirect {
    pub fn install(to: SocketAddr, port: u16) -> Redirect {
        let (ip, dport, mark, port) = (
            to.ip().to_string(),
            to.port().to_string(),
            MARK.to_string(),
            port.to_string(),
        );
        Redirect::rule(&[
            "-t",
            "nat",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &ip,
            "--dport",
            &dport,
            "-m",
            "mark",
            "--mark",
            &mark,
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ])
    }

    /// TCP to `ip:port` (a pod address) DNATed to `to`, one of strait's
    /// listeners: the original destination stays readable, as with the
    /// mesh's REDIRECT.
    pub fn dnat(ip: &str, port: u16, to: SocketAddr) -> Redirect {
        let (port, to) = (port.to_string(), to.to_string());
        Redirect::rule(&[
            "-t",
            "nat",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            ip,
            "--dport",
            &port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ])
    }

    /// Install `rule` (iptables arguments, table and chain first).
    fn rule(rule: &[&str]) -> Redirect {
        let r = Redirect(rule.iter().map(|a| a.to_string()).collect());
        r.iptables("-A").unwrap_or_else(|e| {
            panic!("this test needs root and iptables (apt-get install iptables; .ci/run installs it): {e}")
        });
        r
    }

    /// Run iptables with `action` (-A or -D) inserted before the chain.
    fn iptables(&self, action: &str) -> Result<(), String> {
        let mut args = vec![
            "-w".to_string(),
            self.0[0].clone(),
            self.0[1].clone(),
            action.to_string(),
        ];
        args.extend(self.0[2..].iter().cloned());
        let out = std::process::Command::new("iptables")
            .args(&args)
            .output()
            .map_err(|e| format!("iptables: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        if let Err(e) = self.iptables("-D") {
            eprintln!("cannot remove the test's iptables rule: {e}");
        }
    }
}

/// GET / with Host `host` over a connection marked for the redirect to `to`.
pub async fn get_redirected(to: SocketAddr, host: &str) -> (StatusCode, http::HeaderMap, String) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_mark(MARK).expect("SO_MARK (needs root)");
    socket.connect(&to.into()).expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::TcpStream::from_std(socket.into()).expect("tokio stream");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", host)
        .body(Full::<Bytes>::default())
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}
