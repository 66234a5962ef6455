//! TLS to the control plane (`xds.tls`): the trust bundle that signs its
//! certificate, checked with standard name verification against
//! `server_name` (or the address's host), and a client certificate when
//! the control plane asks for one. The files are read at each connect, so
//! a rotated client certificate is used from the next stream on.

use crate::tls::material;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use strait_config::XdsTls;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

/// Opens TCP to the control plane and runs the TLS handshake on it.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    /// `host:port` to dial.
    address: String,
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("xds.tls.{field}: cannot read {}: {e}", path.display()))
}

impl Connector {
    /// The connector for `tls` to `address` (`host:port`); the error names
    /// the setting at fault.
    pub fn new(tls: &XdsTls, address: &str) -> Result<Connector, String> {
        let provider = material::provider();
        let mut roots = RootCertStore::empty();
        let cas = material::bundle(&read("trust_bundle", &tls.trust_bundle)?)
            .map_err(|e| format!("xds.tls.trust_bundle: {}: {e}", tls.trust_bundle.display()))?;
        roots.add_parsable_certificates(cas);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("xds.tls: {e}"))?
            .with_root_certificates(roots);
        let mut config = match &tls.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = material::chain(&read("certificate", cert)?)
                    .map_err(|e| format!("xds.tls.certificate: {}: {e}", cert.display()))?;
                let key = material::key(&read("private_key", key)?, &chain, &provider)
                    .map_err(|e| format!("xds.tls.private_key: {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain.certs, key)
                    .map_err(|e| format!("xds.tls.private_key: {e}"))?
            }
        };
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let host = tls
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(address).to_string());
        let name = ServerName::try_from(host.clone()).map_err(|_| {
            format!("xds.tls.server_name: '{host}' is not a DNS name or IP address")
        })?;
        Ok(Connector {
            config: Arc::new(config),
            name,
            address: address.to_string(),
        })
    }
}

/// The host of `host:port`, an IPv6 address without its brackets.
fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_of_an_address() {
        assert_eq!(
            super::host_of("istiod.istio-system.svc:15012"),
            "istiod.istio-system.svc"
        );
        assert_eq!(super::host_of("10.0.0.1:15012"), "10.0.0.1");
        assert_eq!(super::host_of("[::1]:15012"), "::1");
    }
}
