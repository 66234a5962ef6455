//! Listeners as one list: the built-in `outbound` and `inbound` data
//! listeners and the named `listeners.extra`, validated together (unique
//! names, no two listeners on one address, known default clusters) and
//! seen by the proxy as [`NamedListener`]s keyed by name, the shape a
//! listener discovery service (Envoy LDS) gives. Depends on `model`,
//! `file`, `error` and `validate`'s rules.

use crate::error::{At, ConfigError};
use crate::file::{FileDirection, FileNamedListener};
use crate::lines::LineIndex;
use crate::model::*;
use crate::validate::{defaults, protocol, Rules};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// The names the built-in listeners hold; an extra listener cannot take one.
pub const BUILT_IN: [&str; 3] = ["outbound", "inbound", "admin"];

/// Validate `listeners.extra`. `clusters` holds every cluster name.
pub(crate) fn extra_listeners(
    rules: &Rules<'_>,
    file: Vec<FileNamedListener>,
    clusters: &HashSet<String>,
) -> Result<Vec<NamedListener>, ConfigError> {
    // Name -> the field that used it first.
    let mut names: HashMap<String, String> = BUILT_IN
        .iter()
        .map(|n| (n.to_string(), format!("the built-in {n} listener")))
        .collect();
    let mut out = Vec::with_capacity(file.len());
    for (i, l) in file.into_iter().enumerate() {
        let field = format!("listeners.extra[{i}]");
        let name = l.name.trim().to_string();
        if name.is_empty() {
            return Err(ConfigError::Empty {
                at: rules.at(&format!("{field}.name")),
            });
        }
        if let Some(first) = names.insert(name.clone(), format!("{field}.name")) {
            return Err(ConfigError::DuplicateName {
                at: rules.at(&format!("{field}.name")),
                what: "listener name",
                name,
                first,
            });
        }
        let direction = match l.direction {
            FileDirection::Inbound => ListenerDirection::Inbound,
            FileDirection::Outbound => ListenerDirection::Outbound,
        };
        let ip = match (&l.address, direction) {
            (Some(ip), _) => rules.ip(&format!("{field}.address"), ip)?,
            (None, ListenerDirection::Outbound) => default_ip(defaults::OUTBOUND),
            (None, ListenerDirection::Inbound) => default_ip(defaults::INBOUND),
        };
        let port = rules.port(&format!("{field}.port"), l.port, true)?;
        if let Some(cluster) = &l.default_cluster {
            if !clusters.contains(cluster) {
                return Err(ConfigError::UnknownCluster {
                    at: rules.at(&format!("{field}.default_cluster")),
                    name: cluster.clone(),
                });
            }
        }
        let forward_ip = match (direction, &l.forward_address) {
            (ListenerDirection::Inbound, Some(ip)) => {
                Some(rules.ip(&format!("{field}.forward_address"), ip)?)
            }
            (ListenerDirection::Inbound, None) => Some(default_ip(defaults::FORWARD_IP)),
            (ListenerDirection::Outbound, None) => None,
            (ListenerDirection::Outbound, Some(_)) => {
                return Err(ConfigError::Invalid {
                    at: rules.at(&format!("{field}.forward_address")),
                    message: "only an inbound listener forwards to the application; remove forward_address or set direction: inbound".into(),
                })
            }
        };
        out.push(NamedListener {
            name,
            direction,
            addr: SocketAddr::new(ip, port),
            default_cluster: l.default_cluster,
            protocol: protocol(l.protocol),
            forward_ip,
        });
    }
    Ok(out)
}

/// The IP of a default address; the defaults are constants that parse.
fn default_ip(addr: &str) -> std::net::IpAddr {
    addr.parse::<std::net::IpAddr>()
        .or_else(|_| addr.parse::<SocketAddr>().map(|a| a.ip()))
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// Two listeners on one address and port would make `run` fail to bind
/// the second; refuse that here, where the error can name the field. A
/// wildcard address (`0.0.0.0`, `[::]`) overlaps every address of its
/// family on the same port; port 0 (any free port) never clashes.
/// `index` gives lines when the addresses came from a file.
pub fn distinct_listeners(config: &Config, index: Option<&LineIndex>) -> Result<(), ConfigError> {
    let mut listeners = vec![
        ("listeners.outbound".to_string(), config.outbound.addr),
        ("listeners.inbound".to_string(), config.inbound.addr),
        ("listeners.admin".to_string(), config.admin),
    ];
    for (i, l) in config.extra_listeners.iter().enumerate() {
        listeners.push((format!("listeners.extra[{i}]"), l.addr));
    }
    let overlap = |a: SocketAddr, b: SocketAddr| {
        a.port() != 0
            && a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (i, (field, addr)) in listeners.iter().enumerate() {
        if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| overlap(*a, *addr)) {
            let port_field = format!("{field}.port");
            return Err(ConfigError::SameAddress {
                at: At {
                    line: index.and_then(|ix| ix.line_of(&port_field)),
                    field: port_field,
                },
                addr: *addr,
                other: format!("{other} listener's"),
            });
        }
    }
    Ok(())
}

impl Config {
    /// Every data-plane listener, the built-in `outbound` and `inbound`
    /// first, then `listeners.extra` in file order. Names are unique.
    pub fn listeners(&self) -> Vec<NamedListener> {
        let mut all = vec![
            NamedListener {
                name: "outbound".into(),
                direction: ListenerDirection::Outbound,
                addr: self.outbound.addr,
                default_cluster: self.outbound.default_cluster.clone(),
                protocol: self.outbound.protocol,
                forward_ip: None,
            },
            NamedListener {
                name: "inbound".into(),
                direction: ListenerDirection::Inbound,
                addr: self.inbound.addr,
                default_cluster: self.inbound.default_cluster.clone(),
                protocol: self.inbound.protocol,
                forward_ip: Some(self.inbound.forward_ip),
            },
        ];
        all.extend(self.extra_listeners.iter().cloned());
        all
    }

    /// This config as the traffic of `listener` sees it: the slot of its
    /// direction (`outbound` or `inbound`) holds that listener's address,
    /// default cluster, protocol and forward address. Routes, clusters and
    /// every other setting are shared by all listeners.
    pub fn for_listener(&self, listener: &NamedListener) -> Config {
        let mut config = self.clone();
        match listener.direction {
            ListenerDirection::Outbound => {
                config.outbound = Listener {
                    addr: listener.addr,
                    default_cluster: listener.default_cluster.clone(),
                    protocol: listener.protocol,
                };
            }
            ListenerDirection::Inbound => {
                config.inbound = InboundListener {
                    addr: listener.addr,
                    default_cluster: listener.default_cluster.clone(),
                    protocol: listener.protocol,
                    forward_ip: listener.forward_ip.unwrap_or(self.inbound.forward_ip),
                };
            }
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "clusters:\n  - name: web\n    endpoints: [{address: 127.0.0.1:8080}]\n";

    #[test]
    fn extra_listeners_are_listed_after_the_built_in_ones() {
        let yaml = format!("{CLUSTER}listeners:\n  extra:\n    - {{name: side, direction: outbound, port: 5000, default_cluster: web}}\n    - {{name: app2, direction: inbound, port: 5001, protocol: http1}}\n");
        let config = Config::from_yaml(&yaml).expect("valid");
        let names: Vec<String> = config.listeners().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["outbound", "inbound", "side", "app2"]);
        let app2 = &config.extra_listeners[1];
        assert_eq!(app2.addr, "0.0.0.0:5001".parse().expect("addr"));
        assert_eq!(app2.forward_ip, Some([127, 0, 0, 1].into()));
        assert_eq!(app2.protocol, Protocol::Http1);
        let side = &config.extra_listeners[0];
        assert_eq!(side.addr, "127.0.0.1:5000".parse().expect("addr"));
        let seen = config.for_listener(side);
        assert_eq!(seen.outbound.default_cluster.as_deref(), Some("web"));
        assert_eq!(seen.outbound.addr, side.addr);
        assert_eq!(seen.inbound, config.inbound);
    }
}
