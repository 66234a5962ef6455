//! `xds`: the bootstrap of the xDS client. The control plane's address
//! must be a host and port, the node must have an id (control planes key
//! what they serve by it), and the mode is one the client speaks.

use super::{defaults, dns_name, Rules};
use crate::error::ConfigError;
use crate::file::FileXds;
use crate::model::{Xds, XdsMode, XdsNode};
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
    Ok(Xds {
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

/// A gRPC server's `IP:port` or `name:port` (the control plane's, the
/// trace collector's).
pub(super) fn xds_address(rules: &Rules<'_>, field: &str, value: &str) -> Result<(), ConfigError> {
    let value = value.trim();
    match value.parse::<SocketAddr>() {
        Ok(_) => rules.socket_addr(field, value).map(|_| ()),
        Err(_) => dns_name(rules, field, value).map(|_| ()),
    }
}
