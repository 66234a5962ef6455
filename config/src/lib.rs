//! strait's configuration model. One validated [`Config`] is fed from a
//! YAML file (and, later, from xDS); the data path never sees the wire
//! format. A configuration that breaks a rule is refused with a
//! [`ConfigError`] naming the field and line, so the caller can keep
//! serving the previous one.

pub mod access_log;
pub mod dump;
pub mod error;
pub mod file;
pub mod lines;
pub mod listeners;
pub mod model;
pub mod validate;
pub mod vhosts;

pub use access_log::{AccessLog, AccessLogFormat, AccessLogPath, AccessLogs};
pub use error::{At, ConfigError};
pub use model::*;
pub use validate::{defaults, normalize_authority};

use std::net::SocketAddr;
use std::path::Path;

/// The configuration `strait run` uses when given no file.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default.yaml");

impl Config {
    /// Parse and validate a YAML document.
    pub fn from_yaml(source: &str) -> Result<Config, ConfigError> {
        let index = lines::LineIndex::build(source);
        let file: file::FileConfig = if source.trim().is_empty() {
            file::FileConfig::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(source);
            serde_path_to_error::deserialize(de).map_err(|err| {
                let field = err.path().to_string();
                let inner = err.into_inner();
                let line = inner
                    .location()
                    .map(|l| l.line())
                    .or_else(|| index.line_of(&field));
                ConfigError::Syntax {
                    at: At {
                        field: if field == "." {
                            "(document)".into()
                        } else {
                            field
                        },
                        line,
                    },
                    message: friendly(&strip_location(&inner.to_string()), source, line),
                }
            })?
        };
        validate::validate(file, &index)
    }

    /// Read, parse and validate a YAML file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let source = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Config::from_yaml(&source)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::from_yaml(EMBEDDED_DEFAULT)
    }

    /// Apply `STRAIT_*` overrides: `STRAIT_OUTBOUND_ADDR`, `STRAIT_INBOUND_ADDR`,
    /// `STRAIT_ADMIN_ADDR` (IP:PORT), `STRAIT_LOG` (level) and
    /// `STRAIT_LOG_FORMAT` (plain|json), `STRAIT_XDS_ADDRESS` (host:port)
    /// and `STRAIT_XDS_NODE_ID`. `lookup` is the environment.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let addr = |var: &'static str| -> Result<Option<SocketAddr>, ConfigError> {
            lookup(var)
                .map(|value| {
                    value.parse().map_err(|_| ConfigError::Env {
                        var,
                        reason: "expected IP:PORT, e.g. 127.0.0.1:4140".into(),
                        value,
                    })
                })
                .transpose()
        };
        if let Some(a) = addr("STRAIT_OUTBOUND_ADDR")? {
            self.outbound.addr = a;
        }
        if let Some(a) = addr("STRAIT_INBOUND_ADDR")? {
            self.inbound.addr = a;
        }
        if let Some(a) = addr("STRAIT_ADMIN_ADDR")? {
            self.admin = a;
        }
        validate::distinct_listeners(self, None)?;
        self.apply_xds_env(&lookup)?;
        if let Some(level) = lookup("STRAIT_LOG") {
            self.log.level = level;
        }
        if let Some(format) = lookup("STRAIT_LOG_FORMAT") {
            self.log.format = match format.as_str() {
                "plain" => LogFormat::Plain,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Env {
                        var: "STRAIT_LOG_FORMAT",
                        value: format,
                        reason: "expected plain or json".into(),
                    })
                }
            };
        }
        Ok(())
    }

    /// The xDS overrides: the node id usually comes from the pod (its
    /// name), the address from the mesh's install; either may stand
    /// without the file's `xds:` section once both are given.
    fn apply_xds_env(
        &mut self,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let address = lookup("STRAIT_XDS_ADDRESS");
        let node_id = lookup("STRAIT_XDS_NODE_ID");
        if address.is_none() && node_id.is_none() {
            return Ok(());
        }
        if let Some(a) = &address {
            let port_ok = a.trim().rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            });
            if !port_ok {
                return Err(ConfigError::Env {
                    var: "STRAIT_XDS_ADDRESS",
                    value: a.clone(),
                    reason: "expected host:port, e.g. istiod.istio-system.svc:15010".into(),
                });
            }
        }
        let xds =
            match (self.xds.as_mut(), &address) {
                (Some(x), _) => x,
                (None, Some(a)) => self.xds.insert(Xds {
                    address: a.trim().to_string(),
                    node: XdsNode {
                        id: String::new(),
                        cluster: String::new(),
                        metadata: Default::default(),
                    },
                    mode: XdsMode::Sotw,
                    initial_fetch_timeout: defaults::XDS_INITIAL_FETCH_TIMEOUT,
                    tls: None,
                }),
                (None, None) => return Err(ConfigError::Env {
                    var: "STRAIT_XDS_NODE_ID",
                    value: node_id.unwrap_or_default(),
                    reason:
                        "there is no xDS server: set STRAIT_XDS_ADDRESS or the file's xds.address"
                            .into(),
                }),
            };
        if let Some(a) = address {
            xds.address = a.trim().to_string();
        }
        if let Some(id) = node_id {
            xds.node.id = id;
        }
        if xds.node.id.trim().is_empty() {
            return Err(ConfigError::Env {
                var: "STRAIT_XDS_NODE_ID",
                value: String::new(),
                reason:
                    "the xDS node needs an id: set STRAIT_XDS_NODE_ID or the file's xds.node.id"
                        .into(),
            });
        }
        Ok(())
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// serde_yaml prefixes its own path and appends "at line X column Y"; the
/// error carries both itself.
fn strip_location(message: &str) -> String {
    let message = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(char::is_whitespace) => rest,
        _ => message,
    };
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// serde and the YAML scanner speak Rust and parser; say the same things
/// in the operator's words: YAML forbids tabs in indentation, `i64` is a
/// whole number, a struct is a mapping.
fn friendly(message: &str, source: &str, line: Option<usize>) -> String {
    let indented_with_tab = line
        .and_then(|l| source.lines().nth(l.saturating_sub(1)))
        .is_some_and(|text| {
            text.chars()
                .take_while(|c| c.is_whitespace())
                .any(|c| c == '\t')
        });
    if indented_with_tab && message.contains("cannot start any token") {
        return "a tab in the indentation: YAML forbids tabs there, indent with spaces".into();
    }
    const WORDS: &[(&str, &str)] = &[
        ("expected i64", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected a list"),
        ("expected a map", "expected a mapping (key: value)"),
        (
            "data did not match any variant of untagged enum FileAllow",
            "expected unauthenticated, authenticated, deny or a list of identities",
        ),
    ];
    let mut out = message.to_string();
    for (from, to) in WORDS {
        out = out.replace(from, to);
    }
    // "expected struct FileListener" -> "expected a mapping (key: value)".
    while let Some(i) = out.find("expected struct ") {
        let rest = &out[i + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(rest.len());
        out = format!(
            "{}expected a mapping (key: value){}",
            &out[..i],
            &rest[end..]
        );
    }
    out
}
