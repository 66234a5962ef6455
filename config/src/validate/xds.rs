//! `xds`: the bootstrap of the xDS client. The control plane's address
//! must be a host and port, the node must have an id (control planes key
//! what they serve by it), and the mode is one the client speaks.

use super::{defaults, dns_name, Rules};
use crate::error::ConfigError;
use crate::file::{FileXds, FileXdsTls};
use crate::model::{Xds, XdsMode, XdsNode, XdsTls};
use std::net::SocketAddr;

pub(super) fn bootstrap(rules: &Rules<'_>, x: FileXds) -> Result<Xds, ConfigError> {
    xds_address(rules, "xds.address", &x.address)?;
    let node = x.node.unwrap_or_default();
    let id = node.id.unwrap_or_default();
    if id.trim().is_empty() {
        // Control planes key their snapshots by node id: without one
        // nothing would ever be served.
        return Err(ConfigError::Empty {
            at: rules.at("xds.node.id"),
        });
    }
    let mode = match x.mode.as_deref().unwrap_or("sotw") {
        "sotw" => XdsMode::Sotw,
        "delta" => XdsMode::Delta,
        other => {
            return Err(ConfigError::Syntax {
                at: rules.at("xds.mode"),
                message: format!("'{other}' is not an xDS mode: sotw or delta"),
            })
        }
    };
    let tls = match x.tls {
        None => None,
        Some(t) => Some(tls(rules, t)?),
    };
    Ok(Xds {
        tls,
        address: x.address.trim().to_string(),
        node: XdsNode {
            id,
            cluster: node.cluster.unwrap_or_default(),
            metadata: node.metadata,
        },
        mode,
        initial_fetch_timeout: rules.duration(
            "xds.initial_fetch_timeout",
            x.initial_fetch_timeout.as_ref(),
            defaults::XDS_INITIAL_FETCH_TIMEOUT,
        )?,
    })
}

fn tls(rules: &Rules<'_>, t: FileXdsTls) -> Result<XdsTls, ConfigError> {
    let empty = |field: &str| ConfigError::Empty {
        at: rules.at(&format!("xds.tls.{field}")),
    };
    if t.trust_bundle.trim().is_empty() {
        return Err(empty("trust_bundle"));
    }
    let client = match (t.certificate, t.private_key) {
        (None, None) => None,
        (Some(c), Some(k)) if !c.trim().is_empty() && !k.trim().is_empty() => {
            Some((c.trim().into(), k.trim().into()))
        }
        (Some(c), _) if c.trim().is_empty() => return Err(empty("certificate")),
        (Some(_), _) => return Err(empty("private_key")),
        (None, Some(_)) => return Err(empty("certificate")),
    };
    let server_name = t.server_name.map(|n| n.trim().to_string());
    if let Some(name) = server_name.as_ref().filter(|n| !verifiable_name(n)) {
        return Err(ConfigError::Syntax {
            at: rules.at("xds.tls.server_name"),
            message: format!("'{name}' is not a DNS name or IP address"),
        });
    }
    Ok(XdsTls {
        trust_bundle: t.trust_bundle.trim().into(),
        client,
        server_name,
    })
}

/// Whether `name` can be verified against a certificate: an IP address or
/// a DNS name of letters, digits, hyphens and dots.
fn verifiable_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || (!name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }))
}

/// A gRPC server's `IP:port` or `name:port` (the control plane's, the
/// trace collector's).
pub(super) fn xds_address(rules: &Rules<'_>, field: &str, value: &str) -> Result<(), ConfigError> {
    let value = value.trim();
    match value.parse::<SocketAddr>() {
        Ok(_) => rules.socket_addr(field, value).map(|_| ()),
        Err(_) => dns_name(rules, field, value).map(|_| ()),
    }
}
