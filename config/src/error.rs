//! Configuration errors: one variant per rule, each naming the field (as a
//! YAML path such as `clusters[0].endpoints[1].address`) and, where the file
//! has it, the line. Worded for the operator who reads them at 3 a.m.

use std::fmt;

/// Where in the configuration a problem is: the field path and, when the
/// value came from a file, its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    /// Dotted YAML path, e.g. `listeners.inbound.port`.
    pub field: String,
    /// 1-based line in the source file, when known.
    pub line: Option<usize>,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.field)
    }
}

impl At {
    fn line_suffix(&self) -> String {
        match self.line {
            Some(line) => format!(" (line {line})"),
            None => String::new(),
        }
    }
}

/// Every way a configuration can be refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS error is part of the message, not a `source`: a chain
    /// printer (anyhow's `{:#}`) would otherwise print it twice.
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// The YAML itself, an unknown field or a value of the wrong type.
    #[error("{at}: {message}{}", at.line_suffix())]
    Syntax { at: At, message: String },
    #[error("{at}: {value} is not a port{}", at.line_suffix())]
    NotAPort { at: At, value: i64 },
    #[error("{at}: '{value}' is not an IP address{}", at.line_suffix())]
    NotAnIp { at: At, value: String },
    #[error("{at}: '{value}' is not an IP:port or name:port address (e.g. 10.0.0.7:8080, [::1]:8080, web.default.svc:8080){}", at.line_suffix())]
    NotASocketAddr { at: At, value: String },
    #[error("{at}: '{value}' is not a duration (e.g. 500ms, 2s, 1m){}", at.line_suffix())]
    NotADuration { at: At, value: String },
    #[error("{at}: '{value}' must be greater than zero{}", at.line_suffix())]
    ZeroDuration { at: At, value: String },
    #[error("{at}: {value} is out of range: {expected}{}", at.line_suffix())]
    OutOfRange {
        at: At,
        value: i64,
        expected: &'static str,
    },
    #[error("{at}: '{value}' is not a log level (trace, debug, info, warn, error or an EnvFilter directive){}", at.line_suffix())]
    BadLogLevel { at: At, value: String },
    #[error("{at}: cluster name '{name}' is already used by an earlier cluster{}", at.line_suffix())]
    DuplicateCluster { at: At, name: String },
    #[error("{at}: cluster name must not be empty{}", at.line_suffix())]
    EmptyClusterName { at: At },
    #[error("{at}: cluster '{name}' has no endpoints; give at least one{}", at.line_suffix())]
    NoEndpoints { at: At, name: String },
    #[error("{at}: cluster '{name}' is not defined under `clusters`{}", at.line_suffix())]
    UnknownCluster { at: At, name: String },
    #[error("{at}: a route matches on exactly one of `authority`, `port`, `destination` or `server_name` (which may have a `port`){}", at.line_suffix())]
    RouteMatch { at: At },
    #[error("{at}: authority '{value}' is already routed by an earlier route{}", at.line_suffix())]
    DuplicateRoute { at: At, value: String },
    #[error("{at}: {what} '{name}' is already used by {first}; names must be unique{}", at.line_suffix())]
    DuplicateName {
        at: At,
        what: &'static str,
        name: String,
        first: String,
    },
    #[error("{at}: {addr} is also the {other} address; two listeners cannot share an address and port{}", at.line_suffix())]
    SameAddress {
        at: At,
        addr: std::net::SocketAddr,
        other: String,
    },
    #[error("{at}: '{value}' is not a policy (unauthenticated, authenticated, deny, or a list of identities){}", at.line_suffix())]
    BadAllow { at: At, value: String },
    #[error("{at}: {what} needs an `identity` section (certificate, private_key, trust_bundle){}", at.line_suffix())]
    NeedsIdentity { at: At, what: String },
    #[error("{at}: must not be empty{}", at.line_suffix())]
    Empty { at: At },
    #[error("{at}: {message}{}", at.line_suffix())]
    Invalid { at: At, message: String },
    #[error("environment variable {var}='{value}': {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    /// The field path the error is about, when it is about one field.
    pub fn at(&self) -> Option<&At> {
        match self {
            ConfigError::Read { .. } | ConfigError::Env { .. } => None,
            ConfigError::Syntax { at, .. }
            | ConfigError::NotAPort { at, .. }
            | ConfigError::NotAnIp { at, .. }
            | ConfigError::NotASocketAddr { at, .. }
            | ConfigError::NotADuration { at, .. }
            | ConfigError::ZeroDuration { at, .. }
            | ConfigError::OutOfRange { at, .. }
            | ConfigError::BadLogLevel { at, .. }
            | ConfigError::DuplicateCluster { at, .. }
            | ConfigError::EmptyClusterName { at }
            | ConfigError::NoEndpoints { at, .. }
            | ConfigError::UnknownCluster { at, .. }
            | ConfigError::RouteMatch { at }
            | ConfigError::DuplicateRoute { at, .. }
            | ConfigError::DuplicateName { at, .. }
            | ConfigError::SameAddress { at, .. }
            | ConfigError::BadAllow { at, .. }
            | ConfigError::NeedsIdentity { at, .. }
            | ConfigError::Empty { at }
            | ConfigError::Invalid { at, .. } => Some(at),
        }
    }
}
